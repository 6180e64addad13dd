// Small kernels that probe the host emulation itself (tests/test_cuda_host.py): the hardware's
// semantics where a kernel is right, and a loud error where the hardware would be undefined.

// out[t] = the value of lane (t % 32) ^ lane_mask within segments of `width` lanes.
template <typename V>
__global__ void probe_shuffle(const V* in, V* out, int lane_mask, int width) {
    const int t = threadIdx.x + blockIdx.x * blockDim.x;
    out[t] = __shfl_xor_sync(0xffffffffu, in[t], lane_mask, width);
}

// Reverses each block's slice through shared memory: needs the barrier between write and read.
__global__ void __launch_bounds__(256) probe_reverse_in_shared(const float* in, float* out) {
    __shared__ float buf[256];
    const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
    buf[t] = in[base + t];
    __syncthreads();
    out[base + t] = buf[blockDim.x - 1 - t];
}

// Only half of each warp shuffles: undefined with a full mask.
__global__ void probe_partial_warp_shuffle(float* out) {
    float v = float(threadIdx.x);
    if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}

// Lanes 0-15 name only themselves and read from lanes 16-31.
__global__ void probe_read_outside_mask(float* out) {
    float v = float(threadIdx.x);
    if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0x0000ffffu, v, 16);
    out[threadIdx.x] = v;
}

// One thread leaves while the others wait at the barrier.
__global__ void probe_exit_before_barrier(float* out) {
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Odd and even threads at two different barriers (the branches differ, so that no compiler
// merges the two calls into one).
__global__ void probe_different_barriers(float* out) {
    if (threadIdx.x & 1) {
        out[threadIdx.x] = 1.0f;
        __syncthreads();
    } else {
        __syncthreads();
        out[threadIdx.x] = 2.0f;
    }
}

// Lanes of one warp at two different shuffles.
__global__ void probe_different_shuffles(float* out) {
    float v = float(threadIdx.x);
    if (threadIdx.x & 1) {
        out[threadIdx.x] = v;
        out[threadIdx.x] += __shfl_xor_sync(0xffffffffu, v, 2);
    } else {
        v = __shfl_xor_sync(0xffffffffu, v, 2);
        out[threadIdx.x] = v * 3.0f;
    }
}

// A 16-byte vector load from `in + offset`: misaligned unless offset is a multiple of 4.
struct alignas(16) Float4 {
    float v[4];
};
__global__ void probe_vector_load(const float* in, float* out, int offset) {
    const Float4 p = *reinterpret_cast<const Float4*>(in + offset + 4 * threadIdx.x);
    out[threadIdx.x] = p.v[0] + p.v[1] + p.v[2] + p.v[3];
}

// Reads in[n]: one element past the array (AddressSanitizer's build reports it).
__global__ void probe_read_past_end(const float* in, float* out, long long n) {
    out[threadIdx.x] = in[n];
}

// Writes its arguments back, to check what reached the kernel.
__global__ void __launch_bounds__(64) probe_arguments(long long* out, long long a, int b, double c,
                                                    const double* p) {
    if (threadIdx.x == 0) {
        out[0] = a;
        out[1] = b;
        out[2] = (long long)c;
        out[3] = p != nullptr ? (long long)*p : -1;
    }
}
