# Sourced by the example applications. Two ways to run them:
#   PIPES=/pipes ./webtap.sh          on a mounted PipesFS whose rx is live capture (runs until interrupted)
#   ./webtap.sh [CAPTURE]             on a private mount whose rx plays CAPTURE once (default: a synthetic
#                                     capture from `pipesfs mkpcap`), then stops: how CI runs them
# PIPESFS names the binary (default: pipesfs on PATH). OUT (default: a new directory) receives the results.
set -euo pipefail
PIPESFS=${PIPESFS:-pipesfs}
OUT=${OUT:-$(mktemp -d /tmp/pipesfs-example.XXXXXX)}
mkdir -p "$OUT"
LIVE=0
if [ -n "${PIPES:-}" ]; then
    LIVE=1
    [ -d "$PIPES/rx" ] || { echo "$0: no rx in $PIPES (is PipesFS mounted there?)" >&2; exit 1; }
else
    CAP=${1:-}
    if [ -z "$CAP" ]; then
        CAP="$OUT/capture.pcap"
        "$PIPESFS" mkpcap "$CAP" --flows 3000 --seed 7 > "$OUT/capture.json"
    fi
    PIPES=$(mktemp -d /tmp/pipesfs-example-mnt.XXXXXX)
    "$PIPESFS" mount "$PIPES" -f --no-rx --no-tx --source "rx=pcap:$CAP,paused" > "$OUT/daemon.log" 2>&1 &
    DAEMON=$!
    trap 'set +e; jobs -p | xargs -r kill 2>/dev/null; fusermount3 -u "$PIPES" 2>/dev/null; wait "$DAEMON" 2>/dev/null; rmdir "$PIPES"' EXIT
    for _ in $(seq 1 200); do [ -e "$PIPES/.errors" ] && break; sleep 0.05; done
    [ -e "$PIPES/.errors" ] || { cat "$OUT/daemon.log" >&2; echo "$0: mount failed" >&2; exit 1; }
fi

# start_rx: plays the capture (nothing to do on live traffic).
start_rx() { [ "$LIVE" = 1 ] || echo start > "$PIPES/rx/ctl"; }

# wait_reader DIR [N]: waits until N (default 1) readers have DIR's `all` open (so they miss nothing of a capture).
wait_reader() {
    until [ "$(sed -n 's/^readers: //p' "$1/stats")" -ge "${2:-1}" ]; do sleep 0.02; done
}

# wait_ended DIR: waits until the stream of DIR ended (a capture played to its end), or forever on live traffic.
wait_ended() {
    until grep -q "^stream: ended" "$1/stats"; do sleep 0.1; done
}
