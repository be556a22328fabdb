#!/bin/bash
# Per-connection compressed capture (§4.2, connection handling): one request,
#   rx | ip | tcp | pcap flows | compress=zstd | files DIR
# keeps each TCP connection direction as its own zstd-compressed pcap file, named as tcpflow names its files.
# Prints how many files and packets it wrote.
. "$(dirname "$0")/common.sh"
id=$("$PIPESFS" run --mount "$PIPES" "rx | ip | tcp | pcap flows | compress=zstd | files $OUT/flows")
leaf=$(find "$PIPES/rx/ip/tcp" -type d -name 'files*' -print -quit)
start_rx
wait_ended "$leaf"
[ "$LIVE" = 1 ] || "$PIPESFS" stop --mount "$PIPES" "$id" > /dev/null  # the files are complete once it stops
n=0; packets=0
for f in "$OUT/flows"/*; do
    n=$((n + 1))
    packets=$((packets + $(zstd -dc "$f" | tcpdump -n -r - 2>/dev/null | wc -l)))
done
echo "flowcapture: $n files, $packets packets in $OUT/flows"
