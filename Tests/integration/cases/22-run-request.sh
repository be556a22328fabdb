# `pipesfs run` builds requests in a mounted tree: they appear as directories, share stateless prefixes (one
# ip/tcp/dport for two requests, visible in the tree and in stats), count what tcpdump counts, and `pipesfs stop`
# removes what a request made while what another still uses stays. A request the daemon refuses half-way
# leaves the tree exactly as it was.
source "$(dirname "$0")/../lib.sh"
CAP="$WORK/cap.pcap"
"$PIPESFS" mkpcap "$CAP" --flows 3000 --seed 23 > /dev/null
mount_pipes --no-rx --no-tx --source "web=pcap:$CAP,paused"

id80=$("$PIPESFS" run --mount "$MP" 'web | ip | tcp | dport |80 count')
id22=$("$PIPESFS" run --mount "$MP" 'web | ip | tcp | dport |22 count')
[ -n "$id80" ] && [ -n "$id22" ] && [ "$id80" != "$id22" ] || fail "run printed ids '$id80' '$id22'"
[ -d "$MP/web/ip/tcp/dport/80/count" ] && [ -d "$MP/web/ip/tcp/dport/22/count" ] || fail "requests are not in the tree: $(find "$MP/web" -type d)"
[ "$(find "$MP/web" -name dport -type d | wc -l)" = 1 ] || fail "dport is not shared: $(find "$MP/web" -type d)"
[ "$(find "$MP/web" -maxdepth 1 -name 'ip*' -type d | wc -l)" = 1 ] || fail "ip is not shared"
cat "$MP/.requests"
grep -q "^$id80 0 web | ip | tcp | dport |80 count$" "$MP/.requests" || fail ".requests does not list request $id80"
ok "two requests share ip/tcp/dport"

echo start > "$MP/web/ctl"
wait_for 60 'grep -q "^stream: ended" "$MP/web/ip/tcp/dport/22/count/stats"' || fail "the stream did not end"
for p in 80 22; do
    got=$(sed -n 's/^count_packets: //p' "$MP/web/ip/tcp/dport/$p/count/stats")
    want=$(tcpdump -nr "$CAP" "ip and tcp dst port $p" 2>/dev/null | wc -l)
    [ "$got" = "$want" ] || fail "port $p: count says $got, tcpdump $want"
done
tcp_out=$(sed -n 's/^packets_out: //p' "$MP/web/ip/tcp/stats")
dport_in=$(sed -n 's/^packets_in: //p' "$MP/web/ip/tcp/dport/stats")
[ "$tcp_out" = "$dport_in" ] && [ "$dport_in" -gt 0 ] || fail "stats: tcp sent $tcp_out, the one dport got $dport_in"
ok "counts equal tcpdump's; the shared dport saw each packet once ($dport_in)"

# A request the daemon refuses half-way (pcapout cannot open its file) leaves the tree as it was.
before=$(find "$MP/web" | sort)
set +e
err=$("$PIPESFS" run --mount "$MP" "web | ip | udp | dport |53 pcapout $WORK/no/such/dir/x.pcap" 2>&1); rc=$?
set -e
[ "$rc" = 1 ] || fail "a refused request exited $rc: $err"
echo "$err" | grep -q "pcapout" || fail "the refusal does not name pcapout: $err"
[ "$(find "$MP/web" | sort)" = "$before" ] || fail "a refused request changed the tree: $(diff <(echo "$before") <(find "$MP/web" | sort))"
ok "refused half-way, tree unchanged: $err"
set +e
err=$("$PIPESFS" run --mount "$MP" 'web | ip | tcp | dport |htp count' 2>&1); rc=$?
set -e
[ "$rc" = 2 ] && echo "$err" | grep -q '\^~~' || fail "a malformed request: rc $rc: $err"
set +e
err=$("$PIPESFS" run --mount "$MP" 'nosuch | ip' 2>&1); rc=$?
set -e
[ "$rc" = 2 ] && echo "$err" | grep -q "unknown filter 'nosuch'" || fail "an unknown source: rc $rc: $err"
ok "malformed requests refused with a caret"

"$PIPESFS" stop --mount "$MP" "$id80"
[ ! -e "$MP/web/ip/tcp/dport/80" ] || fail "stop left dport/80"
[ -d "$MP/web/ip/tcp/dport/22/count" ] || fail "stop removed what the other request uses"
grep -q "^$id80 " "$MP/.requests" && fail "stopped request still listed"
"$PIPESFS" stop --mount "$MP" "$id22"
[ -z "$(ls "$MP/web" | grep -v -e '^all' -e stats -e ctl)" ] || fail "after both stops web still holds: $(ls "$MP/web")"
set +e
"$PIPESFS" stop --mount "$MP" "$id22" 2>"$WORK/stop.err"; rc=$?
set -e
[ "$rc" = 1 ] && grep -q "no request $id22" "$WORK/stop.err" || fail "stopping twice: rc $rc $(cat "$WORK/stop.err")"
ok "stop removes a request's own directories; shared ones go with the last user"
alive
