// A CPU model as a shared object (`alexc compile --target cpu -o MODEL.so`): opened with
// dlopen after its ELF headers are checked in its bytes, its program parsed and checked
// (runtime/cpu_program.c), its kernels bound from its table. The library stays open
// while the model is used: the kernels are its code. Loading a .so runs its code: trust
// it as any library.
//
// Also the weight lookup a CPU model needs from a safetensors file: each tensor read
// once, as float32, with the shape the program says (anything else is refused).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alexrt.h"
#include "alexrt_cpu.h"
#include "internal.h"

typedef const char *(*ProgramFn)(unsigned long long *size);

int rt_cpu_bundle_open(const char *path, RtCpuBundle *b) {
  *b = (RtCpuBundle){0};
  uint8_t *data;
  size_t size;
  if (!rt_read_file(path, RT_MAX_FILE, &data, &size))
    return -1;
  bool elf = size >= 4 && !memcmp(data, "\177ELF", 4);
  bool ok = !elf || rt_check_elf(path, data, size);
  free(data);
  if (!elf || !ok)
    return ok ? 0 : -1;
  // A name without a slash would be searched for in the library path, not opened here.
  char *local = strchr(path, '/') ? NULL : malloc(strlen(path) + 3);
  if (local)
    sprintf(local, "./%s", path);
  b->lib = dlopen(local ? local : path, RTLD_NOW | RTLD_LOCAL);
  free(local);
  if (!b->lib) {
    rt_fail("%s: cannot load: %s", path, dlerror());
    return -1;
  }
  ProgramFn program = (ProgramFn)dlsym(b->lib, "alexc_cpu_program_v1");
  const RtCpuKernel *kernels = dlsym(b->lib, "alexc_cpu_kernels_v1");
  if (!program || !kernels) {
    dlclose(b->lib);
    b->lib = NULL;
    return 0;  // a library, but not a CPU model
  }
  unsigned long long text_size = 0;
  const char *text = program(&text_size);
  if (!rt_cpu_program_parse(text, text_size, &b->program, b->isa, sizeof b->isa, b->in_shape,
                            b->out_shape, 1)) {
    rt_fail("%s: %s", path, rt_error());
    rt_cpu_bundle_close(b);
    return -1;
  }
  if (!rt_cpu_host_has(b->isa)) {
    rt_fail("%s: compiled for %s, which this CPU does not have (compile with --cpu x86-64-v3 "
            "or x86-64)", path, b->isa);
    rt_cpu_bundle_close(b);
    return -1;
  }
  for (int i = 0, k = 0; i < b->program.n_steps; i++)
    if (b->program.steps[i].kind == RT_CPU_RUN)
      b->program.steps[i].fn = kernels[k++];
  return 1;
}

void rt_cpu_bundle_close(RtCpuBundle *b) {
  rt_cpu_program_free(&b->program);
  if (b->lib)
    dlclose(b->lib);
  b->lib = NULL;
}

// ---------------------------------------------------------------- weights

bool rt_cpu_weights_open(const char *path, RtCpuWeights *w) {
  *w = (RtCpuWeights){0};
  if (!rt_st_open(path, &w->st))
    return false;
  w->data = calloc(w->st.n ? w->st.n : 1, sizeof *w->data);
  if (!w->data) {
    rt_st_close(&w->st);
    return rt_fail("%s: out of memory", path);
  }
  return true;
}

const float *rt_cpu_weight(void *ctx, const char *name, int rank, const int64_t *dims) {
  RtCpuWeights *w = ctx;
  for (int i = 0; i < w->st.n; i++) {
    const RtStEntry *e = &w->st.entries[i];
    if (strcmp(e->name, name))
      continue;
    if (!w->data[i]) {
      int64_t n = 1;
      for (int d = 0; d < rank; d++)
        n *= dims[d];
      w->data[i] = malloc((size_t)n * sizeof(float) + 1);
      if (!w->data[i])
        rt_fail("%s: out of memory reading '%s'", w->st.path, name);
      else if (!rt_st_read_f32(&w->st, name, rank, dims, w->data[i])) {
        free(w->data[i]);
        w->data[i] = NULL;
      }
    }
    return w->data[i];
  }
  rt_fail("%s: no tensor '%s'", w->st.path, name);
  return NULL;
}

void rt_cpu_weights_close(RtCpuWeights *w) {
  for (int i = 0; w->data && i < w->st.n; i++)
    free(w->data[i]);
  free(w->data);
  if (w->st.entries)
    rt_st_close(&w->st);
  *w = (RtCpuWeights){0};
}
