# Live, as root: rx sees loopback traffic from curl against a local HTTP server, and the paper's httpclean script
# (§4.1) works on it: mkdir a junction, mv the GET filter into it, cat | grep -v | write into the junction's all.
source "$(dirname "$0")/../lib.sh"
PORT=$((20000 + RANDOM % 20000))
mkdir -p "$WORK/www/a"; echo hello > "$WORK/www/ok"; echo b > "$WORK/www/b"
bg python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WORK/www"
wait_for 10 "curl -s -o /dev/null http://127.0.0.1:$PORT/ok" || fail "http server did not start"
mount_pipes --rx lo --no-tx
D="$MP/rx/ip/tcp/dport/$PORT"
mkdir -p "$D/payload/match=GET"
bg cat "$D/all.pcap" > "$WORK/live.pcap"
sleep 0.5
curl -s "http://127.0.0.1:$PORT/ok" >/dev/null
wait_for 10 "[ \$(tcpdump -nr '$WORK/live.pcap' 2>/dev/null | wc -l) -ge 3 ]" || fail "rx saw no packets to port $PORT"
tcpdump -nr "$WORK/live.pcap" 2>/dev/null | head -3
tcpdump -nr "$WORK/live.pcap" 2>/dev/null | grep -q "> 127.0.0.1.$PORT:" || fail "captured packets are not to port $PORT"
grep -q "^state: capturing" "$MP/rx/stats" || fail "rx is not capturing"
ok "rx sees curl's packets"

# httpclean, as in the paper.
mkdir "$MP/httpclean"
mv "$D/payload/match=GET" "$MP/httpclean/"
[ -d "$MP/httpclean/match=GET" ] || fail "mv into the junction failed"
bg cat "$MP/httpclean/match=GET/all" > "$WORK/clean"
bg sh -c "exec cat '$D/payload/all' | grep -a --line-buffered -v -F '..' > '$MP/httpclean/all'"
sleep 0.5
curl -s "http://127.0.0.1:$PORT/ok" >/dev/null
curl -s --path-as-is "http://127.0.0.1:$PORT/a/../b" >/dev/null
wait_for 10 "grep -q 'GET /ok' '$WORK/clean'" || { cat "$MP/.errors"; fail "httpclean output lacks GET /ok"; }
sleep 0.5
cat -v "$WORK/clean"
if grep -q '\.\.' "$WORK/clean"; then fail "a request with '..' got through httpclean"; fi
ok "httpclean drops GETs with '..' and passes the rest"
