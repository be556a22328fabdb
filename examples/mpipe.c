/* mpipe: the paper's multiway pipe (§5.1) with libpipes — one writer, several reader processes, each with its
 * own position in one shared ring; nothing is copied per reader and nothing is lost.
 *
 *   mpipe [READERS [BLOCKS [BLOCK_SIZE]]]     (default 3 readers, 100000 blocks of 512 bytes)
 *
 * The parent writes numbered blocks; each child reads the stream and checks every byte against what the
 * writer wrote (a running checksum); the program exits 0 only if every reader saw every block intact.
 *
 * Build:  make -C examples   (examples/build/mpipe, linked against examples/build/libpipes.so)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pipes_client.h"

static uint64_t mix(uint64_t h, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void fill(unsigned char *b, size_t n, uint64_t i) {
    for (size_t k = 0; k < n; k++) b[k] = (unsigned char)(i * 31 + k * 7);
}

int main(int argc, char **argv) {
    int readers = argc > 1 ? atoi(argv[1]) : 3;
    long blocks = argc > 2 ? atol(argv[2]) : 100000;
    size_t size = argc > 3 ? (size_t)atol(argv[3]) : 512;
    if (readers < 1 || readers > 64 || blocks < 1 || size < 1 || size > 65536) {
        fprintf(stderr, "usage: mpipe [READERS(1-64) [BLOCKS [BLOCK_SIZE(1-65536)]]]\n");
        return 2;
    }
    int fds[65];
    if (pipes_mpipe(fds, readers + 1, 1 << 20) != 0) { perror("pipes_mpipe"); return 1; }
    unsigned char *b = malloc(size);
    uint64_t expect = 0xcbf29ce484222325ull;
    for (long i = 0; i < blocks; i++) { fill(b, size, (uint64_t)i); expect = mix(expect, b, size); }
    pid_t kids[64];
    for (int r = 0; r < readers; r++) {
        pid_t p = fork();
        if (p < 0) { perror("fork"); return 1; }
        if (p == 0) {
            pipes_mpipe_close(fds[0]);
            for (int o = 1; o <= readers; o++) if (o != r + 1) pipes_mpipe_close(fds[o]);
            static unsigned char buf[1 << 16];
            uint64_t h = 0xcbf29ce484222325ull, total = 0;
            ssize_t n;
            while ((n = pipes_mpipe_read(fds[r + 1], buf, sizeof buf)) > 0) { h = mix(h, buf, (size_t)n); total += (uint64_t)n; }
            if (n < 0) { perror("pipes_mpipe_read"); _exit(1); }
            if (total != (uint64_t)blocks * size || h != expect) {
                fprintf(stderr, "reader %d: %llu bytes, checksum %s\n", r, (unsigned long long)total, h == expect ? "ok" : "WRONG");
                _exit(1);
            }
            _exit(0);
        }
        kids[r] = p;
    }
    /* the parent keeps only the write end: its copies of the read ends belong to the children now */
    for (long i = 0; i < blocks; i++) {
        fill(b, size, (uint64_t)i);
        if (pipes_mpipe_write(fds[0], b, size) != (ssize_t)size) { perror("pipes_mpipe_write"); return 1; }
    }
    pipes_mpipe_close(fds[0]);
    int bad = 0;
    for (int r = 0; r < readers; r++) {
        int st;
        waitpid(kids[r], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad++;
    }
    printf("%d readers, %ld blocks of %zu bytes: %s\n", readers, blocks, size, bad ? "FAILED" : "every reader got every byte");
    return bad ? 1 : 0;
}
