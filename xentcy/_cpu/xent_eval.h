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

/* m = max_c A_c and the target's rank in one pass: gt = #{A_c > a_y}, ge = #{A_c >= a_y}
 * (lane counts, then summed); the ties before y, only where there are any. */
static XENT_TARGET T XN(max_rank)(const T* a, ptrdiff_t C, ptrdiff_t y, ptrdiff_t* rank) {
    T a_y = a[y];
    V vy = XN(splat)(a_y), m0 = XN(splat)(-INFINITY), m1 = m0, v0, v1;
    IV gt = (IV){0}, ge = (IV){0};
    ptrdiff_t c = 0, n_gt = 0, n_ge = 0;
    for (; c + 2 * W <= C; c += 2 * W) {
        v0 = XN(load)(a + c);
        v1 = XN(load)(a + c + W);
        m0 = XN(max)(v0, m0);
        m1 = XN(max)(v1, m1);
        gt += (v0 > vy) + (v1 > vy);  /* (a true compare is -1 in every bit) */
        ge += (v0 >= vy) + (v1 >= vy);
    }
    for (; c + W <= C; c += W) {
        v0 = XN(load)(a + c);
        m0 = XN(max)(v0, m0);
        gt += v0 > vy;
        ge += v0 >= vy;
    }
    if (c < C) {
        /* the padding is -inf: never above a_y, at or above it only where a_y is -inf */
        v1 = XN(load_part)(a + c, C - c, -INFINITY);
        m1 = XN(max)(v1, m1);
        IV in = XN(lanes_below)(C - c);
        gt += (v1 > vy) & in;
        ge += (v1 >= vy) & in;
    }
    for (ptrdiff_t l = 0; l < W; l++) {
        n_gt -= gt[l];
        n_ge -= ge[l];
    }
    if (n_ge - n_gt > 1) {
        /* classes tied with the target: those before it rank above it */
        for (ptrdiff_t d = 0; d < y; d++)
            n_gt += a[d] == a_y;
    }
    *rank = n_gt;
    return XN(hmax)(XN(max)(m0, m1));
}

/* sum_{c != p} exp(A_c - m) (as sum_exp_le0) and *ent_t = sum_c exp(A_c - m) (m - A_c), for
 * the row's finite max m: float partial sums per block, double across blocks. A class of
 * logit -inf adds 0 to both (its A_c - m taken as the lowest finite value in the product, so
 * that 0 (-inf) does not make it NaN; a NaN logit makes s NaN). */
static XENT_TARGET double XN(sum_exp_ent)(const T* a, ptrdiff_t C, T m, ptrdiff_t p, const T* next, double* ent_t) {
#if XENT_F32
    const V lo = XN(splat)(-0x1.fffffep127f);
#else
    const V lo = XN(splat)(-0x1.fffffffffffffp1023);
#endif
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
            t0 -= x0 * XN(max)(lo, d0);
            t1 -= x1 * XN(max)(lo, d1);
            t0 -= x2 * XN(max)(lo, d2);
            t1 -= x3 * XN(max)(lo, d3);
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
            t0 -= x0 * XN(max)(lo, d0);
        }
        if (c < end) {
            /* the padding is -inf: its terms are 0 */
            d1 = XN(load_part)(a + c, end - c, -INFINITY) - vm;
            x1 = XN(exp_le0)(d1);
            acc1 += XN(select)(XN(lane_of)(p, c), zero, x1);
            t1 -= x1 * XN(max)(lo, d1);
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
