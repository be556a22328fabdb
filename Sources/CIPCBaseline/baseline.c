#define _GNU_SOURCE
#include "ipc_baseline.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ring {
    _Atomic unsigned long head __attribute__((aligned(64)));
    _Atomic unsigned long tail __attribute__((aligned(64)));
    char data[] __attribute__((aligned(64)));
};

size_t ipcb_spsc_region_size(size_t ring_size) { return sizeof(struct ring) + ring_size; }

void ipcb_spsc_produce(void *region, size_t ringsz, size_t bs, size_t total) {
    struct ring *r = region;
    char *buf = malloc(bs);
    memset(buf, 1, bs);
    size_t n = total / bs;
    for (size_t i = 0; i < n; i++) {
        unsigned long h = atomic_load_explicit(&r->head, memory_order_relaxed);
        while (h + bs - atomic_load_explicit(&r->tail, memory_order_acquire) > ringsz)
            ;
        size_t off = h % ringsz, first = bs < ringsz - off ? bs : ringsz - off;
        memcpy(r->data + off, buf, first);
        if (first < bs) memcpy(r->data, buf + first, bs - first);
        atomic_store_explicit(&r->head, h + bs, memory_order_release);
    }
    free(buf);
}

size_t ipcb_spsc_consume(void *region, size_t ringsz, size_t bs, size_t total) {
    struct ring *r = region;
    char *buf = malloc(bs);
    size_t n = total / bs, got = 0;
    unsigned long t = 0;
    while (got < n * bs) {
        unsigned long h;
        while ((h = atomic_load_explicit(&r->head, memory_order_acquire)) - t < bs)
            ;
        size_t off = t % ringsz, first = bs < ringsz - off ? bs : ringsz - off;
        memcpy(buf, r->data + off, first);
        if (first < bs) memcpy(buf + first, r->data, bs - first);
        /* The copy is the consumer's work: without this the compiler drops it (buf is never read), and the
           baseline would compare a copying reader with one that never touches the data. ipcbase.c's
           memcpy_bench uses the same barrier for the same reason. */
        __asm__ volatile("" ::"r"(buf) : "memory");
        t += bs;
        atomic_store_explicit(&r->tail, t, memory_order_release);
        got += bs;
    }
    free(buf);
    return got;
}

long long ipcb_pipe_write(int fd, size_t bs, size_t total) {
    char *buf = malloc(bs);
    memset(buf, 1, bs);
    size_t n = total / bs;
    long long moved = 0;
    for (size_t i = 0; i < n; i++) {
        size_t o = 0;
        while (o < bs) {
            ssize_t w = write(fd, buf + o, bs - o);
            if (w < 0) { free(buf); return -1; }
            o += (size_t)w;
        }
        moved += (long long)bs;
    }
    free(buf);
    return moved;
}

long long ipcb_pipe_read(int fd, size_t bs) {
    char *buf = malloc(bs);
    long long got = 0;
    ssize_t r;
    while ((r = read(fd, buf, bs)) > 0) got += r;
    free(buf);
    return r < 0 ? -1 : got;
}
