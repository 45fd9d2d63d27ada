// Ahead-of-time CPU models: the JIT's module, plus the program as text and a table of
// its kernels, as an object file; linked into a shared object (`alexc compile --target
// cpu -o model.so`, with a C header describing it) or, with the runtime and a small
// main (runtime/tools/classify.c), into a standalone executable (`alexc build`).
//
// What a model exports (the header says the same in C):
//   const char *alexc_cpu_program_v1(unsigned long long *size);  the program's text
//   const RtCpuKernel alexc_cpu_kernels_v1[];                     its kernels, in run order
// The "v1" is the format: a runtime that does not know a later one fails to link or
// to find it, rather than misread it.
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../llvm/bundle.h"
#include "backend.h"

// The model's object code written to obj_path; false after a message. *hash is the
// object's content hash (a linked result can be cached under it).
static bool model_object(const Graph *g, const CpuOptions *o, const char *obj_path, CpuTarget *t,
                         uint64_t *hash) {
  uint8_t *obj;
  size_t size;
  if (!cpu_object(g, &g->output, 1, o, t, &obj, &size))
    return false;
  *hash = fnv1a(FNV_OFFSET, obj, size);
  bool ok = rt_write_file_atomic(obj_path, obj, size);
  if (!ok)
    error("%s", rt_error());
  free(obj);
  return ok;
}

// Copies a cached file to `to`; false if there is none.
static bool from_cache(const char *cached, const char *to) {
  uint8_t *data;
  size_t size;
  if (!cached || !rt_read_file(cached, (size_t)1 << 30, &data, &size))
    return false;
  bool ok = rt_write_file_atomic(to, data, size);
  free(data);
  return ok;
}

// A C identifier from the graph's name: "alexnet" -> ALEXNET, for the header's macros.
static void macro_name(const char *name, char *out, size_t size) {
  size_t n = 0;
  for (; *name && n + 1 < size; name++)
    out[n++] = isalnum((unsigned char)*name) ? (char)toupper((unsigned char)*name) : '_';
  out[n] = 0;
}

static bool write_header(const Graph *g, const CpuTarget *t, const char *so, const char *path) {
  char m[80];
  macro_name(g->name, m, sizeof m);
  const Node *in = &g->nodes[0], *out = &g->nodes[g->output];
  char *text = format(
      "// %s: the network '%s' compiled by alexc for the CPU (%s, %s code).\n"
      "// Load it with the alexc runtime (runtime/alexrt_cpu.h): the program text and the\n"
      "// kernel table below are what rt_cpu_program_parse and rt_cpu_load take.\n"
      "#ifndef ALEXC_MODEL_%s_H\n#define ALEXC_MODEL_%s_H\n\n"
      "// Per-image input (C, H, W) and output shapes; batches are (N, ...) float32.\n"
      "#define %s_INPUT_C %lld\n#define %s_INPUT_H %lld\n#define %s_INPUT_W %lld\n"
      "#define %s_OUTPUT_C %lld\n#define %s_OUTPUT_H %lld\n#define %s_OUTPUT_W %lld\n"
      "#define %s_ISA \"%s\"  // what the CPU must have\n\n"
      "typedef void (*alexc_cpu_kernel)(float *arena, const float *weights, float *scratch,\n"
      "                                 long long batch, long long begin, long long end);\n"
      "// The program's text (runtime/cpu_program.c) and its size.\n"
      "const char *alexc_cpu_program_v1(unsigned long long *size);\n"
      "// The kernels, in the order of the program's 'run' lines.\n"
      "extern const alexc_cpu_kernel alexc_cpu_kernels_v1[];\n\n#endif\n",
      so, g->name, t->cpu, t->isa, m, m, m, (long long)in->out.c, m, (long long)in->out.h, m,
      (long long)in->out.w, m, (long long)out->out.c, m, (long long)out->out.h, m,
      (long long)out->out.w, m, t->isa);
  bool ok = rt_write_file_atomic(path, text, strlen(text));
  if (!ok)
    error("%s", rt_error());
  free(text);
  return ok;
}

// PATH.tmp.PID.SUFFIX, beside the output so a rename replaces it atomically.
static char *temp_beside(const char *path, const char *suffix) {
  return format("%s.tmp.%ld%s", path, (long)getpid(), suffix);
}

static bool finish(bool ok, const char *tmp, const char *path) {
  if (ok && rename(tmp, path) != 0) {
    error("%s: cannot write: %s", path, strerror(errno));
    ok = false;
  }
  if (!ok)
    remove(tmp);
  return ok;
}

bool cpu_write_so(const Graph *g, const CpuOptions *o, const char *path, const char *header) {
  char *obj = temp_beside(path, ".o"), *so = temp_beside(path, ".so");
  CpuTarget t = {0};
  uint64_t hash = 0;
  bool ok = model_object(g, o, obj, &t, &hash);
  // Linking is most of a repeated compile's time: the linked object is cached too.
  char *dir = cache_dir(), *cached = dir ? format("%s/%016llx.so", dir, (unsigned long long)hash) : NULL;
  if (ok && !from_cache(cached, so)) {
    const char *args[] = {"-shared", "-o", so, obj, "-lm"};
    ok = llvm_cc(args, 5, path, "the model");
    if (ok && cached)
      from_cache(so, cached);
  }
  remove(obj);
  ok = finish(ok, so, path);
  free(cached);
  free(dir);
  if (ok && header)
    ok = write_header(g, &t, path, header);
  if (t.features)
    cpu_target_free(&t);
  free(obj);
  free(so);
  return ok;
}

bool cpu_write_executable(const Graph *g, const CpuOptions *o, const char *path,
                          const char *runner_dir) {
  char *obj = temp_beside(path, ".o"), *exe = temp_beside(path, ".exe");
  char *runner = format("%s/libalexc_classify.a", runner_dir);
  char *runtime = format("%s/libalexrt.a", runner_dir);
  CpuTarget t = {0};
  bool ok = access(runner, R_OK) == 0 && access(runtime, R_OK) == 0;
  if (!ok)
    error("%s: the runtime to link is missing (%s, %s): build alexc with cmake first", path,
          runner, runtime);
  uint64_t hash;
  ok = ok && model_object(g, o, obj, &t, &hash);
  if (ok) {
    // The libraries the runtime needs, as the build found them (ALEXC_RUNTIME_LIBS).
    const char *args[64] = {"-o", exe, obj, runner, runtime};
    int n = 5;
    char *libs = xstrdup(ALEXC_RUNTIME_LIBS), *save = NULL;
    for (char *w = strtok_r(libs, " ;", &save); w && n < 60; w = strtok_r(NULL, " ;", &save))
      args[n++] = w;
    ok = llvm_cc(args, n, path, "the executable");
    free(libs);
  }
  remove(obj);
  ok = finish(ok, exe, path);
  if (t.features)
    cpu_target_free(&t);
  free(runner);
  free(runtime);
  free(obj);
  free(exe);
  return ok;
}
