// The fiber scheduler behind cuda_on_cpu.h: runs a kernel's grid on the CPU with CUDA's
// execution semantics, and fails loudly where the hardware's behaviour would be undefined.
//
// A launch runs its blocks one after another (in a shuffled order where asked). Each thread
// of a block is a fiber with its own stack; the scheduler runs every ready fiber to its next
// synchronisation point (__syncthreads, __shfl_xor_sync) or to its end, then resolves:
//   - a warp whose lanes named in the shuffle's mask all wait at that same shuffle exchanges
//     values exactly as the hardware does (source lane = lane ^ laneMask; a source past the
//     lane's width segment gives the lane its own value);
//   - a block whose threads all wait at the same __syncthreads is released.
// Anything else is an error that ends the launch: a shuffle or barrier reached by only part
// of its warp or block, lanes of a warp at different sync points, a thread that exits while
// others wait, a mask that leaves out the calling lane or reads from a lane outside it. So is
// a misaligned access (UBSan's alignment check, whose handler is defined below: a 16-byte
// vector load on an address that is not 16-byte aligned faults on the GPU).
//
// Errors come back to Python as a message (build.py raises it); nothing here aborts or hangs.
#include "cuda_on_cpu.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_HOST_ASAN 1
#else
#define CUDA_HOST_ASAN 0
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_host {

Dim3 block_idx, block_dim, grid_dim;
const Dim3* current_thread_idx = nullptr;

namespace {

// ---------------------------------------------------------------- context switching

constexpr std::size_t kStackSize = 256 * 1024;  // ASan's frames are large
constexpr std::size_t kGuard = 4096;           // PROT_NONE below each stack

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack,
// stores the stack pointer in *save and continues on `load` (System V x86-64).
extern "C" void cuda_host_switch(void** save, void* load);
extern "C" void cuda_host_start();
asm(R"(
    .text
    .globl cuda_host_switch
    .hidden cuda_host_switch
    .type cuda_host_switch, @function
cuda_host_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $16, %rsp
    stmxcsr 8(%rsp)
    fnstcw (%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr 8(%rsp)
    fldcw (%rsp)
    addq $16, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_host_switch, .-cuda_host_switch

    .globl cuda_host_start
    .hidden cuda_host_start
    .type cuda_host_start, @function
cuda_host_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size cuda_host_start, .-cuda_host_start
)");

struct Context {
    void* sp = nullptr;
};

// A context that starts fn(arg) on [stack, stack + size) at its first switch.
void make_context(Context& c, char* stack, std::size_t size, void (*fn)(void*), void* arg) {
    auto top = reinterpret_cast<std::uintptr_t>(stack + size) & ~std::uintptr_t(15);
    auto* sp = reinterpret_cast<std::uint64_t*>(top - 72);  // 16 + 6 registers + return address
    std::uint32_t mxcsr;
    std::uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    std::memset(sp, 0, 72);
    std::memcpy(reinterpret_cast<char*>(sp), &fpucw, sizeof fpucw);
    std::memcpy(reinterpret_cast<char*>(sp) + 8, &mxcsr, sizeof mxcsr);
    sp[2] = 0;                                               // r15
    sp[3] = 0;                                               // r14
    sp[4] = reinterpret_cast<std::uint64_t>(fn);             // r13
    sp[5] = reinterpret_cast<std::uint64_t>(arg);            // r12
    sp[6] = 0;                                               // rbx
    sp[7] = 0;                                               // rbp
    sp[8] = reinterpret_cast<std::uint64_t>(&cuda_host_start);  // return address
    c.sp = sp;
}

void swap_context(Context& from, Context& to) { cuda_host_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};

// makecontext passes ints: the argument travels as two halves
void ucontext_start(unsigned hi, unsigned lo, unsigned fn_hi, unsigned fn_lo) {
    auto arg = reinterpret_cast<void*>((std::uintptr_t(hi) << 32) | lo);
    auto fn = reinterpret_cast<void (*)(void*)>((std::uintptr_t(fn_hi) << 32) | fn_lo);
    fn(arg);
}

void make_context(Context& c, char* stack, std::size_t size, void (*fn)(void*), void* arg) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    const auto a = reinterpret_cast<std::uintptr_t>(arg), f = reinterpret_cast<std::uintptr_t>(fn);
    makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_start), 4, unsigned(a >> 32), unsigned(a),
                unsigned(f >> 32), unsigned(f));
}

void swap_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---------------------------------------------------------------- the fibers

enum class State { Ready, AtShuffle, AtBarrier, Exited };

struct Fiber {
    Dim3 tid{};
    State state = State::Ready;
    bool started = false;
    const void* site = nullptr;  // where it waits
    unsigned mask = 0;
    int size = 0, lane_mask = 0, width = 32;
    std::uint64_t value = 0, result = 0;
    char* stack = nullptr;  // kStackSize usable bytes above a guard page
    Context context;
    void* fake_stack = nullptr;  // ASan's, while switched away
};

struct Launch {
    void (*entry)(void*) = nullptr;
    void* arg = nullptr;
    std::vector<Fiber> fibers;
    Context scheduler;
    Fiber* current = nullptr;
    const void* scheduler_stack = nullptr;  // ASan: the scheduler's stack, learned at a fiber's start
    std::size_t scheduler_stack_size = 0;
    bool failed = false;
    std::string error;
    std::uint64_t rng = 0;
};

Launch* launch_ = nullptr;
std::vector<char*> stacks_;  // kept for the next launch

char* stack_for(std::size_t i) {
    while (stacks_.size() <= i) {
        void* p = mmap(nullptr, kStackSize + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return nullptr;
        mprotect(p, kGuard, PROT_NONE);
        stacks_.push_back(static_cast<char*>(p) + kGuard);
    }
    return stacks_[i];
}

void fail(std::string message) {
    Launch& L = *launch_;
    if (!L.failed) {
        L.failed = true;
        L.error = std::move(message);
    }
}

std::string where(const Fiber& f) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "thread %u of block %u", f.tid.x, block_idx.x);
    return buf;
}

// fiber -> scheduler
void to_scheduler(Fiber& f, bool exiting) {
    Launch& L = *launch_;
#if CUDA_HOST_ASAN
    __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, L.scheduler_stack, L.scheduler_stack_size);
#else
    (void)exiting;
#endif
    swap_context(f.context, L.scheduler);
#if CUDA_HOST_ASAN
    __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
}

// scheduler -> fiber
void to_fiber(Fiber& f) {
    Launch& L = *launch_;
    L.current = &f;
    current_thread_idx = &f.tid;
#if CUDA_HOST_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f.stack, kStackSize);
#endif
    swap_context(L.scheduler, f.context);
#if CUDA_HOST_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    L.current = nullptr;
}

void fiber_main(void* p) {
    Fiber& f = *static_cast<Fiber*>(p);
    Launch& L = *launch_;
#if CUDA_HOST_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &L.scheduler_stack, &L.scheduler_stack_size);
#endif
    L.entry(L.arg);
    f.state = State::Exited;
    to_scheduler(f, true);
    __builtin_trap();  // an exited fiber is never resumed
}

// The calling fiber waits at a sync point until the scheduler releases it; a failed launch
// never resumes it.
Fiber& wait_here(State state, const void* site) {
    Launch& L = *launch_;
    Fiber& f = *L.current;
    f.state = state;
    f.site = site;
    to_scheduler(f, false);
    return f;
}

std::uint64_t next_random(Launch& L) {  // xorshift64*
    L.rng ^= L.rng >> 12;
    L.rng ^= L.rng << 25;
    L.rng ^= L.rng >> 27;
    return L.rng * 2685821657736338717ULL;
}

const char* state_name(State s) {
    switch (s) {
        case State::Ready: return "running";
        case State::AtShuffle: return "at __shfl_xor_sync";
        case State::AtBarrier: return "at __syncthreads";
        case State::Exited: return "exited";
    }
    return "?";
}

// Exchanges the values of warp w's shuffle, if every lane its mask names waits there.
// Returns whether it did; an error where the hardware would be undefined.
bool resolve_shuffle(Launch& L, std::size_t w) {
    const std::size_t n = L.fibers.size(), first = 32 * w, end = std::min(n, first + 32);
    const Fiber* ref = nullptr;
    for (std::size_t t = first; t < end; ++t)
        if (L.fibers[t].state == State::AtShuffle) {
            ref = &L.fibers[t];
            break;
        }
    if (ref == nullptr) return false;
    for (std::size_t t = first; t < end; ++t) {
        const Fiber& f = L.fibers[t];
        const unsigned lane = unsigned(t - first);
        if (f.state == State::AtShuffle) {
            if (f.site != ref->site || f.mask != ref->mask || f.size != ref->size) {
                fail("lanes of warp " + std::to_string(w) + " are at different __shfl_xor_sync calls (" +
                     where(*ref) + " and " + where(f) + ")");
                return false;
            }
            if (!((f.mask >> lane) & 1u)) {
                fail(where(f) + " calls __shfl_xor_sync with a mask that leaves out its own lane");
                return false;
            }
        } else if ((ref->mask >> lane) & 1u) {
            fail("__shfl_xor_sync reached by only part of warp " + std::to_string(w) + ": " + where(*ref) +
                 " waits there, " + where(f) + " is " + state_name(f.state));
            return false;
        }
    }
    for (unsigned lane = unsigned(end - first); lane < 32; ++lane)
        if ((ref->mask >> lane) & 1u) {
            fail("__shfl_xor_sync's mask names lane " + std::to_string(lane) + " of warp " + std::to_string(w) +
                 ", which does not exist in a block of " + std::to_string(n) + " threads");
            return false;
        }
    for (std::size_t t = first; t < end; ++t) {
        Fiber& f = L.fibers[t];
        if (f.state != State::AtShuffle) continue;
        const unsigned lane = unsigned(t - first);
        const unsigned src = lane ^ unsigned(f.lane_mask);
        const unsigned segment = lane & ~unsigned(f.width - 1);
        if (src >= 32 || src >= segment + unsigned(f.width)) {
            f.result = f.value;  // a later segment (or past the warp): the lane's own value
        } else if (!((f.mask >> src) & 1u)) {
            fail(where(f) + " reads lane " + std::to_string(src) + " in __shfl_xor_sync, outside the mask");
            return false;
        } else {
            f.result = L.fibers[first + src].value;
        }
    }
    for (std::size_t t = first; t < end; ++t)
        if (L.fibers[t].state == State::AtShuffle) L.fibers[t].state = State::Ready;
    return true;
}

// Releases the block's barrier if every thread waits at it.
bool resolve_barrier(Launch& L) {
    const Fiber* ref = nullptr;
    for (const Fiber& f : L.fibers)
        if (f.state == State::AtBarrier) {
            ref = &f;
            break;
        }
    if (ref == nullptr) return false;
    for (const Fiber& f : L.fibers) {
        if (f.state != State::AtBarrier) {
            fail("__syncthreads reached by only part of the block: " + where(*ref) + " waits there, " + where(f) +
                 " is " + state_name(f.state));
            return false;
        }
        if (f.site != ref->site) {
            fail("threads of a block wait at different __syncthreads calls (" + where(*ref) + " and " + where(f) +
                 ")");
            return false;
        }
    }
    for (Fiber& f : L.fibers) f.state = State::Ready;
    return true;
}

// Runs one block to its end; false on an error.
bool run_block(Launch& L, int thread_order) {
    const std::size_t n = L.fibers.size();
    for (std::size_t t = 0; t < n; ++t) {
        Fiber& f = L.fibers[t];
        f.tid = Dim3{unsigned(t), 0, 0};
        f.state = State::Ready;
        make_context(f.context, f.stack, kStackSize, &fiber_main, &f);
    }
    std::vector<std::size_t> order(n);
    for (std::size_t t = 0; t < n; ++t) order[t] = thread_order == 1 ? n - 1 - t : t;
    for (;;) {
        if (thread_order == 2)
            for (std::size_t t = n; t > 1; --t) std::swap(order[t - 1], order[next_random(L) % t]);
        for (std::size_t t : order) {
            if (L.fibers[t].state != State::Ready) continue;
            to_fiber(L.fibers[t]);
            if (L.failed) return false;
        }
        bool all_exited = true;
        for (const Fiber& f : L.fibers) all_exited = all_exited && f.state == State::Exited;
        if (all_exited) return true;
        bool progress = false;
        for (std::size_t w = 0; w < (n + 31) / 32; ++w) {
            progress = resolve_shuffle(L, w) || progress;
            if (L.failed) return false;
        }
        if (!progress) progress = resolve_barrier(L);
        if (L.failed) return false;
        if (!progress) {
            fail("no thread of block " + std::to_string(block_idx.x) + " can go on (deadlock)");
            return false;
        }
    }
}

}  // namespace

void syncthreads_at(const void* site) { wait_here(State::AtBarrier, site); }

std::uint64_t shfl_xor_at(const void* site, unsigned mask, std::uint64_t bits, int size, int lane_mask, int width) {
    Fiber& f = *launch_->current;
    f.mask = mask;
    f.value = bits;
    f.size = size;
    f.lane_mask = lane_mask;
    f.width = width;
    if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
        fail(where(f) + " calls __shfl_xor_sync with width " + std::to_string(width) +
             ", not a power of two in [1, 32]");
        to_scheduler(f, false);
    }
    wait_here(State::AtShuffle, site);
    return f.result;
}

// Runs entry(arg) as a grid of `grid` blocks of `block` threads (1-D, as xentcy launches).
// block_seed != 0 runs the blocks in an order shuffled by it; thread_order 0 runs the ready
// threads of a block in ascending order, 1 descending, 2 in a new random order each round.
int run_grid(unsigned grid, unsigned block, void (*entry)(void*), void* arg, std::uint64_t block_seed,
             int thread_order, std::string& error) {
    Launch L;
    L.entry = entry;
    L.arg = arg;
    L.rng = block_seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
    L.fibers.resize(block);
    for (std::size_t t = 0; t < block; ++t) {
        L.fibers[t].stack = stack_for(t);
        if (L.fibers[t].stack == nullptr) {
            error = "cannot map a fiber stack";
            return 1;
        }
    }
    std::vector<unsigned> blocks(grid);
    for (unsigned b = 0; b < grid; ++b) blocks[b] = b;
    launch_ = &L;
    if (block_seed != 0)
        for (unsigned b = grid; b > 1; --b) std::swap(blocks[b - 1], blocks[next_random(L) % b]);
    grid_dim = Dim3{grid, 1, 1};
    block_dim = Dim3{block, 1, 1};
    bool ok = true;
    for (unsigned b : blocks) {
        block_idx = Dim3{b, 0, 0};
        ok = run_block(L, thread_order);
        if (!ok) break;
    }
#if CUDA_HOST_ASAN
    if (!ok)  // fibers left mid-kernel keep their frames' poison: clear it for the next launch
        for (Fiber& f : L.fibers) __asan_unpoison_memory_region(f.stack, kStackSize);
#endif
    launch_ = nullptr;
    current_thread_idx = nullptr;
    if (!ok) error = L.error;
    return ok ? 0 : 1;
}

// A fault inside a kernel (from the alignment handler): ends the launch from the fiber.
[[noreturn]] void fault(std::string message) {
    fail(std::move(message));
    Launch& L = *launch_;
    Fiber& f = *L.current;
    to_scheduler(f, false);
    __builtin_trap();
}

bool in_kernel() { return launch_ != nullptr && launch_->current != nullptr; }

}  // namespace cuda_host

// ---------------------------------------------------------------- UBSan's alignment check
// The kernels are compiled with -fsanitize=alignment and linked without UBSan's runtime:
// these handlers (its ABI) turn a misaligned access into an error of the launch.
namespace {
struct SourceLocation {
    const char* file;
    std::uint32_t line, column;
};
struct TypeDescriptor {
    std::uint16_t kind, info;
    char name[1];
};
struct TypeMismatchData {
    SourceLocation location;
    const TypeDescriptor* type;
    unsigned char log_alignment;
    unsigned char check_kind;
};

void misaligned(TypeMismatchData* data, std::uintptr_t pointer) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "misaligned access at %s:%u:%u: address 0x%llx of a %s needs %u-byte alignment",
                  data->location.file, data->location.line, data->location.column,
                  static_cast<unsigned long long>(pointer), data->type->name, 1u << data->log_alignment);
    if (cuda_host::in_kernel()) cuda_host::fault(buf);
    std::fprintf(stderr, "cuda_host: %s (outside a kernel)\n", buf);
    std::abort();
}
}  // namespace

extern "C" {
void __ubsan_handle_type_mismatch_v1(TypeMismatchData* data, std::uintptr_t pointer) { misaligned(data, pointer); }
void __ubsan_handle_type_mismatch_v1_abort(TypeMismatchData* data, std::uintptr_t pointer) {
    misaligned(data, pointer);
}
}
