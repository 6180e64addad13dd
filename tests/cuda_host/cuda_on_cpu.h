// CUDA on the CPU: what xentcy/_cuda/cross_entropy.cu needs to compile, unchanged, as host C++.
//
// Test-only. Included before the .cu file (tests/cuda_host/build.py writes the translation
// unit). The half types are CUDA's own (cuda_fp16.h and cuda_bf16.h serve on the host: their
// host conversions round to nearest even); everything a kernel asks of the hardware (its
// thread and block indices, __syncthreads, __shfl_xor_sync) goes to the fiber scheduler of
// runtime.cpp, which runs each CUDA thread of a block as a fiber with its own stack.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <cstring>

// The execution-space and launch qualifiers: nothing on the host. __shared__ is a static
// local: one object per kernel instantiation, shared by every fiber of the block (blocks run
// one after another, and one launch at a time).
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#undef __restrict__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static
#define __launch_bounds__(...)
#define __restrict__ __restrict

namespace cuda_host {

struct Dim3 {
    unsigned int x, y, z;
};

extern Dim3 block_idx, block_dim, grid_dim;
extern const Dim3* current_thread_idx;  // the running fiber's threadIdx

// The scheduler's side of the intrinsics (runtime.cpp). Each takes its call site so that
// threads of a warp (block) at different shuffles (barriers) are told apart.
void syncthreads_at(const void* site);
std::uint64_t shfl_xor_at(const void* site, unsigned mask, std::uint64_t bits, int size, int lane_mask,
                          int width);

}  // namespace cuda_host

#define threadIdx (*::cuda_host::current_thread_idx)
#define blockIdx (::cuda_host::block_idx)
#define blockDim (::cuda_host::block_dim)
#define gridDim (::cuda_host::grid_dim)

// Not inlined, so that __builtin_return_address(0) is the call site in the kernel.
__attribute__((noinline)) inline void __syncthreads() {
    ::cuda_host::syncthreads_at(__builtin_return_address(0));
}

template <typename V>
__attribute__((noinline)) V __shfl_xor_sync(unsigned mask, V var, int lane_mask, int width = 32) {
    static_assert(sizeof(V) <= 8, "__shfl_xor_sync exchanges values of at most 8 bytes");
    std::uint64_t bits = 0;
    std::memcpy(&bits, &var, sizeof(V));
    bits = ::cuda_host::shfl_xor_at(__builtin_return_address(0), mask, bits, int(sizeof(V)), lane_mask, width);
    V out;
    std::memcpy(&out, &bits, sizeof(V));
    return out;
}

// The bit-cast intrinsics.
inline float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}
inline int __float_as_int(float x) {
    int i;
    std::memcpy(&i, &x, sizeof i);
    return i;
}
inline double __longlong_as_double(long long x) {
    double d;
    std::memcpy(&d, &x, sizeof d);
    return d;
}
inline long long __double_as_longlong(double x) {
    long long i;
    std::memcpy(&i, &x, sizeof i);
    return i;
}
