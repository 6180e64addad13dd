# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The CPU kernels: one row of logits at a time, rows in parallel.

Every kernel takes a 2-D view A of shape (N, C) whose class axis is last with
unit stride (rows may have any stride); the Python glue in ``xentcy._cpu``
arranges that. Arguments were checked above: class indices are in [0, C) or
equal to ``ignore_index``, and buffers have the right shapes.

Per row, with m = max_c A_c and s = sum_c exp(A_c - m):
    log p_c = -((m - A_c) + log s)
both terms of which are >= 0, so the loss keeps its digits whatever the
logits' offset. Scalars are accumulated in double for both dtypes.
"""

from cython.parallel cimport prange
from libc.math cimport exp, log, INFINITY, isfinite
from libc.string cimport memset

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int xentcy_openmp_enabled(void) { return 1; }
    static int xentcy_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int xentcy_openmp_enabled(void) { return 0; }
    static int xentcy_max_threads(void) { return 1; }
    #endif
    """
    int xentcy_openmp_enabled() nogil
    int xentcy_max_threads() nogil

ctypedef fused floating:
    float
    double

# Below this many elements a call runs on one thread: waking the others costs more.
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 15


def openmp_enabled():
    """Whether this build runs rows on several OpenMP threads."""
    return bool(xentcy_openmp_enabled())


cdef int _threads(Py_ssize_t n_rows, Py_ssize_t n_cols) noexcept nogil:
    if n_rows * n_cols < PARALLEL_MIN_ELEMENTS or n_rows < 2:
        return 1
    return xentcy_max_threads()


cdef inline double _shift(const floating* a, Py_ssize_t C) noexcept nogil:
    # m = max_c A_c; a non-finite max (all -inf, +inf, empty row) shifts by 0
    # instead, so that A_c - m never becomes inf - inf.
    cdef double m = -INFINITY
    cdef Py_ssize_t c
    for c in range(C):
        if a[c] > m:
            m = a[c]
    return m if isfinite(m) else 0.0


cdef inline double _sum_exp(const floating* a, Py_ssize_t C, double m) noexcept nogil:
    # s = sum_c exp(A_c - m); a NaN logit makes s NaN, and so its row's results.
    cdef double s = 0.0
    cdef Py_ssize_t c
    for c in range(C):
        s = s + exp(a[c] - m)
    return s


cdef inline double _index_row(
    const floating* a, Py_ssize_t C, Py_ssize_t y, const floating* w, double w_sum,
    double eps, double scale, floating* g,
) noexcept nogil:
    """Loss of one row with class index y; writes its gradient times ``scale`` into g.

    q_c = (1 - eps) [c == y] + eps / C; w is NULL without class weights and
    then w_sum = C; g is NULL for the forward pass alone.
    """
    cdef double m = _shift(a, C)
    cdef double s = _sum_exp(a, C, m)
    cdef double log_s = log(s)
    cdef double w_y = w[y] if w != NULL else 1.0
    cdef double smooth = eps / C
    cdef double loss = 0.0, t = 0.0, w_c, inv_s, total_mass
    cdef Py_ssize_t c
    if (1.0 - eps) * w_y != 0.0:
        # (1 - eps) w_y (-log p_y): skipped at zero mass, where A_y may be -inf
        loss = (1.0 - eps) * w_y * ((m - a[y]) + log_s)
    if eps != 0.0:
        # (eps / C) sum_c w_c (-log p_c) = (eps / C) (sum_c w_c (m - A_c) + log s sum_c w_c)
        for c in range(C):
            w_c = w[c] if w != NULL else 1.0
            if w_c != 0.0:
                t = t + w_c * (m - a[c])
        loss = loss + smooth * (t + w_sum * log_s)
    if g != NULL:
        if scale == 0.0:
            memset(g, 0, C * sizeof(floating))
            return loss
        # dL/dA_c = scale (p_c sum_k w_k q_k - w_c q_c)
        total_mass = (1.0 - eps) * w_y + smooth * w_sum
        inv_s = 1.0 / s
        for c in range(C):
            w_c = w[c] if w != NULL else 1.0
            g[c] = <floating>(scale * (exp(a[c] - m) * inv_s * total_mass - w_c * smooth))
        g[y] = <floating>(scale * (exp(a[y] - m) * inv_s * total_mass - w_y * (smooth + 1.0 - eps)))
    return loss


cdef inline double _prob_row(
    const floating* a, const floating* q, Py_ssize_t C, const floating* w,
    double eps, double scale, floating* g,
) noexcept nogil:
    """Loss of one row with target probabilities q, smoothed to (1 - eps) q + eps / C."""
    cdef double m = _shift(a, C)
    cdef double s = 0.0, t = 0.0, total_mass = 0.0, q_c, wq, inv_s, loss
    cdef double smooth = eps / C
    cdef Py_ssize_t c
    for c in range(C):
        s = s + exp(a[c] - m)
        q_c = (1.0 - eps) * q[c] + smooth
        wq = q_c * (w[c] if w != NULL else 1.0)
        if wq != 0.0:
            # sum_c w_c q_c (m - A_c), skipping zero mass where A_c may be -inf
            t = t + wq * (m - a[c])
            total_mass = total_mass + wq
    # loss = sum_c w_c q_c ((m - A_c) + log s)
    loss = t + total_mass * log(s) if total_mass != 0.0 else t
    if g != NULL:
        if scale == 0.0:
            memset(g, 0, C * sizeof(floating))
            return loss
        inv_s = 1.0 / s
        for c in range(C):
            q_c = (1.0 - eps) * q[c] + smooth
            wq = q_c * (w[c] if w != NULL else 1.0)
            g[c] = <floating>(scale * (exp(a[c] - m) * inv_s * total_mass - wq))
    return loss


def cross_entropy_index(
    const floating[:, :] A,
    const Py_ssize_t[:] y,
    const floating[:] weight,
    bint has_weight,
    double eps,
    Py_ssize_t ignore_index,
    double scale,
    floating[:, :] G,
    bint want_grad,
    double[:] loss,
):
    """Per-row losses of class-index targets into ``loss``; gradient into G if ``want_grad``."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1], i, c
    cdef const floating* w = &weight[0] if has_weight else NULL
    cdef double w_sum = 0.0
    cdef floating* g_row
    cdef int n_threads = _threads(N, C)
    if has_weight:
        for c in range(C):
            w_sum += w[c]
    else:
        w_sum = C
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            g_row = &G[i, 0] if want_grad else NULL
            if y[i] == ignore_index:
                loss[i] = 0.0
                if want_grad:
                    memset(g_row, 0, C * sizeof(floating))
            else:
                loss[i] = _index_row(&A[i, 0], C, y[i], w, w_sum, eps, scale, g_row)


def cross_entropy_prob(
    const floating[:, :] A,
    const floating[:, :] Q,
    const floating[:] weight,
    bint has_weight,
    double eps,
    double scale,
    floating[:, :] G,
    bint want_grad,
    double[:] loss,
):
    """Per-row losses of probability targets into ``loss``; gradient into G if ``want_grad``."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1], i
    cdef const floating* w = &weight[0] if has_weight else NULL
    cdef floating* g_row
    cdef int n_threads = _threads(N, C)
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            g_row = &G[i, 0] if want_grad else NULL
            loss[i] = _prob_row(&A[i, 0], &Q[i, 0], C, w, eps, scale, g_row)


def softmax(const floating[:, :] A, floating[:, :] out, bint log_space):
    """softmax (or log_softmax where ``log_space``) of each row of A into ``out``."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1], i, c
    cdef double m, s, inv_s, log_s
    cdef const floating* a
    cdef floating* o
    cdef int n_threads = _threads(N, C)
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            a = &A[i, 0]
            o = &out[i, 0]
            m = _shift(a, C)
            s = _sum_exp(a, C, m)
            if log_space:
                # log p_c = (A_c - m) - log s
                log_s = log(s)
                for c in range(C):
                    o[c] = <floating>((a[c] - m) - log_s)
            else:
                inv_s = 1.0 / s
                for c in range(C):
                    o[c] = <floating>(exp(a[c] - m) * inv_s)


def logsumexp(const floating[:, :] A, floating[:] out):
    """log sum_c exp(A_c) of each row of A into ``out``."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1], i
    cdef double m
    cdef int n_threads = _threads(N, C)
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            m = _shift(&A[i, 0], C)
            out[i] = <floating>(m + log(_sum_exp(&A[i, 0], C, m)))
