# The client library (libpipes, C): a reader maps a node's ring through the daemon's ring service and reads it
# with no FUSE round trip. Mapped readers, a FUSE reader and a fallback reader of the same stream see the same
# bytes; a slow mapped reader loses nothing on a lossless stream; a mapped reader killed mid-stream does not stall
# the others; permissions are those of open(2); unmount ends mapped readers; the multiway pipe works across fork.
source "$(dirname "$0")/../lib.sh"
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
make -s -C "$ROOT/examples" B="$WORK/c" >/dev/null || fail "building libpipes and the examples"
chmod 755 "$WORK" "$WORK/c"
TAPCAT="$WORK/c/tapcat"

# 1. Four readers of one stream: two mapped (copying, and peeking only), cat through FUSE, and the fallback.
mount_pipes --no-rx --no-tx --source "g=gen:size=1000,count=30000,paused" --source "h=gen:size=4000,count=12000,paused"
getfattr_value=$(python3 -c "import os,sys; print(os.getxattr(sys.argv[1], 'user.pipes.ring').decode())" "$MP/g/all")
echo "$getfattr_value" | grep -qE '^@pipesfs\.[0-9]+\.[0-9]+ [0-9]+$' || fail "user.pipes.ring is '$getfattr_value'"
bg "$TAPCAT" "$MP/g/all" > "$WORK/m1" 2> "$WORK/m1.err"; p1=$LAST_PID
bg "$TAPCAT" -c "$MP/g/all" > "$WORK/m2" 2> "$WORK/m2.err"; p2=$LAST_PID
bg cat "$MP/g/all" > "$WORK/f1"; p3=$LAST_PID
bg "$TAPCAT" -n "$MP/g/all" > "$WORK/n1" 2> "$WORK/n1.err"; p4=$LAST_PID
wait_for 5 "grep -q mapped '$WORK/m1.err' && grep -q mapped '$WORK/m2.err' && grep -q filesystem '$WORK/n1.err'" || fail "readers did not open"
grep -q "^readers: 2" "$MP/g/stats" || true
echo start > "$MP/g/ctl"
for p in $p1 $p2 $p3 $p4; do wait_exit "$p" 30; done
[ "$(stat -c %s "$WORK/m1")" = 30000000 ] || fail "mapped reader got $(stat -c %s "$WORK/m1") bytes"
cmp "$WORK/m1" "$WORK/f1" || fail "mapped and FUSE readers differ"
cmp "$WORK/n1" "$WORK/f1" || fail "fallback and FUSE readers differ"
[ "$(cat "$WORK/m2")" = "30000 30000000 0" ] || fail "peeking reader: $(cat "$WORK/m2")"
ok "mapped (copy and peek), fallback and FUSE readers of one stream got the same 30 MB"

# 2. A slow mapped reader on a lossless stream (48 MB through a 16 MiB ring): nothing lost, nothing reordered.
bg sh -c "'$TAPCAT' -q '$MP/h/all' | (sleep 2; cat) > '$WORK/slow'"; ps=$LAST_PID
bg "$TAPCAT" -q "$MP/h/all" > "$WORK/fast"; pf=$LAST_PID
bg "$TAPCAT" -q "$MP/h/all" > /dev/null; pk=$LAST_PID
sleep 0.5
echo start > "$MP/h/ctl"
sleep 0.3
kill -9 "$pk"   # a reader killed while mapped: its slot is reclaimed, the others go on
wait_exit "$pf" 60
wait_exit "$ps" 60
[ "$(stat -c %s "$WORK/slow")" = 48000000 ] || fail "slow reader got $(stat -c %s "$WORK/slow") bytes"
cmp "$WORK/slow" "$WORK/fast" || fail "slow and fast readers differ"
python3 - "$WORK/slow" <<'PY' || fail "gen blocks out of order or damaged"
import struct, sys
data = open(sys.argv[1], 'rb').read()
for i in range(0, len(data), 4000):
    if struct.unpack_from('<Q', data, i)[0] != i // 4000:
        sys.exit(1)
PY
grep -q "^dropped: 0" "$MP/h/stats" || fail "drops on a lossless stream: $(grep dropped "$MP/h/stats")"
ok "a slow mapped reader got all 48 MB in order; a killed reader did not stall the stream"

# 3. Not a PipesFS file: the library falls back to read(2).
head -c 100000 /dev/urandom > "$WORK/plain"
"$TAPCAT" "$WORK/plain" > "$WORK/plain.out" 2> "$WORK/plain.err"
cmp "$WORK/plain" "$WORK/plain.out" || fail "fallback read of a plain file"
grep -q "through the filesystem" "$WORK/plain.err" || fail "plain file: $(cat "$WORK/plain.err")"
ok "a plain file is read through the filesystem"

# 4. Errors: a missing node, a bogus request to the ring service.
expect_fail "'$TAPCAT' '$MP/nope/all'" "No such file or directory"
sock=$(echo "$getfattr_value" | cut -d' ' -f1 | cut -c2-)
reply=$(python3 -c "
import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect('\0'+sys.argv[1]); s.sendall(b'hello\n'); print(s.recv(200).decode().strip())" "$sock")
echo "$reply" | grep -q "^error 71 expected 'attach NODE'" || fail "bogus request: $reply"
reply=$(python3 -c "
import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect('\0'+sys.argv[1]); s.sendall(b'attach 999999\n'); print(s.recv(200).decode().strip())" "$sock")
echo "$reply" | grep -q "^error 2 " || fail "unknown node: $reply"
alive
ok "the ring service refuses bad requests with an errno"
fusermount3 -u "$MP"; wait_exit "$DAEMON_PID" 10

# 5. Permissions: a live-capture stream is root's; a user's mapping is refused like open(2).
U=pipesfs-it
id "$U" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$U"
chmod 755 "$MP"
mount_pipes --rx lo --no-tx --source "g=gen:size=1000,rate=100000"
mkdir "$MP/rx/ip" "$MP/g/count"
if runuser -u "$U" -- "$TAPCAT" "$MP/rx/ip/all" 2> "$WORK/perm.err"; then fail "a user mapped live capture"; fi
grep -q "Permission denied" "$WORK/perm.err" || fail "live tap as user: $(cat "$WORK/perm.err")"
runuser -u "$U" -- timeout 5 "$TAPCAT" "$MP/g/all" 2> "$WORK/u.err" | head -c 5000 > "$WORK/u.out" || true
[ "$(stat -c %s "$WORK/u.out")" = 5000 ] || fail "a user could not read a gen stream: $(cat "$WORK/u.err")"
grep -q "through the filesystem" "$WORK/u.err" || fail "another user's reader was mapped: $(cat "$WORK/u.err")"
grep -q "rings are mapped for uid 0 and root only" "$MP/.errors" && fail "a refused mapping was logged as an error"
ok "another user reads through the filesystem (rings are mapped for the daemon's user and root), and is refused live capture (EACCES)"

# 6. Unmount ends a mapped reader that waits.
bg "$TAPCAT" -q "$MP/g/count/all" > /dev/null; pw=$LAST_PID
sleep 0.5
fusermount3 -u "$MP"
wait_exit "$pw" 10
ok "unmount ends mapped readers"

# 7. The multiway pipe across fork: one writer, 4 readers, every byte checked by each.
"$WORK/c/mpipe" 4 50000 700 | grep -q "every reader got every byte" || fail "mpipe"
ok "mpipe: 4 reader processes got every byte"
cat > "$WORK/mpdie.c" <<'C'
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#include "pipes_client.h"
int main(void) {   /* a reader gets end of stream when the writer process dies, as with a pipe */
    int fds[2];
    if (pipes_mpipe(fds, 2, 0) != 0) return 1;
    pid_t w = fork();
    if (w == 0) { pipes_mpipe_write(fds[0], "hello", 5); pause(); _exit(0); }
    char b[16];
    ssize_t n = pipes_mpipe_read(fds[1], b, sizeof b);
    kill(w, SIGKILL);
    waitpid(w, 0, 0);
    ssize_t m = pipes_mpipe_read(fds[1], b, sizeof b);
    return n == 5 && m == 0 ? 0 : 1;
}
C
cc -o "$WORK/mpdie" "$WORK/mpdie.c" -I "$ROOT/Sources/CPipesClient/include" -I "$ROOT/Sources/PipesRingABI/include" \
    -L "$WORK/c" -lpipes -Wl,-rpath,"$WORK/c" || fail "building mpdie"
timeout 10 "$WORK/mpdie" || fail "an mpipe reader did not get end of stream when its writer died"
ok "mpipe: a reader gets end of stream when the writer dies"

# 8. A daemon killed with SIGKILL never closes its rings; a mapped reader notices through its lease (the
#    connection the ring came over) and fails with ECONNRESET instead of waiting for ever.
mount_pipes --no-rx --no-tx --source "g=gen:size=1000,count=10,paused"
bg "$TAPCAT" -q "$MP/g/all"; pr=$LAST_PID
sleep 0.5
kill -0 "$pr" || fail "the reader did not wait"
kill -9 "$DAEMON_PID"
wait_for 10 "! kill -0 $pr 2>/dev/null" || fail "a mapped reader still waits for a daemon killed with SIGKILL"
set +e; wait "$pr"; st=$?; set -e
[ "$st" != 0 ] || fail "the reader exited 0 after its daemon was killed"
fusermount3 -u -z "$MP" 2>/dev/null || true
DAEMON_PID=""
ok "a mapped reader fails (ECONNRESET) when its daemon is killed"
