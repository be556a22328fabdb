/*
 * pipes_client.h — the PipesFS client library (libpipes).
 *
 * Read a PipesFS stream with no copy and no FUSE round trip: pipes_tap_open("/pipes/x/all") asks the daemon
 * for the node's ring (a memfd, passed over a Unix socket after a permission check), maps it — the data area
 * read-only, the header so this reader can move its own position — and takes a reader slot. pipes_tap_peek
 * then hands out blocks in place; pipes_tap_read copies them, with the same byte-stream semantics as read(2)
 * of the `all` file. Where mapping is not possible (not a PipesFS file, an older daemon, PIPES_TAP_NO_MAP)
 * the same calls fall back to plain read(2) of the path.
 *
 * Also the paper's multiway pipe (§5.1): pipes_mpipe() makes one ring with one writer and several readers,
 * each with a private position, usable across fork().
 *
 * Errors: functions return -1 (or NULL) and set errno. A handle is used by one thread at a time.
 */
#ifndef PIPES_CLIENT_H
#define PIPES_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The extended attribute of a tap file that tells the client where to ask for its ring. */
#define PIPES_RING_XATTR "user.pipes.ring"

/* pipes_tap_open flags. */
#define PIPES_TAP_NO_MAP 1u   /* never map: use read(2) of the path (for comparison and tests) */

typedef struct pipes_tap pipes_tap;

/* One block of a stream, valid until pipes_tap_consume (on a lossy stream, check pipes_tap_valid after use). */
struct pipes_block {
    const void *data;
    uint32_t length;
    uint32_t class_value;   /* the class the producing filter gave the block */
    uint64_t sequence;      /* the block's number in the stream (gaps are drops) */
    uint32_t wire_length;   /* packets: length on the wire */
    uint16_t link_type;     /* LINKTYPE_* (pcap) */
    uint16_t flags;
    int64_t timestamp_ns;   /* capture time, ns since the epoch (0: none) */
};

/* Opens a tap: `path` is a PipesFS stream file (DIR/all). NULL and errno on failure (EACCES, ENOENT, EMFILE:
   no free reader slot, ...). */
pipes_tap *pipes_tap_open(const char *path, unsigned flags);

/* 1 if the ring is mapped (zero-copy), 0 if this handle reads through the filesystem. */
int pipes_tap_is_mapped(const pipes_tap *t);

/* The next block, in place. Waits at most timeout_ms (-1: no limit, 0: do not wait). Returns 1 with *b set;
   0 at end of stream; -1 with errno EAGAIN when nothing came in time, or another errno. Through the
   filesystem (not mapped), a block is what one read(2) returned (no record boundaries). */
int pipes_tap_peek(pipes_tap *t, struct pipes_block *b, int timeout_ms);

/* 1 while the block pipes_tap_peek returned last has not been overwritten (always 1 on lossless streams):
   check it after using the bytes of a lossy stream; if 0, the block is counted as dropped. */
int pipes_tap_valid(pipes_tap *t);

/* Moves past the block pipes_tap_peek returned last. */
void pipes_tap_consume(pipes_tap *t);

/* Copies up to n bytes of the stream into buf (blocks are concatenated, as read(2) of `all` does; a block
   larger than n continues in the next call). Waits for at least one byte. Returns the count, 0 at end of
   stream, -1 and errno. */
ssize_t pipes_tap_read(pipes_tap *t, void *buf, size_t n);

/* Blocks delivered and, on lossy streams, blocks overwritten before this reader got them. */
uint64_t pipes_tap_delivered(const pipes_tap *t);
uint64_t pipes_tap_dropped(const pipes_tap *t);

/* Gives the reader slot back and unmaps. */
void pipes_tap_close(pipes_tap *t);

/* Multiway pipe (§5.1): fds[0] is the write end, fds[1] .. fds[n-1] are read ends, each with its own
   position; nothing is lost (the writer waits for the slowest reader). ring_bytes: data area size (rounded
   up to a power of two, 0: 1 MiB). Returns 0, or -1 and errno. The ends survive fork(). */
int pipes_mpipe(int fds[], int n, size_t ring_bytes);

/* Writes one block (at most half the ring). Returns n, or -1 and errno (EPIPE: no reader left). */
ssize_t pipes_mpipe_write(int fd, const void *buf, size_t n);

/* Reads like read(2) of a pipe: waits for data, returns 0 once the writer closed and everything was read. */
ssize_t pipes_mpipe_read(int fd, void *buf, size_t n);

/* Closes an end: a read end stops holding the writer back; the write end ends the stream. */
int pipes_mpipe_close(int fd);

#ifdef __cplusplus
}
#endif

#endif
