/*
 * filterfloor.c — the floor under `pipesfs exec 'pcapin F | bpf E | pcapout O'`: the least a program can do for
 * the same output, single-threaded, with libpcap's BPF interpreter: read(2) the capture in 1 MiB pieces, walk the
 * records, run bpf_filter on each, writev the matching records straight out of the read buffer. No checks a real
 * tool needs (byte order, snaplen, damage): a reference for `pipesfs bench exec`, not a tool.
 */
#define _GNU_SOURCE
#include "ipc_baseline.h"
#include <fcntl.h>
#include <limits.h>
#include <pcap/pcap.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

long long ipcb_filter_floor(const char *in, const char *out, const char *expression) {
    int fd = open(in, O_RDONLY), ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ofd < 0) return -1;
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, 262144);
    struct bpf_program prog;
    if (pcap_compile(dead, &prog, expression, 1, PCAP_NETMASK_UNKNOWN) != 0) return -1;
    const size_t size = 1 << 20, room = 262144 + 16;
    unsigned char *buf = malloc(size + room);
    long long matched = 0;
    size_t have = 0;
    if (read(fd, buf, 24) != 24 || write(ofd, buf, 24) != 24) return -1;
    struct iovec iov[IOV_MAX > 1024 ? 1024 : IOV_MAX];
    const int maxiov = sizeof iov / sizeof iov[0];
    for (;;) {
        ssize_t r = read(fd, buf + have, size + room - have);
        if (r <= 0) break;
        have += (size_t)r;
        size_t off = 0;
        int n = 0;
        while (off + 16 <= have) {
            unsigned cap, len;
            memcpy(&cap, buf + off + 8, 4);
            memcpy(&len, buf + off + 12, 4);
            if (off + 16 + cap > have) break;
            if (bpf_filter(prog.bf_insns, buf + off + 16, len, cap)) {
                matched++;
                if (n > 0 && (unsigned char *)iov[n - 1].iov_base + iov[n - 1].iov_len == buf + off) {
                    iov[n - 1].iov_len += 16 + cap;
                } else {
                    if (n == maxiov) { if (writev(ofd, iov, n) < 0) return -1; n = 0; }
                    iov[n].iov_base = buf + off;
                    iov[n].iov_len = 16 + cap;
                    n++;
                }
            }
            off += 16 + cap;
        }
        if (n > 0 && writev(ofd, iov, n) < 0) return -1;
        memmove(buf, buf + off, have - off);
        have -= off;
    }
    free(buf);
    pcap_freecode(&prog);
    pcap_close(dead);
    close(fd);
    close(ofd);
    return matched;
}
