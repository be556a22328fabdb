#!/bin/bash
# webtap (§4.1): log every HTTP GET request of the web traffic, compressed. The paper's shell job, as written:
#   cat /pipes/rx/ip/dport/80/untcp/http/get/all | gzip > log.gz
# (with `tcp` before `dport`: ports are TCP's here). Prints how many requests it logged.
. "$(dirname "$0")/common.sh"
G="$PIPES/rx/ip/tcp/dport/80/untcp/http/get"
mkdir -p "$G"
cat "$G/all" | gzip > "$OUT/webtap.log.gz" &
reader=$!
wait_reader "$G"
start_rx
wait "$reader"
echo "webtap: $(zcat "$OUT/webtap.log.gz" | grep -c '^GET ') GET requests in $OUT/webtap.log.gz"
