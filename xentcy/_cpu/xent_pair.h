/* xent_rows.h for float and for double, under the instruction set XENT_ISA. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

#define XENT_T float
#define XENT_F32 1
#define XN(name) XENT_CAT(name, XENT_ISA, f32)
#include "xent_rows.h"
#undef XENT_T
#undef XENT_F32
#undef XN

#define XENT_T double
#define XENT_F32 0
#define XN(name) XENT_CAT(name, XENT_ISA, f64)
#include "xent_rows.h"
#undef XENT_T
#undef XENT_F32
#undef XN

/* How many class indices y[0, N) are not ignore_index (kept), and how many of those are
 * outside [0, C) (bad): branch-free, so that the loop vectorizes (8 indices per compare on
 * AVX-512). */
static XENT_TARGET void XENT_CAT(count_kept, XENT_ISA, idx)(
    const ptrdiff_t* y, ptrdiff_t N, ptrdiff_t ignore_index, ptrdiff_t C, ptrdiff_t* kept, ptrdiff_t* bad
) {
    ptrdiff_t k = 0, b = 0;
    for (ptrdiff_t i = 0; i < N; i++) {
        ptrdiff_t keep = y[i] != ignore_index;
        k += keep;
        b += keep & ((size_t)y[i] >= (size_t)C);
    }
    *kept = k;
    *bad = b;
}

#pragma GCC diagnostic pop
