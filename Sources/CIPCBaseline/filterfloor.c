/*
 * filterfloor.c — the floor under `pipesfs exec 'pcapin F | bpf E | pcapout O'`: the least a program can do for
 * the same output with libpcap's BPF interpreter. read(2) the capture in 1 MiB pieces, walk the records, run
 * bpf_filter on each, writev the matching records straight out of the read buffer. With two threads, one reads
 * ahead into four buffers while the other filters and writes (handing buffers over by spinning on two counters).
 * None of the checks a real tool needs (byte order, snaplen, damage): a reference for `pipesfs bench exec`.
 */
#define _GNU_SOURCE
#include "ipc_baseline.h"
#include <fcntl.h>
#include <limits.h>
#include <pcap/pcap.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

enum { CHUNK = 1 << 20, ROOM = 262144 + 16, NBUF = 4 };

struct floor_state {
    int fd;
    unsigned char *buf[NBUF];
    ssize_t len[NBUF];
    _Atomic long produced __attribute__((aligned(64)));
    _Atomic long consumed __attribute__((aligned(64)));
};

static void *floor_reader(void *arg) {
    struct floor_state *s = arg;
    for (long i = 0;; i++) {
        while (i - atomic_load_explicit(&s->consumed, memory_order_acquire) >= NBUF) sched_yield();
        ssize_t r = read(s->fd, s->buf[i % NBUF] + ROOM, CHUNK);
        s->len[i % NBUF] = r;
        atomic_store_explicit(&s->produced, i + 1, memory_order_release);
        if (r <= 0) return NULL;
    }
}

long long ipcb_filter_floor(const char *in, const char *out, const char *expression, int threads) {
    struct floor_state s = {.fd = open(in, O_RDONLY)};
    int ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (s.fd < 0 || ofd < 0) return -1;
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, 262144);
    struct bpf_program prog;
    if (pcap_compile(dead, &prog, expression, 1, PCAP_NETMASK_UNKNOWN) != 0) return -1;
    for (int i = 0; i < NBUF; i++) s.buf[i] = malloc(CHUNK + ROOM);
    unsigned char header[24];
    if (read(s.fd, header, 24) != 24 || write(ofd, header, 24) != 24) return -1;
    pthread_t reader;
    if (threads > 1 && pthread_create(&reader, NULL, floor_reader, &s) != 0) return -1;
    struct iovec iov[IOV_MAX > 1024 ? 1024 : IOV_MAX];
    const int maxiov = sizeof iov / sizeof iov[0];
    long long matched = 0;
    size_t carry = 0;
    unsigned char *carried = malloc(ROOM);  /* the start of a record cut at the end of the previous piece */
    for (long i = 0;; i++) {
        unsigned char *chunk = s.buf[i % NBUF];
        ssize_t r;
        if (threads > 1) {
            while (atomic_load_explicit(&s.produced, memory_order_acquire) <= i) sched_yield();
            r = s.len[i % NBUF];
        } else {
            r = read(s.fd, chunk + ROOM, CHUNK);
        }
        if (r <= 0) break;
        unsigned char *base = chunk + ROOM - carry;
        if (carry) memcpy(base, carried, carry);
        size_t have = carry + (size_t)r, off = 0;
        int n = 0;
        while (off + 16 <= have) {
            unsigned cap, len;
            memcpy(&cap, base + off + 8, 4);
            memcpy(&len, base + off + 12, 4);
            if (off + 16 + cap > have) break;
            if (bpf_filter(prog.bf_insns, base + off + 16, len, cap)) {
                matched++;
                if (n > 0 && (unsigned char *)iov[n - 1].iov_base + iov[n - 1].iov_len == base + off) {
                    iov[n - 1].iov_len += 16 + cap;
                } else {
                    if (n == maxiov) { if (writev(ofd, iov, n) < 0) return -1; n = 0; }
                    iov[n].iov_base = base + off;
                    iov[n].iov_len = 16 + cap;
                    n++;
                }
            }
            off += 16 + cap;
        }
        if (n > 0 && writev(ofd, iov, n) < 0) return -1;
        carry = have - off;
        if (carry) memcpy(carried, base + off, carry);
        atomic_store_explicit(&s.consumed, i + 1, memory_order_release);
    }
    if (threads > 1) pthread_join(reader, NULL);
    for (int i = 0; i < NBUF; i++) free(s.buf[i]);
    free(carried);
    pcap_freecode(&prog);
    pcap_close(dead);
    close(s.fd);
    close(ofd);
    return matched;
}
