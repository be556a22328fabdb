# Standard tools on taps: head, dd, tee, grep, stat, poll(2), O_NONBLOCK, tshark; reads block until data.
source "$(dirname "$0")/../lib.sh"
mount_pipes --no-rx --no-tx --source "src=pcap:$IT_DATA/mix.pcap,loop,rate=20000"
mkdir -p "$MP/src/ip/tcp/dport/80/payload"
timeout 10 head -c 100000 "$MP/src/ip/all" > "$WORK/h" 2>/dev/null
[ "$(stat -c %s "$WORK/h")" = 100000 ] || fail "head -c"
timeout 10 dd if="$MP/src/ip/all.pcap" of="$WORK/d" bs=1M count=1 iflag=fullblock 2>/dev/null
[ "$(stat -c %s "$WORK/d")" = 1048576 ] || fail "dd bs=1M"
timeout 10 cat "$MP/src/ip/tcp/dport/80/payload/all" | grep -a -m 3 "^GET " > "$WORK/g" || true
[ "$(wc -l < "$WORK/g")" = 3 ] || fail "grep on payload: $(cat "$WORK/g")"
timeout 10 cat "$MP/src/ip/tcp/dport/80/all.pcap" | tee "$WORK/t1" | head -c 50000 > "$WORK/t2" || true
[ "$(stat -c %s "$WORK/t2")" = 50000 ] || fail "tee"
timeout 10 tshark -r "$MP/src/ip/tcp/dport/80/all.pcap" -c 20 2>/dev/null | grep -c HTTP > "$WORK/ts" || true
[ "$(cat "$WORK/ts")" -ge 1 ] || fail "tshark -r on a live tap"
# poll(2) and O_NONBLOCK on a quiet tap, then data arrives by injection.
mkdir "$MP/q"
python3 - "$MP/q/all" <<'PY' || fail "poll/O_NONBLOCK"
import os, select, sys, threading, time
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
try:
    os.read(fd, 100); sys.exit("non-blocking read of an empty tap did not fail")
except BlockingIOError:
    pass
p = select.poll(); p.register(fd, select.POLLIN)
if p.poll(200): sys.exit("poll says readable on an empty tap")
def inject():
    time.sleep(0.3)
    w = os.open(path, os.O_WRONLY); os.write(w, b"hello"); os.close(w)
threading.Thread(target=inject).start()
t0 = time.time()
ev = p.poll(5000)
if not ev: sys.exit("poll did not wake up")
data = os.read(fd, 100)
if data != b"hello": sys.exit("read %r" % data)
print("poll woke after %.2fs" % (time.time() - t0))
PY
# A blocking read waits for data, and a signal interrupts it promptly (FUSE_INTERRUPT).
bg cat "$MP/q/all"
sleep 0.3
kill -TERM "$LAST_PID"
wait_exit "$LAST_PID" 2
grep -q "^readers: 0" "$MP/q/stats" || fail "interrupted reader still counted"
ok "tools"

# The request language: `pipesfs explain` prints the graph of a request, or refuses it with a caret (status 2).
out=$("$PIPESFS" explain 'rx | ip | tcp | dport |http count + match GET')
echo "$out"
echo "$out" | grep -q "#3 dport -> #4 count \[http\]" || fail "explain: no arc dport -> count [http]"
echo "$out" | grep -q "#3 dport -> #5 match \[http\]" || fail "explain: + binds tighter than |: match is fed by dport [http]"
set +e
err=$("$PIPESFS" explain 'rx | ip | tcp | dport |htp count' 2>&1 >/dev/null); rc=$?
set -e
[ "$rc" = 2 ] || fail "explain of a bad request exited $rc, want 2"
[ "$(echo "$err" | sed -n 1p)" = "pipesfs: 1:24: unknown class name 'htp' in 'htp' (after dport)" ] || fail "explain said: $err"
[ "$(echo "$err" | sed -n 3p)" = "                       ^~~" ] || fail "explain's caret is misplaced: $err"
# Placement (§7.1): with --spaces N explain places for a mount of N spaces and gives the reason per node.
out=$("$PIPESFS" explain --spaces 2 'rx | ip | tcp --space=1 | count')
echo "$out" | grep -q "placed in user1: --space=1" || fail "explain --spaces 2: tcp not placed by its --space: $out"
echo "$out" | grep -A1 "#3 count" | grep -q "placed in user1: .*same space as its input" || fail "explain --spaces 2: count did not follow its input: $out"
set +e
err=$("$PIPESFS" explain --spaces 1 'rx | tcp --space=1 | count' 2>&1 >/dev/null); rc=$?
set -e
[ "$rc" = 2 ] && echo "$err" | grep -q "no space 1" || fail "explain --spaces 1 with --space=1: status $rc, said: $err"
ok "explain"
