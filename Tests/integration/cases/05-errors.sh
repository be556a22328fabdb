# Bad input gets the documented errno and a message in .errors, and the server keeps running.
source "$(dirname "$0")/../lib.sh"
mount_pipes --no-rx --no-tx --source "src=pcap:$IT_DATA/mix.pcap,paused"
E="$MP/.errors"
expect_fail "mkdir '$MP/src/bogus'" "Invalid argument"; grep -q "unknown filter 'bogus'" "$E" || fail ".errors lacks unknown filter"
expect_fail "mkdir '$MP/src/bpf=tcp port'" "Invalid argument"; grep -q "bpf: 'tcp port'" "$E" || fail ".errors lacks the bpf reason"
expect_fail "mkdir '$MP/src/ip=4'" "Invalid argument"; grep -q "ip: takes no arguments" "$E" || fail ".errors lacks 'takes no arguments'"
mkdir -p "$MP/src/ip/tcp/dport"
expect_fail "mkdir '$MP/src/ip/tcp/dport/23:22'" "Invalid argument"; grep -q "empty class range" "$E" || fail "class range reason"
expect_fail "rmdir '$MP/src/ip'" "Directory not empty"; grep -q "filter has children: tcp" "$E" || fail ".errors lacks ENOTEMPTY"
expect_fail "mkdir '$MP/src/all'" "File exists"
expect_fail "mkdir '$MP/nope/x'" "No such file"
expect_fail "echo x > '$MP/src/all'" "Permission denied"
grep -q "capture-file source" "$E" || fail ".errors lacks the capture source write refusal"
expect_fail "echo bogus > '$MP/src/ctl'" "Invalid argument"; grep -q "unknown command 'bogus'" "$E" || fail "ctl reason"
expect_fail "touch '$MP/src/newfile'" "Operation not permitted"
mkdir -p "$MP/j/count"
expect_fail "ln -s ../../j '$MP/j/count/back'" "Too many levels of symbolic links"
expect_fail "ln -s /nowhere '$MP/j/count/x'" "No such file"
alive
# A reader of a removed filter gets EOF; opening the path afterwards gives ENOENT.
mkdir "$MP/src/ip/udp"
bg cat "$MP/src/ip/udp/all"
sleep 0.2
rmdir "$MP/src/ip/udp"
wait_exit "$LAST_PID" 5
expect_fail "cat '$MP/src/ip/udp/all'" "No such file"
# Missing and corrupt capture files.
expect_fail "echo 'source x=pcap:/nonexistent.pcap' > '$MP/.ctl'" "No such file"
grep -q "cannot read '/nonexistent.pcap'" "$E" || fail ".errors lacks the missing file"
printf 'this is not a capture' > "$WORK/bad.pcap"
expect_fail "echo 'source y=pcap:$WORK/bad.pcap' > '$MP/.ctl'" "Invalid argument"
grep -q "is not a capture file libpcap can read" "$E" || fail ".errors lacks the corrupt file"
expect_fail "echo 'source src=pcap:$IT_DATA/mix.pcap' > '$MP/.ctl'" "File exists"
mkfifo "$WORK/fifo"
expect_fail "timeout 5 bash -c \"echo 'source f=pcap:$WORK/fifo' > '$MP/.ctl'\"" "Invalid argument"
grep -q "is not a regular file" "$E" || fail ".errors lacks the FIFO refusal"
# A truncated file: packets up to the damage, then EOF, and the damage is reported.
head -c 100000 "$IT_DATA/mix.pcap" > "$WORK/trunc.pcap"
echo "source t=pcap:$WORK/trunc.pcap,paused" > "$MP/.ctl"
mkdir "$MP/t/ip"
bg cat "$MP/t/ip/all.pcap" > "$WORK/t.pcap"
sleep 0.2
echo start > "$MP/t/ctl"
wait_exit "$LAST_PID" 10
n=$(tcpdump -nr "$WORK/t.pcap" 2>/dev/null | wc -l)
[ "$n" -gt 100 ] || fail "truncated file: only $n packets before the damage"
grep -q "is damaged after" "$E" || fail ".errors lacks the damaged file"
ok "truncated capture: $n packets, then EOF"
alive
# Mounting with a bad source fails on the terminal, before mounting.
mkdir "$WORK/mp2"
if "$PIPESFS" mount "$WORK/mp2" --no-rx --no-tx --source x=pcap:/nonexistent.pcap 2> "$WORK/err"; then fail "mount with a missing file succeeded"; fi
grep -q "cannot read '/nonexistent.pcap'" "$WORK/err" || fail "mount error message: $(cat "$WORK/err")"
mountpoint -q "$WORK/mp2" && fail "mounted anyway"
cat "$E"
alive
ok "errors"
