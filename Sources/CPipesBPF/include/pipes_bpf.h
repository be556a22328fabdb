/*
 * pipes_bpf.h — classic BPF programs (as pcap_compile makes them) run by a threaded interpreter: the program is
 * decoded once into a compact form (one operation index, the constant, and absolute jump targets per
 * instruction), then each packet dispatches through a table of labels instead of libpcap's switch over the raw
 * opcode. The semantics are libpcap's bpf_filter (1.10) exactly: the same bounds checks (a load past the captured
 * length rejects the packet), division by a zero X rejects it, shifts by X of 32 or more give 0, backward
 * jumps (ip6 protochain) are followed. Programs it does not know are refused by pipes_bpf_decode, and the
 * caller keeps using bpf_filter.
 */
#ifndef PIPES_BPF_H
#define PIPES_BPF_H
#include <stdint.h>

struct pipes_bpf_op {
    uint32_t op;    /* index into the interpreter's label table */
    uint32_t k;
    uint32_t jt;    /* absolute instruction indices */
    uint32_t jf;
};

struct pipes_bpf_prog {
    uint32_t count;
    struct pipes_bpf_op ops[];
};

/* Decodes `n` instructions (`insns`: libpcap's struct bpf_insn array, as pcap_compile leaves it in
 * bpf_program.bf_insns; taken untyped so that this header does not define libpcap's types a second time for
 * Swift). Returns NULL (nothing allocated) if an instruction is unknown, a jump leaves the
 * program, a memory slot is out of range, a constant division is by zero, or the program does not end in a
 * return; free the result with pipes_bpf_free. */
struct pipes_bpf_prog *pipes_bpf_decode(const void *insns, uint32_t n);
void pipes_bpf_free(struct pipes_bpf_prog *prog);

/* Runs `prog` on a packet of `buflen` captured bytes (`wirelen` on the wire): what bpf_filter returns. */
uint32_t pipes_bpf_run(const struct pipes_bpf_prog *prog, const uint8_t *p, uint32_t wirelen, uint32_t buflen);

#endif
