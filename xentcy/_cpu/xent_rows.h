/* The row kernels for one (instruction set, dtype) pair; see xent_simd.h for the macros.
 *
 * Each kernel computes the rows [begin, end) of an xent_args call. A row's
 * result depends on that row alone (never on begin, end or the lanes it
 * shares a vector with), so any split of the rows among threads gives the
 * same numbers.
 *
 * Per row, with m = max_c A_c and s = sum_c exp(A_c - m) (a non-finite max
 * shifts by 0 instead), the loss term of class c is (m - A_c) + log s and the
 * gradient scale (p_c sum_k w_k q_k - w_c q_c), p_c = exp(A_c - m) / s.
 *
 * Confident rows: one class p at the max has the term exp(0) = 1 exactly, and
 * s = 1 + delta, delta = sum_{c != p} exp(A_c - m) (which holds the other classes
 * at the max, if any). delta is summed apart from that 1 (a float sum of 1 + delta
 * keeps only ulp(1) of delta), and then
 *   log s = log1p(delta), so -log p_p = log1p(delta), exact to a few ulp however
 *     small (the loss of a confident row, log_softmax at its max);
 *   p_p - 1 = -delta / s, so the gradient at p is
 *     scale (sum_k w_k q_k - w_p q_p - sum_k w_k q_k delta / s)
 *   with sum_k w_k q_k - w_p q_p = sum_{k != p} w_k q_k formed without cancellation:
 *   (eps / C)(sum_k w_k - w_y) for class indices (p = y), summed apart from w_p q_p
 *   for probabilities. Which class p is: the target y of a class-index row where A_y
 *   is the max (other rows keep -log p_y >= log 2 and need nothing), else (probability
 *   rows, log_softmax, logsumexp) the first one the max pass's lanes point to.
 */

#include "xent_simd.h"

/* The next row prefetched: this many rows ahead, with this locality hint (2: prefetcht1,
 * into L2). Measured (cpu-notes v5): distance 2 or prefetcht0 no faster at C = 1000, and
 * prefetcht0 1.65x against 1.2x the copy at C = 32000 (the rows are 128 KiB). */
#ifndef XENT_PF_DIST
#define XENT_PF_DIST 1
#endif
#ifndef XENT_PF_HINT
#define XENT_PF_HINT 2
#endif

/* Elements per block of the one-pass max-and-sum: 4 KiB, so a block is read
 * from memory once and again from L1. */
#define BLK (64 * W)

#define ROW(base, stride, i) ((const T*)((base) + (i) * (stride)))
#define OUT_ROW(base, stride, i) ((T*)((base) + (i) * (stride)))

/* The lanes l < n set. */
XI IV XN(lanes_below)(ptrdiff_t n) {
    IV idx;
    for (ptrdiff_t l = 0; l < W; l++)
        idx[l] = l;
    return idx < (IV){0} + (XN(int_t))n;
}

/* The lane of class p in the vector of classes [c, c + W), where it is one of them (else none). */
XI IV XN(lane_of)(ptrdiff_t p, ptrdiff_t c) {
    return (size_t)(p - c) < (size_t)W ? XN(lane_is)(p - c) : (IV){0};
}

/* The sum one lane of the exp pass's accumulators holds, the classes c = first + k step
 * below stop in the order of k, recomputed without the class p, which the pass counted:
 * the pass's loop stays as it is (no instruction per class added to it) and the row whose
 * class at the max p fell into that loop pays for one lane (BLK / step classes). The
 * terms come from the same vector exp; a left-out class adds exp(-inf) = 0. */
XI T XN(lane_exp_but)(const T* a, ptrdiff_t first, ptrdiff_t stop, ptrdiff_t step, V shift, ptrdiff_t p,
                      const int bounded) {
    T r = 0;
    for (ptrdiff_t c = first; c < stop;) {
        V x = XN(splat)(-INFINITY);
        ptrdiff_t n = 0;
        for (; n < W && c < stop; n++, c += step)
            x[n] = c == p ? -INFINITY : a[c];
        x = bounded ? XN(exp_le0)(x - shift) : XN(exp)(x - shift);
        for (ptrdiff_t l = 0; l < n; l++)
            r += x[l];
    }
    return r;
}

/* acc (one of the loop's accumulators) with lane l replaced by v. */
XI V XN(set_lane)(V acc, ptrdiff_t l, T v) { return XN(select)(XN(lane_is)(l), XN(splat)(v), acc); }

/* sum_{c < n, c != p} exp(A_c - shift) (p outside [0, n): every class), the terms (p's
 * too) into e unless it is NULL: float partial sums per block, double across blocks.
 * bounded: every A_c - shift <= 0 or NaN (shift is the row's finite max). */
XI double XN(sum_exp)(const T* a, ptrdiff_t n, T shift, T* e, const int bounded, ptrdiff_t p) {
    V vs = XN(splat)(shift), x0, x1, zero = XN(splat)(0);
    double s = 0.0;
#define XENT_EXP(v) (bounded ? XN(exp_le0)(v) : XN(exp)(v))
    for (ptrdiff_t c0 = 0; c0 < n; c0 += BLK) {
        ptrdiff_t end = c0 + BLK < n ? c0 + BLK : n, c = c0;
        V acc0 = zero, acc1 = zero;
        for (; c + 2 * W <= end; c += 2 * W) {
            x0 = XENT_EXP(XN(load)(a + c) - vs);
            x1 = XENT_EXP(XN(load)(a + c + W) - vs);
            acc0 += x0;
            acc1 += x1;
            if (e) {
                XN(store)(e + c, x0);
                XN(store)(e + c + W, x1);
            }
        }
        if (p >= c0 && p < c) {
            /* p went into lane l of acc0 or acc1: that lane again without it */
            ptrdiff_t j = (p - c0) / W & 1, l = (p - c0) % W;
            T r = XN(lane_exp_but)(a, c0 + j * W + l, c, 2 * W, vs, p, bounded);
            if (j)
                acc1 = XN(set_lane)(acc1, l, r);
            else
                acc0 = XN(set_lane)(acc0, l, r);
        }
        for (; c + W <= end; c += W) {
            x0 = XENT_EXP(XN(load)(a + c) - vs);
            acc0 += XN(select)(XN(lane_of)(p, c), zero, x0);
            if (e)
                XN(store)(e + c, x0);
        }
        if (c < end) {
            /* the padding is -inf: exp(-inf - shift) = 0 */
            x1 = XENT_EXP(XN(load_part)(a + c, end - c, -INFINITY) - vs);
            acc1 += XN(select)(XN(lane_of)(p, c), zero, x1);
            if (e)
                XN(store_part)(e + c, x1, end - c);
        }
        s += XN(hsum)(acc0 + acc1);
    }
    return s;
}

/* The lines of the next row, at the offsets of the vectors [c, c + 4W) of this one,
 * on their way into L2 while this row is computed. */
XI void XN(prefetch4)(const T* next, ptrdiff_t c) {
    for (ptrdiff_t j = 0; j < 4 * W; j += 64 / (ptrdiff_t)sizeof(T))
        __builtin_prefetch(next + c + j, 0, XENT_PF_HINT);
}

/* All the lines of the row at next (C values) on their way into L2. */
XI void XN(prefetch_row)(const T* next, ptrdiff_t C) {
    for (ptrdiff_t c = 0; c < C; c += 64 / (ptrdiff_t)sizeof(T))
        __builtin_prefetch(next + c, 0, XENT_PF_HINT);
}

/* The first class c >= first, in steps of step, whose logit has the bits of lane l of acc
 * (a max accumulator, whose lanes hold logits of those classes), or -1. */
XI ptrdiff_t XN(find_bits)(const T* a, ptrdiff_t C, ptrdiff_t first, ptrdiff_t step, V acc, ptrdiff_t l) {
    const XN(bits_t)* ab = (const XN(bits_t)*)a;
    XN(bits_t) want = XN(bits_of)(acc[l]);
    for (ptrdiff_t c = first; c < C; c += step)
        if (ab[c] == want)
            return c;
    return -1;
}

/* max_c A_c: a NaN logit is never chosen (it shows up in the sum). Where pos, *pos is
 * a class at a finite max (-1 where the max is not finite): y where A_y is the max
 * (y >= 0), else, where find, the first class of the lane that holds the max (a search
 * of C / 4W logits), else -1. */
XI T XN(row_max_impl)(const T* a, ptrdiff_t C, ptrdiff_t* pos, ptrdiff_t y, int find) {
    V m0 = XN(splat)(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    ptrdiff_t c = 0;
    for (; c + 4 * W <= C; c += 4 * W) {
        m0 = XN(max)(XN(load)(a + c), m0);
        m1 = XN(max)(XN(load)(a + c + W), m1);
        m2 = XN(max)(XN(load)(a + c + 2 * W), m2);
        m3 = XN(max)(XN(load)(a + c + 3 * W), m3);
    }
    if (!find) {
        /* (as before the search: the tails into m0 and m1) */
        for (; c + W <= C; c += W)
            m0 = XN(max)(XN(load)(a + c), m0);
        if (c < C)
            m1 = XN(max)(XN(load_part)(a + c, C - c, -INFINITY), m1);
    } else {
        /* the tails into accumulator (c / W) mod 4, as in the loop: lane l of accumulator j
         * holds the max of the classes c = jW + l mod 4W */
        if (c + W <= C) {
            m0 = XN(max)(XN(load)(a + c), m0);
            c += W;
        }
        if (c + W <= C) {
            m1 = XN(max)(XN(load)(a + c), m1);
            c += W;
        }
        if (c + W <= C) {
            m2 = XN(max)(XN(load)(a + c), m2);
            c += W;
        }
        if (c < C) {
            V part = XN(load_part)(a + c, C - c, -INFINITY);
            switch (c / W & 3) {
            case 0: m0 = XN(max)(part, m0); break;
            case 1: m1 = XN(max)(part, m1); break;
            case 2: m2 = XN(max)(part, m2); break;
            default: m3 = XN(max)(part, m3); break;
            }
        }
    }
    T m = XN(hmax)(XN(max)(XN(max)(m0, m1), XN(max)(m2, m3)));
    if (pos) {
        *pos = -1;
        if (isfinite(m)) {
            if (y >= 0 && a[y] == m) {
                *pos = y;
            } else if (find) {
                V vm = XN(splat)(m);
                ptrdiff_t l;
                if ((l = XN(first_lane)(m0 == vm)) >= 0)
                    *pos = XN(find_bits)(a, C, l, 4 * W, m0, l);
                else if ((l = XN(first_lane)(m1 == vm)) >= 0)
                    *pos = XN(find_bits)(a, C, W + l, 4 * W, m1, l);
                else if ((l = XN(first_lane)(m2 == vm)) >= 0)
                    *pos = XN(find_bits)(a, C, 2 * W + l, 4 * W, m2, l);
                else if ((l = XN(first_lane)(m3 == vm)) >= 0)
                    *pos = XN(find_bits)(a, C, 3 * W + l, 4 * W, m3, l);
            }
        }
    }
    return m;
}

static XENT_TARGET T XN(row_max)(const T* a, ptrdiff_t C) { return XN(row_max_impl)(a, C, NULL, -1, 0); }

/* w_c q_c for the vector of classes at c: q_c = onem Q_c + smooth (q NULL: smooth),
 * w_c = 1 where w is NULL. */
XI V XN(target_mass)(const T* q, const T* w, ptrdiff_t c, T onem, T smooth) {
    V wq = q ? XN(load)(q + c) * onem + smooth : XN(splat)(smooth);
    return w ? wq * XN(load)(w + c) : wq;
}

XI V XN(target_mass_part)(const T* q, const T* w, ptrdiff_t c, ptrdiff_t n, T onem, T smooth) {
    V wq = q ? XN(load_part)(q + c, n, 0) * onem + smooth : XN(splat)(smooth);
    wq = w ? wq * XN(load_part)(w + c, n, 0) : wq;
    return XN(select)(XN(lanes_below)(n), wq, XN(splat)(0));
}

/* The target mass of a probability row, gathered in the exp pass: t += w_c q_c (m - A_c)
 * over the classes of nonzero mass (A_c may be -inf where the mass is 0), total += w_c q_c
 * but for the class p at the max, whose w_p q_p is wq_p (0 where there is none). */
typedef struct {
    const T* q;
    const T* w;
    const T* next_q;  /* the next row of Q, prefetched meanwhile (NULL: left to the hardware) */
    T onem, smooth;
    double t, total;
    T wq_p;
} XN(mass_t);

XI void XN(mass_acc)(V* acc_t, V* acc_m, V wq, V vm, V a) {
    *acc_t += XN(select)(wq != 0, wq * (vm - a), XN(splat)(0));
    *acc_m += wq;
}

/* mass_acc, but lane l (l outside [0, W): none) only into t and into mass->wq_p. */
XI void XN(mass_acc_but)(XN(mass_t)* mass, V* acc_t, V* acc_m, V wq, V vm, V a, ptrdiff_t l) {
    IV lane = (size_t)l < (size_t)W ? XN(lane_is)(l) : (IV){0};
    *acc_t += XN(select)(wq != 0, wq * (vm - a), XN(splat)(0));
    if ((size_t)l < (size_t)W)
        mass->wq_p = wq[l];
    *acc_m += XN(select)(lane, XN(splat)(0), wq);
}

/* g_c = k1 e_c - scale w_c q_c: one vector of a gradient row (one expression for every
 * loop that forms it, so that a row's gradient is the same whichever loop wrote it). */
XI V XN(grad_expr)(V e, V mass, T k1, T scale) { return e * k1 - mass * scale; }

/* One vector of the exp pass, classes [c, c + W), its lane l (the class p) kept out of
 * the sums: the term (stored into e all the same), and its mass where mass. */
XI V XN(exp_term_but)(const T* a, ptrdiff_t c, V vm, T* e, XN(mass_t)* mass, V* mt, V* mm, ptrdiff_t l) {
    V a0 = XN(load)(a + c), x = XN(exp_le0)(a0 - vm);
    if (e)
        XN(store)(e + c, x);
    if (mass)
        XN(mass_acc_but)(mass, mt, mm, XN(target_mass)(mass->q, mass->w, c, mass->onem, mass->smooth), vm, a0, l);
    return XN(select)((size_t)l < (size_t)W ? XN(lane_is)(l) : (IV){0}, XN(splat)(0), x);
}

/* The mass one lane of the exp pass's mass accumulator holds (as lane_exp_but): the classes
 * c = first + 4W k and c + 2W below stop, in that order, without the class p. */
XI T XN(lane_mass_but)(const XN(mass_t)* mass, ptrdiff_t first, ptrdiff_t stop, ptrdiff_t p) {
    T r = 0;
    for (ptrdiff_t c = first; c < stop; c += 4 * W)
        for (ptrdiff_t d = c; d < c + 4 * W && d < stop; d += 2 * W)
            if (d != p)
                r += (mass->q ? mass->q[d] * mass->onem + mass->smooth : mass->smooth) * (mass->w ? mass->w[d] : 1);
    return r;
}

/* The exp pass's fix-up where the class p at the max went into its loop (classes [c0, c)):
 * the lane of acc[4] that counted p summed again without it, and where mass, the lane of
 * mm[2] (the mass of vectors 0 and 2 went into mm[0], of 1 and 3 into mm[1]) and wq_p. */
static XENT_TARGET __attribute__((noinline)) void XN(fix_lanes)(
    const T* a, ptrdiff_t c0, ptrdiff_t c, V vm, ptrdiff_t p, V* acc, XN(mass_t)* mass, V* mm
) {
    ptrdiff_t j = (p - c0) / W & 3, l = (p - c0) % W;
    acc[j] = XN(set_lane)(acc[j], l, XN(lane_exp_but)(a, c0 + j * W + l, c, 4 * W, vm, p, 1));
    if (mass) {
        mm[j & 1] = XN(set_lane)(mm[j & 1], l, XN(lane_mass_but)(mass, c0 + (j & 1) * W + l, c, p));
        mass->wq_p = (mass->q ? mass->q[p] * mass->onem + mass->smooth : mass->smooth) * (mass->w ? mass->w[p] : 1);
    }
}

/* sum_{c != p} exp(A_c - m) for the row's finite max m (p outside [0, C): every class),
 * the terms (p's too) into e unless it is NULL, four vectors at a time; the next row
 * (next, same length) is prefetched meanwhile. Float partial sums per block of BLK
 * classes, double across blocks. mass (an always_inline constant pointer, NULL or not):
 * the target mass too, so that A and Q are each read once in this pass. The loop over
 * the classes is the one without p (a loop that stopped at p's four vectors held the
 * accumulators in memory: 11 instructions more per four vectors, 8 % in callgrind at
 * C = 1000); the lane it counted p in is summed again after it. */
XI double XN(sum_exp_le0_impl)(
    const T* a, ptrdiff_t C, T m, T* e, const T* next, XN(mass_t)* mass, ptrdiff_t p
) {
    V vm = XN(splat)(m), x0, x1, x2, x3, a0, a1, a2, a3, zero = XN(splat)(0);
    double s = 0.0;
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BLK) {
        ptrdiff_t end = c0 + BLK < C ? c0 + BLK : C, c = c0;
        V acc0 = zero, acc1 = zero, acc2 = zero, acc3 = zero, mt0 = zero, mt1 = zero, mm0 = zero, mm1 = zero;
        for (; c + 4 * W <= end; c += 4 * W) {
            XN(prefetch4)(next, c);
            if (mass && mass->next_q)
                XN(prefetch4)(mass->next_q, c);
            a0 = XN(load)(a + c);
            a1 = XN(load)(a + c + W);
            a2 = XN(load)(a + c + 2 * W);
            a3 = XN(load)(a + c + 3 * W);
            x0 = XN(exp_le0)(a0 - vm);
            x1 = XN(exp_le0)(a1 - vm);
            x2 = XN(exp_le0)(a2 - vm);
            x3 = XN(exp_le0)(a3 - vm);
            acc0 += x0;
            acc1 += x1;
            acc2 += x2;
            acc3 += x3;
            if (e) {
                XN(store)(e + c, x0);
                XN(store)(e + c + W, x1);
                XN(store)(e + c + 2 * W, x2);
                XN(store)(e + c + 3 * W, x3);
            }
            if (mass) {
                XN(mass_acc)(&mt0, &mm0, XN(target_mass)(mass->q, mass->w, c, mass->onem, mass->smooth), vm, a0);
                XN(mass_acc)(&mt1, &mm1, XN(target_mass)(mass->q, mass->w, c + W, mass->onem, mass->smooth), vm, a1);
                XN(mass_acc)(&mt0, &mm0, XN(target_mass)(mass->q, mass->w, c + 2 * W, mass->onem, mass->smooth), vm, a2);
                XN(mass_acc)(&mt1, &mm1, XN(target_mass)(mass->q, mass->w, c + 3 * W, mass->onem, mass->smooth), vm, a3);
            }
        }
        if (p >= c0 && p < c) {
            /* p went into a lane of the loop's accumulators: that lane again without it
             * (out of line: inline, its registers cost the mass loop 5 instructions a turn) */
            V acc[4] = {acc0, acc1, acc2, acc3}, mm[2] = {mm0, mm1};
            XN(fix_lanes)(a, c0, c, vm, p, acc, mass, mm);
            acc0 = acc[0], acc1 = acc[1], acc2 = acc[2], acc3 = acc[3], mm0 = mm[0], mm1 = mm[1];
        }
        for (; c + W <= end; c += W) {
            if ((size_t)(p - c) < (size_t)W) {
                acc0 += XN(exp_term_but)(a, c, vm, e, mass, &mt0, &mm0, p - c);
                continue;
            }
            a0 = XN(load)(a + c);
            x0 = XN(exp_le0)(a0 - vm);
            acc0 += x0;
            if (e)
                XN(store)(e + c, x0);
            if (mass)
                XN(mass_acc)(&mt0, &mm0, XN(target_mass)(mass->q, mass->w, c, mass->onem, mass->smooth), vm, a0);
        }
        if (c < end) {
            /* the padding is -inf: exp(-inf - m) = 0 */
            a1 = XN(load_part)(a + c, end - c, -INFINITY);
            x1 = XN(exp_le0)(a1 - vm);
            acc1 += XN(select)(XN(lane_of)(p, c), zero, x1);
            if (e)
                XN(store_part)(e + c, x1, end - c);
            if (mass)
                /* the padding has zero mass */
                XN(mass_acc_but)(mass, &mt1, &mm1,
                                 XN(target_mass_part)(mass->q, mass->w, c, end - c, mass->onem, mass->smooth), vm, a1,
                                 p - c);
        }
        s += XN(hsum)((acc0 + acc1) + (acc2 + acc3));
        if (mass) {
            mass->t += XN(hsum)(mt0 + mt1);
            mass->total += XN(hsum)(mm0 + mm1);
        }
    }
    return s;
}

static XENT_TARGET double XN(sum_exp_le0)(const T* a, ptrdiff_t C, T m, T* e, const T* next, ptrdiff_t p) {
    return XN(sum_exp_le0_impl)(a, C, m, e, next, NULL, p);
}

static XENT_TARGET double XN(sum_exp_le0_mass)(
    const T* a, ptrdiff_t C, T m, T* e, const T* next, XN(mass_t)* mass, ptrdiff_t p
) {
    return XN(sum_exp_le0_impl)(a, C, m, e, next, mass, p);
}

/* Rows of at most this many bytes are read three times (max, exp, gradient),
 * from L2 after the first: the row, its terms e and the next row fit there (3 x 256 KiB
 * of a 1 MiB L2: float64 at C = 32000 is 250 KiB a row, and went from 2.7x to 1.6x the copy
 * when it left the one-pass path below, which was sized for 192 KiB). */
#define XENT_ROW_L2_BYTES (256 * 1024)

/* The rows too long for L2: one pass over memory, per block its max first,
 * then its sum from L1, s rescaled by exp(m_old - m_new) whenever m grows.
 * e[C, ...) holds the shift of each block meanwhile. p: the class at the max left out
 * of s, the first of the block where the max was first reached (-1: none, where the
 * max is not finite); its term, 1, becomes exp(m_old - m_new) when m grows. */
static XENT_TARGET void XN(max_sum_exp_long)(const T* a, ptrdiff_t C, T* e, T* m_out, double* s_out, ptrdiff_t* p_out) {
    T m = -INFINITY, *shifts = e ? e + C : NULL;
    double s = 0.0;
    ptrdiff_t p = -1;
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BLK) {
        const T* b = a + c0;
        ptrdiff_t n = C - c0 < BLK ? C - c0 : BLK, c = 0;
        V bm0 = XN(splat)(-INFINITY), bm1 = bm0;
        for (; c + 2 * W <= n; c += 2 * W) {
            bm0 = XN(max)(XN(load)(b + c), bm0);
            bm1 = XN(max)(XN(load)(b + c + W), bm1);
        }
        for (; c + W <= n; c += W)
            bm0 = XN(max)(XN(load)(b + c), bm0);
        if (c < n)
            bm1 = XN(max)(XN(load_part)(b + c, n - c, -INFINITY), bm1);
        T block_max = XN(hmax)(XN(max)(bm0, bm1));
        if (block_max > m) {
            /* s so far is 0 or NaN while m is -inf: keep it as it is */
            if (isfinite(m)) {
                double f = exp((double)m - (double)block_max);
                s = p >= 0 ? s * f + f : s * f;
            }
            m = block_max;
            p = -1;
            if (isfinite(m)) {
                /* every class that went into lane l of bm0 or bm1 is l mod W */
                V vm = XN(splat)(m);
                ptrdiff_t l, f = -1;
                if ((l = XN(first_lane)(bm0 == vm)) >= 0)
                    f = XN(find_bits)(b, n, l, W, bm0, l);
                else if ((l = XN(first_lane)(bm1 == vm)) >= 0)
                    f = XN(find_bits)(b, n, l, W, bm1, l);
                p = f >= 0 ? c0 + f : -1;
            }
        }
        if (shifts)
            shifts[c0 / BLK] = isfinite(m) ? m : 0;
        if (isfinite(m))
            s += XN(sum_exp)(b, n, m, e ? e + c0 : NULL, 1, p >= 0 ? p - c0 : -1);
        else
            s += XN(sum_exp)(b, n, 0, e ? e + c0 : NULL, 0, -1);
    }
    if (!isfinite(m)) {
        /* all -inf, or a +inf logit: shift by 0, as the definition says */
        m = 0;
        p = -1;
        s = XN(sum_exp)(a, C, 0, e, 0, -1);
    } else if (e) {
        /* the blocks summed before m reached its final value: exp(A_c - m_b) exp(m_b - m) */
        for (ptrdiff_t c0 = 0; c0 < C && shifts[c0 / BLK] != m; c0 += BLK) {
            ptrdiff_t end = C - c0 < BLK ? C : c0 + BLK, c = c0;
            V f = XN(splat)((T)exp((double)shifts[c0 / BLK] - (double)m));
            for (; c + W <= end; c += W)
                XN(store)(e + c, XN(load)(e + c) * f);
            for (; c < end; c++)
                e[c] *= f[0];
        }
    }
    *m_out = m;
    *s_out = s;
    *p_out = p;
}

/* The sums of a row: s = sum_c exp(A_c - m), s1 = s - 1 = sum_{c != p} exp(A_c - m)
 * (exact however small, where a class p at the max was left out of it), and p (-1: none). */
typedef struct {
    double s, s1;
    ptrdiff_t p;
} XN(sums_t);

XI XN(sums_t) XN(sums)(double rest, ptrdiff_t p) {
    XN(sums_t) r = {p >= 0 ? 1.0 + rest : rest, p >= 0 ? rest : rest - 1.0, p};
    return r;
}

/* log s, from s - 1 where that is below 1 (log1p keeps its digits however small), else from
 * s (as exact there, and libm's log1p costs 5 % of a C = 1000 float32 forward pass). */
XI double XN(log_s)(XN(sums_t) r) { return r.s1 < 1.0 ? log1p(r.s1) : log(r.s); }

/* m = max_c A_c and its sums (a non-finite max shifts by 0 instead; a NaN logit makes s
 * NaN), exp(A_c - m) into e[0, C) unless e is NULL. next: the row after this one (or this
 * one again), prefetched meanwhile. y, find: which class at the max is left out of s1,
 * as row_max_impl says. */
static XENT_TARGET XN(sums_t) XN(max_sum_exp)(
    const T* a, ptrdiff_t C, T* e, T* m_out, const T* next, ptrdiff_t y, int find
) {
    T m;
    double rest;
    ptrdiff_t p;
    if (C * (ptrdiff_t)sizeof(T) > XENT_ROW_L2_BYTES) {
        XN(max_sum_exp_long)(a, C, e, m_out, &rest, &p);
        return XN(sums)(rest, p);
    }
    m = XN(row_max_impl)(a, C, &p, y, find);
    if (isfinite(m)) {
        rest = XN(sum_exp_le0)(a, C, m, e, next, p);
    } else {
        /* all -inf, or a +inf logit: shift by 0, as the definition says */
        m = 0;
        rest = XN(sum_exp)(a, C, 0, e, 0, -1);
    }
    *m_out = m;
    return XN(sums)(rest, p);
}

/* t = sum_c w_c q_c (m - A_c) over the classes of nonzero mass (A_c may be -inf
 * where the mass is 0), and total = sum_{c != p} w_c q_c, w_p q_p into *wq_p. */
static XENT_TARGET double XN(mass_gap)(
    const T* a, const T* q, const T* w, ptrdiff_t C, T m, T onem, T smooth, double* total, ptrdiff_t p, T* wq_p
) {
    V vm = XN(splat)(m), zero = XN(splat)(0);
    double t = 0.0, tot = 0.0;
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BLK) {
        ptrdiff_t end = c0 + BLK < C ? c0 + BLK : C, c = c0;
        V acc_t = zero, acc_m = zero, wq;
        for (; c + W <= end; c += W) {
            wq = XN(target_mass)(q, w, c, onem, smooth);
            acc_t += XN(select)(wq != 0, wq * (vm - XN(load)(a + c)), zero);
            if ((size_t)(p - c) < (size_t)W) {
                *wq_p = wq[p - c];
                wq = XN(select)(XN(lane_is)(p - c), zero, wq);
            }
            acc_m += wq;
        }
        if (c < end) {
            wq = XN(target_mass_part)(q, w, c, end - c, onem, smooth);
            acc_t += XN(select)(wq != 0, wq * (vm - XN(load_part)(a + c, end - c, 0)), zero);
            if ((size_t)(p - c) < (size_t)W) {
                *wq_p = wq[p - c];
                wq = XN(select)(XN(lane_is)(p - c), zero, wq);
            }
            acc_m += wq;
        }
        t += XN(hsum)(acc_t);
        tot += XN(hsum)(acc_m);
    }
    *total = tot;
    return t;
}

/* m = max_c A_c, its sums (as max_sum_exp) and the target mass of the row (mass->t,
 * mass->total, mass->wq_p, as mass_gap): in the exp pass, where A and Q are each read once,
 * for rows on the L2 path with a finite max; in a pass of its own otherwise. */
static XENT_TARGET XN(sums_t) XN(max_sum_exp_mass)(
    const T* a, ptrdiff_t C, T* e, const T* next, XN(mass_t)* mass, T* m_out, ptrdiff_t y, int find
) {
    T m;
    ptrdiff_t p;
    XN(sums_t) r;
    if (C * (ptrdiff_t)sizeof(T) <= XENT_ROW_L2_BYTES && isfinite(m = XN(row_max_impl)(a, C, &p, y, find))) {
        r = XN(sums)(XN(sum_exp_le0_mass)(a, C, m, e, next, mass, p), p);
    } else {
        r = XN(max_sum_exp)(a, C, e, &m, next, y, find);
        mass->t = XN(mass_gap)(a, mass->q, mass->w, C, m, mass->onem, mass->smooth, &mass->total, r.p, &mass->wq_p);
    }
    *m_out = m;
    return r;
}

/* The z-loss of a counted row (PaLM's auxiliary loss): z lse^2, lse = m + log s the row's
 * logsumexp, added to *loss; returns 2 z lse, what the row's softmax p_c is multiplied by in
 * its gradient (0 without a z-loss, so that the gradient is then the same bits as without). */
XI double XN(z_loss)(const xent_args* k, T m, double log_s, double* loss) {
    if (k->z_loss == 0.0)
        return 0.0;
    double lse = (double)m + log_s;
    *loss += k->z_loss * lse * lse;
    return 2.0 * k->z_loss * lse;
}

/* The chain rule into the logits' gradient: dL/dA_c = dL/dz_c (1 - tanh^2) / temperature. */
XI V XN(chain_expr)(V g, const T* d, ptrdiff_t c, ptrdiff_t n, T inv) {
    if (d)
        g = g * (n == W ? XN(load)(d + c) : XN(load_part)(d + c, n, 0));
    return inv != 1 ? g * inv : g;
}

/* A row g of C values to be written with streamed stores where *nt: the values before its
 * first vector-aligned one, which are stored apart (*nt turned off where g is not even
 * aligned to its type: then every store is a plain one). */
XI ptrdiff_t XN(stream_head)(const T* g, ptrdiff_t C, int* nt) {
    ptrdiff_t head = 0;
    if (*nt && (uintptr_t)g % sizeof(T) == 0)
        head = (ptrdiff_t)((XENT_VBYTES - (uintptr_t)g % XENT_VBYTES) % XENT_VBYTES / sizeof(T));
    else
        *nt = 0;
    return head < C ? head : C;
}

/* g_c = k1 e_c - scale w_c q_c with e_c = exp(A_c - m) and k1 = scale sum_k w_k q_k / s:
 * the gradient; where chained, through the chain rule of transformed logits (chain_expr, with
 * the soft-cap's derivative dch or NULL, and inv = 1 / temperature). Where nt, g is written
 * around the caches (it is not read again soon, and the store skips reading g's lines from
 * memory first). */
XI void XN(grad_row_impl)(
    const T* e, const T* q, const T* w, ptrdiff_t C, T k1, T onem, T smooth, T scale, T* g, int nt,
    const T* dch, T inv, const int chained
) {
#define XENT_GRAD(v, c, n) (chained ? XN(chain_expr)((v), dch, (c), (n), inv) : (v))
    ptrdiff_t c = 0, head = XN(stream_head)(g, C, &nt);
    if (head > 0) {
        XN(store_part)(g, XENT_GRAD(XN(grad_expr)(XN(load_part)(e, head, 0), XN(target_mass_part)(q, w, 0, head, onem, smooth), k1, scale), 0, head), head);
        c = head;
    }
    if (nt) {
        for (; c + W <= C; c += W)
            XN(stream)(g + c, XENT_GRAD(XN(grad_expr)(XN(load)(e + c), XN(target_mass)(q, w, c, onem, smooth), k1, scale), c, W));
    } else {
        for (; c + W <= C; c += W)
            XN(store)(g + c, XENT_GRAD(XN(grad_expr)(XN(load)(e + c), XN(target_mass)(q, w, c, onem, smooth), k1, scale), c, W));
    }
    if (c < C)
        XN(store_part)(g + c, XENT_GRAD(XN(grad_expr)(XN(load_part)(e + c, C - c, 0), XN(target_mass_part)(q, w, c, C - c, onem, smooth), k1, scale), c, C - c), C - c);
#undef XENT_GRAD
}

static XENT_TARGET void XN(grad_row)(
    const T* e, const T* q, const T* w, ptrdiff_t C, T k1, T onem, T smooth, T scale, T* g, int nt, const T* dch, T inv
) {
    if (dch || inv != 1)
        XN(grad_row_impl)(e, q, w, C, k1, onem, smooth, scale, g, nt, dch, inv, 1);
    else
        XN(grad_row_impl)(e, q, w, C, k1, onem, smooth, scale, g, nt, NULL, 1, 0);
}

/* One value of a gradient row formed apart (at y or p), in double, through the chain rule
 * where the row is chained (as grad_row's). */
XI T XN(grad_value)(const xent_args* k, double v, const T* dch, ptrdiff_t c) {
    if (k->chain_inv != 0.0)
        v = v * (dch ? (double)dch[c] : 1.0) * (double)(T)k->chain_inv;
    return (T)v;
}

/* Loss of one row with class index y; its gradient times scale into g (NULL: none). */
static XENT_TARGET double XN(index_row)(
    const xent_args* k, const T* a, ptrdiff_t y, T* g, T* e, const T* next, const T* dch
) {
    const T* w = (const T*)k->w;
    ptrdiff_t C = k->C;
    double eps = k->eps, smooth = eps / C, w_y = w ? w[y] : 1.0, log_s, loss = 0.0, total_mass, t = 0.0;
    T m, a_y = a[y];  /* read before g, which may be a itself, is written */
    XN(sums_t) r;
    if (eps != 0.0) {
        /* the smoothing term's sum_c w_c (m - A_c), as the mass of q_c = 1 */
        XN(mass_t) mass = {NULL, w, NULL, 0, 1, 0.0, 0.0, 0};
        r = XN(max_sum_exp_mass)(a, C, g ? e : NULL, next, &mass, &m, y, 0);
        t = mass.t;
    } else {
        r = XN(max_sum_exp)(a, C, g ? e : NULL, &m, next, y, 0);
    }
    /* log s = log1p(s - 1): where A_y is the max, s - 1 keeps its digits however small */
    log_s = XN(log_s)(r);
    if ((1.0 - eps) * w_y != 0.0)
        /* (1 - eps) w_y (-log p_y): skipped at zero mass, where A_y may be -inf */
        loss = (1.0 - eps) * w_y * (((double)m - a_y) + log_s);
    if (eps != 0.0) {
        /* (eps / C) sum_c w_c (-log p_c) = (eps / C) (sum_c w_c (m - A_c) + log s sum_c w_c);
         * no mass adds nothing, even where log s is infinite (as in the probability rows) */
        loss += smooth * (t + (k->w_sum != 0.0 ? k->w_sum * log_s : 0.0));
    }
    /* the z-loss z lse^2 (unweighted), and its gradient's 2 z lse p_c: the p_c of the
     * gradient come with the factor sum_k w_k q_k + zz, zz = 2 z lse (0 without it) */
    double zz = XN(z_loss)(k, m, log_s, &loss);
    if (isnan(r.s))
        loss = NAN;  /* a NaN logit gives its sample NaN, even at zero target mass */
    if (g) {
        if (k->scale == 0.0) {
            memset(g, 0, C * sizeof(T));
            return loss;
        }
        /* dL/dA_c = scale (p_c sum_k w_k q_k - w_c q_c), q_c = eps / C off the target; without
         * smoothing q_c = 0 there, and a class of zero mass adds nothing, whatever its weight
         * (a NaN or inf w_c would otherwise turn 0 w_c into NaN) */
        total_mass = (1.0 - eps) * w_y + (eps != 0.0 ? smooth * k->w_sum : 0.0);
        XN(grad_row)(e, NULL, eps != 0.0 ? w : NULL, C, (T)(k->scale * (total_mass + zz) / r.s), 0, (T)smooth,
                     (T)k->scale, g, k->nt_store, dch, k->chain_inv != 0.0 ? (T)k->chain_inv : 1);
        /* ... and q_y = 1 - eps + eps / C on it */
        if (r.p >= 0 && a_y == m && isfinite(total_mass))
            /* y at the max (left out of s1): p_y - 1 = -(s - 1) / s, and sum_k w_k q_k - w_y q_y
             * = (eps / C)(sum_k w_k - w_y) (0 for C = 1, so that the gradient is then exactly 0) */
            g[y] = XN(grad_value)(k, k->scale * ((eps != 0.0 ? smooth * (k->w_sum - w_y) : 0.0) - total_mass * r.s1 / r.s + zz / r.s), dch, y);
        else
            /* (the same sum as total_mass for C = 1, so that the gradient is then exactly 0) */
            g[y] = XN(grad_value)(k, k->scale * (exp((double)a_y - m) / r.s * (total_mass + zz) - ((1.0 - eps) * w_y + smooth * w_y)), dch, y);
    }
    return loss;
}

/* Loss of one row with target probabilities Q, smoothed to (1 - eps) Q + eps / C. */
static XENT_TARGET double XN(prob_row)(
    const xent_args* k, const T* a, const T* q, T* g, T* e, const T* next, const T* next_q, const T* dch
) {
    ptrdiff_t C = k->C;
    double eps = k->eps, total_mass;
    T m;
    /* (the next row of Q prefetched only where rows are long: at C = 1000 it cost 30 %) */
    XN(mass_t) mass = {q, (const T*)k->w, C * (ptrdiff_t)sizeof(T) >= 16384 ? next_q : NULL,
                       (T)(1.0 - eps), (T)(eps / C), 0.0, 0.0, 0};
    XN(sums_t) r = XN(max_sum_exp_mass)(a, C, g ? e : NULL, next, &mass, &m, -1, 1);
    /* mass.total leaves out w_p q_p of the class p at the max */
    total_mass = r.p >= 0 ? mass.total + mass.wq_p : mass.total;
    /* loss = sum_c w_c q_c ((m - A_c) + log s), and the z-loss (as in index_row) */
    double log_s = XN(log_s)(r), loss = total_mass != 0.0 ? mass.t + total_mass * log_s : mass.t;
    double zz = XN(z_loss)(k, m, log_s, &loss);
    if (g) {
        if (k->scale == 0.0) {
            memset(g, 0, C * sizeof(T));
        } else {
            XN(grad_row)(
                e, q, (const T*)k->w, C, (T)(k->scale * (total_mass + zz) / r.s), (T)(1.0 - eps), (T)(eps / C),
                (T)k->scale, g, k->nt_store, dch, k->chain_inv != 0.0 ? (T)k->chain_inv : 1
            );
            if (r.p >= 0 && isfinite(total_mass))
                /* at the max: p_p sum_k w_k q_k - w_p q_p = sum_{k != p} w_k q_k - sum_k w_k q_k (s - 1) / s */
                g[r.p] = XN(grad_value)(k, k->scale * (mass.total - total_mass * r.s1 / r.s + zz / r.s), dch, r.p);
        }
    }
    /* a NaN logit gives NaN, even at zero mass */
    return isnan(r.s) ? NAN : loss;
}

#if XENT_AVX512 && XENT_F32
/* In-register transposes of a block of 16 contiguous rows of C <= 16 classes, two ways;
 * both exact (bits move, nothing is computed); gathers and scatters were slower (v3).
 *
 * C >= XENT_TR16_C: each row a masked load into one vector (classes past C are 0), a 16 x 16
 * transpose (unpack ps, unpack pd, two 128-bit lane shuffles: 64 shuffles), and back the same
 * way with masked stores.
 *
 * Fewer classes (the block is 16 C floats = C vectors): class c of row l is float f = l C + c
 * of the block, lane f & 15 of vector f >> 4. In: vector c of classes gathers its 16 lanes from
 * the vector pairs (2p, 2p + 1), one masked vpermt2ps per pair, index f & 31; out: the same
 * from pairs of class vectors: about C (C + 1) / 2 permutes each way, fewer than the 16 x 16
 * transposes' for C <= 6 (measured, (65536, C) with the gradient, times the copy: C = 2 13.8x
 * against 21.9x, C = 6 8.7x against 9.2x; C = 7 10.9x against 9.8x; C = 10 10.3x against 8.9x). */
#define XENT_TR_C 16
#define XENT_TR16_C 7

XI void XN(tr16)(__m512* r) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#define XENT_PD(f, a, b) _mm512_castpd_ps(f(_mm512_castps_pd(a), _mm512_castps_pd(b)))
    for (int i = 0; i < 16; i += 4) {
        r[i] = XENT_PD(_mm512_unpacklo_pd, t[i], t[i + 2]);
        r[i + 1] = XENT_PD(_mm512_unpackhi_pd, t[i], t[i + 2]);
        r[i + 2] = XENT_PD(_mm512_unpacklo_pd, t[i + 1], t[i + 3]);
        r[i + 3] = XENT_PD(_mm512_unpackhi_pd, t[i + 1], t[i + 3]);
    }
#undef XENT_PD
    for (int h = 0; h < 16; h += 8)
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
            t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
}

typedef struct {
    __m512i in_idx[XENT_TR_C], out_idx[XENT_TR_C];
    __mmask16 in_mask[XENT_TR_C][XENT_TR_C / 2], out_mask[XENT_TR_C][XENT_TR_C / 2];
} XN(trp_t);

static XENT_TARGET void XN(trp_init)(XN(trp_t)* t, ptrdiff_t C) {
    memset(t, 0, sizeof(*t));
    for (ptrdiff_t c = 0; c < C; c++) {
        int32_t idx[16];
        for (ptrdiff_t l = 0; l < 16; l++) {
            ptrdiff_t f = l * C + c;
            idx[l] = (int32_t)(f & 31);
            t->in_mask[c][f >> 5] |= (__mmask16)(1u << l);
        }
        t->in_idx[c] = _mm512_loadu_si512(idx);
    }
    for (ptrdiff_t j = 0; j < C; j++) {
        int32_t idx[16];
        for (ptrdiff_t f = 0; f < 16; f++) {
            ptrdiff_t g = 16 * j + f, l = g / C, c = g % C;
            idx[f] = (int32_t)(l + 16 * (c & 1));
            t->out_mask[j][c >> 1] |= (__mmask16)(1u << f);
        }
        t->out_idx[j] = _mm512_loadu_si512(idx);
    }
}

/* out[c] = class c of the 16 rows at src (16 C contiguous floats). */
XI void XN(trp_in)(const XN(trp_t)* t, const T* src, ptrdiff_t C, V* out) {
    __m512 r[XENT_TR_C];
    for (ptrdiff_t j = 0; j < C; j++)
        r[j] = _mm512_loadu_ps(src + 16 * j);
    for (ptrdiff_t c = 0; c < C; c++) {
        __m512 acc = _mm512_setzero_ps();
        for (ptrdiff_t p = 0; 2 * p < C; p++)
            acc = _mm512_or_ps(acc, _mm512_maskz_permutex2var_ps(t->in_mask[c][p], r[2 * p], t->in_idx[c],
                                                                 r[2 * p + 1 < C ? 2 * p + 1 : 2 * p]));
        out[c] = (V)acc;
    }
}

/* The 16 rows at dst (16 C contiguous floats) from their classes in[c]. */
XI void XN(trp_out)(const XN(trp_t)* t, const V* in, ptrdiff_t C, T* dst) {
    for (ptrdiff_t j = 0; j < C; j++) {
        __m512 acc = _mm512_setzero_ps();
        for (ptrdiff_t q = 0; 2 * q < C; q++)
            acc = _mm512_or_ps(acc, _mm512_maskz_permutex2var_ps(t->out_mask[j][q], (__m512)in[2 * q], t->out_idx[j],
                                                                 (__m512)in[2 * q + 1 < C ? 2 * q + 1 : 2 * q]));
        _mm512_storeu_ps(dst + 16 * j, acc);
    }
}

/* out[c] = class c of the 16 rows at src (rows of C contiguous floats). */
XI void XN(tr_in)(const T* src, ptrdiff_t C, V* out) {
    __m512 r[16];
    __mmask16 mask = (__mmask16)((1u << C) - 1);
    for (ptrdiff_t l = 0; l < 16; l++)
        r[l] = _mm512_maskz_loadu_ps(mask, src + l * C);
    XN(tr16)(r);
    for (ptrdiff_t c = 0; c < C; c++)
        out[c] = (V)r[c];
}

/* The 16 rows at dst (rows of C contiguous floats) from their classes in[c]. */
XI void XN(tr_out)(const V* in, ptrdiff_t C, T* dst) {
    __m512 r[16];
    __mmask16 mask = (__mmask16)((1u << C) - 1);
    for (ptrdiff_t c = 0; c < 16; c++)
        r[c] = c < C ? (__m512)in[c] : _mm512_setzero_ps();
    XN(tr16)(r);
    for (ptrdiff_t l = 0; l < 16; l++)
        _mm512_mask_storeu_ps(dst + l * C, mask, r[l]);
}
#endif

/* Unroll the loop over the classes that follows (all of it where C is a constant). */
#define XENT_UNROLL _Pragma("GCC unroll 16")

/* Few classes: the rows [r0, r0 + W) go one per lane, classes in a loop, so
 * that every vector operation is useful. A block of W rows, transposed: at[c] holds class c
 * of the W rows (the logits, then exp(A_c - m), then the gradient), qt[c] the targets'
 * probabilities (then w_c q_c), and per lane: */
typedef struct {
    IV y;     /* the class index, -1 where ignored (or past the last row), -2 where it is
               * outside [0, C) (such a row reads nothing and gets NaN) */
    IV keep;  /* the rows that count (a class index in [0, C)) */
    V a_y;    /* A_y, and w_y (0 where not kept) */
    V w_y;
} XN(lanes_t);

/* The block in, one value at a time into lane buffers, then assigned to the vectors whole
 * (indexing their lanes would keep them in memory on every path); lanes past the last row
 * repeat row r0 and are never stored. */
XI XN(lanes_t) XN(small_load)(const xent_args* k, ptrdiff_t r0, ptrdiff_t nl, const ptrdiff_t C, V* at, V* qt) {
    const T* w = (const T*)k->w;
    V ab[XENT_SMALL_C], qb[XENT_SMALL_C], zero = XN(splat)(0);
    XN(lanes_t) ln = {(IV){0} - 1, (IV){0}, zero, zero};
    for (ptrdiff_t l = 0; l < W; l++) {
        ptrdiff_t i = r0 + (l < nl ? l : 0);
        const T* a = ROW(k->A, k->a_stride, i);
        for (ptrdiff_t c = 0; c < C; c++)
            ab[c][l] = a[c];
        if (k->Q) {
            const T* q = ROW(k->Q, k->q_stride, i);
            for (ptrdiff_t c = 0; c < C; c++)
                qb[c][l] = q[c];
        } else if (k->y[i] != k->ignore_index) {
            if ((size_t)k->y[i] < (size_t)C) {
                ln.y[l] = (XN(int_t))k->y[i];
                ln.keep[l] = -1;
                ln.a_y[l] = a[k->y[i]];
                ln.w_y[l] = w ? w[k->y[i]] : 1;
            } else {
                ln.y[l] = -2;  /* outside [0, C): read nothing, a NaN row */
            }
        }
    }
    XENT_UNROLL
    for (ptrdiff_t c = 0; c < C; c++) {
        at[c] = ab[c];
        qt[c] = k->Q ? qb[c] : zero;
    }
    return ln;
}

#if XENT_AVX512 && XENT_F32
/* The block in through the in-register transposes (a whole block of contiguous rows), and
 * the targets without a scalar loop. */
XI XN(lanes_t) XN(small_load_transposed)(const xent_args* k, const XN(trp_t)* trp, ptrdiff_t r0, const ptrdiff_t C,
                                         V* at, V* qt) {
    const T* w = (const T*)k->w;
    V zero = XN(splat)(0);
    XN(lanes_t) ln = {(IV){0} - 1, (IV){0}, zero, zero};
    if (C >= XENT_TR16_C)
        XN(tr_in)(ROW(k->A, k->a_stride, r0), C, at);
    else
        XN(trp_in)(trp, ROW(k->A, k->a_stride, r0), C, at);
    if (k->Q) {
        if (C >= XENT_TR16_C)
            XN(tr_in)(ROW(k->Q, k->q_stride, r0), C, qt);
        else
            XN(trp_in)(trp, ROW(k->Q, k->q_stride, r0), C, qt);
        return ln;
    }
    /* kept lanes, y (-1 where ignored), A_y, w_y */
    __m512i ign = _mm512_set1_epi64((long long)k->ignore_index);
    __m512i y0 = _mm512_loadu_si512(k->y + r0), y1 = _mm512_loadu_si512(k->y + r0 + 8);
    __m512i nc = _mm512_set1_epi64((long long)C);
    __mmask16 kept = _mm512_kunpackb(_mm512_cmpneq_epi64_mask(y1, ign), _mm512_cmpneq_epi64_mask(y0, ign));
    /* kept indices outside [0, C) (unsigned: negative ones too) read nothing: NaN rows */
    __mmask16 oob = kept & _mm512_kunpackb(_mm512_cmpge_epu64_mask(y1, nc), _mm512_cmpge_epu64_mask(y0, nc));
    __m512i y32 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(y0)),
                                     _mm512_cvtepi64_epi32(y1), 1);
    kept &= (__mmask16)~oob;
    ln.y = (IV)_mm512_mask_mov_epi32(_mm512_set1_epi32(-1), kept, y32);
    ln.y = (IV)_mm512_mask_mov_epi32((__m512i)ln.y, oob, _mm512_set1_epi32(-2));
    ln.keep = (IV)_mm512_movm_epi32(kept);
    ln.w_y = w ? zero : (V)_mm512_maskz_mov_ps(kept, _mm512_set1_ps(1.0f));
    XENT_UNROLL
    for (ptrdiff_t c = 0; c < C; c++) {
        IV is_c = ln.y == (IV){0} + (int32_t)c;
        ln.a_y = XN(select)(is_c, at[c], ln.a_y);
        if (w)
            ln.w_y = XN(select)(is_c, XN(splat)(w[c]), ln.w_y);
    }
    return ln;
}
#endif

/* What every block of a call shares, computed once. */
typedef struct {
    const T* w;
    T onem, smooth, scale;  /* 1 - eps, eps / C, the gradient's factor */
    int smoothing;          /* eps != 0 (eps = 0 where eps / C rounds to 0 in T, xentcy._checks:
                             * smooth != 0 with smoothing) */
} XN(small_call_t);

/* What the loss of a block leaves for its gradient. */
typedef struct {
    V s, s1;      /* s = sum_c exp(A_c - m), and s - 1 with its digits however small */
    V total;      /* sum_c w_c q_c */
    V zz;         /* 2 z lse, the z-loss's factor of p_c in the gradient (0 without one) */
    V fill;       /* what a row that is not computed holds: 0 where ignored, NaN for a bad index */
    IV at_max;    /* class indices: the lanes whose target is at the (finite) max */
} XN(block_sums_t);

/* The losses of a block; at[c] becomes exp(A_c - m) and qt[c] w_c q_c (probabilities). */
XI V XN(small_loss)(const xent_args* k, const XN(small_call_t)* sc, const XN(lanes_t)* ln, const ptrdiff_t C, V* at,
                    V* qt, XN(block_sums_t)* out) {
    const T* w = sc->w;
    const T onem = sc->onem, smooth = sc->smooth;
    const int smoothing = sc->smoothing;
    V m = XN(splat)(-INFINITY), zero = XN(splat)(0), s = zero, t = zero, total = zero, loss;
    /* m = max_c A_c, a non-finite max shifting by 0 */
    XENT_UNROLL
    for (ptrdiff_t c = 0; c < C; c++)
        m = XN(max)(at[c], m);
    IV m_finite = XN(isfinite)(m);
    m = XN(select)(m_finite, m, zero);
    /* (each loop over the classes tests nothing inside, so that for a constant C it
     * unrolls and the class vectors stay in registers) */
    if (k->Q) {
        /* w_c q_c, and t = sum_c w_c q_c (m - A_c) over the classes of nonzero mass */
        XENT_UNROLL
        for (ptrdiff_t c = 0; c < C; c++) {
            V wq = (qt[c] * onem + smooth) * (w ? w[c] : 1);
            qt[c] = wq;
            total += wq;
            t += XN(select)(wq != 0, wq * (m - at[c]), zero);
        }
    } else if (smoothing) {
        /* t = sum_c w_c (m - A_c), for the smoothing term */
        for (ptrdiff_t c = 0; c < C; c++)
            if ((w ? w[c] : 1) != 0)
                t += (m - at[c]) * (w ? w[c] : 1);
    }
    /* at[c] becomes exp(A_c - m); s = sum_c exp(A_c - m), and s1 = s - 1 with its digits
     * however small: summed apart from the terms at the max, which are exactly 1 */
    V s1;
    IV at_max = (IV){0};
    if (k->Q) {
        /* every class at the max left out of s and counted */
        IV n_max = (IV){0};
        XENT_UNROLL
        for (ptrdiff_t c = 0; c < C; c++) {
            V x = at[c] - m;
            IV is_max = x == 0;
            at[c] = XN(exp)(x);
            s += XN(select)(is_max, zero, at[c]);
            n_max -= is_max;
        }
        /* the count as a float, through the magic number (it is small) */
        V kf = (V)((UV)n_max | (UV)XN(splat)(XENT_MAGIC)) - XENT_MAGIC;
        s1 = (kf - 1) + s;
        s = kf + s;
    } else {
        /* the target's term left out of s where it is the max: there at[y] = 0 */
        at_max = ln->keep & m_finite & (ln->a_y == m);
        IV y_max = ln->y | ~at_max, cv = (IV){0};  /* y there, -1 elsewhere; cv: c in every lane */
        XENT_UNROLL
        for (ptrdiff_t c = 0; c < C; c++) {
            at[c] = XN(select)(y_max == cv, zero, XN(exp)(at[c] - m));
            s += at[c];
            cv += 1;
        }
        s1 = XN(select)(at_max, s, s - 1);
        s = XN(select)(at_max, s + 1, s);
    }
    V log_s = XN(log1p_of)(s, s1), wy1 = onem * ln->w_y, zz = zero, z_term = zero;
    V fill = (V)((ln->y == -2) & (IV)XN(splat)(NAN));
    if (k->z_loss != 0.0) {
        /* the z-loss z lse^2, lse = m + log s, as in index_row */
        V lse = m + log_s;
        z_term = (T)k->z_loss * lse * lse;
        zz = (T)(2.0 * k->z_loss) * lse;
    }
    if (k->Q) {
        /* loss = sum_c w_c q_c ((m - A_c) + log s) */
        /* s - s: 0, or NaN where a logit is NaN (or +inf), which then gives NaN even at zero mass */
        loss = XN(select)(total != 0, t + total * log_s, t + (s - s));
        if (k->z_loss != 0.0)
            loss += z_term;
    } else {
        /* (1 - eps) w_y ((m - A_y) + log s), skipped at zero mass, and
         * the smoothing term (eps / C) (sum_c w_c (m - A_c) + log s sum_c w_c) */
        loss = XN(select)(wy1 != 0, wy1 * ((m - ln->a_y) + log_s), s - s);  /* s - s: as above */
        if (smoothing)
            loss += smooth * (t + (k->w_sum != 0 ? (T)k->w_sum * log_s : zero));
        if (k->z_loss != 0.0)
            loss += z_term;
        loss = XN(select)(ln->keep, loss, fill);
        /* without smoothing, a weight of a class of zero mass (NaN or inf too) adds nothing */
        total = smoothing ? wy1 + smooth * (T)k->w_sum : wy1;
    }
    out->s = s;
    out->s1 = s1;
    out->total = total;
    out->zz = zz;
    out->fill = fill;
    out->at_max = at_max;
    return loss;
}

/* The gradient of a block into at[c]: dL/dA_c = scale (p_c sum_k w_k q_k - w_c q_c), as the
 * row path forms it. */
XI void XN(small_gradient)(const xent_args* k, const XN(small_call_t)* sc, const XN(lanes_t)* ln,
                           const XN(block_sums_t)* b, const ptrdiff_t C, V* at, const V* qt) {
    const T* w = sc->w;
    const T onem = sc->onem, smooth = sc->smooth, scale = sc->scale;
    const int smoothing = sc->smoothing;
    /* (the z-loss's terms only where there is one: a vector add a block is 2 % at C = 3) */
    V zero = XN(splat)(0), s = b->s, s1 = b->s1, total = k->z_loss != 0.0 ? b->total + b->zz : b->total, fill = b->fill;
    V k1 = 1 / s * total, mass;
    if (scale == 0) {
        for (ptrdiff_t c = 0; c < C; c++)
            at[c] = fill;
    } else if (k->Q) {
        /* k1 + k1_lo = sum_k w_k q_k / s to twice the precision (k1 >= total / 2 where
         * s <= 2, so total - k1 is exact; 0 where not finite): at a class at the max,
         * e_c = 1, so (k1 - w_c q_c) is exact too, and the gradient keeps its digits
         * where w_c q_c is all of the mass (one-hot targets). total (s - 1) / s as
         * (s - 1) k1: no second division (one costs more than the rest of a C = 3 row's
         * gradient), and what it leaves out, (s - 1) k1_lo, is below ulp(k1_lo) */
        V k1_lo = (total - k1) - s1 * k1;
        k1_lo = XN(select)(XN(isfinite)(k1_lo), k1_lo, zero);
        XENT_UNROLL
        for (ptrdiff_t c = 0; c < C; c++)
            at[c] = scale * ((at[c] * k1 - qt[c]) + at[c] * k1_lo);
    } else {
        V mass_y = onem * ln->w_y + smooth * ln->w_y;
        /* where y is at the max (at[y] = 0 there), the mass that makes its gradient
         * (eps / C)(sum_k w_k - w_y) - total (s - 1) / s: p_y - 1 = -(s - 1) / s, and
         * total (s - 1) / s = (s - 1) k1 (no second division) */
        V delta = smoothing ? smooth * ((T)k->w_sum - ln->w_y) : zero;
        /* (with a z-loss, total holds zz too: k1 = (sum_k w_k q_k + zz) / s, and at the max
         * p_y zz = zz - zz (s - 1) / s) */
        mass_y = XN(select)(b->at_max, k->z_loss != 0.0 ? s1 * k1 - delta - b->zz : s1 * k1 - delta, mass_y);
        const T* w_off = smoothing ? w : NULL;  /* off the target, q_c = 0 without smoothing */
        XENT_UNROLL
        for (ptrdiff_t c = 0; c < C; c++) {
            mass = XN(select)(ln->y == (IV){0} + (XN(int_t))c, mass_y, XN(splat)((w_off ? w_off[c] : 1) * smooth));
            at[c] = XN(select)(ln->keep, scale * (at[c] * k1 - mass), fill);
        }
    }
}

/* The block's gradient out, one value at a time from lane buffers (nl rows). */
XI void XN(small_store)(const xent_args* k, ptrdiff_t r0, ptrdiff_t nl, const ptrdiff_t C, const V* at) {
    V gb[XENT_SMALL_C];
    XENT_UNROLL
    for (ptrdiff_t c = 0; c < C; c++)
        gb[c] = at[c];
    for (ptrdiff_t l = 0; l < nl; l++) {
        T* g = OUT_ROW(k->rows_out, k->rows_out_stride, r0 + l);
        for (ptrdiff_t c = 0; c < C; c++)
            g[c] = gb[c][l];
    }
}

XI void XN(cross_entropy_small_impl)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, const ptrdiff_t C) {
    const XN(small_call_t) sc = {(const T*)k->w, (T)(1.0 - k->eps), (T)(k->eps / k->C), (T)k->scale, k->eps != 0.0};
    V at[XENT_SMALL_C], qt[XENT_SMALL_C];
    double* loss_out = (double*)k->per_row_out;
#if XENT_AVX512 && XENT_F32
    /* contiguous rows (and gradient rows): whole blocks go through the in-register transposes */
    ptrdiff_t row_bytes = C * (ptrdiff_t)sizeof(T);
    int tr = C <= XENT_TR_C && k->a_stride == row_bytes && (!k->Q || k->q_stride == row_bytes) &&
             (!k->rows_out || k->rows_out_stride == row_bytes);
    XN(trp_t) trp;
    if (tr && C < XENT_TR16_C)
        XN(trp_init)(&trp, C);
#endif
    for (ptrdiff_t r0 = begin; r0 < end; r0 += W) {
        ptrdiff_t nl = end - r0 < W ? end - r0 : W;
        int transposed = 0;  /* the block came in (and goes out) through the transposes */
        XN(lanes_t) ln;
#if XENT_AVX512 && XENT_F32
        transposed = tr && nl == W;
        if (transposed)
            ln = XN(small_load_transposed)(k, &trp, r0, C, at, qt);
        else
#endif
            ln = XN(small_load)(k, r0, nl, C, at, qt);
        XN(block_sums_t) sums;
        V loss = XN(small_loss)(k, &sc, &ln, C, at, qt, &sums);
        for (ptrdiff_t l = 0; l < nl; l++)
            loss_out[r0 + l] = (double)loss[l];
        if (!k->rows_out)
            continue;
        XN(small_gradient)(k, &sc, &ln, &sums, C, at, qt);
#if XENT_AVX512 && XENT_F32
        if (transposed) {
            if (C >= XENT_TR16_C)
                XN(tr_out)(at, C, OUT_ROW(k->rows_out, k->rows_out_stride, r0));
            else
                XN(trp_out)(&trp, at, C, OUT_ROW(k->rows_out, k->rows_out_stride, r0));
            continue;
        }
#endif
        (void)transposed;
        XN(small_store)(k, r0, nl, C, at);
    }
}

static XENT_TARGET void XN(cross_entropy_small)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end) {
#if XENT_AVX512 && XENT_F32
    switch (k->C) {
#define XENT_SMALL_CASE(n) case n: XN(cross_entropy_small_impl)(k, begin, end, n); return;
    XENT_SMALL_CASE(2) XENT_SMALL_CASE(3) XENT_SMALL_CASE(4) XENT_SMALL_CASE(5) XENT_SMALL_CASE(6)
    XENT_SMALL_CASE(7) XENT_SMALL_CASE(8) XENT_SMALL_CASE(9) XENT_SMALL_CASE(10) XENT_SMALL_CASE(11)
    XENT_SMALL_CASE(12) XENT_SMALL_CASE(13) XENT_SMALL_CASE(14) XENT_SMALL_CASE(15) XENT_SMALL_CASE(16)
#undef XENT_SMALL_CASE
    }
#endif
    XN(cross_entropy_small_impl)(k, begin, end, k->C);
}

/* scratch: room for C + C / 64 + 2 values, for this thread alone. */
static XENT_TARGET void XN(cross_entropy)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, void* scratch) {
    double* loss = (double*)k->per_row_out;
    if (k->C <= XENT_SMALL_C) {
        XN(cross_entropy_small)(k, begin, end);
        return;
    }
    for (ptrdiff_t i = begin; i < end; i++) {
        const T* a = ROW(k->A, k->a_stride, i);
        T* g = k->rows_out ? OUT_ROW(k->rows_out, k->rows_out_stride, i) : NULL;
        const T* next = i + XENT_PF_DIST < end ? ROW(k->A, k->a_stride, i + XENT_PF_DIST)
                        : k->prefetch_after ? (const T*)k->prefetch_after : a;
        const T* dch = k->chain_d ? ROW(k->chain_d, k->chain_stride, i) : NULL;
        if (k->Q) {
            loss[i] = XN(prob_row)(k, a, ROW(k->Q, k->q_stride, i), g, (T*)scratch, next,
                                   ROW(k->Q, k->q_stride, i + 1 < end ? i + 1 : i), dch);
        } else if (k->y[i] == k->ignore_index) {
            loss[i] = 0.0;
            if (k->C * (ptrdiff_t)sizeof(T) <= XENT_ROW_L2_BYTES) {
                /* An ignored row is still read (its max, from L2, where the row before sent
                 * it), and sends the next row on its way, as a computed row does. Skipping
                 * it made the rows after it slower than the work saved: (8192, 1000) with
                 * one row in 7 ignored took 2.7 ms forward against 2.0 ms with none ignored,
                 * and 1.8 ms so (benchmarks/cpu-notes.md, v11). */
                volatile T row_max = XN(row_max)(a, k->C);
                (void)row_max;
                XN(prefetch_row)(next, k->C);
            }
            if (g)
                memset(g, 0, k->C * sizeof(T));
        } else if ((size_t)k->y[i] >= (size_t)k->C) {
            /* an index outside [0, C) (the checks above raise for it; this is the second line)
             * is never read or written through: the row's loss and gradient are NaN */
            loss[i] = NAN;
            if (g)
                for (ptrdiff_t c = 0; c < k->C; c++)
                    g[c] = (T)NAN;
        } else {
            loss[i] = XN(index_row)(k, a, k->y[i], g, (T*)scratch, next, dch);
        }
    }
#if XENT_X86
    if (k->nt_store)
        _mm_sfence();  /* the streamed stores are visible before the threads join */
#endif
}

/* One row of the logits' transform: x = A / temperature, then, where cap > 0, cap tanh(x / cap)
 * into z, and 1 - tanh(x / cap)^2 (its derivative's factor) into d unless d is NULL. Both
 * divisions are multiplications by the reciprocal, inv = 1 / temperature and inv_tc =
 * 1 / (temperature cap) formed in double (within an ulp or so of the divisions; a vector
 * division cost about as much as the whole loss: 1.85x the plain call with them, cpu-notes v21). */
XI void XN(transform_vec)(const T* a, ptrdiff_t c, ptrdiff_t n, T inv, T inv_tc, T cap, T* z, T* d) {
    V x = n == W ? XN(load)(a + c) : XN(load_part)(a + c, n, 0), dv;
    if (cap > 0) {
        x = cap * XN(tanh_impl)(x * inv_tc, &dv);
        if (d) {
            if (n == W)
                XN(store)(d + c, dv);
            else
                XN(store_part)(d + c, dv, n);
        }
    } else {
        x = x * inv;
    }
    if (n == W)
        XN(store)(z + c, x);
    else
        XN(store_part)(z + c, x, n);
}

static XENT_TARGET void XN(transform_row)(const T* a, ptrdiff_t C, T inv, T inv_tc, T cap, T* z, T* d) {
    ptrdiff_t c = 0;
    for (; c + W <= C; c += W)
        XN(transform_vec)(a, c, W, inv, inv_tc, cap, z, d);
    if (c < C)
        XN(transform_vec)(a, c, C - c, inv, inv_tc, cap, z, d);
}

/* One gradient row through the chain rule, from gz (dL/dz) into g, streamed where nt (as grad_row). */
static XENT_TARGET void XN(chain_row)(const T* gz, const T* d, ptrdiff_t C, T inv, T* g, int nt) {
    ptrdiff_t c = 0, head = XN(stream_head)(g, C, &nt);
    if (head > 0) {
        XN(store_part)(g, XN(chain_expr)(XN(load_part)(gz, head, 0), d, 0, head, inv), head);
        c = head;
    }
    if (nt) {
        for (; c + W <= C; c += W)
            XN(stream)(g + c, XN(chain_expr)(XN(load)(gz + c), d, c, W, inv));
    } else {
        for (; c + W <= C; c += W)
            XN(store)(g + c, XN(chain_expr)(XN(load)(gz + c), d, c, W, inv));
    }
    if (c < C)
        XN(store_part)(g + c, XN(chain_expr)(XN(load_part)(gz + c, C - c, 0), d, c, C - c, inv), C - c);
}

/* The cross-entropy of transformed logits (k->temperature != 1 or k->softcap > 0): a chunk
 * of xent_tx_rows rows at a time, the transformed rows z (and the soft-cap's derivative d)
 * into this thread's scratch, then the plain kernel over them, its gradient dL/dz into the
 * scratch too, then the chain rule into the gradient's rows. Everything but A and G stays
 * in the caches (a chunk is XENT_TX_BYTES a buffer), so A is read and G written once, as
 * without the transform. scratch: xent_tx_scratch(C) values. */
static XENT_TARGET void XN(cross_entropy_tx)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, void* scratch) {
    ptrdiff_t C = k->C, R = xent_tx_rows(C, sizeof(T)), row_bytes = C * (ptrdiff_t)sizeof(T);
    T *z = (T*)scratch, *d = z + R * C, *gz = d + R * C;
    const T inv = (T)(1.0 / k->temperature), cap = (T)k->softcap;
    const T inv_tc = k->softcap > 0 ? (T)(1.0 / (k->temperature * k->softcap)) : 0;
    const int want = k->rows_out != NULL, capped = k->softcap > 0, few = C <= XENT_SMALL_C;
    double* loss = (double*)k->per_row_out;
    for (ptrdiff_t r0 = begin; r0 < end; r0 += R) {
        ptrdiff_t n = end - r0 < R ? end - r0 : R;
        for (ptrdiff_t i = 0; i < n; i++)
            XN(transform_row)(ROW(k->A, k->a_stride, r0 + i), C, inv, inv_tc, cap, z + i * C,
                              want && capped ? d + i * C : NULL);
        /* the rows of the chunk, as a call of their own on the transformed logits */
        xent_args sub = *k;
        sub.A = (const char*)z;
        sub.a_stride = row_bytes;
        sub.y = k->y ? k->y + r0 : NULL;
        sub.Q = k->Q ? k->Q + r0 * k->q_stride : NULL;
        sub.rows_out = want ? (char*)gz : NULL;
        sub.rows_out_stride = row_bytes;
        sub.per_row_out = loss + r0;
        sub.nt_store = 0;
        if (want && !few) {
            /* the row kernels form the gradient through the chain rule as they write it,
             * into G itself (no dL/dz buffer, no pass of its own: softcap 1.9x the plain
             * call against 2.2x with them, cpu-notes v21) */
            sub.rows_out = k->rows_out + r0 * k->rows_out_stride;
            sub.rows_out_stride = k->rows_out_stride;
            sub.nt_store = k->nt_store;
            sub.chain_d = capped ? (const char*)d : NULL;
            sub.chain_stride = row_bytes;
            sub.chain_inv = 1.0 / k->temperature;
        }
        /* the chunk's last row prefetches the next chunk's first row of A, as the plain
         * kernel's rows prefetch the next (without it the transform waited for memory:
         * softcap 2.4x the plain call against 2.0x, cpu-notes v21) */
        sub.prefetch_after = r0 + n < end ? (const void*)ROW(k->A, k->a_stride, r0 + n) : NULL;
        XN(cross_entropy)(&sub, 0, n, gz + R * C);
        if (!want || !few)
            continue;
        /* the few-class blocks: the chain rule in a pass of its own, from the chunk's dL/dz */
        for (ptrdiff_t i = 0; i < n; i++) {
            T* g = OUT_ROW(k->rows_out, k->rows_out_stride, r0 + i);
            if (k->scale == 0.0 || (k->y && k->y[r0 + i] == k->ignore_index))
                /* exactly 0, whatever the logits (a NaN logit's derivative is NaN) */
                memset(g, 0, row_bytes);
            else
                XN(chain_row)(gz + i * C, capped ? d + i * C : NULL, C, inv, g, k->nt_store);
        }
    }
#if XENT_X86
    if (k->nt_store && few)
        _mm_sfence();
#endif
}

/* tanh and 1 - tanh^2 of n values, for the tests of the vector tanh. */
static XENT_TARGET void XN(tanh_array)(const T* x, T* out, T* sech2, ptrdiff_t n) {
    ptrdiff_t c = 0;
    V d;
    for (; c + W <= n; c += W) {
        XN(store)(out + c, XN(tanh_impl)(XN(load)(x + c), &d));
        XN(store)(sech2 + c, d);
    }
    if (c < n) {
        XN(store_part)(out + c, XN(tanh_impl)(XN(load_part)(x + c, n - c, 0), &d), n - c);
        XN(store_part)(sech2 + c, d, n - c);
    }
}

/* softmax (or log_softmax where k->log_space) of each row into G. */
static XENT_TARGET void XN(softmax)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, void* scratch) {
    ptrdiff_t C = k->C;
    for (ptrdiff_t i = begin; i < end; i++) {
        const T* a = ROW(k->A, k->a_stride, i);
        T* o = OUT_ROW(k->rows_out, k->rows_out_stride, i);
        T m, *e = (T*)scratch;
        /* log_softmax: log s = log1p(s - 1), s - 1 kept exact however small (a class at the max
         * left out of it), so that log p = -log s keeps its digits at the max of a confident row */
        XN(sums_t) r = XN(max_sum_exp)(a, C, k->log_space ? NULL : e, &m, i + 1 < end ? ROW(k->A, k->a_stride, i + 1) : a,
                                       -1, k->log_space);
        V vm = XN(splat)(m), f = XN(splat)(k->log_space ? (T)XN(log_s)(r) : (T)(1.0 / r.s)), v;
        for (ptrdiff_t c = 0; c < C; c += W) {
            v = c + W <= C ? XN(load)(k->log_space ? a + c : e + c) : XN(load_part)(k->log_space ? a + c : e + c, C - c, 0);
            /* log p_c = (A_c - m) - log s; p_c = exp(A_c - m) / s */
            v = k->log_space ? (v - vm) - f : v * f;
            if (c + W <= C)
                XN(store)(o + c, v);
            else
                XN(store_part)(o + c, v, C - c);
        }
    }
}

/* log sum_c exp(A_c) = m + log s of each row into out. */
static XENT_TARGET void XN(logsumexp)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, void* scratch) {
    for (ptrdiff_t i = begin; i < end; i++) {
        T m;
        /* (log1p(s - 1), as in log_softmax: the digits of a tiny log s where m is 0 or small) */
        XN(sums_t) r = XN(max_sum_exp)(ROW(k->A, k->a_stride, i), k->C, NULL, &m,
                                       ROW(k->A, k->a_stride, i + 1 < end ? i + 1 : i), -1, 1);
        ((T*)k->per_row_out)[i] = (T)(m + XN(log_s)(r));
    }
}

/* exp of n values, for the tests of the vector exp. */
static XENT_TARGET void XN(exp_array)(const T* x, T* out, ptrdiff_t n) {
    ptrdiff_t c = 0;
    for (; c + W <= n; c += W)
        XN(store)(out + c, XN(exp)(XN(load)(x + c)));
    if (c < n)
        XN(store_part)(out + c, XN(exp)(XN(load_part)(x + c, n - c, 0)), n - c);
}

#include "xent_eval.h"

#undef XENT_VX
#undef XENT_NATIVE
#undef XENT_TR_C
#undef XENT_TR16_C
#undef XENT_UNROLL
#undef BLK
#undef XENT_EXP
#undef XENT_ROW_L2_BYTES
#undef ROW
#undef OUT_ROW
#undef T
#undef V
#undef IV
#undef UV
#undef W
#undef XI
#undef XENT_MANT
#undef XENT_BIAS
#undef XENT_MAGIC
