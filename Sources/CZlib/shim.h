// zlib for Swift: the `compress` filter's gzip streams (deflate with a gzip wrapper), and the tests' inflate.
#ifndef PIPESFS_CZLIB_SHIM_H
#define PIPESFS_CZLIB_SHIM_H
#include <zlib.h>

// deflateInit2 and inflateInit2 are macros (they pass the library version and sizeof(z_stream)), which Swift cannot
// call: these are the same calls as functions. windowBits 15 + 16 asks for a gzip wrapper (header and trailer);
// memLevel 8 is zlib's default.
static inline int pipes_deflate_init_gzip(z_streamp strm, int level) {
    return deflateInit2(strm, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}
static inline int pipes_inflate_init_gzip(z_streamp strm) {
    return inflateInit2(strm, 15 + 16);
}
#endif
