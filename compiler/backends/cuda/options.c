// The CUDA target's options: their defaults, parsing (--conv, per layer), the names
// they print under, and the tolerance each precision is held to. What the code
// generator (schedule.c, render.c) and the commands read; nothing here generates code.
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "cuda.h"

CudaOptions cuda_defaults(void) {
  return (CudaOptions){.conv = CUDA_CONV_GEMM, .scratch_bytes = CUDA_SCRATCH_BYTES};
}

// fp32: float sums in another order than the reference's (measured <= 4.4e-6).
// tf32 and bf16 round every GEMM operand to 10 and 7 mantissa bits (unit roundoff 2^-11
// and 2^-8); through AlexNet's eight GEMMs that reached 2.8e-3 (tf32) and 8.1e-3 (bf16)
// at worst over every spec in the CPU emulation, which rounds exactly as the tensor
// cores' inputs are rounded. The limits are about 3.5x those: wrong data (an offset, a
// group, a bias) moves outputs by far more (0.78 for a misplaced group's columns).
double cuda_tolerance(RtPrecision p) {
  switch (p) {
  case RT_FP32: return 1e-4;
  case RT_TF32: return 1e-2;
  case RT_BF16: return 3e-2;
  }
  return 0;
}

bool cuda_parse_conv(const char *name, CudaConv *out) {
  if (!strcmp(name, "gemm"))
    *out = CUDA_CONV_GEMM;
  else if (!strcmp(name, "direct"))
    *out = CUDA_CONV_DIRECT;
  else if (!strcmp(name, "implicit"))
    *out = CUDA_CONV_IMPLICIT;
  else if (!strcmp(name, "fused"))
    *out = CUDA_CONV_FUSED;
  else
    return false;
  return true;
}

bool cuda_parse_conv_option(const char *arg, CudaOptions *o, char *err, size_t size) {
  char *list = strdup(arg), *rest = list;
  bool ok = list != NULL;
  o->conv = CUDA_CONV_GEMM;
  o->n_layer_convs = 0;
  // strsep, not strtok: an empty item ("gemm,,conv1=fused", "gemm,") is an error too.
  for (char *item; ok && (item = strsep(&rest, ",")) != NULL;) {
    char *eq = strchr(item, '=');
    if (!eq) {
      ok = cuda_parse_conv(item, &o->conv);
    } else if (o->n_layer_convs == CUDA_MAX_LAYER_CONVS) {
      snprintf(err, size, "--conv: at most %d layer choices", CUDA_MAX_LAYER_CONVS);
      free(list);
      return false;
    } else {
      CudaLayerConv *c = &o->layer_conv[o->n_layer_convs];
      *eq = '\0';
      ok = *item && strlen(item) < sizeof c->layer && cuda_parse_conv(eq + 1, &c->conv);
      if (ok)
        snprintf(c->layer, sizeof c->layer, "%s", item);
      o->n_layer_convs += ok;
      *eq = '=';  // the item as given, for the message
    }
    if (!ok)
      snprintf(err, size, "--conv wants gemm, direct, implicit or fused, or a list such as "
                          "'gemm,conv1=fused', not '%s'", *item ? item : arg);
  }
  free(list);
  return ok;
}

CudaConv cuda_conv_of(const CudaOptions *o, const Node *n) {
  for (int i = 0; i < o->n_layer_convs; i++)
    if (!strcmp(o->layer_conv[i].layer, n->name))
      return o->layer_conv[i].conv;
  return o->conv;
}

void cuda_describe_conv(const CudaOptions *o, char *buf, size_t size) {
  int at = snprintf(buf, size, "%s", cuda_conv_name(o->conv));
  for (int i = 0; i < o->n_layer_convs && at >= 0 && (size_t)at < size; i++)
    at += snprintf(buf + at, size - at, ",%s=%s", o->layer_conv[i].layer,
                   cuda_conv_name(o->layer_conv[i].conv));
}

const char *cuda_conv_name(CudaConv c) {
  static const char *const NAMES[] = {[CUDA_CONV_GEMM] = "gemm", [CUDA_CONV_DIRECT] = "direct",
                                       [CUDA_CONV_IMPLICIT] = "implicit", [CUDA_CONV_FUSED] = "fused"};
  return NAMES[c];
}

char *cuda_describe_options(const PassOptions *o) {
  char fusion[256] = "";
  int on = 0, at = 0;
  for (int p = 0; p < FUSE_COUNT; p++)
    if (o->fuse[p] && at < (int)sizeof fusion)
      at += snprintf(fusion + at, sizeof fusion - at, "%s%s", on++ ? "," : "fusion ",
                     fuse_pattern_name(p));
  const char *what = on == FUSE_COUNT ? "fused" : on == 0 ? "unfused" : fusion;
  return format("%s, %d device%s", what, o->devices, o->devices == 1 ? "" : "s");
}
