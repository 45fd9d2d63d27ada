// NVRTC: generated CUDA C++ -> CUBIN for one architecture, plus PTX for the same
// compute capability (which the driver can JIT for newer GPUs).
//
// Results are cached by content: an FNV-1a hash of the NVRTC version, the options (the
// include directory among them) and the source names the files HASH.cubin and HASH.ptx
// in $ALEXC_CACHE (default ~/.cache/alexc; "off" for none), written atomically, so a
// second compile of the same spec skips NVRTC and two processes racing on one entry
// both end with a whole file.
// HASH.cu beside them is the source they came from: for a person reading a CUBIN's
// disassembly, and for the fake driver of tests/cuda/fake/, which runs a module by
// compiling its source for the CPU. Each device's source compiles on its own thread.
#define _GNU_SOURCE
#include <errno.h>
#include <nvrtc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cuda.h"

bool cuda_have_nvrtc(void) { return true; }

// Prints the source lines around `line` (1-based), marking it.
static void print_context(const char *source, const char *name, int line) {
  fprintf(stderr, "%s, around line %d:\n", name, line);
  const char *s = source;
  for (int at = 1; *s && at <= line + 3; at++) {
    const char *end = strchr(s, '\n');
    int n = end ? (int)(end - s) : (int)strlen(s);
    if (at >= line - 3)
      fprintf(stderr, "%s%5d | %.*s\n", at == line ? ">" : " ", at, n, s);
    s = end ? end + 1 : s + n;
  }
}

// The first "NAME(LINE): error" in an NVRTC log, or 0.
static int first_error_line(const char *log, const char *name) {
  size_t n = strlen(name);
  for (const char *s = strstr(log, name); s; s = strstr(s + 1, name)) {
    int line;
    char word[8];
    if (s[n] == '(' && sscanf(s + n, "(%d): %7s", &line, word) == 2 && !strcmp(word, "error:"))
      return line;
  }
  return 0;
}

#ifndef ALEXC_CUDA_INCLUDE_DIR
#define ALEXC_CUDA_INCLUDE_DIR "/usr/local/cuda/include"
#endif

// "-I DIR" for the toolkit's headers (the tensor-core kernels include <mma.h>):
// $CUDA_HOME/include when CUDA_HOME is set, else where the build found cuda.h. Owned.
static char *include_option(void) {
  const char *home = getenv("CUDA_HOME");
  return home && *home ? format("-I%s/include", home) : format("-I%s", ALEXC_CUDA_INCLUDE_DIR);
}

// One NVRTC run; on failure prints the log and the failing source lines.
static bool run_nvrtc(const char *source, const char *name, const char *arch, bool want_cubin,
                      uint8_t **out, size_t *out_size) {
  nvrtcProgram prog;
  nvrtcResult rc = nvrtcCreateProgram(&prog, source, name, 0, NULL, NULL);
  if (rc != NVRTC_SUCCESS) {
    error("nvrtc: %s: %s", name, nvrtcGetErrorString(rc));
    return false;
  }
  char *arch_opt = format("--gpu-architecture=%s", arch), *include = include_option();
  // -lineinfo: source lines in the CUBIN, so compute-sanitizer and Nsight Compute name
  // the generated line a fault or a hot spot is on (no effect on the code).
  const char *opts[] = {arch_opt, "-std=c++17", "-lineinfo", include};
  rc = nvrtcCompileProgram(prog, 4, opts);
  size_t log_size = 0;
  nvrtcGetProgramLogSize(prog, &log_size);
  char *log = xcalloc(log_size + 1, 1);
  if (log_size)
    nvrtcGetProgramLog(prog, log);
  bool ok = rc == NVRTC_SUCCESS;
  if (!ok) {
    error("nvrtc: %s does not compile for %s: %s", name, arch, nvrtcGetErrorString(rc));
    fprintf(stderr, "%s", log);
    int line = first_error_line(log, name);
    if (line)
      print_context(source, name, line);
  } else {
    size_t size = 0;
    ok = (want_cubin ? nvrtcGetCUBINSize(prog, &size) : nvrtcGetPTXSize(prog, &size)) ==
         NVRTC_SUCCESS;
    *out = xcalloc(size ? size : 1, 1);
    *out_size = size;
    ok = ok && (want_cubin ? nvrtcGetCUBIN(prog, (char *)*out) : nvrtcGetPTX(prog, (char *)*out)) ==
                   NVRTC_SUCCESS;
    if (!ok)
      error("nvrtc: %s: cannot get the %s", name, want_cubin ? "CUBIN" : "PTX");
  }
  free(log);
  free(arch_opt);
  free(include);
  nvrtcDestroyProgram(&prog);
  return ok;
}

static bool read_cached(const char *path, uint8_t **data, size_t *size) {
  return rt_read_file(path, (size_t)1 << 30, data, size);
}

bool cuda_compile_source(const char *source, const char *name, const char *arch,
                         uint8_t **cubin, size_t *cubin_size, uint8_t **ptx, size_t *ptx_size) {
  *cubin = *ptx = NULL;
  *cubin_size = *ptx_size = 0;
  if (strncmp(arch, "sm_", 3) != 0 || strlen(arch) > 16) {
    error("--arch wants a real architecture such as sm_90, not '%s'", arch);
    return false;
  }
  char *virt = format("compute_%s", arch + 3);
  int major = 0, minor = 0;
  nvrtcVersion(&major, &minor);
  char *include = include_option();
  char *version = format("nvrtc %d.%d -std=c++17 -lineinfo %s %s", major, minor, include, arch);
  uint64_t h = fnv1a(FNV_OFFSET, version, strlen(version) + 1);
  free(version);
  free(include);
  h = fnv1a(h, source, strlen(source));

  char *dir = cache_dir();
  char *cubin_path = dir ? format("%s/%016llx.cubin", dir, (unsigned long long)h) : NULL;
  char *ptx_path = dir ? format("%s/%016llx.ptx", dir, (unsigned long long)h) : NULL;
  char *cu_path = dir ? format("%s/%016llx.cu", dir, (unsigned long long)h) : NULL;
  bool ok;
  if (dir && read_cached(cubin_path, cubin, cubin_size) && read_cached(ptx_path, ptx, ptx_size)) {
    ok = true;
  } else {
    free(*cubin);
    *cubin = NULL;
    ok = run_nvrtc(source, name, arch, true, cubin, cubin_size) &&
         run_nvrtc(source, name, virt, false, ptx, ptx_size);
    // A cache that cannot be written is only slower: no error.
    if (ok && dir && rt_write_file_atomic(cu_path, source, strlen(source)) &&
        rt_write_file_atomic(cubin_path, *cubin, *cubin_size))
      rt_write_file_atomic(ptx_path, *ptx, *ptx_size);
  }
  if (!ok) {
    free(*cubin);
    free(*ptx);
    *cubin = *ptx = NULL;
  }
  free(virt);
  free(dir);
  free(cubin_path);
  free(ptx_path);
  free(cu_path);
  return ok;
}

typedef struct {
  const char *source, *arch;
  char name[32];
  RtPlanDevice *dev;
  bool ok;
} Job;

static void *compile_job(void *arg) {
  Job *j = arg;
  j->ok = cuda_compile_source(j->source, j->name, j->arch, &j->dev->cubin, &j->dev->cubin_size,
                              &j->dev->ptx, &j->dev->ptx_size);
  return NULL;
}

bool cuda_compile(CudaProgram *p, const char *arch) {
  int n = p->plan.n_devices;
  Job jobs[MAX_DEVICES];
  pthread_t threads[MAX_DEVICES];
  bool started[MAX_DEVICES] = {0};
  snprintf(p->plan.arch, sizeof p->plan.arch, "%s", arch);
  for (int d = 0; d < n; d++) {
    jobs[d] = (Job){p->source[d], arch, "", &p->plan.dev[d], false};
    snprintf(jobs[d].name, sizeof jobs[d].name, "device%d.cu", d);
    started[d] = d > 0 && pthread_create(&threads[d], NULL, compile_job, &jobs[d]) == 0;
  }
  for (int d = 0; d < n; d++) {
    if (started[d])
      pthread_join(threads[d], NULL);
    else
      compile_job(&jobs[d]);  // device 0 on this thread, and any thread that did not start
  }
  bool ok = true;
  for (int d = 0; d < n; d++)
    ok = ok && jobs[d].ok;
  return ok;
}
