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
// fibers (ucontext, one stack each with a guard page below it): each runs until its next
// __syncthreads() and swaps back; when every thread has arrived, all of them continue.
// The runner first runs thread 0 as a fiber: if it finishes without a barrier, the
// other threads are plain calls (and one that does reach a barrier is an error).
//
// __shared__ variables are `static thread_local`: one copy per OS thread, which the
// fibers of the block running on it share, as a block's threads share shared memory.
// Blocks of a launch must therefore run one after another on a thread (as they do).
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

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The bit-cast intrinsic the bfloat16 conversion uses (--precision bf16).
static inline unsigned __float_as_uint(float f) { return emu_bits(f); }

static thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

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
  ucontext_t context;
  char *stack;          // STACK_BYTES, above a guard page
  unsigned barriers;    // __syncthreads() reached
  bool started, finished;
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
  ucontext_t scheduler;
  bool direct;          // threads 1.. run as plain calls: thread 0 met no barrier
  unsigned direct_barriers;
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
  b->fibers[b->current].finished = true;
#ifdef ALEXC_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, b->scheduler_stack, b->scheduler_stack_size);
#endif
  setcontext(&b->scheduler);  // never returns: this fiber is done
}

// Runs thread t (a fiber, created on first use) until its next barrier or its end.
static bool resume(Block *b, unsigned t) {
  Fiber *f = &b->fibers[t];
  if (!f->started) {
    char *guard = b->stacks + t * (b->page + STACK_BYTES);
    f->stack = guard + b->page;
    if (mprotect(guard, b->page, PROT_NONE) != 0 || getcontext(&f->context) != 0) {
      perror("cuda_emu: a fiber's stack");
      return false;
    }
    f->context.uc_stack.ss_sp = f->stack;
    f->context.uc_stack.ss_size = STACK_BYTES;
    f->context.uc_link = &b->scheduler;
    makecontext(&f->context, fiber_main, 0);
    f->started = true;
  }
  set_thread(b->block, t, b->block_dim, b->grid_dim);
  b->current = t;
#ifdef ALEXC_EMU_ASAN
  __sanitizer_start_switch_fiber(&b->scheduler_fake_stack, f->stack, STACK_BYTES);
#endif
  swapcontext(&b->scheduler, &f->context);
#ifdef ALEXC_EMU_ASAN
  __sanitizer_finish_switch_fiber(b->scheduler_fake_stack, nullptr, nullptr);
#endif
  return true;
}

static void barrier() {
  Block *b = active;
  if (!b) {
    fprintf(stderr, "cuda_emu: __syncthreads() in a kernel not run through "
                    "alexc_emu_run_block()\n");
    abort();
  }
  if (b->direct) {  // counted; run_block reports the mismatch with thread 0
    b->direct_barriers++;
    return;
  }
  Fiber *f = &b->fibers[b->current];
  f->barriers++;
#ifdef ALEXC_EMU_ASAN
  __sanitizer_start_switch_fiber(&f->fake_stack, b->scheduler_stack, b->scheduler_stack_size);
#endif
  swapcontext(&f->context, &b->scheduler);
#ifdef ALEXC_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &b->scheduler_stack, &b->scheduler_stack_size);
#endif
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
      b->direct_barriers = 0;
      b->thread(b->arg);
      if (b->direct_barriers) {
        fprintf(stderr, "cuda_emu: block %u: thread %u reached %u __syncthreads(), thread 0 "
                        "none\n", b->block, t, b->direct_barriers);
        return -1;
      }
    }
    return 0;
  }
  for (;;) {  // a round: every thread to its next barrier (or its end)
    for (unsigned t = 1; t < b->block_dim; t++)
      if (!resume(b, t))
        return -1;
    if (!agreed(b))
      return -1;
    if (b->fibers[0].finished)
      return 0;
    if (!resume(b, 0))
      return -1;
  }
}

}  // namespace alexc_emu

static inline void __syncthreads() { alexc_emu::barrier(); }

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
  active = &b;
  int rc = run(&b);
  active = nullptr;
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
