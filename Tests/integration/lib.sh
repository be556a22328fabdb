# Helpers for integration cases. Sourced by each case; PIPESFS and IT_DATA come from the runner.
set -euo pipefail
MP=$(mktemp -d /tmp/pipesfs-mp.XXXXXX)
WORK=$(mktemp -d /tmp/pipesfs-work.XXXXXX)
DAEMON_PID=""
BG_PIDS=()

cleanup() {
    set +e
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
    if mountpoint -q "$MP"; then fusermount3 -u "$MP" 2>/dev/null || fusermount3 -u -z "$MP"; fi
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null
    rmdir "$MP" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

# mount_pipes [pipesfs mount options...]: mounts at $MP in the foreground (in the background of this shell).
mount_pipes() {
    "$PIPESFS" mount "$MP" -f "$@" >"$WORK/daemon.log" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 1 100); do
        mountpoint -q "$MP" && [ -e "$MP/.errors" ] && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$WORK/daemon.log"; fail "daemon exited"; }
        sleep 0.05
    done
    fail "mount did not appear"
}

# bg CMD...: runs a command in the background, remembered for cleanup; sets LAST_PID.
bg() { "$@" & LAST_PID=$!; BG_PIDS+=("$LAST_PID"); }

# wait_for SECONDS CONDITION...: polls a shell condition.
wait_for() {
    local t=$1; shift
    local end=$(( $(date +%s%N) + t * 1000000000 ))
    until eval "$@"; do
        [ "$(date +%s%N)" -gt "$end" ] && return 1
        sleep 0.05
    done
}

# wait_exit PID SECONDS: waits for a background process to exit; fails if it does not.
wait_exit() {
    local pid=$1 t=$2
    wait_for "$t" "! kill -0 $pid 2>/dev/null" || fail "process $pid still running after ${t}s"
    wait "$pid" 2>/dev/null || true
}

# expect_errno "CMD" "Message fragment" "errors-file fragment": CMD must fail with strerror text.
expect_fail() {
    local cmd=$1 msg=$2
    local out
    if out=$(eval "$cmd" 2>&1); then fail "'$cmd' succeeded, expected: $msg"; fi
    echo "$out" | grep -qF "$msg" || fail "'$cmd' said '$out', expected '$msg'"
    ok "$cmd -> $msg"
}

alive() { mountpoint -q "$MP" && ls "$MP" >/dev/null || fail "server is not answering"; }

# Canonical packet dump for comparing captures: timestamps, lengths and bytes.
dump() { tcpdump -r "$1" -nn -tt -xx 2>/dev/null; }
