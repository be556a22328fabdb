/*
 * ipc_baseline.h — the reference points `pipesfs bench ipc` measures the Beltway rings against: a minimal
 * single-producer single-consumer shared-memory ring (the algorithm of the workplace's ipcbase.c: two
 * cache-line-separated indices, spin-waiting, memcpy in and out) and plain pipe loops. Written in C on
 * purpose: it is the baseline, not ours to tune.
 */
#ifndef IPC_BASELINE_H
#define IPC_BASELINE_H
#include <stddef.h>
#include <stdint.h>

/* Bytes of shared memory a ring of `ring_size` data bytes needs. */
size_t ipcb_spsc_region_size(size_t ring_size);
/* Producer: writes `total / block` blocks of `block` bytes into the ring at `region`. */
void ipcb_spsc_produce(void *region, size_t ring_size, size_t block, size_t total);
/* Consumer: reads them back (copying each block out). Returns bytes read. */
size_t ipcb_spsc_consume(void *region, size_t ring_size, size_t block, size_t total);
/* Pipe writer and reader loops over a file descriptor. Return bytes moved or -1. */
long long ipcb_pipe_write(int fd, size_t block, size_t total);
long long ipcb_pipe_read(int fd, size_t block);

/* The floor under `pipesfs exec 'pcapin F | bpf E | pcapout O'` (filterfloor.c): a minimal loop (read, bpf_filter,
 * writev) writing the matching records of `in` to `out`, on one thread or (threads = 2) with a second thread
 * reading ahead. Returns how many, or -1. */
long long ipcb_filter_floor(const char *in, const char *out, const char *expression, int threads);

#endif
