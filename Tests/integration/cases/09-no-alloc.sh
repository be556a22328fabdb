# No per-packet allocation: the same chain over a capture ten times longer costs (almost) no more heap allocations.
# `pipesfs bench pipeline` (capture-file source -> ip/tcp/dport/80/count, in-process) runs under an LD_PRELOAD shim
# (../malloc-count.c) that counts malloc, calloc, realloc, posix_memalign, aligned_alloc and memalign calls. Startup
# and shutdown cost the same for both captures, so the difference is what the extra packets cost.
# NOALLOC_MAX_PERMILLE (default 1, i.e. 0.1%) bounds extra allocations per extra packet, in thousandths.
source "$(dirname "$0")/../lib.sh"
IT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
MAX_PERMILLE=${NOALLOC_MAX_PERMILLE:-1}

command -v cc >/dev/null 2>&1 || fail "no C compiler (cc) to build the malloc counter: install gcc"
cc -shared -fPIC -O2 -o "$WORK/mc.so" "$IT_DIR/malloc-count.c" -ldl || fail "cannot build malloc-count.c"

"$PIPESFS" mkpcap "$WORK/small.pcap" --flows 2000 --seed 9 >/dev/null
"$PIPESFS" mkpcap "$WORK/large.pcap" --flows 20000 --seed 9 >/dev/null

# measure NAME [BENCH OPTIONS]: runs the bench over $WORK/NAME.pcap under the shim; sets PACKETS and ALLOCS
# (pipesfs's own line: children such as the page-cache warming `cat` inherit the preload and report too).
measure() {
    local name=$1 counts="$WORK/$1${2:-}.counts" out="$WORK/$1${2:-}.out" pid line
    shift
    MALLOC_COUNT_OUT="$counts" LD_PRELOAD="$WORK/mc.so" \
        "$PIPESFS" bench pipeline "$WORK/$name.pcap" --runs 1 --no-baseline "$@" >"$out" 2>&1 &
    pid=$!
    if ! wait "$pid"; then cat "$out"; fail "bench over $name.pcap failed"; fi
    line=$(grep "^pid=$pid " "$counts") || { cat "$counts" 2>/dev/null; fail "no allocation count from pipesfs (pid $pid)"; }
    ALLOCS=$(sed -n 's/.* total=\([0-9][0-9]*\)$/\1/p' <<<"$line")
    PACKETS=$(sed -n 's/.*selected [0-9][0-9]* of \([0-9][0-9]*\).*/\1/p' "$out")
    [ -n "$ALLOCS" ] || fail "cannot read the allocation count: $line"
    [ -n "$PACKETS" ] || { cat "$out"; fail "cannot read the packet count of $name.pcap"; }
    echo "$name.pcap: $PACKETS packets, $ALLOCS allocations ($line)"
}

measure small; small_packets=$PACKETS; small_allocs=$ALLOCS
measure large; large_packets=$PACKETS; large_allocs=$ALLOCS

# The counter must see the process at all (a count of 0 would pass trivially).
[ "$small_allocs" -gt 100 ] || fail "only $small_allocs allocations counted: is the preload working?"
extra_packets=$((large_packets - small_packets))
extra_allocs=$((large_allocs - small_allocs))
[ "$extra_packets" -ge $((small_packets * 5)) ] || fail "the large capture has too few extra packets ($small_packets -> $large_packets)"
permille=$(awk -v a="$extra_allocs" -v p="$extra_packets" 'BEGIN { printf "%.2f", a * 1000 / p }')
echo "extra: $extra_packets packets, $extra_allocs allocations ($permille per 1000 packets; bound $MAX_PERMILLE)"
[ $((extra_allocs * 1000)) -lt $((extra_packets * MAX_PERMILLE)) ] ||
    fail "$extra_allocs more allocations for $extra_packets more packets ($permille per 1000 packets, bound $MAX_PERMILLE): something allocates per packet"
ok "no per-packet allocation: $small_packets -> $large_packets packets, $small_allocs -> $large_allocs allocations"

# The same with the chain split over two execution spaces at tcp: every packet crosses a channel (appended in
# space 0, read and pushed on in space 1) without allocating either.
measure small --cross-at=2; small_packets=$PACKETS; small_allocs=$ALLOCS
measure large --cross-at=2; large_packets=$PACKETS; large_allocs=$ALLOCS
[ "$small_allocs" -gt 100 ] || fail "only $small_allocs allocations counted: is the preload working?"
extra_packets=$((large_packets - small_packets))
extra_allocs=$((large_allocs - small_allocs))
permille=$(awk -v a="$extra_allocs" -v p="$extra_packets" 'BEGIN { printf "%.2f", a * 1000 / p }')
echo "two spaces, extra: $extra_packets packets, $extra_allocs allocations ($permille per 1000 packets; bound $MAX_PERMILLE)"
[ $((extra_allocs * 1000)) -lt $((extra_packets * MAX_PERMILLE)) ] ||
    fail "two spaces: $extra_allocs more allocations for $extra_packets more packets ($permille per 1000 packets): something allocates per packet"
ok "no per-packet allocation across two spaces: $small_allocs -> $large_allocs allocations"
