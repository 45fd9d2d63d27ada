// Every generated .cu file compiles with NVRTC for sm_90 (no GPU needed). Exit 77
// (ctest: skipped) in a build without NVRTC.
//
// usage: test_nvrtc DIR    (every *.cu under DIR)
#define _GNU_SOURCE
#include <ftw.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "backends/cuda/cuda.h"

static char **files;
static int n_files;

static int collect(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st, (void)ftw;
  size_t n = strlen(path);
  if (type == FTW_F && n > 3 && !strcmp(path + n - 3, ".cu")) {
    files = xrealloc(files, (n_files + 1) * sizeof *files);
    files[n_files++] = xstrdup(path);
  }
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv) {
  if (!cuda_have_nvrtc()) {
    printf("SKIP: this build has no NVRTC (ALEXC_CUDA=OFF)\n");
    return 77;
  }
  if (argc != 2 || nftw(argv[1], collect, 16, FTW_PHYS) != 0 || !n_files) {
    fprintf(stderr, "usage: test_nvrtc DIR (a directory holding .cu files)\n");
    return 2;
  }
  qsort(files, n_files, sizeof *files, by_name);
  setenv("ALEXC_CACHE", "off", 1);  // no cache: compile for real
  int failures = 0;
  for (int i = 0; i < n_files; i++) {
    uint8_t *data = NULL, *cubin = NULL, *ptx = NULL;
    size_t size, cubin_size, ptx_size;
    bool ok = rt_read_file(files[i], (size_t)64 << 20, &data, &size);
    if (!ok)
      fprintf(stderr, "%s\n", rt_error());
    ok = ok && cuda_compile_source((const char *)data, files[i], "sm_90", &cubin, &cubin_size, &ptx,
                                   &ptx_size);
    printf("  %-50s %s", files[i], ok ? "OK" : "FAIL");
    if (ok)
      printf("  (%zu bytes of CUBIN, %zu of PTX)", cubin_size, ptx_size);
    printf("\n");
    failures += !ok;
    free(cubin);
    free(ptx);
    free(data);
    free(files[i]);
  }
  free(files);
  printf("%d file(s), %d failure(s)\n", n_files, failures);
  return failures ? 1 : 0;
}
