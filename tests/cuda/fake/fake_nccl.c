// fake_nccl.c — a fake NCCL (libnccl.so.2) on top of the fake driver (fake_cuda.c) and
// MPI: the entry points runtime/cuda.c loads, enough for `mpirun -np N alexc train
// --target cuda` to run on the CPU (tests/train/mpi.sh, part cuda).
//
// A communicator is an MPI communicator: ncclCommInitRank splits MPI_COMM_WORLD by the
// id's hash (so every world rank must join, which alexc's ranks all do) and checks that
// the ranks and their count are the ones NCCL was given. The process must have called
// MPI_Init already (alexc's dist_init does); this library never initialises MPI.
//
// ncclAllReduce is asynchronous, as on a GPU: its arguments are checked when it is
// called (float, sum, a stream of the communicator's device, the buffer inside one
// allocation of that device), and the sum (MPI_Allreduce, in place, on the "device"
// memory, which is host memory here) is queued on the stream through fake_cuda_enqueue.
// It runs when the fake driver reaches it in stream order: after the backward's kernels
// and GEMMs on that stream, before the update; a rank whose runtime forgot to order it
// would sum stale gradients, and the test comparing with one process would see it.
// Only float sums in place, one communicator per device: what alexc uses.
#define _GNU_SOURCE
#include <mpi.h>
#include <nccl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fake_cuda.h"

#define ID_MAGIC "fake nccl id"

struct ncclComm {
  MPI_Comm mpi;
  int rank, nranks, device;
};

const char *ncclGetErrorString(ncclResult_t result) {
  switch (result) {
  case ncclSuccess: return "no error";
  case ncclUnhandledCudaError: return "unhandled cuda error (fake nccl)";
  case ncclSystemError: return "unhandled system error (fake nccl)";
  case ncclInternalError: return "internal error (fake nccl)";
  case ncclInvalidArgument: return "invalid argument (fake nccl)";
  case ncclInvalidUsage: return "invalid usage (fake nccl)";
  default: return "unknown result code (fake nccl)";
  }
}

static bool mpi_ready(const char *what) {
  int init = 0, done = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&done);
  if (init && !done)
    return true;
  fake_cuda_violation("%s: MPI is not initialised (the fake NCCL sums over MPI)", what);
  return false;
}

// A fresh id: the magic, then the process id, the time and a count (ids are compared as
// bytes, hashed for the split's colour).
ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  static unsigned count;
  if (!id)
    return ncclInvalidArgument;
  memset(id, 0, sizeof *id);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  snprintf(id->internal, sizeof id->internal, ID_MAGIC " %ld %lld.%09ld %u", (long)getpid(),
           (long long)ts.tv_sec, ts.tv_nsec, count++);
  return ncclSuccess;
}

// FNV-1a of the id, as a non-negative MPI colour.
static int id_colour(const ncclUniqueId *id) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < sizeof id->internal; i++)
    h = (h ^ (uint8_t)id->internal[i]) * 16777619u;
  return (int)(h & 0x7fffffff);
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
  CUcontext ctx = fake_cuda_current();
  if (!comm || nranks < 1 || rank < 0 || rank >= nranks) {
    fake_cuda_violation("ncclCommInitRank: rank %d of %d", rank, nranks);
    return ncclInvalidArgument;
  }
  if (strncmp(id.internal, ID_MAGIC, strlen(ID_MAGIC))) {
    fake_cuda_violation("ncclCommInitRank: the id was not made by ncclGetUniqueId");
    return ncclInvalidArgument;
  }
  if (!ctx) {
    fake_cuda_violation("ncclCommInitRank: no current context (NCCL uses the current device)");
    return ncclInvalidUsage;
  }
  if (!mpi_ready("ncclCommInitRank"))
    return ncclSystemError;
  struct ncclComm *c = calloc(1, sizeof *c);
  if (!c)
    return ncclSystemError;
  MPI_Comm_split(MPI_COMM_WORLD, id_colour(&id), rank, &c->mpi);
  int size = 0, got = -1;
  MPI_Comm_size(c->mpi, &size);
  MPI_Comm_rank(c->mpi, &got);
  if (size != nranks || got != rank) {
    fake_cuda_violation("ncclCommInitRank: rank %d of %d, but %d processes joined with this id "
                        "(this one as rank %d)", rank, nranks, size, got);
    MPI_Comm_free(&c->mpi);
    free(c);
    return ncclInvalidUsage;
  }
  c->rank = rank;
  c->nranks = nranks;
  c->device = fake_cuda_context_device(ctx);
  *comm = c;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm)
    return ncclInvalidArgument;
  int done = 0;
  MPI_Finalized(&done);
  if (!done)
    MPI_Comm_free(&comm->mpi);
  free(comm);
  return ncclSuccess;
}

typedef struct {
  float *buf;
  int count;
  MPI_Comm mpi;
} Sum;

static void run_sum(void *arg) {
  Sum *s = arg;
  MPI_Allreduce(MPI_IN_PLACE, s->buf, s->count, MPI_FLOAT, MPI_SUM, s->mpi);
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream) {
  if (!comm) {
    fake_cuda_violation("ncclAllReduce: no communicator");
    return ncclInvalidArgument;
  }
  if (datatype != ncclFloat || op != ncclSum || sendbuff != recvbuff || count > INT32_MAX) {
    fake_cuda_violation("ncclAllReduce: type %d, op %d, %s, %zu elements: the fake sums "
                        "floats in place only", (int)datatype, (int)op,
                        sendbuff == recvbuff ? "in place" : "out of place", count);
    return ncclInvalidArgument;
  }
  CUcontext ctx = fake_cuda_stream_context((CUstream)stream);
  if (!ctx || fake_cuda_context_device(ctx) != comm->device) {
    fake_cuda_violation("ncclAllReduce: the stream is not one of device %d's, the "
                        "communicator's", comm->device);
    return ncclInvalidArgument;
  }
  if (!fake_cuda_check_range("ncclAllReduce", comm->device, (CUdeviceptr)(uintptr_t)recvbuff,
                             count * sizeof(float)))
    return ncclInvalidArgument;
  Sum *s = malloc(sizeof *s);
  if (!s)
    return ncclSystemError;
  *s = (Sum){recvbuff, (int)count, comm->mpi};
  return fake_cuda_enqueue((CUstream)stream, "ncclAllReduce", run_sum, s) == CUDA_SUCCESS
             ? ncclSuccess
             : ncclUnhandledCudaError;
}
