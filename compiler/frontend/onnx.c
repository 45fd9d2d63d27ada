// The ONNX importer: an ONNX model (protobuf, parsed by protobuf-c from the checked-in
// third_party/onnx/onnx.proto) made of the ops alexc has -> spec text and weights.
//
// The model is untrusted input: the file size, the node and tensor counts and every
// tensor's dims are bounded, and each tensor's data must be exactly what its dims and
// dtype say. Conventions are converted (ONNX's LRN divides alpha by size, the spec's
// does not; Gemm's transB, alpha and beta and MatMul's (in, out) weights become an fc
// layer's (out, in) weight and bias). What the spec cannot express (dilations,
// non-square windows, SAME_LOWER padding) is refused with a message naming the node.
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alexc.h"
#include "onnx.pb-c.h"

#define MAX_ONNX_BYTES ((size_t)2 << 30)  // 2 GiB: protobuf's own message limit
#define MAX_ONNX_NODES 8192               // twice the spec's 4096 layers (Constant nodes)
#define MAX_ONNX_TENSORS 8192
#define MAX_LAYERS 4096  // the spec's limit
#define MAX_NAME MAX_LAYER_NAME
#define MAX_DIM ((int64_t)1 << 20)  // the spec's largest size of one dimension
#define MAX_PROBLEMS 20             // unsupported ops listed before "and N more"

typedef struct {
  char *name;      // the ONNX value's name
  int layer;       // the layer computing it; -1 for the network input
  Shape shape;     // per image
  bool is_const;   // an initializer or a Constant node's output: `tensor` holds it
  const Onnx__TensorProto *tensor;
} Value;

typedef struct {
  char name[MAX_NAME + 1];
  OpKind op;
  const Onnx__NodeProto *node;  // for messages
  int inputs[64], n_inputs;     // layer indices; -1 is the network input
  Shape out;
  ConvAttrs conv;
  LrnAttrs lrn;
  PoolAttrs pool;
  FcAttrs fc;
  double p;
  float *weight, *bias;  // owned until moved into the Weights
  int64_t wdims[4];
  int wrank;
} Layer;

typedef struct {
  const char *path;
  Onnx__ModelProto *model;
  Onnx__GraphProto *g;
  int64_t opset, batch;
  Value *vals;
  int n_vals, cap_vals;
  Layer *layers;
  int n_layers;
} Importer;

// ---------------------------------------------------------------- messages

static const char *node_name(const Onnx__NodeProto *n) {
  return *n->name ? n->name : "(unnamed)";
}

// "alexc: error: FILE: node 'NAME' (OP): ..."
static bool node_error(const Importer *im, const Onnx__NodeProto *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool node_error(const Importer *im, const Onnx__NodeProto *n, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  error("%s: node '%.80s' (%.40s): %s", im->path, node_name(n), n->op_type, msg);
  return false;
}

// ---------------------------------------------------------------- the ops and attributes

static const struct {
  const char *op;
  const char *const attrs[8];
} SUPPORTED[] = {
    {"Conv", {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"}},
    {"Relu", {0}},
    {"LRN", {"alpha", "beta", "bias", "size"}},
    {"MaxPool", {"kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad",
                 "storage_order"}},
    {"Gemm", {"alpha", "beta", "transA", "transB"}},
    {"MatMul", {0}},
    {"Add", {0}},  // only as a MatMul's bias
    {"Flatten", {"axis"}},
    {"Reshape", {"allowzero"}},  // only to (N, features)
    {"Dropout", {"ratio", "seed", "is_test"}},
    {"Concat", {"axis"}},
    {"Softmax", {"axis"}},
    {"Identity", {0}},
    {"Constant", {"value"}},
    // Only as the identity: torchvision's AdaptiveAvgPool2d((6, 6)) on a 6x6 input.
    {"AveragePool", {"kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad",
                     "auto_pad"}},
};
#define N_SUPPORTED ((int)(sizeof SUPPORTED / sizeof *SUPPORTED))

static int supported_op(const char *op) {
  for (int i = 0; i < N_SUPPORTED; i++)
    if (!strcmp(SUPPORTED[i].op, op))
      return i;
  return -1;
}

static bool known_attr(int op, const char *name) {
  for (int i = 0; i < 8 && SUPPORTED[op].attrs[i]; i++)
    if (!strcmp(SUPPORTED[op].attrs[i], name))
      return true;
  return false;
}

// Lists every node whose op or attribute alexc lacks, so that one run shows all a
// model would need rather than the first.
static bool check_supported(const Importer *im) {
  char *list = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&list, &size);
  int problems = 0;
  for (size_t i = 0; i < im->g->n_node; i++) {
    const Onnx__NodeProto *n = im->g->node[i];
    int op = supported_op(n->op_type);
    bool std_domain = !*n->domain || !strcmp(n->domain, "ai.onnx");
    if (op < 0 || !std_domain) {
      if (problems++ < MAX_PROBLEMS)
        fprintf(f, "\n  node '%.80s': op '%.40s%s%.40s' is not supported", node_name(n),
                std_domain ? "" : n->domain, std_domain ? "" : ".", n->op_type);
      continue;
    }
    for (size_t a = 0; a < n->n_attribute; a++)
      if (!known_attr(op, n->attribute[a]->name) && problems++ < MAX_PROBLEMS)
        fprintf(f, "\n  node '%.80s' (%s): attribute '%.40s' is not supported", node_name(n),
                n->op_type, n->attribute[a]->name);
  }
  if (problems > MAX_PROBLEMS)
    fprintf(f, "\n  ... and %d more", problems - MAX_PROBLEMS);
  fclose(f);
  if (problems)
    error("%s: %d unsupported op%s or attribute%s (alexc imports Conv, Relu, LRN, MaxPool, "
          "Gemm, MatMul+Add, Flatten, Reshape, Dropout, Concat, Softmax, Identity, "
          "Constant, 1x1 AveragePool):%s",
          im->path, problems, problems > 1 ? "s" : "", problems > 1 ? "s" : "", list);
  free(list);
  return problems == 0;
}

static const Onnx__AttributeProto *attr(const Onnx__NodeProto *n, const char *name) {
  for (size_t i = 0; i < n->n_attribute; i++)
    if (!strcmp(n->attribute[i]->name, name))
      return n->attribute[i];
  return NULL;
}

static bool attr_int(const Importer *im, const Onnx__NodeProto *n, const char *name, int64_t def,
                     int64_t *out) {
  const Onnx__AttributeProto *a = attr(n, name);
  *out = def;
  if (!a)
    return true;
  if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT)
    return node_error(im, n, "attribute '%s' is not an integer", name);
  *out = a->i;
  return true;
}

static bool attr_float(const Importer *im, const Onnx__NodeProto *n, const char *name,
                       double def, double *out) {
  const Onnx__AttributeProto *a = attr(n, name);
  *out = def;
  if (!a)
    return true;
  if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
    return node_error(im, n, "attribute '%s' is not a float", name);
  *out = a->f;
  return true;
}

// An INTS attribute of `want` values (all `def` when absent).
static bool attr_ints(const Importer *im, const Onnx__NodeProto *n, const char *name, int want,
                      int64_t def, int64_t *out) {
  const Onnx__AttributeProto *a = attr(n, name);
  for (int i = 0; i < want; i++)
    out[i] = def;
  if (!a)
    return true;
  if (a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS || (int)a->n_ints != want)
    return node_error(im, n, "attribute '%s' should be a list of %d integers", name, want);
  for (int i = 0; i < want; i++)
    out[i] = a->ints[i];
  return true;
}

static bool in_range(const Importer *im, const Onnx__NodeProto *n, const char *what, double v,
                     double lo, double hi) {
  if (v >= lo && v <= hi)  // false for NaN
    return true;
  return node_error(im, n, "%s %g is outside what alexc supports (%g to %g)", what, v, lo, hi);
}

// ---------------------------------------------------------------- tensors

static const char *dtype_name(int t) {
  static const char *const names[] = {"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16",
                                      "INT32", "INT64", "STRING", "BOOL", "FLOAT16", "DOUBLE",
                                      "UINT32", "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16"};
  return t >= 0 && t < (int)(sizeof names / sizeof *names) ? names[t] : "an unknown type";
}

// Checks a tensor's dims (at most 4, each 0 to 2^31 - 1, fewer than 2^31 elements).
static bool tensor_elems(const Importer *im, const Onnx__NodeProto *n, const Onnx__TensorProto *t,
                         int64_t *elems) {
  if (t->n_dims > 4)
    return node_error(im, n, "tensor '%.80s' has %zu dimensions; at most 4 are supported",
                      t->name, t->n_dims);
  int64_t e = 1;
  for (size_t i = 0; i < t->n_dims; i++) {
    if (t->dims[i] < 0 || t->dims[i] >= MAX_ELEMS)
      return node_error(im, n, "tensor '%.80s' has a bad dimension %lld", t->name,
                        (long long)t->dims[i]);
    e *= t->dims[i];
    if (e >= MAX_ELEMS)
      return node_error(im, n, "tensor '%.80s' has 2^31 elements or more", t->name);
  }
  if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
    return node_error(im, n, "tensor '%.80s' keeps its data in an external file, which alexc "
                             "does not read", t->name);
  *elems = e;
  return true;
}

// The data of a float32 tensor (raw_data or float_data, exactly its dims' size), copied.
static float *tensor_floats(const Importer *im, const Onnx__NodeProto *n,
                            const Onnx__TensorProto *t, int64_t *elems) {
  if (!tensor_elems(im, n, t, elems))
    return NULL;
  if (t->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) {
    node_error(im, n, "tensor '%.80s' holds %s data; alexc imports float32 weights only",
               t->name, dtype_name(t->data_type));
    return NULL;
  }
  size_t have = t->has_raw_data ? t->raw_data.len / 4 : t->n_float_data;
  if ((t->has_raw_data && t->raw_data.len % 4) || have != (size_t)*elems) {
    node_error(im, n, "tensor '%.80s' has %zu bytes of data; its dims need %lld float32 values "
                      "(%lld bytes)", t->name, t->has_raw_data ? t->raw_data.len : have * 4,
               (long long)*elems, (long long)*elems * 4);
    return NULL;
  }
  float *d = xcalloc(*elems ? *elems : 1, sizeof(float));
  // raw_data is little-endian, as are the hosts alexc runs on (x86-64, AArch64).
  if (*elems)
    memcpy(d, t->has_raw_data ? (const void *)t->raw_data.data : (const void *)t->float_data,
           *elems * sizeof(float));
  return d;
}

// The values of a small int64 tensor (a Reshape's shape): at most `cap` of them.
static bool tensor_int64s(const Importer *im, const Onnx__NodeProto *n, const Onnx__TensorProto *t,
                          int64_t *out, int cap, int *count) {
  int64_t e;
  if (!tensor_elems(im, n, t, &e))
    return false;
  if (t->data_type != ONNX__TENSOR_PROTO__DATA_TYPE__INT64 || e > cap)
    return node_error(im, n, "tensor '%.80s' should be at most %d int64 values", t->name, cap);
  size_t have = t->has_raw_data ? t->raw_data.len / 8 : t->n_int64_data;
  if ((t->has_raw_data && t->raw_data.len % 8) || have != (size_t)e)
    return node_error(im, n, "tensor '%.80s' has data of the wrong size for its dims", t->name);
  if (e)
    memcpy(out, t->has_raw_data ? (const void *)t->raw_data.data : (const void *)t->int64_data,
           e * 8);
  *count = (int)e;
  return true;
}

// ---------------------------------------------------------------- values

static Value *find_value(const Importer *im, const char *name) {
  for (int i = im->n_vals - 1; i >= 0; i--)  // the latest definition wins
    if (!strcmp(im->vals[i].name, name))
      return &im->vals[i];
  return NULL;
}

static Value *add_value(Importer *im, const char *name) {
  if (im->n_vals == im->cap_vals) {
    im->cap_vals = im->cap_vals ? 2 * im->cap_vals : 64;
    im->vals = xrealloc(im->vals, im->cap_vals * sizeof *im->vals);
  }
  Value *v = &im->vals[im->n_vals++];
  *v = (Value){.name = xstrdup(name), .layer = -1};
  return v;
}

// How many nodes (and graph outputs) read value `name`.
static int uses(const Importer *im, const char *name) {
  int k = 0;
  for (size_t i = 0; i < im->g->n_node; i++)
    for (size_t j = 0; j < im->g->node[i]->n_input; j++)
      k += !strcmp(im->g->node[i]->input[j], name);
  for (size_t i = 0; i < im->g->n_output; i++)
    k += !strcmp(im->g->output[i]->name, name);
  return k;
}

// Input j of node n, which must be a tensor computed by the network (not a constant).
static Value *data_input(const Importer *im, const Onnx__NodeProto *n, size_t j) {
  if (j >= n->n_input || !*n->input[j]) {
    node_error(im, n, "input %zu is missing", j + 1);
    return NULL;
  }
  Value *v = find_value(im, n->input[j]);
  if (!v)
    node_error(im, n, "reads '%.80s', which no earlier node computes", n->input[j]);
  else if (v->is_const) {
    node_error(im, n, "input '%.80s' is a constant; alexc wants a computed tensor here",
               n->input[j]);
    v = NULL;
  }
  return v;
}

// Input j of node n, which must be an initializer or a Constant's output; NULL (and no
// message) when it is optional and absent.
static const Onnx__TensorProto *const_input(const Importer *im, const Onnx__NodeProto *n,
                                            size_t j, bool optional, bool *ok) {
  *ok = true;
  if (j >= n->n_input || !*n->input[j]) {
    if (!optional)
      *ok = node_error(im, n, "input %zu is missing", j + 1);
    return NULL;
  }
  Value *v = find_value(im, n->input[j]);
  if (!v || !v->is_const) {
    *ok = node_error(im, n, "input '%.80s' must be a constant (an initializer): alexc "
                            "imports weights, not computed ones", n->input[j]);
    return NULL;
  }
  return v->tensor;
}

// ---------------------------------------------------------------- layer names

// The spec's rule, and not "input", which names the network input there.
static bool valid_name(const char *s) { return layer_name_ok(s) && strcmp(s, "input") != 0; }

static bool name_taken(const Importer *im, const char *s) {
  for (int i = 0; i < im->n_layers; i++)
    if (!strcmp(im->layers[i].name, s))
      return true;
  return false;
}

// A valid name from any string: other characters become '_', a leading digit or dot
// gets a '_' before it, and it is cut to the length limit.
static void sanitize(const char *s, char *out) {
  size_t k = 0;
  while (*s == '/')
    s++;
  if (!(isalpha((unsigned char)*s) || *s == '_'))
    out[k++] = '_';
  for (; *s && k < MAX_NAME; s++)
    out[k++] = isalnum((unsigned char)*s) || strchr("_.-", *s) ? *s : '_';
  out[k] = 0;
}

// Names layer L after (in order of preference) its weight's prefix ("features.0" from
// "features.0.weight", so torchvision's state_dict names survive), the module path in
// PyTorch's node name ("features.1" from "/features/features.1/Relu"), the sanitized
// node name, or its op; a name already taken gets "_2", "_3", ...
static void name_layer(Importer *im, Layer *L, const char *weight) {
  char cand[4][MAX_NAME + 32] = {"", "", "", ""};
  size_t wl = weight ? strlen(weight) : 0;
  if (wl > 7 && wl - 7 <= MAX_NAME && !strcmp(weight + wl - 7, ".weight"))
    snprintf(cand[0], sizeof cand[0], "%.*s", (int)(wl - 7), weight);
  const char *nm = L->node->name;
  const char *last = strrchr(nm, '/');
  if (nm[0] == '/' && last && last > nm) {
    const char *prev = last - 1;
    while (prev > nm && *prev != '/')
      prev--;
    if (last - prev - 1 <= MAX_NAME)
      snprintf(cand[1], sizeof cand[1], "%.*s", (int)(last - prev - 1), prev + 1);
  }
  if (*nm)
    sanitize(nm, cand[2]);
  snprintf(cand[3], sizeof cand[3], "%s", op_name(L->op));
  for (int i = 0; i < 4; i++)
    if (valid_name(cand[i]) && !name_taken(im, cand[i])) {
      snprintf(L->name, sizeof L->name, "%.64s", cand[i]);
      return;
    }
  const char *base = valid_name(cand[2]) ? cand[2] : cand[3];
  for (int k = 2;; k++) {
    char suffix[16];
    int sl = snprintf(suffix, sizeof suffix, "_%d", k);
    snprintf(L->name, sizeof L->name, "%.*s%s", MAX_NAME - sl, base, suffix);
    if (!name_taken(im, L->name))
      return;
  }
}

// ---------------------------------------------------------------- layers

static Layer *add_layer(Importer *im, const Onnx__NodeProto *n, OpKind op, const Value *const *in,
                        int n_in) {
  if (im->n_layers == MAX_LAYERS) {
    node_error(im, n, "the model has more than %d layers, the spec's limit", MAX_LAYERS);
    return NULL;
  }
  Layer *L = &im->layers[im->n_layers];
  *L = (Layer){.op = op, .node = n, .n_inputs = n_in};
  for (int i = 0; i < n_in; i++)
    L->inputs[i] = in[i]->layer;
  return L;
}

// Registers layer L (named after `weight`) as the producer of the node's first output.
static bool finish_layer(Importer *im, Layer *L, const char *weight) {
  name_layer(im, L, weight);
  im->n_layers++;
  Value *v = add_value(im, L->node->output[0]);
  v->layer = (int)(L - im->layers);
  v->shape = L->out;
  return true;
}

// The node's first output names the same tensor as value `v` (Identity, Flatten of a
// flat tensor, Dropout's data).
static bool alias(Importer *im, const Onnx__NodeProto *n, const Value *v) {
  int layer = v->layer;
  Shape s = v->shape;
  Value *a = add_value(im, n->output[0]);
  a->layer = layer;
  a->shape = s;
  return true;
}

static bool need_rank3(const Importer *im, const Onnx__NodeProto *n, const Value *v) {
  if (v->shape.rank == 3)
    return true;
  return node_error(im, n, "its input '%.80s' is a flat vector; it needs an N×C×H×W tensor",
                    v->name);
}

static bool attr_is(const Onnx__AttributeProto *a, const char *value) {
  return a->has_s && a->s.len == strlen(value) && !memcmp(a->s.data, value, a->s.len);
}

// auto_pad NOTSET (explicit pads), VALID (none) or SAME_UPPER (the spec's `pad: same`,
// *same set); SAME_LOWER puts the odd pixel first, which the spec cannot say.
static bool auto_pad(const Importer *im, const Onnx__NodeProto *n, bool *same) {
  const Onnx__AttributeProto *a = attr(n, "auto_pad");
  *same = a && attr_is(a, "SAME_UPPER");
  if (!a || *same || attr_is(a, "NOTSET") || attr_is(a, "VALID"))
    return true;
  char shown[41] = "";  // the value, made printable
  for (size_t i = 0; a->has_s && i < a->s.len && i < 40; i++)
    shown[i] = a->s.data[i] >= ' ' && a->s.data[i] <= '~' ? (char)a->s.data[i] : '?';
  return node_error(im, n, "auto_pad '%s' is not supported (NOTSET, VALID and SAME_UPPER are; "
                           "export with explicit pads)", shown);
}

// A square window's kernel, stride and pads from kernel_shape, strides, pads (ONNX's
// order [top, left, bottom, right] is the spec's), auto_pad and dilations, refusing
// what the spec cannot say.
static bool window(const Importer *im, const Onnx__NodeProto *n, const int64_t *wkernel,
                   int64_t *kernel, int64_t *stride, Pads *pad) {
  int64_t ks[2], st[2], pads[4], dil[2];
  bool same;
  if (!attr_ints(im, n, "kernel_shape", 2, wkernel ? wkernel[0] : -1, ks) ||
      !attr_ints(im, n, "strides", 2, 1, st) || !attr_ints(im, n, "pads", 4, 0, pads) ||
      !attr_ints(im, n, "dilations", 2, 1, dil))
    return false;
  if (wkernel && !attr(n, "kernel_shape"))
    ks[1] = wkernel[1];
  if (!auto_pad(im, n, &same))
    return false;
  if (ks[0] < 0)
    return node_error(im, n, "attribute 'kernel_shape' is missing");
  if (wkernel && (ks[0] != wkernel[0] || ks[1] != wkernel[1]))
    return node_error(im, n, "kernel_shape (%lld, %lld) differs from its weight's (%lld, %lld)",
                      (long long)ks[0], (long long)ks[1], (long long)wkernel[0],
                      (long long)wkernel[1]);
  if (ks[0] != ks[1])
    return node_error(im, n, "kernel (%lld, %lld) is not square; the spec's kernels are",
                      (long long)ks[0], (long long)ks[1]);
  if (st[0] != st[1])
    return node_error(im, n, "strides (%lld, %lld) differ; the spec has one stride for both "
                             "axes", (long long)st[0], (long long)st[1]);
  if (dil[0] != 1 || dil[1] != 1)
    return node_error(im, n, "dilations (%lld, %lld) are not supported (only 1)",
                      (long long)dil[0], (long long)dil[1]);
  *kernel = ks[0];
  *stride = st[0];
  for (int i = 0; i < 4; i++)
    if (!in_range(im, n, "pad", (double)pads[i], 0, 1024))
      return false;
  *pad = (Pads){(int)pads[0], (int)pads[1], (int)pads[2], (int)pads[3], same};
  return in_range(im, n, "kernel", (double)*kernel, 1, 1024) &&
         in_range(im, n, "stride", (double)*stride, 1, 1024);
}

// The output shape, as the spec computes it (window_extent, pads_same).
static bool window_shape(const Importer *im, const Onnx__NodeProto *n, Shape in, int64_t kernel,
                         int64_t stride, Pads pad, bool ceil_mode, int64_t c, Shape *out) {
  Pads p = pad.same ? pads_same(in, (int)kernel, (int)stride) : pad;
  int64_t h = window_extent(in.h, (int)kernel, (int)stride, p.top, p.bottom, ceil_mode);
  int64_t w = window_extent(in.w, (int)kernel, (int)stride, p.left, p.right, ceil_mode);
  if (!h || !w)
    return node_error(im, n, "kernel %lld is larger than its padded %lldx%lld input",
                      (long long)kernel, (long long)(in.h + p.top + p.bottom),
                      (long long)(in.w + p.left + p.right));
  *out = (Shape){3, c, h, w};
  return true;
}

static bool import_conv(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  bool ok;
  const Onnx__TensorProto *w = x ? const_input(im, n, 1, false, &ok) : NULL;
  if (!w || !need_rank3(im, n, x))
    return false;
  const Onnx__TensorProto *b = const_input(im, n, 2, true, &ok);
  if (!ok)
    return false;
  int64_t elems;
  if (w->n_dims != 4)
    return node_error(im, n, "weight '%.80s' has %zu dimensions, not 4", w->name, w->n_dims);
  if (!tensor_elems(im, n, w, &elems))  // its dims are bounded before they are used
    return false;
  int64_t group, kernel, stride;
  Pads pad;
  if (!attr_int(im, n, "group", 1, &group) || !window(im, n, w->dims + 2, &kernel, &stride, &pad))
    return false;
  int64_t out = w->dims[0];
  if (!in_range(im, n, "group", (double)group, 1, MAX_DIM) ||
      !in_range(im, n, "output channels", (double)out, 1, MAX_DIM))
    return false;
  if (x->shape.c % group || out % group || w->dims[1] * group != x->shape.c)
    return node_error(im, n, "weight '%.80s' (%lld, %lld, ...) with group %lld does not fit its "
                             "%lld input channels",
                      w->name, (long long)w->dims[0], (long long)w->dims[1], (long long)group,
                      (long long)x->shape.c);
  Layer *L = add_layer(im, n, OP_CONV, &x, 1);
  if (!L)
    return false;
  L->conv = (ConvAttrs){(int)out, (int)kernel, (int)stride, pad, (int)group, b != NULL};
  L->wrank = 4;
  memcpy(L->wdims, w->dims, sizeof L->wdims);
  if (!window_shape(im, n, x->shape, kernel, stride, pad, false, out, &L->out) ||
      !(L->weight = tensor_floats(im, n, w, &elems)))
    return false;
  if (b && !(L->bias = tensor_floats(im, n, b, &elems)))
    return false;
  if (b && elems != out)
    return node_error(im, n, "bias '%.80s' has %lld values, not %lld", b->name,
                      (long long)elems, (long long)out);
  return finish_layer(im, L, w->name);
}

static bool import_relu(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  Layer *L = x ? add_layer(im, n, OP_RELU, &x, 1) : NULL;
  if (!L)
    return false;
  L->out = x->shape;
  return finish_layer(im, L, NULL);
}

// ONNX's LRN computes a_i / (bias + alpha/size · Σ a_j²)^beta; the spec's alpha is not
// divided by size (the paper's formula), so spec alpha = ONNX alpha / size.
static bool import_lrn(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  int64_t size;
  double alpha, beta, bias;
  if (!x || !need_rank3(im, n, x) || !attr_int(im, n, "size", -1, &size) ||
      !attr_float(im, n, "alpha", 1e-4, &alpha) || !attr_float(im, n, "beta", 0.75, &beta) ||
      !attr_float(im, n, "bias", 1.0, &bias))
    return false;
  if (size < 0)
    return node_error(im, n, "attribute 'size' is missing");
  if (size % 2 == 0)
    return node_error(im, n, "size %lld is even; alexc's LRN windows are centred (odd sizes)",
                      (long long)size);
  if (!in_range(im, n, "size", (double)size, 1, 1023) ||
      !in_range(im, n, "alpha / size", alpha / size, 0, 1e6) ||
      !in_range(im, n, "beta", beta, 0, 1000) || !in_range(im, n, "bias", bias, 1e-12, 1e6))
    return false;
  Layer *L = add_layer(im, n, OP_LRN, &x, 1);
  if (!L)
    return false;
  L->lrn = (LrnAttrs){(int)size, 1, alpha / size, beta, bias};
  L->out = x->shape;
  return finish_layer(im, L, NULL);
}

static bool import_maxpool(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  int64_t kernel, stride, ceil_mode;
  Pads pad;
  if (!x || !need_rank3(im, n, x) || !window(im, n, NULL, &kernel, &stride, &pad) ||
      !attr_int(im, n, "ceil_mode", 0, &ceil_mode))
    return false;
  if (n->n_output > 1 && *n->output[1])
    return node_error(im, n, "its Indices output is not supported");
  Pads p = pad.same ? pads_same(x->shape, (int)kernel, (int)stride) : pad;
  int most = p.top > p.left ? p.top : p.left;
  most = p.bottom > most ? p.bottom : most;
  most = p.right > most ? p.right : most;
  if (most >= kernel)  // ONNX's limit: every window must hold an input pixel
    return node_error(im, n, "pad %d is not smaller than the kernel %lld", most,
                      (long long)kernel);
  Layer *L = add_layer(im, n, OP_MAXPOOL, &x, 1);
  if (!L)
    return false;
  L->pool = (PoolAttrs){(int)kernel, (int)stride, pad, ceil_mode != 0};
  return window_shape(im, n, x->shape, kernel, stride, pad, ceil_mode != 0, x->shape.c,
                      &L->out) &&
         finish_layer(im, L, NULL);
}

// An fc layer from a weight tensor w: (out, in) when `out_in`, else (in, out), times
// `scale`.
static Layer *fc_layer(Importer *im, const Onnx__NodeProto *n, const Value *x,
                       const Onnx__TensorProto *w, bool out_in, double scale) {
  if (x->shape.rank != 1) {
    node_error(im, n, "its input '%.80s' is N×C×H×W; alexc's fc layers take flat vectors "
                      "(add a Flatten)", x->name);
    return NULL;
  }
  int64_t elems;
  if (w->n_dims != 2) {
    node_error(im, n, "weight '%.80s' has %zu dimensions, not 2", w->name, w->n_dims);
    return NULL;
  }
  if (!tensor_elems(im, n, w, &elems))
    return NULL;
  int64_t in = w->dims[out_in ? 1 : 0], out = w->dims[out_in ? 0 : 1];
  if (in != x->shape.c) {
    node_error(im, n, "weight '%.80s' expects %lld input features; its input has %lld", w->name,
               (long long)in, (long long)x->shape.c);
    return NULL;
  }
  if (!in_range(im, n, "output features", (double)out, 1, MAX_DIM))
    return NULL;
  Layer *L = add_layer(im, n, OP_FC, &x, 1);
  float *d = L ? tensor_floats(im, n, w, &elems) : NULL;
  if (!d)
    return NULL;
  L->weight = xcalloc(elems, sizeof(float));
  for (int64_t o = 0; o < out; o++)
    for (int64_t i = 0; i < in; i++)
      L->weight[o * in + i] = (float)(scale * d[out_in ? o * in + i : i * out + o]);
  free(d);
  L->wrank = 2;
  L->wdims[0] = out;
  L->wdims[1] = in;
  L->fc = (FcAttrs){(int)out, false};
  L->out = (Shape){1, out, 1, 1};
  return L;
}

// A bias of `out` values from a tensor of that many (or one, broadcast), times `scale`.
static bool fc_bias(Importer *im, const Onnx__NodeProto *n, Layer *L, const Onnx__TensorProto *c,
                    double scale) {
  int64_t elems, out = L->fc.out;
  float *d = tensor_floats(im, n, c, &elems);
  if (!d)
    return false;
  if (elems != out && elems != 1) {
    free(d);
    return node_error(im, n, "bias '%.80s' has %lld values, not %lld", c->name, (long long)elems,
                      (long long)out);
  }
  L->bias = xcalloc(out, sizeof(float));
  for (int64_t o = 0; o < out; o++)
    L->bias[o] = (float)(scale * d[elems == 1 ? 0 : o]);
  free(d);
  L->fc.bias = true;
  return true;
}

// Y = alpha · A · op(B) + beta · C with op(B) = B' when transB: an fc layer with weight
// alpha · op(B)' (out, in) and bias beta · C.
static bool import_gemm(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  bool ok;
  const Onnx__TensorProto *b = x ? const_input(im, n, 1, false, &ok) : NULL;
  const Onnx__TensorProto *c = b ? const_input(im, n, 2, true, &ok) : NULL;
  int64_t trans_a, trans_b;
  double alpha, beta;
  if (!b || !ok || !attr_int(im, n, "transA", 0, &trans_a) ||
      !attr_int(im, n, "transB", 0, &trans_b) || !attr_float(im, n, "alpha", 1, &alpha) ||
      !attr_float(im, n, "beta", 1, &beta))
    return false;
  if (trans_a)
    return node_error(im, n, "transA=1 is not supported (its input would be transposed)");
  Layer *L = fc_layer(im, n, x, b, trans_b != 0, alpha);
  if (!L)
    return false;
  if (c && !fc_bias(im, n, L, c, beta))
    return false;
  return finish_layer(im, L, b->name);
}

// MatMul(A, W) with W (in, out): an fc layer without bias, which a following Add of a
// constant gives one.
static bool import_matmul(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  bool ok;
  const Onnx__TensorProto *w = x ? const_input(im, n, 1, false, &ok) : NULL;
  Layer *L = w ? fc_layer(im, n, x, w, false, 1.0) : NULL;
  return L && finish_layer(im, L, w->name);
}

// Add(fc, C), where the fc came from a MatMul and nothing else reads it: C is its bias.
static bool import_add(Importer *im, const Onnx__NodeProto *n) {
  if (n->n_input != 2)
    return node_error(im, n, "it has %zu inputs, not 2", n->n_input);
  for (int j = 0; j < 2; j++) {
    Value *v = find_value(im, n->input[j]);
    Value *c = find_value(im, n->input[1 - j]);
    if (!v || v->is_const || v->layer < 0 || !c || !c->is_const)
      continue;
    Layer *L = &im->layers[v->layer];
    if (L->op != OP_FC || L->fc.bias || strcmp(L->node->op_type, "MatMul") ||
        uses(im, v->name) != 1)
      continue;
    if (!fc_bias(im, n, L, c->tensor, 1.0))
      return false;
    return alias(im, n, v);
  }
  return node_error(im, n, "Add is supported only as the bias of a MatMul whose output nothing "
                           "else reads (MatMul + constant)");
}

// Flatten(axis=1) or Reshape to (N, features): the spec's flatten (nothing for a flat input).
static bool flatten(Importer *im, const Onnx__NodeProto *n, const Value *x) {
  if (x->shape.rank == 1)
    return alias(im, n, x);
  Layer *L = add_layer(im, n, OP_FLATTEN, &x, 1);
  if (!L)
    return false;
  L->out = (Shape){1, shape_elems(x->shape), 1, 1};
  return finish_layer(im, L, NULL);
}

static bool import_flatten(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  int64_t axis;
  if (!x || !attr_int(im, n, "axis", 1, &axis))
    return false;
  if (axis != 1 && axis != (x->shape.rank == 3 ? -3 : -1))
    return node_error(im, n, "axis %lld is not supported (only 1: (N, features))",
                      (long long)axis);
  return flatten(im, n, x);
}

static bool import_reshape(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  bool ok;
  const Onnx__TensorProto *t = x ? const_input(im, n, 1, false, &ok) : NULL;
  int64_t s[4];
  int count = 0;
  if (!t || !tensor_int64s(im, n, t, s, 4, &count))
    return false;
  int64_t f = shape_elems(x->shape);
  bool batch_ok = count == 2 && (s[0] == 0 || (im->batch > 0 && s[0] == im->batch) ||
                                  (s[0] == -1 && s[1] == f));
  if (!batch_ok || (s[1] != -1 && s[1] != f))
    return node_error(im, n, "only a reshape to (N, %lld) is supported (a flatten)",
                      (long long)f);
  return flatten(im, n, x);
}

// Dropout is the identity at inference; the spec keeps p for training.
static bool import_dropout(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  double p;
  bool ok;
  if (!x || !attr_float(im, n, "ratio", 0.5, &p))
    return false;
  const Onnx__TensorProto *r = const_input(im, n, 1, true, &ok);  // opset 12+: an input
  if (!ok)
    return false;
  if (r) {
    int64_t elems;
    float *d = tensor_floats(im, n, r, &elems);
    if (!d || elems != 1) {
      free(d);
      return d ? node_error(im, n, "ratio '%.80s' is not one value", r->name) : false;
    }
    p = d[0];
    free(d);
  }
  if (n->n_output > 1 && *n->output[1] && uses(im, n->output[1]))
    return node_error(im, n, "its mask output is used; alexc's dropout has none");
  if (!in_range(im, n, "ratio", p, 0, 0.999999))
    return false;
  Layer *L = add_layer(im, n, OP_DROPOUT, &x, 1);
  if (!L)
    return false;
  L->p = p;
  L->out = x->shape;
  return finish_layer(im, L, NULL);
}

// Concat along channels (axis 1 of N×C×H×W) or features (axis 1 of N×F).
static bool import_concat(Importer *im, const Onnx__NodeProto *n) {
  const Value *in[64] = {0};
  int64_t axis;
  if (n->n_input < 2 || n->n_input > 64)
    return node_error(im, n, "it has %zu inputs; alexc's concat takes 2 to 64", n->n_input);
  for (size_t j = 0; j < n->n_input; j++)
    if (!(in[j] = data_input(im, n, j)))
      return false;
  Shape s = in[0]->shape;
  if (!attr_int(im, n, "axis", 1, &axis))
    return false;
  if (axis != 1 && axis != (s.rank == 3 ? -3 : -1))
    return node_error(im, n, "axis %lld is not supported (only channels: 1)", (long long)axis);
  for (size_t j = 1; j < n->n_input; j++) {
    Shape t = in[j]->shape;
    if (t.rank != s.rank || t.h != s.h || t.w != s.w)
      return node_error(im, n, "its inputs differ in rank or height and width");
    s.c += t.c;
  }
  Layer *L = add_layer(im, n, OP_CONCAT, in, (int)n->n_input);
  if (!L)
    return false;
  L->out = s;
  return finish_layer(im, L, NULL);
}

static bool import_softmax(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  int64_t axis;
  if (!x || !attr_int(im, n, "axis", im->opset >= 13 ? -1 : 1, &axis))
    return false;
  if (x->shape.rank != 1)
    return node_error(im, n, "its input is N×C×H×W; alexc's softmax takes flat vectors (add a "
                             "Flatten)");
  if (axis != 1 && axis != -1)
    return node_error(im, n, "axis %lld is not supported (only the features: 1)",
                      (long long)axis);
  Layer *L = add_layer(im, n, OP_SOFTMAX, &x, 1);
  if (!L)
    return false;
  L->out = x->shape;
  return finish_layer(im, L, NULL);
}

// Identity of a computed tensor is an alias; of a constant (PyTorch writes one for a
// weight shared by two layers), another name for the constant.
static bool import_identity(Importer *im, const Onnx__NodeProto *n) {
  const Value *c = n->n_input == 1 ? find_value(im, n->input[0]) : NULL;
  if (c && c->is_const) {
    const Onnx__TensorProto *t = c->tensor;
    Value *v = add_value(im, n->output[0]);
    v->is_const = true;
    v->tensor = t;
    return true;
  }
  const Value *x = data_input(im, n, 0);
  return x && alias(im, n, x);
}

// An AveragePool of one pixel, stride 1 and no padding is the identity: what PyTorch
// exports for an adaptive pool to the size its input already has (torchvision's AlexNet).
static bool import_avgpool(Importer *im, const Onnx__NodeProto *n) {
  const Value *x = data_input(im, n, 0);
  int64_t kernel, stride, ceil_mode;
  Pads pad;
  if (!x || !need_rank3(im, n, x) || !window(im, n, NULL, &kernel, &stride, &pad) ||
      !attr_int(im, n, "ceil_mode", 0, &ceil_mode))
    return false;
  bool padded = pad.same || pad.top || pad.left || pad.bottom || pad.right;
  if (kernel != 1 || stride != 1 || padded || ceil_mode)
    return node_error(im, n, "only a 1x1 AveragePool with stride 1 and no padding (the "
                             "identity) is supported, not kernel %lld, stride %lld%s",
                      (long long)kernel, (long long)stride, padded ? ", padded" : "");
  return alias(im, n, x);
}

static bool import_constant(Importer *im, const Onnx__NodeProto *n) {
  const Onnx__AttributeProto *a = attr(n, "value");
  if (!a || a->type != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR || !a->t)
    return node_error(im, n, "only a 'value' tensor is supported");
  Value *v = add_value(im, n->output[0]);
  v->is_const = true;
  v->tensor = a->t;
  return true;
}

static bool import_node(Importer *im, const Onnx__NodeProto *n) {
  static const struct {
    const char *op;
    bool (*fn)(Importer *, const Onnx__NodeProto *);
  } table[] = {{"Conv", import_conv},       {"Relu", import_relu},
               {"LRN", import_lrn},         {"MaxPool", import_maxpool},
               {"Gemm", import_gemm},       {"MatMul", import_matmul},
               {"Add", import_add},         {"Flatten", import_flatten},
               {"Reshape", import_reshape}, {"Dropout", import_dropout},
               {"Concat", import_concat},   {"Softmax", import_softmax},
               {"Identity", import_identity}, {"Constant", import_constant},
               {"AveragePool", import_avgpool}};
  if (n->n_output < 1 || !*n->output[0])
    return node_error(im, n, "it has no output");
  bool extra_ok = !strcmp(n->op_type, "Dropout") || !strcmp(n->op_type, "MaxPool");
  if (n->n_output > (extra_ok ? 2u : 1u))
    return node_error(im, n, "it has %zu outputs", n->n_output);
  for (size_t i = 0; i < sizeof table / sizeof *table; i++)
    if (!strcmp(table[i].op, n->op_type))
      return table[i].fn(im, n);
  return node_error(im, n, "op is not supported");  // check_supported caught it first
}

// ---------------------------------------------------------------- the graph

// The network input: the one graph input that is not an initializer, float32 (N, C, H, W).
static bool graph_input(Importer *im) {
  const Onnx__ValueInfoProto *in = NULL;
  for (size_t i = 0; i < im->g->n_input; i++) {
    Value *v = find_value(im, im->g->input[i]->name);
    if (v && v->is_const)
      continue;  // before IR version 4, initializers were also listed as inputs
    if (in)
      return error("%s: the model has several inputs ('%.80s', '%.80s'); alexc networks have "
                   "one", im->path, in->name, im->g->input[i]->name), false;
    in = im->g->input[i];
  }
  if (!in)
    return error("%s: the model has no input", im->path), false;
  const Onnx__TypeProto *t = in->type;
  const Onnx__TensorShapeProto *s =
      t && t->value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE && t->tensor_type
          ? t->tensor_type->shape : NULL;
  if (!s || t->tensor_type->elem_type != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT || s->n_dim != 4)
    return error("%s: input '%.80s' must be a float32 tensor of shape (N, C, H, W)", im->path,
                 in->name), false;
  int64_t d[4];
  for (int i = 0; i < 4; i++) {
    bool known = s->dim[i]->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
    d[i] = known ? s->dim[i]->dim_value : -1;
    if (i > 0 && (d[i] < 1 || d[i] > MAX_DIM))
      return error("%s: input '%.80s' has dimension %d of %lld; C, H and W must be known and "
                   "1 to %lld", im->path, in->name, i, (long long)d[i], (long long)MAX_DIM),
             false;
  }
  if (d[1] * d[2] * d[3] >= MAX_ELEMS)
    return error("%s: input '%.80s' is too large", im->path, in->name), false;
  im->batch = d[0];  // -1 when symbolic
  Value *v = add_value(im, in->name);
  v->shape = (Shape){3, d[1], d[2], d[3]};
  return true;
}

// protobuf-c leaves an absent string field NULL; an empty string (freed with the model,
// which uses malloc) lets the rest compare and print names without checking each time.
static void fill_string(char **s) {
  if (!*s)
    *s = xstrdup("");
}

static void fill_strings(Onnx__GraphProto *g) {
  for (size_t i = 0; i < g->n_node; i++) {
    Onnx__NodeProto *n = g->node[i];
    fill_string(&n->name);
    fill_string(&n->op_type);
    fill_string(&n->domain);
    for (size_t a = 0; a < n->n_attribute; a++) {
      fill_string(&n->attribute[a]->name);
      if (n->attribute[a]->t)
        fill_string(&n->attribute[a]->t->name);
    }
  }
  for (size_t i = 0; i < g->n_initializer; i++)
    fill_string(&g->initializer[i]->name);
  for (size_t i = 0; i < g->n_input; i++)
    fill_string(&g->input[i]->name);
  for (size_t i = 0; i < g->n_output; i++)
    fill_string(&g->output[i]->name);
}

static bool check_bounds(const Importer *im) {
  const Onnx__GraphProto *g = im->g;
  if (g->n_node > MAX_ONNX_NODES || g->n_initializer > MAX_ONNX_TENSORS)
    return error("%s: %zu nodes and %zu initializers; alexc imports at most %d of each",
                 im->path, g->n_node, g->n_initializer, MAX_ONNX_NODES), false;
  if (g->n_output != 1)
    return error("%s: the model has %zu outputs; alexc networks have one", im->path,
                 g->n_output), false;
  for (size_t i = 0; i < g->n_initializer; i++)
    if (!g->initializer[i]->name || !*g->initializer[i]->name)
      return error("%s: initializer %zu has no name", im->path, i), false;
  return true;
}

static int64_t opset_version(const Onnx__ModelProto *m) {
  for (size_t i = 0; i < m->n_opset_import; i++) {
    const char *d = m->opset_import[i]->domain;
    if (!d || !*d || !strcmp(d, "ai.onnx"))
      return m->opset_import[i]->version;
  }
  return 1;
}

// The graph's output must be the value of the last layer (the spec's output).
static bool check_output(const Importer *im) {
  const char *name = im->g->output[0]->name;
  const Value *v = find_value(im, name);
  if (!v || v->is_const || v->layer < 0)
    return error("%s: the output '%.80s' is not computed by any layer", im->path, name), false;
  if (v->layer != im->n_layers - 1)
    return error("%s: the output '%.80s' is computed by node '%.80s', but later nodes compute "
                 "other tensors; the spec's output is its last layer",
                 im->path, name, node_name(im->layers[v->layer].node)), false;
  return true;
}

static bool import_graph(Importer *im) {
  if (!check_bounds(im) || !check_supported(im))
    return false;
  for (size_t i = 0; i < im->g->n_initializer; i++) {
    Value *v = add_value(im, im->g->initializer[i]->name);
    v->is_const = true;
    v->tensor = im->g->initializer[i];
  }
  if (!graph_input(im))
    return false;
  for (size_t i = 0; i < im->g->n_node; i++)
    if (!import_node(im, im->g->node[i]))
      return false;
  return check_output(im);
}

// ---------------------------------------------------------------- output

// `pad: same`, `pad: P` or `pad: [top, left, bottom, right]` (docs/spec-format.md).
static void emit_pads(Pads p, FILE *f) {
  if (p.same)
    fputs(", pad: same", f);
  else if (pads_symmetric(p))
    fprintf(f, ", pad: %d", p.top);
  else
    fprintf(f, ", pad: [%d, %d, %d, %d]", p.top, p.left, p.bottom, p.right);
}

static void emit_layer(const Importer *im, const Layer *L, FILE *f) {
  fprintf(f, "  - {name: %s, op: %s, inputs: ", L->name, op_name(L->op));
  fputs(L->n_inputs > 1 ? "[" : "", f);
  for (int i = 0; i < L->n_inputs; i++)
    fprintf(f, "%s%s", i ? ", " : "", L->inputs[i] < 0 ? "input" : im->layers[L->inputs[i]].name);
  fputs(L->n_inputs > 1 ? "]" : "", f);
  switch (L->op) {
  case OP_CONV:
    fprintf(f, ", out: %d, kernel: %d, stride: %d", L->conv.out, L->conv.kernel, L->conv.stride);
    emit_pads(L->conv.pad, f);
    fprintf(f, ", groups: %d, bias: %s", L->conv.groups, L->conv.bias ? "true" : "false");
    break;
  case OP_LRN:
    fprintf(f, ", size: %d, alpha: %.17g, beta: %.17g, k: %.17g", L->lrn.size, L->lrn.alpha,
            L->lrn.beta, L->lrn.k);
    break;
  case OP_MAXPOOL:
    fprintf(f, ", kernel: %d, stride: %d", L->pool.kernel, L->pool.stride);
    emit_pads(L->pool.pad, f);
    if (L->pool.ceil_mode)
      fputs(", ceil_mode: true", f);
    break;
  case OP_FC:
    fprintf(f, ", out: %d, bias: %s", L->fc.out, L->fc.bias ? "true" : "false");
    break;
  case OP_DROPOUT:
    fprintf(f, ", p: %.17g", L->p);
    break;
  default:
    break;
  }
  fprintf(f, "}\n");
}

// An untrusted string for a quoted YAML scalar: printable ASCII without quotes or
// backslashes, at most 40 characters.
static void quotable(const char *s, char *out) {
  int k = 0;
  for (; s && *s && k < 40; s++)
    out[k++] = *s >= ' ' && *s <= '~' && *s != '"' && *s != '\\' ? *s : '?';
  out[k] = 0;
}

static char *emit_spec(const Importer *im, const char *name) {
  char *text = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&text, &size);
  const Value *in = NULL;
  for (int i = 0; i < im->n_vals && !in; i++)
    if (!im->vals[i].is_const && im->vals[i].layer < 0)
      in = &im->vals[i];
  const Onnx__ModelProto *m = im->model;
  fprintf(f, "# Imported by `alexc import` from an ONNX model.\n");
  fprintf(f, "name: %s\n", name);
  char producer[41], version[41];
  quotable(m->producer_name, producer);
  quotable(m->producer_version, version);
  fprintf(f, "description: \"imported from ONNX (producer '%s%s%s', opset %lld)\"\n",
          *producer ? producer : "unknown", *version ? " " : "", version, (long long)im->opset);
  fprintf(f, "input: {channels: %lld, height: %lld, width: %lld}\n", (long long)in->shape.c,
          (long long)in->shape.h, (long long)in->shape.w);
  fprintf(f, "layers:\n");
  for (int i = 0; i < im->n_layers; i++)
    emit_layer(im, &im->layers[i], f);
  fclose(f);
  return text;
}

static void add_tensor(Weights *w, const char *layer, const char *what, int rank,
                       const int64_t *dims, float **data) {
  ParamInfo *p = &w->info[w->n];
  snprintf(p->name, sizeof p->name, "%s.%s", layer, what);
  p->rank = rank;
  p->elems = 1;
  for (int i = 0; i < rank; i++)
    p->elems *= p->dims[i] = dims[i];
  w->data[w->n++] = *data;
  *data = NULL;
}

// Moves the layers' weights into a Weights named LAYER.weight / LAYER.bias.
static Weights *take_weights(Importer *im) {
  Weights *w = xcalloc(1, sizeof *w);
  w->info = xcalloc(2 * im->n_layers + 1, sizeof *w->info);
  w->data = xcalloc(2 * im->n_layers + 1, sizeof *w->data);
  for (int i = 0; i < im->n_layers; i++) {
    Layer *L = &im->layers[i];
    int64_t out = L->wdims[0];
    if (L->weight)
      add_tensor(w, L->name, "weight", L->wrank, L->wdims, &L->weight);
    if (L->bias)
      add_tensor(w, L->name, "bias", 1, &out, &L->bias);
  }
  return w;
}

static void importer_free(Importer *im) {
  for (int i = 0; i < im->n_vals; i++)
    free(im->vals[i].name);
  free(im->vals);
  // A layer that failed half-built sits just past the last one.
  for (int i = 0; im->layers && i <= im->n_layers && i < MAX_LAYERS; i++) {
    free(im->layers[i].weight);
    free(im->layers[i].bias);
  }
  free(im->layers);
  if (im->model)
    onnx__model_proto__free_unpacked(im->model, NULL);
}

bool onnx_import(const char *path, const char *name, char **spec, Weights **weights) {
  uint8_t *data;
  size_t size;
  *spec = NULL;
  *weights = NULL;
  if (!rt_read_file(path, MAX_ONNX_BYTES, &data, &size)) {
    error("%s", rt_error());
    return false;
  }
  bool ok = onnx_import_bytes(path, data, size, name, spec, weights);
  free(data);
  return ok;
}

bool onnx_import_bytes(const char *path, const uint8_t *data, size_t size, const char *name,
                       char **spec, Weights **weights) {
  Importer im = {.path = path};
  *spec = NULL;
  *weights = NULL;
  im.model = onnx__model_proto__unpack(NULL, size, data);
  if (!im.model || !im.model->graph) {
    error("%s: not an ONNX model (the protobuf is malformed or truncated, or has no graph)",
          path);
    importer_free(&im);
    return false;
  }
  im.g = im.model->graph;
  fill_strings(im.g);
  im.opset = opset_version(im.model);
  im.layers = xcalloc(MAX_LAYERS, sizeof *im.layers);
  bool ok = import_graph(&im);
  if (ok) {
    *spec = emit_spec(&im, name);
    *weights = take_weights(&im);
  }
  importer_free(&im);
  return ok;
}
