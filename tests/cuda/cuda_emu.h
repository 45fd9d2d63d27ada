// cuda_emu.h — just enough CUDA for g++ to compile alexc's generated kernels as plain
// C++ on the CPU, so tests can run them without a GPU (test_emulate.c).
//
// The generated kernels use no shared memory and no barriers (one thread per output
// element, each independent), so a block's threads can run one after another: the
// test sets blockIdx/threadIdx through alexc_emu_set_thread() and calls the kernel
// once per thread. Compile with: g++ -include cuda_emu.h -x c++ device0.cu.
#ifndef ALEXC_CUDA_EMU_H
#define ALEXC_CUDA_EMU_H

#include <math.h>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

static thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

extern "C" void alexc_emu_set_thread(unsigned block, unsigned thread, unsigned block_dim,
                                     unsigned grid_dim) {
  blockIdx.x = block;
  threadIdx.x = thread;
  blockDim.x = block_dim;
  gridDim.x = grid_dim;
}

#endif
