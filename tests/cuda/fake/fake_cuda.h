// fake_cuda.h — what the fake libcuda (fake_cuda.c) exports to the fake libcublas
// (fake_cublas.c) besides the driver API: a way to put work on a stream's lazy queue and
// the memory checks, so a GEMM behaves like any other asynchronous operation.
#ifndef ALEXC_FAKE_CUDA_H
#define ALEXC_FAKE_CUDA_H

#include <cuda.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

// Work run when its stream reaches it: run(arg), then free(arg).
typedef void (*FakeWork)(void *arg);

// Queues run(arg) on `stream` (NULL: the legacy default stream of the current context,
// which runs it at once after the blocking streams it waits for). `what` names it in
// messages. Takes ownership of arg (malloc'd) even on failure.
CUresult fake_cuda_enqueue(CUstream stream, const char *what, FakeWork run, void *arg);

// The context `stream` belongs to (NULL: the current one); NULL if the handle is unknown.
CUcontext fake_cuda_stream_context(CUstream stream);
// The current context of this thread (NULL: none), and its device ordinal.
CUcontext fake_cuda_current(void);
int fake_cuda_context_device(CUcontext ctx);

// Is [p, p + bytes) inside one live allocation of device `device`? If not, prints
// "fake cuda: WHAT: N bytes at P are outside any allocation on device D" and counts a
// violation (the process then exits 1, whatever the caller does with the error).
bool fake_cuda_check_range(const char *what, int device, CUdeviceptr p, size_t bytes);

// Prints "fake cuda: ..." to stderr and counts a violation.
void fake_cuda_violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// Drains every stream (cublasDestroy synchronises as cudaDeviceSynchronize would).
void fake_cuda_drain_all(void);

#endif
