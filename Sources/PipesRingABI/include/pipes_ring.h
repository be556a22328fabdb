/*
 * pipes_ring.h — the layout of a PipesFS ring in shared memory (Beltway DBuf, paper §5).
 *
 * One header for every side: the Swift runtime (producer), the client library (readers in other processes)
 * and the kernel module. Like io_uring.h, netmap.h and if_packet.h: offsets, never pointers; every field says
 * who writes it; sizes are powers of two and indices free-running 64-bit byte counts that are never reset on
 * wrap; a record is published (head moves past it, with release order) only once it is complete; a version
 * field and reserved space for later.
 *
 * A ring is one memory region (a memfd, mapped by each side):
 *
 *     0                      struct pipes_ring_header          PIPES_RING_HEADER_SIZE bytes
 *     PIPES_RING_HEADER_SIZE data area                          1 << info.size_log2 bytes
 *
 * The header keeps the creator's read-only description, the producer's indices and each reader's indices in
 * separate cache lines (no false sharing, paper §5.2 "Multiprocessing"). Readers map the region read-only
 * except the page(s) holding reader slots.
 *
 * Records. The data area holds records, each a struct pipes_rec followed by `length` payload bytes, padded to
 * PIPES_REC_ALIGN. A record never wraps: when it does not fit before the end of the data area (or before the
 * deck-cut, below), the producer writes a pad record: length PIPES_REC_PAD and, in class_value, how far to skip
 * in PIPES_REC_ALIGN units (pipes_rec_set_pad / pipes_rec_pad_skip). Only the first 8 bytes of a pad are
 * written (a pad may sit 8 bytes before the end of the data area). The skip is explicit, not "to the next lap",
 * because a reallocated ring (below) holds pads written in a region of another size. So a peek always yields
 * one contiguous block. (Version 1 pads carried no skip: they meant "to the next lap of this region"; a reader
 * may treat a skip that is zero or does not end on a 4096-byte boundary that way.)
 *
 * Self-scaling (paper §5.4). A ring changes its size at run time in one of two ways; indices never change
 * meaning, so readers' tails stay valid across both:
 *
 *   Deck-cut. The region is sized for the maximum (1 << info.size_log2; untouched pages take no memory) and
 *   the producer uses only the first 1 << producer.size_log2 bytes of each lap: a record that does not fit
 *   below the cut, or a producer already past a lowered cut, gets a pad to the next lap of the *mapped* size.
 *   The position of byte index i is still i & (mapped size - 1), so readers need no change; the room check
 *   (BLOCK) and `oldest` (DROP) stay index-based and exact. Memory above a lowered cut is given back
 *   (fallocate PUNCH_HOLE) only once every active reader has passed the last record written there.
 *
 *   Reallocation. The producer moves the ring to a new region (a new memfd) of another power-of-two size and
 *   copies the window still needed ([slowest tail, head) for BLOCK, [max(oldest, slowest tail), head) for
 *   DROP) to the same byte indices there, with the reader slots (state, tail, counters, pid). Growing always
 *   works (records never straddle a multiple of the new size); shrinking a BLOCK ring only when that window
 *   fits without straddling; a DROP ring shrinks by moving `oldest` past the records that do not fit.
 *   Then it sets producer.moved in the old region (after head's last store, with release order)
 *   and writes only the new one. A reader of the old region reads on up to its (now final) head; when it
 *   finds nothing more and moved set, it continues in the new region on the same slot index with its tail.
 *   In-process readers follow by themselves. A reader in another process must get the new region from the
 *   daemon (the client library asks again, as for a replaced ring), map it, store its tail and pid in its
 *   slot there (already ACTIVE, copied for it) and go on; if that slot is FREE there (it claimed its slot
 *   in the old region after the copy) it attaches anew. Detaching means freeing the slot in the newest
 *   region. The old region is freed once nobody maps it.
 *
 * Policies. PIPES_RING_BLOCK (IPC): the producer waits until the slowest active reader has room; nothing is
 * lost. PIPES_RING_DROP (packet reception): the producer never waits; it overwrites the oldest records, and
 * a reader that finds its position overwritten skips to `producer.oldest` and counts what it lost from the
 * records' sequence numbers, so for every reader delivered + dropped = produced, exactly.
 *
 * Wake-ups (moderation, paper §6.2). A reader that wants to sleep increments consumers.sleepers, re-checks
 * head, and waits on the futex word producer.wake_seq. When sleepers is non-zero the producer bumps wake_seq
 * and calls FUTEX_WAKE once `threshold` records were published since the last wake-up, or at the end of a
 * batch (a flush), which bounds the latency. A BLOCK producer waiting for room sets
 * producer.waiting_for_room, re-checks, and sleeps on consumers.room_seq, which a reader bumps after moving
 * its tail. That direction is moderated too: a reader need not bump room_seq for every record it consumes
 * while the flag stays set (the Swift reader and the client library bump it once per eighth of the ring in use
 * they consume; the client library not while another reader is further behind), but every reader bumps it, after a full fence, before it sleeps itself.
 * A missed wake-up therefore costs at most the sleeper's bounded wait (the ring's timeout; 1 ms for a producer).
 */
#ifndef PIPES_RING_H
#define PIPES_RING_H

#include <stdint.h>

#define PIPES_RING_MAGIC        0x31474E4952504950ULL /* "PIPRING1" little-endian */
#define PIPES_RING_VERSION      2u  /* 2: pads carry their skip; producer.moved */
#define PIPES_RING_CACHELINE    64u
#define PIPES_RING_HEADER_SIZE  8192u
#define PIPES_RING_MAX_READERS  124u
#define PIPES_REC_ALIGN         8u
#define PIPES_REC_PAD           0xFFFFFFFFu

enum pipes_ring_policy {
    PIPES_RING_BLOCK = 0,
    PIPES_RING_DROP = 1,
};

enum pipes_reader_state {
    PIPES_READER_FREE = 0,
    PIPES_READER_ACTIVE = 1,
};

/* Written once by the creator before the region is shared; read-only afterwards. 64 bytes. */
struct pipes_ring_info {
    uint64_t magic;            /* PIPES_RING_MAGIC */
    uint32_t version;          /* PIPES_RING_VERSION */
    uint32_t header_size;      /* PIPES_RING_HEADER_SIZE: offset of the data area */
    uint32_t size_log2;        /* data area size (maximum; deck-cut may use less, see producer.size_log2) */
    uint32_t policy;           /* enum pipes_ring_policy */
    uint32_t max_readers;      /* reader slots in use by this layout (<= PIPES_RING_MAX_READERS) */
    uint32_t threshold;        /* moderation: records per wake-up (default 32) */
    uint64_t timeout_ns;       /* moderation: longest a published record waits for its wake-up */
    uint64_t ring_id;          /* system-wide DBuf id, as rich pointers name it */
    uint64_t reserved[2];
};

/* Written by the producer only. 128 bytes (two cache lines: indices, then wake-up words). */
struct pipes_ring_producer {
    uint64_t head;             /* byte index just past the last published record (store-release) */
    uint64_t records;          /* records published (the next record's sequence number) */
    uint64_t oldest;           /* DROP: byte index of the oldest record not overwritten */
    uint32_t size_log2;        /* deck-cut: records are written only below 1 << size_log2 (<= info.size_log2) */
    uint32_t closed;           /* 1: end of stream after head */
    uint32_t moved;            /* 1: reallocated; this region's head is final, the ring goes on in a new region */
    uint32_t reserved1;
    uint64_t reserved0[3];
    uint32_t wake_seq;         /* futex word readers sleep on */
    uint32_t waiting_for_room; /* BLOCK: 1 while the producer sleeps on consumers.room_seq */
    uint64_t wakeups;          /* wake-ups sent (statistics) */
    uint64_t reserved2[6];
};

/* Slot i is written by reader i only, except `state`, which the attaching side claims with a compare-and-swap
   and the producer may reclaim from a reader process that died. 64 bytes. */
struct pipes_ring_reader {
    uint32_t state;            /* enum pipes_reader_state */
    uint32_t reserved1;
    uint64_t tail;             /* byte index of the next record to read (store-release) */
    uint64_t records;          /* records delivered */
    uint64_t dropped;          /* DROP: records overwritten before this reader got them */
    uint32_t pid;              /* the reader's process (to reclaim the slot if it dies) */
    uint32_t reserved0;
    uint64_t reserved[3];
};

/* Written by readers, with atomic read-modify-write. 64 bytes. */
struct pipes_ring_consumers {
    uint32_t sleepers;         /* readers asleep on producer.wake_seq (the producer wakes only if non-zero) */
    uint32_t room_seq;         /* futex word a BLOCK producer sleeps on; bumped by a reader that made room */
    uint64_t reserved[7];
};

struct pipes_ring_header {
    struct pipes_ring_info info;                                  /* offset 0 */
    struct pipes_ring_producer producer;                          /* offset 64 */
    struct pipes_ring_consumers consumers;                        /* offset 192 */
    struct pipes_ring_reader readers[PIPES_RING_MAX_READERS];     /* offset 256 up to the end of the header */
};

/* A record header in the data area. 32 bytes; payload follows. */
struct pipes_rec {
    uint32_t length;           /* payload bytes, or PIPES_REC_PAD */
    uint32_t class_value;      /* the class the producing filter gave the block (paper §6.1); a pad: its skip / 8 */
    uint64_t sequence;         /* producer.records when it was published */
    uint32_t wire_length;      /* packets: length on the wire (>= length) */
    uint16_t link_type;        /* LINKTYPE_* of the payload */
    uint16_t flags;
    int64_t timestamp_ns;      /* capture time (ns since the Unix epoch), 0 when the block has none */
};

/* A rich pointer (paper §5.3.1): an IBuf element. 32 bytes. */
struct pipes_index {
    uint64_t ring_id;          /* the DBuf */
    uint64_t position;         /* byte index of the record in that DBuf (its lap tells whether it is still there) */
    uint32_t offset;           /* region within the record's payload */
    uint32_t length;
    uint32_t class_value;
    uint32_t flow_tag;         /* connection handling (paper §4.2) */
};

/* Atomic access, the same on every side (GCC/Clang builtins; the kernel module uses smp_load_acquire etc.). */
static inline uint64_t pipes_load_acquire64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pipes_store_release64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint64_t pipes_load_relaxed64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void pipes_store_relaxed64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint32_t pipes_load_acquire32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void pipes_store_release32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t pipes_fetch_add32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
static inline int pipes_cas32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline void pipes_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/* Cache hints, no semantics: a producer asks for lines it will write soon (only within room it knows is free,
   never lines a reader may still be reading), a reader for lines of records already published. */
static inline void pipes_prefetch_write(const void *p) { __builtin_prefetch(p, 1, 3); }
static inline void pipes_prefetch_read(const void *p) { __builtin_prefetch(p, 0, 3); }

/* The record at byte index `position` of a ring whose data area is `data` with mask `mask`. */
static inline struct pipes_rec *pipes_rec_at(void *data, uint64_t mask, uint64_t position) {
    return (struct pipes_rec *)((char *)data + (position & mask));
}

/* Makes the record at `r` a pad that sends readers `skip` bytes on (a multiple of PIPES_REC_ALIGN). Writes only
   the record's first 8 bytes. */
static inline void pipes_rec_set_pad(struct pipes_rec *r, uint64_t skip) {
    r->class_value = (uint32_t)(skip / PIPES_REC_ALIGN);
    r->length = PIPES_REC_PAD;
}

/* How far the pad at byte index `position` of a ring with mask `mask` sends a reader. A version 1 pad (no skip,
   or one that does not end on a 4096-byte boundary, where every lap of every ring size ends) means "to the
   next lap of this region". */
static inline uint64_t pipes_rec_pad_skip(const struct pipes_rec *r, uint64_t mask, uint64_t position) {
    uint64_t skip = (uint64_t)r->class_value * PIPES_REC_ALIGN;
    if (skip == 0 || skip > mask + 1 || ((position + skip) & 4095u) != 0) skip = mask + 1 - (position & mask);
    return skip;
}

/* Bytes a record with `length` payload bytes occupies. */
static inline uint64_t pipes_rec_span(uint32_t length) {
    return ((uint64_t)sizeof(struct pipes_rec) + length + (PIPES_REC_ALIGN - 1)) & ~(uint64_t)(PIPES_REC_ALIGN - 1);
}

_Static_assert(sizeof(struct pipes_ring_info) == 64, "info is one cache line");
_Static_assert(sizeof(struct pipes_ring_producer) == 128, "producer is two cache lines");
_Static_assert(sizeof(struct pipes_ring_reader) == 64, "a reader slot is one cache line");
_Static_assert(sizeof(struct pipes_ring_consumers) == 64, "consumers' shared line");
_Static_assert(sizeof(struct pipes_ring_header) <= PIPES_RING_HEADER_SIZE, "header fits its pages");
_Static_assert(sizeof(struct pipes_rec) == 32, "record header");
_Static_assert(sizeof(struct pipes_index) == 32, "rich pointer");

#endif
