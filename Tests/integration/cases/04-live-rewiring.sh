# mv, ln -s, rm and rmdir change the flow while a cat is running, checked on content.
source "$(dirname "$0")/../lib.sh"
mount_pipes --no-rx --no-tx --source "src=pcap:$IT_DATA/mix.pcap,loop,rate=4000"
mkdir "$MP/j1" "$MP/j2" "$MP/j1/match=MSG"
bg cat "$MP/j1/match=MSG/all" > "$WORK/out"
READER=$LAST_PID
sleep 0.2
echo "MSG1" > "$MP/j1/all"
wait_for 5 "grep -q MSG1 '$WORK/out'" || fail "injected MSG1 not seen"
echo "other" > "$MP/j1/all"
mv "$MP/j1/match=MSG" "$MP/j2/"
echo "MSG2" > "$MP/j1/all"
echo "MSG3" > "$MP/j2/all"
wait_for 5 "grep -q MSG3 '$WORK/out'" || fail "after mv, j2's MSG3 not seen"
grep -q MSG2 "$WORK/out" && fail "after mv, j1's MSG2 still flows"
grep -q other "$WORK/out" && fail "match let a non-matching block through"
ok "mv re-parents live; the reader keeps its file"
ln -s ../j2/match=MSG "$MP/j1/feed"
[ "$(readlink "$MP/j1/feed")" = "../j2/match=MSG" ] || fail "readlink"
[ -d "$MP/j1/feed" ] || fail "the symlink does not resolve"
echo "MSG4" > "$MP/j1/all"
wait_for 5 "grep -q MSG4 '$WORK/out'" || fail "ln -s fan-in: MSG4 not seen"
rm "$MP/j1/feed"
echo "MSG5" > "$MP/j1/all"
echo "MSG6" > "$MP/j2/all"
wait_for 5 "grep -q MSG6 '$WORK/out'" || fail "MSG6 not seen"
grep -q MSG5 "$WORK/out" && fail "rm of the link did not cut the edge"
ok "ln -s adds a parent; rm removes it"
rmdir "$MP/j2/match=MSG"
wait_exit "$READER" 5
[ -e "$MP/j2/match=MSG" ] && fail "rmdir left the directory"
ok "rmdir ends the running reader with EOF"

# The same with packets: a running capture, a filter moved from tcp to udp while tcpdump-format output flows.
mkdir -p "$MP/src/ip/tcp/count" "$MP/src/ip/udp"
bg cat "$MP/src/ip/tcp/count/all.pcap" > "$WORK/moved.pcap"
READER=$LAST_PID
sleep 1
mv "$MP/src/ip/tcp/count" "$MP/src/ip/udp/"
sleep 1
kill "$READER"
seq=$(tcpdump -nr "$WORK/moved.pcap" -q 2>/dev/null | awk '{ print ($0 ~ /UDP/ ? "U" : "T") }' | uniq | tr -d '\n')
echo "sequence: $seq"
[ "$seq" = "TU" ] || fail "expected TCP packets then UDP packets, got '$seq'"
ok "mv under a running capture switches the stream"
