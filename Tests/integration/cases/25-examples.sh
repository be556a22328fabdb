# The example applications (examples/apps: the paper's webtap, httpclean, per-connection compressed capture and
# a small IDS) run on a private mount whose rx plays a synthetic capture, and their results equal what the same
# work gives as `pipesfs exec` requests and tcpdump.
source "$(dirname "$0")/../lib.sh"
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
CAP="$WORK/cap.pcap"
"$PIPESFS" mkpcap "$CAP" --flows 1200 --seed 31 > /dev/null
count() { "$PIPESFS" exec "pcapin $CAP | $1 | count" 2>&1 | sed -n 's/.*count_packets=\([0-9]*\).*/\1/p'; }
run_example() { PIPESFS="$PIPESFS" OUT="$WORK/$1" timeout 300 "$ROOT/examples/apps/$1.sh" "$CAP"; }

gets=$(count "ip | tcp | dport |80 untcp | http | get")
dotdot=$(count "ip | tcp | dport |80 untcp | http | get | match=..")
[ "$gets" -gt 100 ] && [ "$dotdot" -gt 10 ] || fail "too few GETs in the capture ($gets, $dotdot)"

out=$(run_example webtap) || fail "webtap: $out"
echo "$out"
[ "$out" = "webtap: $gets GET requests in $WORK/webtap/webtap.log.gz" ] || fail "webtap logged: $out; exec counts $gets"
ok "webtap logged the $gets GET requests"

out=$(run_example httpclean) || fail "httpclean: $out"
echo "$out"
echo "$out" | grep -q "^httpclean: $((gets - dotdot)) of $gets GET requests passed, $dotdot with '..' dropped" ||
    fail "httpclean: $out; exec counts $gets GETs, $dotdot with '..'"
grep -q '\.\.' "$WORK/httpclean/clean.log" && fail "a request with '..' got through"
ok "httpclean: grep between http and get dropped the $dotdot requests with '..'"

out=$(run_example flowcapture) || fail "flowcapture: $out"
echo "$out"
want=$(tcpdump -nr "$CAP" 'ip and tcp' 2>/dev/null | wc -l)
echo "$out" | grep -q ", $want packets in " || fail "flowcapture: $out; tcpdump counts $want TCP/IPv4 packets"
f=$(ls "$WORK/flowcapture/flows" | sed -n 1p)  # (not head: ls would die of SIGPIPE under pipefail)
zstd -dc "$WORK/flowcapture/flows/$f" | tcpdump -nr - 2>/dev/null > "$WORK/one.txt"
[ "$(awk '{print $3}' "$WORK/one.txt" | sort -u | wc -l)" = 1 ] || fail "$f holds more than one sender: $(head -3 "$WORK/one.txt")"
ok "flowcapture: every TCP/IPv4 packet ($want) in per-connection zstd pcap files, readable by tcpdump"

out=$(run_example ids) || fail "ids: $out"
echo "$out"
alerts=$(count "ip | tcp | untcp | match=../..")
echo "$out" | grep -q "^ids: signature 2 (../..): $alerts alerts" || fail "ids: $out; exec finds '../..' in $alerts blocks"
ok "ids: $alerts alerts for '../..' over reassembled streams"
