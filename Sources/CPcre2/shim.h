// PCRE2 for Swift, 8-bit code units (bytes): the `regex` filter. Swift does not import pcre2.h's function-name
// macros, so Swift calls the suffixed names (pcre2_compile_8, pcre2_jit_match_8, ...).
#ifndef PIPESFS_CPCRE2_SHIM_H
#define PIPESFS_CPCRE2_SHIM_H
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#endif
