// libFuzzer target for the tensor file readers (.npy and safetensors): any bytes
// must be loaded or refused with a message, never crash or read out of bounds.
//   build-fuzz/tests/fuzz_tensors -max_total_time=300
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "alexrt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char path[64];
  if (!path[0])
    snprintf(path, sizeof path, "/tmp/alexc-fuzz-%d.bin", (int)getpid());
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
    abort();
  RtTensor t;
  if (rt_npy_load(path, &t))
    rt_tensor_free(&t);
  RtSafetensors st;
  if (rt_st_open(path, &st)) {
    for (int i = 0; i < st.n; i++) {
      float *buf = malloc(st.entries[i].nbytes + 1);
      rt_st_read_f32(&st, st.entries[i].name, st.entries[i].rank, st.entries[i].dims, buf);
      free(buf);
    }
    rt_st_close(&st);
  }
  return 0;
}
