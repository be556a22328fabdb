# tx: each write(2) to tx/all is one frame sent with pcap_inject; rx (on lo) sees it, tx's stats count it, and a
# frame the interface refuses makes write(2) fail with EIO.
source "$(dirname "$0")/../lib.sh"
mount_pipes --rx lo --tx lo
mkdir "$MP/rx/bpf=udp dst port 9999"
bg cat "$MP/rx/bpf=udp dst port 9999/all.pcap" > "$WORK/seen.pcap"
sleep 0.5
python3 - "$MP/tx/all" <<'PY'
import os, struct, sys
payload = b"PIPESFS-TX-MARKER"
udp = struct.pack("!HHHH", 4444, 9999, 8 + len(payload), 0) + payload
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, bytes([127,0,0,1]), bytes([127,0,0,1]))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = bytes(6) + bytes(6) + b"\x08\x00"
fd = os.open(sys.argv[1], os.O_WRONLY)
n = os.write(fd, eth + ip + udp)
os.close(fd)
print("wrote", n)
PY
wait_for 5 "tcpdump -nr '$WORK/seen.pcap' 2>/dev/null | grep -q '127.0.0.1.4444 > 127.0.0.1.9999'" || fail "rx did not see the injected frame"
grep -q "^frames_sent: 1" "$MP/tx/stats" || fail "tx stats: $(cat "$MP/tx/stats")"
ok "a frame written to tx/all is sent and captured"
# A frame larger than the interface accepts: write fails with EIO and the reason is in .errors.
if python3 -c "import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.write(fd, bytes(14) + bytes(70000))" "$MP/tx/all" 2>"$WORK/err"; then
    fail "an oversized frame was accepted"
fi
grep -q "Errno 5" "$WORK/err" || fail "expected EIO, got: $(cat "$WORK/err")"
grep -q "send_errors: 1" "$MP/tx/stats" || fail "send error not counted"
ok "a refused frame gives EIO"
