// dist_* without MPI (a build with ALEXC_MPI=OFF): one process. Launched by mpirun as one
// of several ranks, it refuses: N copies would each train alone on all the data and
// write the same files, which is never what was meant.
#include <stdio.h>
#include <stdlib.h>

#include "../alexc.h"

// The job's size as launchers put it in the environment (Open MPI, PMI), or 1.
static long launched_size(void) {
  const char *names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    const char *v = getenv(names[i]);
    if (v && atol(v) > 1)
      return atol(v);
  }
  return 1;
}

bool dist_init(void) {
  long size = launched_size();
  const char *rank = getenv("OMPI_COMM_WORLD_RANK");
  if (size > 1 && rank && atol(rank) > 0)
    return false;  // rank 0 says why, once
  if (size > 1) {
    error("this alexc was built without MPI (ALEXC_MPI=OFF) but was launched as one of %ld "
          "ranks: rebuild with MPI (Debian: libopenmpi-dev) or run it without mpirun", size);
    return false;
  }
  return true;
}

void dist_finalize(void) {}
int dist_rank(void) { return 0; }
int dist_size(void) { return 1; }
int dist_local_size(void) { return 1; }
int dist_local_rank(void) { return 0; }
void dist_allreduce_f64(double *buf, int n) { (void)buf, (void)n; }
void dist_iallreduce_f32(float *buf, int64_t n) { (void)buf, (void)n; }
void dist_progress(void) {}
void dist_wait_all(void) {}
void dist_broadcast(void *buf, size_t bytes) { (void)buf, (void)bytes; }

// One process has no other rank to talk to: --device-ranks refuses to start without
// mpirun, so these are never reached.
void dist_send_f32(const float *buf, int64_t n, int to) {
  (void)buf, (void)n, (void)to;
  fprintf(stderr, "alexc: internal error: a message to rank %d without MPI\n", to);
  abort();
}

void dist_recv_f32(float *buf, int64_t n, int from) {
  (void)buf, (void)n, (void)from;
  fprintf(stderr, "alexc: internal error: a message from rank %d without MPI\n", from);
  abort();
}

_Noreturn void dist_abort(int status) {
  fflush(stdout);
  exit(status);
}
