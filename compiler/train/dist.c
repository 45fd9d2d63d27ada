// Training's contact with MPI (Open MPI; any MPI-3 library should do): the ranks of an
// `mpirun` job, sums over them, a broadcast from rank 0, and the point-to-point messages
// of the model-parallel split's transfers (--device-ranks). Nothing else in alexc
// includes mpi.h, and the runtime never links MPI.
//
// MPI is joined only when a launcher started this process (its environment says so), so
// a plain `alexc train` neither pays for MPI_Init nor depends on it working.
//
// Errors: MPI's default handler, MPI_ERRORS_ARE_FATAL, is kept. A rank that dies makes
// mpirun end the others (it says which rank and how) and exit non-zero; a sum that can no
// longer complete never returns a wrong answer.
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "../alexc.h"

#define MAX_PENDING 1024  // gradient buckets in flight (a step has a few dozen)

static struct {
  bool joined;
  int rank, size, local_size, local_rank;
  MPI_Request pending[MAX_PENDING];
  int n_pending;
} dist = {.size = 1, .local_size = 1};

// Set by mpirun (Open MPI), by PMIx-based launchers and by MPICH's hydra.
static bool launched(void) {
  return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

bool dist_init(void) {
  if (dist.joined || !launched())
    return true;
  if (MPI_Init(NULL, NULL) != MPI_SUCCESS) {
    error("MPI_Init failed: cannot join the mpirun job");
    return false;
  }
  dist.joined = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &dist.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &dist.size);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  MPI_Comm_size(local, &dist.local_size);
  MPI_Comm_rank(local, &dist.local_rank);  // ordered as in MPI_COMM_WORLD (key 0)
  MPI_Comm_free(&local);
  return true;
}

void dist_finalize(void) {
  if (dist.joined)
    MPI_Finalize();
  dist.joined = false;
}

int dist_rank(void) { return dist.rank; }
int dist_size(void) { return dist.size; }
int dist_local_size(void) { return dist.local_size; }
int dist_local_rank(void) { return dist.local_rank; }

void dist_allreduce_f64(double *buf, int n) {
  if (dist.size > 1)
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

void dist_iallreduce_f32(float *buf, int64_t n) {
  if (dist.size < 2)
    return;
  if (n > INT32_MAX || dist.n_pending == MAX_PENDING) {
    fprintf(stderr, "alexc: internal error: gradient bucket of %lld floats, %d in flight\n",
            (long long)n, dist.n_pending);
    dist_abort(EXIT_FAILURE);
  }
  MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                 &dist.pending[dist.n_pending++]);
}

void dist_progress(void) {
  int done;
  if (dist.n_pending)
    MPI_Testall(dist.n_pending, dist.pending, &done, MPI_STATUSES_IGNORE);
}

void dist_wait_all(void) {
  if (dist.n_pending)
    MPI_Waitall(dist.n_pending, dist.pending, MPI_STATUSES_IGNORE);
  dist.n_pending = 0;
}

void dist_broadcast(void *buf, size_t bytes) {
  if (dist.size < 2)
    return;
  for (size_t at = 0; at < bytes;) {  // MPI counts are ints: 1 GiB at a time
    size_t part = bytes - at < ((size_t)1 << 30) ? bytes - at : (size_t)1 << 30;
    MPI_Bcast((char *)buf + at, (int)part, MPI_BYTE, 0, MPI_COMM_WORLD);
    at += part;
  }
}

// MPI counts are ints: messages of at most INT_MAX floats, in order (MPI keeps the order
// of messages between two ranks).
#define MAX_MESSAGE ((int64_t)INT_MAX)

void dist_send_f32(const float *buf, int64_t n, int to) {
  for (int64_t at = 0; at < n; at += MAX_MESSAGE) {
    int part = (int)(n - at < MAX_MESSAGE ? n - at : MAX_MESSAGE);
    MPI_Send(buf + at, part, MPI_FLOAT, to, 0, MPI_COMM_WORLD);
  }
}

void dist_recv_f32(float *buf, int64_t n, int from) {
  for (int64_t at = 0; at < n; at += MAX_MESSAGE) {
    int part = (int)(n - at < MAX_MESSAGE ? n - at : MAX_MESSAGE);
    MPI_Recv(buf + at, part, MPI_FLOAT, from, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
}

_Noreturn void dist_abort(int status) {
  fflush(stdout);
  fflush(stderr);
  if (dist.joined)
    MPI_Abort(MPI_COMM_WORLD, status);
  exit(status);
}
