// libFuzzer target for the spec frontend: any bytes must give a graph that verifies
// or one error message, never a crash, hang or sanitizer report.
//   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DALEXC_FUZZ=ON -DALEXC_CUDA=OFF
//   cmake --build build-fuzz --target fuzz_spec
//   build-fuzz/tests/fuzz_spec -max_total_time=300 tests/specs/good specs
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "alexc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  // One message per bad input is the contract; don't print millions of them, but
  // keep stderr for the fuzzer's own crash reports.
  static int null_fd = -1, saved_fd = -1;
  if (null_fd < 0) {
    null_fd = open("/dev/null", O_WRONLY);
    saved_fd = dup(2);
  }
  fflush(stderr);
  dup2(null_fd, 2);
  Graph *g = parse_spec_string("<fuzz>", (const char *)data, size);
  fflush(stderr);
  dup2(saved_fd, 2);
  if (g) {
    if (!graph_verify(g))
      abort();  // the frontend accepted a graph the verifier rejects
    PassOptions o = pass_defaults();
    o.devices = 1 + (int)(size % 3);
    if (graph_macs(g) < 50000000 && !run_passes(g, &o))
      abort();
    graph_free(g);
  }
  return 0;
}
