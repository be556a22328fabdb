/*
 * pipes_thread.h — thread placement for execution spaces (paper §6.2: a space is a thread pinned to a CPU).
 * GNU extensions Swift's Glibc module does not import (CPU_SET, pthread_setaffinity_np, pthread_setname_np).
 * Not part of the ring ABI.
 */
#ifndef PIPES_THREAD_H
#define PIPES_THREAD_H

/* Pins the calling thread to `cpu`. Returns 0 or -errno (EINVAL: no such CPU, or outside the cpuset). */
int pipes_pin_self(int cpu);

/* Lets the calling thread run on every CPU it is allowed (the process's affinity at start). Returns 0 or -errno. */
int pipes_unpin_self(void);

/* Names the calling thread (at most 15 bytes show in top -H and /proc/PID/task/TID/comm). */
void pipes_set_thread_name(const char *name);

/* The kernel's id of the calling thread (gettid). */
int pipes_thread_id(void);

/* CPUs this process may run on (its affinity at the first call of this or of pinning), at least 1. */
int pipes_usable_cpus(void);

#endif
