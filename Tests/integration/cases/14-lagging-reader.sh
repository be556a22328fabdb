# A reader that lags behind a capture file loses nothing (lossless backpressure), for classic pcap (mapped
# reader) and pcapng (libpcap); a rate lowered and raised again through ctl does not stall the source.
source "$(dirname "$0")/../lib.sh"
"$PIPESFS" mkpcap "$WORK/c.pcap" --flows 6000 --seed 3 > /dev/null
editcap -F pcapng "$WORK/c.pcap" "$WORK/c.pcapng"
want=$(tcpdump -nr "$WORK/c.pcap" 2>/dev/null | wc -l)
mount_pipes --no-rx --no-tx --source "a=pcap:$WORK/c.pcap,paused" --source "b=pcap:$WORK/c.pcapng,paused"
for s in a b; do
    bg sh -c "cat '$MP/$s/all.pcap' | (sleep 1; cat > '$WORK/$s.out')"
    pid=$LAST_PID
    sleep 0.2
    echo start > "$MP/$s/ctl"
    wait_exit $pid 60
    got=$(tcpdump -nr "$WORK/$s.out" 2>/dev/null | wc -l)
    [ "$got" = "$want" ] || { cat "$MP/.errors"; fail "source $s: a lagging reader got $got of $want packets"; }
    ok "source $s: lagging reader got all $want packets"
done
grep -q damaged "$MP/.errors" && fail "a lagging reader was reported as damage: $(cat "$MP/.errors")"
echo "source r=pcap:$WORK/c.pcap,loop,rate=2000" > "$MP/.ctl"
mkdir "$MP/r/count"
sleep 1
echo "rate 1" > "$MP/r/ctl"; sleep 1
echo "rate 5000" > "$MP/r/ctl"
n1=$(awk '/^packets_read/ {print $2}' "$MP/r/stats"); sleep 1
n2=$(awk '/^packets_read/ {print $2}' "$MP/r/stats")
[ $((n2 - n1)) -gt 1000 ] || fail "after rate 1 then rate 5000 the source read only $((n2 - n1)) packets in 1 s"
ok "rate changes take effect at once ($((n2 - n1)) packets/s)"
