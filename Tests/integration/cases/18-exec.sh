# exec: Unix processes as filters. A capture file's raw stream through `exec=tr a-z A-Z`, `exec=grep -a ...` and
# `exec=sh -c '...'` equals the same commands run on the stream read directly; a chain of two execs ends when the
# last process exits; rmdir and unmount end running processes (no zombies); bad commands fail mkdir precisely.
# Alongside, pcapout (written from its writer thread through io_uring) makes the same file as tcpdump -w.
source "$(dirname "$0")/../lib.sh"
CAP="$WORK/cap.pcap"
"$PIPESFS" mkpcap "$CAP" --flows 3000 --seed 7 > /dev/null
mount_pipes --no-rx --no-tx --spool "$WORK" --source "src=pcap:$CAP,paused" --source "g=gen:size=1000,rate=200000,paused"

mkdir "$MP/src/exec=tr a-z A-Z" "$MP/src/exec=grep -a -c HTTP" "$MP/src/exec=sh -c 'tr -d x | wc -c'"
mkdir "$MP/src/exec=tr a-z A-Z/exec=wc -c" "$MP/src/pcapout=copy.pcap"
bg cat "$MP/src/all" > "$WORK/raw"; PIDS=($LAST_PID)
bg cat "$MP/src/exec=tr a-z A-Z/all" > "$WORK/upper"; PIDS+=($LAST_PID)
bg cat "$MP/src/exec=grep -a -c HTTP/all" > "$WORK/grep"; PIDS+=($LAST_PID)
bg cat "$MP/src/exec=sh -c 'tr -d x | wc -c'/all" > "$WORK/sh"; PIDS+=($LAST_PID)
bg cat "$MP/src/exec=tr a-z A-Z/exec=wc -c/all" > "$WORK/chain"; PIDS+=($LAST_PID)
sleep 0.3
grep -q "^process: running" "$MP/src/exec=tr a-z A-Z/stats" || fail "tr is not running: $(cat "$MP/src/exec=tr a-z A-Z/stats")"
echo start > "$MP/src/ctl"
for p in "${PIDS[@]}"; do wait_exit "$p" 60; done
size=$(stat -c %s "$WORK/raw")
[ "$size" -gt 1000000 ] || fail "the raw stream is too small ($size bytes)"
tr a-z A-Z < "$WORK/raw" | cmp - "$WORK/upper" || fail "exec=tr a-z A-Z differs from tr run on the stream"
ok "exec=tr a-z A-Z == tr a-z A-Z ($size bytes)"
want=$(grep -a -c HTTP < "$WORK/raw" || true)
[ "$(cat "$WORK/grep")" = "$want" ] || fail "exec=grep -a -c HTTP said '$(cat "$WORK/grep")', grep says '$want'"
[ "$want" -gt 0 ] || fail "no HTTP in the capture: the grep comparison proves nothing"
ok "exec=grep -a -c HTTP == grep ($want)"
want=$(tr -d x < "$WORK/raw" | wc -c)
[ "$(cat "$WORK/sh")" = "$want" ] || fail "exec=sh -c '...' said '$(cat "$WORK/sh")', the shell says '$want'"
ok "exec=sh -c 'tr -d x | wc -c' == $want"
[ "$(cat "$WORK/chain")" = "$size" ] || fail "exec below exec counted '$(cat "$WORK/chain")' bytes of $size"
ok "exec=wc -c below exec=tr saw all $size bytes, and its stream ended"
grep -q "^input_dropped: 0" "$MP/src/exec=tr a-z A-Z/stats" || fail "lossless input dropped: $(cat "$MP/src/exec=tr a-z A-Z/stats")"
grep -q "^process: exited with status 0" "$MP/src/exec=tr a-z A-Z/stats" || fail "tr did not exit cleanly"
grep -q "^stream: ended" "$MP/src/exec=tr a-z A-Z/stats" || fail "the stream of an exited process is not ended"
ok "nothing dropped, tr exited 0, its stream ended"
echo sync > "$MP/src/pcapout=copy.pcap/ctl"
tcpdump -r "$CAP" -w "$WORK/tcpdump-copy.pcap" 2>/dev/null
cmp "$WORK/tcpdump-copy.pcap" "$WORK/copy.pcap" || fail "pcapout's file differs from tcpdump -w's"
grep -q "^io: io_uring" "$MP/src/pcapout=copy.pcap/stats" || fail "pcapout does not use io_uring: $(cat "$MP/src/pcapout=copy.pcap/stats")"
ok "pcapout wrote what tcpdump -w writes, through io_uring"

# rmdir while running: the reader gets end of file, the process is gone and reaped.
mkdir "$MP/g/exec=cat"
bg cat "$MP/g/exec=cat/all" > /dev/null; reader=$LAST_PID
echo start > "$MP/g/ctl"
wait_for 10 "grep -q '^process: running' '$MP/g/exec=cat/stats'" || fail "cat did not start"
pid=$(awk '/^pid:/ {print $2}' "$MP/g/exec=cat/stats")
wait_for 10 "[ \$(awk '/^packets_out:/ {print \$2}' '$MP/g/exec=cat/stats') -gt 0 ]" || fail "no output from cat"
rmdir "$MP/g/exec=cat"
wait_exit "$reader" 10
wait_for 5 "! kill -0 $pid 2>/dev/null" || fail "process $pid still exists after rmdir ($(ps -o stat= -p "$pid"))"
ok "rmdir: the reader got EOF, process $pid is gone and reaped"

# Bad commands fail mkdir with an errno and a line in .errors.
expect_fail "mkdir '$MP/src/exec=no-such-command-pipesfs -x'" "No such file or directory"
grep -q "exec: 'no-such-command-pipesfs': command not found in PATH" "$MP/.errors" || fail ".errors: $(cat "$MP/.errors")"
expect_fail "mkdir '$MP/src/exec=grep a | wc -l'" "Invalid argument"
grep -q "'|' at position 8 is shell syntax" "$MP/.errors" || fail ".errors: $(cat "$MP/.errors")"
expect_fail "mkdir '$MP/src/exec='" "Invalid argument"
printf '#!/bin/sh\n' > "$WORK/notexec"
mkdir "$MP/src/exec=true"
# (ctl args reports every refused argument text as EINVAL; the reason names the cause.)
expect_fail "echo 'args $WORK/notexec' > '$MP/src/exec=true/ctl'" "Invalid argument"
grep -q "is not executable" "$MP/.errors" || fail ".errors: $(cat "$MP/.errors")"
rmdir "$MP/src/exec=true"
ok "bad commands: ENOENT, EINVAL with their reasons in .errors"

# stderr and a failing status reach .errors.
mkdir "$MP/g/exec=sh -c 'echo complaint >&2; exit 4'"
wait_for 10 "grep -q 'exited with status 4' '$MP/.errors'" || fail "no exit status in .errors: $(cat "$MP/.errors")"
grep -q "stderr: complaint" "$MP/.errors" || fail "no stderr line in .errors"
rmdir "$MP/g/exec=sh -c 'echo complaint >&2; exit 4'"
ok "stderr lines and the exit status are in .errors"

# Unmount ends running processes, even one that ignores SIGTERM, and the daemon exits.
mkdir "$MP/g/exec=sleep 1000" "$MP/g/exec=sh -c 'trap \"\" TERM; while :; do sleep 1; done'"
wait_for 10 "grep -q '^process: running' '$MP/g/exec=sleep 1000/stats'" || fail "sleep did not start"
p1=$(awk '/^pid:/ {print $2}' "$MP/g/exec=sleep 1000/stats")
p2=$(awk '/^pid:/ {print $2}' "$MP/g/exec=sh -c 'trap \"\" TERM; while :; do sleep 1; done'/stats")
sleep 0.3
fusermount3 -u "$MP"
wait_exit "$DAEMON_PID" 15
for p in $p1 $p2; do kill -0 "$p" 2>/dev/null && fail "process $p survived the unmount"; done
ok "unmount ended both processes (SIGTERM, then SIGKILL) and the daemon exited"
