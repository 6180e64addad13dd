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

/* sum_{c < n} exp(A_c - shift), the terms also into e unless it is NULL:
 * float partial sums per block, double across blocks. bounded: every
 * A_c - shift <= 0 or NaN (shift is the row's finite max). */
XI double XN(sum_exp)(const T* a, ptrdiff_t n, T shift, T* e, const int bounded) {
    V vs = XN(splat)(shift), x0, x1;
    double s = 0.0;
#define XENT_EXP(v) (bounded ? XN(exp_le0)(v) : XN(exp)(v))
    for (ptrdiff_t c0 = 0; c0 < n; c0 += BLK) {
        ptrdiff_t end = c0 + BLK < n ? c0 + BLK : n, c = c0;
        V acc0 = XN(splat)(0), acc1 = XN(splat)(0);
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
        for (; c + W <= end; c += W) {
            x0 = XENT_EXP(XN(load)(a + c) - vs);
            acc0 += x0;
            if (e)
                XN(store)(e + c, x0);
        }
        if (c < end) {
            /* the padding is -inf: exp(-inf - shift) = 0 */
            x1 = XENT_EXP(XN(load_part)(a + c, end - c, -INFINITY) - vs);
            acc1 += x1;
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

/* max_c A_c: a NaN logit is never chosen (it shows up in the sum). */
static XENT_TARGET T XN(row_max)(const T* a, ptrdiff_t C) {
    V m0 = XN(splat)(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    ptrdiff_t c = 0;
    for (; c + 4 * W <= C; c += 4 * W) {
        m0 = XN(max)(XN(load)(a + c), m0);
        m1 = XN(max)(XN(load)(a + c + W), m1);
        m2 = XN(max)(XN(load)(a + c + 2 * W), m2);
        m3 = XN(max)(XN(load)(a + c + 3 * W), m3);
    }
    for (; c + W <= C; c += W)
        m0 = XN(max)(XN(load)(a + c), m0);
    if (c < C)
        m1 = XN(max)(XN(load_part)(a + c, C - c, -INFINITY), m1);
    return XN(hmax)(XN(max)(XN(max)(m0, m1), XN(max)(m2, m3)));
}

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
 * over the classes of nonzero mass (A_c may be -inf where the mass is 0), tot += w_c q_c. */
typedef struct {
    const T* q;
    const T* w;
    const T* next_q;  /* the next row of Q, prefetched meanwhile (NULL: left to the hardware) */
    T onem, smooth;
    double t, total;
} XN(mass_t);

XI void XN(mass_acc)(V* acc_t, V* acc_m, V wq, V vm, V a) {
    *acc_t += XN(select)(wq != 0, wq * (vm - a), XN(splat)(0));
    *acc_m += wq;
}

/* g_c = k1 e_c - scale w_c q_c: one vector of a gradient row (one expression for every
 * loop that forms it, so that a row's gradient is the same whichever loop wrote it). */
XI V XN(grad_expr)(V e, V mass, T k1, T scale) { return e * k1 - mass * scale; }

/* sum_c exp(A_c - m) for the row's finite max m, the terms into e unless it is
 * NULL, four vectors at a time; the next row (next, same length) is prefetched
 * meanwhile. Float partial sums per block of BLK classes, double across blocks.
 * mass (an always_inline constant pointer, NULL or not): the target mass too,
 * so that A and Q are each read once in this pass. */
XI double XN(sum_exp_le0_impl)(
    const T* a, ptrdiff_t C, T m, T* e, const T* next, XN(mass_t)* mass
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
        for (; c + W <= end; c += W) {
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
            acc1 += x1;
            if (e)
                XN(store_part)(e + c, x1, end - c);
            if (mass)
                /* the padding has zero mass */
                XN(mass_acc)(&mt1, &mm1, XN(target_mass_part)(mass->q, mass->w, c, end - c, mass->onem, mass->smooth),
                             vm, a1);
        }
        s += XN(hsum)((acc0 + acc1) + (acc2 + acc3));
        if (mass) {
            mass->t += XN(hsum)(mt0 + mt1);
            mass->total += XN(hsum)(mm0 + mm1);
        }
    }
    return s;
}

static XENT_TARGET double XN(sum_exp_le0)(const T* a, ptrdiff_t C, T m, T* e, const T* next) {
    return XN(sum_exp_le0_impl)(a, C, m, e, next, NULL);
}

static XENT_TARGET double XN(sum_exp_le0_mass)(const T* a, ptrdiff_t C, T m, T* e, const T* next, XN(mass_t)* mass) {
    return XN(sum_exp_le0_impl)(a, C, m, e, next, mass);
}

/* Rows of at most this many bytes are read three times (max, exp, gradient),
 * from L2 after the first: the row, its terms e and the next row fit there (3 x 256 KiB
 * of a 1 MiB L2: float64 at C = 32000 is 250 KiB a row, and went from 2.7x to 1.6x the copy
 * when it left the one-pass path below, which was sized for 192 KiB). */
#define XENT_ROW_L2_BYTES (256 * 1024)

/* The rows too long for L2: one pass over memory, per block its max first,
 * then its sum from L1, s rescaled by exp(m_old - m_new) whenever m grows.
 * e[C, ...) holds the shift of each block meanwhile. */
static XENT_TARGET void XN(max_sum_exp_long)(const T* a, ptrdiff_t C, T* e, T* m_out, double* s_out) {
    T m = -INFINITY, *shifts = e ? e + C : NULL;
    double s = 0.0;
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
            if (s != 0.0 && isfinite(m))
                s *= exp((double)m - (double)block_max);
            m = block_max;
        }
        if (shifts)
            shifts[c0 / BLK] = isfinite(m) ? m : 0;
        if (isfinite(m))
            s += XN(sum_exp)(b, n, m, e ? e + c0 : NULL, 1);
        else
            s += XN(sum_exp)(b, n, 0, e ? e + c0 : NULL, 0);
    }
    if (!isfinite(m)) {
        /* all -inf, or a +inf logit: shift by 0, as the definition says */
        m = 0;
        s = XN(sum_exp)(a, C, 0, e, 0);
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
}

/* m = max_c A_c and s = sum_c exp(A_c - m) (a non-finite max shifts by 0
 * instead; a NaN logit makes s NaN), exp(A_c - m) into e[0, C) unless e is
 * NULL. next: the row after this one (or this one again), prefetched meanwhile. */
static XENT_TARGET void XN(max_sum_exp)(const T* a, ptrdiff_t C, T* e, T* m_out, double* s_out, const T* next) {
    if (C * (ptrdiff_t)sizeof(T) > XENT_ROW_L2_BYTES) {
        XN(max_sum_exp_long)(a, C, e, m_out, s_out);
        return;
    }
    T m = XN(row_max)(a, C);
    if (isfinite(m)) {
        *s_out = XN(sum_exp_le0)(a, C, m, e, next);
    } else {
        /* all -inf, or a +inf logit: shift by 0, as the definition says */
        m = 0;
        *s_out = XN(sum_exp)(a, C, 0, e, 0);
    }
    *m_out = m;
}

/* t = sum_c w_c q_c (m - A_c) over the classes of nonzero mass (A_c may be -inf
 * where the mass is 0), and total = sum_c w_c q_c. */
static XENT_TARGET double XN(mass_gap)(
    const T* a, const T* q, const T* w, ptrdiff_t C, T m, T onem, T smooth, double* total
) {
    V vm = XN(splat)(m), zero = XN(splat)(0);
    double t = 0.0, tot = 0.0;
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BLK) {
        ptrdiff_t end = c0 + BLK < C ? c0 + BLK : C, c = c0;
        V acc_t = zero, acc_m = zero, wq;
        for (; c + W <= end; c += W) {
            wq = XN(target_mass)(q, w, c, onem, smooth);
            acc_t += XN(select)(wq != 0, wq * (vm - XN(load)(a + c)), zero);
            acc_m += wq;
        }
        if (c < end) {
            wq = XN(target_mass_part)(q, w, c, end - c, onem, smooth);
            acc_t += XN(select)(wq != 0, wq * (vm - XN(load_part)(a + c, end - c, 0)), zero);
            acc_m += wq;
        }
        t += XN(hsum)(acc_t);
        tot += XN(hsum)(acc_m);
    }
    *total = tot;
    return t;
}

/* m = max_c A_c, s = sum_c exp(A_c - m) (as max_sum_exp) and the target mass of the row
 * (mass->t, mass->total, as mass_gap): in the exp pass, where A and Q are each read once,
 * for rows on the L2 path with a finite max; in a pass of its own otherwise. */
static XENT_TARGET void XN(max_sum_exp_mass)(
    const T* a, ptrdiff_t C, T* e, const T* next, XN(mass_t)* mass, T* m_out, double* s_out
) {
    T m;
    if (C * (ptrdiff_t)sizeof(T) <= XENT_ROW_L2_BYTES && isfinite(m = XN(row_max)(a, C))) {
        *s_out = XN(sum_exp_le0_mass)(a, C, m, e, next, mass);
    } else {
        XN(max_sum_exp)(a, C, e, &m, s_out, next);
        mass->t = XN(mass_gap)(a, mass->q, mass->w, C, m, mass->onem, mass->smooth, &mass->total);
    }
    *m_out = m;
}

/* g_c = k1 e_c - scale w_c q_c with e_c = exp(A_c - m) and k1 = scale sum_k w_k q_k / s:
 * the gradient. Where nt, g is written around the caches (it is not read again
 * soon, and the store skips reading g's lines from memory first). */
static XENT_TARGET void XN(grad_row)(
    const T* e, const T* q, const T* w, ptrdiff_t C, T k1, T onem, T smooth, T scale, T* g, int nt
) {
    ptrdiff_t c = 0, head = 0;
    if (nt && (uintptr_t)g % sizeof(T) == 0)
        head = (ptrdiff_t)((XENT_VBYTES - (uintptr_t)g % XENT_VBYTES) % XENT_VBYTES / sizeof(T));
    else
        nt = 0;
    head = head < C ? head : C;
    if (head > 0) {
        XN(store_part)(g, XN(grad_expr)(XN(load_part)(e, head, 0), XN(target_mass_part)(q, w, 0, head, onem, smooth), k1, scale), head);
        c = head;
    }
    if (nt) {
        for (; c + W <= C; c += W)
            XN(stream)(g + c, XN(grad_expr)(XN(load)(e + c), XN(target_mass)(q, w, c, onem, smooth), k1, scale));
    } else {
        for (; c + W <= C; c += W)
            XN(store)(g + c, XN(grad_expr)(XN(load)(e + c), XN(target_mass)(q, w, c, onem, smooth), k1, scale));
    }
    if (c < C)
        XN(store_part)(g + c, XN(grad_expr)(XN(load_part)(e + c, C - c, 0), XN(target_mass_part)(q, w, c, C - c, onem, smooth), k1, scale), C - c);
}

/* Loss of one row with class index y; its gradient times scale into g (NULL: none). */
static XENT_TARGET double XN(index_row)(const xent_args* k, const T* a, ptrdiff_t y, T* g, T* e, const T* next) {
    const T* w = (const T*)k->w;
    ptrdiff_t C = k->C;
    double eps = k->eps, smooth = eps / C, w_y = w ? w[y] : 1.0, log_s, loss = 0.0, s, total_mass, t;
    T m, a_y = a[y];  /* read before g, which may be a itself, is written */
    if (eps != 0.0) {
        /* the smoothing term's sum_c w_c (m - A_c), as the mass of q_c = 1 */
        XN(mass_t) mass = {NULL, w, NULL, 0, 1, 0.0, 0.0};
        XN(max_sum_exp_mass)(a, C, g ? e : NULL, next, &mass, &m, &s);
        t = mass.t;
    } else {
        XN(max_sum_exp)(a, C, g ? e : NULL, &m, &s, next);
    }
    log_s = log(s);
    if ((1.0 - eps) * w_y != 0.0)
        /* (1 - eps) w_y (-log p_y): skipped at zero mass, where A_y may be -inf */
        loss = (1.0 - eps) * w_y * (((double)m - a_y) + log_s);
    if (eps != 0.0) {
        /* (eps / C) sum_c w_c (-log p_c) = (eps / C) (sum_c w_c (m - A_c) + log s sum_c w_c);
         * no mass adds nothing, even where log s is infinite (as in the probability rows) */
        loss += smooth * (t + (k->w_sum != 0.0 ? k->w_sum * log_s : 0.0));
    }
    if (isnan(s))
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
        XN(grad_row)(e, NULL, eps != 0.0 ? w : NULL, C, (T)(k->scale * total_mass / s), 0, (T)smooth, (T)k->scale, g,
                     k->nt_store);
        /* ... and q_y = 1 - eps + eps / C on it */
        /* (the same sum as total_mass for C = 1, so that the gradient is then exactly 0) */
        g[y] = (T)(k->scale * (exp((double)a_y - m) / s * total_mass - ((1.0 - eps) * w_y + smooth * w_y)));
    }
    return loss;
}

/* Loss of one row with target probabilities Q, smoothed to (1 - eps) Q + eps / C. */
static XENT_TARGET double XN(prob_row)(
    const xent_args* k, const T* a, const T* q, T* g, T* e, const T* next, const T* next_q
) {
    ptrdiff_t C = k->C;
    double eps = k->eps, s, total_mass, t;
    T m;
    /* (the next row of Q prefetched only where rows are long: at C = 1000 it cost 30 %) */
    XN(mass_t) mass = {q, (const T*)k->w, C * (ptrdiff_t)sizeof(T) >= 16384 ? next_q : NULL,
                       (T)(1.0 - eps), (T)(eps / C), 0.0, 0.0};
    XN(max_sum_exp_mass)(a, C, g ? e : NULL, next, &mass, &m, &s);
    t = mass.t;
    total_mass = mass.total;
    if (g) {
        if (k->scale == 0.0)
            memset(g, 0, C * sizeof(T));
        else
            XN(grad_row)(
                e, q, (const T*)k->w, C, (T)(k->scale * total_mass / s), (T)(1.0 - eps), (T)(eps / C),
                (T)k->scale, g, k->nt_store
            );
    }
    /* loss = sum_c w_c q_c ((m - A_c) + log s); a NaN logit gives NaN, even at zero mass */
    return isnan(s) ? NAN : total_mass != 0.0 ? t + total_mass * log(s) : t;
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
 * that every vector operation is useful. at[c] holds class c of the W rows. */
XI void XN(cross_entropy_small_impl)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, const ptrdiff_t C) {
    const T* w = (const T*)k->w;
    T onem = (T)(1.0 - k->eps), smooth = (T)(k->eps / k->C), scale = (T)k->scale;
    /* (eps = 0 where eps / C rounds to 0 in T, xentcy._checks: smooth != 0 with smoothing) */
    const int smoothing = k->eps != 0.0;
    V at[XENT_SMALL_C], qt[XENT_SMALL_C], zero = XN(splat)(0);
    double* loss_out = (double*)k->out;
#if XENT_AVX512 && XENT_F32
    /* contiguous rows (and gradient rows): whole blocks go through the in-register transposes */
    ptrdiff_t row_bytes = C * (ptrdiff_t)sizeof(T);
    int tr = C <= XENT_TR_C && k->a_stride == row_bytes && (!k->Q || k->q_stride == row_bytes) &&
             (!k->G || k->g_stride == row_bytes);
    XN(trp_t) trp;
    if (tr && C < XENT_TR16_C)
        XN(trp_init)(&trp, C);
#endif
    for (ptrdiff_t r0 = begin; r0 < end; r0 += W) {
        ptrdiff_t nl = end - r0 < W ? end - r0 : W;
        /* y: the class index of each lane, -1 where ignored (or past the last row), -2 where
         * it is outside [0, C) (such a row reads nothing and gets NaN) */
        IV y = (IV){0} - 1, keep = (IV){0};
        V m = XN(splat)(-INFINITY), s = zero, t = zero, total = zero, a_y = zero, w_y = zero, loss;
        int block_in = 0;
#if XENT_AVX512 && XENT_F32
        if (tr && nl == W) {
            if (C >= XENT_TR16_C)
                XN(tr_in)(ROW(k->A, k->a_stride, r0), C, at);
            else
                XN(trp_in)(&trp, ROW(k->A, k->a_stride, r0), C, at);
            if (k->Q) {
                if (C >= XENT_TR16_C)
                    XN(tr_in)(ROW(k->Q, k->q_stride, r0), C, qt);
                else
                    XN(trp_in)(&trp, ROW(k->Q, k->q_stride, r0), C, qt);
            } else {
                /* the targets without a scalar loop: kept lanes, y (-1 where ignored), A_y, w_y */
                __m512i ign = _mm512_set1_epi64((long long)k->ignore_index);
                __m512i y0 = _mm512_loadu_si512(k->y + r0), y1 = _mm512_loadu_si512(k->y + r0 + 8);
                __m512i nc = _mm512_set1_epi64((long long)C);
                __mmask16 kept = _mm512_kunpackb(_mm512_cmpneq_epi64_mask(y1, ign), _mm512_cmpneq_epi64_mask(y0, ign));
                /* kept indices outside [0, C) (unsigned: negative ones too) read nothing: NaN rows */
                __mmask16 oob = kept & _mm512_kunpackb(_mm512_cmpge_epu64_mask(y1, nc), _mm512_cmpge_epu64_mask(y0, nc));
                __m512i y32 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(y0)),
                                                 _mm512_cvtepi64_epi32(y1), 1);
                kept &= (__mmask16)~oob;
                y = (IV)_mm512_mask_mov_epi32(_mm512_set1_epi32(-1), kept, y32);
                y = (IV)_mm512_mask_mov_epi32((__m512i)y, oob, _mm512_set1_epi32(-2));
                keep = (IV)_mm512_movm_epi32(kept);
                w_y = w ? zero : (V)_mm512_maskz_mov_ps(kept, _mm512_set1_ps(1.0f));
                XENT_UNROLL
                for (ptrdiff_t c = 0; c < C; c++) {
                    IV is_c = y == (IV){0} + (int32_t)c;
                    a_y = XN(select)(is_c, at[c], a_y);
                    if (w)
                        w_y = XN(select)(is_c, XN(splat)(w[c]), w_y);
                }
            }
            block_in = 2;
        }
#endif
        if (!block_in) {
            /* transpose the block in, one value at a time into lane buffers, then assigned
             * to the vectors whole (indexing their lanes would keep them in memory on every
             * path); lanes past the last row repeat row r0 and are never stored */
            V ab[XENT_SMALL_C], qb[XENT_SMALL_C], ayb = zero, wyb = zero;
            IV yb = y, kb = keep;
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
                        yb[l] = (XN(int_t))k->y[i];
                        kb[l] = -1;
                        ayb[l] = a[k->y[i]];
                        wyb[l] = w ? w[k->y[i]] : 1;
                    } else {
                        yb[l] = -2;  /* outside [0, C): read nothing, a NaN row */
                    }
                }
            }
            XENT_UNROLL
            for (ptrdiff_t c = 0; c < C; c++) {
                at[c] = ab[c];
                qt[c] = k->Q ? qb[c] : zero;
            }
            y = yb;
            keep = kb;
            a_y = ayb;
            w_y = wyb;
        }
        /* m = max_c A_c, a non-finite max shifting by 0 */
        XENT_UNROLL
        for (ptrdiff_t c = 0; c < C; c++)
            m = XN(max)(at[c], m);
        m = XN(select)(XN(isfinite)(m), m, zero);
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
        /* at[c] becomes exp(A_c - m); s = sum_c exp(A_c - m) */
        XENT_UNROLL
        for (ptrdiff_t c = 0; c < C; c++) {
            at[c] = XN(exp)(at[c] - m);
            s += at[c];
        }
        V log_s = XN(log)(s), wy1 = onem * w_y;
        /* what a row that is not computed holds: 0 where ignored, NaN where its index is bad */
        V fill = (V)((y == -2) & (IV)XN(splat)(NAN));
        if (k->Q) {
            /* loss = sum_c w_c q_c ((m - A_c) + log s) */
            /* s - s: 0, or NaN where a logit is NaN (or +inf), which then gives NaN even at zero mass */
            loss = XN(select)(total != 0, t + total * log_s, t + (s - s));
        } else {
            /* (1 - eps) w_y ((m - A_y) + log s), skipped at zero mass, and
             * the smoothing term (eps / C) (sum_c w_c (m - A_c) + log s sum_c w_c) */
            loss = XN(select)(wy1 != 0, wy1 * ((m - a_y) + log_s), s - s);  /* s - s: as above */
            if (smoothing)
                loss += smooth * (t + (k->w_sum != 0 ? (T)k->w_sum * log_s : zero));
            loss = XN(select)(keep, loss, fill);
            /* without smoothing, a weight of a class of zero mass (NaN or inf too) adds nothing */
            total = smoothing ? wy1 + smooth * (T)k->w_sum : wy1;
        }
        for (ptrdiff_t l = 0; l < nl; l++)
            loss_out[r0 + l] = (double)loss[l];
        if (!k->G)
            continue;
        /* dL/dA_c = scale (p_c sum_k w_k q_k - w_c q_c), as the row path forms it */
        V k1 = 1 / s * total, mass;
        if (scale == 0) {
            for (ptrdiff_t c = 0; c < C; c++)
                at[c] = fill;
        } else if (k->Q) {
            XENT_UNROLL
            for (ptrdiff_t c = 0; c < C; c++)
                at[c] = scale * (at[c] * k1 - qt[c]);
        } else {
            V mass_y = wy1 + smooth * w_y;
            const T* w_off = smoothing ? w : NULL;  /* off the target, q_c = 0 without smoothing */
            XENT_UNROLL
            for (ptrdiff_t c = 0; c < C; c++) {
                mass = XN(select)(y == (IV){0} + (XN(int_t))c, mass_y, XN(splat)((w_off ? w_off[c] : 1) * smooth));
                at[c] = XN(select)(keep, scale * (at[c] * k1 - mass), fill);
            }
        }
        /* transpose the gradient out */
#if XENT_AVX512 && XENT_F32
        if (block_in) {
            if (C >= XENT_TR16_C)
                XN(tr_out)(at, C, OUT_ROW(k->G, k->g_stride, r0));
            else
                XN(trp_out)(&trp, at, C, OUT_ROW(k->G, k->g_stride, r0));
            continue;
        }
#endif
        V gb[XENT_SMALL_C];
        XENT_UNROLL
        for (ptrdiff_t c = 0; c < C; c++)
            gb[c] = at[c];
        for (ptrdiff_t l = 0; l < nl; l++) {
            T* g = OUT_ROW(k->G, k->g_stride, r0 + l);
            for (ptrdiff_t c = 0; c < C; c++)
                g[c] = gb[c][l];
        }
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
    double* loss = (double*)k->out;
    if (k->C <= XENT_SMALL_C) {
        XN(cross_entropy_small)(k, begin, end);
        return;
    }
    for (ptrdiff_t i = begin; i < end; i++) {
        const T* a = ROW(k->A, k->a_stride, i);
        T* g = k->G ? OUT_ROW(k->G, k->g_stride, i) : NULL;
        const T* next = i + XENT_PF_DIST < end ? ROW(k->A, k->a_stride, i + XENT_PF_DIST) : a;
        if (k->Q) {
            loss[i] = XN(prob_row)(k, a, ROW(k->Q, k->q_stride, i), g, (T*)scratch, next,
                                   ROW(k->Q, k->q_stride, i + 1 < end ? i + 1 : i));
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
            loss[i] = XN(index_row)(k, a, k->y[i], g, (T*)scratch, next);
        }
    }
#ifdef XENT_VX
    if (k->nt_store)
        _mm_sfence();  /* the streamed stores are visible before the threads join */
#endif
}

/* softmax (or log_softmax where k->log_space) of each row into G. */
static XENT_TARGET void XN(softmax)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, void* scratch) {
    ptrdiff_t C = k->C;
    for (ptrdiff_t i = begin; i < end; i++) {
        const T* a = ROW(k->A, k->a_stride, i);
        T* o = OUT_ROW(k->G, k->g_stride, i);
        T m, *e = (T*)scratch;
        double s;
        XN(max_sum_exp)(a, C, k->log_space ? NULL : e, &m, &s, i + 1 < end ? ROW(k->A, k->a_stride, i + 1) : a);
        V vm = XN(splat)(m), f = XN(splat)(k->log_space ? (T)log(s) : (T)(1.0 / s)), v;
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
        double s;
        XN(max_sum_exp)(ROW(k->A, k->a_stride, i), k->C, NULL, &m, &s,
                        ROW(k->A, k->a_stride, i + 1 < end ? i + 1 : i));
        ((T*)k->out)[i] = (T)(m + log(s));
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
