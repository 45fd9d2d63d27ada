// The CPU target's schedule: which kernel runs where, and the copies between them.
//
// The module exports the program as text and the kernels as a table (see aot.c), so the
// JIT and a compiled model load the same object the same way.
//
// The program follows the graph's order, as the reference executor does: the input is
// copied to every device that holds some of it; then, node by node, each device that
// computes part of the node runs its kernel, the node's transfers copy channels between
// device arenas, and the wanted node's channels are gathered into the caller's output
// as soon as they exist (the memory plan may reuse its buffers afterwards).
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

// k_<index>_<name>_d<device>, the name reduced to [A-Za-z0-9_]: spec names may hold
// '.' and '-', which are not C identifiers (the header a bundle ships names them too).
static void kernel_symbol(const Graph *g, int i, int d, char *out, size_t size) {
  char name[64];
  size_t n = 0;
  for (const char *s = g->nodes[i].name; *s && n + 1 < sizeof name; s++)
    name[n++] = isalnum((unsigned char)*s) ? *s : '_';
  name[n] = 0;
  snprintf(out, size, "k_%d_%s_d%d", i, name, d);
}

static RtCpuStep *add_step(RtCpuProgram *p, int *cap) {
  if (p->n_steps == *cap) {
    *cap = *cap ? 2 * *cap : 64;
    p->steps = xrealloc(p->steps, *cap * sizeof *p->steps);
  }
  RtCpuStep *s = &p->steps[p->n_steps++];
  *s = (RtCpuStep){.pack = -1};
  return s;
}

// A copy of channels r of node n's output, per image: from device `from` (or the
// caller's input, -1) to device `to` (or the caller's output, -1).
static void add_copy(RtCpuProgram *p, int *cap, const Graph *g, const Node *n, int from, int to,
                     int out, Range r) {
  if (!range_len(r))
    return;
  int64_t plane = shape_plane(n->out), whole = shape_elems(n->out);
  RtCpuStep *s = add_step(p, cap);
  s->kind = RT_CPU_COPY;
  s->node = (int)(n - g->nodes);
  s->n = range_len(r) * plane;
  const Placement *pf = from >= 0 ? &n->place[from] : NULL, *pt = to >= 0 ? &n->place[to] : NULL;
  s->from = pf ? (RtCpuPlace){from, 0, pf->offset, range_len(pf->held) * plane,
                              (r.begin - pf->held.begin) * plane}
               : (RtCpuPlace){-1, 0, 0, whole, r.begin * plane};
  s->to = pt ? (RtCpuPlace){to, 0, pt->offset, range_len(pt->held) * plane,
                            (r.begin - pt->held.begin) * plane}
             : (RtCpuPlace){-1, out, 0, whole, r.begin * plane};
}

static void add_run(RtCpuProgram *p, int *cap, LLVMModuleRef m, const CpuTarget *t,
                    const Graph *g, int i, int d) {
  RtCpuStep *s = add_step(p, cap);
  s->kind = RT_CPU_RUN;
  s->node = i;
  s->device = d;
  kernel_symbol(g, i, d, s->symbol, sizeof s->symbol);
  CpuKernelInfo info;
  cpu_emit_kernel(m, t, g, i, d, s->symbol, &info);
  s->items = info.items;
  s->per_image = info.per_image;
  s->scratch = info.scratch;
  if (info.has_pack) {
    p->packs = xrealloc(p->packs, (p->n_packs + 1) * sizeof *p->packs);
    p->packs[p->n_packs] = info.pack;
    s->pack = p->n_packs++;
  }
}

// The program text and the kernel table, added to module m.
static void add_exports(LLVMModuleRef m, const RtCpuProgram *p, const char *text) {
  LLVMContextRef ctx = LLVMGetModuleContext(m);
  LLVMTypeRef i8 = LLVMInt8TypeInContext(ctx), i64 = LLVMInt64TypeInContext(ctx);
  size_t size = strlen(text);
  LLVMValueRef data = LLVMConstStringInContext(ctx, text, (unsigned)size, 0);  // NUL-terminated
  LLVMValueRef g = LLVMAddGlobal(m, LLVMTypeOf(data), "alexc_cpu_program_text");
  LLVMSetInitializer(g, data);
  LLVMSetGlobalConstant(g, 1);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  LLVMTypeRef pi64 = LLVMPointerType(i64, 0);
  LLVMValueRef f = LLVMAddFunction(m, "alexc_cpu_program_v1",
                                   LLVMFunctionType(LLVMPointerType(i8, 0), &pi64, 1, 0));
  LLVMBuilderRef b = LLVMCreateBuilderInContext(ctx);
  LLVMPositionBuilderAtEnd(b, LLVMAppendBasicBlockInContext(ctx, f, "entry"));
  LLVMBuildStore(b, LLVMConstInt(i64, size, 0), LLVMGetParam(f, 0));
  LLVMValueRef zero = LLVMConstInt(i64, 0, 0), idx[] = {zero, zero};
  LLVMBuildRet(b, LLVMConstInBoundsGEP2(LLVMTypeOf(data), g, idx, 2));
  LLVMDisposeBuilder(b);

  int n = 0;
  for (int i = 0; i < p->n_steps; i++)
    n += p->steps[i].kind == RT_CPU_RUN;
  LLVMTypeRef ptr = LLVMPointerType(i8, 0);
  LLVMValueRef *fns = xcalloc(n ? n : 1, sizeof *fns);
  for (int i = 0, k = 0; i < p->n_steps; i++)
    if (p->steps[i].kind == RT_CPU_RUN)
      fns[k++] = LLVMConstBitCast(LLVMGetNamedFunction(m, p->steps[i].symbol), ptr);
  LLVMValueRef table = LLVMConstArray(ptr, fns, (unsigned)n);
  LLVMValueRef t = LLVMAddGlobal(m, LLVMTypeOf(table), "alexc_cpu_kernels_v1");
  LLVMSetInitializer(t, table);
  LLVMSetGlobalConstant(t, 1);
  free(fns);
}

bool cpu_codegen(const Graph *g, const int *want, int n_want, const CpuTarget *t,
                 LLVMContextRef ctx, LLVMModuleRef *module, RtCpuProgram *p) {
  if (!g->planned || g->n_devices < 1 || g->n_devices > 8) {
    error("cpu: the graph must be planned (fuse, partition, memplan) before code generation");
    return false;
  }
  LLVMModuleRef m = LLVMModuleCreateWithNameInContext(g->name, ctx);
  *p = (RtCpuProgram){.n_devices = g->n_devices};
  for (int d = 0; d < g->n_devices; d++)
    p->arena[d] = g->arena[d];
  p->in_elems = shape_elems(g->nodes[0].out);
  p->n_outputs = n_want;
  p->out_elems = xcalloc(n_want ? n_want : 1, sizeof *p->out_elems);
  for (int k = 0; k < n_want; k++)
    p->out_elems[k] = shape_elems(g->nodes[want[k]].out);
  int cap = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const Node *n = &g->nodes[i];
    for (int d = 0; d < g->n_devices; d++) {
      if (i == 0)
        add_copy(p, &cap, g, n, -1, d, 0, n->place[d].held);
      else if (range_len(n->place[d].stage[n->n_epilogue]))
        add_run(p, &cap, m, t, g, i, d);
    }
    for (int k = 0; k < g->n_transfers; k++)
      if (g->transfers[k].node == i)
        add_copy(p, &cap, g, n, g->transfers[k].from, g->transfers[k].to, 0,
                 g->transfers[k].range);
    for (int k = 0; k < n_want; k++)
      if (want[k] == i)
        for (int d = 0; d < g->n_devices; d++)
          add_copy(p, &cap, g, n, d, -1, k,
                   i == 0 ? (d ? (Range){0, 0} : n->place[0].held)
                          : n->place[d].stage[n->n_epilogue]);
  }
  int64_t in_shape[3] = {g->nodes[0].out.c, g->nodes[0].out.h, g->nodes[0].out.w};
  int64_t (*out_shapes)[3] = xcalloc(n_want ? n_want : 1, sizeof *out_shapes);
  for (int k = 0; k < n_want; k++) {
    Shape s = g->nodes[want[k]].out;
    out_shapes[k][0] = s.c, out_shapes[k][1] = s.h, out_shapes[k][2] = s.w;
  }
  char *text = rt_cpu_program_text(p, t->isa, in_shape, (const int64_t(*)[3])out_shapes);
  add_exports(m, p, text);
  free(text);
  free(out_shapes);
  *module = m;
  return true;
}

