# `pipesfs bench ipc` runs end to end on this machine: its four ways of moving blocks between two processes
# (ring read, ring peek, pipe, SPSC ring) each move every byte (the command checks the counts and fails
# otherwise). No speed is asserted here: figures come from full runs, reported with the issue.
source "$(dirname "$0")/../lib.sh"
out=$("$PIPESFS" bench ipc --megabytes 16 --runs 1 --sizes 64,4096,65536 --ring-log2 18)
echo "$out"
[ "$(echo "$out" | grep -cE '^ +(64|4096|65536) ')" = 3 ] || fail "expected a row per block size"
echo "$out" | awk 'NR > 1 { for (i = 2; i <= 5; i++) if ($i + 0 <= 0) exit 1 }' || fail "a rate is not positive"
expect_fail "'$PIPESFS' bench ipc --sizes 3" "block sizes of 8 bytes to 1 MiB"
expect_fail "'$PIPESFS' bench ipc --sizes 65536 --ring-log2 16" "raise --ring-log2"
ok "bench ipc moved every byte four ways"
