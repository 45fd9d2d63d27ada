// fake_cuda.c — a fake CUDA driver (libcuda.so.1) that runs on the CPU, so the real
// runtime/cuda.c can be tested without a GPU: it loads this library with dlopen like
// the real one, and every call it makes lands here.
//
// What it is for is catching the runtime's mistakes, not speed:
//
// - Memory. cuMemAlloc is a host mapping, recorded with its device and size, filled with
//   NaN (0x7fc00000) so that a result that reads memory nobody wrote is NaN, and ending
//   at an inaccessible guard page. Every copy, memset, kernel pointer argument and
//   (through fake_cublas.c) GEMM operand must lie inside one live allocation of the
//   right device (cuMemcpy2D's: the context's; cuMemcpy3DPeer's: the context each side
//   names); host pointers of a copy must not point into device memory; pitches must be
//   at least WidthInBytes, as CUDA documents. A violation is printed ("fake cuda: WHAT:
//   N bytes at P are outside any allocation on device D"), the call fails, and the
//   process exits 1 at the end even if the caller ignored the error (report_at_exit).
// - Kernels. cuModuleLoadData cannot run a CUBIN; it hashes the image (FNV-1a 64) and
//   loads $ALEXC_FAKE_CUDA_MODULES/<hash>.so, the same kernels compiled for the CPU with
//   tests/cuda/cuda_emu.h (built from the NVRTC cache's source: build_from_cache), and
//   reads <hash>.cu to count each kernel's parameters. A launch runs every block and
//   thread one after another (the threads of a block as fibers of cuda_emu.h's
//   alexc_emu_run_block, so kernels with __shared__ memory and __syncthreads() run
//   too). A kernel that touches a guard page (or any unmapped address) is a GPU's illegal
//   address: reported, and sticky, every later call failing as on a lost context.
// - Streams, lazily and in a random order. An asynchronous operation (launch, copy,
//   memset, GEMM, event record, wait on an event) is queued on its stream and runs only
//   when something waits for it: a stream, event or context synchronisation, a
//   synchronous copy, a free. Then the operations needed run one at a time, each time
//   from a stream picked at random (ALEXC_FAKE_CUDA_SEED) among those whose next
//   operation may start. So two streams without an event between them run in either
//   order, and work nobody waited for has not run when the host looks at its results.
//   With an even seed the picks also include streams nobody waits for yet (a GPU runs
//   work as soon as it may): work the host orders only by the order of its waits (a
//   copy on one stream that should wait for another, synchronised after it) then runs
//   early in some schedules instead of always late.
//
// The legacy default stream (NULL, CU_STREAM_LEGACY, and CU_STREAM_PER_THREAD too, a
// simplification) runs its work at once, after draining what it waits for on a GPU:
// the blocking streams (created without CU_STREAM_NON_BLOCKING) of the current
// context. Synchronous copies are legacy-stream work. Non-blocking streams are not
// drained by it, as on a GPU, so a runtime that mixes them without events is caught.
// cuEventQuery drains instead of answering CUDA_ERROR_NOT_READY; elapsed times are the
// host's clock when the records happened to run.
//
// Stream capture and graphs (cuStreamBeginCapture .. cuGraphLaunch). While a stream is
// capturing, its work is recorded instead of queued; a stream that waits for an event
// recorded in the capture joins it; cuStreamEndCapture requires every joined stream to
// have been joined back (the origin waiting for its last work: otherwise CUDA's
// CUDA_ERROR_STREAM_CAPTURE_UNJOINED). What CUDA refuses during a capture is a violation
// here: synchronising with a capturing stream or event, the legacy stream, copies to or
// from host memory, allocations, waits across the capture's boundary. A launched graph
// runs on streams of its own, one per captured stream, with events of its own in place
// of the captured ones (an event recorded in a capture is a dependency, not a record a
// host can see), after the launching stream's earlier work and before its later work:
// work of the captured streams outside the graph is not ordered with it, as on a GPU.
//
// Environment: ALEXC_FAKE_CUDA_GPUS (1..8, default 1), ALEXC_FAKE_CUDA_MODULES (the
// directory of <hash>.so and <hash>.cu; with ALEXC_FAKE_CUDA_CACHE and
// ALEXC_FAKE_CUDA_EMU, missing ones are built from the NVRTC cache's sources),
// ALEXC_FAKE_CUDA_SEED (default 1), ALEXC_FAKE_CUDA_VERBOSE=1 (the modules loaded, peak
// memory per device, work left).
//
// Dynamic shared memory: a launch may give a block up to the function's
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 48 KiB until cuFuncSetAttribute
// raises it, to at most FAKE_SMEM_OPTIN (an H100's 227 KiB); more is an error, as on a
// GPU (a violation at the launch). The kernel gets the bytes as cuda_emu.h's
// dynamic_smem, poisoned, and writing past them is a violation.
//
// Not emulated: real concurrency, CUBIN or PTX execution, 2D/3D grids and blocks, arrays
// and textures,
// contexts other than the primary ones, peer access from kernels (a kernel argument
// on another device is an error). Single-threaded callers only, like the runtime; the
// current context is thread-local as in CUDA.
#define _GNU_SOURCE
#include "fake_cuda.h"
#include "../emu_module.h"

#include <dirent.h>
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_GPUS 8
#define MAX_PTR_ARGS 16  // pointer parameters of a kernel (then its int batch)
#define TOTAL_MEM ((size_t)80 << 30)
#define ALIGN 256  // cuMemAlloc's alignment
#define POISON 0x7fc00000u

// ---------------------------------------------------------------- state

struct CUctx_st {
  int device;
  int retained;    // primary context references; 0: not (or no longer) usable
  unsigned peers;  // bit d: peer access to device d's context enabled
};

// A device allocation: `size` bytes at `base`, inside a mapping `map` of `map_size`
// bytes whose first and last pages are inaccessible guards (see map_alloc).
typedef struct {
  uintptr_t base;
  size_t size;
  int device;
  char *map;
  size_t map_size;
} Alloc;

typedef enum { OP_WORK, OP_RECORD, OP_WAIT } OpKind;

// One queued asynchronous operation.
typedef struct Op {
  OpKind kind;
  const char *what;  // for messages: "cuMemcpy2DAsync", a kernel's name
  FakeWork run;      // OP_WORK: run(arg), then free(arg)
  void *arg;
  CUevent event;  // OP_RECORD: this record of event; OP_WAIT: waits for it
  uint64_t seq;   // the record's number (1, 2, ... per event); captured: the capture's
  bool borrowed;  // arg belongs to a graph, which runs it again at every launch
  CUstream on;    // captured: the stream it was issued on
  struct Op *next;
} Op;

// A stream capture in progress, then (ended) a graph: its operations in issue order.
// Captured records are numbered 1.. (Op.seq) in place of event records.
typedef struct Capture {
  CUstream origin;
  Op *head, *tail;
  uint64_t records;
  bool invalid;  // something CUDA refuses happened during it
  int execs;     // instantiations alive (a graph outlives cuGraphDestroy while used)
  bool destroyed;
} Capture;
struct CUgraph_st {
  Capture c;
};

struct CUstream_st {
  CUcontext ctx;
  unsigned flags;
  int id;  // creation order, for messages
  Op *head, *tail;
  int pending;
  Capture *capture;  // capturing into this, or NULL
};

typedef struct {
  bool done;
  struct timespec when;
} Record;

struct CUevent_st {
  CUcontext ctx;
  unsigned flags;
  uint64_t recorded;  // records enqueued so far; the latest is the event's state
  Record *rec;        // rec[seq - 1]
  Capture *capture;   // last recorded in this capture (its record number: capture_seq)
  uint64_t capture_seq;
};

// Dynamic shared memory per block: the default limit, and the most a function may be
// given (cuFuncSetAttribute), as on sm_90.
#define FAKE_SMEM_DEFAULT (48 * 1024)
#define FAKE_SMEM_OPTIN (227 * 1024)

struct CUfunc_st {
  CUmodule mod;
  void *fn;
  int n_ptr;  // pointer parameters before the final int
  int max_dynamic_smem;  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
  char name[128];
  struct CUfunc_st *next;
};

struct CUmod_st {
  CUcontext ctx;
  void *so;
  char *source;  // the .cu, to count kernel parameters
  // cuda_emu.h's block runner: the block's threads as fibers, so __syncthreads() works.
  int (*run_block)(unsigned block, unsigned block_dim, unsigned grid_dim, void (*thread)(void *),
                   void *arg);
  unsigned (*current_thread)(void);
  int (*dynamic_shared)(unsigned bytes);  // cuda_emu.h: the bytes the next blocks get
  struct CUfunc_st *funcs;
  char hash[17];
};

static struct {
  bool initialized;
  int n_gpus;
  bool verbose;
  uint64_t rng;
  bool eager;  // even seeds: run_needed may also run work nobody waits for yet
  const char *modules;
  int violations;
  CUresult sticky;  // CUDA_ERROR_ILLEGAL_ADDRESS once a kernel faulted, as on a GPU
  struct CUctx_st ctx[MAX_GPUS];
  size_t live[MAX_GPUS], peak[MAX_GPUS];
  Alloc *allocs;
  int n_allocs, cap_allocs;
  CUstream *streams;
  int n_streams, cap_streams, next_stream_id;
  CUevent *events;
  int n_events, cap_events;
  CUmodule *mods;
  int n_mods, cap_mods;
} fake;

static _Thread_local CUcontext current;

// Grows *v (an array of *cap elements of `size` bytes) to hold at least n; aborts when
// out of memory: a test double has nothing better to do.
static void reserve(void *v, int *cap, int n, size_t size) {
  if (n <= *cap)
    return;
  int c = *cap ? *cap * 2 : 16;
  while (c < n)
    c *= 2;
  void *p = realloc(*(void **)v, (size_t)c * size);
  if (!p) {
    fprintf(stderr, "fake cuda: out of host memory\n");
    abort();
  }
  *(void **)v = p;
  *cap = c;
}

static _Noreturn void out_of_memory(void) {
  fprintf(stderr, "fake cuda: out of host memory\n");
  abort();
}

static void *xmalloc(size_t n) {
  void *p = calloc(1, n ? n : 1);
  if (!p)
    out_of_memory();
  return p;
}

// ---------------------------------------------------------------- messages

void fake_cuda_violation(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("fake cuda: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fake.violations++;
}

// A misuse the runtime must not commit: printed, counted, returned.
#define VIOLATION(code, ...) (fake_cuda_violation(__VA_ARGS__), (code))

// A failure a correct caller may meet and handle (a module with no CPU build):
// printed and returned, not counted.
static CUresult soft_fail(CUresult code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static CUresult soft_fail(CUresult code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("fake cuda: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return code;
}

// Whatever the runtime did with the errors it got: a run that committed a violation
// fails. _exit, because exit() may not be called again from an atexit handler.
static void report_at_exit(void) {
  int pending = 0;
  for (int i = 0; i < fake.n_streams; i++)
    pending += fake.streams[i]->pending;
  if (fake.verbose) {
    for (int d = 0; d < fake.n_gpus; d++)
      fprintf(stderr, "fake cuda: device %d: peak %zu bytes allocated, %zu still allocated\n", d,
              fake.peak[d], fake.live[d]);
    if (pending)
      fprintf(stderr, "fake cuda: %d queued operation(s) never ran: nobody waited for them\n",
              pending);
  }
  if (fake.violations) {
    fprintf(stderr, "fake cuda: %d violation(s) of the CUDA API reported in this run\n",
            fake.violations);
    fflush(NULL);
    _exit(1);
  }
}

// ---------------------------------------------------------------- initialisation

static int env_int(const char *name, int fallback, int lo, int hi) {
  const char *s = getenv(name);
  if (!s || !*s)
    return fallback;
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < lo || v > hi) {
    fprintf(stderr, "fake cuda: %s=%s: expected a number in [%d, %d]; using %d\n", name, s, lo, hi,
            fallback);
    return fallback;
  }
  return (int)v;
}

CUresult cuInit(unsigned int flags) {
  if (flags)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuInit: flags must be 0, not %u", flags);
  if (fake.initialized)
    return CUDA_SUCCESS;
  fake.initialized = true;
  fake.n_gpus = env_int("ALEXC_FAKE_CUDA_GPUS", 1, 1, MAX_GPUS);
  fake.rng = (uint64_t)env_int("ALEXC_FAKE_CUDA_SEED", 1, 0, 1 << 30);
  fake.eager = fake.rng % 2 == 0;
  fake.verbose = env_int("ALEXC_FAKE_CUDA_VERBOSE", 0, 0, 1);
  fake.modules = getenv("ALEXC_FAKE_CUDA_MODULES");
  for (int d = 0; d < MAX_GPUS; d++)
    fake.ctx[d].device = d;
  atexit(report_at_exit);
  return CUDA_SUCCESS;
}

// Every call fails once a kernel has faulted: the context is lost, as on a GPU.
#define NEED_INIT()                      \
  do {                                   \
    if (!fake.initialized)               \
      return CUDA_ERROR_NOT_INITIALIZED; \
    if (fake.sticky)                     \
      return fake.sticky;                \
  } while (0)

// The capture in progress (one at a time: the runtime captures from one thread).
static Capture *capturing;

static void capture_op(CUstream s, Op *op) {
  Capture *c = s->capture;
  op->on = s;
  op->next = NULL;
  if (c->tail)
    c->tail->next = op;
  else
    c->head = op;
  c->tail = op;
}

// A call CUDA refuses while a capture is in progress (it also invalidates the capture).
static CUresult capture_violation(const char *what) {
  capturing->invalid = true;
  return VIOLATION(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                   "%s during a stream capture (CUDA refuses it and invalidates the capture)",
                   what);
}
#define NOT_WHILE_CAPTURING(what)      \
  do {                                 \
    if (capturing)                     \
      return capture_violation(what);  \
  } while (0)

// SplitMix64: a seeded, portable sequence, so a seed replays the same schedule.
static uint64_t next_random(void) {
  uint64_t z = (fake.rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// ---------------------------------------------------------------- errors, versions, devices

static const struct {
  CUresult code;
  const char *name, *text;
} ERRORS[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_NO_BINARY_FOR_GPU, "CUDA_ERROR_NO_BINARY_FOR_GPU",
     "no kernel image is available for execution on the device"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS",
     "an illegal memory access was encountered"},
    {CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED, "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED",
     "peer access is already enabled"},
    {CUDA_ERROR_NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {CUDA_ERROR_ILLEGAL_STATE, "CUDA_ERROR_ILLEGAL_STATE", "the resource is in an illegal state"},
    {CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED",
     "operation not permitted when stream is capturing"},
    {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED",
     "operation failed due to a previous error during capture"},
    {CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION",
     "a dependency would cross the capture sequence boundary"},
    {CUDA_ERROR_STREAM_CAPTURE_UNJOINED, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED",
     "capture was not joined back to the origin stream"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static int error_index(CUresult code) {
  for (size_t i = 0; i < sizeof ERRORS / sizeof *ERRORS; i++)
    if (ERRORS[i].code == code)
      return (int)i;
  return -1;
}

CUresult cuGetErrorString(CUresult error, const char **str) {
  int i = error_index(error);
  if (!str)
    return CUDA_ERROR_INVALID_VALUE;
  *str = i < 0 ? NULL : ERRORS[i].text;
  return i < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **str) {
  int i = error_index(error);
  if (!str)
    return CUDA_ERROR_INVALID_VALUE;
  *str = i < 0 ? NULL : ERRORS[i].name;
  return i < 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

// The driver's private interface, which NVRTC looks up when a libcuda is loaded in the
// process (a NULL function would crash it): there is none here.
CUresult cuGetExportTable(const void **table, const CUuuid *id) {
  (void)id;
  if (table)
    *table = NULL;
  return CUDA_ERROR_NOT_SUPPORTED;
}

CUresult cuDriverGetVersion(int *version) {
  if (!version)
    return CUDA_ERROR_INVALID_VALUE;
  *version = CUDA_VERSION;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
  NEED_INIT();
  if (!count)
    return CUDA_ERROR_INVALID_VALUE;
  *count = fake.n_gpus;
  return CUDA_SUCCESS;
}

static bool valid_device(CUdevice d) { return d >= 0 && d < fake.n_gpus; }

#define NEED_DEVICE(d)                                                                           \
  do {                                                                                           \
    NEED_INIT();                                                                                 \
    if (!valid_device(d))                                                                        \
      return VIOLATION(CUDA_ERROR_INVALID_DEVICE, "%s: no device %d (%d fake GPU(s))", __func__, \
                       (int)(d), fake.n_gpus);                                                   \
  } while (0)

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  NEED_DEVICE(ordinal);
  if (!device)
    return CUDA_ERROR_INVALID_VALUE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
  NEED_DEVICE(dev);
  if (!name || len <= 0)
    return CUDA_ERROR_INVALID_VALUE;
  snprintf(name, (size_t)len, "alexc fake GPU %d (CPU)", (int)dev);
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attrib, CUdevice dev) {
  NEED_DEVICE(dev);
  if (!value)
    return CUDA_ERROR_INVALID_VALUE;
  switch (attrib) {
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = 9; break;
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = 0; break;
  case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = 132; break;
  case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *value = 1024; break;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *value = INT32_MAX; break;
  case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *value = 32; break;
  case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *value = 1; break;
  default:
    return soft_fail(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: attribute %d is not emulated",
                     (int)attrib);
  }
  return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t *bytes, CUdevice dev) {
  NEED_DEVICE(dev);
  if (!bytes)
    return CUDA_ERROR_INVALID_VALUE;
  *bytes = TOTAL_MEM;
  return CUDA_SUCCESS;
}

CUresult cuDeviceCanAccessPeer(int *can, CUdevice dev, CUdevice peer) {
  NEED_DEVICE(dev);
  NEED_DEVICE(peer);
  if (!can)
    return CUDA_ERROR_INVALID_VALUE;
  *can = dev != peer;  // as CUDA: a device is not its own peer
  return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- contexts

static bool live_context(CUcontext c) {
  return c >= fake.ctx && c < fake.ctx + fake.n_gpus && c->retained > 0;
}

CUcontext fake_cuda_current(void) { return live_context(current) ? current : NULL; }

int fake_cuda_context_device(CUcontext ctx) { return ctx ? ctx->device : -1; }

// The current context in *c; else what the calling function `fn` must return.
static CUresult need_context(const char *fn, CUcontext *c) {
  if (!fake.initialized)
    return CUDA_ERROR_NOT_INITIALIZED;
  if (fake.sticky)
    return fake.sticky;
  *c = fake_cuda_current();
  if (!*c)
    return VIOLATION(CUDA_ERROR_INVALID_CONTEXT, "%s: no current context (cuCtxSetCurrent)", fn);
  return CUDA_SUCCESS;
}

// Declares c, the current context, or returns the error from the calling function.
#define NEED_CONTEXT(c)                        \
  CUcontext c;                                 \
  do {                                         \
    CUresult rc_ = need_context(__func__, &c); \
    if (rc_ != CUDA_SUCCESS)                   \
      return rc_;                              \
  } while (0)

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
  NEED_DEVICE(dev);
  if (!pctx)
    return CUDA_ERROR_INVALID_VALUE;
  fake.ctx[dev].retained++;
  *pctx = &fake.ctx[dev];
  return CUDA_SUCCESS;
}

static void drain_context(CUcontext c, bool blocking_only);

CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
  NEED_DEVICE(dev);
  if (fake.ctx[dev].retained <= 0)
    return VIOLATION(CUDA_ERROR_INVALID_CONTEXT,
                     "cuDevicePrimaryCtxRelease: device %d's primary context is not retained",
                     (int)dev);
  // The last release destroys the context on a GPU, which waits for its work first; a
  // context retained later starts without peer access.
  if (fake.ctx[dev].retained == 1) {
    drain_context(&fake.ctx[dev], false);
    fake.ctx[dev].peers = 0;
  }
  fake.ctx[dev].retained--;
  return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
  NEED_INIT();
  if (ctx && !live_context(ctx))
    return VIOLATION(CUDA_ERROR_INVALID_CONTEXT,
                     "cuCtxSetCurrent: %p is not a retained primary context", (void *)ctx);
  current = ctx;
  return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *pctx) {
  NEED_INIT();
  if (!pctx)
    return CUDA_ERROR_INVALID_VALUE;
  *pctx = fake_cuda_current();
  return CUDA_SUCCESS;
}

CUresult cuCtxEnablePeerAccess(CUcontext peer, unsigned int flags) {
  NEED_CONTEXT(c);
  if (flags)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuCtxEnablePeerAccess: flags must be 0");
  if (!live_context(peer))
    return VIOLATION(CUDA_ERROR_INVALID_CONTEXT, "cuCtxEnablePeerAccess: %p is not a context",
                     (void *)peer);
  if (peer == c)
    return VIOLATION(CUDA_ERROR_INVALID_DEVICE,
                     "cuCtxEnablePeerAccess: device %d cannot be its own peer", c->device);
  if (c->peers & (1u << peer->device))
    return CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED;
  c->peers |= 1u << peer->device;
  return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- memory

static Alloc *find_alloc(uintptr_t p) {
  for (int i = 0; i < fake.n_allocs; i++)
    if (p >= fake.allocs[i].base && p - fake.allocs[i].base < fake.allocs[i].size)
      return &fake.allocs[i];
  return NULL;
}

bool fake_cuda_check_range(const char *what, int device, CUdeviceptr p, size_t bytes) {
  if (!bytes)
    return true;
  const Alloc *a = find_alloc((uintptr_t)p);
  if (a && a->device == device && bytes <= a->base + a->size - (uintptr_t)p)
    return true;
  if (!a)
    fake_cuda_violation("%s: %zu bytes at %#llx are outside any allocation on device %d", what,
                        bytes, (unsigned long long)p, device);
  else if (a->device != device)
    fake_cuda_violation("%s: %zu bytes at %#llx are in an allocation of device %d, not device %d",
                        what, bytes, (unsigned long long)p, a->device, device);
  else
    fake_cuda_violation(
        "%s: %zu bytes at %#llx run %zu bytes past the end of the allocation "
        "of %zu bytes at %#lx on device %d",
        what, bytes, (unsigned long long)p, bytes - (a->base + a->size - (uintptr_t)p), a->size,
        (unsigned long)a->base, device);
  return false;
}

// A host range of a copy: not NULL, and not device memory passed as host memory.
static bool check_host(const char *what, const void *p, size_t bytes) {
  if (!bytes)
    return true;
  uintptr_t lo = (uintptr_t)p;
  if (!p) {
    fake_cuda_violation("%s: NULL host pointer", what);
    return false;
  }
  for (int i = 0; i < fake.n_allocs; i++) {
    const Alloc *a = &fake.allocs[i];
    if (lo < a->base + a->size && lo + bytes > a->base) {
      fake_cuda_violation(
          "%s: the host range of %zu bytes at %p overlaps device %d's "
          "allocation at %#lx",
          what, bytes, p, a->device, (unsigned long)a->base);
      return false;
    }
  }
  return true;
}

// Maps `bytes` (rounded up to ALIGN) so that they end where an inaccessible guard page
// begins, with another guard page before them: a kernel running past either end of a
// buffer faults (see run_launch) instead of corrupting the host's memory. The rest of
// the accessible pages, less than a page before the buffer, is poisoned like it.
static uint32_t *map_alloc(size_t bytes, Alloc *a) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE), rounded = (bytes + ALIGN - 1) / ALIGN * ALIGN,
         body = (rounded + page - 1) / page * page;
  char *m = mmap(NULL, body + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED)
    return NULL;
  if (mprotect(m + page, body, PROT_READ | PROT_WRITE) != 0) {
    munmap(m, body + 2 * page);
    return NULL;
  }
  uint32_t *words = (uint32_t *)(m + page);
  for (size_t i = 0; i < body / 4; i++)  // NaN: reading what nobody wrote shows
    words[i] = POISON;
  a->map = m;
  a->map_size = body + 2 * page;
  a->base = (uintptr_t)(m + page + body - rounded);
  a->size = bytes;
  return (uint32_t *)a->base;
}

CUresult cuMemAlloc(CUdeviceptr *dptr, size_t bytes) {
  NEED_CONTEXT(c);
  NOT_WHILE_CAPTURING("cuMemAlloc");
  int d = c->device;
  if (!dptr || !bytes)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc: %s",
                     dptr ? "0 bytes" : "NULL result pointer");
  if (bytes > TOTAL_MEM - fake.live[d])
    return CUDA_ERROR_OUT_OF_MEMORY;
  Alloc a = {.device = d};
  uint32_t *p = map_alloc(bytes, &a);
  if (!p)
    return soft_fail(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: %zu bytes: out of host memory", bytes);
  reserve(&fake.allocs, &fake.cap_allocs, fake.n_allocs + 1, sizeof *fake.allocs);
  fake.allocs[fake.n_allocs++] = a;
  fake.live[d] += bytes;
  if (fake.live[d] > fake.peak[d])
    fake.peak[d] = fake.live[d];
  *dptr = (CUdeviceptr)(uintptr_t)p;
  return CUDA_SUCCESS;
}

CUresult cuMemFree(CUdeviceptr dptr) {
  NEED_INIT();
  NOT_WHILE_CAPTURING("cuMemFree");
  if (!dptr)
    return CUDA_SUCCESS;
  fake_cuda_drain_all();  // cuMemFree waits for the device, so queued work still sees it
  Alloc *a = find_alloc((uintptr_t)dptr);
  if (!a || a->base != (uintptr_t)dptr)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuMemFree: %#llx is not an allocation%s",
                     (unsigned long long)dptr, a ? "'s start" : "");
  fake.live[a->device] -= a->size;
  munmap(a->map, a->map_size);
  *a = fake.allocs[--fake.n_allocs];
  return fake.sticky;
}

CUresult cuMemGetInfo(size_t *free_bytes, size_t *total) {
  NEED_CONTEXT(c);
  if (!free_bytes || !total)
    return CUDA_ERROR_INVALID_VALUE;
  *total = TOTAL_MEM;
  *free_bytes = TOTAL_MEM - fake.live[c->device];
  return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- streams and the queues

static bool is_legacy(CUstream s) {
  return !s || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD;
}

static int stream_index(CUstream s) {
  for (int i = 0; i < fake.n_streams; i++)
    if (fake.streams[i] == s)
      return i;
  return -1;
}

CUcontext fake_cuda_stream_context(CUstream s) {
  if (is_legacy(s))
    return fake_cuda_current();
  return stream_index(s) >= 0 ? s->ctx : NULL;
}

static bool live_event(CUevent e) {
  for (int i = 0; i < fake.n_events; i++)
    if (fake.events[i] == e)
      return true;
  return false;
}

static bool op_ready(const Op *op) {
  return op->kind != OP_WAIT || op->event->rec[op->seq - 1].done;
}

static void run_op(Op *op) {
  switch (op->kind) {
  case OP_WORK:
    if (!fake.sticky)  // after a fault the context is lost: nothing more runs
      op->run(op->arg);
    break;
  case OP_RECORD: {
    Record *r = &op->event->rec[op->seq - 1];
    r->done = true;
    clock_gettime(CLOCK_MONOTONIC, &r->when);
    break;
  }
  case OP_WAIT:  // op_ready() said the record it waits for has run
    break;
  }
  if (!op->borrowed)
    free(op->arg);
  free(op);
}

static Op *pop(CUstream s) {
  Op *op = s->head;
  s->head = op->next;
  if (!s->head)
    s->tail = NULL;
  s->pending--;
  return op;
}

// need[i]: how many operations at the head of stream i must run. Widens it to what they
// wait for: the prefix of another stream up to the record a wait needs, and so on.
static void close_needs(int *need) {
  for (bool changed = true; changed;) {
    changed = false;
    for (int i = 0; i < fake.n_streams; i++) {
      Op *op = fake.streams[i]->head;
      for (int k = 0; k < need[i]; k++, op = op->next) {
        if (op->kind != OP_WAIT || op->event->rec[op->seq - 1].done)
          continue;
        for (int j = 0; j < fake.n_streams; j++) {  // where that record is queued
          int at = 1;
          for (Op *r = fake.streams[j]->head; r; r = r->next, at++)
            if (r->kind == OP_RECORD && r->event == op->event && r->seq == op->seq &&
                need[j] < at) {
              need[j] = at;
              changed = true;
            }
        }
      }
    }
  }
}

static void deadlock(const int *need) {
  fprintf(stderr, "fake cuda: deadlock: no stream can make progress\n");
  for (int i = 0; i < fake.n_streams; i++)
    if (need[i])
      fprintf(stderr, "  stream %d: waits in '%s'\n", fake.streams[i]->id,
              fake.streams[i]->head->what);
  abort();
}

// Runs the needed operations, each time the head of a stream picked at random among
// those whose head may start (eager: and among streams nobody needs yet whose head may
// start): every interleaving that respects stream order and event waits can happen, and
// a seed replays one.
static void run_needed(int *need) {
  close_needs(need);
  int *ready = xmalloc(sizeof(int) * (size_t)(2 * fake.n_streams + 1));
  for (;;) {
    int n_ready = 0, n_extra = 0, waiting = 0;
    int *extra = ready + fake.n_streams;
    for (int i = 0; i < fake.n_streams; i++) {
      Op *head = fake.streams[i]->head;
      waiting += need[i] > 0;
      if (need[i] > 0 && op_ready(head))
        ready[n_ready++] = i;
      else if (fake.eager && !need[i] && head && op_ready(head))
        extra[n_extra++] = i;
    }
    if (!n_ready) {
      if (waiting)
        deadlock(need);
      break;
    }
    uint64_t pick = next_random() % (uint64_t)(n_ready + n_extra);
    int i = pick < (uint64_t)n_ready ? ready[pick] : extra[pick - (uint64_t)n_ready];
    if (need[i])
      need[i]--;
    run_op(pop(fake.streams[i]));
  }
  free(ready);
}

static int *new_needs(void) { return xmalloc(sizeof(int) * (size_t)(fake.n_streams + 1)); }

void fake_cuda_drain_all(void) {
  int *need = new_needs();
  for (int i = 0; i < fake.n_streams; i++)
    need[i] = fake.streams[i]->pending;
  run_needed(need);
  free(need);
}

// Every stream of context c (only the blocking ones: what the legacy stream waits for).
static void drain_context(CUcontext c, bool blocking_only) {
  int *need = new_needs();
  for (int i = 0; i < fake.n_streams; i++) {
    CUstream s = fake.streams[i];
    if (s->ctx == c && !(blocking_only && (s->flags & CU_STREAM_NON_BLOCKING)))
      need[i] = s->pending;
  }
  run_needed(need);
  free(need);
}

static void drain_stream(CUstream s) {
  int *need = new_needs();
  need[stream_index(s)] = s->pending;
  run_needed(need);
  free(need);
}

// Until record `seq` of event e has run (seq 0: never recorded, nothing to wait for).
static void drain_event(CUevent e, uint64_t seq) {
  if (!seq || e->rec[seq - 1].done)
    return;
  int *need = new_needs();
  for (int i = 0; i < fake.n_streams; i++) {
    int at = 1;
    for (Op *r = fake.streams[i]->head; r; r = r->next, at++)
      if (r->kind == OP_RECORD && r->event == e && r->seq == seq)
        need[i] = at;
  }
  run_needed(need);
  free(need);
}

// Queues op on stream s, or on the legacy stream runs it now, after what that waits for.
static CUresult enqueue(CUstream s, Op *op) {
  if (is_legacy(s) && capturing) {
    free(op->arg);
    free(op);
    return capture_violation("work on the legacy stream");
  }
  if (is_legacy(s)) {
    CUcontext c = fake_cuda_current();
    if (!c) {
      const char *what = op->what;
      free(op->arg);
      free(op);
      return VIOLATION(CUDA_ERROR_INVALID_CONTEXT, "%s: no current context for the NULL stream",
                       what);
    }
    drain_context(c, true);
    if (op->kind == OP_WAIT)
      drain_event(op->event, op->seq);
    run_op(op);
    return fake.sticky;
  }
  if (stream_index(s) < 0) {
    const char *what = op->what;
    free(op->arg);
    free(op);
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "%s: %p is not a live stream", what, (void *)s);
  }
  if (s->capture) {
    capture_op(s, op);
    return CUDA_SUCCESS;
  }
  if (s->tail)
    s->tail->next = op;
  else
    s->head = op;
  s->tail = op;
  s->pending++;
  return CUDA_SUCCESS;
}

CUresult fake_cuda_enqueue(CUstream stream, const char *what, FakeWork run, void *arg) {
  Op *op = xmalloc(sizeof *op);
  *op = (Op){.kind = OP_WORK, .what = what, .run = run, .arg = arg};
  return enqueue(stream, op);
}

// The stream's context must be the current one (CUDA: "invalid resource handle").
static CUresult check_stream(const char *what, CUstream s, CUcontext c) {
  if (is_legacy(s))
    return CUDA_SUCCESS;
  if (stream_index(s) < 0)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "%s: %p is not a live stream", what, (void *)s);
  if (s->ctx != c)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE,
                     "%s: stream %d belongs to device %d's context, the current one is device %d's",
                     what, s->id, s->ctx->device, c->device);
  return CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream *ps, unsigned int flags) {
  NEED_CONTEXT(c);
  if (!ps || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING))
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: bad arguments (flags %#x)", flags);
  CUstream s = xmalloc(sizeof *s);
  *s = (struct CUstream_st){.ctx = c, .flags = flags, .id = fake.next_stream_id++};
  reserve(&fake.streams, &fake.cap_streams, fake.n_streams + 1, sizeof *fake.streams);
  fake.streams[fake.n_streams++] = s;
  *ps = s;
  return CUDA_SUCCESS;
}

CUresult cuStreamDestroy(CUstream s) {
  NEED_INIT();
  NOT_WHILE_CAPTURING("cuStreamDestroy");
  int i = is_legacy(s) ? -1 : stream_index(s);
  if (i < 0)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: %p is not a live stream",
                     (void *)s);
  drain_stream(s);  // a GPU finishes a destroyed stream's work
  fake.streams[i] = fake.streams[--fake.n_streams];
  free(s);
  return fake.sticky;
}

CUresult cuStreamSynchronize(CUstream s) {
  NEED_INIT();
  NOT_WHILE_CAPTURING("cuStreamSynchronize");
  if (is_legacy(s)) {
    NEED_CONTEXT(c);
    drain_context(c, true);
    return fake.sticky;
  }
  if (stream_index(s) < 0)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "cuStreamSynchronize: %p is not a live stream",
                     (void *)s);
  drain_stream(s);
  return fake.sticky;
}

CUresult cuCtxSynchronize(void) {
  NEED_CONTEXT(c);
  NOT_WHILE_CAPTURING("cuCtxSynchronize");
  drain_context(c, false);
  return fake.sticky;
}

// ---------------------------------------------------------------- events

CUresult cuEventCreate(CUevent *pe, unsigned int flags) {
  NEED_CONTEXT(c);
  unsigned known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
  if (!pe || (flags & ~known) ||
      ((flags & CU_EVENT_INTERPROCESS) && !(flags & CU_EVENT_DISABLE_TIMING)))
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuEventCreate: bad arguments (flags %#x)", flags);
  CUevent e = xmalloc(sizeof *e);
  *e = (struct CUevent_st){.ctx = c, .flags = flags};
  reserve(&fake.events, &fake.cap_events, fake.n_events + 1, sizeof *fake.events);
  fake.events[fake.n_events++] = e;
  *pe = e;
  return CUDA_SUCCESS;
}

#define NEED_EVENT(e)                                                                     \
  do {                                                                                    \
    NEED_INIT();                                                                          \
    if (!live_event(e))                                                                   \
      return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "%s: %p is not a live event", __func__, \
                       (void *)(e));                                                      \
  } while (0)

CUresult cuEventDestroy(CUevent e) {
  NEED_EVENT(e);
  NOT_WHILE_CAPTURING("cuEventDestroy");
  fake_cuda_drain_all();  // no queued record or wait may outlive it
  for (int i = 0; i < fake.n_events; i++)
    if (fake.events[i] == e)
      fake.events[i] = fake.events[--fake.n_events];
  free(e->rec);
  free(e);
  return fake.sticky;
}

CUresult cuEventRecord(CUevent e, CUstream s) {
  NEED_EVENT(e);
  CUcontext c = fake_cuda_stream_context(s);
  if (!c)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: %p is not a live stream%s",
                     (void *)s, is_legacy(s) ? " (no current context)" : "");
  if (c != e->ctx)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE,
                     "cuEventRecord: the event belongs to device %d's context, the stream to "
                     "device %d's",
                     e->ctx->device, c->device);
  if (!is_legacy(s) && s->capture) {  // a dependency of the capture, not a record
    Op *op = xmalloc(sizeof *op);
    *op = (Op){.kind = OP_RECORD, .what = "cuEventRecord", .event = e,
               .seq = ++s->capture->records};
    e->capture = s->capture;
    e->capture_seq = op->seq;
    capture_op(s, op);
    return CUDA_SUCCESS;
  }
  e->capture = NULL;
  Record *rec = realloc(e->rec, (e->recorded + 1) * sizeof *rec);
  if (!rec)
    abort();
  e->rec = rec;
  e->rec[e->recorded] = (Record){0};
  Op *op = xmalloc(sizeof *op);
  *op = (Op){.kind = OP_RECORD, .what = "cuEventRecord", .event = e, .seq = ++e->recorded};
  return enqueue(s, op);
}

CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags) {
  NEED_EVENT(e);
  if (flags)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuStreamWaitEvent: flags must be 0");
  if (e->capture && e->capture == capturing && !is_legacy(s) && stream_index(s) >= 0) {
    // A wait for the capture's work: the stream joins the capture (or already is in it).
    if (s->capture && s->capture != capturing)
      return capture_violation("cuStreamWaitEvent across two captures");
    s->capture = capturing;
    Op *op = xmalloc(sizeof *op);
    *op = (Op){.kind = OP_WAIT, .what = "cuStreamWaitEvent", .event = e, .seq = e->capture_seq};
    capture_op(s, op);
    return CUDA_SUCCESS;
  }
  if (e->capture)
    return VIOLATION(CUDA_ERROR_STREAM_CAPTURE_ISOLATION,
                     "cuStreamWaitEvent: the event was last recorded in a stream capture%s",
                     e->capture == capturing ? ", the stream is the legacy one"
                                             : " that has ended");
  if (!is_legacy(s) && s->capture)
    return capture_violation("cuStreamWaitEvent for an event recorded outside the capture");
  if (!e->recorded)  // CUDA: waiting for a never-recorded event waits for nothing
    return fake_cuda_stream_context(s) ? CUDA_SUCCESS
                                       : VIOLATION(CUDA_ERROR_INVALID_HANDLE,
                                                   "cuStreamWaitEvent: bad stream %p", (void *)s);
  // The wait is for the record last called, not for a later one: capture it now.
  Op *op = xmalloc(sizeof *op);
  *op = (Op){.kind = OP_WAIT, .what = "cuStreamWaitEvent", .event = e, .seq = e->recorded};
  return enqueue(s, op);
}

CUresult cuEventSynchronize(CUevent e) {
  NEED_EVENT(e);
  NOT_WHILE_CAPTURING("cuEventSynchronize");
  drain_event(e, e->recorded);
  return fake.sticky;
}

// Drains instead of answering CUDA_ERROR_NOT_READY: a polling caller then sees the work
// done at its first query, which is one of the schedules a GPU may produce.
CUresult cuEventQuery(CUevent e) {
  NEED_EVENT(e);
  NOT_WHILE_CAPTURING("cuEventQuery");
  drain_event(e, e->recorded);
  return fake.sticky;
}

static double ms_between(struct timespec a, struct timespec b) {
  return (double)(b.tv_sec - a.tv_sec) * 1e3 + (double)(b.tv_nsec - a.tv_nsec) / 1e6;
}

CUresult cuEventElapsedTime(float *ms, CUevent start, CUevent end) {
  NEED_EVENT(start);
  NEED_EVENT(end);
  NOT_WHILE_CAPTURING("cuEventElapsedTime");
  if (!ms)
    return CUDA_ERROR_INVALID_VALUE;
  if ((start->flags | end->flags) & CU_EVENT_DISABLE_TIMING)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE,
                     "cuEventElapsedTime: an event created with CU_EVENT_DISABLE_TIMING");
  if (!start->recorded || !end->recorded)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: an event never recorded");
  drain_event(start, start->recorded);
  drain_event(end, end->recorded);
  if (fake.sticky)
    return fake.sticky;
  *ms = (float)ms_between(start->rec[start->recorded - 1].when, end->rec[end->recorded - 1].when);
  return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- stream capture, graphs

CUresult cuStreamBeginCapture(CUstream s, CUstreamCaptureMode mode) {
  NEED_CONTEXT(c);
  CUresult rc = check_stream("cuStreamBeginCapture", s, c);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (is_legacy(s))
    return VIOLATION(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
                     "cuStreamBeginCapture: the legacy stream cannot be captured");
  if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
      mode != CU_STREAM_CAPTURE_MODE_RELAXED)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuStreamBeginCapture: mode %d", (int)mode);
  if (capturing)  // several captures at once are legal in CUDA; the runtime never needs it
    return VIOLATION(CUDA_ERROR_NOT_SUPPORTED,
                     "cuStreamBeginCapture: a capture is already in progress (not emulated)");
  CUgraph g = xmalloc(sizeof *g);
  *g = (struct CUgraph_st){.c = {.origin = s}};
  capturing = &g->c;
  s->capture = capturing;
  return CUDA_SUCCESS;
}

static void free_ops(Op *op) {
  while (op) {
    Op *next = op->next;
    free(op->arg);
    free(op);
    op = next;
  }
}

static void free_graph_if_unused(CUgraph g) {
  if (!g->c.destroyed || g->c.execs)
    return;
  for (int i = 0; i < fake.n_events; i++)  // last recorded in it: now never recorded
    if (fake.events[i]->capture == &g->c)
      fake.events[i]->capture = NULL;
  free_ops(g->c.head);
  free(g);
}

// Every stream that joined the capture must be joined back: its last operation a
// record that the origin then waits for.
static bool all_joined(const Capture *c) {
  for (const Op *op = c->head; op; op = op->next) {
    if (op->on == c->origin)
      continue;
    const Op *last = op;
    for (const Op *o = op->next; o; o = o->next)
      if (o->on == op->on)
        last = o;
    bool joined = false;
    for (const Op *o = last->next; o && last->kind == OP_RECORD; o = o->next)
      joined |= o->on == c->origin && o->kind == OP_WAIT && o->seq == last->seq;
    if (!joined) {
      fake_cuda_violation("cuStreamEndCapture: stream %d joined the capture and was not "
                          "joined back (its last work, '%s', is not waited for by the origin)",
                          op->on->id, last->what);
      return false;
    }
  }
  return true;
}

CUresult cuStreamEndCapture(CUstream s, CUgraph *graph) {
  NEED_INIT();
  if (!graph || is_legacy(s) || stream_index(s) < 0)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuStreamEndCapture: bad arguments");
  if (!capturing || capturing->origin != s)
    return VIOLATION(CUDA_ERROR_ILLEGAL_STATE,
                     "cuStreamEndCapture: stream %d did not begin a capture", s->id);
  Capture *c = capturing;
  capturing = NULL;
  for (int i = 0; i < fake.n_streams; i++)
    if (fake.streams[i]->capture == c)
      fake.streams[i]->capture = NULL;
  CUgraph g = (CUgraph)((char *)c - offsetof(struct CUgraph_st, c));
  *graph = NULL;
  if (c->invalid || !all_joined(c)) {
    g->c.destroyed = true;
    free_graph_if_unused(g);
    return c->invalid ? CUDA_ERROR_STREAM_CAPTURE_INVALIDATED : CUDA_ERROR_STREAM_CAPTURE_UNJOINED;
  }
  *graph = g;
  return CUDA_SUCCESS;
}

CUresult cuGraphDestroy(CUgraph g) {
  NEED_INIT();
  if (!g || g->c.destroyed)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuGraphDestroy: not a live graph");
  g->c.destroyed = true;
  free_graph_if_unused(g);
  return CUDA_SUCCESS;
}

// An instantiated graph: the captured operations, run at each launch on streams of its
// own (mirror[k] for the k-th distinct captured stream) with events of its own
// (record[i - 1] for captured record i), so a launch is ordered only through the
// launching stream, as on a GPU.
struct CUgraphExec_st {
  CUgraph g;
  int n_mirrors;
  CUstream captured[64], mirror[64];
  CUevent done[64];  // each mirror's end, which the launching stream waits for
  CUevent start;
  CUevent *record;
};

static int mirror_of(CUgraphExec e, CUstream s) {
  for (int k = 0; k < e->n_mirrors; k++)
    if (e->captured[k] == s)
      return k;
  return -1;
}

static CUresult make_mirror_stream(CUcontext ctx, CUstream *out) {
  CUcontext saved = current;
  current = ctx;
  CUresult rc = cuStreamCreate(out, CU_STREAM_NON_BLOCKING);
  current = saved;
  return rc;
}

static CUresult make_event(CUcontext ctx, CUevent *out) {
  CUcontext saved = current;
  current = ctx;
  CUresult rc = cuEventCreate(out, CU_EVENT_DISABLE_TIMING);
  current = saved;
  return rc;
}

CUresult cuGraphExecDestroy(CUgraphExec e);

CUresult cuGraphInstantiate(CUgraphExec *out, CUgraph g, unsigned long long flags) {
  NEED_INIT();
  NOT_WHILE_CAPTURING("cuGraphInstantiate");
  if (!out || !g || g->c.destroyed || flags)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuGraphInstantiate: bad arguments");
  CUgraphExec e = xmalloc(sizeof *e);
  *e = (struct CUgraphExec_st){.g = g};
  g->c.execs++;
  e->record = xmalloc(sizeof(CUevent) * (size_t)(g->c.records + 1));
  memset(e->record, 0, sizeof(CUevent) * (size_t)(g->c.records + 1));
  CUresult rc = make_event(g->c.origin->ctx, &e->start);
  for (const Op *op = g->c.head; op && rc == CUDA_SUCCESS; op = op->next) {
    if (mirror_of(e, op->on) < 0) {
      if (e->n_mirrors == 64) {
        rc = VIOLATION(CUDA_ERROR_NOT_SUPPORTED, "cuGraphInstantiate: over 64 streams");
        break;
      }
      int k = e->n_mirrors++;
      e->captured[k] = op->on;
      if ((rc = make_mirror_stream(op->on->ctx, &e->mirror[k])) == CUDA_SUCCESS)
        rc = make_event(op->on->ctx, &e->done[k]);
    }
    if (rc == CUDA_SUCCESS && op->kind == OP_RECORD)
      rc = make_event(op->on->ctx, &e->record[op->seq - 1]);
  }
  if (rc != CUDA_SUCCESS) {
    cuGraphExecDestroy(e);
    return rc;
  }
  *out = e;
  return CUDA_SUCCESS;
}

CUresult cuGraphExecDestroy(CUgraphExec e) {
  NEED_INIT();
  NOT_WHILE_CAPTURING("cuGraphExecDestroy");
  if (!e)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuGraphExecDestroy: NULL");
  fake_cuda_drain_all();  // a GPU finishes a launched graph first
  for (uint64_t i = 0; i < e->g->c.records; i++)
    if (e->record[i])
      cuEventDestroy(e->record[i]);
  for (int k = 0; k < e->n_mirrors; k++) {
    if (e->mirror[k])
      cuStreamDestroy(e->mirror[k]);
    if (e->done[k])
      cuEventDestroy(e->done[k]);
  }
  if (e->start)
    cuEventDestroy(e->start);
  free(e->record);
  e->g->c.execs--;
  free_graph_if_unused(e->g);
  free(e);
  return fake.sticky;
}

// The launching stream's earlier work, then every captured operation on its mirror in
// capture order (the work itself borrowed from the graph), then the launching stream's
// later work.
CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
  NEED_CONTEXT(c);
  NOT_WHILE_CAPTURING("cuGraphLaunch");  // legal in CUDA (a child graph); not needed here
  CUresult rc = check_stream("cuGraphLaunch", s, c);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (!e)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuGraphLaunch: NULL graph");
  CUcontext saved = current;
  current = fake_cuda_stream_context(s);
  rc = cuEventRecord(e->start, s);
  for (int k = 0; k < e->n_mirrors && rc == CUDA_SUCCESS; k++) {
    current = e->mirror[k]->ctx;
    rc = cuStreamWaitEvent(e->mirror[k], e->start, 0);
  }
  for (const Op *op = e->g->c.head; op && rc == CUDA_SUCCESS; op = op->next) {
    CUstream m = e->mirror[mirror_of(e, op->on)];
    current = m->ctx;
    if (op->kind == OP_RECORD) {
      rc = cuEventRecord(e->record[op->seq - 1], m);
    } else if (op->kind == OP_WAIT) {
      rc = cuStreamWaitEvent(m, e->record[op->seq - 1], 0);
    } else {
      Op *run = xmalloc(sizeof *run);
      *run = (Op){.kind = OP_WORK, .what = op->what, .run = op->run, .arg = op->arg,
                  .borrowed = true};
      rc = enqueue(m, run);
    }
  }
  for (int k = 0; k < e->n_mirrors && rc == CUDA_SUCCESS; k++) {
    current = e->mirror[k]->ctx;
    rc = cuEventRecord(e->done[k], e->mirror[k]);
    current = fake_cuda_stream_context(s);
    if (rc == CUDA_SUCCESS)
      rc = cuStreamWaitEvent(s, e->done[k], 0);
  }
  current = saved;
  return rc;
}

// ---------------------------------------------------------------- copies and memset

// A strided copy between host addresses (device memory is host memory here): `depth`
// slices of `height` rows of `width` bytes.
typedef struct {
  char *dst;
  const char *src;
  size_t width, height, depth, dst_pitch, src_pitch, dst_slice, src_slice;
} Copy;

static void run_copy(void *arg) {
  const Copy *c = arg;
  for (size_t z = 0; z < c->depth; z++)
    for (size_t y = 0; y < c->height; y++)
      memcpy(c->dst + z * c->dst_slice + y * c->dst_pitch,
             c->src + z * c->src_slice + y * c->src_pitch, c->width);
}

// One side of a copy: its address, and where it must lie (a device, or -1: the host).
typedef struct {
  uintptr_t p;
  int device;
} End;

// Resolves a copy's side from its memory type; device pointers must be memory of
// `device` (the context the copy names or runs in). Unified addresses are looked up.
static CUresult copy_end(const char *what, const char *side, CUmemorytype type, const void *host,
                         CUdeviceptr dev, int device, size_t offset, End *out) {
  switch (type) {
  case CU_MEMORYTYPE_HOST: *out = (End){(uintptr_t)host + offset, -1}; return CUDA_SUCCESS;
  case CU_MEMORYTYPE_DEVICE: *out = (End){(uintptr_t)dev + offset, device}; return CUDA_SUCCESS;
  case CU_MEMORYTYPE_UNIFIED: {
    const Alloc *a = find_alloc((uintptr_t)dev);
    *out = (End){(uintptr_t)dev + offset, a ? a->device : -1};
    return CUDA_SUCCESS;
  }
  default:
    return VIOLATION(CUDA_ERROR_NOT_SUPPORTED, "%s: %s memory type %d is not emulated", what, side,
                     (int)type);
  }
}

static bool check_end(const char *what, End e, size_t bytes) {
  return e.device < 0 ? check_host(what, (const void *)e.p, bytes)
                      : fake_cuda_check_range(what, e.device, (CUdeviceptr)e.p, bytes);
}

// Checks a copy's geometry and both ranges; on success *out is ready to run.
static CUresult make_copy(const char *what, End dst, End src, size_t width, size_t height,
                          size_t depth, size_t dst_pitch, size_t src_pitch, size_t dst_height,
                          size_t src_height, Copy *out) {
  if (!width || !height || !depth) {
    *out = (Copy){0};
    return CUDA_SUCCESS;
  }
  // CUDA: "any pitches must be greater than or equal to WidthInBytes", one row or not.
  if (dst_pitch < width || src_pitch < width)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE,
                     "%s: WidthInBytes %zu is more than a pitch (dstPitch %zu, srcPitch %zu): "
                     "CUDA requires pitches >= WidthInBytes, even for one row",
                     what, width, dst_pitch, src_pitch);
  if (depth > 1 && (dst_height < height || src_height < height))
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "%s: Height %zu is more than a slice's", what,
                     height);
  *out = (Copy){
      (char *)dst.p,          (const char *)src.p,   width, height, depth, dst_pitch, src_pitch,
      dst_pitch * dst_height, src_pitch * src_height};
  size_t dst_bytes = (depth - 1) * out->dst_slice + (height - 1) * dst_pitch + width,
         src_bytes = (depth - 1) * out->src_slice + (height - 1) * src_pitch + width;
  char side[160];
  snprintf(side, sizeof side, "%s destination", what);
  if (!check_end(side, dst, dst_bytes))
    return CUDA_ERROR_ILLEGAL_ADDRESS;
  snprintf(side, sizeof side, "%s source", what);
  if (!check_end(side, src, src_bytes))
    return CUDA_ERROR_ILLEGAL_ADDRESS;
  return CUDA_SUCCESS;
}

static CUresult queue_copy(CUstream s, const char *what, const Copy *c, bool host) {
  if (host && !is_legacy(s) && stream_index(s) >= 0 && s->capture)
    return capture_violation("a copy to or from host memory");
  if (!c->width)
    return CUDA_SUCCESS;
  Copy *arg = xmalloc(sizeof *arg);
  *arg = *c;
  return fake_cuda_enqueue(s, what, run_copy, arg);
}

// cuMemcpy2D(Async): device sides are memory of the stream's (or current) context's
// device; a copy between GPUs is cuMemcpy3DPeer's job.
static CUresult memcpy_2d(const char *what, const CUDA_MEMCPY2D *p, CUstream s) {
  NEED_CONTEXT(cur);
  if (!p)
    return CUDA_ERROR_INVALID_VALUE;
  CUresult rc = check_stream(what, s, cur);
  if (rc != CUDA_SUCCESS)
    return rc;
  End dst, src;
  Copy c;
  if ((rc = copy_end(what, "destination", p->dstMemoryType, p->dstHost, p->dstDevice, cur->device,
                     p->dstY * p->dstPitch + p->dstXInBytes, &dst)) != CUDA_SUCCESS ||
      (rc = copy_end(what, "source", p->srcMemoryType, p->srcHost, p->srcDevice, cur->device,
                     p->srcY * p->srcPitch + p->srcXInBytes, &src)) != CUDA_SUCCESS ||
      (rc = make_copy(what, dst, src, p->WidthInBytes, p->Height, 1, p->dstPitch, p->srcPitch, 0, 0,
                      &c)) != CUDA_SUCCESS)
    return rc;
  return queue_copy(s, what, &c, dst.device < 0 || src.device < 0);
}

CUresult cuMemcpy2D(const CUDA_MEMCPY2D *p) { return memcpy_2d("cuMemcpy2D", p, NULL); }

CUresult cuMemcpy2DAsync(const CUDA_MEMCPY2D *p, CUstream s) {
  return memcpy_2d("cuMemcpy2DAsync", p, s);
}

static CUresult memcpy_peer(const char *what, const CUDA_MEMCPY3D_PEER *p, CUstream s) {
  NEED_INIT();
  if (!p)
    return CUDA_ERROR_INVALID_VALUE;
  if ((p->srcMemoryType == CU_MEMORYTYPE_DEVICE && !live_context(p->srcContext)) ||
      (p->dstMemoryType == CU_MEMORYTYPE_DEVICE && !live_context(p->dstContext)))
    return VIOLATION(CUDA_ERROR_INVALID_CONTEXT, "%s: srcContext or dstContext is not a context",
                     what);
  if (!fake_cuda_stream_context(s))
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "%s: bad stream %p (or no current context)", what,
                     (void *)s);
  if (p->srcLOD || p->dstLOD)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "%s: LOD must be 0", what);
  size_t dst_at = (p->dstZ * p->dstHeight + p->dstY) * p->dstPitch + p->dstXInBytes,
         src_at = (p->srcZ * p->srcHeight + p->srcY) * p->srcPitch + p->srcXInBytes;
  End dst, src;
  Copy c;
  CUresult rc;
  if ((rc = copy_end(what, "destination", p->dstMemoryType, p->dstHost, p->dstDevice,
                     fake_cuda_context_device(p->dstContext), dst_at, &dst)) != CUDA_SUCCESS ||
      (rc = copy_end(what, "source", p->srcMemoryType, p->srcHost, p->srcDevice,
                     fake_cuda_context_device(p->srcContext), src_at, &src)) != CUDA_SUCCESS ||
      (rc = make_copy(what, dst, src, p->WidthInBytes, p->Height, p->Depth, p->dstPitch,
                      p->srcPitch, p->dstHeight, p->srcHeight, &c)) != CUDA_SUCCESS)
    return rc;
  if (is_legacy(s)) {  // synchronous: both contexts' legacy streams take part
    if (live_context(p->srcContext))
      drain_context(p->srcContext, true);
    if (live_context(p->dstContext))
      drain_context(p->dstContext, true);
  }
  return queue_copy(s, what, &c, false);
}

CUresult cuMemcpy3DPeer(const CUDA_MEMCPY3D_PEER *p) {
  return memcpy_peer("cuMemcpy3DPeer", p, NULL);
}

CUresult cuMemcpy3DPeerAsync(const CUDA_MEMCPY3D_PEER *p, CUstream s) {
  return memcpy_peer("cuMemcpy3DPeerAsync", p, s);
}

CUresult cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t bytes) {
  CUDA_MEMCPY2D c = {.srcMemoryType = CU_MEMORYTYPE_HOST,
                     .srcHost = src,
                     .srcPitch = bytes,
                     .dstMemoryType = CU_MEMORYTYPE_DEVICE,
                     .dstDevice = dst,
                     .dstPitch = bytes,
                     .WidthInBytes = bytes,
                     .Height = 1};
  return memcpy_2d("cuMemcpyHtoD", &c, NULL);
}

CUresult cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t bytes) {
  CUDA_MEMCPY2D c = {.srcMemoryType = CU_MEMORYTYPE_DEVICE,
                     .srcDevice = src,
                     .srcPitch = bytes,
                     .dstMemoryType = CU_MEMORYTYPE_HOST,
                     .dstHost = dst,
                     .dstPitch = bytes,
                     .WidthInBytes = bytes,
                     .Height = 1};
  return memcpy_2d("cuMemcpyDtoH", &c, NULL);
}

typedef struct {
  uint32_t *dst;
  uint32_t value;
  size_t n;
} Memset;

static void run_memset(void *arg) {
  const Memset *m = arg;
  for (size_t i = 0; i < m->n; i++)
    m->dst[i] = m->value;
}

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int value, size_t n, CUstream s) {
  NEED_CONTEXT(c);
  CUresult rc = check_stream("cuMemsetD32Async", s, c);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (dst % 4)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuMemsetD32Async: %#llx is not 4-byte aligned",
                     (unsigned long long)dst);
  if (!fake_cuda_check_range("cuMemsetD32Async", c->device, dst, n * 4))
    return CUDA_ERROR_ILLEGAL_ADDRESS;
  if (!n)
    return CUDA_SUCCESS;
  Memset *m = xmalloc(sizeof *m);
  *m = (Memset){(uint32_t *)(uintptr_t)dst, value, n};
  return fake_cuda_enqueue(s, "cuMemsetD32Async", run_memset, m);
}

// ---------------------------------------------------------------- modules

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

// The size of a module image given only its address: an ELF (CUBIN) ends with the last
// of its header tables and section contents; anything else is PTX text, NUL included.
static size_t image_size(const void *image) {
  const unsigned char *p = image;
  if (memcmp(p, ELFMAG, SELFMAG) || p[EI_CLASS] != ELFCLASS64)
    return strlen(image) + 1;
  Elf64_Ehdr h;
  memcpy(&h, p, sizeof h);
  size_t end = max_size(sizeof h, max_size(h.e_shoff + (size_t)h.e_shnum * h.e_shentsize,
                                           h.e_phoff + (size_t)h.e_phnum * h.e_phentsize));
  for (int i = 0; i < h.e_shnum; i++) {
    Elf64_Shdr s;
    memcpy(&s, p + h.e_shoff + (size_t)i * h.e_shentsize, sizeof s);
    if (s.sh_type != SHT_NOBITS)
      end = max_size(end, s.sh_offset + s.sh_size);
  }
  for (int i = 0; i < h.e_phnum; i++) {
    Elf64_Phdr ph;
    memcpy(&ph, p + h.e_phoff + (size_t)i * h.e_phentsize, sizeof ph);
    end = max_size(end, ph.p_offset + ph.p_filesz);
  }
  return end;
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (int ch; (ch = fgetc(f)) != EOF;) {
    if (n + 1 >= cap) {
      cap = cap ? cap * 2 : 65536;
      char *b = realloc(buf, cap);
      if (!b)
        abort();
      buf = b;
    }
    buf[n++] = (char)ch;
  }
  fclose(f);
  if (!buf)
    buf = xmalloc(1);
  buf[n] = 0;
  return buf;
}

// A module not built yet: the NVRTC cache ($ALEXC_FAKE_CUDA_CACHE, alexc's
// $ALEXC_CACHE) keeps each CUBIN and PTX beside the source it came from (KEY.cubin,
// KEY.ptx, KEY.cu). Find the entry whose CUBIN or PTX is this image and build its source
// for the CPU into the modules directory as <hash>.so and <hash>.cu
// ($ALEXC_FAKE_CUDA_CXX, default g++, with $ALEXC_FAKE_CUDA_EMU, the path of
// tests/cuda/cuda_emu.h). True if it did.
static bool same_file_bytes(const char *path, const void *image, size_t size) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return false;
  bool same = fseek(f, 0, SEEK_END) == 0 && (size_t)ftell(f) == size;
  if (same) {
    rewind(f);
    char *buf = xmalloc(size ? size : 1);
    same = fread(buf, 1, size, f) == size && memcmp(buf, image, size) == 0;
    free(buf);
  }
  fclose(f);
  return same;
}

static bool build_from_cache(const void *image, size_t size, const char *so, const char *cu) {
  const char *cache = getenv("ALEXC_FAKE_CUDA_CACHE"), *emu = getenv("ALEXC_FAKE_CUDA_EMU");
  const char *cxx = getenv("ALEXC_FAKE_CUDA_CXX");
  if (!cache || !*cache || !emu || !*emu)
    return false;
  char source[4096];
  DIR *dir = opendir(cache);
  if (!dir)
    return false;
  bool found = false;
  for (struct dirent *e; !found && (e = readdir(dir));) {
    size_t n = strlen(e->d_name);
    bool cubin = n > 6 && !strcmp(e->d_name + n - 6, ".cubin");
    bool ptx = n > 4 && !strcmp(e->d_name + n - 4, ".ptx");
    if (!cubin && !ptx)
      continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", cache, e->d_name);
    if (!same_file_bytes(path, image, size))
      continue;
    snprintf(source, sizeof source, "%s/%.*s.cu", cache, (int)(n - (cubin ? 6 : 4)), e->d_name);
    found = access(source, R_OK) == 0;
  }
  closedir(dir);
  if (!found || (mkdir(fake.modules, 0755) != 0 && errno != EEXIST))
    return false;
  // Temporaries named by this process's pid, renamed once whole.
  char *tmp_so, *build, *cmd;
  int pid = (int)getpid();
  if (asprintf(&tmp_so, "%s.tmp.%d", so, pid) < 0 ||
      !(build = emu_build_command(cxx && *cxx ? cxx : "g++", "-O1", emu, source, tmp_so)) ||
      asprintf(&cmd, "cp '%s' '%s.tmp.%d' && mv '%s.tmp.%d' '%s' && %s && mv '%s' '%s'", source,
               cu, pid, cu, pid, cu, build, tmp_so, so) < 0)
    out_of_memory();
  free(tmp_so);
  free(build);
  if (fake.verbose)
    fprintf(stderr, "fake cuda: building %s from the NVRTC cache's %s\n", so, source);
  bool ok = system(cmd) == 0;
  free(cmd);
  return ok;
}

CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  NEED_CONTEXT(c);
  if (!module || !image)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuModuleLoadData: NULL argument");
  if (!fake.modules)
    return soft_fail(CUDA_ERROR_INVALID_IMAGE,
                     "cuModuleLoadData: ALEXC_FAKE_CUDA_MODULES is not set: no CPU kernels");
  char hash[17], so_path[4096], cu_path[4096];
  snprintf(hash, sizeof hash, "%016" PRIx64, fake_module_hash(image, image_size(image)));
  snprintf(so_path, sizeof so_path, "%s/%s.so", fake.modules, hash);
  snprintf(cu_path, sizeof cu_path, "%s/%s.cu", fake.modules, hash);
  if (access(so_path, R_OK) != 0)
    build_from_cache(image, image_size(image), so_path, cu_path);
  char *source = read_text(cu_path);
  void *so = source ? dlopen(so_path, RTLD_NOW | RTLD_LOCAL) : NULL;
  void *run_block = so ? dlsym(so, "alexc_emu_run_block") : NULL;
  void *current_thread = so ? dlsym(so, "alexc_emu_current_thread") : NULL;
  void *dynamic_shared = so ? dlsym(so, "alexc_emu_dynamic_shared") : NULL;
  if (!run_block || !current_thread || !dynamic_shared) {
    const char *why = !source ? "no .cu" : !so ? dlerror() : "no alexc_emu_run_block";
    if (so)
      dlclose(so);
    free(source);
    return soft_fail(
        CUDA_ERROR_INVALID_IMAGE,
        "cuModuleLoadData: no CPU build of module %s in %s (%s): is it in "
        "$ALEXC_FAKE_CUDA_CACHE, with $ALEXC_FAKE_CUDA_EMU set?", hash,
        fake.modules, why);
  }
  CUmodule m = xmalloc(sizeof *m);
  *m = (struct CUmod_st){.ctx = c, .so = so, .source = source};
  memcpy(&m->run_block, &run_block, sizeof run_block);
  memcpy(&m->current_thread, &current_thread, sizeof current_thread);
  memcpy(&m->dynamic_shared, &dynamic_shared, sizeof dynamic_shared);
  memcpy(m->hash, hash, sizeof hash);
  reserve(&fake.mods, &fake.cap_mods, fake.n_mods + 1, sizeof *fake.mods);
  fake.mods[fake.n_mods++] = m;
  if (fake.verbose)
    fprintf(stderr, "fake cuda: device %d: module %s loaded from %s\n", c->device, hash, so_path);
  *module = m;
  return CUDA_SUCCESS;
}

static int module_index(CUmodule m) {
  for (int i = 0; i < fake.n_mods; i++)
    if (fake.mods[i] == m)
      return i;
  return -1;
}

CUresult cuModuleUnload(CUmodule m) {
  NEED_INIT();
  int i = module_index(m);
  if (i < 0)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: %p is not a loaded module",
                     (void *)m);
  fake_cuda_drain_all();  // queued launches still need its kernels
  while (m->funcs) {
    struct CUfunc_st *f = m->funcs;
    m->funcs = f->next;
    free(f);
  }
  dlclose(m->so);
  free(m->source);
  free(m);
  fake.mods[i] = fake.mods[--fake.n_mods];
  return fake.sticky;
}

// Counts kernel NAME's parameters in the module's source: `void NAME(` up to the closing
// parenthesis, split at top-level commas. Generated kernels take buffers, then `int
// batch`: the result is the number of pointers, or -1 for any other signature.
static int pointer_params(const char *source, const char *name) {
  char pattern[160];
  snprintf(pattern, sizeof pattern, "void %s(", name);
  const char *s = strstr(source, pattern);
  if (!s)
    return -1;
  s += strlen(pattern);
  int depth = 0, pointers = 0;
  bool star = false, last_int = false;
  for (const char *param = s;; s++) {
    if (!*s)
      return -1;
    if (*s == '(')
      depth++;
    else if (*s == '*' && !depth)
      star = true;
    else if ((*s == ',' || *s == ')') && !depth) {
      const char *t = param;
      while (*t == ' ' || *t == '\n' || *t == '\t')
        t++;
      last_int = !star && !strncmp(t, "int ", 4);
      if (*s == ')')
        break;
      if (!star)  // only the last parameter may be something other than a pointer
        return -1;
      pointers++;
      star = false;
      param = s + 1;
    } else if (*s == ')')
      depth--;
  }
  return last_int && pointers <= MAX_PTR_ARGS ? pointers : -1;
}

CUresult cuModuleGetFunction(CUfunction *pf, CUmodule m, const char *name) {
  NEED_INIT();
  if (!pf || !name)
    return CUDA_ERROR_INVALID_VALUE;
  if (module_index(m) < 0)
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction: %p is not a loaded module",
                     (void *)m);
  for (struct CUfunc_st *f = m->funcs; f; f = f->next)
    if (!strcmp(f->name, name)) {
      *pf = f;
      return CUDA_SUCCESS;
    }
  void *fn = dlsym(m->so, name);
  if (!fn || strlen(name) >= sizeof m->funcs->name)
    return VIOLATION(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: module %s has no kernel '%s'",
                     m->hash, name);
  int n_ptr = pointer_params(m->source, name);
  if (n_ptr < 0)
    return VIOLATION(CUDA_ERROR_NOT_SUPPORTED,
                     "cuModuleGetFunction: kernel '%s' of module %s: only (pointers..., int) "
                     "kernels with up to %d pointers are emulated",
                     name, m->hash, MAX_PTR_ARGS);
  struct CUfunc_st *f = xmalloc(sizeof *f);
  *f = (struct CUfunc_st){
      .mod = m, .fn = fn, .n_ptr = n_ptr, .max_dynamic_smem = FAKE_SMEM_DEFAULT, .next = m->funcs};
  snprintf(f->name, sizeof f->name, "%s", name);
  m->funcs = f;
  *pf = f;
  return CUDA_SUCCESS;
}

// ---------------------------------------------------------------- launches

static bool live_function(CUfunction f) {
  for (int i = 0; i < fake.n_mods; i++)
    for (struct CUfunc_st *g = fake.mods[i]->funcs; g; g = g->next)
      if (g == f)
        return true;
  return false;
}

CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute attrib, int value) {
  NEED_INIT();
  if (!live_function(f))
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE,
                     "cuFuncSetAttribute: %p is not a kernel of a loaded module", (void *)f);
  if (attrib != CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)
    return soft_fail(CUDA_ERROR_NOT_SUPPORTED, "cuFuncSetAttribute %s: attribute %d is not emulated",
                     f->name, (int)attrib);
  if (value < 0 || value > FAKE_SMEM_OPTIN)
    return soft_fail(CUDA_ERROR_INVALID_VALUE,
                     "cuFuncSetAttribute %s: MAX_DYNAMIC_SHARED_SIZE_BYTES %d, this GPU allows "
                     "at most %d", f->name, value, FAKE_SMEM_OPTIN);
  f->max_dynamic_smem = value;
  return CUDA_SUCCESS;
}

typedef struct {
  CUfunction f;
  unsigned grid, block;
  unsigned smem;  // dynamic shared memory per block
  void *ptr[MAX_PTR_ARGS];
  int batch;
} Launch;

// Calls kernel fn(a[0], ..., a[n - 1], batch) through the prototype it has: Tn is n
// pointer parameters, An the n arguments.
#define T1 void *
#define T2 T1, void *
#define T3 T2, void *
#define T4 T3, void *
#define T5 T4, void *
#define T6 T5, void *
#define T7 T6, void *
#define T8 T7, void *
#define T9 T8, void *
#define T10 T9, void *
#define T11 T10, void *
#define T12 T11, void *
#define T13 T12, void *
#define T14 T13, void *
#define T15 T14, void *
#define T16 T15, void *
#define A1 a[0]
#define A2 A1, a[1]
#define A3 A2, a[2]
#define A4 A3, a[3]
#define A5 A4, a[4]
#define A6 A5, a[5]
#define A7 A6, a[6]
#define A8 A7, a[7]
#define A9 A8, a[8]
#define A10 A9, a[9]
#define A11 A10, a[10]
#define A12 A11, a[11]
#define A13 A12, a[12]
#define A14 A13, a[13]
#define A15 A14, a[14]
#define A16 A15, a[15]
#define CALL(n) \
  case n: ((void (*)(T##n, int))fn)(A##n, batch); break;

static void call_kernel(void *fn, int n, void *const *a, int batch) {
  switch (n) {
  case 0: ((void (*)(int))fn)(batch); break;
  CALL(1) CALL(2) CALL(3) CALL(4) CALL(5) CALL(6) CALL(7) CALL(8)
  CALL(9) CALL(10) CALL(11) CALL(12) CALL(13) CALL(14) CALL(15) CALL(16)
  }
}

// A kernel's memory fault (a guard page of map_alloc, or any address the process
// cannot touch) jumps back to run_launch, which reports it. Only a synchronous fault of
// the kernel's own thread lands here, so leaving the handler by siglongjmp is safe.
static sigjmp_buf fault_jump;
static void *volatile fault_address;

static void on_fault(int sig, siginfo_t *info, void *context) {
  (void)sig;
  (void)context;
  fault_address = info->si_addr;
  siglongjmp(fault_jump, 1);
}

// Names the allocation whose guard pages hold p, for the message.
static void describe_fault(char *buf, size_t size, uintptr_t p) {
  for (int i = 0; i < fake.n_allocs; i++) {
    const Alloc *a = &fake.allocs[i];
    if (p >= (uintptr_t)a->map && p < (uintptr_t)a->map + a->map_size) {
      bool after = p >= a->base + a->size;
      snprintf(buf, size, "%zu bytes %s the allocation of %zu bytes at %#lx on device %d",
               after ? (size_t)(p - (a->base + a->size)) : (size_t)(a->base - p),
               after ? "past the end of" : "before", a->size, (unsigned long)a->base, a->device);
      return;
    }
  }
  snprintf(buf, size, "not near any allocation");
}

static void launch_thread(void *arg) {
  const Launch *l = arg;
  call_kernel(l->f->fn, l->f->n_ptr, l->ptr, l->batch);
}

// Every block, one after another, its threads run by cuda_emu.h's alexc_emu_run_block
// (one after another too, as fibers switching at __syncthreads()). A fault is the GPU's
// illegal address: reported, and sticky (every later call fails, as the context is
// lost); so is a block whose threads disagree about barriers.
static void run_launch(void *arg) {
  const Launch *l = arg;
  struct sigaction fault = {.sa_sigaction = on_fault, .sa_flags = SA_SIGINFO | SA_NODEFER}, segv,
                   bus;
  sigemptyset(&fault.sa_mask);
  sigaction(SIGSEGV, &fault, &segv);
  sigaction(SIGBUS, &fault, &bus);
  volatile unsigned b = 0;
  unsigned t = 0;
  if (l->f->mod->dynamic_shared(l->smem) != 0) {
    fake_cuda_violation("kernel %s: %u bytes of dynamic shared memory", l->f->name, l->smem);
    fake.sticky = CUDA_ERROR_LAUNCH_FAILED;
  } else if (sigsetjmp(fault_jump, 1) == 0) {
    for (b = 0; b < l->grid; b++)
      if (l->f->mod->run_block(b, l->block, l->grid, launch_thread, (void *)l) != 0) {
        fake_cuda_violation("kernel %s (device %d, block %u): its threads disagree about "
                            "__syncthreads(), or it wrote past its dynamic shared memory",
                            l->f->name, l->f->mod->ctx->device, b);
        fake.sticky = CUDA_ERROR_LAUNCH_FAILED;
        break;
      }
  } else {
    // The faulting fiber's stack is left mapped: the context is lost from here on.
    t = l->f->mod->current_thread();
    char where[200];
    describe_fault(where, sizeof where, (uintptr_t)fault_address);
    fake_cuda_violation("kernel %s (device %d, block %u, thread %u) accessed %p: %s", l->f->name,
                        l->f->mod->ctx->device, b, t, fault_address, where);
    fake.sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
  }
  sigaction(SIGSEGV, &segv, NULL);
  sigaction(SIGBUS, &bus, NULL);
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                        unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                        CUstream s, void **params, void **extra) {
  NEED_CONTEXT(c);
  if (!live_function(f))
    return VIOLATION(CUDA_ERROR_INVALID_HANDLE,
                     "cuLaunchKernel: %p is not a kernel of a loaded "
                     "module",
                     (void *)f);
  if (f->mod->ctx != c)
    return VIOLATION(
        CUDA_ERROR_INVALID_CONTEXT,
        "cuLaunchKernel %s: its module is device %d's, the current context device %d's", f->name,
        f->mod->ctx->device, c->device);
  CUresult rc = check_stream(f->name, s, c);
  if (rc != CUDA_SUCCESS)
    return rc;
  if (gy != 1 || gz != 1 || by != 1 || bz != 1 || extra)
    return VIOLATION(CUDA_ERROR_NOT_SUPPORTED,
                     "cuLaunchKernel %s: only 1D grids and blocks and no 'extra' are emulated",
                     f->name);
  if (shmem > (unsigned)f->max_dynamic_smem)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE,
                     "cuLaunchKernel %s: %u bytes of dynamic shared memory, more than its "
                     "MAX_DYNAMIC_SHARED_SIZE_BYTES (%d; cuFuncSetAttribute raises it)",
                     f->name, shmem, f->max_dynamic_smem);
  if (!gx || !bx || bx > 1024 || gx > INT32_MAX || !params)
    return VIOLATION(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel %s: grid %u, block %u%s", f->name,
                     gx, bx, params ? "" : ", no parameters");
  Launch *l = xmalloc(sizeof *l);
  *l = (Launch){.f = f, .grid = gx, .block = bx, .smem = shmem};
  // The parameters are copied now, as CUDA does: the caller may reuse its variables.
  for (int i = 0; i < f->n_ptr; i++) {
    CUdeviceptr p;
    memcpy(&p, params[i], sizeof p);
    char what[200];
    snprintf(what, sizeof what, "cuLaunchKernel %s argument %d", f->name, i);
    // One byte: the kernel addresses from there; no peer memory (the fake has no
    // peer access for kernels, and the runtime does not need it).
    if (!fake_cuda_check_range(what, c->device, p, 1)) {
      free(l);
      return CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    l->ptr[i] = (void *)(uintptr_t)p;
  }
  memcpy(&l->batch, params[f->n_ptr], sizeof l->batch);
  return fake_cuda_enqueue(s, f->name, run_launch, l);
}
