// alexc.h — the one header the compiler shares (chibicc style).
//
// The pipeline, one phase per file:
//   frontend/spec.c      YAML spec (libyaml)      -> Graph
//   frontend/onnx.c      ONNX model (protobuf-c)  -> spec text + weights (`alexc import`)
//   ir/graph.c           graph building, shape inference, parameter/MAC counts
//   ir/verify.c          invariants checked after building and after every pass
//   ir/dump.c            stable text form of the IR (`alexc dump`)
//   exec/init.c          deterministic weight / input generation from a seed
//   exec/reference.c     the reference executor: the oracle for every backend
//   tools/*.c            the CLI subcommands
// Tensors on disk (safetensors, .npy) live in runtime/, which the compiler links.
#ifndef ALEXC_H
#define ALEXC_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../runtime/alexrt.h"

// ---------------------------------------------------------------- diagnostics

// A place in a spec file, for FILE:LINE:COL messages. line/col are 1-based; 0 = unknown.
typedef struct {
  const char *file;
  int line, col;
} SrcLoc;

// Prints "FILE:LINE:COL: error: ..." to stderr.
void error_at(SrcLoc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Prints "alexc: error: ..." to stderr.
void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// The closest of `words` (NULL entries skipped) to `s`, if it is close enough to be a
// typo: at most two edits, and at most half the longer word's length ('foo' is not
// 'op'). NULL otherwise. For "did you mean" messages.
const char *closest_word(const char *s, const char *const *words, int n);

// Allocation that never returns NULL (out of memory is fatal, not a user error).
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

// FNV-1a, for content hashes (compile caches); start with h = FNV_OFFSET.
#define FNV_OFFSET 0xcbf29ce484222325ull
uint64_t fnv1a(uint64_t h, const void *data, size_t n);
// The compile cache's directory, created if missing: $ALEXC_CACHE, default
// ~/.cache/alexc; NULL when there is none ($ALEXC_CACHE=off, no HOME, not writable).
char *cache_dir(void);
// Seconds on a monotonic clock, for timing (passes, benchmarks, training).
double now_seconds(void);

// ---------------------------------------------------------------- ops

typedef enum {
  OP_INPUT,
  OP_CONV,
  OP_RELU,
  OP_LRN,
  OP_MAXPOOL,
  OP_FC,
  OP_DROPOUT,
  OP_FLATTEN,
  OP_CONCAT,
  OP_SOFTMAX,
  OP_COUNT
} OpKind;

const char *op_name(OpKind op);
// Returns OP_COUNT when `name` is not an op.
OpKind op_from_name(const char *name);

// Zero (conv) or ignored (maxpool) pixels around the input, per side. Kernels index the
// input from the top/left pads only; the bottom/right pads change only the output size.
// `same` (spec `pad: same`) asks graph_infer() to choose them: output = ceil(input/stride),
// the odd pixel at the bottom/right, as ONNX's SAME_UPPER.
typedef struct {
  int top, left, bottom, right;
  bool same;
} Pads;

static inline bool pads_symmetric(Pads p) {
  return p.top == p.left && p.top == p.bottom && p.top == p.right;
}

typedef struct {
  int out, kernel, stride;
  Pads pad;
  int groups;
  bool bias;
} ConvAttrs;

// b_i = a_i / (k + alpha * sum_j a_j^2)^beta over `size` channels centred on i,
// clipped at the edges of the channel range, or of the channel group when groups > 1.
typedef struct {
  int size, groups;
  double alpha, beta, k;
} LrnAttrs;

// ceil_mode rounds the output size up (Caffe, ONNX, PyTorch's ceil_mode=True); the last
// window then may hang over the bottom/right edge, and is clipped like any other.
typedef struct {
  int kernel, stride;
  Pads pad;
  bool ceil_mode;
} PoolAttrs;

typedef struct {
  int out;
  bool bias;
} FcAttrs;

typedef struct {
  double p;
} DropoutAttrs;

// How a layer's parameters are initialised: weights ~ N(0, weight_std), biases
// ~ N(bias, bias_std) (all equal to bias when bias_std is 0, the default).
typedef struct {
  double weight_std;
  double bias;
  double bias_std;
} InitRule;

// ---------------------------------------------------------------- IR

// Per-image shape: rank 3 is (C, H, W), rank 1 is (features). The batch is a runtime value.
typedef struct {
  int rank;
  int64_t c, h, w;  // rank 1: c = features, h = w = 1
} Shape;

int64_t shape_elems(Shape s);
static inline int64_t shape_plane(Shape s) { return s.h * s.w; }  // elements per channel
// "96x55x55" or "4096"
char *shape_str(Shape s, char *buf, size_t size);

// Output extent of a window op (conv, maxpool) along one axis of `in` pixels padded by
// `lo` before and `hi` after; 0 when the window does not fit (ir/ops.c).
int64_t window_extent(int64_t in, int kernel, int stride, int lo, int hi, bool ceil_mode);
// `pad: same` resolved for an input: output ceil(in/stride), the odd pixel bottom/right.
Pads pads_same(Shape in, int kernel, int stride);
// "1" when the four pads agree, "[t,l,b,r]" otherwise (dump.c).
const char *pads_str(Pads p, char *buf, size_t size);

// Per-image tensors must stay indexable with 32-bit ints in generated kernels.
#define MAX_ELEMS ((int64_t)1 << 31)

#define MAX_EPILOGUE 4
#define MAX_DEVICES 8

// A half-open range of channels (rank 3) or features (rank 1) of a tensor, in the
// coordinates of the whole tensor. Empty when begin == end.
typedef struct {
  int64_t begin, end;
} Range;

static inline int64_t range_len(Range r) { return r.end > r.begin ? r.end - r.begin : 0; }

// Where a node runs on one device (filled by the partition pass). Stage 0 is the
// node's own op (the head), stage k > 0 its k-th fused epilogue op; each stage
// computes stage[k] of its output channels on this device. The last stage's range is
// what this device contributes to the node's output; an earlier stage may compute
// more (halo channels that an LRN window needs, recomputed rather than moved).
typedef struct {
  Range stage[MAX_EPILOGUE + 1];
  Range held;         // output channels kept here: computed plus received by transfers
  const char *why;    // the planner's reason, for `alexc dump` and `alexc plan`
  int64_t offset;     // memory plan: output buffer offset in the device arena (elements/image)
  bool in_place;      // memory plan: output shares its input's buffer
} Placement;

// One node computes one tensor (its output). Nodes are stored in a topological
// order, so node i only reads nodes < i; a node's index is its value's name.
typedef struct Node {
  char *name;  // unique; [A-Za-z_][A-Za-z0-9_.-]*, checked by the frontend (backends sanitize)
  OpKind op;
  SrcLoc loc;
  int *inputs;  // node indices
  int n_inputs;
  Shape out;

  ConvAttrs conv;
  LrnAttrs lrn;
  PoolAttrs pool;
  FcAttrs fc;
  DropoutAttrs dropout;
  InitRule init;

  // Derived by graph_infer():
  int64_t n_weight, n_bias;  // parameter element counts (0 for ops without)
  int64_t macs;              // multiply-accumulates per image

  // Fusion: ops folded into this one, applied in order to its output inside the same
  // kernel (relu, lrn, maxpool, dropout). `out` is the last stage's shape; head_out is
  // the node's own op's output shape.
  struct Node *epilogue;
  int n_epilogue;
  Shape head_out;
  const char *fused_by;  // the fusion pattern's name
  bool fusion_cut;       // the partition pass cut the pattern's node in two

  Placement place[MAX_DEVICES];
} Node;

// The buffer a node's output has on device d: its held channels, in elements per image.
int64_t node_buffer_elems(const Node *n, int d);

// Stage k of a node: 0 is the node's own op, k > 0 its k-th fused op.
static inline const Node *node_stage(const Node *n, int k) { return k ? &n->epilogue[k - 1] : n; }

// The output shape of stage k of a node: 0 is its own op, k > 0 its k-th fused op.
static inline Shape node_stage_shape(const Node *n, int k) {
  return k == n->n_epilogue ? n->out : k ? n->epilogue[k - 1].out : n->head_out;
}

// A copy of channels of a node's output from one device to another, made right
// after the node runs (filled by the partition pass).
typedef struct {
  int node, from, to;
  Range range;
  int64_t bytes;  // per image
} Transfer;

// The spec's optional `train:` section: defaults for `alexc train`, which flags override.
// Fields not given are 0 (numbers), -1 (augment) or NULL (strings).
typedef struct {
  int epochs, batch, augment;
  double lr, warmup;
  char *schedule, *init;  // checked by alexc train, which reports errors at *_loc
  SrcLoc schedule_loc, init_loc;
} TrainSpec;

typedef struct {
  char *name;
  SrcLoc loc;
  Node *nodes;
  int n_nodes, cap_nodes;
  int output;  // index of the network's output node (the last layer)

  int n_devices;  // 0 until the partition pass has run
  Transfer *transfers;
  int n_transfers;
  char *plan_note;  // what the partition planner chose and why

  // Memory plan: per device, activation arena size in elements per image (buffers
  // scale linearly with the batch, so offsets do too).
  bool planned;
  int64_t arena[MAX_DEVICES];

  TrainSpec train;
} Graph;

// ---------------------------------------------------------------- the op table (ir/ops.c)

typedef struct {
  const char *name;                // as specs write it
  int min_inputs, max_inputs;      // arity; max -1: any number
  const char *const *keys;         // spec keys besides name, op, inputs (NULL-terminated)
  // Shape inference: sets n->out (and parameter and MAC counts) from the input's shape,
  // or reports the error at the layer and returns false.
  bool (*infer)(const Graph *g, Node *n, Shape in);
  // The channels of input j (of shape `in`) needed for output channels r (not empty).
  Range (*input_need)(const Graph *g, const Node *n, int j, Shape in, Range r);
  bool per_channel;                // output channel c depends on input channel c alone
} OpInfo;

const OpInfo *op_info(OpKind op);
bool op_arity_ok(OpKind op, int n_inputs);
// What node n needs of input j to compute output channels r: op_info's, for a non-empty r.
Range op_input_need(const Graph *g, const Node *n, int j, Range r);
// An LRN's halo: the input channels its windows over output channels r read, clipped at
// the tensor's (or channel group's) edges.
Range lrn_input_need(const LrnAttrs *a, int64_t channels, Range r);

Graph *graph_new(const char *name);
void graph_free(Graph *g);
Graph *graph_clone(const Graph *g);
// Appends a node and returns its index. Copies `name`.
int graph_add(Graph *g, const char *name, OpKind op, SrcLoc loc);
void node_add_input(Node *n, int input);
int graph_find(const Graph *g, const char *name);  // -1 if absent

// Rewriting (ir/rewrite.c), for passes.
void graph_compact(Graph *g, const bool *keep, const int *replace);
// Cuts the network at `node`: keeps it and what it depends on, and makes it the output
// (alexc run and compile --layer with --target cuda, which return only a network's output).
void graph_truncate(Graph *g, int node);
int graph_insert(Graph *g, int at, Node node);
int graph_cut_fused(Graph *g, int i, int k);
// The node whose output is layer `name`'s output: the node itself, or the fused node
// whose last stage it is. -1 if it is not observable (fused into the middle of a node).
int graph_find_value(const Graph *g, const char *name);

// Shape inference and parameter/MAC counting; reports shape errors at the layer's
// location. Returns false on error.
bool graph_infer(Graph *g);
// Checks the IR's invariants (topological order, shapes, attributes). Returns false
// and prints what is wrong; a failure here is a compiler bug, not a user error.
bool graph_verify(const Graph *g);
void graph_dump(const Graph *g, FILE *out);
int64_t graph_params(const Graph *g);
int64_t graph_macs(const Graph *g);

// Parameter tensors, named as PyTorch names them: "<layer>.weight", "<layer>.bias".
// Weights are (out, in/groups, k, k) for conv and (out, in) for fc.
typedef struct {
  int node;
  bool is_bias;
  char name[160];
  int rank;
  int64_t dims[4];
  int64_t elems;
} ParamInfo;

// Fills `out` (may be NULL to count) and returns the number of parameter tensors.
int graph_params_list(const Graph *g, ParamInfo *out);

// ---------------------------------------------------------------- frontend

// The longest layer name, and the rule for names: [A-Za-z_][A-Za-z0-9_.-]*, so that they
// are safe as file names and identifiers in generated code.
#define MAX_LAYER_NAME 64
bool layer_name_ok(const char *s);

// Parses a spec file. On error prints FILE:LINE:COL messages and returns NULL.
Graph *parse_spec_file(const char *path);
// Same for an in-memory spec; `path` is used in messages.
Graph *parse_spec_string(const char *path, const char *text, size_t len);

// ---------------------------------------------------------------- weights and inputs

// A set of named float32 tensors in memory (weights of a graph).
typedef struct {
  int n;
  ParamInfo *info;
  float **data;
} Weights;

// Deterministic initialisation: every tensor's values depend only on the seed and
// the tensor's name, so adding a layer does not change the weights of the others.
// scheme "spec" follows each layer's init rule; "fan-in" uses N(0, sqrt(2/fan_in))
// weights and zero biases, which keeps activations O(1) through deep nets (golden tests).
typedef enum { INIT_SPEC, INIT_FAN_IN } InitScheme;
Weights *weights_init(const Graph *g, uint64_t seed, InitScheme scheme);
// Loads a safetensors file, checking each tensor's presence, dtype and shape.
Weights *weights_load(const Graph *g, const char *path);
bool weights_save(const Weights *w, const char *path);
// Zero-filled tensors for every parameter of g (gradients, momenta).
Weights *weights_zeros(const Graph *g);
void weights_free(Weights *w);
// The weight or bias of layer `layer` (looked up by name, so weights made for the
// spec's graph serve any rewritten version of it); NULL if it has none.
const float *weights_get(const Weights *w, const char *layer, bool is_bias);

// An ONNX model of the ops alexc has (frontend/onnx.c) as spec text, a network called
// `name`, and its weights named LAYER.weight / LAYER.bias in the spec's layouts (both
// allocated). False after one message naming the node and what it lacks.
bool onnx_import(const char *path, const char *name, char **spec, Weights **weights);
// The same for a model in memory (the fuzz target); `path` names it in messages.
bool onnx_import_bytes(const char *path, const uint8_t *data, size_t size, const char *name,
                       char **spec, Weights **weights);

// N(0,1) float32 values for `n` elements, from (seed, stream name).
void fill_normal(float *dst, int64_t n, uint64_t seed, const char *stream, double std);

// ---------------------------------------------------------------- passes

typedef enum {
  FUSE_CONV_RELU_LRN_POOL,
  FUSE_CONV_RELU_LRN,
  FUSE_CONV_RELU_POOL,
  FUSE_CONV_RELU,
  FUSE_FC_RELU_DROPOUT,
  FUSE_FC_RELU,
  FUSE_COUNT
} FusePattern;

typedef struct {
  bool fuse[FUSE_COUNT];  // which fusion patterns may apply
  int devices;            // partition: number of (logical) devices, 1..MAX_DEVICES
  const int *keep;        // nodes whose outputs must stay observable (not fused away)
  int n_keep;
  const char *print_after;  // pass name, or NULL
  bool print_after_all, time_passes;
  FILE *print_to;
} PassOptions;

// Defaults: every fusion pattern on, one device.
PassOptions pass_defaults(void);
const char *fuse_pattern_name(FusePattern p);
// Parses "conv-relu-lrn,fc-relu" into opts->fuse (only those on); false on an unknown name.
bool parse_fuse_list(const char *list, PassOptions *opts, char *bad, size_t bad_size);
bool pass_exists(const char *name);
const char *pass_names(void);  // "fuse, partition, memplan"

// Runs the pipeline: fuse, partition, memplan, with the verifier after each pass.
bool run_passes(Graph *g, const PassOptions *opts);
// The plain plan: one device, nothing fused (what the reference runs as the oracle).
bool plan_plain(Graph *g);

// The passes, one file each under passes/.
bool pass_fuse(Graph *g, const PassOptions *opts);
bool pass_partition(Graph *g, const PassOptions *opts);
bool pass_memplan(Graph *g, const PassOptions *opts);

// Memory report, for `alexc plan`: peak activation bytes per device for a batch.
int64_t plan_peak_bytes(const Graph *g, int device, int batch);
int64_t plan_param_count(const Graph *g, int device);
int64_t plan_bytes_in(const Graph *g, int device);  // bytes received per image


// ---------------------------------------------------------------- reference executor

// Runs a planned graph (run_passes, or plan_plain) on a batch, without changing it.
// `x` is (batch, input shape). Executes fused nodes stage by stage and partitioned
// graphs device by device, each logical device with its own buffers (allocated from
// the memory plan) and explicit transfers between them. Writes the outputs of the nodes
// in `want` (full tensors, gathered from the devices) to out[i], each (batch, node
// shape), allocated; the caller frees them.
bool ref_run(const Graph *g, const Weights *w, const float *x, int batch, const int *want,
             int n_want, float **out);
// Convenience: runs and returns the network output (batch, output shape).
float *ref_run_output(const Graph *g, const Weights *w, const float *x, int batch);

// Runs one node's own op (stage 0; epilogues are separate nodes in a plain graph) on
// whole tensors of one device: xs[j] is input j, (batch, input shape); y is (batch,
// n->out). Dropout is the identity here (inference); training applies its mask.
void ref_node_forward(const Graph *g, const Node *n, const Weights *w, const float *const *xs,
                      float *y, int batch);

// ---------------------------------------------------------------- training (train/)
//
// Training starts from the plain graph (nothing fused by the inference passes). Autodiff
// (train/autodiff.c) turns it into a training program: forward, loss, backward and update
// instructions over values that include the parameters, their gradients and momenta. The
// program has its own verifier and its own fusion of backward chains. The trainer
// (train/train.c) runs it through a table of kernels, one table per target: the reference
// (double accumulation, the oracle) and the CPU target's fast kernels, both checked
// against finite differences and PyTorch.

// Philox4x32-10 (Salmon et al., SC'11): a counter-based generator, so a random number
// is a pure function of (key, counter) and any target or device count draws the same.
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
// The dropout keep mask of one layer at one training step: mask[i] = 1 when element i of
// the (batch, features) tensor is kept. Element i's draw is philox(ctr = {i mod 2^32,
// i >> 32, step mod 2^32, layer_key}, key = {seed mod 2^32, seed >> 32}) word 0, taken as
// u = (word >> 8) * 2^-24 in [0, 1); kept when u >= p. layer_key = fnv1a of the layer name,
// folded to 32 bits (low ^ high), so adding a layer does not change another's masks.
// `first` is the index of mask[0]'s element: a data-parallel process holding images
// [a, a + n) of a global batch draws from element a * features on, so that its masks are
// those one process would draw for the same images.
void dropout_mask(uint64_t seed, uint64_t step, const char *layer, int64_t first, int64_t n,
                  double p, uint8_t *mask);
uint32_t dropout_layer_key(const char *layer);

// One op's call on whole tensors (batch-major, the node's per-image shapes).
typedef struct {
  const Graph *g;
  const Node *n;
  int batch;
  const float *const *x;  // forward inputs, (batch, input j's shape)
  const float *y;         // forward output (backward only)
  const float *w, *b;     // the layer's weight and bias, or NULL
  const uint8_t *mask;    // dropout: the keep mask (training); NULL: identity
  // Backward only: a ReLU's backward fused into this op's (the program's conv-relu and
  // fc-relu patterns, and the first link of the longer chains below). dy is then the
  // gradient of relu(y), and the kernel first keeps it where relu_y, the ReLU's output,
  // is > 0 and zeroes it elsewhere; it may do so in place, since this backward is dy's
  // last reader (the verifier checks it). NULL: not fused.
  const float *relu_y;
  // State the forward saves for the backward (the program's TV_SAVED value; LRN: the
  // window sums of squares, (batch, n->out)). Forward: written when not NULL; backward:
  // read instead of recomputed when not NULL. A table may ignore it: the reference
  // recomputes in double, so the oracle never depends on what a forward saved.
  float *saved;
  // Backward only: a longer chain fused after that ReLU (the conv-relu-lrn, conv-relu-pool
  // and conv-relu-lrn-pool patterns), in forward order conv -> ReLU -> LRN -> max-pool.
  // dy is then the gradient of the chain's last output, and the kernel computes what the
  // plain ops would: the pool's backward into a zeroed d(pool input), the LRN's into a
  // zeroed d(LRN input), the ReLU's mask, then this op's backward. dy is read only. lrn:
  // the LRN's node (NULL: none), lrn_saved its window sums (NULL: recomputed); its input
  // is relu_y, and its output is not passed: the kernel recomputes it from relu_y and the
  // sums, exactly as the forward computed it, so that the program need not keep it. pool:
  // the max-pool's node (NULL: none), pool_y its output (the maxima); its input is the
  // LRN's output, or relu_y without an LRN.
  const Node *lrn, *pool;
  const float *lrn_saved, *pool_y;
} OpCall;

typedef struct {
  const char *name;  // "ref", "cpu"
  // y = op(x) in training mode: dropout multiplies kept elements by 1/(1-p) and zeroes
  // the others (inverted dropout: the inference graph stays the identity).
  void (*forward)(const OpCall *c, float *y);
  // From dy (batch, n->out): dx[j] += dL/dx_j for each input j whose dx[j] is not NULL,
  // and dw = dL/dw, db = dL/db (overwritten, summed over the batch) when not NULL.
  void (*backward)(const OpCall *c, const float *dy, float *const *dx, float *dw, float *db);
  // The paper's update of one parameter tensor of n elements (sgd_update_span's math).
  void (*update)(float *w, float *v, const float *g, int64_t n, double lr);
} TrainKernels;

// The paper's update (section 5) of n elements: v <- 0.9 v - 0.0005 lr w - lr g;
// w <- w + v, in double per element, stored as float. Every table's update calls it (on
// spans of its choosing), and it is compiled once for the baseline ISA, without fused
// multiply-adds, so every target computes the same bits.
void sgd_update_span(float *w, float *v, const float *g, int64_t n, double lr);

extern const TrainKernels ref_train_kernels;

// Softmax cross-entropy over logits (batch, classes), computed with log-sum-exp.
// Returns the mean loss; dlogits (may be NULL) = (softmax - onehot) / batch. Counts
// top-1 and top-5 hits into *top1, *top5 when not NULL.
double softmax_xent(const float *logits, const int32_t *labels, int batch, int classes,
                    float *dlogits, int *top1, int *top5);

extern const TrainKernels cpu_train_kernels;
// Threads the CPU kernels use (default: the CPUs this process may run on). Results are
// bit-identical for any thread count: work is split into fixed chunks, summed in order.
void cpu_train_set_threads(int threads);

// ---- data (train/data.c): batches of images and labels, loaded and augmented on their own
// threads ahead of the compute, deterministically: batch k of epoch e depends only on
// (seed, e, k), so a resumed run sees the same data as an uninterrupted one.

typedef struct Dataset Dataset;

typedef struct {
  int channels, height, width;  // the network's input shape (the crop size)
  bool train;                   // the training split, shuffled and augmented; else the test split
  bool augment;                 // random crops and flips (and PCA colour for photo folders)
  bool ten_crop;                // evaluation: average the ten crops (photo folders)
  uint64_t seed;
  int64_t limit;                // use only the first `limit` examples (0: all)
  int threads;                  // loader threads (0: a default)
  // Data parallelism: process `shard` of `shards` (0 or 1: the whole batch) loads only its
  // contiguous share of each batch: examples [n*shard/shards, n*(shard+1)/shards) of a
  // batch of n. The batches are those of one process (same order, same augmentation).
  int shard, shards;
} DataOptions;

// PATH is a directory holding IDX files (train-images-idx3-ubyte[.gz], train-labels-...,
// t10k-...: MNIST and Fashion-MNIST), or a folder of class subfolders of JPEG/PNG photos
// (PATH/train and PATH/val). Prints one message naming the bad file and returns NULL on
// bad data (truncated IDX, label out of range, shape not matching the network's input).
Dataset *data_open(const char *path, const DataOptions *o);
void data_close(Dataset *d);
int64_t data_size(const Dataset *d);  // examples in the split (after `limit`)
int data_classes(const Dataset *d);
int data_views(const Dataset *d);     // images per example a batch holds: 10 with ten_crop, else 1
// Starts epoch `epoch` at its batch `first` (0, or where a resumed run stopped).
void data_start(Dataset *d, int epoch, int64_t first);
// The next batch: x (n * views, C, H, W) and labels (n); returns n, 0 at the epoch's end.
int data_next(Dataset *d, int batch, float *x, int32_t *labels);
int64_t data_skipped(const Dataset *d);  // unreadable photos skipped so far (warned)
// With shards: the next batch's share, whose size may be 0 (a short last batch split over
// more shards than it has examples); -1 at the epoch's end, which every shard reaches at
// the same batch.
int data_next_part(Dataset *d, int batch, float *x, int32_t *labels);

// ---- checkpoints (train/checkpoint.c): safetensors with the weights, momenta and the
// training state, written atomically (temporary file, fsync, rename, fsync of the
// directory), checked by a hash when read: a corrupt file is refused with a message.

typedef struct {
  Weights *w;          // parameters
  Weights *v;          // momenta, same tensors
  int64_t step;        // SGD steps taken
  int epoch;           // the epoch in progress
  int64_t epoch_step;  // batches of it done
  uint64_t seed;       // data order, augmentation and dropout
  double lr;           // the current base learning rate (a schedule may have divided it)
  double best_metric;  // for the plateau schedule: best validation error so far
  int bad_epochs;      // epochs since it improved
  double loss_sum;     // the epoch in progress so far: summed batch losses,
  int64_t hits, seen;  // top-1 hits and images (the metrics row of a resumed epoch)
} TrainState;

bool checkpoint_save(const char *path, const TrainState *s);
// Loads into s (w and v allocated for g); false with a message on any mismatch.
bool checkpoint_load(const char *path, const Graph *g, TrainState *s);

// ---- reports (train/report.c)

typedef struct {
  int epoch;
  int64_t step;
  double train_loss, train_top1, test_loss, test_top1, test_top5, lr, seconds;
} EpochRow;

// Appends a row to a CSV (writing the header first when the file is new).
bool metrics_append(const char *csv, const EpochRow *r);
// Draws loss and accuracy curves per epoch from the CSV into a PNG (cairo).
bool metrics_plot(const char *csv, const char *png);
// A progress line: a bar redrawn in place on a terminal, plain lines otherwise.
void progress_show(FILE *out, int epoch, int epochs, int64_t step, int64_t steps, double loss,
                   double images_per_s, double eta_s);

// ---- the training program (train/autodiff.c): what autodiff makes of a graph.
//
// Values are numbered; an instruction names the values it reads and writes by role. Per
// image values are sized for the trainer's batch; persistent ones (parameters, their
// gradients and momenta) are batch-independent and live across steps.

typedef enum {
  TV_INPUT,     // the batch of images (per image)
  TV_LABELS,    // a class index per image (int32, per image)
  TV_ACT,       // a node's forward output, kept for the backward (per image)
  TV_MASK,      // a dropout layer's keep mask for the step: saved state (bytes, per image)
  TV_SAVED,     // what a forward saves for its backward (OpCall.saved; per image)
  TV_LOSS,      // the batch's mean loss (one number)
  TV_GRAD,      // dL/d(a node's output) (per image); zero at the start of each step, and
                // every instruction that writes it adds to it (a value read twice sums)
  TV_PARAM,     // a layer's weight or bias (persistent)
  TV_PARAM_GRAD,// its gradient for the step (persistent; overwritten, not added to)
  TV_MOMENTUM,  // its momentum (persistent)
  TV_KIND_COUNT
} TValueKind;

typedef struct {
  TValueKind kind;
  int node;       // the graph node it belongs to; -1 for the labels and the loss
  bool bias;      // parameters, their gradients and momenta: the bias, else the weight
  int64_t elems;  // per image for per-image kinds, else in all
} TValue;

typedef enum {
  TI_MASK,      // out: the dropout layer's mask, drawn from (seed, step, layer)
  TI_FORWARD,   // y = op(x..., w, b, mask)
  TI_LOSS,      // loss, dy (the logits' gradient) = softmax_xent(x[0] = logits, labels)
  TI_BACKWARD,  // dx[j] += ..., dw = ..., db = ... from dy (and x, y, w, mask, a fused chain's)
  TI_UPDATE,    // the paper's SGD on one parameter: v = 0.9 v - 0.0005 lr w - lr dw; w += v
  // With devices > 1 (the partition plan's transfers; forward and backward then run each
  // device's share of the node, train/parallel.c):
  TI_SEND,      // transfer `transfer` of y's node: its channels, from device to device
  TI_REDUCE,    // its transpose: the receiver's partial gradient of those channels added
                // into the sender's dy (the gradient sum across devices)
} TInstrKind;

typedef struct {
  TInstrKind kind;
  int node;      // the op's node; for TI_UPDATE, the parameter's layer
  int n_x;       // the node's inputs
  int *x;        // their values (activations or the input)
  int *dx;       // TI_BACKWARD: their gradients, -1 where none is wanted
  int y, dy;     // the output and its gradient (-1: not used)
  int w, b;      // parameters read (TI_UPDATE: w is the one it updates)
  int dw, db;    // TI_BACKWARD: parameter gradients written; TI_UPDATE: dw is read
  int v;         // TI_UPDATE: the momentum
  int mask;      // dropout's mask (TI_MASK writes it)
  int saved;     // TI_FORWARD writes it, TI_BACKWARD reads it (LRN: window sums), or -1
  int labels, loss;  // TI_LOSS
  int relu;      // TI_BACKWARD with a ReLU's backward fused in: the ReLU's node, else -1
  int relu_y;    // and its output (the mask's source)
  // A longer fused chain after that ReLU (OpCall.lrn, .pool): dy is then the gradient of
  // the chain's last node. lrn: the LRN's node, else -1; lrn_saved: its window sums (its
  // output is recomputed from them, so the program need not keep it for the backward).
  // pool: the max-pool's node, else -1; pool_y: its output.
  int lrn, lrn_saved;
  int pool, pool_y;
  int transfer;  // TI_SEND, TI_REDUCE: the index of the plan's transfer
} TInstr;

typedef struct {
  const Graph *g;
  TValue *values;
  int n_values;
  TInstr *instrs;
  int n_instrs;
  int logits;             // the node whose output are the logits
  int input, labels, loss;
  int *act, *grad, *mask, *saved;  // per node: its value, -1 if none
  bool *needs_grad;       // per node: whether autodiff wanted dL/d(output) (before fusion)
  const Graph *plan;      // devices > 1: the partitioned graph whose transfers it names
  // The memory plan (train_plan_memory; NULL until it has run): per value, its offset in
  // the step's arena in floats per image (-1: not in it), and the first and last
  // instruction touching it (the input's first is -1). A gradient is zeroed at its first.
  int64_t *offset;
  int *first, *last;
  int64_t arena, unshared;  // floats per image: the arena, and the values' sum
} TrainProgram;

// Reverse-mode autodiff of the graph as parsed (plain, one device) into a training
// program: dropout masks, the forward up to the logits (an LRN's also saving its window
// sums for its backward), the loss, the backward in reverse
// (only where a gradient is wanted: a node needs one when it or something before it has
// parameters), and one update per parameter tensor. NULL with a message when the graph
// does not end in class scores.
TrainProgram *autodiff(const Graph *g);
void train_program_free(TrainProgram *p);
// The program's invariants: operands of the right kinds and sizes; every value read is
// written earlier (or lives across steps); a gradient is read only after every
// instruction that adds to it; a parameter gradient is written once; a parameter is
// updated once, after its last read. One message naming the instruction, false otherwise.
bool train_program_verify(const TrainProgram *p);
// For devices > 1: adds a send after each node's forward for each of the plan's transfers
// of the node, and a reduction before its backward (when it wants a gradient and is not
// the logits, whose gradient the loss gives every device whole), in reverse order. The
// devices' pieces run the plain ops: nothing is saved for the backward (an LRN piece
// recomputes its sums).
void train_add_transfers(TrainProgram *p, const Graph *plan);
// Drops the values no instruction uses any more and renumbers the rest (rewrites call
// it; the memory plan must then be made again).
void train_drop_unused_values(TrainProgram *p);
// Fuses backward chains by the patterns in `patterns` (names, NULL-terminated; NULL: all):
// "conv-relu" and "fc-relu" fold a ReLU's backward into the conv's or fc's, which then
// masks the ReLU's output gradient itself; the conv's own output gradient disappears.
// "conv-relu-lrn-pool", "conv-relu-lrn" and "conv-relu-pool" fold the whole chain: the
// conv's backward takes the chain's last gradient, and the gradients of the conv's, the
// ReLU's and the LRN's outputs disappear (the kernels keep them to themselves).
void train_fuse_backward(TrainProgram *p, const char *const *patterns);
// Plans the per-image values into one arena (train/memplan.c): values whose lives do not
// overlap share memory. Rerun after any rewrite (fusion drops the plan).
void train_plan_memory(TrainProgram *p);
bool train_value_in_arena(TValueKind k);
int64_t train_value_floats(const TValue *v);  // per image, aligned
#define TRAIN_MAX_OPERANDS 160
// One operand of an instruction: where it is stored (so a rewrite can renumber it), its
// role's name ("x", "dy", "w", ...), and whether the instruction reads or writes it.
typedef struct {
  int *ref;
  const char *role;
  bool write;
} TOperand;
// The operands of an instruction, reads before writes (an update reads w and v, then
// writes them); returns how many (at most TRAIN_MAX_OPERANDS).
int train_instr_operands(TInstr *in, TOperand *ops);
// The distinct values an instruction reads or writes, into values[]; returns how many.
int train_instr_values(TInstr *in, int *values);
bool train_value_per_image(TValueKind k);  // sized per image (times the batch)
// The phases of a step, in order: 0 masks, 1 forward (with sends), 2 loss, 3 backward
// (with reductions), 4 updates. Instructions are sorted by phase.
typedef enum { PHASE_MASK, PHASE_FORWARD, PHASE_LOSS, PHASE_BACKWARD, PHASE_UPDATE } TPhase;
TPhase train_instr_phase(TInstrKind k);
extern const char *const train_instr_names[];  // by TInstrKind
extern const char *const train_value_kinds[];  // by TValueKind
// The program as text (`alexc dump --train`), with its memory per image and in all.
void train_program_dump(const TrainProgram *p, FILE *out);

// ---- the trainer (train/train.c): SGD on a spec's graph with one target's kernels.

typedef struct Trainer Trainer;

// A trainer for the spec's graph as parsed (unfused; it must outlive the trainer), for
// batches of up to `batch` images, on `devices` logical devices (1: the whole graph;
// more: the partition pass's model-parallel plan, train/parallel.c). Training needs a
// network whose output is softmax (the loss takes its input, the logits) or whose output
// is the logits. NULL with a message otherwise.
Trainer *trainer_new(const Graph *spec, const TrainKernels *k, int batch, int devices);
// The same, with only the backward fusion patterns named in `patterns` (NULL-terminated;
// NULL: all; an empty list: none, the plain program). Fused and plain programs compute
// the same bits.
Trainer *trainer_new_fused(const Graph *spec, const TrainKernels *k, int batch, int devices,
                           const char *const *patterns);
void trainer_free(Trainer *t);
int trainer_classes(const Trainer *t);
// Loss and gradients of the mean softmax cross-entropy over n images, with dropout
// masks drawn from (seed, step). grad holds the same tensors as w. Counts top-1 hits.
double trainer_grad(Trainer *t, const Weights *w, uint64_t seed, int64_t step, const float *x,
                    const int32_t *labels, int n, Weights *grad, int *top1);
// One step of the paper's SGD on s (weights, momenta, step): v <- 0.9 v - 0.0005 lr w
// - lr dL/dw; w <- w + v. Returns the loss.
double trainer_step(Trainer *t, TrainState *s, double lr, const float *x, const int32_t *labels,
                    int n, int *top1);
// Data parallelism: a step on this process's n images, images [first, first + n) of a
// global batch of `total` spread over the processes of dist_*. The loss gradient is
// weighted by n / total, so the gradients summed over processes (dist_iallreduce, in
// buckets started as the backward pass finishes them, see train.c) are those of the mean
// loss over the global batch; every process then takes the same update. n may be 0.
// Returns the sum of this process's losses (not the mean); counts its top-1 hits.
double trainer_step_part(Trainer *t, TrainState *s, double lr, const float *x,
                         const int32_t *labels, int n, int first, int total, int *top1);
// The size of trainer_step_part's gradient buckets (default 1 MiB; a bucket holds whole
// tensors, at least one).
void trainer_set_bucket_bytes(Trainer *t, int64_t bytes);
// With devices > 1: this process runs only device `device` of the split, the others
// being the other MPI ranks (alexc train --device-ranks; see split_set_self).
void trainer_set_device_rank(Trainer *t, int device);
// After trainer_set_device_rank: the owners' rows of the state's weights and momenta on
// every rank (a collective), before anything reads them whole.
void trainer_assemble_state(const Trainer *t, TrainState *s);
// Inference (dropout off): the logits of n images, (n, classes).
void trainer_logits(Trainer *t, const Weights *w, const float *x, int n, float *logits);
// Profiling, for benchmarks: each node's forward and backward seconds are added to
// forward_s[i] and backward_s[i] (arrays of g->n_nodes), and the update's to *update_s.
// NULLs turn it off.
void trainer_profile(Trainer *t, double *forward_s, double *backward_s, double *update_s);
// The training program as text (`alexc dump --train`), and the split's plan with devices.
void trainer_dump(const Trainer *t, FILE *out);

// ---- model-parallel training (train/parallel.c), used by the trainer for devices > 1.

typedef struct Split Split;

// Partitions a copy of the spec over `devices` and builds each device's share of every
// node up to `logits`; needs_grad (per node, kept by reference) says which gradients
// the backward computes. NULL with a message if the plan cannot be run.
Split *split_new(const Graph *spec, int devices, int batch, int logits, const bool *needs_grad);
void split_free(Split *s);
// Node i's forward on every device: each device's pieces (masks[i]: dropout node i's whole
// mask, NULL: inference). For the logits, also gathers them whole into `logits`, (n, classes).
void split_node_forward(Split *s, const TrainKernels *k, const Weights *w, const float *x,
                        int n, uint8_t *const *masks, int i, float *logits);
// Node i's backward on every device: each device's pieces, adding to the partial input
// gradients on their device and writing their rows of gw. The logits' backward starts the
// pass: it clears the devices' gradients and hands each its share of dlogits.
void split_node_backward(Split *s, const TrainKernels *k, const Weights *w, int i,
                         const float *dlogits, int n, Weights *gw);
// The plan's transfer t, forward (channels copied to the receiver) and transposed (the
// receiver's partial gradient added into the sender's).
void split_send(Split *s, int transfer, int n);
void split_reduce(Split *s, int transfer, int n);
// Devices as MPI ranks (alexc train --device-ranks): this process runs only device `self`
// (its rank), and transfers are messages between the ranks; -1 (the default): every
// device in this process.
void split_set_self(Split *s, int self);
// With a `self`: every rank's copy of w (weights or momenta) takes each row's owner's
// values (the device whose piece computes it), summed over the ranks. A collective.
void split_assemble(const Split *s, Weights *w);
const Graph *split_plan(const Split *s);  // the partitioned graph: its transfers
// The pieces, read-only (the CUDA backend's training plan runs them as kernels), in the
// order split_node_forward runs them (backward: reversed).
typedef struct {
  int node, device;
  const Graph *g;     // the local graph: the inputs it reads (nodes 0..n_in-1), then the op
  Range out, lout;    // channels it contributes; channels its op computes (an LRN's halo)
  int n_in;
  const int *input;   // spec node of each local input
  const Range *in;    // the channels of it read
  int64_t w_off, b_off;  // its first weight and bias element in the layer's tensors
} SplitPiece;
int split_n_pieces(const Split *s);
SplitPiece split_piece(const Split *s, int k);
// The devices' pieces, for `alexc dump --train --devices N`.
void split_dump(const Split *s, FILE *out);

// ---- processes (train/dist.c with MPI, train/dist_none.c without): training's only
// contact with MPI (data parallelism, and --device-ranks's messages). Without an MPI
// launch (or without MPI) there is one process, rank 0 of 1, and every call below is a
// no-op, but for the messages, which one process never sends (an internal error).

// Joins the job when a launcher (mpirun) started this process, else does nothing. False
// with a message when it cannot: a build without MPI launched as one of several ranks.
bool dist_init(void);
void dist_finalize(void);
int dist_rank(void);
int dist_size(void);
int dist_local_size(void);  // ranks on this machine (for the default thread count)
int dist_local_rank(void);  // this rank among them, 0.. (its GPUs start at local rank x devices)
// Blocking in-place sum over all ranks, in double (counts, losses, metrics).
void dist_allreduce_f64(double *buf, int n);
// Starts an in-place sum of a float buffer over all ranks (a gradient bucket); the buffer
// must stay untouched until dist_wait_all. dist_progress lets MPI move started sums on
// between layers of the backward pass (Open MPI progresses only inside MPI calls).
void dist_iallreduce_f32(float *buf, int64_t n);
void dist_progress(void);
void dist_wait_all(void);
// Copies `bytes` of rank 0's buf to every rank's buf.
void dist_broadcast(void *buf, size_t bytes);
// Blocking point-to-point messages of n floats (the model-parallel split's transfers).
void dist_send_f32(const float *buf, int64_t n, int to);
void dist_recv_f32(float *buf, int64_t n, int from);
// Ends every rank of the job (after a message), for an error some ranks cannot see.
_Noreturn void dist_abort(int status);

// ---------------------------------------------------------------- CLI

int cmd_check(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_input(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_golden(int argc, char **argv);
int cmd_compile(int argc, char **argv);
int cmd_bench(int argc, char **argv);
// Each target's own compile and bench (tools/targets.c dispatches on --target).
int cmd_bench_cpu(int argc, char **argv);
int cmd_compile_cpu(int argc, char **argv);
int cmd_bench_cuda(int argc, char **argv);
int cmd_compile_cuda(int argc, char **argv);
int cmd_build(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_import(int argc, char **argv);

#endif
