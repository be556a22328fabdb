// libzstd for Swift: the `compress` filter's zstd streams, and the tests' decompression. Stable API only.
#ifndef PIPESFS_CZSTD_SHIM_H
#define PIPESFS_CZSTD_SHIM_H
#include <zstd.h>
#endif
