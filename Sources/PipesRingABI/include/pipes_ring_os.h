/*
 * pipes_ring_os.h — what userspace needs around the ring ABI and Swift cannot call directly: creating the
 * shared region (memfd) and sleeping on its futex words. Not part of the ABI (the kernel module has its own).
 */
#ifndef PIPES_RING_OS_H
#define PIPES_RING_OS_H

#include <stdint.h>

/* An anonymous shared-memory file of `size` bytes (memfd, sealed against shrinking). Returns the fd or -errno. */
int pipes_ring_memfd(const char *name, uint64_t size);

/* Gives the pages of [offset, offset + length) of a ring's memfd back to the system (fallocate PUNCH_HOLE,
   KEEP_SIZE): they read as zeros and take no memory until touched again (deck-cut, paper §5.4). Returns 0 or
   -errno. */
int pipes_ring_release(int fd, uint64_t offset, uint64_t length);

/* Sleeps while *word == expected, at most timeout_ns (0: no limit). Returns 0, or -errno (EAGAIN: the word had
   changed; ETIMEDOUT; EINTR). Works across processes (the word is in shared memory). */
int pipes_futex_wait(uint32_t *word, uint32_t expected, uint64_t timeout_ns);

/* Wakes up to `count` sleepers on *word. Returns how many woke, or -errno. */
int pipes_futex_wake(uint32_t *word, int count);

/* A spin-wait hint (PAUSE on x86). */
static inline void pipes_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
