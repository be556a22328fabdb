// liburing for Swift: io_uring submission and completion for file sources and sinks.
#ifndef PIPESFS_CURING_SHIM_H
#define PIPESFS_CURING_SHIM_H
#include <liburing.h>
#endif
