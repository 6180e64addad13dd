/* How fast can the forward pass be on one core? The exp-and-sum loop of the kernels, alone,
 * from L1 (no memory traffic at all), against the row max and a table-driven exp.
 *
 *   gcc -O3 -I xentcy/_cpu benchmarks/exp_throughput.c -o /tmp/exp_throughput -lm && /tmp/exp_throughput
 *
 * x86-64 with AVX-512 only. Prints ns per element (best of 50 runs over a 16 KiB row read 20
 * times) and each exp's largest error in ulp over a sweep of [-87, 0]. The forward pass reads
 * each logit twice (max, then exp and sum) and can be no faster than the two loops here
 * together; np.max, the forward target's floor, streams A from memory at ~0.12-0.15 ns per
 * float32 on this machine (benchmarks/cpu-notes.md, v10).
 */
#include "xent_dispatch.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define N_ELEM 4096
#define PASSES 20

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* A 2^(j/32) table and a degree-3 polynomial on |r| <= ln2/64: 7 multiply-adds where the
 * kernels' exp has 8 plus the scaling, but 15 vector operations where it has 13. */
static float table[32];

static AVX512 inline __m512 exp_table(__m512 x, __m512 lo, __m512 hi) {
    x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+5f), _mm512_set1_ps(0x1.8p23f));
    __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(0x1.8p23f));
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-6f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-25f), r);
    __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 6), _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512 q = _mm512_mul_ps(p, r);
    __m512i ti = _mm512_castps_si512(t);
    __m512 tj = _mm512_permutex2var_ps(lo, ti, hi);
    __m512 e = _mm512_fmadd_ps(tj, q, tj);
    __m512i k = _mm512_and_si512(_mm512_slli_epi32(ti, 18), _mm512_set1_epi32((int)0xFF800000u));
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(e), k));
}

#define TIME(label, body)                                                         \
    do {                                                                          \
        double best = 1e9;                                                        \
        for (int rep = 0; rep < 50; rep++) {                                      \
            double t0 = now();                                                    \
            __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;           \
            for (int pass = 0; pass < PASSES; pass++)                             \
                for (int c = 0; c < N_ELEM; c += 64) {                            \
                    __m512 a0 = _mm512_loadu_ps(a + c), a1 = _mm512_loadu_ps(a + c + 16); \
                    __m512 a2 = _mm512_loadu_ps(a + c + 32), a3 = _mm512_loadu_ps(a + c + 48); \
                    body;                                                         \
                }                                                                 \
            double dt = (now() - t0) / ((double)PASSES * N_ELEM);                 \
            best = dt < best ? dt : best;                                         \
            sink += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3))); \
        }                                                                         \
        printf("%-44s %.4f ns/element\n", label, best * 1e9);                    \
    } while (0)

static AVX512 void run(const float* a, float m) {
    __m512 vm = _mm512_set1_ps(m), lo = _mm512_loadu_ps(table), hi = _mm512_loadu_ps(table + 16);
    volatile float sink = 0;
    double worst_kernel = 0, worst_table = 0;
    for (double xd = -87.0; xd <= 0; xd += 1.3e-5) {
        float x = (float)xd, k, t;
        k = _mm512_cvtss_f32((__m512)exp_le0_avx512_f32((v_avx512_f32)_mm512_set1_ps(x)));
        t = _mm512_cvtss_f32(exp_table(_mm512_set1_ps(x), lo, hi));
        double exact = exp((double)x), ulp = nextafterf((float)exact, INFINITY) - (float)exact;
        worst_kernel = fmax(worst_kernel, fabs(k - exact) / ulp);
        worst_table = fmax(worst_table, fabs(t - exact) / ulp);
    }
    printf("largest error over [-87, 0]: kernels' exp %.3f ulp, table exp %.3f ulp\n", worst_kernel, worst_table);
#define KEXP(v) ((__m512)exp_le0_avx512_f32((v_avx512_f32)_mm512_sub_ps(v, vm)))
    TIME("row max (max pass)", s0 = _mm512_max_ps(a0, s0); s1 = _mm512_max_ps(a1, s1);
         s2 = _mm512_max_ps(a2, s2); s3 = _mm512_max_ps(a3, s3));
    TIME("sum of exp(A - m), the kernels' exp", s0 = _mm512_add_ps(s0, KEXP(a0));
         s1 = _mm512_add_ps(s1, KEXP(a1)); s2 = _mm512_add_ps(s2, KEXP(a2)); s3 = _mm512_add_ps(s3, KEXP(a3)));
#define TEXP(v) exp_table(_mm512_sub_ps(v, vm), lo, hi)
    TIME("sum of exp(A - m), the table exp", s0 = _mm512_add_ps(s0, TEXP(a0));
         s1 = _mm512_add_ps(s1, TEXP(a1)); s2 = _mm512_add_ps(s2, TEXP(a2)); s3 = _mm512_add_ps(s3, TEXP(a3)));
}

int main(void) {
    if (!xent_isa_supported(XENT_AVX512_ISA)) {
        puts("this CPU has no AVX-512");
        return 0;
    }
    for (int j = 0; j < 32; j++)
        table[j] = (float)exp2(j / 32.0);
    float* a = aligned_alloc(64, N_ELEM * sizeof(float));
    float m = -INFINITY;
    srand(1);
    for (int i = 0; i < N_ELEM; i++) {
        a[i] = 3.0f * (float)(rand() / (double)RAND_MAX * 3.4 - 1.7);
        m = a[i] > m ? a[i] : m;
    }
    run(a, m);
    free(a);
    return 0;
}
