# A paused capture source, started with `start`: what all.pcap yields equals tcpdump's selection, for the
# directory chain ip/tcp/dport/80 and three bpf= expressions. Readers get EOF at the end of the file.
source "$(dirname "$0")/../lib.sh"
# IT_CAPTURE=FILE checks another capture (e.g. one written by another generator); FORMAT=pcapng converts it.
CAP="$WORK/cap.pcap"
if [ -n "${IT_CAPTURE:-}" ]; then cp "$IT_CAPTURE" "$CAP"; else "$PIPESFS" mkpcap "$CAP" --flows 4000 --seed 5 > "$WORK/summary.json"; fi
if [ "${FORMAT:-pcap}" = pcapng ]; then editcap -F pcapng "$CAP" "$WORK/cap.pcapng"; CAP="$WORK/cap.pcapng"; fi
mount_pipes --no-rx --no-tx --source "src=pcap:$CAP,paused"
mkdir -p "$MP/src/ip/tcp/dport/80"
declare -A EXPR=( [a]="udp and port 53" [b]="tcp[tcpflags] & tcp-syn != 0" [c]="ip6 or arp or (ip[6:2] & 0x1fff != 0) or greater 1400" )
bg cat "$MP/src/ip/tcp/dport/80/all.pcap" > "$WORK/port80.pcap"; PIDS=($LAST_PID)
for k in a b c; do
    mkdir "$MP/src/bpf=${EXPR[$k]}"
    bg cat "$MP/src/bpf=${EXPR[$k]}/all.pcap" > "$WORK/bpf-$k.pcap"; PIDS+=($LAST_PID)
done
sleep 0.3
grep -q "^state: paused" "$MP/src/stats" || fail "source not paused"
echo start > "$MP/src/ctl"
for p in "${PIDS[@]}"; do wait_exit "$p" 60; done
tcpdump -r "$CAP" -w "$WORK/ref80.pcap" 'ip and tcp dst port 80' 2>/dev/null
n=$(tcpdump -nr "$WORK/ref80.pcap" 2>/dev/null | wc -l)
[ "$n" -gt 100 ] || fail "reference selection too small ($n)"
cmp <(dump "$WORK/ref80.pcap") <(dump "$WORK/port80.pcap") || fail "ip/tcp/dport/80 differs from tcpdump 'ip and tcp dst port 80'"
ok "ip/tcp/dport/80 == tcpdump ($n packets)"
for k in a b c; do
    tcpdump -r "$CAP" -w "$WORK/ref-$k.pcap" "${EXPR[$k]}" 2>/dev/null
    n=$(tcpdump -nr "$WORK/ref-$k.pcap" 2>/dev/null | wc -l)
    [ "$n" -gt 10 ] || fail "reference for '${EXPR[$k]}' too small ($n)"
    cmp <(dump "$WORK/ref-$k.pcap") <(dump "$WORK/bpf-$k.pcap") || fail "bpf='${EXPR[$k]}' differs from tcpdump"
    ok "bpf=${EXPR[$k]} == tcpdump ($n packets)"
done
# tshark reads the stream too.
tshark -r "$WORK/port80.pcap" -c 3 >/dev/null 2>&1 || fail "tshark cannot read all.pcap output"
grep -q "^stream: ended" "$MP/src/ip/tcp/dport/80/stats" || fail "stream not ended"
# A reader opened on an ended stream gets EOF at once; stop + rewind + start replays the file.
timeout 5 cat "$MP/src/ip/tcp/dport/80/all" > "$WORK/ended" || fail "reading an ended stream did not end"
[ ! -s "$WORK/ended" ] || fail "an ended stream yielded data"
printf 'stop\nrewind\n' > "$MP/src/ctl"
grep -q "^stream: open" "$MP/src/ip/tcp/dport/80/stats" || fail "rewind did not reopen the stream"
bg cat "$MP/src/ip/tcp/dport/80/all.pcap" > "$WORK/again.pcap"
sleep 0.2
echo start > "$MP/src/ctl"
wait_exit "$LAST_PID" 60
cmp <(dump "$WORK/ref80.pcap") <(dump "$WORK/again.pcap") || fail "after rewind the stream differs"
ok "rewind"
