// An LD_PRELOAD shim that counts Swift reference counting calls (swift_retain, swift_release) made through the
// dynamic Swift runtime and, at exit, appends one line to the file named by ARC_COUNT_OUT:
//   pid=PID retain=N release=N
// Used with malloc-count.c by 09-no-alloc.sh: the per-packet path must not retain or release.
// Build: cc -shared -fPIC -O2 -o arc.so arc-count.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static unsigned long retains, releases;
static void *(*real_retain)(void *);
static void (*real_release)(void *);

void *swift_retain(void *p) {
    if (!real_retain) real_retain = (void *(*)(void *))dlsym(RTLD_NEXT, "swift_retain");
    __atomic_fetch_add(&retains, 1, __ATOMIC_RELAXED);
    return real_retain(p);
}

void swift_release(void *p) {
    if (!real_release) real_release = (void (*)(void *))dlsym(RTLD_NEXT, "swift_release");
    __atomic_fetch_add(&releases, 1, __ATOMIC_RELAXED);
    real_release(p);
}

__attribute__((destructor)) static void report(void) {
    const char *out = getenv("ARC_COUNT_OUT");
    if (!out) return;
    char line[128];
    int n = snprintf(line, sizeof line, "pid=%d retain=%lu release=%lu\n", (int)getpid(),
                     __atomic_load_n(&retains, __ATOMIC_RELAXED), __atomic_load_n(&releases, __ATOMIC_RELAXED));
    int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        ssize_t w = write(fd, line, (size_t)n);
        (void)w;
        close(fd);
    }
}
