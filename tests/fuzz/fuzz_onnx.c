// libFuzzer target for the ONNX importer: any bytes must give a spec that the spec
// frontend accepts, with weights matching its parameters, or one error message; never
// a crash, hang or sanitizer report.
//   cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DALEXC_FUZZ=ON -DALEXC_CUDA=OFF
//   cmake --build build-fuzz --target fuzz_onnx
//   build-fuzz/tests/fuzz_onnx -max_total_time=300 tests/onnx
// (tests/onnx holds .npy files too: libFuzzer takes them as more seeds.)
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alexc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int null_fd = -1, saved_fd = -1;
  if (null_fd < 0) {
    null_fd = open("/dev/null", O_WRONLY);
    saved_fd = dup(2);
  }
  fflush(stderr);
  dup2(null_fd, 2);
  char *spec;
  Weights *w;
  bool ok = onnx_import_bytes("<fuzz>", data, size, "fuzz", &spec, &w);
  Graph *g = ok ? parse_spec_string("<fuzz>.yaml", spec, strlen(spec)) : NULL;
  fflush(stderr);
  dup2(saved_fd, 2);
  if (ok) {
    if (!g || !graph_verify(g) || graph_params_list(g, NULL) != w->n)
      abort();  // the importer wrote a spec the frontend rejects, or the wrong weights
    graph_free(g);
    weights_free(w);
    free(spec);
  }
  return 0;
}
