/* Thread placement for execution spaces: see pipes_thread.h. */
#define _GNU_SOURCE
#include "pipes_thread.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static cpu_set_t initial_set;
static int initial_known;
static pthread_once_t initial_once = PTHREAD_ONCE_INIT;

/* The process's affinity before any thread was pinned (threads inherit their creator's). */
static void read_initial(void) {
    CPU_ZERO(&initial_set);
    if (sched_getaffinity(0, sizeof initial_set, &initial_set) == 0) initial_known = 1;
}

static void remember_initial(void) { pthread_once(&initial_once, read_initial); }

int pipes_pin_self(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return -EINVAL;
    remember_initial();
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    return rc == 0 ? 0 : -rc;
}

int pipes_unpin_self(void) {
    remember_initial();
    if (!initial_known) return -EINVAL;
    int rc = pthread_setaffinity_np(pthread_self(), sizeof initial_set, &initial_set);
    return rc == 0 ? 0 : -rc;
}

void pipes_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = 0;
    pthread_setname_np(pthread_self(), buf);
}

int pipes_thread_id(void) { return (int)syscall(SYS_gettid); }

int pipes_usable_cpus(void) {
    remember_initial();  /* the first call (at start, unpinned) fixes what unpinning goes back to */
    if (!initial_known) return 1;
    int n = CPU_COUNT(&initial_set);
    return n > 0 ? n : 1;
}
