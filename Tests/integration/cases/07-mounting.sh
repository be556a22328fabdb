# Mounting: daemon mode and pipesfs umount, SIGTERM/SIGINT unmount cleanly, mount -t fuse.pipesfs via the helper,
# an fstab line, and the demo source (cat shows packets at once).
source "$(dirname "$0")/../lib.sh"
"$PIPESFS" mount "$MP" --no-rx --no-tx
mountpoint -q "$MP" || fail "daemon mode did not mount"
grep -q "^pipesfs $MP fuse.pipesfs" /proc/mounts || fail "fsname/subtype wrong: $(grep "$MP" /proc/mounts)"
grep " $MP " /proc/mounts | grep -q allow_other || fail "as root allow_other should be on"
"$PIPESFS" umount "$MP"
mountpoint -q "$MP" && fail "pipesfs umount did not unmount"
ok "daemon + umount"
for sig in TERM INT; do
    "$PIPESFS" mount "$MP" -f --no-rx --no-tx & pid=$!
    wait_for 5 "mountpoint -q '$MP'" || fail "no mount"
    kill -$sig $pid
    wait_exit $pid 5
    mountpoint -q "$MP" && fail "SIG$sig left the mount"
    ok "SIG$sig unmounts"
done
# mount(8) through the helper, with a private install root so nothing of the machine's is replaced.
BIN="$WORK/bin"; mkdir -p "$BIN"
cp "$PIPESFS" "$BIN/pipesfs"
HELPER="$(cd "$(dirname "$0")/../../../fuse" && pwd)/mount.pipesfs"
# Use this tree's helper for the test; put back whatever was installed before.
if [ -e /sbin/mount.fuse.pipesfs ] || [ -L /sbin/mount.fuse.pipesfs ]; then mv /sbin/mount.fuse.pipesfs "$WORK/helper.saved"; fi
ln -s "$HELPER" /sbin/mount.fuse.pipesfs
restore_helper() {
    rm -f /sbin/mount.fuse.pipesfs
    if [ -e "$WORK/helper.saved" ] || [ -L "$WORK/helper.saved" ]; then mv "$WORK/helper.saved" /sbin/mount.fuse.pipesfs; fi
}
trap 'restore_helper; cleanup' EXIT
PIPESFS="$BIN/pipesfs" mount -t fuse.pipesfs pipesfs "$MP" -o norx,notx,demo
mountpoint -q "$MP" || fail "mount -t fuse.pipesfs did not mount"
[ -d "$MP/demo/ip/tcp/dport/80" ] || fail "demo graph missing"
timeout 10 head -c 2000 "$MP/demo/ip/tcp/dport/80/all.pcap" > "$WORK/demo.pcap" || fail "demo stream is empty"
[ "$(stat -c %s "$WORK/demo.pcap")" = 2000 ] || fail "short demo stream"
timeout 10 tcpdump -nr "$MP/demo/ip/tcp/dport/80/all.pcap" -c 5 2>/dev/null | grep -q "\.80: Flags" || fail "tcpdump -r on the demo tap"
umount "$MP"
mountpoint -q "$MP" && fail "umount failed"
ok "mount -t fuse.pipesfs"
echo "pipesfs $MP fuse.pipesfs defaults,norx,notx 0 0" > "$WORK/fstab"
PIPESFS="$BIN/pipesfs" mount -T "$WORK/fstab" "$MP"
mountpoint -q "$MP" || fail "fstab mount failed"
[ -d "$MP/rx" ] && fail "norx ignored"
umount "$MP"
ok "fstab line"
