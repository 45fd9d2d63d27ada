// Training on the CUDA backend (train.c): a whole SGD step of a training program as one
// CUDA C++ translation unit and a plan (runtime/alexrt_cuda.h) that runs it on one device.
//
// Memory, all on the device:
//   arena    the program's memory plan (train/memplan.c: floats per image, offsets per
//            value), then TRAIN_CUDA_EXTRA floats per image: each image's loss (a double),
//            its label (int32) and its top-1 hit (int32), at the addresses below.
//   weights  the parameters, packed in graph order (each tensor 16-byte aligned), then
//            their gradients and their momenta at the same offsets plus grad_base and
//            momentum_base, then a TrainControl (learning rate, seed, step, this rank's
//            first image in the global batch and the global batch's size) the host
//            writes before each step.
//   scratch  per image: im2col columns and a conv's channel-major output or gradient, an
//            fc's input gradient before it is added.
// The update is one kernel over [0, params) of the three regions. Built for several ranks
// (data parallelism), an RT_STEP_ALLREDUCE step sums the gradient region over them first.
#ifndef ALEXC_CUDA_TRAIN_H
#define ALEXC_CUDA_TRAIN_H

#include "cuda.h"

#define TRAIN_CUDA_EXTRA 16  // floats per image after the program's arena

typedef struct {
  RtPlan plan;         // the modules empty until compiled
  int devices;
  char *source[MAX_DEVICES];  // a translation unit per device (owned)
  FILE *src_files[MAX_DEVICES];  // while generating
  Split *split;        // devices > 1: train/parallel.c's pieces, which the plan runs
  TrainProgram *prog;  // fused and memory-planned (owned)
  Weights *layout;     // the parameter tensors in graph order (zeros; for names and sizes)
  int64_t *param_offset;  // per layout tensor: its offset in the parameter region
  int64_t params;         // the parameter region's floats (padding included)
  int64_t grad_base, momentum_base, control;  // weight-buffer offsets
  RtAddr loss, labels, hits;  // per image: double, int32, int32
  int forward_end;  // steps [0, forward_end) draw the masks and run the forward
  int *instr_step;  // per instruction of prog (and one past the last): its first step
  int ranks;           // > 1: built for data parallelism over that many ranks
  int allreduce_step;  // ranks > 1: the step summing the gradients (the update follows)
} CudaTrainPlan;

// The program's step as a plan and sources. `patterns`: backward fusion patterns as
// train_fuse_backward takes them (NULL: all the CUDA generator has kernels for,
// conv-relu and fc-relu; one device only; another pattern is refused with a message). `devices` > 1: the
// partition pass's model-parallel split (train/parallel.c's pieces; the program's sends
// and reductions become transfers and adding kernels). False with a message for a graph
// the generator cannot train (or that autodiff refuses).
bool cuda_train_generate(const Graph *g, const char *const *patterns, int devices,
                         CudaTrainPlan *out);
// The same for one rank of `ranks` (data parallelism): with ranks > 1, the gradients are
// summed over the ranks (RT_STEP_ALLREDUCE) between the backward and the update. One
// device per rank: devices > 1 with ranks > 1 is refused with a message.
bool cuda_train_generate_ranks(const Graph *g, const char *const *patterns, int devices,
                               int ranks, CudaTrainPlan *out);
void cuda_train_free(CudaTrainPlan *t);

// The device layout as the host writes it: the control block's layout (it must match the
// generated source's struct TrainControl).
// first and total: this rank's first image in the global batch of `total` images (one
// process: 0 and its n). 32 bytes: the 8 floats the weight buffer keeps after `control`.
typedef struct {
  double lr;
  uint64_t seed, step;
  int32_t first, total;
} CudaTrainControl;

// Training through the runtime (train_run.c): the step generated for `devices`, compiled
// for `arch` (NVRTC, cached), loaded with w's parameters and v's momenta, which then stay
// on the devices. NULL with a message (no GPU, no NVRTC, a network it cannot train).
typedef struct CudaTrainer CudaTrainer;
CudaTrainer *cuda_trainer_new(const Graph *g, int devices, const char *arch, const Weights *w,
                              const Weights *v);
// One rank of `ranks` (data parallelism over NCCL; devices must then be 1): the step
// built with the all-reduce, on GPUs first_gpu.. (the rank's local rank times its
// devices). It sums nothing until joined: rank 0 makes the id (cuda_trainer_nccl_id),
// the caller sends it to every rank, and each joins with it (ncclCommInitRank: all ranks
// at once). False or NULL with a message.
CudaTrainer *cuda_trainer_new_rank(const Graph *g, int devices, int ranks, int first_gpu,
                                   const char *arch, const Weights *w, const Weights *v);
bool cuda_trainer_nccl_id(uint8_t id[RT_NCCL_ID_BYTES]);
bool cuda_trainer_join(CudaTrainer *c, int rank, int ranks, const uint8_t id[RT_NCCL_ID_BYTES]);
// One SGD step on n images (dropout masks from seed and step); the mean loss, or NaN with a
// message (a label out of range, a device error). Counts top-1 hits into *top1.
double cuda_trainer_step(CudaTrainer *c, double lr, uint64_t seed, int64_t step, const float *x,
                         const int32_t *labels, int n, int *top1);
// One rank's part of a step (trainer_step_part's contract): its n images are images
// [first, first + n) of a global batch of `total` (dropout keyed by the global index, the
// loss gradient weighted by n / total, the gradients summed over the ranks); n may be 0.
// Returns the sum of its images' losses (NaN with a message); *top1 its hits.
double cuda_trainer_step_part(CudaTrainer *c, double lr, uint64_t seed, int64_t step,
                              const float *x, const int32_t *labels, int n, int first, int total,
                              int *top1);
// The parameters and momenta (either may be NULL), each row from the device computing it.
bool cuda_trainer_download(CudaTrainer *c, Weights *w, Weights *v);
void cuda_trainer_free(CudaTrainer *c);

#endif
