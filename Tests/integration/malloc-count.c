// An LD_PRELOAD shim that counts heap allocation calls (malloc, calloc, realloc, posix_memalign, aligned_alloc,
// memalign) and, at exit, appends one line to the file named by MALLOC_COUNT_OUT:
//   pid=PID name=NAME malloc=N calloc=N realloc=N posix_memalign=N aligned_alloc=N memalign=N total=N
// Every process that inherits the preload appends its own line (children such as `cat` too): pick yours by pid.
// Build: cc -shared -fPIC -O2 -o mc.so malloc-count.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MALLOC, CALLOC, REALLOC, POSIX_MEMALIGN, ALIGNED_ALLOC, MEMALIGN, KINDS };
static const char *const names[KINDS] = {"malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign"};
static unsigned long counts[KINDS];

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

// dlsym itself may allocate (calloc for its error state) before the real functions are known: such requests are
// served from this buffer and never freed. It is zero-initialized, as calloc must return zeroed memory.
static _Alignas(16) char bootstrap[16384];
static size_t bootstrap_used;
static int resolving;

static int from_bootstrap(const void *p) {
    return (const char *)p >= bootstrap && (const char *)p < bootstrap + sizeof bootstrap;
}

/// Bytes from p to the end of the bootstrap buffer: the most a bootstrap block can hold.
static size_t bootstrap_tail(const void *p) { return (size_t)(bootstrap + sizeof bootstrap - (const char *)p); }

static void *bootstrap_alloc(size_t n) {
    size_t at = (bootstrap_used + 15) & ~(size_t)15;
    if (n > sizeof bootstrap - at) return NULL;
    bootstrap_used = at + n;
    return bootstrap + at;
}

static void resolve(void) {
    if (real_malloc || resolving) return;
    resolving = 1;
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    void *(*m)(size_t) = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    resolving = 0;
    real_malloc = m;  // last: it marks the others as known
}

static inline void count(int kind) { __atomic_fetch_add(&counts[kind], 1, __ATOMIC_RELAXED); }

void *malloc(size_t n) {
    if (!real_malloc) {
        resolve();
        if (!real_malloc) return bootstrap_alloc(n);
    }
    count(MALLOC);
    return real_malloc(n);
}

void *calloc(size_t n, size_t size) {
    if (!real_malloc) {
        resolve();
        if (!real_malloc) {  // called from dlsym while resolving
            if (size && n > SIZE_MAX / size) return NULL;
            return bootstrap_alloc(n * size);
        }
    }
    count(CALLOC);
    return real_calloc(n, size);
}

void *realloc(void *p, size_t n) {
    if (!real_malloc) {
        resolve();
        if (!real_malloc) {
            void *q = bootstrap_alloc(n);
            if (q && p) memmove(q, p, n < bootstrap_tail(p) ? n : bootstrap_tail(p));  // p is a bootstrap block
            return q;
        }
    }
    count(REALLOC);
    if (from_bootstrap(p)) {
        void *q = real_malloc(n);
        if (q) memcpy(q, p, n < bootstrap_tail(p) ? n : bootstrap_tail(p));
        return q;
    }
    return real_realloc(p, n);
}

void free(void *p) {
    if (!p || from_bootstrap(p)) return;
    if (!real_free) resolve();
    if (real_free) real_free(p);
}

int posix_memalign(void **out, size_t alignment, size_t n) {
    if (!real_malloc) resolve();
    if (!real_posix_memalign) return ENOMEM;
    count(POSIX_MEMALIGN);
    return real_posix_memalign(out, alignment, n);
}

void *aligned_alloc(size_t alignment, size_t n) {
    if (!real_malloc) resolve();
    if (!real_aligned_alloc) return NULL;
    count(ALIGNED_ALLOC);
    return real_aligned_alloc(alignment, n);
}

void *memalign(size_t alignment, size_t n) {
    if (!real_malloc) resolve();
    if (!real_memalign) return NULL;
    count(MEMALIGN);
    return real_memalign(alignment, n);
}

__attribute__((constructor)) static void start(void) { resolve(); }

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("MALLOC_COUNT_OUT");
    if (!path || !*path) return;
    unsigned long c[KINDS], total = 0;
    for (int i = 0; i < KINDS; i++) total += c[i] = __atomic_load_n(&counts[i], __ATOMIC_RELAXED);
    char line[512];
    int n = snprintf(line, sizeof line, "pid=%d name=%s", (int)getpid(), program_invocation_short_name);
    for (int i = 0; i < KINDS && n > 0 && n < (int)sizeof line; i++)
        n += snprintf(line + n, sizeof line - n, " %s=%lu", names[i], c[i]);
    if (n > 0 && n < (int)sizeof line) n += snprintf(line + n, sizeof line - n, " total=%lu\n", total);
    if (n <= 0 || n >= (int)sizeof line) return;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ssize_t w = write(fd, line, (size_t)n);
    (void)w;
    close(fd);
}
