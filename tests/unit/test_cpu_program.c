// The CPU program's text form (runtime/cpu_program.c): what the compiler writes parses
// back to the same text, and what a damaged or hostile model could hold is refused with
// a message, never trusted: indices out of range, copies outside their buffers, packs
// whose blocks lie outside their weight's shape, missing records.
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "alexrt_cpu.h"
#include "backends/cpu/backend.h"
#include "test.h"

static const char GOOD[] =
    "alexc-cpu-program 1\n"
    "isa avx2\n"
    "input 1 4 4\n"
    "output 3 1 1\n"
    "devices 1 64\n"
    "pack fc.weight fc.bias f32 2 3 16 16 16 1 0:3\n"
    "copy 0 -1 0 0 16 0 0 0 0 16 0 16\n"
    "run 1 0 1 0 0 0\n"
    "copy 1 0 0 16 3 0 -1 0 0 3 0 3\n";

static bool parses(const char *text) {
  RtCpuProgram p;
  char isa[16];
  int64_t in[3], out[4][3];
  bool ok = rt_cpu_program_parse(text, strlen(text), &p, isa, sizeof isa, in, out, 4);
  if (ok)
    rt_cpu_program_free(&p);
  return ok;
}

// GOOD with line `line` (0-based) replaced.
static char *with_line(int line, const char *replacement) {
  char *copy = xstrdup(GOOD), *out = xcalloc(strlen(GOOD) + strlen(replacement) + 2, 1);
  char *save = NULL;
  int i = 0;
  for (char *l = strtok_r(copy, "\n", &save); l; l = strtok_r(NULL, "\n", &save), i++) {
    strcat(out, i == line ? replacement : l);
    strcat(out, "\n");
  }
  free(copy);
  return out;
}

static void test_round_trip(void) {
  RtCpuProgram p;
  char isa[16];
  int64_t in[3], out[4][3];
  CHECK(rt_cpu_program_parse(GOOD, strlen(GOOD), &p, isa, sizeof isa, in, out, 4));
  CHECK(!strcmp(isa, "avx2") && in[0] == 1 && in[1] == 4 && out[0][0] == 3);
  CHECK(p.n_steps == 3 && p.n_packs == 1 && p.packs[0].k == 16 && !p.packs[0].bf16);
  char *text = rt_cpu_program_text(&p, isa, in, (const int64_t(*)[3])out);
  CHECK(!strcmp(text, GOOD));
  free(text);
  rt_cpu_program_free(&p);
}

static void test_refused(void) {
  static const struct {
    int line;
    const char *text, *why;
  } BAD[] = {
      {0, "alexc-cpu-program 2", "another format"},
      {2, "input 0 4 4", "an empty input"},
      {4, "devices 9 64", "more devices than there can be"},
      {5, "pack fc.weight fc.bias f32 2 3 16 16 16 1 0:4", "a block past the weight's channels"},
      {5, "pack fc.weight fc.bias f32 2 3 16 15 16 1 0:3", "k that is not the shape's"},
      {5, "pack fc.weight fc.bias f64 2 3 16 16 16 1 0:3", "an unknown type"},
      {5, "pack fc.weight fc.bias f32 2 3 16 16 16 2 0:3", "fewer blocks than announced"},
      {6, "copy 0 -1 0 0 16 0 0 0 0 16 1 16", "a copy past its image's buffer"},
      {6, "copy 0 -1 0 0 15 0 0 0 0 16 0 15", "an input stride that is not the input's"},
      {6, "copy 0 -1 0 0 16 0 1 0 0 16 0 16", "a device that does not exist"},
      {6, "copy 0 -1 0 0 16 0 0 0 60 16 0 16", "a buffer past the arena"},
      {7, "run 1 0 1 0 0 1", "a pack that does not exist"},
      {7, "run 1 3 1 0 0 0", "a device that does not exist"},
      {8, "copy 1 0 0 16 3 0 -1 1 0 3 0 3", "an output that does not exist"},
      {8, "jump 1", "an unknown record"},
  };
  CHECK(parses(GOOD));
  for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
    char *text = with_line(BAD[i].line, BAD[i].text);
    bool ok = parses(text);
    if (ok)
      fprintf(stderr, "accepted %s: %s\n", BAD[i].why, BAD[i].text);
    CHECK(!ok && strlen(rt_error()) > 0);
    free(text);
  }
  CHECK(!parses("isa avx2\n"));                  // no header
  CHECK(!parses("alexc-cpu-program 1\nisa avx2\n"));  // nothing else
}

// What the code generator writes for a real spec parses, and gives its steps back.
static void test_compiled(void) {
  Graph *g = parse_spec_file("tests/passes/graphs/branch_concat.yaml");
  CHECK(g && run_passes(g, &(PassOptions){.devices = 2, .fuse = {true, true, true, true, true,
                                                                  true}}));
  CpuTarget t;
  LLVMTargetMachineRef tm;
  CHECK(cpu_target(&(CpuOptions){.cpu = "x86-64-v3"}, &t, &tm));
  LLVMContextRef ctx = LLVMContextCreate();
  LLVMModuleRef m;
  RtCpuProgram p;
  CHECK(cpu_codegen(g, &g->output, 1, &t, ctx, &m, &p));
  int64_t in[3] = {g->nodes[0].out.c, g->nodes[0].out.h, g->nodes[0].out.w};
  int64_t out[1][3] = {{g->nodes[g->output].out.c, 1, 1}};
  char *text = rt_cpu_program_text(&p, t.isa, in, (const int64_t(*)[3])out);
  RtCpuProgram back;
  char isa[16];
  int64_t in2[3], out2[1][3];
  CHECK(rt_cpu_program_parse(text, strlen(text), &back, isa, sizeof isa, in2, out2, 1));
  CHECK(back.n_steps == p.n_steps && back.n_packs == p.n_packs && back.n_devices == 2);
  for (int i = 0; i < p.n_steps && i < back.n_steps; i++)
    CHECK(back.steps[i].kind == p.steps[i].kind && back.steps[i].node == p.steps[i].node);
  free(text);
  rt_cpu_program_free(&back);
  rt_cpu_program_free(&p);
  LLVMDisposeModule(m);
  LLVMContextDispose(ctx);
  LLVMDisposeTargetMachine(tm);
  cpu_target_free(&t);
  graph_free(g);
}

int main(void) {
  test_round_trip();
  test_refused();
  test_compiled();
  TEST_MAIN_END();
}
