/*
 * bpf.c — the threaded classic-BPF interpreter (see pipes_bpf.h). Each decoded instruction names its operation
 * by index; pipes_bpf_run jumps through a table of label addresses (GCC/Clang "labels as values"), with jump
 * targets already absolute, so an instruction costs one indirect jump and its work. Compared against libpcap's
 * bpf_filter packet by packet in the tests (BPFEngineTests).
 */
#define _DEFAULT_SOURCE
#include <sys/types.h> /* u_int and u_char, which pcap/bpf.h expects */
#include "pipes_bpf.h"
#include <pcap/bpf.h>
#include <stdlib.h>
#include <string.h>

enum {
    OP_RET_K, OP_RET_A,
    OP_LD_W_ABS, OP_LD_H_ABS, OP_LD_B_ABS,
    OP_LD_W_LEN, OP_LDX_W_LEN,
    OP_LD_W_IND, OP_LD_H_IND, OP_LD_B_IND,
    OP_LDX_MSH_B,
    OP_LD_IMM, OP_LDX_IMM, OP_LD_MEM, OP_LDX_MEM, OP_ST, OP_STX,
    OP_JA,
    OP_JGT_K, OP_JGE_K, OP_JEQ_K, OP_JSET_K,
    OP_JGT_X, OP_JGE_X, OP_JEQ_X, OP_JSET_X,
    OP_ADD_X, OP_SUB_X, OP_MUL_X, OP_DIV_X, OP_MOD_X, OP_AND_X, OP_OR_X, OP_XOR_X, OP_LSH_X, OP_RSH_X,
    OP_ADD_K, OP_SUB_K, OP_MUL_K, OP_DIV_K, OP_MOD_K, OP_AND_K, OP_OR_K, OP_XOR_K, OP_LSH_K, OP_RSH_K,
    OP_NEG, OP_TAX, OP_TXA,
    OP_COUNT
};

#ifndef BPF_MAXINSNS
#define BPF_MAXINSNS 4096
#endif
#ifndef BPF_MOD
#define BPF_MOD 0x90
#endif
#ifndef BPF_XOR
#define BPF_XOR 0xa0
#endif

static int op_of(uint16_t code) {
    switch (code) {
    case BPF_RET | BPF_K: return OP_RET_K;
    case BPF_RET | BPF_A: return OP_RET_A;
    case BPF_LD | BPF_W | BPF_ABS: return OP_LD_W_ABS;
    case BPF_LD | BPF_H | BPF_ABS: return OP_LD_H_ABS;
    case BPF_LD | BPF_B | BPF_ABS: return OP_LD_B_ABS;
    case BPF_LD | BPF_W | BPF_LEN: return OP_LD_W_LEN;
    case BPF_LDX | BPF_W | BPF_LEN: return OP_LDX_W_LEN;
    case BPF_LD | BPF_W | BPF_IND: return OP_LD_W_IND;
    case BPF_LD | BPF_H | BPF_IND: return OP_LD_H_IND;
    case BPF_LD | BPF_B | BPF_IND: return OP_LD_B_IND;
    case BPF_LDX | BPF_MSH | BPF_B: return OP_LDX_MSH_B;
    case BPF_LD | BPF_IMM: return OP_LD_IMM;
    case BPF_LDX | BPF_IMM: return OP_LDX_IMM;
    case BPF_LD | BPF_MEM: return OP_LD_MEM;
    case BPF_LDX | BPF_MEM: return OP_LDX_MEM;
    case BPF_ST: return OP_ST;
    case BPF_STX: return OP_STX;
    case BPF_JMP | BPF_JA: return OP_JA;
    case BPF_JMP | BPF_JGT | BPF_K: return OP_JGT_K;
    case BPF_JMP | BPF_JGE | BPF_K: return OP_JGE_K;
    case BPF_JMP | BPF_JEQ | BPF_K: return OP_JEQ_K;
    case BPF_JMP | BPF_JSET | BPF_K: return OP_JSET_K;
    case BPF_JMP | BPF_JGT | BPF_X: return OP_JGT_X;
    case BPF_JMP | BPF_JGE | BPF_X: return OP_JGE_X;
    case BPF_JMP | BPF_JEQ | BPF_X: return OP_JEQ_X;
    case BPF_JMP | BPF_JSET | BPF_X: return OP_JSET_X;
    case BPF_ALU | BPF_ADD | BPF_X: return OP_ADD_X;
    case BPF_ALU | BPF_SUB | BPF_X: return OP_SUB_X;
    case BPF_ALU | BPF_MUL | BPF_X: return OP_MUL_X;
    case BPF_ALU | BPF_DIV | BPF_X: return OP_DIV_X;
    case BPF_ALU | BPF_MOD | BPF_X: return OP_MOD_X;
    case BPF_ALU | BPF_AND | BPF_X: return OP_AND_X;
    case BPF_ALU | BPF_OR | BPF_X: return OP_OR_X;
    case BPF_ALU | BPF_XOR | BPF_X: return OP_XOR_X;
    case BPF_ALU | BPF_LSH | BPF_X: return OP_LSH_X;
    case BPF_ALU | BPF_RSH | BPF_X: return OP_RSH_X;
    case BPF_ALU | BPF_ADD | BPF_K: return OP_ADD_K;
    case BPF_ALU | BPF_SUB | BPF_K: return OP_SUB_K;
    case BPF_ALU | BPF_MUL | BPF_K: return OP_MUL_K;
    case BPF_ALU | BPF_DIV | BPF_K: return OP_DIV_K;
    case BPF_ALU | BPF_MOD | BPF_K: return OP_MOD_K;
    case BPF_ALU | BPF_AND | BPF_K: return OP_AND_K;
    case BPF_ALU | BPF_OR | BPF_K: return OP_OR_K;
    case BPF_ALU | BPF_XOR | BPF_K: return OP_XOR_K;
    case BPF_ALU | BPF_LSH | BPF_K: return OP_LSH_K;
    case BPF_ALU | BPF_RSH | BPF_K: return OP_RSH_K;
    case BPF_ALU | BPF_NEG: return OP_NEG;
    case BPF_MISC | BPF_TAX: return OP_TAX;
    case BPF_MISC | BPF_TXA: return OP_TXA;
    default: return -1;
    }
}

struct pipes_bpf_prog *pipes_bpf_decode(const void *code, uint32_t n) {
    const struct bpf_insn *insns = code;
    if (insns == NULL || n == 0 || n > BPF_MAXINSNS) return NULL;
    struct pipes_bpf_prog *prog = malloc(sizeof *prog + (size_t)n * sizeof prog->ops[0]);
    if (prog == NULL) return NULL;
    prog->count = n;
    for (uint32_t i = 0; i < n; i++) {
        const struct bpf_insn *in = &insns[i];
        int op = op_of(in->code);
        struct pipes_bpf_op *o = &prog->ops[i];
        if (op < 0) goto refuse;
        o->op = (uint32_t)op;
        o->k = in->k;
        o->jt = o->jf = i + 1;
        switch (op) {
        case OP_JA: {
            /* libpcap sign-extends k: ip6 protochain jumps backwards. */
            int64_t t = (int64_t)i + 1 + (int32_t)in->k;
            if (t < 0 || t >= n) goto refuse;
            o->jt = o->jf = (uint32_t)t;
            break;
        }
        case OP_JGT_K: case OP_JGE_K: case OP_JEQ_K: case OP_JSET_K:
        case OP_JGT_X: case OP_JGE_X: case OP_JEQ_X: case OP_JSET_X:
            if ((uint64_t)i + 1 + in->jt >= n || (uint64_t)i + 1 + in->jf >= n) goto refuse;
            o->jt = i + 1 + in->jt;
            o->jf = i + 1 + in->jf;
            break;
        case OP_LD_MEM: case OP_LDX_MEM: case OP_ST: case OP_STX:
            if (in->k >= BPF_MEMWORDS) goto refuse;
            break;
        case OP_DIV_K: case OP_MOD_K:
            if (in->k == 0) goto refuse;
            break;
        case OP_LSH_K: case OP_RSH_K:
            if (in->k >= 32) goto refuse;  /* undefined in C; bpf_validate refuses them too */
            break;
        default:
            break;
        }
        /* Anything but a return or a jump falls through to the next instruction, which must exist. */
        if (op != OP_RET_K && op != OP_RET_A && o->jt >= n) goto refuse;
    }
    return prog;
refuse:
    free(prog);
    return NULL;
}

void pipes_bpf_free(struct pipes_bpf_prog *prog) { free(prog); }

static inline uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static inline uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

uint32_t pipes_bpf_run(const struct pipes_bpf_prog *prog, const uint8_t *p, uint32_t wirelen, uint32_t buflen) {
    static const void *const labels[OP_COUNT] = {
        [OP_RET_K] = &&ret_k, [OP_RET_A] = &&ret_a,
        [OP_LD_W_ABS] = &&ld_w_abs, [OP_LD_H_ABS] = &&ld_h_abs, [OP_LD_B_ABS] = &&ld_b_abs,
        [OP_LD_W_LEN] = &&ld_w_len, [OP_LDX_W_LEN] = &&ldx_w_len,
        [OP_LD_W_IND] = &&ld_w_ind, [OP_LD_H_IND] = &&ld_h_ind, [OP_LD_B_IND] = &&ld_b_ind,
        [OP_LDX_MSH_B] = &&ldx_msh_b,
        [OP_LD_IMM] = &&ld_imm, [OP_LDX_IMM] = &&ldx_imm, [OP_LD_MEM] = &&ld_mem, [OP_LDX_MEM] = &&ldx_mem,
        [OP_ST] = &&st, [OP_STX] = &&stx,
        [OP_JA] = &&ja,
        [OP_JGT_K] = &&jgt_k, [OP_JGE_K] = &&jge_k, [OP_JEQ_K] = &&jeq_k, [OP_JSET_K] = &&jset_k,
        [OP_JGT_X] = &&jgt_x, [OP_JGE_X] = &&jge_x, [OP_JEQ_X] = &&jeq_x, [OP_JSET_X] = &&jset_x,
        [OP_ADD_X] = &&add_x, [OP_SUB_X] = &&sub_x, [OP_MUL_X] = &&mul_x, [OP_DIV_X] = &&div_x, [OP_MOD_X] = &&mod_x,
        [OP_AND_X] = &&and_x, [OP_OR_X] = &&or_x, [OP_XOR_X] = &&xor_x, [OP_LSH_X] = &&lsh_x, [OP_RSH_X] = &&rsh_x,
        [OP_ADD_K] = &&add_k, [OP_SUB_K] = &&sub_k, [OP_MUL_K] = &&mul_k, [OP_DIV_K] = &&div_k, [OP_MOD_K] = &&mod_k,
        [OP_AND_K] = &&and_k, [OP_OR_K] = &&or_k, [OP_XOR_K] = &&xor_k, [OP_LSH_K] = &&lsh_k, [OP_RSH_K] = &&rsh_k,
        [OP_NEG] = &&neg, [OP_TAX] = &&tax, [OP_TXA] = &&txa,
    };
    const struct pipes_bpf_op *ops = prog->ops, *pc = ops;
    uint32_t A = 0, X = 0, k;
    uint32_t mem[BPF_MEMWORDS];
#define NEXT() do { pc++; goto *labels[pc->op]; } while (0)
#define JUMP(c) do { pc = ops + ((c) ? pc->jt : pc->jf); goto *labels[pc->op]; } while (0)
    goto *labels[pc->op];
ret_k: return pc->k;
ret_a: return A;
ld_w_abs:
    k = pc->k;
    if (k > buflen || 4 > buflen - k) return 0;
    A = be32(p + k);
    NEXT();
ld_h_abs:
    k = pc->k;
    if (k > buflen || 2 > buflen - k) return 0;
    A = be16(p + k);
    NEXT();
ld_b_abs:
    k = pc->k;
    if (k >= buflen) return 0;
    A = p[k];
    NEXT();
ld_w_len: A = wirelen; NEXT();
ldx_w_len: X = wirelen; NEXT();
ld_w_ind:
    k = X + pc->k;
    if (pc->k > buflen || X > buflen - pc->k || 4 > buflen - k) return 0;
    A = be32(p + k);
    NEXT();
ld_h_ind:
    k = X + pc->k;
    if (pc->k > buflen || X > buflen - pc->k || 2 > buflen - k) return 0;
    A = be16(p + k);
    NEXT();
ld_b_ind:
    k = X + pc->k;
    if (pc->k >= buflen || X >= buflen - pc->k) return 0;
    A = p[k];
    NEXT();
ldx_msh_b:
    k = pc->k;
    if (k >= buflen) return 0;
    X = (uint32_t)(p[k] & 0xf) << 2;
    NEXT();
ld_imm: A = pc->k; NEXT();
ldx_imm: X = pc->k; NEXT();
ld_mem: A = mem[pc->k]; NEXT();
ldx_mem: X = mem[pc->k]; NEXT();
st: mem[pc->k] = A; NEXT();
stx: mem[pc->k] = X; NEXT();
ja: pc = ops + pc->jt; goto *labels[pc->op];
jgt_k: JUMP(A > pc->k);
jge_k: JUMP(A >= pc->k);
jeq_k: JUMP(A == pc->k);
jset_k: JUMP(A & pc->k);
jgt_x: JUMP(A > X);
jge_x: JUMP(A >= X);
jeq_x: JUMP(A == X);
jset_x: JUMP(A & X);
add_x: A += X; NEXT();
sub_x: A -= X; NEXT();
mul_x: A *= X; NEXT();
div_x: if (X == 0) return 0; A /= X; NEXT();
mod_x: if (X == 0) return 0; A %= X; NEXT();
and_x: A &= X; NEXT();
or_x: A |= X; NEXT();
xor_x: A ^= X; NEXT();
lsh_x: A = X < 32 ? A << X : 0; NEXT();
rsh_x: A = X < 32 ? A >> X : 0; NEXT();
add_k: A += pc->k; NEXT();
sub_k: A -= pc->k; NEXT();
mul_k: A *= pc->k; NEXT();
div_k: A /= pc->k; NEXT();
mod_k: A %= pc->k; NEXT();
and_k: A &= pc->k; NEXT();
or_k: A |= pc->k; NEXT();
xor_k: A ^= pc->k; NEXT();
lsh_k: A <<= pc->k; NEXT();
rsh_k: A >>= pc->k; NEXT();
neg: A = 0u - A; NEXT();
tax: X = A; NEXT();
txa: A = X; NEXT();
#undef NEXT
#undef JUMP
}
