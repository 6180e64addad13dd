/* The row kernels compiled once per instruction set, and the choice among them.
 *
 * x86-64: AVX-512 (F, DQ, BW, VL), AVX2 + FMA and the SSE2 baseline, each
 * compiled through a target attribute from the same source, picked at import
 * by __builtin_cpu_supports. Elsewhere (aarch64: NEON) one plain build.
 * No -march flag: the module loads on any CPU of its architecture.
 */
#ifndef XENT_DISPATCH_H
#define XENT_DISPATCH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
/* XENT_PLAIN: build only the plain path (vector extensions, no intrinsics), as on aarch64,
 * where GCC turns the 16-byte vectors into NEON; tests/test_cpu_plain_path.py builds it so
 * on x86 too and runs it. */
#if (defined(__x86_64__) || defined(__i386__)) && !defined(XENT_PLAIN)
#include <immintrin.h>
#define XENT_X86 1
#else
#define XENT_X86 0
#endif

/* Up to this many classes, rows go one per vector lane (xent_rows.h). */
#define XENT_SMALL_C 64

/* One call: (N, C) logits A with contiguous classes; strides are in bytes. */
typedef struct {
    const char* A;
    ptrdiff_t a_stride;
    const ptrdiff_t* y;   /* class indices, or NULL with Q */
    const char* Q;        /* class probabilities, or NULL with y */
    ptrdiff_t q_stride;
    const void* w;        /* C class weights, or NULL */
    double w_sum, eps, scale;
    ptrdiff_t ignore_index;
    char* rows_out;       /* the rows written: the gradient (cross-entropy) or the softmax; or NULL */
    ptrdiff_t rows_out_stride;
    void* per_row_out;    /* per-row values: losses (double) or logsumexp (the logits' dtype) */
    ptrdiff_t C;
    int log_space;
    int nt_store;         /* write rows_out with non-temporal stores (much larger than the caches) */
    ptrdiff_t* rank;      /* the evaluation rows' outputs besides the loss (per_row_out) */
    double* entropy;
    double z_loss;        /* the z-loss's factor z (0: none) */
    double temperature;   /* the logits are divided by it first (cross_entropy_tx; 1 elsewhere) */
    double softcap;       /* then soft-capped to cap tanh(x / cap) where it is > 0 (cross_entropy_tx) */
    const void* prefetch_after;  /* the row the last row prefetches (NULL: itself), same length */
    /* the row kernels' gradient through the chain rule of transformed logits (cross_entropy_tx):
     * times the soft-cap's derivative, row i at chain_d + i chain_stride (or NULL: none), and
     * times chain_inv = 1 / temperature; chain_inv 0: not chained */
    const char* chain_d;
    ptrdiff_t chain_stride;
    double chain_inv;
} xent_args;

/* Bytes of transformed logits a chunk of the cross_entropy_tx kernels holds (three such
 * buffers, z, d and dL/dz, per thread: L2-sized with the plain kernel's row scratch). */
#define XENT_TX_BYTES (32 * 1024)

/* The rows of a chunk of cross_entropy_tx: whole rows, at least one, a multiple of 16 (the
 * widest vector's lanes, for the few-class path's blocks) where more than 16 fit. */
static ptrdiff_t xent_tx_rows(ptrdiff_t C, ptrdiff_t itemsize) {
    ptrdiff_t r = XENT_TX_BYTES / (C * itemsize);
    r = r < 1 ? 1 : r;
    return r > 16 ? r - r % 16 : r;
}

/* The scratch values (of the dtype) a thread of cross_entropy_tx needs: z, d and dL/dz of a
 * chunk, and the plain kernel's own. */
static ptrdiff_t xent_tx_scratch(ptrdiff_t C, ptrdiff_t itemsize) {
    return 3 * xent_tx_rows(C, itemsize) * C + C + C / 64 + 2;
}

/* The rows [begin, end) of a call; scratch holds C + C / 64 + 2 values of the dtype, per thread. */
typedef void (*xent_rows_fn)(const xent_args*, ptrdiff_t begin, ptrdiff_t end, void* scratch);

typedef struct {
    const char* name;
    xent_rows_fn cross_entropy[2];  /* [0] float, [1] double */
    xent_rows_fn cross_entropy_tx[2];  /* of transformed logits (temperature, soft-cap) */
    xent_rows_fn softmax[2];
    xent_rows_fn logsumexp[2];
    xent_rows_fn evaluate[2];
    xent_rows_fn compare[2];        /* KL and argmax agreement of the row pairs A, Q */
    void (*exp_f32)(const float*, float*, ptrdiff_t);
    void (*exp_f64)(const double*, double*, ptrdiff_t);
    void (*tanh_f32)(const float*, float*, float*, ptrdiff_t);
    void (*tanh_f64)(const double*, double*, double*, ptrdiff_t);
    void (*count_kept)(const ptrdiff_t*, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t*, ptrdiff_t*);
} xent_kernels;

#define XENT_CAT_(a, b, c) a##_##b##_##c
#define XENT_CAT(a, b, c) XENT_CAT_(a, b, c)


/* One (instruction set, dtype) pair at a time. */
#if XENT_X86
#define XENT_ISA avx512
#define XENT_VBYTES 64
#define XENT_AVX512 1
#define XENT_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#include "xent_pair.h"
#undef XENT_ISA
#undef XENT_VBYTES
#undef XENT_AVX512
#undef XENT_TARGET

#define XENT_ISA avx2
#define XENT_VBYTES 32
#define XENT_AVX512 0
#define XENT_TARGET __attribute__((target("avx2,fma")))
#include "xent_pair.h"
#undef XENT_ISA
#undef XENT_VBYTES
#undef XENT_AVX512
#undef XENT_TARGET
#endif

#define XENT_ISA baseline
#define XENT_VBYTES 16
#define XENT_AVX512 0
#define XENT_TARGET
#include "xent_pair.h"
#undef XENT_ISA
#undef XENT_VBYTES
#undef XENT_AVX512
#undef XENT_TARGET

#define XENT_TABLE(isa)                                                                     \
    {#isa,                                                                                  \
     {cross_entropy_##isa##_f32, cross_entropy_##isa##_f64},                                \
     {cross_entropy_tx_##isa##_f32, cross_entropy_tx_##isa##_f64},                          \
     {softmax_##isa##_f32, softmax_##isa##_f64},                                            \
     {logsumexp_##isa##_f32, logsumexp_##isa##_f64},                                        \
     {evaluate_##isa##_f32, evaluate_##isa##_f64},                                          \
     {compare_##isa##_f32, compare_##isa##_f64},                                            \
     exp_array_##isa##_f32, exp_array_##isa##_f64,                                          \
     tanh_array_##isa##_f32, tanh_array_##isa##_f64,                                        \
     count_kept_##isa##_idx}

enum { XENT_BASELINE = 0, XENT_AVX2 = 1, XENT_AVX512_ISA = 2, XENT_N_ISA = 3 };

static const xent_kernels xent_tables[XENT_N_ISA] = {
    XENT_TABLE(baseline),
#if XENT_X86
    XENT_TABLE(avx2),
    XENT_TABLE(avx512),
#endif
};

/* Whether this CPU runs the kernels of instruction set isa (XENT_BASELINE, ...). */
static int xent_isa_supported(int isa) {
    if (isa == XENT_BASELINE)
        return 1;
#if XENT_X86
    __builtin_cpu_init();
    if (isa == XENT_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == XENT_AVX512_ISA)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#endif
    return 0;
}

static int xent_best_isa(void) {
    int isa = XENT_N_ISA - 1;
    while (!xent_isa_supported(isa))
        isa--;
    return isa;
}

#endif
