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
    double* loss = (double*)k->per_row_out;
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

/* ---- Two models' rows: KL(q || p), q = softmax(B) (the reference), p = softmax(A), and
 * whether their argmax (first index) agree; per row pair, k->B beside k->A.
 *
 * With d_c = (B_c - A_c) - (mB - mA) (= u_c - v_c, u = B - mB, v = A - mA) and the
 * q-mean mu = E_q[d]:  KL = mu + log E_q[exp(-d)] = log1p(E_q[g(mu - d)]),
 * g(x) = e^x - 1 - x >= 0. The first form (one exp pass) cancels where KL is small (two
 * terms of the size of log C for a KL of 1e-4 lose four digits); the second sums
 * non-negative terms and keeps them, at a third pass. A row takes the second where the
 * first gives KL < XENT_KL_EXACT_BELOW (then mu <= that + log C, and exp(v + mu) cannot
 * overflow). A shift of d by a constant (mu rounded to T, mB - mA rounded) leaves KL as
 * it is, and eta = mu_T - mu is taken out exactly: KL = log1p(r + eta) - eta. */
#ifndef XENT_KL_EXACT_BELOW
#define XENT_KL_EXACT_BELOW 4.0
#endif

/* The first c with a[c] == m (m = max a, no NaN in a), C if none. */
XI ptrdiff_t XN(first_at)(const T* a, ptrdiff_t C, T m) {
    V vm = XN(splat)(m);
    ptrdiff_t c = 0;
    for (; c + W <= C; c += W) {
        unsigned bits = XN(mask_bits)(XN(load)(a + c) == vm);
        if (bits)
            return c + __builtin_ctz(bits);
    }
    for (; c < C; c++)
        if (a[c] == m)
            return c;
    return C;
}

/* e^x - 1 - x (|x| <= 1/2: Taylor to the term below T's precision there). */
XI V XN(expm1_minus_x)(V x) {
    V p;
#if XENT_F32
    p = XN(splat)(1.0f / 362880);
    p = p * x + 1.0f / 40320;
    p = p * x + 1.0f / 5040;
#else
    p = XN(splat)(1.0 / 1307674368000.0);
    p = p * x + 1.0 / 87178291200.0;
    p = p * x + 1.0 / 6227020800.0;
    p = p * x + 1.0 / 479001600.0;
    p = p * x + 1.0 / 39916800.0;
    p = p * x + 1.0 / 3628800.0;
    p = p * x + 1.0 / 362880.0;
    p = p * x + 1.0 / 40320.0;
    p = p * x + 1.0 / 5040.0;
#endif
    p = p * x + (T)(1.0 / 720);
    p = p * x + (T)(1.0 / 120);
    p = p * x + (T)(1.0 / 24);
    p = p * x + (T)(1.0 / 6);
    p = p * x + (T)0.5;
    return p * x * x;
}

/* The row pair in double, one class at a time: rows with a NaN, an infinite max or no
 * finite logit (where the vector passes' shifts do not apply). */
static XENT_TARGET double XN(kl_row_scalar)(const T* a, const T* b, ptrdiff_t C) {
    double ma = -INFINITY, mb = -INFINITY, sp = 0.0, sq = 0.0, t = 0.0;
    for (ptrdiff_t c = 0; c < C; c++) {
        if (a[c] != a[c] || b[c] != b[c])
            return NAN;
        ma = a[c] > ma ? a[c] : ma;
        mb = b[c] > mb ? b[c] : mb;
    }
    if (!isfinite(ma) || !isfinite(mb))
        return NAN; /* a softmax with no finite logit, or with a +inf: undefined */
    for (ptrdiff_t c = 0; c < C; c++) {
        double eu = exp((double)b[c] - mb);
        if (a[c] == -INFINITY && b[c] != -INFINITY)
            return INFINITY;
        sp += exp((double)a[c] - ma);
        sq += eu;
        if (eu != 0.0)
            t += eu * (((double)b[c] - mb) - ((double)a[c] - ma));
    }
    return t / sq + log(sp / sq);
}

/* d = (y - x) - dm, to a few ulp of d itself: y - x is rounded (two logits 100 apart lose
 * 1e-5 in float32, all of a d of that size), its error recovered exactly (TwoSum) and added
 * back after dm (~ y - x, so that s - dm is exact by Sterbenz where d is small). */
XI V XN(shifted_diff)(V y, V x, V dm) {
    V s = y - x, bx = s - y, err = (y - (s - bx)) - (x + bx);
    /* (an infinite logit leaves err NaN: d is then s - dm, +-inf or NaN as it is) */
    return (s - dm) + XN(select)(err == err, err, XN(splat)(0));
}

/* One vector of the exp pass: q += exp(u), p += exp(v), t += exp(u) d (0 where exp(u) is 0:
 * B_c = -inf, whose d is -inf or NaN). */
XI void XN(kl_terms)(V x, V y, V vma, V vmb, V dm, V* q, V* p, V* t) {
    V eu = XN(exp_le0)(y - vmb), d = XN(shifted_diff)(y, x, dm);
    *q += eu;
    *p += XN(exp_le0)(x - vma);
    *t += XN(select)(eu != 0, eu * d, XN(splat)(0));
}

static XENT_TARGET double XN(kl_row)(const T* a, const T* b, ptrdiff_t C, const T* next_a, const T* next_b, ptrdiff_t* agree) {
    V ma0 = XN(splat)(-INFINITY), ma1 = ma0, mb0 = ma0, mb1 = ma0, x0, x1, y0, y1, zero = XN(splat)(0);
    IV nan = (IV){0}, none = (IV){0}; /* none: a class where p is 0 and q is not */
    ptrdiff_t c = 0;
    for (; c + 2 * W <= C; c += 2 * W) {
        x0 = XN(load)(a + c);
        x1 = XN(load)(a + c + W);
        y0 = XN(load)(b + c);
        y1 = XN(load)(b + c + W);
        ma0 = XN(max)(x0, ma0);
        ma1 = XN(max)(x1, ma1);
        mb0 = XN(max)(y0, mb0);
        mb1 = XN(max)(y1, mb1);
        nan |= (x0 != x0) | (x1 != x1) | (y0 != y0) | (y1 != y1);
        none |= ((x0 == -INFINITY) & (y0 != -INFINITY)) | ((x1 == -INFINITY) & (y1 != -INFINITY));
    }
    for (; c < C; c += W) {
        x0 = c + W <= C ? XN(load)(a + c) : XN(load_part)(a + c, C - c, -INFINITY);
        y0 = c + W <= C ? XN(load)(b + c) : XN(load_part)(b + c, C - c, -INFINITY);
        ma0 = XN(max)(x0, ma0);
        mb0 = XN(max)(y0, mb0);
        nan |= (x0 != x0) | (y0 != y0);
        none |= (x0 == -INFINITY) & (y0 != -INFINITY);
    }
    T ma = XN(hmax)(XN(max)(ma0, ma1)), mb = XN(hmax)(XN(max)(mb0, mb1));
    *agree = 0;
    if (XN(mask_bits)(nan) || !isfinite(ma) || !isfinite(mb))
        return XN(kl_row_scalar)(a, b, C);
    *agree = XN(first_at)(a, C, ma) == XN(first_at)(b, C, mb);
    if (XN(mask_bits)(none))
        return INFINITY; /* (whether or not q_c = exp(B_c - lse) is representable in T) */

    /* the exp pass: Sq = sum exp(u), Sp = sum exp(v), M = sum exp(u) d (0 where exp(u) is) */
    V vma = XN(splat)(ma), vmb = XN(splat)(mb), dm = XN(splat)(mb - ma), eu;
    double sq = 0.0, sp = 0.0, m = 0.0;
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BLK) {
        ptrdiff_t end = c0 + BLK < C ? c0 + BLK : C;
        V q0 = zero, q1 = zero, p0 = zero, p1 = zero, t0 = zero, t1 = zero;
        for (c = c0; c + 2 * W <= end; c += 2 * W) {
            for (ptrdiff_t j = 0; j < 2 * W; j += 64 / (ptrdiff_t)sizeof(T)) {
                __builtin_prefetch(next_a + c + j, 0, XENT_PF_HINT);
                __builtin_prefetch(next_b + c + j, 0, XENT_PF_HINT);
            }
            XN(kl_terms)(XN(load)(a + c), XN(load)(b + c), vma, vmb, dm, &q0, &p0, &t0);
            XN(kl_terms)(XN(load)(a + c + W), XN(load)(b + c + W), vma, vmb, dm, &q1, &p1, &t1);
        }
        for (; c < end; c += W) {
            /* the padding is -inf on both sides: no mass, and its d (NaN) is not taken */
            x0 = c + W <= end ? XN(load)(a + c) : XN(load_part)(a + c, end - c, -INFINITY);
            y0 = c + W <= end ? XN(load)(b + c) : XN(load_part)(b + c, end - c, -INFINITY);
            XN(kl_terms)(x0, y0, vma, vmb, dm, &q0, &p0, &t0);
        }
        sq += XN(hsum)(q0 + q1);
        sp += XN(hsum)(p0 + p1);
        m += XN(hsum)(t0 + t1);
    }
    double mu = m / sq, kl = mu + log(sp / sq);
    if (!(kl < XENT_KL_EXACT_BELOW))
        return kl; /* large (its terms' error is small beside it), +inf (p = 0 where q > 0) */

    /* the exact pass: R = sum exp(u) g(mu - d) */
    T mu_t = (T)mu;
    double eta = (double)mu_t - mu, r = 0.0;
    V vmu = XN(splat)(mu_t), x, big, half = XN(splat)((T)0.5);
    const T big_x = XENT_F32 ? 80.0f : 700.0; /* e^x finite below */
    const unsigned all_lanes = (unsigned)((1ull << W) - 1);
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BLK) {
        ptrdiff_t end = c0 + BLK < C ? c0 + BLK : C;
        V r0 = zero, r1 = zero;
        for (c = c0; c < end; c += W) {
            if (c + W <= end) {
                x0 = XN(load)(a + c);
                y0 = XN(load)(b + c);
            } else {
                x0 = XN(load_part)(a + c, end - c, -INFINITY);
                y0 = XN(load_part)(b + c, end - c, -INFINITY);
            }
            eu = XN(exp_le0)(y0 - vmb);
            x = vmu - XN(shifted_diff)(y0, x0, dm);
            /* |x| <= 1/2: exp(u) g(x) from the series; else exp(u) (e^x - 1 - x) (x, not
             * v + mu: its error is that of d, small where d is), 0 where exp(u) is (B_c =
             * -inf, the padding); and where e^x would overflow (exp(u) tiny or 0: q_c far
             * below p_c), exp(u) e^x as exp(v + mu) (at most e^4 C) */
            IV near = (x <= half) & (x >= -half);
            r0 += XN(select)(near, eu * XN(expm1_minus_x)(x), zero);
            if (XN(mask_bits)(near) == all_lanes)
                continue; /* (close models: most vectors, no second exp) */
            big = XN(select)(eu != 0, eu * ((XN(exp)(XN(select)(x < big_x, x, zero)) - 1) - x), zero);
            IV far = x > big_x;
            if (XN(mask_bits)(far))
                big = XN(select)(far, XN(exp)(x0 - vma + vmu) - XN(select)(eu != 0, eu * (1 + x), zero), big);
            r1 += XN(select)(near, zero, big);
        }
        r += XN(hsum)(r0 + r1);
    }
    return log1p(r / sq + eta) - eta;
}

/* The row pairs [begin, end): KL(q || p) into out (double), agreement (0 or 1) into k->rank. */
static XENT_TARGET void XN(compare)(const xent_args* k, ptrdiff_t begin, ptrdiff_t end, void* scratch) {
    double* kl = (double*)k->per_row_out;
    (void)scratch;
    for (ptrdiff_t i = begin; i < end; i++) {
        const T* a = ROW(k->A, k->a_stride, i);
        const T* b = ROW(k->Q, k->q_stride, i);
        int last = i + XENT_PF_DIST >= end;
        const T* next_a = last ? a : ROW(k->A, k->a_stride, i + XENT_PF_DIST);
        const T* next_b = last ? b : ROW(k->Q, k->q_stride, i + XENT_PF_DIST);
        kl[i] = XN(kl_row)(a, b, k->C, next_a, next_b, &k->rank[i]);
    }
}
