# `pipesfs exec 'pcapin F | bpf "EXPR" | pcapout O'` writes exactly the packets of `tcpdump -r F -w O2 EXPR`, on a
# synthetic capture and on the project's copy of tcpdump's corpus (malformed captures included: no crash, no
# hang); a chain of directories with a class selector equals tcpdump's expression for it; bad requests are
# refused with a caret (status 2), requests that cannot run with status 1; --spaces 2 gives the same output.
source "$(dirname "$0")/../lib.sh"
CORPUS="$(cd "$(dirname "$0")/../../PipesFiltersTests/Resources/corpus" && pwd)"
CAP="$WORK/mix.pcap"
"$PIPESFS" mkpcap "$CAP" --flows 3000 --seed 17 > /dev/null

same() {  # same CAPTURE OUTPUT EXPR: OUTPUT holds exactly tcpdump's selection of CAPTURE
    tcpdump -r "$1" -w "$WORK/ref.pcap" "$3" 2>/dev/null || return 2
    cmp -s <(dump "$WORK/ref.pcap") <(dump "$2")
}

for expr in "tcp dst port 80" "udp and port 53" "ip6 or arp" "tcp[tcpflags] & tcp-syn != 0"; do
    rm -f "$WORK/out.pcap"
    "$PIPESFS" exec --quiet "pcapin $CAP | bpf \"$expr\" | pcapout $WORK/out.pcap"
    same "$CAP" "$WORK/out.pcap" "$expr" || fail "exec bpf '$expr' differs from tcpdump"
    n=$(tcpdump -nr "$WORK/out.pcap" 2>/dev/null | wc -l)
    ok "exec bpf '$expr' == tcpdump ($n packets)"
done

rm -f "$WORK/out.pcap"
"$PIPESFS" exec --quiet "pcapin $CAP | ip | tcp | dport |80 pcapout $WORK/out.pcap"
same "$CAP" "$WORK/out.pcap" "ip and tcp dst port 80" || fail "exec ip | tcp | dport |80 differs from tcpdump 'ip and tcp dst port 80'"
ok "exec ip | tcp | dport |80 == tcpdump"

rm -f "$WORK/out.pcap"
"$PIPESFS" exec --quiet --spaces 2 "pcapin $CAP | ip | tcp --space=1 | dport |80 pcapout $WORK/out.pcap"
same "$CAP" "$WORK/out.pcap" "ip and tcp dst port 80" || fail "exec across two spaces differs from tcpdump"
ok "exec across two execution spaces == tcpdump"

# Boolean selection: tcp but not port 22, against tcpdump.
err=$("$PIPESFS" exec "pcapin $CAP | ip | tcp +* !(dport |22 count) | count" 2>&1)
n=$(tcpdump -nr "$CAP" 'ip and tcp and not dst port 22' 2>/dev/null | wc -l)
echo "$err" | grep -q "count_packets=$n " || fail "exec tcp +* !(dport |22): '$err', tcpdump counts $n"
ok "exec ip | tcp +* !(dport |22 count) == tcpdump 'ip and tcp and not dst port 22' ($n)"

# Counting: the report on standard error.
err=$("$PIPESFS" exec "pcapin $CAP | bpf \"udp\" | count" 2>&1)
n=$(tcpdump -nr "$CAP" udp 2>/dev/null | wc -l)
echo "$err" | grep -q "count_packets=$n " || fail "exec count: '$err', tcpdump counts $n"
ok "exec count == tcpdump -c ($n)"

# The corpus, malformed captures included. A damaged capture makes both tools say so and exit 1 after writing
# what came before the damage: those outputs are compared too.
i=0; compared=0
for f in "$CORPUS"/*.pcap*; do
    i=$((i + 1))
    rm -f "$WORK/c.pcap" "$WORK/cref.pcap"
    set +e
    timeout 30 "$PIPESFS" exec --quiet "pcapin $f | bpf \"tcp or udp\" | pcapout $WORK/c.pcap" 2>"$WORK/c.err"; rc=$?
    tcpdump -r "$f" -w "$WORK/cref.pcap" "tcp or udp" 2>/dev/null; trc=$?
    set -e
    case "$rc" in
        0) ;;
        1) grep -q "pipesfs exec:" "$WORK/c.err" || fail "exec on $(basename "$f") failed without a message" ;;
        *) cat "$WORK/c.err"; fail "exec on $(basename "$f") exited $rc (a crash or a hang?)" ;;
    esac
    if [ "$rc" = 1 ] && { [ "$trc" = 0 ] || [ ! -f "$WORK/c.pcap" ]; }; then
        echo "refused $(basename "$f"): $(head -c 200 "$WORK/c.err")"
        continue
    fi
    [ "$rc" = 0 ] && [ "$trc" != 0 ] && fail "exec on $(basename "$f") succeeded where tcpdump failed ($trc)"
    if [ -s "$WORK/cref.pcap" ]; then
        if ! cmp -s <(dump "$WORK/cref.pcap") <(dump "$WORK/c.pcap"); then
            # timestamp_invalid_nano.pcap has fractions of a second >= 1 s: pipesfs carries them into the seconds,
            # tcpdump copies them as they are. The packets must still be the same, byte for byte.
            [ "$(basename "$f")" = timestamp_invalid_nano.pcap ] || fail "exec on $(basename "$f") differs from tcpdump"
            cmp -s <(tcpdump -r "$WORK/cref.pcap" -nn -t -xx 2>/dev/null) <(tcpdump -r "$WORK/c.pcap" -nn -t -xx 2>/dev/null) ||
                fail "exec on $(basename "$f") differs from tcpdump in more than its invalid timestamps"
            echo "$(basename "$f"): same packets; invalid timestamps normalized"
        fi
        compared=$((compared + 1))
        [ "$rc" = 1 ] && echo "$(basename "$f"): damaged; both wrote the same records before the damage"
    fi
done
[ "$compared" -ge 10 ] || fail "only $compared corpus captures compared"
ok "corpus: $i captures run, $compared equal to tcpdump"

# A capture cut short: the records before the damage are written, as tcpdump writes them, the damage is reported
# on standard error (with --quiet too) and the exit status is 1, as tcpdump's. Both implementations of the request:
# the batch path (pcapin | stateless filters | pcapout runs without the graph) and the graph.
head -c 300000 "$CAP" > "$WORK/cut.pcap"
tcpdump -r "$WORK/cut.pcap" -w "$WORK/cut-ref.pcap" "tcp dst port 80" 2>/dev/null || true
for graph in "" 1; do
    set +e
    err=$(PIPESFS_EXEC_GRAPH=$graph "$PIPESFS" exec --quiet "pcapin $WORK/cut.pcap | bpf \"tcp dst port 80\" | pcapout $WORK/cut-out.pcap" 2>&1); rc=$?
    set -e
    [ -n "$graph" ] || unset PIPESFS_EXEC_GRAPH
    [ "$rc" = 1 ] || fail "exec${graph:+ (graph)} on a cut capture exited $rc: $err"
    echo "$err" | grep -q "is damaged after [0-9]* packets: truncated dump file" || fail "exec${graph:+ (graph)} on a cut capture said: $err"
    cmp -s <(dump "$WORK/cut-ref.pcap") <(dump "$WORK/cut-out.pcap") || fail "exec${graph:+ (graph)} on a cut capture wrote other records than tcpdump"
done
ok "a cut capture: the records before the damage, the damage reported, status 1 (batch path and graph)"

# The batch path and the graph write the same bytes, figures and all, on the synthetic capture and on every corpus
# capture the batch path reads; a request the batch path does not take (a class selector) runs in the graph.
for f in "$CAP" "$CORPUS"/*.pcap; do
    set +e
    e1=$("$PIPESFS" exec "pcapin $f | ip | tcp | bpf \"dst port 80 or src port 53\" | pcapout $WORK/b1.pcap" 2>&1); r1=$?
    e2=$(PIPESFS_EXEC_GRAPH=1 "$PIPESFS" exec "pcapin $f | ip | tcp | bpf \"dst port 80 or src port 53\" | pcapout $WORK/b2.pcap" 2>&1); r2=$?
    set -e
    [ "$r1" = "$r2" ] || fail "$(basename "$f"): batch path status $r1, graph $r2 ($e1 / $e2)"
    [ "$r1" = 0 ] || continue
    cmp -s "$WORK/b1.pcap" "$WORK/b2.pcap" || fail "$(basename "$f"): the batch path and the graph wrote different files"
    echo "$e1" | grep -q " run=batch$" || fail "$(basename "$f"): the request did not take the batch path: $e1"
    [ "$(echo "$e1" | sed 's/file=[^ ]*b1.pcap//; s/ run=batch$//')" = "$(echo "$e2" | sed 's/file=[^ ]*b2.pcap//')" ] ||
        fail "$(basename "$f"): figures differ: '$e1' / '$e2'"
done
err=$("$PIPESFS" exec "pcapin $CAP | ip | tcp | dport |80 pcapout $WORK/b3.pcap" 2>&1)
echo "$err" | grep -q "run=batch" && fail "a request with a class selector took the batch path: $err"
ok "the batch path writes what the graph writes; a class selector goes through the graph"

# Refusals.
set +e
err=$("$PIPESFS" exec "pcapin $CAP | ip | htp" 2>&1); rc=$?
set -e
[ "$rc" = 2 ] && echo "$err" | grep -q "1:.*unknown filter 'htp'" && echo "$err" | grep -q '\^~~' || fail "exec of an unknown filter: rc $rc: $err"
set +e
cp "$CAP" "$WORK/same.pcap"
err=$("$PIPESFS" exec "pcapin $WORK/same.pcap | bpf \"tcp\" | pcapout $WORK/same.pcap" 2>&1); rc=$?
set -e
[ "$rc" = 1 ] && echo "$err" | grep -q "is a capture file this request reads" || fail "exec into its own input: rc $rc: $err"
cmp -s "$CAP" "$WORK/same.pcap" || fail "exec into its own input changed it"
set +e
err=$("$PIPESFS" exec "pcapin $WORK/none.pcap | ip" 2>&1); rc=$?
set -e
[ "$rc" = 1 ] && echo "$err" | grep -q "No such file" || fail "exec of a missing capture: rc $rc: $err"
set +e
err=$("$PIPESFS" exec "pcapin $CAP | ip | intersect 0" 2>&1); rc=$?
set -e
[ "$rc" = 1 ] && echo "$err" | grep -q "intersect=N: N is the number of inputs" || fail "exec with bad filter arguments: rc $rc: $err"
ok "refusals"
