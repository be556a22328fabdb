# Permissions with a real non-root user: live-capture taps are the owner's only, capture-file taps are readable by
# all, directories belong to their creator, and refusals are EACCES from the kernel (default_permissions).
source "$(dirname "$0")/../lib.sh"
U=pipesfs-it
id "$U" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$U"
as_user() { runuser -u "$U" -- "$@"; }
chmod 755 "$MP"
mount_pipes --rx lo --no-tx --source "src=pcap:$IT_DATA/mix.pcap,loop,rate=2000"
mkdir -p "$MP/rx/ip" "$MP/src/ip"
[ "$(stat -c %a "$MP/rx/ip/all")" = 600 ] || fail "live tap mode $(stat -c %a "$MP/rx/ip/all")"
[ "$(stat -c %a "$MP/src/ip/all")" = 644 ] || fail "capture tap mode $(stat -c %a "$MP/src/ip/all")"
as_user ls -R "$MP" > /dev/null || fail "a user cannot list the tree"
as_user timeout 5 head -c 1000 "$MP/src/ip/all.pcap" > "$WORK/u.pcap" || fail "a user cannot read a capture-file tap"
[ "$(stat -c %s "$WORK/u.pcap")" = 1000 ] || fail "short read as user"
as_user cat "$MP/src/ip/stats" | grep -q "^filter: ip" || fail "a user cannot read stats"
if as_user cat "$MP/rx/ip/all" 2>"$WORK/e1"; then fail "a user read live capture"; fi
grep -q "Permission denied" "$WORK/e1" || fail "live tap: $(cat "$WORK/e1")"
ok "live capture is root's; capture files are readable"
if as_user mkdir "$MP/src/ip/tcp" 2>"$WORK/e2"; then fail "a user created a filter in root's directory"; fi
grep -q "Permission denied" "$WORK/e2" || fail "mkdir: $(cat "$WORK/e2")"
if as_user sh -c "echo stop > '$MP/src/ctl'" 2>"$WORK/e3"; then fail "a user controlled root's source"; fi
grep -q "Permission denied" "$WORK/e3" || fail "ctl: $(cat "$WORK/e3")"
if as_user sh -c "echo x > '$MP/src/ip/all'" 2>"$WORK/e4"; then fail "a user injected into root's filter"; fi
grep -q "Permission denied" "$WORK/e4" || fail "inject: $(cat "$WORK/e4")"
alive
ok "a user cannot change root's graph"
