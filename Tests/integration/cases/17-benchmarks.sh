# `pipesfs bench ipc` and `bench tap` run end to end on this machine: every way of moving blocks they measure
# (ring read, ring peek, pipe, SPSC ring; a gen source read through a FUSE mount) moves every byte (the commands check
# the counts and fail otherwise). No speed is asserted here: figures come from full runs, reported with the issue.
source "$(dirname "$0")/../lib.sh"
out=$("$PIPESFS" bench ipc --megabytes 16 --runs 1 --sizes 64,4096,65536 --ring-log2 18)
echo "$out"
two=$(echo "$out" | sed -n '/^consumer alone/,$p')
one=$(echo "$out" | sed '/^consumer alone/,$d')
[ "$(echo "$one" | grep -cE '^ +(64|4096|65536) ')" = 3 ] || fail "expected a row per block size"
[ "$(echo "$two" | grep -cE '^ +(64|4096|65536) ')" = 3 ] || fail "expected a consumer-alone row per block size"
echo "$one" | awk '$1 ~ /^[0-9]+$/ { for (i = 2; i <= 5; i++) if ($i + 0 <= 0) exit 1 }' || fail "a rate is not positive"
echo "$two" | awk '$1 ~ /^[0-9]+$/ { for (i = 2; i <= 3; i++) if ($i + 0 <= 0) exit 1 }' || fail "a drain rate is not positive"
expect_fail "'$PIPESFS' bench ipc --sizes 3" "block sizes of 8 bytes to 1 MiB"
expect_fail "'$PIPESFS' bench ipc --sizes 65536 --ring-log2 16" "raise --ring-log2"
ok "bench ipc moved every byte four ways"

# `pipesfs bench tap` mounts its own PipesFS with a gen source and reads every byte of it through FUSE.
out=$("$PIPESFS" bench tap --megabytes 40 --runs 1 --read-sizes 1048576,131072)
echo "$out"
[ "$(echo "$out" | grep -cE '^ +(1048576|131072) ')" = 2 ] || fail "expected a row per read size"
awk '$3 == "fuse.pipesfs" && $2 ~ /pipesfs-bench/' /proc/mounts | grep -q . && fail "bench tap left a mount behind"
ok "bench tap read every byte through a FUSE mount and unmounted"

# `bench scale`, `bench splice` and `bench fanout` run end to end and move every byte (they fail otherwise).
out=$("$PIPESFS" bench scale --megabytes 4 --runs 1 --sizes 1M,64K,4K)
echo "$out"
[ "$(echo "$out" | grep -cE '^ +(1M|64K|4K) ')" = 3 ] || fail "bench scale: expected a row per size"
out=$("$PIPESFS" bench splice --megabytes 16 --runs 1 --sizes 256,65536)
echo "$out"
[ "$(echo "$out" | grep -cE '^ +(256|65536) ')" = 2 ] || fail "bench splice: expected a row per size"
out=$("$PIPESFS" bench fanout --megabytes 40 --readers 1,3)
echo "$out"
[ "$(echo "$out" | grep -cE '^(mapped|fuse) ')" = 4 ] || fail "bench fanout: expected four rows"
awk '$3 == "fuse.pipesfs" && $2 ~ /pipesfs-bench/' /proc/mounts | grep -q . && fail "bench fanout left a mount behind"
ok "bench scale, splice and fanout moved every byte"

# `bench spaces`: a two-stage pipeline in one execution space and spread over two (pinned and unpinned); it
# fails unless the sink counted every block exactly once and the channel between the spaces delivered them all.
out=$("$PIPESFS" bench spaces --count 200000 --runs 1)
echo "$out"
[ "$(echo "$out" | grep -cE '^(one space|two spaces)')" = 3 ] || fail "bench spaces: expected three rows"
ok "bench spaces moved every block through one and two execution spaces"

# `bench control`: control latency end to end (a probe sees its first block after each mkdir and each request).
out=$("$PIPESFS" bench control --runs 20)
echo "$out"
echo "$out" | grep -q "^mkdir -> first packet" && echo "$out" | grep -q "^20-filter request -> active" || fail "bench control: missing rows"
echo "$out" | awk '/->/ { if ($(NF) + 0 >= 10000000) exit 1 }' || fail "bench control: a probe never saw a block"
ok "bench control measured both cases"

# `bench exec`: pipesfs exec against tcpdump on the same capture; it fails unless the two output files are identical.
"$PIPESFS" mkpcap "$WORK/b.pcap" --flows 2000 --seed 3 > /dev/null
out=$("$PIPESFS" bench exec "$WORK/b.pcap" --runs 1)
echo "$out"
echo "$out" | grep -q "outputs identical" || fail "bench exec: outputs differ"
echo "$out" | grep -q "records identical" || fail "bench exec: the C floor loop wrote other records than tcpdump"
ok "bench exec wrote what tcpdump writes"

# `bench ac`: the ac filter against grep -F -c on generated text; it fails unless both count the same lines.
for n in 100 1000; do
    out=$("$PIPESFS" bench ac --megabytes 4 --patterns $n --runs 1)
    echo "$out"
    echo "$out" | grep -q "counts equal" || fail "bench ac --patterns $n: line counts differ from grep -F -c"
done
ok "bench ac counted the lines grep -F counts"
