# Every capture in the project's copy of tcpdump's corpus (including malformed ones) goes through every filter
# without a crash or a hang; readers get EOF at the end of each file.
source "$(dirname "$0")/../lib.sh"
CORPUS="$(cd "$(dirname "$0")/../../PipesFiltersTests/Resources/corpus" && pwd)"
mount_pipes --no-rx --no-tx --spool "$WORK"
i=0
for f in "$CORPUS"/*.pcap*; do
    i=$((i + 1))
    s="c$i"
    if ! echo "source $s=pcap:$f,paused" > "$MP/.ctl" 2>/dev/null; then
        echo "libpcap refuses $(basename "$f"): $(tail -n 1 "$MP/.errors")"
        continue
    fi
    pids=()
    for d in ip ip6 eth eth/ipv4 ipproto ipproto/tcp tcp udp icmp sport dport dport/80 dport/!80 "bpf=tcp or udp" count \
             "match=GET" payload "pcapout=$s.out.pcap"; do
        mkdir -p "$MP/$s/$d"
        bg cat "$MP/$s/$d/all.pcap" > /dev/null; pids+=($LAST_PID)
        bg cat "$MP/$s/$d/all" > /dev/null; pids+=($LAST_PID)
    done
    mkdir "$MP/$s/payload/match=HTTP"
    sleep 0.1
    echo start > "$MP/$s/ctl"
    for p in "${pids[@]}"; do wait_exit "$p" 20; done
    tcpdump -nr "$WORK/$s.out.pcap" >/dev/null 2>&1 || [ "$(grep '^packets_in' "$MP/$s/stats")" = "packets_in: 0" ] || true
    alive
    echo "ok $(basename "$f"): $(grep '^packets_in' "$MP/$s/stats")"
done
[ $i -ge 20 ] || fail "corpus has only $i files"
ok "corpus: $i captures through every filter"
