# `pipesfs save` writes the live graph as a script (junctions, one request per top-level directory, mkdir for
# bare class directories, link lines for symlinks); after unmounting, `mount --restore FILE` brings back the same
# tree (names, class directories, symlinks and their texts) and, on the same input, the same counts.
source "$(dirname "$0")/../lib.sh"
CAP="$WORK/cap.pcap"
"$PIPESFS" mkpcap "$CAP" --flows 2000 --seed 29 > /dev/null

snapshot() {  # the tree, every symlink's text, and every count's packets (after the stream ended)
    (cd "$MP" && find . -mindepth 1 | sort)
    (cd "$MP" && find . -type l | sort | while read -r l; do echo "$l -> $(readlink "$l")"; done)
    (cd "$MP" && find . -name 'count*' -type d | sort | while read -r d; do echo "$d $(sed -n 's/^count_packets: //p' "$d/stats")"; done)
}

mount_pipes --no-rx --no-tx --source "web=pcap:$CAP,paused"
"$PIPESFS" run --mount "$MP" 'web | ip | tcp | dport |80 count + match GET' > /dev/null
"$PIPESFS" run --mount "$MP" 'web | ip | tcp ++ udp | count' > /dev/null
"$PIPESFS" run --mount "$MP" 'web | ip | tcp +* !(dport |22 count) | count' > /dev/null
mkdir -p "$MP/j=raw/ip/dport/!80" "$MP/web/bpf=udp port 53/count"
ln -s "../../bpf=udp port 53" "$MP/web/ip/udp/dns"
echo start > "$MP/web/ctl"
wait_for 60 'grep -q "^stream: ended" "$MP/web/bpf=udp port 53/count/stats"' || fail "the stream did not end"
wait_for 10 '[ -z "$(find "$MP/web" -name stats -print0 | xargs -0 grep -L "^stream: ended")" ]' || fail "not every stream ended"
snapshot > "$WORK/before"
"$PIPESFS" save --mount "$MP" -o "$WORK/graph.srl"
cat "$WORK/graph.srl"
grep -q "^run " "$WORK/graph.srl" || fail "save wrote no request"
fusermount3 -u "$MP"; wait "$DAEMON_PID" 2>/dev/null || true

mount_pipes --no-rx --no-tx --source "web=pcap:$CAP,paused" --restore "$WORK/graph.srl"
[ ! -s "$MP/.errors" ] || { cat "$MP/.errors"; fail "restoring logged errors"; }
echo start > "$MP/web/ctl"
wait_for 60 'grep -q "^stream: ended" "$MP/web/bpf=udp port 53/count/stats"' || fail "the restored stream did not end"
wait_for 10 '[ -z "$(find "$MP/web" -name stats -print0 | xargs -0 grep -L "^stream: ended")" ]' || fail "not every restored stream ended"
snapshot > "$WORK/after"
diff "$WORK/before" "$WORK/after" || fail "the restored graph differs"
n=$(grep -c . "$WORK/before")
ok "save, unmount, mount --restore: the same tree, symlinks and counts ($n lines)"
expect_fail "'$PIPESFS' mount '$MP' -f --restore /nonexistent.srl" "restore /nonexistent.srl: No such file or directory"
