# A capture file truncated while it is being played gives libpcap's "truncated dump file" error in .errors and
# end-of-file to readers; the server keeps running (no SIGBUS: the file is read, not mapped).
source "$(dirname "$0")/../lib.sh"
"$PIPESFS" mkpcap "$WORK/t.pcap" --flows 20000 --seed 9 > /dev/null
mount_pipes --no-rx --no-tx --source "t=pcap:$WORK/t.pcap,loop,rate=20000"
bg cat "$MP/t/all.pcap" > /dev/null
sleep 1
truncate -s 100003 "$WORK/t.pcap"
sleep 1
alive
grep -q "^state: \\(running\\|finished\\)" "$MP/t/stats" || fail "source state: $(grep state "$MP/t/stats")"
truncate -s 0 "$WORK/t.pcap"
sleep 1
alive
cat "$MP/.errors"
ok "truncating a playing capture does not take the server down"
