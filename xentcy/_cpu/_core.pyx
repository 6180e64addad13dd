# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The CPU kernels: Cython glue around the SIMD row kernels of xent_rows.h.

Every kernel takes a 2-D view A of shape (N, C) whose class axis is last with
unit stride (rows may have any stride); the Python glue in ``xentcy._cpu``
arranges that. Arguments were checked above (class indices are in [0, C) or
equal to ``ignore_index``); what is checked here again is only what keeps
the kernels inside their arrays when that is bypassed: the shapes and class
strides of the buffers (a ValueError), and each class index, which is never
read or written through outside [0, C) (its row's loss and gradient are NaN).

Per row, with m = max_c A_c and s = sum_c exp(A_c - m):
    log p_c = -((m - A_c) + log s)
both terms of which are >= 0, so the loss keeps its digits whatever the
logits' offset. The kernels exist once per instruction set (AVX-512,
AVX2 + FMA, baseline); the best one this CPU runs is picked at import.
Rows are split among OpenMP threads in contiguous ranges, and a row's result
does not depend on the split.
"""

from cpython.pycapsule cimport PyCapsule_New
from cython.parallel cimport prange
from libc.math cimport INFINITY, NAN, isinf
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int xentcy_max_threads(void) { return omp_get_max_threads(); }
    static void xentcy_set_threads(int n) { omp_set_num_threads(n); }
    #else
    static void xentcy_set_threads(int n) { (void)n; }
    static int xentcy_max_threads(void) { return 1; }
    #endif
    """
    int xentcy_max_threads() nogil
    void xentcy_set_threads(int n) nogil

cdef extern from "xent_dispatch.h" nogil:
    ctypedef struct xent_args:
        const char* A
        ptrdiff_t a_stride
        const ptrdiff_t* y
        const char* Q
        ptrdiff_t q_stride
        const void* w
        double w_sum, eps, scale
        ptrdiff_t ignore_index
        char* rows_out
        ptrdiff_t rows_out_stride
        void* per_row_out
        ptrdiff_t C
        int log_space
        int nt_store
        ptrdiff_t* rank
        double* entropy
        double z_loss, temperature, softcap
        const void* prefetch_after
        const char* chain_d
        ptrdiff_t chain_stride
        double chain_inv
    ctypedef void (*xent_rows_fn)(const xent_args*, ptrdiff_t, ptrdiff_t, void*) noexcept nogil
    ctypedef struct xent_kernels:
        const char* name
        xent_rows_fn cross_entropy[2]
        xent_rows_fn cross_entropy_tx[2]
        xent_rows_fn softmax[2]
        xent_rows_fn logsumexp[2]
        xent_rows_fn evaluate[2]
        xent_rows_fn compare[2]
        void (*exp_f32)(const float*, float*, ptrdiff_t) noexcept nogil
        void (*exp_f64)(const double*, double*, ptrdiff_t) noexcept nogil
        void (*tanh_f32)(const float*, float*, float*, ptrdiff_t) noexcept nogil
        void (*tanh_f64)(const double*, double*, double*, ptrdiff_t) noexcept nogil
        void (*count_kept)(const ptrdiff_t*, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t*, ptrdiff_t*) noexcept nogil
    const xent_kernels* xent_tables
    int XENT_N_ISA
    int xent_isa_supported(int isa)
    int xent_best_isa()
    ptrdiff_t xent_tx_scratch(ptrdiff_t C, ptrdiff_t itemsize)

ctypedef fused floating:
    float
    double

# Below this many elements a call runs on one thread: waking the others costs more.
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 15
# From this many bytes on, the gradient is written with non-temporal stores,
# as memcpy does: it would not stay in the caches anyway.
cdef Py_ssize_t STREAM_MIN_BYTES = 1 << 23
# ... and rows of at least this many bytes: a row's streamed stores come as one burst after
# its exp pass, and bursts of 4 KiB ran at 2.1x the copy against 1.5x with plain stores at
# (8192, 1000) float32 (at 8 KiB rows and up streaming wins; benchmarks/cpu-notes.md, v5).
cdef Py_ssize_t STREAM_MIN_ROW_BYTES = 6144

cdef const xent_kernels* _kernels = &xent_tables[xent_best_isa()]


def max_threads():
    """The threads a call may run on (OpenMP's limit; 1 without OpenMP)."""
    return xentcy_max_threads()


def set_max_threads(int n):
    """Let calls run on at most ``n`` threads (``omp_set_num_threads``); returns the previous limit."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    previous = xentcy_max_threads()
    xentcy_set_threads(n)
    return previous


def isa():
    """The instruction set of the kernels in use: 'avx512', 'avx2' or 'baseline'."""
    return _kernels.name.decode()


def supported_isas():
    """The instruction sets this CPU runs, best last."""
    return [xent_tables[i].name.decode() for i in range(XENT_N_ISA) if xent_isa_supported(i)]


def set_isa(str name):
    """Use the kernels of instruction set ``name`` (for tests and benchmarks); returns the previous one."""
    global _kernels
    previous = isa()
    for i in range(XENT_N_ISA):
        if xent_tables[i].name.decode() == name:
            if not xent_isa_supported(i):
                raise ValueError(f"this CPU does not run the {name} kernels")
            _kernels = &xent_tables[i]
            return previous
    raise ValueError(f"unknown instruction set {name!r}, expected one of {supported_isas()}")


cdef _check_rows(str name, const floating[:, :] rows, Py_ssize_t N, Py_ssize_t C):
    """rows has shape (N, C), its classes at unit stride (the kernels index them so)."""
    if rows.shape[0] != N or rows.shape[1] != C:
        raise ValueError(f"{name} must have shape ({N}, {C}), got ({rows.shape[0]}, {rows.shape[1]})")
    if C > 1 and rows.strides[1] != sizeof(floating):
        raise ValueError(
            f"{name} must have its classes at unit stride ({sizeof(floating)} bytes), got {rows.strides[1]} bytes"
        )


cdef _check_length(str name, Py_ssize_t n, Py_ssize_t expected):
    if n != expected:
        raise ValueError(f"{name} must have {expected} elements, got {n}")


def vector_exp(const floating[::1] x, floating[::1] out):
    """exp of every element of x into out with the kernels' vector exp (for the tests)."""
    _check_length("out", out.shape[0], x.shape[0])
    if x.shape[0] == 0:
        return
    if floating is float:
        _kernels.exp_f32(&x[0], &out[0], x.shape[0])
    else:
        _kernels.exp_f64(&x[0], &out[0], x.shape[0])


def vector_tanh(const floating[::1] x, floating[::1] out, floating[::1] sech2):
    """tanh of every element of x into out, and 1 - tanh^2 into sech2, with the kernels' vector
    tanh (for the tests)."""
    _check_length("out", out.shape[0], x.shape[0])
    _check_length("sech2", sech2.shape[0], x.shape[0])
    if x.shape[0] == 0:
        return
    if floating is float:
        _kernels.tanh_f32(&x[0], &out[0], &sech2[0], x.shape[0])
    else:
        _kernels.tanh_f64(&x[0], &out[0], &sech2[0], x.shape[0])


cdef int _threads(Py_ssize_t N, Py_ssize_t C) noexcept nogil:
    if N * C < PARALLEL_MIN_ELEMENTS or N < 2:
        return 1
    return xentcy_max_threads()


cdef void _run(xent_rows_fn fn, const xent_args* k, Py_ssize_t N, int n_threads,
               char* scratch, Py_ssize_t scratch_stride) noexcept nogil:
    """fn over the rows [0, N): one contiguous range, and one scratch row, per thread."""
    cdef int t
    if n_threads <= 1:
        fn(k, 0, N, scratch)
        return
    for t in prange(n_threads, schedule="static", num_threads=n_threads):
        fn(k, t * N // n_threads, (t + 1) * N // n_threads, scratch + t * scratch_stride)


cdef inline bint _stream(bint want_grad, Py_ssize_t N, Py_ssize_t row_bytes) noexcept nogil:
    """Whether the gradient is written with streaming stores."""
    return want_grad and N * row_bytes >= STREAM_MIN_BYTES and row_bytes >= STREAM_MIN_ROW_BYTES


cdef void _run_with_scratch(
    xent_rows_fn fn, const xent_args* k, Py_ssize_t N, Py_ssize_t C, Py_ssize_t itemsize,
    Py_ssize_t values=0,
):
    """fn over the rows on the chosen threads, each with room for ``values`` elements of
    ``itemsize`` bytes (0: a row of exp(A_c - m) and the kernels' block shifts)."""
    cdef int n_threads = _threads(N, C)
    if values == 0:
        values = C + C // 64 + 2
    cdef unsigned char[:, ::1] scratch = np.empty((n_threads, values * itemsize), np.uint8)
    with nogil:
        _run(fn, k, N, n_threads, <char*>&scratch[0, 0], scratch.strides[0])


cdef inline int _dtype(floating* unused) noexcept nogil:
    return 0 if floating is float else 1


cdef xent_rows_fn _cross_entropy_fn(
    double temperature, double softcap, int dtype, Py_ssize_t C, Py_ssize_t itemsize, Py_ssize_t* values
) noexcept nogil:
    """The cross-entropy rows' kernel of a call (of transformed logits, cross_entropy_tx, where it
    has a temperature or a soft-cap; the plain one otherwise), and into ``values`` the scratch
    values of ``itemsize`` bytes a thread of it needs."""
    if temperature != 1.0 or softcap > 0:
        values[0] = xent_tx_scratch(C, itemsize)
        return _kernels.cross_entropy_tx[dtype]
    values[0] = C + C // 64 + 2
    return _kernels.cross_entropy[dtype]


cdef void _run_cross_entropy(
    xent_args* k, floating[:, :] G, double[::1] loss, Py_ssize_t N, Py_ssize_t C
):
    """Completes k with the outputs (G None: the losses alone) and runs the cross-entropy rows
    on the chosen threads."""
    k.rows_out = <char*>&G[0, 0] if G is not None else NULL
    k.rows_out_stride = G.strides[0] if G is not None else 0
    k.per_row_out = &loss[0]
    k.C = C
    k.nt_store = _stream(G is not None, N, C * <Py_ssize_t>sizeof(floating))
    cdef Py_ssize_t values
    cdef xent_rows_fn fn = _cross_entropy_fn(
        k.temperature, k.softcap, _dtype(<floating*>NULL), C, sizeof(floating), &values
    )
    _run_with_scratch(fn, k, N, C, sizeof(floating), values)


cdef _check_logits(const floating[:, :] A, Py_ssize_t n_out):
    """A is (N, C) with C >= 1 classes at unit stride, and a per-row output has N elements."""
    if A.shape[1] < 1:
        raise ValueError("A must have at least one class, got C = 0")
    _check_rows("A", A, A.shape[0], A.shape[1])
    _check_length("loss", n_out, A.shape[0])


cdef _check_weight(const floating[::1] weight, Py_ssize_t C):
    if weight is not None:
        _check_length("weight", weight.shape[0], C)


cdef _check_gradient(const floating[:, :] G, Py_ssize_t N, Py_ssize_t C):
    if G is not None:
        _check_rows("G", G, N, C)


cdef void _set_logits(xent_args* k, const floating[:, :] A) noexcept:
    """k zeroed (no z-loss, temperature 1, no soft-cap), then the (N, C) logits rows it reads."""
    memset(k, 0, sizeof(xent_args))
    k.temperature = 1.0
    k.A = <const char*>&A[0, 0]
    k.a_stride = A.strides[0]
    k.C = A.shape[1]


cdef _set_options(xent_args* k, double z_loss, double temperature, double softcap):
    """The loss options into k, checked again here (the kernels rely on them)."""
    # (xentcy._checks.SCALE_RANGE: 1 / T and 1 / (T cap) normal float32 numbers)
    if not (z_loss >= 0 and 1e-15 <= temperature <= 1e15 and (softcap == 0 or 1e-15 <= softcap <= 1e15)) or isinf(z_loss):
        raise ValueError(
            f"z_loss must be finite and >= 0, temperature in [1e-15, 1e15] and softcap 0 or in it; "
            f"got {z_loss}, {temperature}, {softcap}"
        )
    k.z_loss, k.temperature, k.softcap = z_loss, temperature, softcap


def cross_entropy_index(
    const floating[:, :] A,             # IN  (N, C) logits
    const Py_ssize_t[::1] y,            # IN  (N,) class indices
    const floating[::1] weight,         # IN  (C,) class weights, or None
    double weight_sum,                  # IN  sum_c w_c (the smoothing term's), with weight
    double eps,                         # IN  label smoothing
    Py_ssize_t ignore_index,
    double scale,                       # IN  the gradient's factor (1/D for the mean)
    floating[:, :] G,                   # OUT (N, C) gradient, or None for the losses alone
    double[::1] loss,                   # OUT (N,) per-row losses
    double z_loss=0.0,                  # IN  the z-loss's factor (0: none)
    double temperature=1.0,             # IN  the logits are divided by it, then
    double softcap=0.0,                 # IN  soft-capped to softcap tanh(x / softcap) (0: not)
):
    """Per-row losses of class-index targets into ``loss``; the gradient into G.

    A row whose index is neither ignore_index nor in [0, C) gets a NaN loss and gradient.
    """
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1]
    cdef xent_args k
    _check_logits(A, loss.shape[0])
    _check_weight(weight, C)
    _check_gradient(G, N, C)
    _check_length("y", y.shape[0], N)
    if N == 0:
        return
    _set_logits(&k, A)
    k.y = <const ptrdiff_t*>&y[0]
    k.w = &weight[0] if weight is not None else NULL
    k.w_sum = weight_sum if weight is not None else C
    k.eps, k.scale, k.ignore_index = eps, scale, ignore_index
    _set_options(&k, z_loss, temperature, softcap)
    _run_cross_entropy(&k, G, loss, N, C)


def cross_entropy_prob(
    const floating[:, :] A,             # IN  (N, C) logits
    const floating[:, :] Q,             # IN  (N, C) class probabilities
    const floating[::1] weight,         # IN  (C,) class weights, or None
    double eps,                         # IN  label smoothing
    double scale,                       # IN  the gradient's factor
    floating[:, :] G,                   # OUT (N, C) gradient, or None for the losses alone
    double[::1] loss,                   # OUT (N,) per-row losses
    double z_loss=0.0,                  # IN  as in cross_entropy_index
    double temperature=1.0,
    double softcap=0.0,
):
    """Per-row losses of probability targets into ``loss``; the gradient into G."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1]
    cdef xent_args k
    _check_logits(A, loss.shape[0])
    _check_weight(weight, C)
    _check_gradient(G, N, C)
    _check_rows("Q", Q, N, C)
    if N == 0:
        return
    _set_logits(&k, A)
    k.Q = <const char*>&Q[0, 0]
    k.q_stride = Q.strides[0]
    k.w = &weight[0] if weight is not None else NULL
    k.eps, k.scale = eps, scale
    _set_options(&k, z_loss, temperature, softcap)
    _run_cross_entropy(&k, G, loss, N, C)


def evaluate_index(
    const floating[:, :] A,             # IN  (N, C) logits
    const Py_ssize_t[::1] y,            # IN  (N,) class indices
    const floating[::1] weight,         # IN  (C,) class weights, or None
    Py_ssize_t ignore_index,
    double[::1] loss,                   # OUT (N,)
    Py_ssize_t[::1] rank,               # OUT (N,)
    double[::1] entropy,                # OUT (N,)
):
    """Per row of class-index targets, in one pass: the loss (weighted, no smoothing) into
    ``loss``, the target's rank into ``rank`` (-1 where ignored, C for a NaN row) and the
    entropy of the row's softmax into ``entropy`` (0 where ignored)."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1]
    cdef xent_args k
    _check_logits(A, loss.shape[0])
    _check_weight(weight, C)
    _check_length("y", y.shape[0], N)
    _check_length("rank", rank.shape[0], N)
    _check_length("entropy", entropy.shape[0], N)
    if N == 0:
        return
    _set_logits(&k, A)
    k.y = <const ptrdiff_t*>&y[0]
    k.w = &weight[0] if weight is not None else NULL
    k.ignore_index = ignore_index
    k.per_row_out = &loss[0]
    k.rank = <ptrdiff_t*>&rank[0]
    k.entropy = &entropy[0]
    with nogil:
        _run(_kernels.evaluate[_dtype(<floating*>NULL)], &k, N, _threads(N, C), NULL, 0)


def compare_rows(const floating[:, :] A, const floating[:, :] B, double[::1] kl, Py_ssize_t[::1] agree):
    """Per row pair of A (a model's logits) and B (a reference's), in one pass over both:
    KL(softmax(B) || softmax(A)) into ``kl`` (NaN where either softmax is undefined: a NaN,
    a +inf, no finite logit) and whether their argmax (first index) agree into ``agree``
    (0 for such rows)."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1]
    cdef xent_args k
    _check_logits(A, kl.shape[0])
    _check_rows("B", B, N, C)
    _check_length("agree", agree.shape[0], N)
    if N == 0:
        return
    _set_logits(&k, A)
    k.Q = <const char*>&B[0, 0]
    k.q_stride = B.strides[0]
    k.per_row_out = &kl[0]
    k.rank = <ptrdiff_t*>&agree[0]
    with nogil:
        _run(_kernels.compare[_dtype(<floating*>NULL)], &k, N, _threads(N, 2 * C), NULL, 0)


def softmax(const floating[:, :] A, floating[:, :] out, bint log_space):
    """softmax (or log_softmax where ``log_space``) of each row of A into ``out``."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1]
    cdef xent_args k
    _check_rows("A", A, N, C)
    _check_rows("out", out, N, C)
    if N == 0 or C == 0:
        return
    _set_logits(&k, A)
    k.rows_out = <char*>&out[0, 0]
    k.rows_out_stride = out.strides[0]
    k.log_space = log_space
    _run_with_scratch(_kernels.softmax[_dtype(<floating*>NULL)], &k, N, C, sizeof(floating))


def logsumexp(const floating[:, :] A, floating[::1] out):
    """log sum_c exp(A_c) of each row of A into ``out`` (-inf for rows of no class)."""
    cdef Py_ssize_t N = A.shape[0], C = A.shape[1], i
    cdef xent_args k
    _check_rows("A", A, N, C)
    _check_length("out", out.shape[0], N)
    if C == 0:
        for i in range(N):
            out[i] = -INFINITY
        return
    if N == 0:
        return
    _set_logits(&k, A)
    k.per_row_out = &out[0]
    with nogil:
        _run(_kernels.logsumexp[_dtype(<floating*>NULL)], &k, N, _threads(N, C), NULL, 0)


def class_index_summary(
    const Py_ssize_t[::1] y,            # IN  (N,) class indices
    const double[::1] weight,           # IN  (C,) class weights, or None
    Py_ssize_t ignore_index,
    Py_ssize_t num_classes,
):
    """(D, bad) of class indices y in one pass: D = sum of w[y] over the samples that
    are not ignored (their count without weights), in float64; bad = None, or the
    largest index >= C if there is one, else the smallest negative one.
    """
    cdef Py_ssize_t N = y.shape[0], i, v, high = -1, low = 0, count = 0
    cdef ptrdiff_t kept = 0, n_bad = 0
    cdef double total = 0.0
    cdef bint has_weight = weight is not None
    if has_weight:
        _check_length("weight", weight.shape[0], num_classes)
    if N == 0:
        return 0.0, None
    with nogil:
        if not has_weight:
            # an integer count (exact, no chain of float additions), vectorized
            _kernels.count_kept(<const ptrdiff_t*>&y[0], N, ignore_index, num_classes, &kept, &n_bad)
            count = kept
        if has_weight or n_bad:
            # the weights' sum, or which index is out of range (for the message)
            count = 0
            for i in range(N):
                v = y[i]
                if v == ignore_index:
                    continue
                if <size_t>v < <size_t>num_classes:
                    if has_weight:
                        total += weight[v]
                    else:
                        count += 1
                elif v >= num_classes:
                    high = v if v > high else high
                else:
                    low = v if v < low else low
    cdef double d = total if has_weight else <double>count
    if high >= num_classes:
        return d, high
    return d, (low if low < 0 else None)


# -- the fused cross-entropy as an XLA FFI custom call (xent_xla.h), for xentcy.jax

cdef extern from "xent_xla.h" nogil:
    ctypedef struct XLA_FFI_CallFrame:
        pass
    ctypedef struct XLA_FFI_Error:
        pass
    ctypedef struct xent_xla_call:
        const char* A
        int f64
        int64_t N, C
        const void* y
        int y64
        const char* Q
        const void* w
        void* loss
        int loss_f64
        char* G
        int64_t ignore_index
        double eps
        int reduction
        double z_loss, temperature, softcap, denominator
    int xent_xla_metadata(XLA_FFI_CallFrame* frame)
    XLA_FFI_Error* xent_xla_error(const XLA_FFI_CallFrame* frame, int code, const char* message)
    const char* xent_xla_parse(const XLA_FFI_CallFrame* frame, xent_xla_call* c)
    int64_t xent_xla_index(const xent_xla_call* c, int64_t i)
    double xent_xla_denominator(const xent_xla_call* c)
    void xent_xla_advise_huge_pages(void* p, size_t n)
    int XENT_XLA_INVALID_ARGUMENT, XENT_XLA_RESOURCE_EXHAUSTED


cdef XLA_FFI_Error* _xla_cross_entropy(XLA_FFI_CallFrame* frame) noexcept nogil:
    """The handler: loss (reduced as asked) and gradient of one call, on XLA's buffers,
    with the rules of cross_entropy_index / cross_entropy_prob and of xentcy's reductions."""
    cdef xent_xla_call c
    cdef xent_args k
    cdef const char* problem
    cdef Py_ssize_t N, C, i, itemsize, values
    cdef double d, total = 0.0, scale = 1.0
    cdef double* rows = NULL
    cdef ptrdiff_t* y = NULL
    cdef char* scratch = NULL
    cdef int n_threads
    cdef xent_rows_fn fn
    if xent_xla_metadata(frame):
        return NULL
    problem = xent_xla_parse(frame, &c)
    if problem != NULL:
        return xent_xla_error(frame, XENT_XLA_INVALID_ARGUMENT, problem)
    N, C = c.N, c.C
    itemsize = sizeof(double) if c.f64 else sizeof(float)
    d = c.denominator if c.denominator > 0 else xent_xla_denominator(&c)
    if c.reduction == 0:  # the mean: 1/D, 0 where D = 0 (a zero gradient), NaN where D is inf
        scale = 0.0 if d == 0 else (NAN if isinf(d) else 1.0 / d)
    if N > 0:
        n_threads = _threads(N, C)
        fn = _cross_entropy_fn(c.temperature, c.softcap, 1 if c.f64 else 0, C, itemsize, &values)
        rows = <double*>malloc(N * sizeof(double))
        scratch = <char*>malloc(n_threads * values * itemsize)
        if c.y != NULL:
            y = <ptrdiff_t*>malloc(N * sizeof(ptrdiff_t))
        if rows == NULL or scratch == NULL or (c.y != NULL and y == NULL):
            free(rows)
            free(scratch)
            free(y)
            return xent_xla_error(frame, XENT_XLA_RESOURCE_EXHAUSTED, "xentcy_cross_entropy: out of memory")
        if c.y != NULL:
            for i in range(N):
                y[i] = <ptrdiff_t>xent_xla_index(&c, i)
        memset(&k, 0, sizeof(xent_args))
        k.A = c.A
        k.a_stride = C * itemsize
        k.y = y
        k.Q = c.Q
        k.q_stride = C * itemsize
        k.w = c.w
        k.w_sum = C
        if c.w != NULL:
            k.w_sum = 0.0
            for i in range(C):
                k.w_sum += (<const double*>c.w)[i] if c.f64 else (<const float*>c.w)[i]
        k.eps, k.scale, k.ignore_index = c.eps, scale, c.ignore_index
        k.z_loss, k.temperature, k.softcap = c.z_loss, c.temperature, c.softcap
        xent_xla_advise_huge_pages(c.G, N * C * itemsize if c.G != NULL else 0)
        k.rows_out = c.G
        k.rows_out_stride = C * itemsize
        k.per_row_out = rows
        k.C = C
        k.nt_store = _stream(c.G != NULL, N, C * itemsize)
        _run(fn, &k, N, n_threads, scratch, values * itemsize)
        free(scratch)
        free(y)
    if c.reduction == 2:
        for i in range(N):
            if c.loss_f64:
                (<double*>c.loss)[i] = rows[i]
            else:
                (<float*>c.loss)[i] = <float>rows[i]
    else:
        for i in range(N):  # in order: the same sum for any thread count
            total += rows[i]
        if c.reduction == 0:
            total = total / d if d != 0 else NAN
        if c.loss_f64:
            (<double*>c.loss)[0] = total
        else:
            (<float*>c.loss)[0] = <float>total
    free(rows)
    return NULL


def xla_cross_entropy():
    """The XLA FFI handler of the fused cross-entropy (xent_xla.h), as the PyCapsule that
    ``jax.ffi.register_ffi_target`` takes."""
    return PyCapsule_New(<void*>_xla_cross_entropy, NULL, NULL)
