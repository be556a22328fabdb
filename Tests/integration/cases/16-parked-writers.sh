# Writers behind a lagging lossless reader are queued, not holding server threads: more writers than the
# server has threads all complete and lose nothing, the tree answers meanwhile, an interrupted writer leaves at
# once, a non-blocking writer gets EAGAIN, and SIGTERM with writers still queued ends them and exits cleanly.
# (The kernel lets one write at a time into a file, so each writer gets its own junction, linked into x.)
source "$(dirname "$0")/../lib.sh"
mount_pipes --no-rx --no-tx
mkdir "$MP/j"   # the stream the lagging reader reads
mkdir "$MP/j/count"
exec 3<"$MP/j/all"   # a reader that does not read yet
N=80                 # the server runs at most 64 request threads
writers=()
for i in $(seq 0 $N); do
    mkdir "$MP/w$i"
    ln -s "$MP/j" "$MP/w$i/j"
done
for i in $(seq 1 $N); do
    bg sh -c "head -c 131072 /dev/zero | tr '\\000' x | dd of='$MP/w$i/all' bs=65536 iflag=fullblock status=none" 3<&-
    writers+=("$LAST_PID")
done
waiting() { cat "$MP"/$1/stats | awk '/^writers_waiting/ {n += $2} END {print n + 0}'; }
wait_for 20 "[ \$(waiting 'w*') -ge 40 ]" || fail "only $(waiting 'w*') writes are queued"
ok "$(waiting 'w*') writes queued behind the reader"
timeout 5 ls "$MP/j" > /dev/null || fail "ls hangs while writers wait"
timeout 5 mkdir "$MP/other" || fail "mkdir hangs while writers wait"
ok "the tree answers while writers wait"

# Non-blocking: EAGAIN at once.
out=$(python3 -c "
import os, errno
fd = os.open('$MP/w0/all', os.O_WRONLY | os.O_NONBLOCK)
try:
    os.write(fd, b'y' * 100); print('written')
except OSError as e:
    print(errno.errorcode[e.errno])
")
[ "$out" = EAGAIN ] || fail "a non-blocking write behind a lagging reader gave '$out'"
ok "non-blocking writer: EAGAIN"

# Interrupt: a fatal signal makes the kernel ask the server to interrupt the queued write, and then wait for
# the answer: without one the writer would hang, unkillable, until the reader read.
bg dd if=/dev/zero of="$MP/w0/all" bs=1000 count=1 status=none 3<&-
ipid=$LAST_PID
wait_for 5 "[ \$(waiting w0) = 1 ]" || fail "the extra writer was not queued"
kill -TERM $ipid
wait_exit $ipid 5
ok "an interrupted queued writer leaves at once"

# Read everything: every writer completes, nothing is lost, nothing of the interrupted write arrives.
bg sh -c "cat <&3 > '$WORK/out'"
for p in "${writers[@]}"; do wait_exit "$p" 60; done
want=$((N * 131072))
wait_for 20 "[ \$(stat -c %s '$WORK/out') -ge $want ]" || fail "got $(stat -c %s "$WORK/out") of $want bytes"
sleep 0.3
got=$(stat -c %s "$WORK/out")
xs=$(tr -cd x < "$WORK/out" | wc -c)
[ "$got" = "$want" ] && [ "$xs" = "$want" ] || fail "got $got bytes ($xs x) of $want"
[ "$(awk '/^dropped/ {print $2}' "$MP/j/stats")" = 0 ] || fail "drops on a lossless stream: $(cat "$MP/j/stats")"
[ "$(awk '/^packets_in/ {print $2}' "$MP/j/count/stats")" -ge $((N * 2)) ] || fail "count saw too few blocks"
ok "$N writers x 128 KiB through a lagging reader: all $want bytes, no drops"

# A sink pointed into this very mount is refused (it would wait for the graph it runs in).
mkdir "$MP/p" "$MP/p/pcapout=inside.pcap"
expect_fail "bash -c 'echo \"args $MP/j/all\" > \"$MP/p/pcapout=inside.pcap/ctl\"'" "Invalid argument"
grep -q "inside this PipesFS mount" "$MP/.errors" || fail "no reason in .errors: $(tail -3 "$MP/.errors")"
alive

# Unmount by SIGTERM while writes are queued: writers get an error, the daemon exits cleanly.
mkdir "$MP/k"
exec 4<"$MP/k/all"
kwriters=()
for i in 1 2 3 4 5; do
    mkdir "$MP/k$i"
    ln -s "$MP/k" "$MP/k$i/k"
    bg sh -c "head -c 3000000 /dev/zero | dd of='$MP/k$i/all' bs=1000000 iflag=fullblock status=none 2>/dev/null" 3<&- 4<&-
    kwriters+=("$LAST_PID")
done
wait_for 20 "[ \$(waiting 'k?') -ge 3 ]" || fail "writes to k were not queued"
queued=$(waiting 'k?')
kill -TERM "$DAEMON_PID"   # the reader of k (fd 4) still open and lagging
wait_for 15 "! kill -0 $DAEMON_PID 2>/dev/null" || fail "the daemon did not exit with writers queued"
wait "$DAEMON_PID"; rc=$?
DAEMON_PID=""
[ "$rc" = 0 ] || { cat "$WORK/daemon.log"; fail "daemon exit status $rc"; }
failed=0
for p in "${kwriters[@]}"; do
    wait_for 10 "! kill -0 $p 2>/dev/null" || fail "writer $p still running after the unmount"
    wait "$p" || failed=$((failed + 1))
done
# A writer may have finished before the ring filled; every queued one must have failed.
[ "$failed" -ge "$queued" ] || fail "$queued writes were queued at unmount but only $failed writers failed"
for p in "${BG_PIDS[@]}"; do wait_exit "$p" 10; done
exec 4<&- 3<&-
grep -E "fuse: |Bad file|writing device" "$WORK/daemon.log" && fail "replies after the session ended: $(cat "$WORK/daemon.log")"
ok "SIGTERM with queued writers: clean exit"
