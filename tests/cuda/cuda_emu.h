// cuda_emu.h — just enough CUDA for g++ to compile alexc's generated kernels as plain
// C++ on the CPU, so tests can run them without a GPU (test_emulate.c, and the fake
// CUDA driver in fake/). Compile with: g++ -include cuda_emu.h -x c++ device0.cu.
//
// A block runs through alexc_emu_run_block(), exported from the kernel's shared object:
//
//   int alexc_emu_run_block(unsigned block, unsigned block_dim, unsigned grid_dim,
//                           void (*thread)(void *arg), void *arg);
//
// It runs the block's threads 0 .. block_dim - 1 on the calling OS thread, setting
// blockIdx, threadIdx, blockDim and gridDim for each and calling thread(arg), which calls
// the kernel with its arguments. Most generated kernels have no barriers: their threads
// are independent and run one after another. A kernel with __syncthreads() (the
// implicit-GEMM convolution, --conv implicit) has its threads run as cooperative
// fibers (one stack each with a guard page below it): each runs until its next
// __syncthreads() and swaps back; when every thread has arrived, all of them continue.
// On x86-64 a fiber switch is a few instructions (switch_stack, below); elsewhere it is
// ucontext's swapcontext, which also makes a system call to swap the signal mask.
// The runner first runs thread 0 as a fiber: if it finishes without a barrier, the
// other threads are plain calls (and one that does reach a barrier is an error).
//
// __shfl_xor_sync (the softmax's warp reductions) is a meeting point of the 32 lanes of
// a warp: each lane gives its value and waits; when every lane of the warp waits at its
// same (n-th) shuffle, each gets its partner's value and they go on. Warps are
// independent of each other (one may finish while another still shuffles). A warp whose
// lanes do not all arrive (a lane finished, or waits at a barrier, or at another
// shuffle), a mask other than all 32 lanes, or lanes asking for different partners is
// an error: on a GPU, undefined behaviour.
//
// __shared__ variables are `thread_local` (static at block scope): one copy per OS
// thread, which the fibers of the block running on it share, as a block's threads share
// shared memory. Blocks of a launch must therefore run one after another on a thread (as
// they do). Dynamic shared memory is the generated kernels' `extern __shared__ unsigned
// char dynamic_smem[]`, defined here with ALEXC_EMU_DYNAMIC_SMEM bytes; the launcher
// says how many bytes the launch gives (alexc_emu_dynamic_shared, below) and each block
// starts with them poisoned (0xff: NaN as floats, as a GPU gives garbage), the rest too;
// a block that wrote past the bytes it was given is an error.
//
//   int alexc_emu_dynamic_shared(unsigned bytes);   // before the launch's blocks; -1 if
//                                                   // more than ALEXC_EMU_DYNAMIC_SMEM
//
// Returns 0, or -1 after a message on stderr when the threads disagree on the number of
// barriers they reached (on a GPU, a hang or undefined behaviour). Under AddressSanitizer
// the stack switches are announced to it (__sanitizer_start/finish_switch_fiber).
//
// __syncthreads() outside alexc_emu_run_block aborts with a message.
// alexc_emu_current_thread() returns threadIdx.x of the thread that ran last, e.g. the
// one whose fault a SIGSEGV handler caught.
#ifndef ALEXC_CUDA_EMU_H
#define ALEXC_CUDA_EMU_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "emu_gemm.h"  // emu_bits

#if defined(__SANITIZE_ADDRESS__)
#define ALEXC_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ALEXC_EMU_ASAN 1
#endif
#endif
#ifdef ALEXC_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// switch_stack(save, load): saves the callee-saved registers and the SSE/x87 control
// words on the running stack, stores its pointer in *save, and continues on the stack
// `load` was saved from (or a new fiber's, prepared by fiber_prepare). Hidden: every
// module the emulator builds has its own copy.
#if defined(__x86_64__)
#define ALEXC_EMU_SWITCH_STACK 1
extern "C" __attribute__((visibility("hidden"))) void alexc_emu_switch_stack(void **save,
                                                                             void *load);
asm(".text\n"
    ".globl alexc_emu_switch_stack\n"
    ".hidden alexc_emu_switch_stack\n"
    ".type alexc_emu_switch_stack, @function\n"
    ".p2align 4\n"
    "alexc_emu_switch_stack:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  subq $8, %rsp\n  stmxcsr (%rsp)\n  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n  fldcw 4(%rsp)\n  addq $8, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size alexc_emu_switch_stack, .-alexc_emu_switch_stack\n");
#endif

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ thread_local
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// CUDA's vector types, aligned as on a GPU (the implicit GEMM's shared-memory loads).
// A misaligned vector access is a fault on a GPU; here UBSan (the sanitizer build's
// kernels) reports it.
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
  float x, y;
};

// The bit-cast intrinsic the bfloat16 conversion uses (--precision bf16).
static inline unsigned __float_as_uint(float f) { return emu_bits(f); }

// CUDA's rsqrtf (the LRN's x^-0.75) is not correctly rounded: the CUDA C++ Programming
// Guide gives it 2 ulp of maximum error. The emulation adds that much (2 ulp above
// 1 / sqrtf(x)), so the accuracy the tests measure allows for the approximation.
static inline float rsqrtf(float x) {
  return nextafterf(nextafterf(1.0f / sqrtf(x), INFINITY), INFINITY);
}

// The rounding intrinsics the training update uses so that nvcc/NVRTC cannot contract
// its products and sums into fused multiply-adds; on the CPU, plain IEEE operations
// (g++ contracts nothing without FMA in the target ISA).
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline float __fadd_rn(float a, float b) { return a + b; }

static thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

// Dynamic shared memory: more than any GPU gives a block (227 KiB on sm_90).
#define ALEXC_EMU_DYNAMIC_SMEM (256u << 10)
thread_local __attribute__((aligned(128))) unsigned char dynamic_smem[ALEXC_EMU_DYNAMIC_SMEM];
static thread_local unsigned dynamic_smem_bytes;  // what the running launch gives

extern "C" int alexc_emu_dynamic_shared(unsigned bytes) {
  if (bytes > ALEXC_EMU_DYNAMIC_SMEM) {
    fprintf(stderr, "cuda_emu: a launch with %u bytes of dynamic shared memory (at most %u)\n",
            bytes, ALEXC_EMU_DYNAMIC_SMEM);
    return -1;
  }
  dynamic_smem_bytes = bytes;
  return 0;
}

static void set_thread(unsigned block, unsigned thread, unsigned block_dim, unsigned grid_dim) {
  blockIdx.x = block;
  threadIdx.x = thread;
  blockDim.x = block_dim;
  gridDim.x = grid_dim;
}

// The thread that ran last on this OS thread (for a fault report: the one that faulted).
extern "C" unsigned alexc_emu_current_thread(void) { return threadIdx.x; }

namespace alexc_emu {

#ifdef ALEXC_EMU_ASAN
constexpr size_t STACK_BYTES = 256 << 10;  // instrumented frames are larger
#else
constexpr size_t STACK_BYTES = 64 << 10;
#endif

struct Fiber {
#ifdef ALEXC_EMU_SWITCH_STACK
  void *sp;             // its stack pointer while switched away
#else
  ucontext_t context;
#endif
  char *stack;          // STACK_BYTES, above a guard page
  unsigned barriers;    // __syncthreads() reached
  unsigned shuffles;    // __shfl_xor_sync() reached
  bool started, finished;
  bool at_barrier;      // waiting at a __syncthreads() for the other threads
  bool at_shuffle;      // waiting at a shuffle: its value, mask and partner lane offset
  float shuffle_value;
  unsigned shuffle_mask;
  int shuffle_xor;
  void *fake_stack;     // ASan's, while switched away
};

struct Block {
  unsigned block, block_dim, grid_dim;
  void (*thread)(void *);
  void *arg;
  Fiber *fibers;
  char *stacks;         // block_dim x (guard page + STACK_BYTES), mapped once
  size_t page, stacks_bytes;
  unsigned current;     // the fiber running
#ifdef ALEXC_EMU_SWITCH_STACK
  void *scheduler_sp;
#else
  ucontext_t scheduler;
#endif
  bool direct;          // threads 1.. run as plain calls: thread 0 met no barrier
  unsigned direct_barriers, direct_shuffles;
  const void *scheduler_stack;  // ASan: the scheduler's stack, to switch back to it
  size_t scheduler_stack_size;
  void *scheduler_fake_stack;
};

static thread_local Block *active;

static void fiber_main() {
  Block *b = active;
#ifdef ALEXC_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b->scheduler_stack, &b->scheduler_stack_size);
#endif
  b->thread(b->arg);
  Fiber *f = &b->fibers[b->current];
  f->finished = true;
#ifdef ALEXC_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, b->scheduler_stack, b->scheduler_stack_size);
#endif
#ifdef ALEXC_EMU_SWITCH_STACK
  alexc_emu_switch_stack(&f->sp, b->scheduler_sp);  // never resumed: this fiber is done
#else
  setcontext(&b->scheduler);  // never returns: this fiber is done
#endif
}

// Makes fiber f start in fiber_main on its stack at its first switch_to_fiber; false
// after a message.
static bool fiber_prepare(Block *b, Fiber *f) {
#ifdef ALEXC_EMU_SWITCH_STACK
  (void)b;
  // The frame alexc_emu_switch_stack pops, from the top of the (page-aligned) stack down:
  // a return address for fiber_main (which never returns), fiber_main (where `ret` goes),
  // the six callee-saved registers, the control words (the running thread's).
  void **top = (void **)(f->stack + STACK_BYTES);
  void **sp = top - 9;
  memset(sp, 0, 9 * sizeof *sp);
  top[-2] = (void *)fiber_main;
  __asm__ volatile("stmxcsr (%0)\n\tfnstcw 4(%0)" : : "r"(sp) : "memory");
  f->sp = sp;
  return true;
#else
  if (getcontext(&f->context) != 0) {
    perror("cuda_emu: a fiber's context");
    return false;
  }
  f->context.uc_stack.ss_sp = f->stack;
  f->context.uc_stack.ss_size = STACK_BYTES;
  f->context.uc_link = &b->scheduler;
  makecontext(&f->context, fiber_main, 0);
  return true;
#endif
}

static void switch_to_fiber(Block *b, Fiber *f) {
#ifdef ALEXC_EMU_SWITCH_STACK
  alexc_emu_switch_stack(&b->scheduler_sp, f->sp);
#else
  swapcontext(&b->scheduler, &f->context);
#endif
}

static void switch_to_scheduler(Block *b, Fiber *f) {
#ifdef ALEXC_EMU_SWITCH_STACK
  alexc_emu_switch_stack(&f->sp, b->scheduler_sp);
#else
  swapcontext(&f->context, &b->scheduler);
#endif
}

// Runs thread t (a fiber, created on first use) until its next barrier or its end.
static bool resume(Block *b, unsigned t) {
  Fiber *f = &b->fibers[t];
  if (!f->started) {
    char *guard = b->stacks + t * (b->page + STACK_BYTES);
    f->stack = guard + b->page;
    if (mprotect(guard, b->page, PROT_NONE) != 0) {
      perror("cuda_emu: a fiber's stack");
      return false;
    }
    if (!fiber_prepare(b, f))
      return false;
    f->started = true;
  }
  set_thread(b->block, t, b->block_dim, b->grid_dim);
  b->current = t;
#ifdef ALEXC_EMU_ASAN
  __sanitizer_start_switch_fiber(&b->scheduler_fake_stack, f->stack, STACK_BYTES);
#endif
  switch_to_fiber(b, f);
#ifdef ALEXC_EMU_ASAN
  __sanitizer_finish_switch_fiber(b->scheduler_fake_stack, nullptr, nullptr);
#endif
  return true;
}

static Block *active_block(const char *what) {
  if (!active) {
    fprintf(stderr, "cuda_emu: %s in a kernel not run through alexc_emu_run_block()\n", what);
    abort();
  }
  return active;
}

// The running fiber hands control back to the scheduler until it is resumed.
static void yield(Block *b, Fiber *f) {
#ifdef ALEXC_EMU_ASAN
  __sanitizer_start_switch_fiber(&f->fake_stack, b->scheduler_stack, b->scheduler_stack_size);
#endif
  switch_to_scheduler(b, f);
#ifdef ALEXC_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &b->scheduler_stack, &b->scheduler_stack_size);
#endif
}

static void barrier() {
  Block *b = active_block("__syncthreads()");
  if (b->direct) {  // counted; run_block reports the mismatch with thread 0
    b->direct_barriers++;
    return;
  }
  Fiber *f = &b->fibers[b->current];
  f->barriers++;
  f->at_barrier = true;
  yield(b, f);
}

// The value of lane (this lane ^ lane_xor) of the warp, once every lane has given its.
// The scheduler (exchange) puts it in shuffle_value before resuming the lane.
static float shuffle_xor(unsigned mask, float value, int lane_xor) {
  Block *b = active_block("__shfl_xor_sync()");
  if (b->direct) {  // thread 0 met none: counted, reported as for barriers
    b->direct_shuffles++;
    return value;
  }
  Fiber *f = &b->fibers[b->current];
  f->shuffles++;
  f->at_shuffle = true;
  f->shuffle_value = value;
  f->shuffle_mask = mask;
  f->shuffle_xor = lane_xor;
  yield(b, f);
  return f->shuffle_value;
}

// After a round: each warp with a lane waiting at a shuffle has every lane waiting at
// the same shuffle, same mask and partner offset; then each lane gets its partner's
// value and may go on. Sets *any when some warp exchanged; false after a message.
static bool exchange(Block *b, bool *any) {
  *any = false;
  for (unsigned w = 0; w * 32 < b->block_dim; w++) {
    Fiber *lane = &b->fibers[w * 32];
    bool waiting = false;
    for (unsigned l = 0; l < 32 && w * 32 + l < b->block_dim; l++)
      waiting |= lane[l].at_shuffle;
    if (!waiting)
      continue;
    if (b->block_dim % 32) {
      fprintf(stderr, "cuda_emu: block %u: a shuffle in a block of %u threads, not whole "
                      "warps\n", b->block, b->block_dim);
      return false;
    }
    for (unsigned l = 0; l < 32; l++) {
      const Fiber *f = &lane[l];
      if (!f->at_shuffle || f->shuffles != lane[0].shuffles || f->shuffle_mask != 0xffffffffu ||
          f->shuffle_xor != lane[0].shuffle_xor || f->shuffle_xor < 0 || f->shuffle_xor > 31) {
        fprintf(stderr, "cuda_emu: block %u warp %u: lane %u %s (shuffle %u, mask %#x, xor %d); "
                        "lane 0 at shuffle %u (mask %#x, xor %d)\n", b->block, w, l,
                f->at_shuffle ? "at a shuffle" : f->finished ? "finished" : "at a barrier",
                f->shuffles, f->shuffle_mask, f->shuffle_xor, lane[0].shuffles,
                lane[0].shuffle_mask, lane[0].shuffle_xor);
        return false;
      }
    }
    float given[32];
    for (unsigned l = 0; l < 32; l++)
      given[l] = lane[l].shuffle_value;
    for (unsigned l = 0; l < 32; l++) {
      lane[l].shuffle_value = given[l ^ (unsigned)lane[l].shuffle_xor];
      lane[l].at_shuffle = false;
    }
    *any = true;
  }
  return true;
}

// After a round: every thread has reached as many barriers as thread 0, and has finished
// if and only if thread 0 has.
static bool agreed(const Block *b) {
  const Fiber *first = &b->fibers[0];
  for (unsigned t = 1; t < b->block_dim; t++) {
    const Fiber *f = &b->fibers[t];
    if (f->barriers != first->barriers || f->finished != first->finished) {
      fprintf(stderr, "cuda_emu: block %u: thread %u %s after %u __syncthreads(), thread 0 %s "
                      "after %u\n", b->block, t, f->finished ? "finished" : "waits",
              f->barriers, first->finished ? "finished" : "waits", first->barriers);
      return false;
    }
  }
  return true;
}

static int run(Block *b) {
  if (!resume(b, 0))
    return -1;
  if (b->fibers[0].finished) {  // no barrier: the other threads are independent calls
    b->direct = true;
    for (unsigned t = 1; t < b->block_dim; t++) {
      set_thread(b->block, t, b->block_dim, b->grid_dim);
      b->direct_barriers = b->direct_shuffles = 0;
      b->thread(b->arg);
      if (b->direct_barriers || b->direct_shuffles) {
        fprintf(stderr, "cuda_emu: block %u: thread %u reached %u __syncthreads() and %u "
                        "shuffles, thread 0 none\n", b->block, t, b->direct_barriers,
                b->direct_shuffles);
        return -1;
      }
    }
    return 0;
  }
  // A round: every thread that may go on (thread 0 is already at its first stop) runs to
  // its next barrier, shuffle or end. Warps whose lanes all wait at a shuffle exchange
  // and go on in the next round; when none does, every thread is at a barrier or
  // finished, and they must agree.
  for (;;) {
    for (unsigned t = 0; t < b->block_dim; t++)
      if (!b->fibers[t].finished && !b->fibers[t].at_barrier && !b->fibers[t].at_shuffle &&
          !resume(b, t))
        return -1;
    bool exchanged;
    if (!exchange(b, &exchanged))
      return -1;
    if (exchanged)
      continue;  // the lanes released go on to their next stop
    if (!agreed(b))
      return -1;
    if (b->fibers[0].finished)
      return 0;
    for (unsigned t = 0; t < b->block_dim; t++)  // all at the barrier: it opens
      b->fibers[t].at_barrier = false;
  }
}

}  // namespace alexc_emu

static inline void __syncthreads() { alexc_emu::barrier(); }
static inline float __shfl_xor_sync(unsigned mask, float value, int lane_xor) {
  return alexc_emu::shuffle_xor(mask, value, lane_xor);
}

extern "C" int alexc_emu_run_block(unsigned block, unsigned block_dim, unsigned grid_dim,
                                   void (*thread)(void *), void *arg) {
  using namespace alexc_emu;
  if (!block_dim || !thread) {
    fprintf(stderr, "cuda_emu: alexc_emu_run_block: no threads\n");
    return -1;
  }
  Block b = {};
  b.block = block;
  b.block_dim = block_dim;
  b.grid_dim = grid_dim;
  b.thread = thread;
  b.arg = arg;
  b.page = (size_t)sysconf(_SC_PAGESIZE);
  b.stacks_bytes = block_dim * (b.page + STACK_BYTES);
  void *stacks = mmap(nullptr, b.stacks_bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  b.fibers = (Fiber *)calloc(block_dim, sizeof(Fiber));
  if (stacks == MAP_FAILED || !b.fibers) {
    fprintf(stderr, "cuda_emu: no memory for %u fibers\n", block_dim);
    free(b.fibers);
    if (stacks != MAP_FAILED)
      munmap(stacks, b.stacks_bytes);
    return -1;
  }
  b.stacks = (char *)stacks;
  memset(dynamic_smem, 0xff, sizeof dynamic_smem);  // garbage, as NaNs
  active = &b;
  int rc = run(&b);
  active = nullptr;
  // Untouched past what the launch gives? Eight bytes at a time: this runs after every block.
  unsigned i = dynamic_smem_bytes;
  for (unsigned long long word; i + 8 <= sizeof dynamic_smem; i += 8) {
    memcpy(&word, &dynamic_smem[i], 8);
    if (~word)
      break;
  }
  while (i < sizeof dynamic_smem && dynamic_smem[i] == 0xff)
    i++;
  if (rc == 0 && i < sizeof dynamic_smem) {
    fprintf(stderr, "cuda_emu: block %u wrote dynamic shared memory at byte %u, past the %u "
                    "bytes its launch gives\n", block, i, dynamic_smem_bytes);
    rc = -1;
  }
#ifdef ALEXC_EMU_ASAN
  // Frames left on the fibers' stacks (every fiber ends inside fiber_main, a stopped
  // block's inside the kernel) leave ASan's redzone marks behind; clear them.
  for (unsigned t = 0; t < block_dim; t++)
    if (b.fibers[t].started)
      __asan_unpoison_memory_region(b.fibers[t].stack, STACK_BYTES);
#endif
  munmap(stacks, b.stacks_bytes);
  free(b.fibers);
  return rc;
}

#endif
