// alexrt_cuda.h — the CUDA part of the runtime: the compiled model's plan, its file
// format, the plan interpreter, and the driver-backed executor.
//
// A plan is what `alexc compile --target cuda` produces besides the kernels: per
// logical device, the activation arena (elements per image), the weight slices to
// upload, the scratch per image of a chunk, and the steps in order (kernel launches,
// cuBLAS GEMMs, chunk loops over the batch, transfers between devices), with every
// address given as an arena, scratch or weight-buffer offset. The
// interpreter (rt_plan_run) turns a plan into calls on an RtPlanOps table: the CUDA
// driver implements it (runtime/cuda.c), and so does the CPU emulator of the tests
// (tests/cuda/), so the address arithmetic a GPU will run is the one the tests check.
//
// Nothing here links against CUDA: runtime/cuda.c loads libcuda and libcublas with
// dlopen, so a binary built with the toolkit still starts (and says why it cannot
// run) on a machine without a GPU.
#ifndef ALEXRT_CUDA_H
#define ALEXRT_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RT_PLAN_MAX_DEVICES 8
#define RT_PLAN_MAX_ARGS 16  // buffer arguments of one kernel (a concat's inputs, output, w, b)
// Dynamic shared memory a plan's kernel step may ask for, in bytes: the most any GPU
// allows a block (227 KiB on sm_90 and sm_100) rounded up; the device checks its own.
#define RT_PLAN_MAX_SMEM (256 * 1024)
#define RT_PLAN_NAME 96

// An address in a device's memory: buffer `space`, element
// `per_image * batch + fixed + per_first * first`. Arena offsets scale with the batch
// (the memory plan is per image); weight offsets do not. Scratch holds one chunk of
// images (RT_STEP_CHUNK), so its offsets scale with the chunk's image count instead.
// `first` is the chunk's first image (0 outside a chunk): `per_first` is the element
// stride of one image of the tensor addressed, so a kernel inside a chunk sees the
// chunk's images as images 0.. of the tensor.
typedef enum { RT_SPACE_ARENA, RT_SPACE_WEIGHTS, RT_SPACE_SCRATCH } RtSpace;

// The arithmetic of the GEMMs (`--precision`); everything else is float32 always.
//   fp32  cublasSgemm in the default math mode: no TF32 (never used for Sgemm there)
//   tf32  float operands, multiplied on TF32 tensor cores (10-bit mantissa), float sums
//   bf16  bfloat16 operands (weights converted at upload, im2col columns and fc inputs
//         written as bfloat16), float sums and outputs
typedef enum { RT_FP32, RT_TF32, RT_BF16 } RtPrecision;

const char *rt_precision_name(RtPrecision p);
bool rt_parse_precision(const char *name, RtPrecision *out);

typedef struct {
  RtSpace space;
  int64_t per_image, fixed;
  int64_t per_first;
} RtAddr;

// A GEMM dimension or leading dimension: `per_image * batch + fixed`, where batch is
// the chunk's image count inside a chunk and the whole batch outside.
typedef struct {
  int64_t per_image, fixed;
} RtDim;

// A strided copy of `height = batch` rows of `width` elements: row r starts at
// addr + r * pitch. Used for transfers, the input upload and the output download.
typedef struct {
  RtAddr addr;
  int64_t pitch;  // elements
} RtRows;

typedef enum {
  RT_STEP_KERNEL, RT_STEP_GEMM, RT_STEP_TRANSFER, RT_STEP_CHUNK, RT_STEP_ALLREDUCE
} RtStepKind;

// What a GEMM step does to C after the product: nothing, or adds a bias per row of C
// (an fc layer's output feature), then optionally a ReLU: cublasLt's epilogues.
typedef enum { RT_GEMM_PLAIN, RT_GEMM_BIAS, RT_GEMM_BIAS_RELU } RtGemmEpilogue;

typedef struct {
  RtStepKind kind;
  int device;                // kernel, gemm: where it runs; transfer: the receiver
  char name[RT_PLAN_NAME];   // kernel: its symbol; gemm, chunk and transfer: the layer
  char layer[RT_PLAN_NAME];  // the layer (node) the step belongs to, for timings

  // RT_STEP_KERNEL: kernel(args..., int batch); one thread per unit of work,
  // `work` units per image, in blocks of `block` threads (grid-stride loop inside).
  int64_t work;
  int block;
  int smem;  // bytes of dynamic shared memory per block (the kernel's extern __shared__)
  RtAddr args[RT_PLAN_MAX_ARGS];
  int n_args;

  // RT_STEP_GEMM: cublasSgemm exactly, column-major, alpha = 1, beta = 0:
  //   C[m x n] = op_a(A)[m x k] * op_b(B)[k x n],  op = 'N' (as stored) or 'T' (transposed).
  // fc:   T, N, m = out, n = batch: y[img][o] = sum_j W[o][j] * x[img][j].
  // conv: N, N, m = pixels of the chunk, n = a group's kernels, k = in/groups * K * K:
  //       out[c][pixel] = sum_kk col[kk][pixel] * W[c][kk] (im2col, channel-major).
  // prec RT_BF16: A and B hold bfloat16 (C is float either way).
  // epilogue: C[i][j] += bias[i] (then max(0, C)), bias m floats (fc: the layer's slice).
  char transa, transb;
  RtPrecision prec;
  RtDim m, n, k, lda, ldb, ldc;
  RtAddr a, b, c;
  RtGemmEpilogue epilogue;
  RtAddr bias;

  // RT_STEP_CHUNK: the next `body` steps (kernels and GEMMs on `device`) run once per
  // chunk of at most `images` images of the batch; inside, kernels get the chunk's
  // image count as their batch and addresses see RtAddr.per_first * first image.
  int64_t images;
  int body;

  // RT_STEP_TRANSFER: `width` elements per image from device `from` to `device`.
  // RT_STEP_ALLREDUCE: `width` floats at dst.addr on `device` summed in place over the
  // ranks of a data-parallel job (training: the gradient region, between the backward
  // and the update); the executor's allreduce op.
  int from;
  RtRows src, dst;
  int64_t width;
} RtStep;

// A slice of a named weight tensor copied into a device's weight buffer, as float or
// (a GEMM operand under --precision bf16) converted to bfloat16 at upload.
typedef struct {
  char tensor[RT_PLAN_NAME];
  int64_t first, count;  // elements of the tensor
  int64_t offset;        // float-sized elements into the device's weight buffer
  bool bf16;
} RtWeightSlice;

// Float-sized elements a slice takes in the weight buffer (bf16 packs two per float).
int64_t rt_slice_slots(const RtWeightSlice *s);
// Writes the slice of `tensor` (the whole float tensor) to dst, converted as the slice
// says: rt_slice_slots(s) * 4 bytes.
void rt_slice_pack(const RtWeightSlice *s, const float *tensor, void *dst);

// Per device: where the input goes and where the output comes from (host side: the
// full NCHW tensors, `host_offset` + image * host pitch).
typedef struct {
  RtRows dev;
  int64_t host_offset, host_pitch, width;
} RtHostCopy;

typedef struct {
  int64_t arena;    // activation elements per image
  int64_t weights;  // weight buffer elements
  int64_t scratch;  // scratch elements per image of a chunk (im2col columns, conv GEMM output)
  int64_t chunk;    // images per chunk: the scratch buffer holds scratch * min(chunk, batch)
  RtWeightSlice *slices;
  int n_slices;
  RtHostCopy input, output;  // width 0: none on this device
  uint8_t *cubin;  // the device's module (owned)
  size_t cubin_size;
  uint8_t *ptx;    // the same as PTX, for other architectures (owned; may be NULL)
  size_t ptx_size;
} RtPlanDevice;

// A shape: an activation's per image, (C, H, W) or (features), the batch being the
// run's; or a weight tensor's, as PyTorch lays it out ((out, in/groups, k, k), (out, in)).
#define RT_SHAPE_RANK 4  // at most
typedef struct {
  int rank;
  int64_t dims[RT_SHAPE_RANK];
} RtShape;

int64_t rt_shape_elems(RtShape s);
// "3x227x227" or "1000", as the plan file writes it.
void rt_shape_str(RtShape s, char *buf, size_t size);

// A weight tensor the model reads, by name, and the shape its file must give it.
typedef struct {
  char name[RT_PLAN_NAME];
  RtShape shape;
} RtPlanTensor;

typedef struct {
  char network[RT_PLAN_NAME];
  char arch[32];
  RtPrecision precision;
  int n_devices;
  RtShape in, out;  // the network's input and output, per image
  RtPlanTensor *tensors;  // every weight tensor the slices name
  int n_tensors;
  RtPlanDevice dev[RT_PLAN_MAX_DEVICES];
  RtStep *steps;
  int n_steps;
} RtPlan;

void rt_plan_free(RtPlan *p);
// Appends a step / slice (copies it).
void rt_plan_add_step(RtPlan *p, const RtStep *s);
void rt_plan_add_slice(RtPlan *p, int device, const RtWeightSlice *s);
void rt_plan_add_tensor(RtPlan *p, const char *name, RtShape shape);
// The tensor called `name`, or NULL.
const RtPlanTensor *rt_plan_tensor(const RtPlan *p, const char *name);

// The artifact file: a text header ("alexc-cuda-plan 7"), one line per plan item,
// "end", then the modules' bytes. Described in runtime/cuda_plan.c and
// compiler/backends/cuda/README.md.
bool rt_plan_save(const RtPlan *p, const char *path);
// The bytes rt_plan_save writes (*data malloc'd): also the payload of a bundle.
bool rt_plan_serialize(const RtPlan *p, uint8_t **data, size_t *size);
bool rt_plan_parse(const uint8_t *data, size_t size, RtPlan *p);
// Loads a plan file, or a bundle: the shared object `alexc compile -o X.so` writes
// (recognized by its ELF header), whose exported alexc_model_v1() returns the same
// bytes. Loading a bundle runs its code (dlopen), so a bundle must be trusted like any
// shared library; a plan file is only read, by the bounded, checked parser above.
bool rt_plan_load(const char *path, RtPlan *p);
// The symbol a bundle exports: const unsigned char *alexc_model_v1(unsigned long long
// *size), the plan file's bytes. The version in the name is the bundle format's.
#define RT_BUNDLE_ENTRY "alexc_model_v1"

// What executing a plan needs from a machine. Device addresses are integers (a
// CUdeviceptr, or a host pointer in the emulator). Each returns false after rt_fail.
typedef struct {
  void *ctx;
  uint64_t arena[RT_PLAN_MAX_DEVICES], weights[RT_PLAN_MAX_DEVICES];  // base addresses
  uint64_t scratch[RT_PLAN_MAX_DEVICES];  // rt_plan_scratch_elems() floats; 0 if none
  // smem: bytes of dynamic shared memory per block (RtStep.smem).
  bool (*launch)(void *ctx, int device, const char *kernel, int64_t grid, int block, int smem,
                 const uint64_t *args, int n_args, int batch);
  // cublasSgemm(transa, transb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc), 'N'/'T',
  // in the step's precision (bf16: a and b hold bfloat16).
  bool (*gemm)(void *ctx, int device, RtPrecision prec, char transa, char transb, int64_t m,
               int64_t n, int64_t k, float alpha, uint64_t a, int64_t lda, uint64_t b,
               int64_t ldb, float beta, uint64_t c, int64_t ldc);
  // The same GEMM (alpha 1, beta 0) with an epilogue: C = op_a(A) op_b(B) + bias (m
  // floats, one per row of C), then max(0, C) when relu (cublasLt).
  bool (*gemm_bias)(void *ctx, int device, RtPrecision prec, char transa, char transb,
                    int64_t m, int64_t n, int64_t k, uint64_t a, int64_t lda, uint64_t b,
                    int64_t ldb, uint64_t c, int64_t ldc, uint64_t bias, bool relu);
  // Copies `height` rows of `width` floats; a device of -1 means host memory.
  bool (*copy)(void *ctx, int dst_device, uint64_t dst, int64_t dst_pitch, int src_device,
               uint64_t src, int64_t src_pitch, int64_t width, int64_t height);
  // Optional (may be NULL): called before (end false) and after (end true) every run of
  // a step (once per chunk inside a chunk), for per-layer timings.
  bool (*mark)(void *ctx, const RtStep *s, bool end);
  // Optional (NULL: a plan with an RT_STEP_ALLREDUCE step is refused): sums `floats`
  // floats at device address buf in place over the ranks, in the device's stream order.
  bool (*allreduce)(void *ctx, int device, uint64_t buf, int64_t floats);
} RtPlanOps;

// Blocks of a kernel step for a batch: enough for one thread per work unit, capped
// (the kernels loop over the rest).
int64_t rt_plan_grid(const RtStep *s, int batch);
// Elements of device d's scratch buffer for a batch: scratch * min(chunk, batch).
int64_t rt_plan_scratch_elems(const RtPlan *p, int d, int batch);
// Uploads x (batch, input), runs every step, downloads y (batch, output).
bool rt_plan_run(const RtPlan *p, const RtPlanOps *ops, const float *x, int batch, float *y);
// The three parts of rt_plan_run, for executors that time the steps alone.
bool rt_plan_upload(const RtPlan *p, const RtPlanOps *ops, const float *x, int batch);
bool rt_plan_steps(const RtPlan *p, const RtPlanOps *ops, int batch);
// The steps from step `first` on (not inside a chunk): a rank with no images in a step
// still takes part in the gradients' sum and the update.
bool rt_plan_steps_from(const RtPlan *p, const RtPlanOps *ops, int batch, int first);
bool rt_plan_download(const RtPlan *p, const RtPlanOps *ops, float *y, int batch);

// ---- the CUDA driver executor (runtime/cuda.c)

typedef struct RtCuda RtCuda;

// Loads libcuda.so.1 and libcublas; false with rt_error() "no CUDA driver found ..." or
// "no GPU ..." when this machine cannot run CUDA.
bool rt_cuda_available(void);
// The architecture of GPU 0 ("sm_90") and its name; false (rt_error) without a GPU.
bool rt_cuda_device(char *arch, size_t arch_size, char *name, size_t name_size);
// The number of GPUs the driver sees; false (rt_error) without a driver or a GPU.
bool rt_cuda_gpu_count(int *count);
// Places the plan's logical devices on the GPUs first_gpu, first_gpu + 1, ... (round
// robin over those there are; two logical devices on one GPU run on two streams of it),
// loads the modules, allocates weight buffers and uploads each slice from get(ctx,
// tensor name), converted as the slice says. first_gpu: 0, or this rank's first GPU in
// a data-parallel job (local rank times the devices each rank uses); a first_gpu the
// machine does not have is refused with a message.
RtCuda *rt_cuda_open(const RtPlan *p, int first_gpu,
                     const float *(*get)(void *ctx, const char *tensor), void *ctx);
bool rt_cuda_run(RtCuda *r, const float *x, int batch, float *y);
// Whether a batch's steps are captured into a CUDA graph (once per batch size) and
// replayed (default: on, unless ALEXC_CUDA_GRAPHS=0; used only when the plan is on one
// GPU), and how many captures and launches there have been.
void rt_cuda_set_graphs(RtCuda *r, bool on);
void rt_cuda_graph_stats(const RtCuda *r, int *captures, int *launches);
void rt_cuda_close(RtCuda *r);

// Timings of one batch (rt_cuda_time), from CUDA events on the GPUs' streams.
typedef struct {
  char layer[RT_PLAN_NAME];
  bool transfer;  // the layer's transfers to other devices (timed on the receiver, from
                  // before its wait for the sender: waiting for the other tower included)
  int device;     // logical device
  double ms;    // sum over the layer's steps on that device (chunks included)
} RtLayerTime;

typedef struct {
  double total_ms;  // first step to last, input already on the GPU, output not yet back
  RtLayerTime *layers;  // per layer and device, in plan order (per_layer runs only)
  int n_layers;
} RtTimes;

// Runs a batch like rt_cuda_run, timing it. per_layer puts events around every step
// (a little overhead each); without it only the start and the end are recorded.
bool rt_cuda_time(RtCuda *r, const float *x, int batch, float *y, bool per_layer, RtTimes *t);
void rt_times_free(RtTimes *t);

// Device memory: what alexc allocated (weights, activation arenas, conv scratch) and
// what the driver reports in use beyond what was in use once the GPU's context was
// current (adds modules, streams, cuBLAS handles and workspaces, alexc's buffers); per GPU.
typedef struct {
  int n_gpus;
  int64_t alexc_bytes[RT_PLAN_MAX_DEVICES];
  int64_t used_bytes[RT_PLAN_MAX_DEVICES];
} RtMemory;
bool rt_cuda_memory(RtCuda *r, RtMemory *m);

// Training (compiler/backends/cuda/train.c) keeps its state on the devices and drives the
// plan step by step: `floats` floats between the host and device d's address `a` as
// resolved for `batch` images (the arenas sized for it first; a larger batch than before
// reallocates them, so write a step's inputs after choosing its batch), waiting for them;
// and every step of the plan without the input upload or output download, waited for.
bool rt_cuda_write(RtCuda *r, int d, RtAddr a, int batch, const void *host, int64_t floats);
bool rt_cuda_read(RtCuda *r, int d, RtAddr a, int batch, void *host, int64_t floats);
bool rt_cuda_steps(RtCuda *r, int batch);
// The same from step `first` on (rt_plan_steps_from).
bool rt_cuda_steps_from(RtCuda *r, int batch, int first);

// Data parallelism over NCCL (libnccl.so.2, loaded with dlopen: the runtime links no NCCL
// or MPI). A plan's RT_STEP_ALLREDUCE steps run ncclAllReduce (in place, float, sum) on
// the device's stream, once the executor has joined a communicator. The job's rank 0
// makes an id (ncclGetUniqueId, RT_NCCL_ID_BYTES), sends it to every rank by other means
// (MPI), and each rank joins with it (ncclCommInitRank, on the plan's one logical device:
// one device per rank). Once joined, the executor never captures CUDA graphs.
#define RT_NCCL_ID_BYTES 128
bool rt_cuda_nccl_id(void *id);
bool rt_cuda_nccl_join(RtCuda *r, int rank, int nranks, const void *id);

#endif
