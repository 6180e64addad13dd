/* The evaluation rows (included by xent_rows.h, under its macros): per row of class-index
 * targets, in one pass more than the loss alone takes and no second exp,
 *   the loss w_y ((m - A_y) + log s), as the cross-entropy rows form it (no smoothing here:
 *     xentcy._cpu adds it from the loss kernel);
 *   the rank of the target: #{c : A_c > A_y} + #{c < y : A_c = A_y} (so rank 0 is
 *     argmax(A) == y with NumPy's first-index rule); C for a row with a NaN logit;
 *   the entropy of the row's softmax, H = log s + (1/s) sum_c e_c (m - A_c), both terms >= 0
 *     (a confident row's entropy keeps its digits: log s = log1p(s - 1), s - 1 summed apart).
 * Ignored rows get loss 0, rank -1, entropy 0; an index outside [0, C) is never read through
 * (loss and entropy NaN, rank C).
 */

/* cnt - [a > b] (gt) or - [a >= b] (ge), lane by lane: the count kept negative in vector lanes,
 * one compare and one add per vector (AVX-512: a masked add of -1). */
XI IV XN(cnt_cmp)(IV cnt, V a, V b, const int ge) {
#if XENT_AVX512 && XENT_F32
    __mmask16 k = ge ? _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GE_OQ) : _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GT_OQ);
    return (IV)_mm512_mask_add_epi32((__m512i)cnt, k, (__m512i)cnt, _mm512_set1_epi32(-1));
#elif XENT_AVX512
    __mmask8 k = ge ? _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GE_OQ) : _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GT_OQ);
    return (IV)_mm512_mask_add_epi64((__m512i)cnt, k, (__m512i)cnt, _mm512_set1_epi64(-1));
#else
    return cnt + (ge ? (IV)(a >= b) : (IV)(a > b));
#endif
}

#define XENT_RANK4(ge)                                                                                  \
    do {                                                                                                \
        v0 = XN(load)(a + c);                                                                           \
        v1 = XN(load)(a + c + W);                                                                       \
        v2 = XN(load)(a + c + 2 * W);                                                                   \
        v3 = XN(load)(a + c + 3 * W);                                                                   \
        m0 = XN(max)(v0, m0);                                                                           \
        m1 = XN(max)(v1, m1);                                                                           \
        m2 = XN(max)(v2, m2);                                                                           \
        m3 = XN(max)(v3, m3);                                                                           \
        k0 = XN(cnt_cmp)(k0, v0, vy, ge);                                                               \
        k1 = XN(cnt_cmp)(k1, v1, vy, ge);                                                               \
        k0 = XN(cnt_cmp)(k0, v2, vy, ge);                                                               \
        k1 = XN(cnt_cmp)(k1, v3, vy, ge);                                                               \
    } while (0)

/* m = max_c A_c and the target's rank in the same pass: rank = #{c < y : A_c >= A_y} +
 * #{c > y : A_c > A_y} (the ties before y rank above it), one compare and one add per vector
 * (counted in vector lanes: with a popcount per vector the pass took 1.16x the forward pass
 * at (8192, 32000) float32, with this 1.07-1.12x): "at or above"
 * for the vectors before y's, "above" after it, both (lane by lane) in y's own. */
static XENT_TARGET T XN(max_rank)(const T* a, ptrdiff_t C, ptrdiff_t y, ptrdiff_t* rank) {
    V vy = XN(splat)(a[y]), m0 = XN(splat)(-INFINITY), m1 = m0, m2 = m0, m3 = m0, v0, v1, v2, v3;
    IV k0 = (IV){0}, k1 = (IV){0};
    ptrdiff_t c = 0, n = 0, yv = y / W * W;
    for (; c + 4 * W <= yv; c += 4 * W)
        XENT_RANK4(1);
    for (; c + W <= yv; c += W) {
        v0 = XN(load)(a + c);
        m0 = XN(max)(v0, m0);
        k0 = XN(cnt_cmp)(k0, v0, vy, 1);
    }
    {
        /* y's vector (c = yv): lanes below y at or above, lanes above y above, y itself not,
         * the padding past C (-inf) not */
        unsigned below = (1u << (y - c)) - 1, above = ~below & ~(1u << (y - c));
        if (c + W <= C) {
            v0 = XN(load)(a + c);
        } else {
            v0 = XN(load_part)(a + c, C - c, -INFINITY);
            above &= (1u << (C - c)) - 1;
        }
        m0 = XN(max)(v0, m0);
        n += __builtin_popcount((XN(mask_bits)(v0 >= vy) & below) | (XN(mask_bits)(v0 > vy) & above));
        c += W;
    }
    for (; c + 4 * W <= C; c += 4 * W)
        XENT_RANK4(0);
    for (; c + W <= C; c += W) {
        v0 = XN(load)(a + c);
        m0 = XN(max)(v0, m0);
        k0 = XN(cnt_cmp)(k0, v0, vy, 0);
    }
    if (c < C) {
        /* the padding is -inf: never above A_y */
        v1 = XN(load_part)(a + c, C - c, -INFINITY);
        m1 = XN(max)(v1, m1);
        n += __builtin_popcount(XN(mask_bits)(v1 > vy));
    }
    k0 += k1;
    for (ptrdiff_t l = 0; l < W; l++)
        n -= k0[l];
    *rank = n;
    return XN(hmax)(XN(max)(XN(max)(m0, m1), XN(max)(m2, m3)));
}
#undef XENT_RANK4

/* sum_{c != p} exp(A_c - m) (as sum_exp_le0) and *ent_t = sum_c exp(A_c - m) (m - A_c), for
 * the row's finite max m: float partial sums per block, double across blocks. A class of
 * logit -inf makes the product 0 (-inf), NaN: eval_row sums t again for such a row. */
static XENT_TARGET double XN(sum_exp_ent)(const T* a, ptrdiff_t C, T m, ptrdiff_t p, const T* next, double* ent_t) {
    V vm = XN(splat)(m), x0, x1, x2, x3, d0, d1, d2, d3, zero = XN(splat)(0);
    double s = 0.0, t = 0.0;
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BLK) {
        ptrdiff_t end = c0 + BLK < C ? c0 + BLK : C, c = c0;
        V acc0 = zero, acc1 = zero, acc2 = zero, acc3 = zero, t0 = zero, t1 = zero;
        for (; c + 4 * W <= end; c += 4 * W) {
            XN(prefetch4)(next, c);
            d0 = XN(load)(a + c) - vm;
            d1 = XN(load)(a + c + W) - vm;
            d2 = XN(load)(a + c + 2 * W) - vm;
            d3 = XN(load)(a + c + 3 * W) - vm;
            x0 = XN(exp_le0)(d0);
            x1 = XN(exp_le0)(d1);
            x2 = XN(exp_le0)(d2);
            x3 = XN(exp_le0)(d3);
            acc0 += x0;
            acc1 += x1;
            acc2 += x2;
            acc3 += x3;
            t0 -= x0 * d0;
            t1 -= x1 * d1;
            t0 -= x2 * d2;
            t1 -= x3 * d3;
        }
        if (p >= c0 && p < c) {
            V acc[4] = {acc0, acc1, acc2, acc3}, mm[2] = {zero, zero};
            XN(fix_lanes)(a, c0, c, vm, p, acc, NULL, mm);
            acc0 = acc[0], acc1 = acc[1], acc2 = acc[2], acc3 = acc[3];
        }
        for (; c + W <= end; c += W) {
            d0 = XN(load)(a + c) - vm;
            x0 = XN(exp_le0)(d0);
            acc0 += XN(select)(XN(lane_of)(p, c), zero, x0);
            t0 -= x0 * d0;
        }
        if (c < end) {
            /* the padding is -inf: its term is 0, and its product is taken with 0 for its
             * -inf (0 (-inf) would be NaN) */
            d1 = XN(load_part)(a + c, end - c, -INFINITY) - vm;
            x1 = XN(exp_le0)(d1);
            acc1 += XN(select)(XN(lane_of)(p, c), zero, x1);
            t1 -= x1 * XN(select)(XN(lanes_below)(end - c), d1, zero);
        }
        s += XN(hsum)((acc0 + acc1) + (acc2 + acc3));
        t += XN(hsum)(t0 + t1);
    }
    *ent_t = t;
    return s;
}

/* One row: its loss (returned), rank and entropy. */
XI double XN(eval_row)(const xent_args* k, const T* a, ptrdiff_t y, const T* next, ptrdiff_t* rank, double* entropy) {
    ptrdiff_t C = k->C, p;
    const T* w = (const T*)k->w;
    double w_y = w ? w[y] : 1.0, t = 0.0, rest, log_s, loss = 0.0;
    T m = XN(max_rank)(a, C, y, rank), a_y = a[y];
    /* (a term where A_c is -inf is 0 whatever the shift, and exp(0) (m - A_c) = 0) */
    if (isfinite(m)) {
        p = a_y == m ? y : -1;
        rest = XN(sum_exp_ent)(a, C, m, p, next, &t);
    } else {
        /* all -inf, or a +inf logit: shift by 0, as the definition says; the softmax is
         * undefined there and so is its entropy */
        m = 0;
        p = -1;
        rest = XN(sum_exp)(a, C, 0, NULL, 0, -1);
        t = NAN;
    }
    XN(sums_t) r = XN(sums)(rest, p);
    if (isnan(t) && !isnan(r.s) && isfinite(m)) {
        /* a class of logit -inf (its 0 (-inf) is NaN): t again, without those */
        t = 0.0;
        for (ptrdiff_t c = 0; c < C; c++)
            if (a[c] != -INFINITY)
                t += exp((double)a[c] - m) * ((double)m - a[c]);
    }
    log_s = XN(log_s)(r);
    if (w_y != 0.0)
        loss = w_y * (((double)m - a_y) + log_s);
    if (isnan(r.s)) {
        /* a NaN logit: NaN loss and entropy, and the row counts as wrong */
        loss = NAN;
        *rank = C;
    }
    *entropy = log_s + t / r.s;
    return loss;
}

/* The rows [begin, end): losses into out (double), ranks into k->rank, entropies into
 * k->entropy. */
static XENT_TARGET void XN(evaluate)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, void* scratch) {
    double* loss = (double*)k->out;
    (void)scratch;
    for (ptrdiff_t i = begin; i < end; i++) {
        const T* a = ROW(k->A, k->a_stride, i);
        const T* next = i + XENT_PF_DIST < end ? ROW(k->A, k->a_stride, i + XENT_PF_DIST) : a;
        ptrdiff_t y = k->y[i];
        if (y == k->ignore_index) {
            loss[i] = 0.0;
            k->rank[i] = -1;
            k->entropy[i] = 0.0;
        } else if ((size_t)y >= (size_t)k->C) {
            /* never read through (the checks above raise for it) */
            loss[i] = NAN;
            k->rank[i] = k->C;
            k->entropy[i] = NAN;
        } else {
            loss[i] = XN(eval_row)(k, a, y, next, &k->rank[i], &k->entropy[i]);
        }
    }
}
