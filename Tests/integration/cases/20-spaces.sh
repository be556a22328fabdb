# Execution spaces (§6.2): with --spaces 2, `echo 'space 1' > ctl` moves a stage (and what hangs below it) onto
# the second space's thread, pinned to its CPU. Blocks cross through a channel: the selection still equals
# tcpdump's, readers get end of file only after the last block crossed, nothing is dropped; bad placements are
# refused with a clear errno.
source "$(dirname "$0")/../lib.sh"
CAP="$WORK/cap.pcap"
"$PIPESFS" mkpcap "$CAP" --flows 4000 --seed 21 > "$WORK/summary.json"

# Bad options are refused before mounting.
for bad in "--spaces 0" "--spaces 65" "--spaces 2 --space-cpus 0" "--spaces 2 --space-cpus 0,x"; do
    # shellcheck disable=SC2086
    if out=$("$PIPESFS" mount "$MP" -f --no-rx --no-tx $bad 2>&1); then fail "mount $bad was accepted"; fi
    echo "$out" | grep -q -- "--space" || fail "mount $bad: unclear error: $out"
    ok "mount $bad refused: $out"
done

mount_pipes --no-rx --no-tx --spaces 2 --source "src=pcap:$CAP,paused"
mkdir -p "$MP/src/ip/tcp/dport/80/count"
grep -q "^space: 0" "$MP/src/ip/tcp/stats" || fail "a new filter is not in space 0"
grep -q "space 0..1" "$MP/src/ip/tcp/ctl" || fail "ctl does not offer 'space K'"
echo 'space 1' > "$MP/src/ip/tcp/ctl"
for d in ip/tcp ip/tcp/dport ip/tcp/dport/80 ip/tcp/dport/80/count; do
    grep -q "^space: 1" "$MP/src/$d/stats" || fail "$d is not in space 1: $(grep '^space' "$MP/src/$d/stats")"
done
grep -q "^space: 0" "$MP/src/ip/stats" || fail "ip moved too"
ok "tcp and its subtree run in space 1; ip stays in space 0"

# The space's thread exists, named and pinned to CPU 1 (space i on CPU i by default).
cat "$MP/.spaces"
sed -n 3p "$MP/.spaces" | grep -q "^1 1 [0-9]" || fail ".spaces does not show space 1 pinned to CPU 1 with a thread"
tid=$(sed -n 3p "$MP/.spaces" | cut -d' ' -f3)
grep -q "pipes-space1" "/proc/$DAEMON_PID/task/$tid/comm" || fail "thread $tid is not pipes-space1: $(cat /proc/$DAEMON_PID/task/$tid/comm)"
mask=$(taskset -p "$tid" | sed 's/.*: //')
[ "$mask" = 2 ] || fail "space 1's thread has affinity mask $mask, want 2 (CPU 1)"
ok "space 1: thread $tid, pinned to CPU 1"

# Bad placements.
expect_fail "echo 'space 2' > '$MP/src/ip/ctl'" "Invalid argument"
expect_fail "echo 'space one' > '$MP/src/ip/ctl'" "Invalid argument"
expect_fail "echo 'space 1' > '$MP/src/ctl'" "Invalid argument"
expect_fail "echo 'space 0' > '$MP/src/ip/tcp/dport/ctl'" "Resource deadlock avoided"
grep -q "cycle" "$MP/.errors" || fail ".errors does not explain the refused cycle"
grep -q "^space: 1" "$MP/src/ip/tcp/dport/stats" || fail "a refused placement moved the node"
alive

# The stream crosses the channel intact and ends after its last block.
bg cat "$MP/src/ip/tcp/dport/80/all.pcap" > "$WORK/port80.pcap"; P1=$LAST_PID
sleep 0.3
echo start > "$MP/src/ctl"
wait_exit "$P1" 60
tcpdump -r "$CAP" -w "$WORK/ref80.pcap" 'ip and tcp dst port 80' 2>/dev/null
n=$(tcpdump -nr "$WORK/ref80.pcap" 2>/dev/null | wc -l)
[ "$n" -gt 100 ] || fail "reference selection too small ($n)"
cmp <(dump "$WORK/ref80.pcap") <(dump "$WORK/port80.pcap") || fail "ip/tcp/dport/80 across spaces differs from tcpdump"
ok "ip/tcp/dport/80 across two spaces == tcpdump ($n packets)"
cat "$MP/src/ip/tcp/stats"
line=$(grep "^channel_in:" "$MP/src/ip/tcp/stats") || fail "no channel_in line on the node fed across spaces"
produced=$(sed 's/.*produced=\([0-9]*\).*/\1/' <<<"$line")
delivered=$(sed 's/.*delivered=\([0-9]*\).*/\1/' <<<"$line")
[ "$produced" -gt 0 ] && [ "$produced" = "$delivered" ] || fail "channel: $line"
grep -q "dropped=0 refused=0 policy=block" <<<"$line" || fail "channel lost blocks: $line"
ip_out=$(sed -n 's/^packets_out: //p' "$MP/src/ip/stats")
tcp_in=$(sed -n 's/^packets_in: //p' "$MP/src/ip/tcp/stats")
[ "$ip_out" = "$tcp_in" ] && [ "$tcp_in" = "$produced" ] || fail "ip sent $ip_out, tcp got $tcp_in, channel $produced"
grep -q "^stream: ended" "$MP/src/ip/tcp/dport/80/count/stats" || fail "the stream below the channel did not end"
ok "channel: $line"

# Moving back and forth while the capture replays keeps the selection exact.
printf 'stop\nrewind\n' > "$MP/src/ctl"
bg cat "$MP/src/ip/tcp/dport/80/all.pcap" > "$WORK/again.pcap"; P2=$LAST_PID
sleep 0.3
echo start > "$MP/src/ctl"
for i in $(seq 1 20); do
    echo "space $((i % 2))" > "$MP/src/ip/tcp/ctl" 2>/dev/null || true
    sleep 0.02
done
wait_exit "$P2" 60
cmp <(dump "$WORK/ref80.pcap") <(dump "$WORK/again.pcap") || fail "moving tcp between spaces while playing changed the selection"
ok "20 moves while playing: selection unchanged"
alive
