#!/bin/bash
# httpclean (§4.1): when a vulnerability in the web server is found, put a filter in front of it without stopping
# anything. The GET filter reads a junction instead of http, and grep, a plain userspace program, sits between
# them and drops every request line containing "..". Prints how many GETs got through and how many grep dropped.
# (Here `http/get` is http's class of GET heads; the `get` filter below the junction passes GET lines.)
. "$(dirname "$0")/common.sh"
H="$PIPES/rx/ip/tcp/dport/80/untcp/http"
mkdir -p "$H" "$PIPES/httpclean/get"                     # a junction: passes on what is written to it
cat "$PIPES/httpclean/get/all" > "$OUT/clean.log" &
reader=$!
cat "$H/all" | tee "$OUT/heads.log" | grep -a --line-buffered -vF '..' > "$PIPES/httpclean/all" &
cleaner=$!
wait_reader "$H"
wait_reader "$PIPES/httpclean/get"
start_rx
wait "$cleaner"                                           # http's stream ended: grep wrote all it kept
rmdir "$PIPES/httpclean/get"                              # its reader gets what is left, then end of file
wait "$reader"
all=$(grep -ac '^GET ' "$OUT/heads.log")
kept=$(grep -ac '^GET ' "$OUT/clean.log")
echo "httpclean: $kept of $all GET requests passed, $((all - kept)) with '..' dropped ($OUT/clean.log)"
