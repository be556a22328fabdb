# Graph churn under load: sources added and removed while running with readers attached, filters created, moved
# and removed in a loop while data flows. The server must answer throughout and readers must end cleanly.
source "$(dirname "$0")/../lib.sh"
mount_pipes --no-rx --no-tx
for i in $(seq 1 25); do
    echo "source s$i=pcap:$IT_DATA/mix.pcap,loop" > "$MP/.ctl"
    mkdir -p "$MP/s$i/ip/tcp" "$MP/s$i/ip/udp" "$MP/j$i"
    bg cat "$MP/s$i/all"; a=$LAST_PID
    bg cat "$MP/s$i/ip/tcp/all.pcap"; b=$LAST_PID
    ln -s "$MP/j$i" "$MP/s$i/ip/udp/feed"
    mkdir "$MP/s$i/ip/tcp/count"
    mv "$MP/s$i/ip/tcp/count" "$MP/s$i/ip/udp/"
    rmdir "$MP/s$i/ip/udp/count"
    rm "$MP/s$i/ip/udp/feed"
    rmdir "$MP/s$i/ip/tcp" "$MP/s$i/ip/udp" "$MP/s$i/ip"
    rmdir "$MP/s$i"
    rmdir "$MP/j$i"
    wait_exit $a 5
    wait_exit $b 5
    alive
done
ls "$MP"
[ "$(ls "$MP" | wc -l)" = 0 ] || fail "leftover directories: $(ls "$MP")"
ok "25 rounds of churn under load"
