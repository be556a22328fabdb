/* tapcat: read a PipesFS stream through the client library (libpipes), zero-copy when the ring can be mapped.
 *
 *   tapcat [-n] [-c] [-q] PATH      PATH is a stream file, e.g. /pipes/web/all
 *     -n  do not map: read through the filesystem (the fallback path)
 *     -c  count only: peek at each block without copying it; print "blocks bytes dropped" at the end
 *     -q  say nothing about mapping on stderr
 *
 * Build:  make -C examples   (examples/build/tapcat, linked against examples/build/libpipes.so)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipes_client.h"

int main(int argc, char **argv) {
    unsigned flags = 0;
    int count = 0, quiet = 0, opt;
    while ((opt = getopt(argc, argv, "ncq")) != -1) {
        if (opt == 'n') flags |= PIPES_TAP_NO_MAP;
        else if (opt == 'c') count = 1;
        else if (opt == 'q') quiet = 1;
        else { fprintf(stderr, "usage: tapcat [-n] [-c] [-q] PATH\n"); return 2; }
    }
    if (optind != argc - 1) { fprintf(stderr, "usage: tapcat [-n] [-c] [-q] PATH\n"); return 2; }
    const char *path = argv[optind];
    pipes_tap *t = pipes_tap_open(path, flags);
    if (!t) { fprintf(stderr, "tapcat: %s: %s\n", path, strerror(errno)); return 1; }
    if (!quiet) fprintf(stderr, "tapcat: %s: %s\n", path, pipes_tap_is_mapped(t) ? "mapped" : "through the filesystem");
    int rc = 0;
    if (count) {
        unsigned long long bytes = 0;
        struct pipes_block b;
        int r;
        while ((r = pipes_tap_peek(t, &b, -1)) == 1) {
            bytes += b.length;
            pipes_tap_consume(t);
        }
        if (r < 0) { fprintf(stderr, "tapcat: %s: %s\n", path, strerror(errno)); rc = 1; }
        printf("%llu %llu %llu\n", (unsigned long long)pipes_tap_delivered(t), bytes,
               (unsigned long long)pipes_tap_dropped(t));
    } else {
        static char buf[1 << 20];
        ssize_t n;
        while ((n = pipes_tap_read(t, buf, sizeof buf)) > 0) {
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(1, buf + off, (size_t)(n - off));
                if (w < 0) { if (errno == EINTR) continue; perror("tapcat: write"); pipes_tap_close(t); return 1; }
                off += w;
            }
        }
        if (n < 0) { fprintf(stderr, "tapcat: %s: %s\n", path, strerror(errno)); rc = 1; }
    }
    pipes_tap_close(t);
    return rc;
}
