// xentcy's CUDA kernels: softmax cross-entropy, its gradient, softmax, log_softmax, logsumexp.
//
// Compiled at first use by NVRTC through cupy.RawModule (name_expressions list every
// instantiation; xentcy/_cuda/__init__.py builds that list and launches). No host headers:
// NVRTC has no host standard library.
//
// Every kernel works on dense (N, C) rows: row i starts at i * C, the class axis is last
// with unit stride (the launcher copies other layouts first). A group of G threads
// (G a power of two; G <= 32 within one warp, G > 32 the whole block) owns one row.
// Thread `lane` of the group owns the 16-byte vectors lane, lane + G, lane + 2G, ... of
// the row, in every pass, so that a thread reads and writes only its own elements: the
// gradient can be written over the logits (inplace) without a race.
//
// Two shapes of kernel:
//   *_cached<T, NV>:  a row of at most G * NV vectors is held in registers: one read of
//                     the logits, one write of the result.
//   *_streamed<T>:    any C; pass 1 keeps an online max and sum, pass 2 reads the row again
//                     (mostly from L2) and writes: two reads and one write at most.
// The cross-entropy kernels come twice: plain, and with the language-model options z_loss,
// softcap and temperature (*_options_*, the Options policy below), so that the plain ones
// keep their code.
//
// Numerics mirror the CPU core (xentcy/_cpu/xent_rows.h): with m = max_c A_c (0 where that
// max is not finite) and s = sum_c exp(A_c - m), the loss of class c is (m - A_c) + log s,
// both terms >= 0; s is held split (add_term, log_sum) so that confident rows keep their digits. Half types accumulate in float; per-row losses are written as double.
// Reductions are fixed trees of shuffles and shared memory: results do not change from
// run to run, and there are no floating-point atomics.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace xentcy {

// The accumulation type: float for float, __half and __nv_bfloat16; double for double.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> struct Convert;
template <> struct Convert<float> {
    static __device__ __forceinline__ float from(float x) { return x; }
};
template <> struct Convert<double> {
    static __device__ __forceinline__ double from(double x) { return x; }
};
template <> struct Convert<__half> {
    static __device__ __forceinline__ __half from(float x) { return __float2half_rn(x); }
};
template <> struct Convert<__nv_bfloat16> {
    static __device__ __forceinline__ __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};

__device__ __forceinline__ float acc_inf(float) { return __int_as_float(0x7f800000); }
__device__ __forceinline__ double acc_inf(double) { return __longlong_as_double(0x7ff0000000000000LL); }
__device__ __forceinline__ float acc_nan(float) { return __int_as_float(0x7fffffff); }
__device__ __forceinline__ double acc_nan(double) { return __longlong_as_double(0x7ff8000000000000LL); }
__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }
__device__ __forceinline__ float acc_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double acc_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float acc_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double acc_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float acc_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double acc_abs(double x) { return fabs(x); }

// The gradient's factor: a value passed by the launcher, or one left on the device.
__device__ __forceinline__ double scale_of(double value, const double* ptr) { return ptr != nullptr ? *ptr : value; }

// The shift m: the row's max, or 0 where it is not finite (all -inf, +inf, empty), so that
// A_c - m never becomes inf - inf.
template <typename A> __device__ __forceinline__ A shift_of(A m) {
    return (m < acc_inf(m) && m > -acc_inf(m)) ? m : A(0);
}

// The larger of two values; like the CPU core's `a > m`, a NaN never becomes the max.
template <typename A> __device__ __forceinline__ A max_of(A m, A x) { return x > m ? x : m; }

// s = sum_c exp(A_c - m) is held split as (k, delta): k the terms with A_c = m (each exactly 1),
// delta the sum of the rest. A confident row has s = 1 + delta with delta tiny, where s itself
// rounds to 1 and log s and 1 - p_y lose every digit of the (tiny) loss and target gradient;
// from the split, log s = log k + log1p(delta / k), and 1 - p_c = ((k - 1) + delta) / s for a
// class at the max, both without cancellation.
template <typename A> __device__ __forceinline__ void add_term(A& ones, A& delta, A x, A shift, A e) {
    const bool at_max = x == shift;  // selects, not branches: the loops stay unrolled in registers
    ones += at_max ? A(1) : A(0);
    delta += at_max ? A(0) : e;
}

template <typename A> __device__ __forceinline__ A log_sum(A ones, A delta) {
    return ones > A(0) ? acc_log(ones) + acc_log1p(delta / ones) : acc_log(delta);
}

// p_c sum_k w_k q_k - w_c q_c for e = exp(A_c - m): at the max (e = 1, p_c near 1 in a confident
// row) as p_c (mass - w_c q_c) - w_c q_c (1 - p_c), 1 - p_c from the split sum.
template <typename A>
__device__ __forceinline__ A grad_term(A e, A inv_s, A ones, A delta, A mass, A wq) {
    const A p = e * inv_s;
    if (e == A(1) && ones >= A(1)) return p * (mass - wq) - wq * (((ones - A(1)) + delta) * inv_s);
    return p * mass - wq;
}

struct SumOp {
    template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};
struct MaxOp {
    template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return max_of(a, b); }
};

constexpr int kMaxReduce = 4;  // values reduced together, at most

// 16-byte vectors a streaming thread loads before it uses the first (16 floats; doubles: 4, as
// the kernels' 1024-thread launch bound leaves 64 registers a thread).
template <typename T> constexpr int kInFlight = sizeof(T) == 4 ? 4 : (sizeof(T) == 2 ? 2 : 1);

// Reduces v[0..K) over the G threads of a row group; every thread of the group gets the
// result. Every thread of the warp (G <= 32) or block (G > 32) must call it. The xor
// butterfly gives all lanes the same bits (a + b == b + a); the block stage adds the warps'
// values in a fixed order, so the result is the same on every run.
template <int K, typename Op, typename A>
__device__ __forceinline__ void group_reduce(A (&v)[K], int G, Op op, A (*smem)[kMaxReduce]) {
    static_assert(K <= kMaxReduce, "too many values for the shared-memory buffer");
    const int width = G < 32 ? G : 32;
    for (int offset = width / 2; offset > 0; offset >>= 1) {
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = op(v[k], __shfl_xor_sync(0xffffffffu, v[k], offset));
    }
    if (G > 32) {
        const int warp = threadIdx.x >> 5;
        if ((threadIdx.x & 31) == 0) {
#pragma unroll
            for (int k = 0; k < K; ++k) smem[warp][k] = v[k];
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = smem[0][k];
        for (int w = 1; w < G / 32; ++w) {
#pragma unroll
            for (int k = 0; k < K; ++k) v[k] = op(v[k], smem[w][k]);
        }
        __syncthreads();  // smem is reused by the next reduction
    }
}

// The shift of a row that the group holds in registers (x[k][i], -inf past the row): the
// row's max, or 0 where that max is not finite. Every thread of the group must call it.
template <int NV, int VEC, typename A>
__device__ __forceinline__ A cached_shift(const A (&x)[NV][VEC], int G, A (*smem)[kMaxReduce]) {
    A m[1] = {-acc_inf(A(0))};
#pragma unroll
    for (int k = 0; k < NV; ++k)
#pragma unroll
        for (int i = 0; i < VEC; ++i) m[0] = max_of(m[0], x[k][i]);
    group_reduce(m, G, MaxOp(), smem);
    return shift_of(m[0]);
}

// 16 bytes of T: VEC elements, loaded and stored as one vector where `aligned`.
template <typename T> struct alignas(16) Pack {
    static constexpr int VEC = 16 / int(sizeof(T));
    T v[VEC];
};

// Elements [base, base + VEC) of a row as accumulation values; those at or past `limit`
// are not read and come back as `fill`. `aligned`: the row starts on 16 bytes and C * sizeof(T)
// is a multiple of 16, so a vector is either wholly inside the row or wholly past it.
template <typename T, typename A, int VEC>
__device__ __forceinline__ void load_vec(const T* row, int base, int limit, bool aligned,
                                         A fill, A (&out)[VEC]) {
    if (aligned) {
        if (base < limit) {
            const Pack<T> p = *reinterpret_cast<const Pack<T>*>(row + base);
#pragma unroll
            for (int i = 0; i < VEC; ++i) out[i] = to_acc(p.v[i]);
        } else {
#pragma unroll
            for (int i = 0; i < VEC; ++i) out[i] = fill;
        }
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) out[i] = (base + i < limit) ? to_acc(row[base + i]) : fill;
    }
}

// Stores val into elements [base, base + VEC) of a row, those below C only.
template <typename T, typename A, int VEC>
__device__ __forceinline__ void store_vec(T* row, int base, int C, bool aligned,
                                          const A (&val)[VEC]) {
    if (aligned) {
        if (base < C) {
            Pack<T> p;
#pragma unroll
            for (int i = 0; i < VEC; ++i) p.v[i] = Convert<T>::from(val[i]);
            *reinterpret_cast<Pack<T>*>(row + base) = p;
        }
    } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            if (base + i < C) row[base + i] = Convert<T>::from(val[i]);
        }
    }
}

// Where a thread's row and lane are. Groups of G <= 32 threads share a block of several
// rows; a group of G > 32 threads is the whole block and owns one row.
struct RowSlot {
    long long row;
    int lane;
    bool active;  // false for the spare groups of the last block
    __device__ __forceinline__ RowSlot(int G, long long n_rows) {
        lane = int(threadIdx.x) & (G - 1);
        row = (long long)blockIdx.x * (blockDim.x / G) + threadIdx.x / G;
        active = row < n_rows;
    }
};

// The weight of class c: w_c, or 1 without weights.
template <typename T, typename A>
__device__ __forceinline__ A weight_of(const T* weight, int c) {
    return weight != nullptr ? to_acc(weight[c]) : A(1);
}

// Online max and sum: folds the values x (padding is -inf) into (m, ones, delta), the split
// sum_c exp(x - shift_of(m)). A rescale happens only when the shift changes.
template <typename A, int K>
__device__ __forceinline__ void online_fold(A& m, A& ones, A& delta, const A (&x)[K]) {
    A m_new = m;
#pragma unroll
    for (int i = 0; i < K; ++i) m_new = max_of(m_new, x[i]);
    if (m_new != m) {
        if (shift_of(m) != shift_of(m_new)) {  // the terms so far fall below the new max
            const A s = ones + delta;
            // s == 0 (nothing yet, or only -inf): nothing to rescale, and 0 * inf would be NaN
            delta = s != A(0) ? s * acc_exp(shift_of(m) - shift_of(m_new)) : A(0);
            ones = A(0);
        }
        m = m_new;
    }
    const A shift = shift_of(m);
#pragma unroll
    for (int i = 0; i < K; ++i) add_term(ones, delta, x[i], shift, acc_exp(x[i] - shift));
}

// Combines the threads' online (m, ones, delta) into the row's shift and split sum.
template <typename A>
__device__ __forceinline__ void combine_online(A m, A ones, A delta, int G, A (*smem)[kMaxReduce], A& shift,
                                               A& ones_out, A& delta_out) {
    A v[1] = {m};
    group_reduce(v, G, MaxOp(), smem);
    shift = shift_of(v[0]);
    const bool at_max = shift_of(m) == shift;
    const A s = ones + delta;
    A t[2] = {at_max ? ones : A(0), at_max ? delta : (s != A(0) ? s * acc_exp(shift_of(m) - shift) : A(0))};
    group_reduce(t, G, SumOp(), smem);
    ones_out = t[0];
    delta_out = t[1];
}

// The streamed pass over a row that needs nothing but its shift and split sum: vectors
// lane, lane + G, ... below `end`, U of them in flight; every thread of the group must call it.
template <int U, int VEC, typename T, typename A>
__device__ __forceinline__ void online_row(const T* row, int lane, int end, int G, int limit, bool aligned,
                                           A (*smem)[kMaxReduce], A& shift, A& ones_out, A& delta_out) {
    A m = -acc_inf(A(0)), ones = A(0), delta = A(0);
    for (int v0 = lane; v0 < end; v0 += G * U) {
        A x[U][VEC];
#pragma unroll
        for (int u = 0; u < U; ++u) load_vec(row, (v0 + u * G) * VEC, limit, aligned, -acc_inf(A(0)), x[u]);
#pragma unroll
        for (int u = 0; u < U; ++u) online_fold(m, ones, delta, x[u]);
    }
    combine_online(m, ones, delta, G, smem, shift, ones_out, delta_out);
}

// ---------------------------------------------------------------------------------------
// The language-model options of a cross-entropy launch, as a policy of the two kernels below.
// Plain: none, and none of their code (the plain kernels compile as they did before the
// options). Options: every row's logits are divided by the temperature, x_c = A_c / T, then,
// where cap > 0, soft-capped, z_c = cap tanh(x_c / cap); the cross-entropy is that of z; a
// counted row's loss gets z_loss lse^2 (lse = m + log s of z, unweighted), which adds
// 2 z_loss lse to the factor of p_c in dL/dz_c; the gradient is chained back to the logits,
// dL/dA_c = dL/dz_c (1 - tanh(x_c / cap)^2) / T.
// ---------------------------------------------------------------------------------------

struct Plain {
    static constexpr bool on = false;
};

template <typename A>
struct Options {
    static constexpr bool on = true;
    double z_loss;  // 0: none
    A inv_t;        // 1 / temperature
    A cap, inv_cap; // cap 0: no soft-cap

    __device__ __forceinline__ Options(double z, double softcap, double temperature)
        : z_loss(z), inv_t(A(1.0 / temperature)), cap(A(softcap)), inv_cap(A(softcap > 0.0 ? 1.0 / softcap : 0.0)) {}

    __device__ __forceinline__ bool capped() const { return cap > A(0); }
    // z_c of a logit A_c of the row (never of the -inf padding past it: that must stay -inf).
    // tanh(+-inf) = +-1: a masked class (-inf) gets z = -cap, as the definition has it.
    __device__ __forceinline__ A value(A a) const {
        const A x = a * inv_t;
        return capped() ? cap * acc_tanh(x * inv_cap) : x;
    }
    // dz_c/dA_c. 1 - tanh(u)^2 = r (2 - r) with r = 2 / (exp(2|u|) + 1) = 1 - |tanh u|: no
    // cancellation where tanh rounds to 1, so that a saturated class keeps the digits of its
    // (small) gradient (as the CPU core's vector tanh); exp overflows to inf for large |u|, and
    // the slope is then 0, as it is at +-inf.
    __device__ __forceinline__ A slope(A a) const {
        if (!capped()) return inv_t;
        const A u = (a * inv_t) * inv_cap;
        const A r = A(2) / (acc_exp(A(2) * acc_abs(u)) + A(1));
        return inv_t * (r * (A(2) - r));
    }
    // The z-loss of a row: z_loss lse^2, for a counted row only (0 without a z-loss, so that a
    // NaN or infinite lse adds nothing there).
    __device__ __forceinline__ double loss_term(bool counted, double lse) const {
        return counted && z_loss != 0.0 ? z_loss * lse * lse : 0.0;
    }
    // sum_k w_k q_k, the factor of p_c in the gradient, plus 2 z_loss lse (in double, as the
    // CPU core; unchanged without a z-loss).
    __device__ __forceinline__ A mass(A mass, bool counted, double lse) const {
        return counted && z_loss != 0.0 ? A(double(mass) + 2.0 * z_loss * lse) : mass;
    }
};

// ---------------------------------------------------------------------------------------
// The target of a cross-entropy row, as a policy of the two kernels below (one that holds
// a row in registers, one that streams it): what differs between class indices and class
// probabilities, and nothing else. A policy holds the kernel's target arguments and, once
// begin() has run, the row's state:
//   reads(slot)           whether the row's logits are read (an ignored row and a bad index
//                         read nothing)
//   Held<NV, VEC>, hold   what a cached thread keeps beside its logits, and its loading
//   Vectors<U, VEC>, load what a streaming thread loads beside each logit vector
//   fold(...)             one class's terms of the row's sums: t and `extra` (below)
//   first_pass(...)       a streaming pass-1 vector's part of `extra`
//   extra                 m - A_y (indices) or sum_c w_c q_c (probabilities), reduced
//   finish(C)             the row's scalars, after the reductions
//   loss, mass, wq        the loss, sum_c w_c q_c and w_c q_c of class c
//   fill(scale), fill_value  whether the gradient row is one value (ignored and bad rows,
//                         scale 0), and which
//   counted()             whether the row counts (the z-loss is added to counted rows only)
// ---------------------------------------------------------------------------------------

// Class indices: q_c = (1 - eps) [c == y] + eps / C. target: an int64 index per row; a row
// equal to ignore_index has loss 0 and gradient 0; an index outside [0, C) (excluded by the
// checks above) is never read through: its loss and gradient are NaN. weight_sum: sum_c w_c
// (float64 on the device, for smoothing) or nullptr.
template <typename T>
struct IndexTarget {
    using A = typename Acc<T>::type;
    static constexpr int kVectorsInFlight = kInFlight<T>;
    template <int NV, int VEC> struct Held {};
    template <int U, int VEC> struct Vectors {};

    const long long* __restrict__ target;
    const T* __restrict__ weight;
    const double* __restrict__ weight_sum;
    long long ignore_index;
    double eps;
    // the row
    long long y;
    bool live, bad;
    int yi;
    A extra;  // m - A_y
    A wq_y, wq_smooth, row_mass;

    __device__ __forceinline__ void begin(const RowSlot& slot, long long C) {
        y = slot.active ? target[slot.row] : ignore_index;
        const bool ignored = y == ignore_index;
        bad = !ignored && (y < 0 || y >= C);
        live = slot.active && !ignored && !bad;
        yi = live ? int(y) : -1;
    }
    __device__ __forceinline__ bool reads(const RowSlot&) const { return live; }
    __device__ __forceinline__ bool counted() const { return live; }  // not ignored, a valid index
    __device__ __forceinline__ bool smoothing() const { return eps != 0.0; }

    template <int NV, int VEC>
    __device__ __forceinline__ void hold(Held<NV, VEC>&, int, const T*, int, int, bool) const {}
    template <int U, int VEC>
    __device__ __forceinline__ void load(Vectors<U, VEC>&, int, const T*, int, int, bool) const {}

    // class c (below `limit`) of logit x: sum_c w_c (m - A_c) for smoothing into t, and
    // m - A_y into extra
    template <typename H>
    __device__ __forceinline__ void fold(const H&, int, int, int c, int limit, A x, A shift, A& t, A& ex) const {
        if (c >= limit) return;
        if (eps != 0.0) {
            const A w_c = weight_of<T, A>(weight, c);
            if (w_c != A(0)) t += w_c * (shift - x);
        }
        if (c == yi) ex = shift - x;
    }
    // the streaming pass 1: the thread holding A_y keeps it (m - A_y needs the final shift)
    template <typename V, int VEC>
    __device__ __forceinline__ void first_pass(const V&, int, int base, int, const A (&x)[VEC], A& a_y,
                                               bool& has_y) const {
        if (yi >= base && yi < base + VEC) {
#pragma unroll
            for (int i = 0; i < VEC; ++i)
                if (base + i == yi) a_y = x[i];
            has_y = true;
        }
    }
    __device__ __forceinline__ A first_pass_extra(A shift, A a_y, bool has_y) const {
        return has_y ? shift - a_y : A(0);
    }
    // w_y (1 where unweighted or not live) and sum_c w_c, read where they are needed: the
    // loss reads them again after the gradient's pass, rather than hold them through it
    __device__ __forceinline__ double w_y() const {
        return (live && weight != nullptr) ? double(to_acc(weight[y])) : 1.0;
    }
    __device__ __forceinline__ double w_sum(long long C) const {
        return weight_sum != nullptr ? *weight_sum : double(C);
    }
    // what the gradient needs of the row: w_y q_y, eps / C and sum_c w_c q_c
    __device__ __forceinline__ void finish(long long C) {
        const double smooth = eps / double(C), wy = w_y();
        wq_y = A(wy * (smooth + 1.0 - eps));
        wq_smooth = A(smooth);
        // sum_c w_c q_c, the softmax's factor in the gradient; without smoothing the classes
        // off the target have zero mass and add nothing, whatever their weight (NaN, inf)
        row_mass = A((1.0 - eps) * wy + (eps != 0.0 ? smooth * w_sum(C) : 0.0));
    }
    // loss = (1 - eps) w_y ((m - A_y) + log s) + (eps / C) (sum_c w_c (m - A_c) + log s sum_c w_c)
    __device__ __forceinline__ double loss(double t, double log_s, long long C) const {
        if (!live) return bad ? acc_nan(0.0) : 0.0;
        const double wy = w_y(), smooth = eps / double(C);
        double l = 0.0;
        // skipped at zero mass, where A_y may be -inf
        if ((1.0 - eps) * wy != 0.0) l = (1.0 - eps) * wy * (double(extra) + log_s);
        // no mass adds nothing, even where log s is infinite (as in the probability rows)
        if (eps != 0.0) {
            const double ws = w_sum(C);
            l += smooth * (t + (ws != 0.0 ? ws * log_s : 0.0));
        }
        return log_s == log_s ? l : log_s;  // a NaN logit gives NaN, even at zero target mass
    }
    __device__ __forceinline__ A mass() const { return row_mass; }
    // w_c q_c of class c < C
    template <typename H>
    __device__ __forceinline__ A wq(const H&, int, int, int c) const {
        if (c == yi) return wq_y;
        if (eps == 0.0) return A(0);
        return weight_of<T, A>(weight, c) * wq_smooth;
    }
    __device__ __forceinline__ bool fill(double scale) const { return !live || scale == 0.0; }
    __device__ __forceinline__ A fill_value() const { return bad ? acc_nan(A(0)) : A(0); }
};

// Class probabilities q (N, C) in the logits' dtype, smoothed to (1 - eps) q + eps / C;
// w_c q_c kept in registers beside the logits (cached) or loaded beside them (streamed).
template <typename T>
struct ProbTarget {
    using A = typename Acc<T>::type;
    // (logits, target) pairs in flight: two vectors of each at most
    static constexpr int kVectorsInFlight = kInFlight<T> > 1 ? kInFlight<T> / 2 : 1;
    template <int NV, int VEC> struct Held { A wq[NV][VEC]; };
    template <int U, int VEC> struct Vectors { A q[U][VEC]; };

    const T* target;
    const T* __restrict__ weight;
    double eps;
    // the row
    bool live;
    A extra;  // sum_c w_c q_c
    A one_minus_eps, smooth;

    __device__ __forceinline__ void begin(const RowSlot& slot, long long C) {
        live = slot.active;
        one_minus_eps = A(1.0 - eps);
        smooth = A(eps / double(C));
    }
    __device__ __forceinline__ bool reads(const RowSlot& slot) const { return slot.active; }
    __device__ __forceinline__ bool counted() const { return live; }  // every row
    __device__ __forceinline__ bool smoothing() const { return true; }  // (t is the loss itself)

    // w_c q_c of class c from its loaded q_c; 0 past the row
    __device__ __forceinline__ A weighted(A q, int c, int limit) const {
        return c < limit ? (one_minus_eps * q + smooth) * weight_of<T, A>(weight, c) : A(0);
    }
    template <int NV, int VEC>
    __device__ __forceinline__ void hold(Held<NV, VEC>& h, int k, const T* q, int base, int limit,
                                         bool aligned) const {
        load_vec(q, base, limit, aligned, A(0), h.wq[k]);
#pragma unroll
        for (int i = 0; i < VEC; ++i) h.wq[k][i] = weighted(h.wq[k][i], base + i, limit);
    }
    template <int U, int VEC>
    __device__ __forceinline__ void load(Vectors<U, VEC>& v, int u, const T* q, int base, int limit,
                                         bool aligned) const {
        load_vec(q, base, limit, aligned, A(0), v.q[u]);
    }
    // class c: w_c q_c (m - A_c) into t and w_c q_c into extra, over the classes of nonzero mass
    template <typename H>
    __device__ __forceinline__ void fold(const H& h, int k, int i, int c, int limit, A x, A shift, A& t,
                                         A& ex) const {
        const A w = wq(h, k, i, c);
        (void)limit;
        if (w != A(0)) {
            t += w * (shift - x);
            ex += w;
        }
    }
    template <typename V, int VEC>
    __device__ __forceinline__ void first_pass(const V& v, int u, int base, int limit, const A (&)[VEC], A& mass,
                                               bool&) const {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const A w = weighted(v.q[u][i], base + i, limit);
            if (w != A(0)) mass += w;
        }
    }
    __device__ __forceinline__ A first_pass_extra(A, A mass, bool) const { return mass; }
    __device__ __forceinline__ void finish(long long) {}
    // sum_c w_c q_c ((m - A_c) + log s)
    __device__ __forceinline__ double loss(double t, double log_s, long long) const {
        if (log_s != log_s) return log_s;  // a NaN logit gives NaN, even at zero target mass
        const double m = double(extra);
        return m != 0.0 ? t + m * log_s : t;
    }
    __device__ __forceinline__ A mass() const { return extra; }
    // w_c q_c: held (cached), or from the vector loaded beside the logits (streamed)
    template <int NV, int VEC>
    __device__ __forceinline__ A wq(const Held<NV, VEC>& h, int k, int i, int) const { return h.wq[k][i]; }
    template <int U, int VEC>
    __device__ __forceinline__ A wq(const Vectors<U, VEC>& v, int u, int i, int c) const {
        return weighted(v.q[u][i], c, c + 1);
    }
    __device__ __forceinline__ bool fill(double scale) const { return scale == 0.0; }
    __device__ __forceinline__ A fill_value() const { return A(0); }
};

// One row of at most G * NV vectors a group, held in registers: one read of the logits
// (and of the probabilities), one write of the gradient. With a soft-cap (Options), the
// gradient's pass reads the logits again for the cap's slope: its registers hold exp(z_c - m)
// by then, and a second array of them would not fit the 1024-thread tiers' 64 registers.
template <typename Target, int NV, typename Opt, typename T>
__device__ __forceinline__ void cached_rows(Target& tg, const T* logits, const T* target_rows, T* grad,
                                            double* __restrict__ loss, long long n_rows, long long C, int G,
                                            bool aligned, double scale_value, const double* scale_ptr,
                                            const Opt& opt) {
    using A = typename Acc<T>::type;
    constexpr int VEC = Pack<T>::VEC;
    __shared__ A smem[32][kMaxReduce];
    const RowSlot slot(G, n_rows);
    tg.begin(slot, C);
    const bool reads = tg.reads(slot);
    const int limit = reads ? int(C) : 0;  // a row that is not read reads nothing
    const long long offset = reads ? slot.row * C : 0;

    A x[NV][VEC];
    typename Target::template Held<NV, VEC> held;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
        const int base = (k * G + slot.lane) * VEC;
        load_vec(logits + offset, base, limit, aligned, -acc_inf(A(0)), x[k]);
        tg.hold(held, k, target_rows + offset, base, limit, aligned);
        if constexpr (Opt::on) {
#pragma unroll
            for (int i = 0; i < VEC; ++i)
                if (base + i < limit) x[k][i] = opt.value(x[k][i]);
        }
    }
    const A shift = cached_shift(x, G, smem);

    // part = {s as (ones, delta), t, extra}; x becomes exp(A_c - m) (padding: exp(-inf) = 0)
    A part[4] = {A(0), A(0), A(0), A(0)};
#pragma unroll
    for (int k = 0; k < NV; ++k) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const int c = (k * G + slot.lane) * VEC + i;
            const A xi = x[k][i];
            x[k][i] = acc_exp(xi - shift);
            add_term(part[0], part[1], xi, shift, x[k][i]);
            tg.fold(held, k, i, c, limit, xi, shift, part[2], part[3]);
        }
    }
    group_reduce(part, G, SumOp(), smem);
    if (!slot.active) return;  // no reduction follows

    tg.extra = part[3];
    tg.finish(C);
    if constexpr (Opt::on) {
        if (slot.lane == 0) {
            const double log_s = double(log_sum(part[0], part[1]));
            loss[slot.row] = tg.loss(double(part[2]), log_s, C) + opt.loss_term(tg.counted(), double(shift) + log_s);
        }
    } else {
        if (slot.lane == 0) loss[slot.row] = tg.loss(double(part[2]), double(log_sum(part[0], part[1])), C);
    }
    if (grad == nullptr) return;

    // dL/dA_c = scale (p_c sum_k w_k q_k - w_c q_c); one value where the row is filled
    // read late: a value held from the kernel's start would cost registers the row needs
    const double scale = scale_of(scale_value, scale_ptr);
    const bool fill = tg.fill(scale);
    const A fill_value = tg.fill_value();
    const A inv_s = A(1) / (part[0] + part[1]);
    A mass = tg.mass();
    if constexpr (Opt::on) {
        if (!fill) mass = opt.mass(mass, tg.counted(), double(shift) + double(log_sum(part[0], part[1])));
    }
    const A sc = A(scale);
    T* g = grad + slot.row * C;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
        const int base = (k * G + slot.lane) * VEC;
        A out[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const int c = base + i;
            out[i] = fill_value;
            if (!fill && c < int(C))
                out[i] = sc * grad_term(x[k][i], inv_s, part[0], part[1], mass, tg.wq(held, k, i, c));
        }
        if constexpr (Opt::on) {
            // dL/dz_c into dL/dA_c (a filled row keeps its value); with a soft-cap the logits
            // are read again for the slope, before the store below, which may write over them
            // (elements past the row read as 0 and are not stored)
            if (!fill && opt.capped()) {
                A raw[VEC];
                load_vec(logits + offset, base, limit, aligned, A(0), raw);
#pragma unroll
                for (int i = 0; i < VEC; ++i) out[i] *= opt.slope(raw[i]);
            } else if (!fill) {
#pragma unroll
                for (int i = 0; i < VEC; ++i) out[i] *= opt.inv_t;
            }
        }
        store_vec(g, base, int(C), aligned, out);
    }
}

// The U vectors a streaming thread takes of its row at v0 (-inf past the row), and the
// target's vectors beside them.
template <typename Target, int U, int VEC, typename T, typename A>
__device__ __forceinline__ void load_vectors(const Target& tg, const T* a, const T* q, int v0, int G, int limit,
                                             bool aligned, A (&x)[U][VEC],
                                             typename Target::template Vectors<U, VEC>& vs) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int base = (v0 + u * G) * VEC;
        load_vec(a, base, limit, aligned, -acc_inf(A(0)), x[u]);
        tg.load(vs, u, q, base, limit, aligned);
    }
}

// (Options) z_c of the logits a streaming thread loaded at v0: the row's elements only, the
// padding past it stays -inf.
template <typename Opt, int U, int VEC, typename A>
__device__ __forceinline__ void transform_vectors(const Opt& opt, int v0, int G, int limit, A (&x)[U][VEC]) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
        for (int i = 0; i < VEC; ++i)
            if ((v0 + u * G) * VEC + i < limit) x[u][i] = opt.value(x[u][i]);
}

// Any C: pass 1 keeps an online max and sum, pass 2 reads the row again (mostly from L2),
// for t and the gradient: two reads of the logits (and the probabilities) and one write.
template <typename Target, typename Opt, typename T>
__device__ __forceinline__ void streamed_rows(Target& tg, const T* logits, const T* target_rows, T* grad,
                                              double* __restrict__ loss, long long n_rows, long long C, int G,
                                              bool aligned, double scale_value, const double* scale_ptr,
                                              const Opt& opt) {
    using A = typename Acc<T>::type;
    constexpr int VEC = Pack<T>::VEC;
    constexpr int U = Target::kVectorsInFlight;  // vectors in flight per thread
    __shared__ A smem[32][kMaxReduce];
    const RowSlot slot(G, n_rows);
    tg.begin(slot, C);
    const bool reads = tg.reads(slot);
    const int limit = reads ? int(C) : 0;
    const long long offset = reads ? slot.row * C : 0;
    const T* a = logits + offset;
    const T* q = target_rows + offset;
    const int n_vec = int((C + VEC - 1) / VEC);
    const int step = G * U;
    const A neg_inf = -acc_inf(A(0));

    // pass 1: online max and sum, and the policy's first-pass value
    A m = neg_inf, ones = A(0), delta = A(0), first = A(0);
    bool has_first = false;
    for (int v0 = slot.lane; v0 < (reads ? n_vec : 0); v0 += step) {
        A x[U][VEC];
        typename Target::template Vectors<U, VEC> vs;
        load_vectors(tg, a, q, v0, G, limit, aligned, x, vs);
        if constexpr (Opt::on) transform_vectors(opt, v0, G, limit, x);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            online_fold(m, ones, delta, x[u]);
            tg.first_pass(vs, u, (v0 + u * G) * VEC, limit, x[u], first, has_first);
        }
    }
    A shift, sum_ones, sum_delta;
    combine_online(m, ones, delta, G, smem, shift, sum_ones, sum_delta);
    A ex[1] = {tg.first_pass_extra(shift, first, has_first)};
    group_reduce(ex, G, SumOp(), smem);
    tg.extra = ex[0];
    tg.finish(C);

    // pass 2: t, and the gradient
    A t[1] = {A(0)};
    if (tg.smoothing() || grad != nullptr) {
        // read late: a value held from the kernel's start would cost registers the row needs
        const double scale = scale_of(scale_value, scale_ptr);
        const bool fill = tg.fill(scale);
        const A fill_value = tg.fill_value();
        const A inv_s = A(1) / (sum_ones + sum_delta);
        A mass = tg.mass();
        if constexpr (Opt::on) {
            if (!fill) mass = opt.mass(mass, tg.counted(), double(shift) + double(log_sum(sum_ones, sum_delta)));
        }
        const A sc = A(scale);
        T* g = grad != nullptr && slot.active ? grad + slot.row * C : nullptr;
        const int end = g != nullptr || reads ? n_vec : 0;
        for (int v0 = slot.lane; v0 < end; v0 += step) {
            A x[U][VEC];
            typename Target::template Vectors<U, VEC> vs;
            load_vectors(tg, a, q, v0, G, limit, aligned, x, vs);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int base = (v0 + u * G) * VEC;
                A out[VEC];
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const int c = base + i;
                    out[i] = fill_value;
                    if (c < limit) {
                        A unused = A(0);
                        if constexpr (Opt::on) {
                            // z_c from A_c, and dL/dz_c chained back to dL/dA_c
                            const A z = opt.value(x[u][i]);
                            tg.fold(vs, u, i, c, limit, z, shift, t[0], unused);
                            if (!fill)
                                out[i] = sc * grad_term(acc_exp(z - shift), inv_s, sum_ones, sum_delta, mass,
                                                        tg.wq(vs, u, i, c)) * opt.slope(x[u][i]);
                        } else {
                            tg.fold(vs, u, i, c, limit, x[u][i], shift, t[0], unused);
                            if (!fill)
                                out[i] = sc * grad_term(acc_exp(x[u][i] - shift), inv_s, sum_ones, sum_delta,
                                                        mass, tg.wq(vs, u, i, c));
                        }
                    }
                }
                if (g != nullptr) store_vec(g, base, int(C), aligned, out);
            }
        }
        if (tg.smoothing()) group_reduce(t, G, SumOp(), smem);
    }
    if constexpr (Opt::on) {
        if (slot.active && slot.lane == 0) {
            const double log_s = double(log_sum(sum_ones, sum_delta));
            loss[slot.row] = tg.loss(double(t[0]), log_s, C) + opt.loss_term(tg.counted(), double(shift) + log_s);
        }
    } else {
        if (slot.active && slot.lane == 0)
            loss[slot.row] = tg.loss(double(t[0]), double(log_sum(sum_ones, sum_delta)), C);
    }
}

}  // namespace xentcy

using xentcy::Acc;
using xentcy::kMaxReduce;
using xentcy::Pack;

// ---------------------------------------------------------------------------------------
// Cross-entropy: loss and gradient, the entry points of the two kernels above for each
// kind of target. weight: C class weights or nullptr. grad: nullptr for the loss alone,
// else (N, C), which may be the logits themselves. scale: the factor in front of each
// gradient (1/D for the mean), scale_value or, where scale_ptr is not null, the float64
// it points to (D left on the device: nothing is read back for it); 0 writes zeros.
//
// The *_options_* kernels take the language-model options besides (Options above): z_loss
// (0: none), softcap (0: none) and temperature (1: none). They are kernels of their own, so
// that the plain ones keep their code and registers (benchmarks/results/cuda_resources_*);
// the launcher takes them only where an option is set. Their extra registers give them tiers
// of their own where the plain ones' would spill, and a launch bound on the streamed ones
// (float64: 512; xentcy/_cuda/__init__.py).
// ---------------------------------------------------------------------------------------

#define XENTCY_INDEX_ARGS                                                                              \
    const T *logits, const long long *__restrict__ target, const T *__restrict__ weight,               \
        const double *__restrict__ weight_sum, T *grad, double *__restrict__ loss, long long n_rows,   \
        long long C, int G, int aligned, double eps, long long ignore_index, double scale_value,       \
        const double *__restrict__ scale_ptr
#define XENTCY_PROB_ARGS                                                                               \
    const T *logits, const T *target, const T *__restrict__ weight, T *grad,                           \
        double *__restrict__ loss, long long n_rows, long long C, int G, int aligned, double eps,      \
        double scale_value, const double *__restrict__ scale_ptr
#define XENTCY_OPTION_ARGS double z_loss, double softcap, double temperature

template <typename T, int NV, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) xentcy_index_cached(XENTCY_INDEX_ARGS) {
    xentcy::IndexTarget<T> tg{target, weight, weight_sum, ignore_index, eps};
    xentcy::cached_rows<xentcy::IndexTarget<T>, NV>(tg, logits, logits, grad, loss, n_rows, C, G, aligned != 0,
                                                    scale_value, scale_ptr, xentcy::Plain());
}

template <typename T>
__global__ void __launch_bounds__(1024) xentcy_index_streamed(XENTCY_INDEX_ARGS) {
    xentcy::IndexTarget<T> tg{target, weight, weight_sum, ignore_index, eps};
    xentcy::streamed_rows(tg, logits, logits, grad, loss, n_rows, C, G, aligned != 0, scale_value, scale_ptr,
                          xentcy::Plain());
}

template <typename T, int NV, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) xentcy_prob_cached(XENTCY_PROB_ARGS) {
    xentcy::ProbTarget<T> tg{target, weight, eps};
    xentcy::cached_rows<xentcy::ProbTarget<T>, NV>(tg, logits, target, grad, loss, n_rows, C, G, aligned != 0,
                                                   scale_value, scale_ptr, xentcy::Plain());
}

template <typename T>
__global__ void __launch_bounds__(1024) xentcy_prob_streamed(XENTCY_PROB_ARGS) {
    xentcy::ProbTarget<T> tg{target, weight, eps};
    xentcy::streamed_rows(tg, logits, target, grad, loss, n_rows, C, G, aligned != 0, scale_value, scale_ptr,
                          xentcy::Plain());
}

template <typename T, int NV, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) xentcy_index_options_cached(XENTCY_INDEX_ARGS, XENTCY_OPTION_ARGS) {
    xentcy::IndexTarget<T> tg{target, weight, weight_sum, ignore_index, eps};
    const xentcy::Options<typename Acc<T>::type> opt(z_loss, softcap, temperature);
    xentcy::cached_rows<xentcy::IndexTarget<T>, NV>(tg, logits, logits, grad, loss, n_rows, C, G, aligned != 0,
                                                    scale_value, scale_ptr, opt);
}

template <typename T, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) xentcy_index_options_streamed(XENTCY_INDEX_ARGS, XENTCY_OPTION_ARGS) {
    xentcy::IndexTarget<T> tg{target, weight, weight_sum, ignore_index, eps};
    const xentcy::Options<typename Acc<T>::type> opt(z_loss, softcap, temperature);
    xentcy::streamed_rows(tg, logits, logits, grad, loss, n_rows, C, G, aligned != 0, scale_value, scale_ptr, opt);
}

template <typename T, int NV, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) xentcy_prob_options_cached(XENTCY_PROB_ARGS, XENTCY_OPTION_ARGS) {
    xentcy::ProbTarget<T> tg{target, weight, eps};
    const xentcy::Options<typename Acc<T>::type> opt(z_loss, softcap, temperature);
    xentcy::cached_rows<xentcy::ProbTarget<T>, NV>(tg, logits, target, grad, loss, n_rows, C, G, aligned != 0,
                                                   scale_value, scale_ptr, opt);
}

template <typename T, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS) xentcy_prob_options_streamed(XENTCY_PROB_ARGS, XENTCY_OPTION_ARGS) {
    xentcy::ProbTarget<T> tg{target, weight, eps};
    const xentcy::Options<typename Acc<T>::type> opt(z_loss, softcap, temperature);
    xentcy::streamed_rows(tg, logits, target, grad, loss, n_rows, C, G, aligned != 0, scale_value, scale_ptr, opt);
}

#undef XENTCY_INDEX_ARGS
#undef XENTCY_PROB_ARGS
#undef XENTCY_OPTION_ARGS

// ---------------------------------------------------------------------------------------
// softmax (log_space == 0) or log_softmax (log_space != 0) of each row into out (N, C):
// p_c = exp(A_c - m) / s, log p_c = (A_c - m) - log s.
// ---------------------------------------------------------------------------------------

template <typename T, int NV, int MAX_THREADS>
__global__ void __launch_bounds__(MAX_THREADS)
xentcy_softmax_cached(const T* __restrict__ x_in, T* __restrict__ out, long long n_rows, long long C,
                      int G, int aligned, int log_space) {
    using A = typename Acc<T>::type;
    constexpr int VEC = Pack<T>::VEC;
    __shared__ A smem[32][kMaxReduce];
    const xentcy::RowSlot slot(G, n_rows);
    const int limit = slot.active ? int(C) : 0;
    const long long offset = slot.active ? slot.row * C : 0;

    A x[NV][VEC];
#pragma unroll
    for (int k = 0; k < NV; ++k)
        xentcy::load_vec(x_in + offset, (k * G + slot.lane) * VEC, limit, aligned != 0,
                         -xentcy::acc_inf(A(0)), x[k]);
    const A shift = xentcy::cached_shift(x, G, smem);

    // s as (ones, delta) for float and double; one sum for the half types, where the split
    // costs the 4-vector tier 12 bytes of spills on sm_80 (nvcc 13.0): their log_softmax of
    // cached rows keeps log s's absolute error (half-precision outputs round far coarser)
    constexpr bool split = sizeof(T) >= 4;
    A s[2] = {A(0), A(0)};
#pragma unroll
    for (int k = 0; k < NV; ++k) {
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const A e = xentcy::acc_exp(x[k][i] - shift);  // padding: exp(-inf) = 0
            if constexpr (split) {
                xentcy::add_term(s[0], s[1], x[k][i], shift, e);
            } else {
                s[1] += e;
            }
            if (log_space == 0) x[k][i] = e;
        }
    }
    if constexpr (split) {
        xentcy::group_reduce(s, G, xentcy::SumOp(), smem);
    } else {
        A t[1] = {s[1]};
        xentcy::group_reduce(t, G, xentcy::SumOp(), smem);
        s[1] = t[0];
    }
    if (!slot.active) return;

    const A inv_s = A(1) / (s[0] + s[1]), log_s = xentcy::log_sum(s[0], s[1]);
#pragma unroll
    for (int k = 0; k < NV; ++k) {
        A o[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) o[i] = log_space != 0 ? (x[k][i] - shift) - log_s : x[k][i] * inv_s;
        xentcy::store_vec(out + offset, (k * G + slot.lane) * VEC, int(C), aligned != 0, o);
    }
}

template <typename T>
__global__ void __launch_bounds__(1024)
xentcy_softmax_streamed(const T* __restrict__ x_in, T* __restrict__ out, long long n_rows, long long C,
                        int G, int aligned, int log_space) {
    using A = typename Acc<T>::type;
    constexpr int VEC = Pack<T>::VEC;
    constexpr int U = xentcy::kInFlight<T>;
    __shared__ A smem[32][kMaxReduce];
    const xentcy::RowSlot slot(G, n_rows);
    const int limit = slot.active ? int(C) : 0;
    const long long offset = slot.active ? slot.row * C : 0;
    const int n_vec = int((C + VEC - 1) / VEC);
    const int end = slot.active ? n_vec : 0;
    const int step = G * U;
    const A neg_inf = -xentcy::acc_inf(A(0));

    A shift, sum_ones, sum_delta;
    xentcy::online_row<U, VEC>(x_in + offset, slot.lane, end, G, limit, aligned != 0, smem, shift, sum_ones,
                               sum_delta);
    const A inv_s = A(1) / (sum_ones + sum_delta), log_s = xentcy::log_sum(sum_ones, sum_delta);

    for (int v0 = slot.lane; v0 < end; v0 += step) {
        A x[U][VEC];
#pragma unroll
        for (int u = 0; u < U; ++u)
            xentcy::load_vec(x_in + offset, (v0 + u * G) * VEC, limit, aligned != 0, neg_inf, x[u]);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            A o[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i)
                o[i] = log_space != 0 ? (x[u][i] - shift) - log_s : xentcy::acc_exp(x[u][i] - shift) * inv_s;
            xentcy::store_vec(out + offset, (v0 + u * G) * VEC, int(C), aligned != 0, o);
        }
    }
}

// ---------------------------------------------------------------------------------------
// logsumexp of each row into out (N,): m + log s, in the logits' dtype. One read.
// ---------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(1024)
xentcy_logsumexp(const T* __restrict__ x_in, T* __restrict__ out, long long n_rows, long long C, int G,
                 int aligned) {
    using A = typename Acc<T>::type;
    constexpr int VEC = Pack<T>::VEC;
    constexpr int U = xentcy::kInFlight<T>;
    __shared__ A smem[32][kMaxReduce];
    const xentcy::RowSlot slot(G, n_rows);
    const int limit = slot.active ? int(C) : 0;
    const long long offset = slot.active ? slot.row * C : 0;
    const int n_vec = int((C + VEC - 1) / VEC);

    A shift, sum_ones, sum_delta;
    xentcy::online_row<U, VEC>(x_in + offset, slot.lane, slot.active ? n_vec : 0, G, limit, aligned != 0, smem,
                               shift, sum_ones, sum_delta);
    if (slot.active && slot.lane == 0)
        out[slot.row] = xentcy::Convert<T>::from(shift + xentcy::log_sum(sum_ones, sum_delta));
}

// ---------------------------------------------------------------------------------------
// Evaluation rows with class indices (issue 13): per row the loss w_y ((m - A_y) + log s)
// (no smoothing: xentcy._cuda takes a smoothed loss from the index kernel), the target's
// rank #{c < y : A_c >= A_y} + #{c > y : A_c > A_y} (C for a row with a NaN logit), and the
// entropy of its softmax, log s + (1/s) sum_c exp(A_c - m) (m - A_c), both terms >= 0.
// An ignored row gets loss 0, rank -1, entropy 0; an index outside [0, C) (excluded by the
// checks above) is never read through: loss and entropy NaN, rank C. Two reads of the row:
// the online max, sum and rank count, then the entropy's sum at the final shift.
// ---------------------------------------------------------------------------------------

// (512 threads at most: at 1024, float64 spilled 8 bytes on sm_90 within 64 registers)
template <typename T>
__global__ void __launch_bounds__(512)
xentcy_eval_streamed(const T* logits, const long long* __restrict__ target, const T* __restrict__ weight,
                     double* __restrict__ loss, long long* __restrict__ rank, double* __restrict__ entropy,
                     long long n_rows, long long C, int G, int aligned, long long ignore_index) {
    using A = typename Acc<T>::type;
    constexpr int VEC = Pack<T>::VEC;
    constexpr int U = xentcy::kInFlight<T>;
    __shared__ A smem[32][kMaxReduce];
    __shared__ int count_smem[32][kMaxReduce];  // (counts below C < 2^30: int)
    const xentcy::RowSlot slot(G, n_rows);
    const long long y = slot.active ? target[slot.row] : ignore_index;
    const bool ignored = y == ignore_index;
    const bool bad = !ignored && (y < 0 || y >= C);
    const bool live = slot.active && !ignored && !bad;
    const int limit = live ? int(C) : 0;
    const int yi = live ? int(y) : -1;
    const T* a = logits + (live ? slot.row * C : 0);
    const int n_vec = int((C + VEC - 1) / VEC);
    const int step = G * U;
    const A neg_inf = -xentcy::acc_inf(A(0));
    const A a_y = live ? xentcy::to_acc(a[yi]) : A(0);

    // pass 1: online max and split sum, and the classes that rank above the target
    A m = neg_inf, ones = A(0), delta = A(0);
    int above[1] = {0};
    for (int v0 = slot.lane; v0 < (live ? n_vec : 0); v0 += step) {
        A x[U][VEC];
#pragma unroll
        for (int u = 0; u < U; ++u) xentcy::load_vec(a, (v0 + u * G) * VEC, limit, aligned != 0, neg_inf, x[u]);
#pragma unroll
        for (int u = 0; u < U; ++u) {
            xentcy::online_fold(m, ones, delta, x[u]);
            const int base = (v0 + u * G) * VEC;
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const int c = base + i;
                if (c < limit) above[0] += c < yi ? (x[u][i] >= a_y) : (c > yi && x[u][i] > a_y);
            }
        }
    }
    A shift, sum_ones, sum_delta;
    xentcy::combine_online(m, ones, delta, G, smem, shift, sum_ones, sum_delta);
    xentcy::group_reduce(above, G, xentcy::SumOp(), count_smem);

    // pass 2: sum_c exp(A_c - shift) (shift - A_c); a class of logit -inf adds nothing
    A t[1] = {A(0)};
    for (int v0 = slot.lane; v0 < (live ? n_vec : 0); v0 += step) {
        A x[U][VEC];
#pragma unroll
        for (int u = 0; u < U; ++u) xentcy::load_vec(a, (v0 + u * G) * VEC, limit, aligned != 0, neg_inf, x[u]);
#pragma unroll
        for (int u = 0; u < U; ++u) {
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const A e = xentcy::acc_exp(x[u][i] - shift);
                if (e != A(0)) t[0] += e * (shift - x[u][i]);
            }
        }
    }
    xentcy::group_reduce(t, G, xentcy::SumOp(), smem);

    if (slot.active && slot.lane == 0) {
        const double nan = xentcy::acc_nan(0.0);
        if (!live) {
            loss[slot.row] = bad ? nan : 0.0;
            rank[slot.row] = bad ? C : -1;
            entropy[slot.row] = bad ? nan : 0.0;
        } else {
            const double s = double(sum_ones) + double(sum_delta);
            const double log_s = double(xentcy::log_sum(sum_ones, sum_delta));
            const double w_y = weight != nullptr ? double(xentcy::to_acc(weight[yi])) : 1.0;
            double l = w_y != 0.0 ? w_y * ((double(shift) - double(a_y)) + log_s) : 0.0;
            const bool nan_row = s != s;
            // a +inf logit (s = inf) or a row of only -inf (s = 0): the softmax, and so its
            // entropy, is undefined
            const bool defined = s > 0.0 && s < xentcy::acc_inf(0.0);
            loss[slot.row] = nan_row ? nan : l;
            rank[slot.row] = nan_row ? C : (long long)above[0];
            entropy[slot.row] = defined ? log_s + double(t[0]) / s : nan;
        }
    }
}
