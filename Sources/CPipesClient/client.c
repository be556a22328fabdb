/* libpipes: the PipesFS client library. See pipes_client.h; the ring layout is pipes_ring.h. */
#define _GNU_SOURCE
#include "pipes_client.h"
#include "pipes_ring.h"
#include "pipes_ring_os.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

/* producer.closed values: PIPES_RING_CLOSED_END ends the stream; PIPES_RING_CLOSED_REPLACED means the daemon
   moved the stream to a new ring (its policy changed): ask for the ring again. */
#ifndef PIPES_RING_CLOSED_END
#define PIPES_RING_CLOSED_END 1u
#endif
#ifndef PIPES_RING_CLOSED_REPLACED
#define PIPES_RING_CLOSED_REPLACED 2u
#endif

enum { SPINS = 4000, FALLBACK_BUFFER = 1 << 16 };

/* ---------------------------------------------------------------------------------------------------------
 * Mapping a ring and reading it: one reader slot.
 */

struct ring_map {
    struct pipes_ring_header *h;   /* header pages, read-write (this reader's slot, the consumers' line) */
    const char *data;              /* data area, read-only */
    size_t data_len;
    uint64_t mask;
    uint64_t capacity;
    int drop;                      /* PIPES_RING_DROP: validate every record against producer.oldest */
    uint64_t timeout_ns;
};

struct reader {
    struct ring_map m;
    int spin;                      /* adaptive spin budget before sleeping (see ring_wait) */
    struct pipes_ring_reader *slot;
    uint64_t tail, cached_head, next_seq, delivered, dropped;
    uint64_t woke_producer_at;     /* tail when this reader last woke a producer waiting for room */
    /* the record pipes_tap_peek handed out last */
    int peeked;
    uint64_t peek_pos, peek_span, peek_seq;
    uint32_t peek_len;
    uint32_t part;                 /* bytes of the peeked record pipes_tap_read already returned */
};

static int map_ring(int fd, struct ring_map *m, int data_writable) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    if ((uint64_t)st.st_size <= PIPES_RING_HEADER_SIZE) { errno = EINVAL; return -1; }
    void *h = mmap(NULL, PIPES_RING_HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) return -1;
    struct pipes_ring_header *hdr = h;
    uint32_t log2 = hdr->info.size_log2;
    if (pipes_load_acquire64(&hdr->info.magic) != PIPES_RING_MAGIC || hdr->info.version != PIPES_RING_VERSION
        || log2 < 12 || log2 > 34 || PIPES_RING_HEADER_SIZE + (1ull << log2) != (uint64_t)st.st_size
        || hdr->info.max_readers == 0 || hdr->info.max_readers > PIPES_RING_MAX_READERS) {
        munmap(h, PIPES_RING_HEADER_SIZE);
        errno = EPROTO;
        return -1;
    }
    size_t len = (size_t)1 << log2;
    void *d = mmap(NULL, len, data_writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd,
                   PIPES_RING_HEADER_SIZE);
    if (d == MAP_FAILED) {
        int e = errno;
        munmap(h, PIPES_RING_HEADER_SIZE);
        errno = e;
        return -1;
    }
    m->h = hdr;
    m->data = d;
    m->data_len = len;
    m->capacity = len;
    m->mask = len - 1;
    m->drop = hdr->info.policy == PIPES_RING_DROP;
    m->timeout_ns = hdr->info.timeout_ns ? hdr->info.timeout_ns : 1000000;
    return 0;
}

static void unmap_ring(struct ring_map *m) {
    if (m->data) munmap((void *)m->data, m->data_len);
    if (m->h) munmap(m->h, PIPES_RING_HEADER_SIZE);
    m->data = NULL;
    m->h = NULL;
}

/* Claims a free reader slot and starts at the producer's head (records published from now on). */
static int claim_slot(struct reader *r) {
    struct pipes_ring_header *h = r->m.h;
    for (uint32_t i = 0; i < h->info.max_readers; i++) {
        struct pipes_ring_reader *s = &h->readers[i];
        if (!pipes_cas32(&s->state, PIPES_READER_FREE, PIPES_READER_ACTIVE)) continue;
        uint64_t head = pipes_load_acquire64(&h->producer.head);
        r->slot = s;
        r->tail = head;
        r->cached_head = head;
        r->next_seq = pipes_load_acquire64(&h->producer.records);
        r->delivered = r->dropped = 0;
        r->spin = SPINS;
        r->peeked = 0;
        r->part = 0;
        pipes_store_relaxed64(&s->records, 0);
        pipes_store_relaxed64(&s->dropped, 0);
        pipes_store_release32(&s->pid, (uint32_t)getpid());
        pipes_store_release64(&s->tail, head);
        return 0;
    }
    errno = EMFILE;
    return -1;
}

static void publish_counters(struct reader *r) {
    pipes_store_relaxed64(&r->slot->records, r->delivered);
    pipes_store_relaxed64(&r->slot->dropped, r->dropped);
}

static void wake_producer(struct ring_map *m) {
    if (pipes_load_acquire32(&m->h->producer.waiting_for_room) == 0) return;
    pipes_fetch_add32(&m->h->consumers.room_seq, 1);
    pipes_futex_wake(&m->h->consumers.room_seq, 1);
}

/* After moving the tail: wakes a producer waiting for room, moderated like its wake-ups of readers (paper
   §6.2). While the flag stays set this reader bumps room_seq at most once per eighth of the ring it consumes:
   with several readers (fan-out) each of them would otherwise make a futex system call for every record it
   consumed until the producer ran again (get_futex_key pins the shared page each time), a storm that cost
   the readers of `bench fanout` more than their reading. A producer that went back to sleep meanwhile waits at
   most its bounded futex wait (1 ms) or until this reader consumed another eighth; ring_wait bumps it, with a
   fence, before this reader sleeps. Not checked against the fence-free flag load: see ring_wait. */
static inline void wake_producer_moderated(struct reader *r) {
    if (pipes_load_acquire32(&r->m.h->producer.waiting_for_room) == 0) return;
    /* An eighth of the part of the ring in use (its deck-cut), not of the mapped region: a producer that
       waits until less than a quarter of its cut is unread would otherwise hear from no reader until it sleeps. */
    uint32_t cut_log2 = pipes_load_acquire32(&r->m.h->producer.size_log2);
    uint64_t cut = cut_log2 >= 12 && (1ull << cut_log2) <= r->m.capacity ? 1ull << cut_log2 : r->m.capacity;
    if (r->tail - r->woke_producer_at < (cut >> 3)) return;
    /* Only the slowest reader's progress gives the producer room: if another active reader is still behind
       where this one was, leave the wake-up to it (it wakes the producer as it moves, and before it sleeps;
       a producer sleeps at most 1 ms at a time, so a reader that died costs that and its reclaim). With ten
       readers, each waking the producer's thread for room it did not make cost more than the reading. */
    struct pipes_ring_header *h = r->m.h;
    for (uint32_t i = 0; i < h->info.max_readers && i < PIPES_RING_MAX_READERS; i++) {
        struct pipes_ring_reader *s = &h->readers[i];
        if (s == r->slot || pipes_load_acquire32(&s->state) != PIPES_READER_ACTIVE) continue;
        uint64_t t = pipes_load_acquire64(&s->tail);
        if ((int64_t)(r->woke_producer_at - t) > 0) {
            r->woke_producer_at = r->tail;
            return;
        }
    }
    r->woke_producer_at = r->tail;
    pipes_fetch_add32(&r->m.h->consumers.room_seq, 1);
    pipes_futex_wake(&r->m.h->consumers.room_seq, 0x7fffffff);
}

static void release_slot(struct reader *r) {
    if (!r->slot) return;
    publish_counters(r);
    pipes_store_release32(&r->slot->state, PIPES_READER_FREE);
    wake_producer(&r->m);
    r->slot = NULL;
}

/* The next record, or 0 if there is none yet. */
static int ring_peek(struct reader *r, struct pipes_block *b) {
    struct ring_map *m = &r->m;
    for (;;) {
        if (m->drop) {
            uint64_t oldest = pipes_load_acquire64(&m->h->producer.oldest);
            if (r->tail < oldest) r->tail = oldest;
            r->cached_head = pipes_load_acquire64(&m->h->producer.head);
        }
        if (r->tail == r->cached_head) {
            r->cached_head = pipes_load_acquire64(&m->h->producer.head);
            if (r->tail == r->cached_head) return 0;
        }
        const struct pipes_rec *rec = (const struct pipes_rec *)(m->data + (r->tail & m->mask));
        uint32_t len = rec->length;
        if (len == PIPES_REC_PAD) {
            r->tail += pipes_rec_pad_skip(rec, m->mask, r->tail);
            continue;
        }
        b->data = (const char *)rec + sizeof(struct pipes_rec);
        b->length = len;
        b->class_value = rec->class_value;
        b->sequence = rec->sequence;
        b->wire_length = rec->wire_length;
        b->link_type = rec->link_type;
        b->flags = rec->flags;
        b->timestamp_ns = rec->timestamp_ns;
        if (m->drop) {
            /* the header may have been overwritten while we read it: validate, else resync and retry */
            pipes_fence_seq_cst();
            if (r->tail < pipes_load_acquire64(&m->h->producer.oldest)) continue;
            if (len > m->capacity / 2) continue;
            if (b->sequence > r->next_seq) r->dropped += b->sequence - r->next_seq;
            r->next_seq = b->sequence;
        }
        r->peeked = 1;
        r->peek_pos = r->tail;
        r->peek_span = pipes_rec_span(len);
        r->peek_seq = b->sequence;
        r->peek_len = len;
        return 1;
    }
}

static int ring_valid(struct reader *r) {
    if (!r->m.drop || !r->peeked) return 1;
    pipes_fence_seq_cst();
    return r->peek_pos >= pipes_load_acquire64(&r->m.h->producer.oldest);
}

static void ring_consume(struct reader *r) {
    if (!r->peeked) return;
    r->peeked = 0;
    r->part = 0;
    r->tail = r->peek_pos + r->peek_span;
    r->next_seq = r->peek_seq + 1;
    r->delivered++;
    if ((r->delivered & 63) == 0) publish_counters(r);
    pipes_store_release64(&r->slot->tail, r->tail);
    if (!r->m.drop) wake_producer_moderated(r);
}

/* A record torn by the producer (lossy rings): counted as dropped, skipped. */
static void ring_discard_torn(struct reader *r) {
    r->peeked = 0;
    r->part = 0;
    r->dropped++;
    r->next_seq = r->peek_seq + 1;
}

/* 0 open, PIPES_RING_CLOSED_* once the producer closed and this reader read everything. */
static uint32_t ring_end(struct reader *r) {
    uint32_t closed = pipes_load_acquire32(&r->m.h->producer.closed);
    if (!closed) return 0;
    return pipes_load_acquire64(&r->m.h->producer.head) == r->tail ? closed : 0;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Sleeps until the head may have moved or the ring closed, at most timeout_ns (moderation: the ring's
   timeout bounds how late an unsignalled record is seen). */
static void ring_wait(struct reader *r, uint64_t timeout_ns) {
    struct pipes_ring_header *h = r->m.h;
    /* Spin first only while spinning pays: a wait that spinning ended doubles the budget, one that had to
       sleep anyway halves it. With more readers than cores (fan-out), or a producer slower than its readers,
       spinning only burns the CPU the producer needs, and the budget falls to nothing. */
    for (int i = 0; i < r->spin; i++) {
        if (pipes_load_acquire64(&h->producer.head) != r->tail || pipes_load_acquire32(&h->producer.closed)
            || pipes_load_acquire32(&h->producer.moved)) {
            r->spin = r->spin * 2 + 16 > SPINS ? SPINS : r->spin * 2 + 16;
            return;
        }
        pipes_cpu_relax();
    }
    r->spin /= 2;
    /* About to sleep, caught up: a producer waiting for room must not miss that this reader made it (consume
       checks its flag without a fence, which can miss it; here, once per sleep, with one). */
    if (!r->m.drop) {
        pipes_fence_seq_cst();
        /* Not again for a tail this reader already woke it for: a producer that sleeps after that wake-up
           set its flag first and so read this tail (or a later one). With several readers asleep between
           batches, each re-waking the producer's waiting thread at every sleep cost a context switch. */
        if (r->woke_producer_at != r->tail && pipes_load_acquire32(&h->producer.waiting_for_room)) {
            r->woke_producer_at = r->tail;
            pipes_fetch_add32(&h->consumers.room_seq, 1);
            pipes_futex_wake(&h->consumers.room_seq, 0x7fffffff);
        }
    }
    uint32_t seen = pipes_load_acquire32(&h->producer.wake_seq);
    pipes_fetch_add32(&h->consumers.sleepers, 1);
    pipes_fence_seq_cst();
    if (pipes_load_acquire64(&h->producer.head) == r->tail && !pipes_load_acquire32(&h->producer.closed)
        && !pipes_load_acquire32(&h->producer.moved)) {
        uint64_t t = timeout_ns < r->m.timeout_ns ? timeout_ns : r->m.timeout_ns;
        pipes_futex_wait(&h->producer.wake_seq, seen, t ? t : 1);
    }
    pipes_fetch_add32(&h->consumers.sleepers, (uint32_t)-1);
}

/* ---------------------------------------------------------------------------------------------------------
 * Taps.
 */

struct pipes_tap {
    int mapped;
    struct reader r;
    /* where to ask again for the ring (it is replaced when the stream's policy changes) */
    struct sockaddr_un addr;
    socklen_t addr_len;
    unsigned long long node;
    /* The connection the ring came over, kept open as the lease: the daemon's end closes when the daemon
       goes away, however it goes (a ring's `closed` word is never set by a daemon killed with SIGKILL). */
    int sock;
    /* fallback: the file, and one read(2)'s worth as the current block */
    int fd;
    char *buffer;
    size_t buffered, offset;
    int fallback_peeked;
    uint64_t fallback_blocks;
    /* lossy rings: a block that does not fit a read whole is copied out and validated first (the producer
       may overwrite the rest of it before the next read); its remainder is served from here */
    char *carry;
    size_t carry_len, carry_off, carry_cap;
};

/* Asks the daemon for the node's ring; returns the memfd or -1 (errno). The connection becomes t->sock. The
   daemon claims a reader slot for us at the stream's head before it answers (`ok SLOT SEQUENCE`): nothing
   published after that is lost while we map the ring. *slot is -1 if the answer names none. */
static int request_ring(struct pipes_tap *t, long *slot, unsigned long long *sequence) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    if (connect(s, (struct sockaddr *)&t->addr, t->addr_len) != 0) goto fail;
    char req[64];
    struct timeval tv = {5, 0};  /* a daemon that does not answer in 5 s is not going to */
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int n = snprintf(req, sizeof req, "attach %llu\n", t->node);
    if (send(s, req, (size_t)n, MSG_NOSIGNAL) != n) goto fail;
    char reply[256];
    char control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {reply, sizeof reply - 1};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t got = recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
    if (got <= 0) { if (got == 0) errno = ECONNRESET; goto fail; }
    reply[got] = 0;
    int fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(c), sizeof fd);
    }
    if (strncmp(reply, "ok", 2) == 0 && fd >= 0) {
        *slot = -1;
        long sl;
        unsigned long long sq;
        if (sscanf(reply, "ok %ld %llu", &sl, &sq) == 2 && sl >= 0) { *slot = sl; *sequence = sq; }
        struct timeval none = {0, 0};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
        if (t->sock >= 0) close(t->sock);
        t->sock = s;
        return fd;
    }
    close(s);
    if (fd >= 0) close(fd);
    int e = 0;
    if (sscanf(reply, "error %d", &e) != 1 || e <= 0) e = EPROTO;
    errno = e;
    return -1;
fail:;
    int e2 = errno;
    close(s);
    errno = e2;
    return -1;
}

/* Takes over the slot the daemon claimed for this process: its tail is where our stream starts. */
static int adopt_slot(struct reader *r, long slot, unsigned long long sequence) {
    struct pipes_ring_header *h = r->m.h;
    if (slot < 0 || (uint32_t)slot >= h->info.max_readers
        || pipes_load_acquire32(&h->readers[slot].state) != PIPES_READER_ACTIVE) return -1;
    struct pipes_ring_reader *s = &h->readers[slot];
    r->slot = s;
    r->tail = pipes_load_acquire64(&s->tail);
    r->cached_head = r->tail;
    r->next_seq = sequence;
    r->delivered = r->dropped = 0;
    r->spin = SPINS;
    r->peeked = 0;
    r->part = 0;
    pipes_store_release32(&s->pid, (uint32_t)getpid());
    return 0;
}

/* Asks the daemon for the node's ring and maps it (data read-only). *slot and *sequence: the reader slot the
   daemon claimed for us, or -1. */
static int fetch_ring(struct pipes_tap *t, struct ring_map *m, long *slot, unsigned long long *sequence) {
    *slot = -1;
    *sequence = 0;
    int fd = request_ring(t, slot, sequence);
    if (fd < 0) return -1;
    int rc = map_ring(fd, m, 0);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

static int attach_mapped(struct pipes_tap *t) {
    long slot;
    unsigned long long sequence;
    struct reader r = {0};
    if (fetch_ring(t, &r.m, &slot, &sequence) != 0) return -1;
    if (adopt_slot(&r, slot, sequence) != 0 && claim_slot(&r) != 0) {
        unmap_ring(&r.m);
        errno = EMFILE;
        return -1;
    }
    t->r = r;
    return 0;
}

static int parse_ring_xattr(struct pipes_tap *t, const char *path) {
    char v[256];
    ssize_t n = getxattr(path, PIPES_RING_XATTR, v, sizeof v - 1);
    if (n <= 0) return -1;
    v[n] = 0;
    char name[108];
    if (sscanf(v, "%107s %llu", name, &t->node) != 2 || name[0] != '@') { errno = EPROTO; return -1; }
    memset(&t->addr, 0, sizeof t->addr);
    t->addr.sun_family = AF_UNIX;
    size_t len = strlen(name + 1);
    if (len + 1 > sizeof t->addr.sun_path) { errno = ENAMETOOLONG; return -1; }
    memcpy(t->addr.sun_path + 1, name + 1, len);  /* abstract: a leading NUL */
    t->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
    return 0;
}

/* True once the daemon that gave us the ring is gone (its end of the lease closed). */
static int daemon_gone(struct pipes_tap *t) {
    if (t->sock < 0) return 0;
    struct pollfd p = {t->sock, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return 0;
    char c;
    ssize_t n = recv(t->sock, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

pipes_tap *pipes_tap_open(const char *path, unsigned flags) {
    struct pipes_tap *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->fd = -1;
    t->sock = -1;
    if (!(flags & PIPES_TAP_NO_MAP) && parse_ring_xattr(t, path) == 0) {
        if (attach_mapped(t) == 0) {
            t->mapped = 1;
            return t;
        }
        /* A refusal by the daemon is the answer (the filesystem would refuse the same); anything else
           (no daemon support, no mapping) falls back to the filesystem. */
        int e0 = errno;
        if (t->sock >= 0) { close(t->sock); t->sock = -1; }
        errno = e0;
        /* EACCES: the daemon maps rings only for its own user and root; the filesystem decides for others. */
        if (errno == ENOENT || errno == EMFILE) {
            int e = errno;
            free(t);
            errno = e;
            return NULL;
        }
    }
    t->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (t->fd < 0) {
        int e = errno;
        free(t);
        errno = e;
        return NULL;
    }
    t->buffer = malloc(FALLBACK_BUFFER);
    if (!t->buffer) {
        close(t->fd);
        free(t);
        errno = ENOMEM;
        return NULL;
    }
    return t;
}

int pipes_tap_is_mapped(const pipes_tap *t) { return t->mapped; }

/* The ring was reallocated (self-scaling, pipes_ring.h): the old region's head is final and the stream goes on
   in a new region at the same byte indices, where the producer copied this reader's slot. Ask the daemon for
   the new region and continue on the same slot with the same tail (or attach anew if the slot is free there:
   this reader claimed it after the copy). */
static int follow_move(struct pipes_tap *t) {
    struct reader old = t->r;
    uint32_t index = (uint32_t)(old.slot - old.m.h->readers);
    long claimed;
    unsigned long long sequence;
    struct reader r = old;
    if (fetch_ring(t, &r.m, &claimed, &sequence) != 0) return -1;
    if (index < r.m.h->info.max_readers
        && pipes_load_acquire32(&r.m.h->readers[index].state) == PIPES_READER_ACTIVE) {
        r.slot = &r.m.h->readers[index];
        pipes_store_release32(&r.slot->pid, (uint32_t)getpid());
        pipes_store_release64(&r.slot->tail, r.tail);
        r.cached_head = r.tail;
        /* the daemon also claimed a slot for this request: ours was copied, give that one back */
        if (claimed >= 0 && (uint32_t)claimed != index && (uint32_t)claimed < r.m.h->info.max_readers)
            pipes_store_release32(&r.m.h->readers[claimed].state, PIPES_READER_FREE);
    } else if (adopt_slot(&r, claimed, sequence) == 0) {
        r.delivered = old.delivered;
        r.dropped = old.dropped;
    } else if (claim_slot(&r) != 0) {
        unmap_ring(&r.m);
        errno = EMFILE;
        return -1;
    } else {
        r.delivered = old.delivered;
        r.dropped = old.dropped;
    }
    unmap_ring(&old.m);   /* its slot there is the producer's to forget: the ring went on elsewhere */
    t->r = r;
    return 0;
}

/* The stream moved to a new ring (policy change): read to the end of the old one, then continue in the new
   one on the slot the daemon kept there for this reader (same index, at the new ring's start), so nothing
   written in between is lost; attach anew only if there is none. */
static int reattach(struct pipes_tap *t) {
    struct reader old = t->r;
    uint64_t delivered = old.delivered, dropped = old.dropped;
    uint32_t index = (uint32_t)(old.slot - old.m.h->readers);
    long claimed;
    unsigned long long sequence;
    struct reader r = {0};
    if (fetch_ring(t, &r.m, &claimed, &sequence) != 0) return -1;
    struct pipes_ring_header *h = r.m.h;
    if (index < h->info.max_readers && (long)index != claimed
        && pipes_load_acquire32(&h->readers[index].state) == PIPES_READER_ACTIVE
        && pipes_load_acquire32(&h->readers[index].pid) == (uint32_t)getpid()
        && adopt_slot(&r, (long)index, 0) == 0) {
        if (claimed >= 0 && (uint32_t)claimed < h->info.max_readers)
            pipes_store_release32(&h->readers[claimed].state, PIPES_READER_FREE);
    } else if (adopt_slot(&r, claimed, sequence) != 0 && claim_slot(&r) != 0) {
        unmap_ring(&r.m);
        errno = EMFILE;
        return -1;
    }
    release_slot(&old);
    unmap_ring(&old.m);
    t->r = r;
    t->r.delivered = delivered;
    t->r.dropped = dropped;
    return 0;
}

static int fallback_peek(struct pipes_tap *t, struct pipes_block *b, int timeout_ms) {
    if (t->offset >= t->buffered) {
        if (timeout_ms >= 0) {
            struct pollfd p = {t->fd, POLLIN, 0};
            int pr = poll(&p, 1, timeout_ms);
            if (pr < 0) return -1;
            if (pr == 0) { errno = EAGAIN; return -1; }
        }
        ssize_t n = read(t->fd, t->buffer, FALLBACK_BUFFER);
        if (n < 0) return -1;
        if (n == 0) return 0;
        t->buffered = (size_t)n;
        t->offset = 0;
        t->fallback_blocks++;
    }
    memset(b, 0, sizeof *b);
    b->data = t->buffer + t->offset;
    b->length = (uint32_t)(t->buffered - t->offset);
    b->wire_length = b->length;
    b->sequence = t->fallback_blocks - 1;
    b->class_value = 1;
    t->fallback_peeked = 1;
    return 1;
}

int pipes_tap_peek(pipes_tap *t, struct pipes_block *b, int timeout_ms) {
    if (!t->mapped) return fallback_peek(t, b, timeout_ms);
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : now_ns() + (uint64_t)timeout_ms * 1000000u;
    int idle = 0;   /* the last wait brought nothing: time to ask whether the daemon is still there */
    for (;;) {
        if (ring_peek(&t->r, b)) return 1;
        if (pipes_load_acquire32(&t->r.m.h->producer.moved)) {
            if (ring_peek(&t->r, b)) return 1;   /* the old region's head is final: read it out first */
            if (follow_move(t) != 0) return -1;
            continue;
        }
        uint32_t end = ring_end(&t->r);
        if (end == PIPES_RING_CLOSED_REPLACED) {
            if (reattach(t) != 0) return -1;
            continue;
        }
        if (end) return 0;
        /* Killed or crashed: the ring will never move or close. A system call (poll), so only once a wait
           brought nothing, not before every wait (a reader that waits between every batch made one each time). */
        if (idle && daemon_gone(t)) {
            errno = ECONNRESET;
            return -1;
        }
        uint64_t now = now_ns();
        if (now >= deadline) { errno = EAGAIN; return -1; }
        ring_wait(&t->r, deadline == UINT64_MAX ? 1000000000u : deadline - now);
        idle = pipes_load_acquire64(&t->r.m.h->producer.head) == t->r.tail;
    }
}

int pipes_tap_valid(pipes_tap *t) { return t->mapped ? ring_valid(&t->r) : 1; }

void pipes_tap_consume(pipes_tap *t) {
    if (!t->mapped) {
        if (t->fallback_peeked) t->offset = t->buffered;
        t->fallback_peeked = 0;
        return;
    }
    if (!ring_valid(&t->r)) { ring_discard_torn(&t->r); return; }
    ring_consume(&t->r);
}

ssize_t pipes_tap_read(pipes_tap *t, void *buf, size_t n) {
    if (n == 0) return 0;
    if (!t->mapped) {
        if (t->offset < t->buffered) {
            size_t k = t->buffered - t->offset < n ? t->buffered - t->offset : n;
            memcpy(buf, t->buffer + t->offset, k);
            t->offset += k;
            return (ssize_t)k;
        }
        return read(t->fd, buf, n);
    }
    size_t got = 0;
    if (t->carry_off < t->carry_len) {
        size_t k = t->carry_len - t->carry_off < n ? t->carry_len - t->carry_off : n;
        memcpy(buf, t->carry + t->carry_off, k);
        t->carry_off += k;
        got = k;
    }
    struct pipes_block b;
    while (got < n) {
        int rc = pipes_tap_peek(t, &b, got ? 0 : -1);
        if (rc == 0) break;                    /* end of stream */
        if (rc < 0) {
            if (errno == EAGAIN && got) break; /* return what we have */
            if (got) break;
            return -1;
        }
        uint32_t part = t->r.part;
        if (t->r.m.drop && part == 0 && b.length > n - got) {
            if (t->carry_cap < b.length) {
                char *c = realloc(t->carry, b.length);
                if (!c) { if (got) break; errno = ENOMEM; return -1; }
                t->carry = c;
                t->carry_cap = b.length;
            }
            memcpy(t->carry, b.data, b.length);
            if (!ring_valid(&t->r)) { ring_discard_torn(&t->r); continue; }
            ring_consume(&t->r);
            size_t k = n - got;
            memcpy((char *)buf + got, t->carry, k);
            t->carry_len = b.length;
            t->carry_off = k;
            got += k;
            break;
        }
        size_t k = b.length - part < n - got ? b.length - part : n - got;
        memcpy((char *)buf + got, (const char *)b.data + part, k);
        if (!ring_valid(&t->r)) {              /* torn: this record is lost; drop what we copied of it */
            ring_discard_torn(&t->r);
            continue;
        }
        got += k;
        if (part + k == b.length) {
            ring_consume(&t->r);
        } else {
            t->r.part = part + (uint32_t)k;
        }
    }
    return (ssize_t)got;
}

uint64_t pipes_tap_delivered(const pipes_tap *t) { return t->mapped ? t->r.delivered : t->fallback_blocks; }
uint64_t pipes_tap_dropped(const pipes_tap *t) { return t->mapped ? t->r.dropped : 0; }

void pipes_tap_close(pipes_tap *t) {
    if (!t) return;
    if (t->mapped) {
        release_slot(&t->r);
        unmap_ring(&t->r.m);
    }
    if (t->fd >= 0) close(t->fd);
    if (t->sock >= 0) close(t->sock);
    free(t->buffer);
    free(t->carry);
    free(t);
}

/* ---------------------------------------------------------------------------------------------------------
 * Multiway pipes (§5.1): one writer, n-1 readers, lossless.
 */

struct mpipe_end {
    int fd;
    int writer;
    uint32_t slot;
    struct pipes_ring_header *h;   /* the whole region, read-write */
    char *data;
    size_t size;
    uint64_t capacity, mask;
    /* writer */
    uint64_t head, records, min_tail;
    uint32_t creator;
    /* reader */
    struct reader r;
    struct mpipe_end *next;
};

static pthread_mutex_t mpipe_lock = PTHREAD_MUTEX_INITIALIZER;

/* The process that wrote last (a reserved producer word; mpipe rings only): closing the write end ends the
   stream only in that process (or, before any write, in the creator), so a forked child that closes its copy
   of the write end does not end the parent's stream. */
static uint32_t *last_writer(struct pipes_ring_header *h) { return (uint32_t *)&h->producer.reserved0[0]; }
static struct mpipe_end *mpipe_ends;

static struct mpipe_end *mpipe_find(int fd) {
    pthread_mutex_lock(&mpipe_lock);
    struct mpipe_end *e = mpipe_ends;
    while (e && e->fd != fd) e = e->next;
    pthread_mutex_unlock(&mpipe_lock);
    return e;
}

int pipes_mpipe(int fds[], int n, size_t ring_bytes) {
    if (!fds || n < 2 || n - 1 > (int)PIPES_RING_MAX_READERS) { errno = EINVAL; return -1; }
    if (ring_bytes == 0) ring_bytes = 1u << 20;
    uint32_t log2 = 12;
    while (((size_t)1 << log2) < ring_bytes && log2 < 34) log2++;
    size_t size = PIPES_RING_HEADER_SIZE + ((size_t)1 << log2);
    int fd = pipes_ring_memfd("pipes-mpipe", size);
    if (fd < 0) { errno = -fd; return -1; }
    char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) { int e = errno; close(fd); errno = e; return -1; }
    struct pipes_ring_header *h = (struct pipes_ring_header *)base;
    h->info.version = PIPES_RING_VERSION;
    h->info.header_size = PIPES_RING_HEADER_SIZE;
    h->info.size_log2 = log2;
    h->info.policy = PIPES_RING_BLOCK;
    h->info.max_readers = (uint32_t)(n - 1);
    h->info.threshold = 1;
    h->info.timeout_ns = 1000000;
    h->producer.size_log2 = log2;
    for (int i = 0; i < n - 1; i++) {
        h->readers[i].state = PIPES_READER_ACTIVE;   /* held from the start: nothing written is lost */
        h->readers[i].pid = (uint32_t)getpid();
    }
    pipes_store_release64(&h->info.magic, PIPES_RING_MAGIC);
    struct mpipe_end *ends[PIPES_RING_MAX_READERS + 1];
    int made = 0;
    for (int i = 0; i < n; i++) {
        int efd = i == 0 ? fd : fcntl(fd, F_DUPFD_CLOEXEC, 0);
        struct mpipe_end *e = calloc(1, sizeof *e);
        if (efd < 0 || !e) {
            free(e);
            if (efd >= 0 && efd != fd) close(efd);
            for (int k = 0; k < made; k++) { if (ends[k]->fd != fd) close(ends[k]->fd); free(ends[k]); }
            munmap(base, size);
            close(fd);
            errno = ENOMEM;
            return -1;
        }
        e->fd = efd;
        e->writer = i == 0;
        e->creator = (uint32_t)getpid();
        e->slot = i == 0 ? 0 : (uint32_t)(i - 1);
        e->h = h;
        e->data = base + PIPES_RING_HEADER_SIZE;
        e->size = size;
        e->capacity = (uint64_t)1 << log2;
        e->mask = e->capacity - 1;
        if (!e->writer) {
            e->r.m.h = h;
            e->r.m.data = e->data;
            e->r.m.capacity = e->capacity;
            e->r.m.mask = e->mask;
            e->r.m.timeout_ns = 1000000;
            e->r.spin = SPINS;
            e->r.slot = &h->readers[e->slot];
        }
        ends[made++] = e;
        fds[i] = efd;
    }
    pthread_mutex_lock(&mpipe_lock);
    for (int i = 0; i < made; i++) { ends[i]->next = mpipe_ends; mpipe_ends = ends[i]; }
    pthread_mutex_unlock(&mpipe_lock);
    return 0;
}

/* True if process `pid` has exited (gone, or a zombie its parent has not reaped yet — typically the writer
   itself, busy writing). */
static int process_gone(uint32_t pid) {
    if (kill((pid_t)pid, 0) != 0) return errno == ESRCH;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *paren = strrchr(buf, ')');
    return paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

static uint64_t mpipe_min_tail(struct mpipe_end *w, int *active) {
    uint64_t m = w->head;
    *active = 0;
    for (uint32_t i = 0; i < w->h->info.max_readers; i++) {
        struct pipes_ring_reader *s = &w->h->readers[i];
        if (pipes_load_acquire32(&s->state) != PIPES_READER_ACTIVE) continue;
        uint32_t pid = pipes_load_acquire32(&s->pid);
        if (pid && process_gone(pid)) {  /* a reader process died: free its slot */
            pipes_cas32(&s->state, PIPES_READER_ACTIVE, PIPES_READER_FREE);
            continue;
        }
        (*active)++;
        uint64_t t = pipes_load_acquire64(&s->tail);
        if (w->head - t > w->head - m) m = t;
    }
    return m;
}

ssize_t pipes_mpipe_write(int fd, const void *buf, size_t n) {
    struct mpipe_end *w = mpipe_find(fd);
    if (!w || !w->writer) { errno = EBADF; return -1; }
    if (n > w->capacity / 2 - sizeof(struct pipes_rec) - PIPES_REC_ALIGN) { errno = EMSGSIZE; return -1; }
    uint64_t span = pipes_rec_span((uint32_t)n);
    uint64_t offset = w->head & w->mask;
    uint64_t pad = offset + span > w->capacity ? w->capacity - offset : 0;
    uint64_t need = pad + span;
    struct pipes_ring_header *h = w->h;
    uint32_t me = (uint32_t)getpid();
    if (pipes_load_acquire32(last_writer(h)) != me) {
        /* another process wrote since (after fork): continue from the published indices */
        pipes_store_release32(last_writer(h), me);
        w->head = pipes_load_acquire64(&h->producer.head);
        w->records = pipes_load_acquire64(&h->producer.records);
        w->min_tail = w->head - w->capacity;
    }
    while (w->head + need - w->min_tail > w->capacity) {
        int active;
        w->min_tail = mpipe_min_tail(w, &active);
        if (active == 0) { errno = EPIPE; return -1; }
        if (w->head + need - w->min_tail <= w->capacity) break;
        int room = 0;
        for (int i = 0; i < SPINS && !room; i++) {
            pipes_cpu_relax();
            uint64_t t = mpipe_min_tail(w, &active);
            room = w->head + need - t <= w->capacity;
        }
        if (room) continue;
        uint32_t seen = pipes_load_acquire32(&h->consumers.room_seq);
        pipes_store_release32(&h->producer.waiting_for_room, 1);
        pipes_fence_seq_cst();
        w->min_tail = mpipe_min_tail(w, &active);
        if (w->head + need - w->min_tail > w->capacity) pipes_futex_wait(&h->consumers.room_seq, seen, 1000000);
        pipes_store_release32(&h->producer.waiting_for_room, 0);
    }
    if (pad) {
        pipes_rec_set_pad((struct pipes_rec *)(w->data + (w->head & w->mask)), pad);
        w->head += pad;
    }
    struct pipes_rec *rec = (struct pipes_rec *)(w->data + (w->head & w->mask));
    memcpy((char *)rec + sizeof *rec, buf, n);
    rec->length = (uint32_t)n;
    rec->class_value = 1;
    rec->sequence = w->records;
    rec->wire_length = (uint32_t)n;
    rec->link_type = 0;
    rec->flags = 0;
    rec->timestamp_ns = 0;
    w->head += span;
    w->records++;
    pipes_store_relaxed64(&h->producer.records, w->records);
    pipes_store_release64(&h->producer.head, w->head);
    pipes_fence_seq_cst();
    if (pipes_load_acquire32(&h->consumers.sleepers)) {
        pipes_fetch_add32(&h->producer.wake_seq, 1);
        pipes_futex_wake(&h->producer.wake_seq, 0x7fffffff);
    }
    return (ssize_t)n;
}

ssize_t pipes_mpipe_read(int fd, void *buf, size_t n) {
    struct mpipe_end *e = mpipe_find(fd);
    if (!e || e->writer) { errno = EBADF; return -1; }
    if (pipes_load_acquire32(&e->r.slot->state) != PIPES_READER_ACTIVE) { errno = EBADF; return -1; }
    uint32_t me = (uint32_t)getpid();
    if (pipes_load_acquire32(&e->r.slot->pid) != me) pipes_store_release32(&e->r.slot->pid, me);  /* after fork */
    e->r.tail = pipes_load_acquire64(&e->r.slot->tail);
    struct pipes_block b;
    size_t got = 0;
    while (got < n) {
        if (!ring_peek(&e->r, &b)) {
            if (got) break;
            if (ring_end(&e->r)) break;
            /* a writer that died never closes the ring: end of stream, as a pipe whose writers are gone */
            uint32_t w = pipes_load_acquire32(last_writer(e->h));
            if (process_gone(w ? w : e->creator)) {
                if (!ring_peek(&e->r, &b)) break;
                continue;
            }
            ring_wait(&e->r, 1000000000u);
            continue;
        }
        uint32_t part = e->r.part;
        size_t k = b.length - part < n - got ? b.length - part : n - got;
        memcpy((char *)buf + got, (const char *)b.data + part, k);
        got += k;
        if (part + k == b.length) ring_consume(&e->r); else { e->r.part = part + (uint32_t)k; e->r.peeked = 0; }
    }
    return (ssize_t)got;
}

int pipes_mpipe_close(int fd) {
    pthread_mutex_lock(&mpipe_lock);
    struct mpipe_end **p = &mpipe_ends;
    while (*p && (*p)->fd != fd) p = &(*p)->next;
    struct mpipe_end *e = *p;
    if (!e) { pthread_mutex_unlock(&mpipe_lock); errno = EBADF; return -1; }
    *p = e->next;
    int others = 0;
    for (struct mpipe_end *o = mpipe_ends; o; o = o->next) others += o->h == e->h;
    pthread_mutex_unlock(&mpipe_lock);
    struct pipes_ring_header *h = e->h;
    uint32_t lw = e->writer ? pipes_load_acquire32(last_writer(h)) : 0;
    if (e->writer && (lw == (uint32_t)getpid() || (lw == 0 && e->creator == (uint32_t)getpid()))) {
        pipes_store_release32(&h->producer.closed, PIPES_RING_CLOSED_END);
        pipes_fence_seq_cst();
        pipes_fetch_add32(&h->producer.wake_seq, 1);
        pipes_futex_wake(&h->producer.wake_seq, 0x7fffffff);
    } else if (!e->writer && pipes_load_acquire32(&e->r.slot->pid) == (uint32_t)getpid()) {
        release_slot(&e->r);
    }
    if (!others) munmap(h, e->size);
    close(fd);
    free(e);
    return 0;
}
