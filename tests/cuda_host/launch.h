// The host side of a kernel launch: the arguments exactly as the launcher packed them, checked
// against the kernel's own parameter types, then the grid through runtime.cpp's scheduler.
//
// Included by the translation unit that build.py writes after cross_entropy.cu, with a table
// of every instantiation of xentcy._cuda.name_expressions(). On a GPU, CuPy packs each
// argument's bytes without looking at the kernel's signature; here a wrong type, a wrong
// order or a wrong count fails the launch with a message instead of reading garbage.
#pragma once

#include <cstdio>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace cuda_host {

int run_grid(unsigned grid, unsigned block, void (*entry)(void*), void* arg, std::uint64_t block_seed,
             int thread_order, std::string& error);

// Element and scalar types by code (build.py's CODES).
enum Code : int { F32 = 1, F64, F16, BF16, I64, I32, U64, U32, I16, U16, I8, U8, BOOL };

inline const char* code_name(int code) {
    static const char* const names[] = {"?",      "float32", "float64", "float16", "bfloat16",
                                        "int64",  "int32",   "uint64",  "uint32",  "int16",
                                        "uint16", "int8",    "uint8",   "bool"};
    return code >= 0 && code <= BOOL ? names[code] : "?";
}

template <typename T> struct CodeOf;
template <> struct CodeOf<float> { static constexpr int value = F32; };
template <> struct CodeOf<double> { static constexpr int value = F64; };
template <> struct CodeOf<__half> { static constexpr int value = F16; };
template <> struct CodeOf<__nv_bfloat16> { static constexpr int value = BF16; };
template <> struct CodeOf<long long> { static constexpr int value = I64; };
template <> struct CodeOf<long> { static constexpr int value = sizeof(long) == 8 ? I64 : I32; };
template <> struct CodeOf<int> { static constexpr int value = I32; };
template <> struct CodeOf<unsigned long long> { static constexpr int value = U64; };
template <> struct CodeOf<unsigned long> { static constexpr int value = sizeof(long) == 8 ? U64 : U32; };
template <> struct CodeOf<unsigned int> { static constexpr int value = U32; };

// One argument as build.py packs it (a ctypes Structure of the same layout).
struct Arg {
    std::int32_t kind;      // 0: a scalar of type `code`; 1: an array of elements of type `code`
    std::int32_t code;
    std::int32_t writable;  // arrays: whether the kernel may write through the pointer
    std::int32_t pad;
    std::uint64_t bits;     // the scalar's bytes, or the array's address
    std::uint64_t nbytes;   // arrays: their size
};

template <typename P> std::string type_name() {
    if constexpr (std::is_pointer_v<P>) {
        using E = std::remove_pointer_t<P>;
        return std::string(std::is_const_v<E> ? "const " : "") + code_name(CodeOf<std::remove_const_t<E>>::value) +
               "*";
    } else {
        return code_name(CodeOf<P>::value);
    }
}

inline std::string describe(const Arg& a) {
    if (a.kind == 1) return std::string("an array of ") + code_name(a.code);
    char buf[64];
    std::snprintf(buf, sizeof buf, "a %s scalar (bits 0x%llx)", code_name(a.code),
                  static_cast<unsigned long long>(a.bits));
    return buf;
}

template <typename P> bool convert(const Arg& a, P& out, int i, const char* kernel, std::string& error) {
    const auto mismatch = [&](const char* why) {
        error = std::string(kernel) + ": argument " + std::to_string(i) + " is " + type_name<P>() + ", got " +
                describe(a) + why;
        return false;
    };
    if constexpr (std::is_pointer_v<P>) {
        using E = std::remove_pointer_t<P>;
        if (a.kind == 1) {
            if (a.code != CodeOf<std::remove_const_t<E>>::value) return mismatch("");
            if (!std::is_const_v<E> && !a.writable) return mismatch(" that is read-only, and the kernel writes it");
            out = reinterpret_cast<P>(static_cast<std::uintptr_t>(a.bits));
            return true;
        }
        if (a.kind == 0 && a.code == U64 && a.bits == 0) {  // the launcher's null pointer: 8 bytes of zero
            out = nullptr;
            return true;
        }
        return mismatch("");
    } else {
        static_assert(sizeof(P) <= 8, "scalar arguments are at most 8 bytes");
        if (a.kind != 0 || a.code != CodeOf<P>::value) return mismatch("");
        std::memcpy(&out, &a.bits, sizeof(P));
        return true;
    }
}

template <typename... P> struct Bound {
    void (*fn)(P...);
    std::tuple<P...> args;
    static void run(void* self) {
        auto* b = static_cast<Bound*>(self);
        std::apply(b->fn, b->args);
    }
};

template <typename... P, std::size_t... I>
bool convert_all(const Arg* args, std::tuple<P...>& out, const char* kernel, std::string& error,
                 std::index_sequence<I...>) {
    return (convert(args[I], std::get<I>(out), int(I), kernel, error) && ...);
}

struct Launch {
    const Arg* args;
    int n_args;
    unsigned grid, block;
    std::uint64_t block_seed;
    int thread_order;
};

template <typename... P>
int launch(void (*fn)(P...), const char* kernel, unsigned max_threads, const Launch& l, std::string& error) {
    if (l.n_args != int(sizeof...(P))) {
        error = std::string(kernel) + " takes " + std::to_string(sizeof...(P)) + " arguments, got " +
                std::to_string(l.n_args);
        return 1;
    }
    // what the driver refuses (cudaErrorInvalidConfiguration, or too many threads for the
    // kernel's __launch_bounds__)
    if (l.block < 1 || l.block > 1024 || l.grid < 1 || l.grid > 0x7fffffffu) {
        error = std::string(kernel) + ": invalid launch configuration: grid " + std::to_string(l.grid) +
                ", block " + std::to_string(l.block);
        return 1;
    }
    if (l.block > max_threads) {
        error = std::string(kernel) + ": a block of " + std::to_string(l.block) +
                " threads exceeds the kernel's __launch_bounds__(" + std::to_string(max_threads) + ")";
        return 1;
    }
    Bound<P...> b{fn, {}};
    if (!convert_all(l.args, b.args, kernel, error, std::index_sequence_for<P...>{})) return 1;
    return run_grid(l.grid, l.block, &Bound<P...>::run, &b, l.block_seed, l.thread_order, error);
}

template <auto Fn> int launch_entry(const char* kernel, unsigned max_threads, const Launch& l, std::string& error) {
    return launch(Fn, kernel, max_threads, l, error);
}

struct Entry {
    const char* name;
    unsigned max_threads;  // the kernel's __launch_bounds__
    int (*launch)(const char*, unsigned, const Launch&, std::string&);
};

// The half types' conversions, as the kernels use them (tested against NumPy and ml_dtypes).
inline float as_float(__half x) { return __half2float(x); }
inline float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename H> H round_to(float f);
template <> inline __half round_to<__half>(float f) { return __float2half_rn(f); }
template <> inline __nv_bfloat16 round_to<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }

template <typename H> float to_float(unsigned short bits) {
    H x;
    std::memcpy(&x, &bits, 2);
    return as_float(x);
}

template <typename H> unsigned short from_float(float f) {
    const H x = round_to<H>(f);
    unsigned short bits;
    std::memcpy(&bits, &x, 2);
    return bits;
}

}  // namespace cuda_host

// The C interface build.py loads with ctypes; `CUDA_HOST_TABLE(entries)` defines it.
#define CUDA_HOST_TABLE(entries)                                                                          \
    extern "C" int cuda_host_kernel_count() { return int(sizeof(entries) / sizeof(entries[0])); }           \
    extern "C" const char* cuda_host_kernel_name(int i) { return entries[i].name; }                        \
    extern "C" int cuda_host_launch(const char* name, const cuda_host::Arg* args, int n_args, unsigned grid, \
                                    unsigned block, unsigned long long block_seed, int thread_order,         \
                                    char* error, unsigned long error_size) {                                \
        std::string message = std::string("no kernel instantiation named ") + name;                        \
        int status = 1;                                                                                     \
        for (const auto& e : entries)                                                                       \
            if (std::strcmp(e.name, name) == 0) {                                                           \
                message.clear();                                                                            \
                status = e.launch(e.name, e.max_threads,                                                    \
                                  cuda_host::Launch{args, n_args, grid, block, block_seed, thread_order},   \
                                  message);                                                                 \
                break;                                                                                      \
            }                                                                                               \
        std::snprintf(error, error_size, "%s", message.c_str());                                            \
        return status;                                                                                      \
    }                                                                                                       \
    extern "C" float cuda_host_half_to_float(unsigned short h) { return cuda_host::to_float<__half>(h); }    \
    extern "C" unsigned short cuda_host_float_to_half(float f) { return cuda_host::from_float<__half>(f); }  \
    extern "C" float cuda_host_bfloat16_to_float(unsigned short h) {                                        \
        return cuda_host::to_float<__nv_bfloat16>(h);                                                       \
    }                                                                                                       \
    extern "C" unsigned short cuda_host_float_to_bfloat16(float f) {                                        \
        return cuda_host::from_float<__nv_bfloat16>(f);                                                     \
    }
