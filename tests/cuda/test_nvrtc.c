// Every generated .cu file compiles with NVRTC for sm_90 (no GPU needed), and a source
// that does not compile is reported with its failing line in context. Exit 77 (ctest:
// skipped) in a build without NVRTC.
//
// usage: test_nvrtc DIR    (every *.cu under DIR)
#define _GNU_SOURCE
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

// A kernel with an error on line 6: the failure must show that line, marked, among
// its neighbours (what a user sees when generated code, or a hand edit, is wrong).
static bool compile_error_shows_the_line(void) {
  static const char source[] = "// broken on purpose\n"
                               "extern \"C\" __global__ void k(float *x) {\n"
                               "  int i = threadIdx.x;\n"
                               "  x[i] = 1.0f;\n"
                               "  x[i] += 2.0f;\n"
                               "  x[i] = no_such_name;\n"
                               "}\n";
  char path[] = "/tmp/alexc-test-nvrtc-XXXXXX";
  int fd = mkstemp(path), saved = dup(STDERR_FILENO);
  if (fd < 0 || saved < 0)
    return false;
  fflush(stderr);
  dup2(fd, STDERR_FILENO);
  uint8_t *cubin = NULL, *ptx = NULL;
  size_t cubin_size, ptx_size;
  bool compiled = cuda_compile_source(source, "broken.cu", "sm_90", &cubin, &cubin_size, &ptx,
                                      &ptx_size);
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fd);
  uint8_t *log = NULL;
  size_t size = 0;
  bool read = rt_read_file(path, (size_t)1 << 20, &log, &size);
  unlink(path);
  const char *text = read ? (const char *)log : "";
  bool ok = !compiled && strstr(text, "broken.cu, around line 6:") &&
            strstr(text, ">    6 |   x[i] = no_such_name;") &&
            strstr(text, "     3 |   int i = threadIdx.x;") && !strstr(text, "    2 | extern");
  printf("  %-50s %s\n", "a compile error, shown in context", ok ? "OK" : "FAIL");
  if (!ok)
    printf("%s\n", text);
  free(cubin);
  free(ptx);
  free(log);
  return ok;
}

// Line tables for compute-sanitizer and Nsight Compute (NVRTC's -lineinfo): the CUBIN,
// an ELF file, has a .debug_line section, so its section-name table holds the name.
static bool has_line_info(const uint8_t *cubin, size_t size) {
  static const char name[] = ".debug_line";  // with its terminating NUL
  return memmem(cubin, size, name, sizeof name) != NULL;
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
    bool compiled = ok;
    ok = ok && has_line_info(cubin, cubin_size);
    printf("  %-50s %s", files[i], ok ? "OK" : compiled ? "FAIL (no line info)" : "FAIL");
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
  failures += !compile_error_shows_the_line();
  printf("%d file(s) and a broken source, %d failure(s)\n", n_files, failures);
  return failures ? 1 : 0;
}
