// fake_cuda_prepare: builds the CPU kernels the fake driver (fake_cuda.c) loads in place
// of a compiled model's modules.
//
// The fake's cuModuleLoadData sees only the image bytes (CUBIN or PTX), so it finds the
// kernels by the image's FNV-1a 64 hash: OUT_DIR/<hash>.so (the device's generated CUDA
// compiled by g++ with cuda_emu.h, as test_emulate.c does) and OUT_DIR/<hash>.cu (the
// source, from which it counts kernel parameters). This reads the artifact, hashes each
// device's CUBIN and PTX (the runtime loads the PTX when the CUBIN fails), and builds
// SOURCE_DIR/device<d>.cu (from `alexc compile --emit-source`) under both names. A module
// already built is skipped; the devices compile in parallel.
//
// usage: fake_cuda_prepare CXX EMU_HEADER PLAN_FILE SOURCE_DIR OUT_DIR
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "alexrt.h"
#include "alexrt_cuda.h"
#include "module_hash.h"

static const char *cxx, *emu_header, *source_dir, *out_dir;

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static char *path_of(const char *hash, const char *ext) {
  char *p;
  if (asprintf(&p, "%s/%s.%s", out_dir, hash, ext) < 0)
    abort();
  return p;
}

// Starts `sh -c cmd`; its pid, or -1.
static pid_t spawn(const char *cmd) {
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  return pid;
}

// Starts compiling device d's source as module `hash` (to a temporary, renamed once
// whole: a test run never sees half a .so). Returns the pid, 0 if nothing to do, -1.
static pid_t start_module(int d, const char *hash) {
  char *so = path_of(hash, "so"), *cu = path_of(hash, "cu"), *cmd = NULL, src[4096];
  pid_t pid = 0;
  snprintf(src, sizeof src, "%s/device%d.cu", source_dir, d);
  if (!exists(so)) {
    if (asprintf(&cmd,
                 "cp '%s' '%s.tmp.'$$ && mv '%s.tmp.'$$ '%s' && "
                 "%s -std=c++17 -O2 -fPIC -shared -I '%.*semu_include' -include '%s' -x c++ '%s' "
                 "-o '%s.tmp.'$$ && mv '%s.tmp.'$$ '%s'",
                 src, cu, cu, cu, cxx, emu_dir_len(emu_header), emu_header, emu_header, src, so,
                 so, so) < 0)
      abort();
    pid = spawn(cmd);
  }
  free(cmd);
  free(so);
  free(cu);
  return pid;
}

// Makes module `alias` (the PTX's hash) the same files as `hash` (the CUBIN's).
static bool link_module(const char *hash, const char *alias) {
  if (!strcmp(hash, alias))
    return true;
  bool ok = true;
  const char *exts[] = {"so", "cu"};
  for (int i = 0; i < 2 && ok; i++) {
    char name[192], *link = path_of(alias, exts[i]);
    snprintf(name, sizeof name, "%s.%s", hash, exts[i]);  // relative: the directory may move
    if (!exists(link) && symlink(name, link) != 0 && errno != EEXIST) {
      fprintf(stderr, "fake_cuda_prepare: %s: %s\n", link, strerror(errno));
      ok = false;
    }
    free(link);
  }
  return ok;
}

// PTX is text: the fake hashes it up to its NUL, as it cannot know the size.
static size_t ptx_bytes(const RtPlanDevice *v) {
  size_t n = strnlen((const char *)v->ptx, v->ptx_size);
  return n < v->ptx_size ? n + 1 : v->ptx_size;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: fake_cuda_prepare CXX EMU_HEADER PLAN_FILE SOURCE_DIR OUT_DIR\n");
    return 2;
  }
  cxx = argv[1];
  emu_header = argv[2];
  source_dir = argv[4];
  out_dir = argv[5];
  RtPlan plan;
  if (!rt_plan_load(argv[3], &plan)) {
    fprintf(stderr, "fake_cuda_prepare: %s\n", rt_error());
    return 1;
  }
  if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "fake_cuda_prepare: %s: %s\n", out_dir, strerror(errno));
    return 1;
  }
  char hash[RT_PLAN_MAX_DEVICES][17], alias[RT_PLAN_MAX_DEVICES][17];
  pid_t pid[RT_PLAN_MAX_DEVICES];
  bool ok = true;
  for (int d = 0; d < plan.n_devices; d++) {
    const RtPlanDevice *v = &plan.dev[d];
    uint64_t h_cubin = v->cubin_size ? fake_module_hash(v->cubin, v->cubin_size) : 0,
             h_ptx = v->ptx_size ? fake_module_hash(v->ptx, ptx_bytes(v)) : 0;
    snprintf(hash[d], sizeof hash[d], "%016" PRIx64, v->cubin_size ? h_cubin : h_ptx);
    snprintf(alias[d], sizeof alias[d], "%016" PRIx64, v->ptx_size ? h_ptx : h_cubin);
    pid[d] = v->cubin_size || v->ptx_size ? start_module(d, hash[d]) : 0;
  }
  for (int d = 0; d < plan.n_devices; d++) {
    int status = 0;
    if (pid[d] < 0 || (pid[d] > 0 && (waitpid(pid[d], &status, 0) < 0 || status != 0))) {
      fprintf(stderr, "fake_cuda_prepare: compiling %s/device%d.cu failed\n", source_dir, d);
      ok = false;
    }
  }
  for (int d = 0; d < plan.n_devices && ok; d++)
    ok = link_module(hash[d], alias[d]);
  rt_plan_free(&plan);
  return ok ? 0 : 1;
}
