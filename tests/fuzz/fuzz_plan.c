// libFuzzer target for the CUDA plan reader (runtime/cuda_plan.c), the payload of every
// compiled model: any bytes must be parsed or refused with a message, never crash or
// read out of bounds; and a plan that parses (and names its network: the parser does
// not insist) must serialize to bytes that parse back to the same serialization.
//   build-fuzz/tests/fuzz_plan -max_total_time=300
#include <stdlib.h>
#include <string.h>

#include "alexrt_cuda.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  RtPlan p;
  if (!rt_plan_parse(data, size, &p))
    return 0;
  if (!p.network[0]) {
    rt_plan_free(&p);
    return 0;
  }
  uint8_t *a, *b;
  size_t na, nb;
  if (!rt_plan_serialize(&p, &a, &na))
    abort();
  rt_plan_free(&p);
  if (!rt_plan_parse(a, na, &p) || !rt_plan_serialize(&p, &b, &nb))
    abort();
  if (na != nb || memcmp(a, b, na) != 0)
    abort();
  rt_plan_free(&p);
  free(a);
  free(b);
  return 0;
}
