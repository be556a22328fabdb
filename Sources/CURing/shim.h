// liburing for Swift: io_uring submission and completion for file sources and sinks.
#ifndef PIPESFS_CURING_SHIM_H
#define PIPESFS_CURING_SHIM_H
// liburing.h defines _GNU_SOURCE before it includes the system headers. Under it glibc declares some types
// differently (fd_set's field names, for one), and clang then refuses a Swift file that also imports CPcap or
// Glibc, which were built without it. Fixing the feature set first (features.h is included once) keeps the
// declarations the same in every module (cpu_set_t, which liburing.h wants, is declared without it too).
#include <features.h>
#include <liburing.h>
#include <spawn.h>

// Two process calls the `exec` filter needs that glibc declares only under _GNU_SOURCE.
extern int pipe2(int fds[2], int flags);
extern int posix_spawn_file_actions_addclosefrom_np(posix_spawn_file_actions_t *actions, int from);
#endif
