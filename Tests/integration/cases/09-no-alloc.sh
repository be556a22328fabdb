# No per-packet allocation and no per-packet reference counting: the same chain over a capture ten times longer
# costs (almost) no more heap allocations and no more swift_retain calls. `pipesfs bench pipeline` (capture-file
# source -> a chain, in-process) runs under two LD_PRELOAD shims: ../malloc-count.c (malloc, calloc, realloc,
# posix_memalign, aligned_alloc, memalign) and ../arc-count.c (swift_retain, swift_release through the Swift
# runtime). Startup and shutdown cost the same for both captures, so the difference is what the extra packets cost.
# Chains: ip/tcp/dport/80/count; the same split over two execution spaces at tcp (every packet crosses a channel);
# bpf and pcapout (a tap queue and the writer); pcap and compress (blocks of their own, from their buffers).
# NOALLOC_MAX_PERMILLE (default 1, i.e. 0.1%) bounds extra allocations per extra packet, in thousandths;
# NOARC_MAX_PERMILLE (default 100) bounds extra retains per extra packet (per batch of up to 256 packets a few
# are fine; one per packet is 1000). Reference counting is only meaningful in an optimized build: the retains are
# counted on PIPESFS_RELEASE (a release build of pipesfs; tools/test builds one), allocations on both.
source "$(dirname "$0")/../lib.sh"
IT_DIR="$(cd "$(dirname "$0")/.." && pwd)"
MAX_PERMILLE=${NOALLOC_MAX_PERMILLE:-1}
ARC_PERMILLE=${NOARC_MAX_PERMILLE:-100}
RELEASE=${PIPESFS_RELEASE:-}
[ -n "$RELEASE" ] && [ -x "$RELEASE" ] ||
    fail "set PIPESFS_RELEASE to a release build of pipesfs (swift build -c release --product pipesfs; tools/test does)"

command -v cc >/dev/null 2>&1 || fail "no C compiler (cc) to build the counters: install gcc"
cc -shared -fPIC -O2 -o "$WORK/mc.so" "$IT_DIR/malloc-count.c" -ldl || fail "cannot build malloc-count.c"
cc -shared -fPIC -O2 -o "$WORK/arc.so" "$IT_DIR/arc-count.c" -ldl || fail "cannot build arc-count.c"

"$PIPESFS" mkpcap "$WORK/small.pcap" --flows 2000 --seed 9 >/dev/null
"$PIPESFS" mkpcap "$WORK/large.pcap" --flows 20000 --seed 9 >/dev/null
cd "$WORK"  # pcapout=NAME writes here

# measure NAME TAG [BENCH OPTIONS]: runs the bench over $WORK/NAME.pcap under the shims; sets PACKETS, ALLOCS and
# RETAINS (pipesfs's own lines: children such as the page-cache warming `cat` inherit the preload and report too).
measure() {
    local name=$1 tag=$2 counts="$WORK/$1-$2.counts" arcs="$WORK/$1-$2.arcs" out="$WORK/$1-$2.out" pid line
    shift 2
    MALLOC_COUNT_OUT="$counts" ARC_COUNT_OUT="$arcs" LD_PRELOAD="$WORK/mc.so $WORK/arc.so" \
        "$BIN" bench pipeline "$WORK/$name.pcap" --runs 1 --no-baseline "$@" >"$out" 2>&1 &
    pid=$!
    if ! wait "$pid"; then cat "$out"; fail "bench over $name.pcap ($tag) failed"; fi
    line=$(grep "^pid=$pid " "$counts") || { cat "$counts" 2>/dev/null; fail "no allocation count from pipesfs (pid $pid)"; }
    ALLOCS=$(sed -n 's/.* total=\([0-9][0-9]*\)$/\1/p' <<<"$line")
    line=$(grep "^pid=$pid " "$arcs") || { cat "$arcs" 2>/dev/null; fail "no retain count from pipesfs (pid $pid)"; }
    RETAINS=$(sed -n 's/.* retain=\([0-9][0-9]*\) .*/\1/p' <<<"$line")
    PACKETS=$(sed -n 's/.*selected [0-9][0-9]* of \([0-9][0-9]*\).*/\1/p' "$out")
    [ -n "$ALLOCS" ] && [ -n "$RETAINS" ] || fail "cannot read the counts ($line)"
    [ -n "$PACKETS" ] || { cat "$out"; fail "cannot read the packet count of $name.pcap"; }
    echo "$name.pcap ($tag): $PACKETS packets, $ALLOCS allocations, $RETAINS retains"
}

check() {  # check TAG [BENCH OPTIONS]
    local tag=$1; shift
    # Each size twice, keeping the smaller counts: some once-off work lands in a run now and then (the two-space
    # chain in a debug build: 100 to 155 more allocations in about one run in six, whatever the capture's size),
    # which is not per packet.
    measure "${SMALL:-small}" "$tag" "$@"; local sp=$PACKETS sa=$ALLOCS sr=$RETAINS
    measure "${SMALL:-small}" "$tag" "$@"; sa=$((ALLOCS < sa ? ALLOCS : sa)); sr=$((RETAINS < sr ? RETAINS : sr))
    measure "${LARGE:-large}" "$tag" "$@"; local lp=$PACKETS la=$ALLOCS lr=$RETAINS
    measure "${LARGE:-large}" "$tag" "$@"; la=$((ALLOCS < la ? ALLOCS : la)); lr=$((RETAINS < lr ? RETAINS : lr))
    # The counters must see the process at all (a count of 0 would pass trivially).
    [ "$sa" -gt 100 ] || fail "$tag: only $sa allocations counted: is the preload working?"
    [ "$sr" -gt 100 ] || fail "$tag: only $sr retains counted: is the preload working?"
    local xp=$((lp - sp)) xa=$((la - sa)) xr=$((lr - sr))
    [ "$xp" -ge $((sp * 5)) ] || fail "$tag: the large capture has too few extra packets ($sp -> $lp)"
    local pa pr
    pa=$(awk -v a="$xa" -v p="$xp" 'BEGIN { printf "%.2f", a * 1000 / p }')
    pr=$(awk -v a="$xr" -v p="$xp" 'BEGIN { printf "%.2f", a * 1000 / p }')
    echo "$tag: extra $xp packets: $xa allocations ($pa per 1000; bound $MAX_PERMILLE), $xr retains ($pr per 1000; bound $ARC_PERMILLE)"
    [ $((xa * 1000)) -lt $((xp * MAX_PERMILLE)) ] ||
        fail "$tag: $xa more allocations for $xp more packets ($pa per 1000): something allocates per packet"
    if [ "$ARCS" = 1 ]; then
        [ $((xr * 1000)) -lt $((xp * ARC_PERMILLE)) ] ||
            fail "$tag: $xr more retains for $xp more packets ($pr per 1000): something retains per packet"
        ok "$tag (release): no per-packet allocation or reference counting ($sa -> $la allocations, $sr -> $lr retains)"
    else
        ok "$tag: no per-packet allocation ($sa -> $la allocations)"
    fi
}

# The binary under test (a debug build in tools/test): allocations on the plain chain and across spaces.
BIN=$PIPESFS ARCS=0
check chain                        # ip/tcp/dport/80/count
check two-spaces --cross-at=2      # the same, tcp and below in a second execution space
# The release build: allocations and reference counting, also through bpf and pcapout's queue (whose lock and
# closures an unoptimized build boxes).
BIN=$RELEASE ARCS=1
check chain
check two-spaces --cross-at=2
check bpf-pcapout --chain "bpf=tcp dst port 80/pcapout=out.pcap"
# Rewriting filters that hand on blocks of their own: pcap's records from its scratch buffer, compress's output
# buffer and one zstd stream (untagged packets are one flow; per-flow state is allowed to cost per flow).
check pcap-compress --chain "ip/tcp/pcap/compress=zstd/count"
# untcp hands on in-order segments as views of the packets: no allocation per packet on captures without
# reordering (segments ahead of a gap are copied: that allocates, per such segment). Its reference counting is
# per connection (a connection's slot is reset when it goes, about 1.5 retains each; mkpcap's connections are
# 7 packets long), so only allocations are bounded here.
"$PIPESFS" mkpcap "$WORK/small-inorder.pcap" --flows 2000 --seed 9 --reorder 0 --dup 0 >/dev/null
"$PIPESFS" mkpcap "$WORK/large-inorder.pcap" --flows 20000 --seed 9 --reorder 0 --dup 0 >/dev/null
BIN=$RELEASE ARCS=0 SMALL=small-inorder LARGE=large-inorder check untcp --chain "ip/tcp/untcp/count"
