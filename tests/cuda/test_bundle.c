// The bundle carries the plan file unchanged: alexc_model_v1() of MODEL.so returns
// exactly the bytes of PLAN (the same network compiled with -o PLAN), and both load
// with rt_plan_load to plans that serialize to those bytes again. Loading the bundle
// closes the library before returning, so re-serializing also checks that
// rt_plan_load kept nothing that points into it.
//
// usage: test_bundle PLAN MODEL.so
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "alexrt_cuda.h"

static int failures;

static void check(bool ok, const char *what) {
  printf("%s: %s\n", ok ? "ok" : "FAIL", what);
  failures += !ok;
}

static bool same(const uint8_t *a, size_t na, const uint8_t *b, size_t nb) {
  return na == nb && !memcmp(a, b, na);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: test_bundle PLAN MODEL.so\n");
    return 2;
  }
  uint8_t *plan_bytes;
  size_t plan_size;
  if (!rt_read_file(argv[1], (size_t)1 << 30, &plan_bytes, &plan_size)) {
    fprintf(stderr, "%s\n", rt_error());
    return 1;
  }

  // The raw payload, through the entry point itself.
  char lib[4096];
  snprintf(lib, sizeof lib, "%s%s", strchr(argv[2], '/') ? "" : "./", argv[2]);
  void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  const unsigned char *(*entry)(unsigned long long *) =
      (const unsigned char *(*)(unsigned long long *))dlsym(h, RT_BUNDLE_ENTRY);
  check(entry != NULL, "the bundle exports alexc_model_v1");
  if (entry) {
    unsigned long long size = 0;
    const unsigned char *data = entry(&size);
    check(same(data, size, plan_bytes, plan_size), "its payload is the plan file, byte for byte");
    check(((uintptr_t)data & 15) == 0, "the payload is 16-byte aligned");
  }
  dlclose(h);

  // Both through rt_plan_load, serialized again.
  RtPlan from_plan, from_so;
  bool loaded = rt_plan_load(argv[1], &from_plan);
  if (!loaded)
    fprintf(stderr, "%s\n", rt_error());
  check(loaded, "the plan file loads");
  bool loaded_so = rt_plan_load(argv[2], &from_so);
  if (!loaded_so)
    fprintf(stderr, "%s\n", rt_error());
  check(loaded_so, "the bundle loads");
  if (loaded && loaded_so) {
    uint8_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    bool ok_a = rt_plan_serialize(&from_plan, &a, &na);
    bool ok_b = rt_plan_serialize(&from_so, &b, &nb);
    check(ok_a && ok_b, "both serialize");
    check(same(a, na, plan_bytes, plan_size), "the plan file's plan serializes to the file");
    check(same(b, nb, plan_bytes, plan_size), "the bundle's plan serializes to the plan file");
    free(a);
    free(b);
  }
  if (loaded)
    rt_plan_free(&from_plan);
  if (loaded_so)
    rt_plan_free(&from_so);
  free(plan_bytes);
  printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
