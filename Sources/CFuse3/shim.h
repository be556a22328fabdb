// libfuse3 low-level API for Swift. FUSE_USE_VERSION >= 312 makes fuse_session_loop_mt a real function.
#ifndef PIPESFS_CFUSE3_SHIM_H
#define PIPESFS_CFUSE3_SHIM_H
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <errno.h>
#include <poll.h>
#endif
