#!/bin/bash
# A small intrusion detector (§4.2, §9.3): Aho-Corasick over reassembled TCP streams,
#   rx | ip | tcp | untcp | ac @SIGNATURES
# so a signature split across segments (or sent a byte per packet) is still found. Each signature's number is a
# class of ac: one directory per signature, whose `all` carries the stream data that matched it first. Prints the
# alerts per signature.
. "$(dirname "$0")/common.sh"
printf '%s\n' '/etc/passwd' '../..' 'cmd.exe' 'User-Agent: sqlmap' > "$OUT/signatures.txt"
"$PIPESFS" run --mount "$PIPES" "rx | ip | tcp | untcp | ac \"@$OUT/signatures.txt\"" > /dev/null
A=$(find "$PIPES/rx/ip/tcp/untcp" -maxdepth 1 -type d -name 'ac*' -print -quit)
for k in 1 2 3 4; do mkdir "$A/$k"; done
start_rx
wait_ended "$A"
k=0
while read -r sig; do
    k=$((k + 1))
    echo "ids: signature $k ($sig): $(sed -n 's/^packets_out: //p' "$A/$k/stats") alerts"
done < "$OUT/signatures.txt"
