// The implicit-GEMM convolution kernel (--conv implicit): one kernel per conv node and
// device that computes the convolution as a tiled GEMM without ever storing the im2col
// column matrix. The input values each tile needs are gathered from the activation
// buffer as the tile is loaded into shared memory.
//
// The kernel writes exactly what the --conv gemm path's cuBLAS writes: the conv output
// of the chunk's images in scratch, channel-major ((channel - first channel) * M + m,
// m = image * pixels + pixel, M = the chunk's images x pixels), without the bias. So the
// node's epilogue kernel (render.c: bias, then the fused ReLU/LRN/pool stages) runs
// unchanged after it, and the plan (schedule.c, plan_conv_implicit) is one chunk of two
// kernel steps. The tiling is explained in the comment block cuda_emit_implicit_conv
// writes into the generated source.
//
// Except when all the node does after the conv is a ReLU, or nothing (AlexNet's conv3 and
// conv4 fused; every conv unfused): then the kernel adds the bias, applies the ReLU in
// registers and writes the node's output buffer itself, over the whole batch; no
// epilogue kernel, no scratch, no chunks (cuda_implicit_writes_output).
#include <math.h>
#include <string.h>

#include "cuda.h"

// The tiling. A block of 16 x 16 threads computes a tile of 64 pixels x BN kernels,
// each thread a 4 x TN register tile (BN = 16 TN), 16 deep per shared-memory step: a
// step loads 16 x (64 + BN) values and does 64 x BN x 16 FMAs. BN is chosen per kernel
// (choose_bn, cuda_fused_tile) to fit the kernels a tile covers: AlexNet's conv1 has 96
// (BN 96), its groups 128 or 192 (BN 128, 96). Tuning the rest per layer is for a
// session with a GPU.
#define TILE_M 64     // output pixels per block tile
#define TILE_K 16     // GEMM depth per shared-memory step
#define THREAD_M 4    // pixels per thread
#define THREADS_N (CUDA_IMPLICIT_THREADS / (TILE_M / THREAD_M))  // threads along the kernels
#define MAX_TN 8      // kernels per thread at most: BN <= 128, 32 accumulators
// Elements of padding per weight-tile row: a row stays a multiple of 16 bytes long, for
// the fp32 step's float4 loads and wmma's ldm; 4 floats (fp32, tf32) or 8 bfloat16s.
// Its transposing stores (16 consecutive rows per warp) then meet 8 bank groups of 4:
// 2-way conflicts, once per element loaded (BN / 16 per thread and depth step), where
// the vector loads save 16 x (TN - TN / W_VEC) instructions per step.
static int b_pad(RtPrecision p) { return p == RT_BF16 ? 8 : 4; }
// With tensor cores, the A tile's and the accumulators' rows (depths, kernels) are
// padded too: at 64 floats (256 bytes) every row starts in bank 0, so a fragment's
// rows, read or written together, met in the same banks; 4 floats (8 bfloat16s) more
// put consecutive rows 4 banks apart, and keep rows a multiple of 16 bytes and
// fragments 32-byte aligned, as wmma requires. The fp32 path reads A rows as
// consecutive float4s and needs none.
static int a_pad(RtPrecision p) { return p == RT_FP32 ? 0 : p == RT_TF32 ? 4 : 8; }
#define C_PAD 4

_Static_assert(CUDA_IMPLICIT_THREADS % (TILE_M / THREAD_M) == 0,
               "a block has one thread per register tile");

// The BN a precision allows: any multiple of THREADS_N on the CUDA cores; with tensor
// cores whole 16-wide fragments for each of the 2 warps along the kernels (WARPS_N).
static int bn_step(RtPrecision p) { return p == RT_FP32 ? THREADS_N : 2 * 16; }

// Bytes of static shared memory the GEMM needs: its operand tiles, which tensor cores
// also use for the accumulators once the depth loop is done (BN x (64 + C_PAD) floats:
// the whole tile, MMA_TO_ACC).
static int gemm_smem(RtPrecision p, int bn) {
  int element = p == RT_BF16 ? 2 : 4;
  int operands = element * TILE_K * (TILE_M + a_pad(p) + bn + b_pad(p));
  int accumulators = p == RT_FP32 ? 0 : 4 * (TILE_M + C_PAD) * bn;
  return operands > accumulators ? operands : accumulators;
}

// The BN for tiles of `width` kernels: the fewest padded kernels, then the widest.
static int choose_bn(int64_t width, RtPrecision p) {
  int best = bn_step(p);
  int64_t best_padded = INT64_MAX;
  for (int bn = bn_step(p); bn <= THREADS_N * MAX_TN; bn += bn_step(p)) {
    int64_t padded = (width + bn - 1) / bn * bn;
    if (padded <= best_padded) {
      best_padded = padded;
      best = bn;
    }
  }
  return best;
}

// Where a conv's implicit kernel works on device d: the channels it computes (stage[0],
// LRN halo included) and the groups they meet.
typedef struct {
  Range r;                    // channels computed: the rows of the output, the weight slice
  int64_t per_group;          // kernels per group
  int64_t first_group, groups;
  int bn;                     // kernels per block tile
  int64_t n_tiles_per_group;  // BN-wide tiles of the widest group part in r
  int64_t pixels;             // output pixels per image
} Implicit;

static Implicit implicit_of(const Node *n, int d, RtPrecision prec) {
  Implicit t = {.r = n->place[d].stage[0]};
  t.per_group = n->conv.out / n->conv.groups;
  t.pixels = shape_plane(n->head_out);
  if (!range_len(t.r))
    return t;
  t.first_group = t.r.begin / t.per_group;
  t.groups = (t.r.end - 1) / t.per_group - t.first_group + 1;
  int64_t widest = 0;
  for (int64_t g = t.first_group; g < t.first_group + t.groups; g++) {
    int64_t lo = g * t.per_group > t.r.begin ? g * t.per_group : t.r.begin;
    int64_t hi = (g + 1) * t.per_group < t.r.end ? (g + 1) * t.per_group : t.r.end;
    widest = hi - lo > widest ? hi - lo : widest;
  }
  t.bn = choose_bn(widest, prec);
  t.n_tiles_per_group = (widest + t.bn - 1) / t.bn;
  return t;
}

bool cuda_implicit_writes_output(const Node *n, int d) {
  const Placement *pl = &n->place[d];
  Range r0 = pl->stage[0], last = pl->stage[n->n_epilogue];
  bool relu_or_nothing = n->n_epilogue == 0 || (n->n_epilogue == 1 && n->epilogue[0].op == OP_RELU);
  return n->op == OP_CONV && relu_or_nothing && !pl->in_place && r0.begin == last.begin &&
         r0.end == last.end;
}

int64_t cuda_implicit_work(const Node *n, int d, RtPrecision prec) {
  Implicit t = implicit_of(n, d, prec);
  // Whole pixel tiles per image, so that work * batch / block is at least the number of
  // tiles, ceil(batch * pixels / TILE_M) * N_TILES; the blocks past it find no tile.
  return (t.pixels + TILE_M - 1) / TILE_M * t.groups * t.n_tiles_per_group * CUDA_IMPLICIT_THREADS;
}

// The last lines of a kernel's head comment: where its arithmetic runs.
static void emit_precision_note(FILE *f, RtPrecision prec) {
  if (prec == RT_FP32)
    fputs("// fp32 on CUDA cores throughout.\n\n", f);
  else
    fprintf(f,
            "// The GEMM on tensor cores (--precision %s): its operands %s as they\n"
            "// are stored in shared memory, float accumulators; everything else in float.\n\n",
            rt_precision_name(prec),
            prec == RT_TF32 ? "rounded to tf32" : "rounded to bfloat16");
}

// The comment block at the head of the kernel: what it computes and how it is tiled.
static void emit_comment(FILE *f, const Node *n, const Implicit *t, const char *kname,
                         const char *epilogue, bool writes_output, RtPrecision prec) {
  fprintf(f, "// ---------------------------------------------------------------- %s\n//\n", kname);
  if (writes_output)
    fprintf(f,
            "// %s as a tiled implicit GEMM (--conv implicit): channels [%lld, %lld) of the\n"
            "// batch, %swritten straight to the node's output buffer:\n"
            "// no epilogue kernel, no scratch.\n",
            n->name, (long long)t->r.begin, (long long)t->r.end,
            n->n_epilogue ? (n->conv.bias ? "bias and ReLU applied in registers, " : "ReLU applied in registers, ")
                          : n->conv.bias ? "bias added in registers, " : "");
  else
    fprintf(f,
            "// %s as a tiled implicit GEMM (--conv implicit): channels [%lld, %lld) of the\n"
            "// chunk's images, without the bias, to scratch, where %s (bias and the fused\n"
            "// stages) reads them.\n",
            n->name, (long long)t->r.begin, (long long)t->r.end, epilogue);
  fputs("//\n"
        "// Group g's GEMM: out[c][m] = sum over k of A[k][m] * W[c][k], for\n"
        "//   m   an output pixel of the images, image-major:\n"
        "//       m = image * PIXELS + oy * OUT_W + ox, M = batch * PIXELS of them;\n"
        "//   c   a kernel of group g computed here, in [C_BEGIN, C_END);\n"
        "//   k   the group's depth: input channel ic of the group, kernel row ky and\n"
        "//       column kx, k = (ic * K + ky) * K + kx, DEPTH of them: the layout of a\n"
        "//       kernel's weights, so W is the weight slice exactly as stored.\n"
        "// A is the im2col matrix, never stored: A[k][m] is the input value under tap k\n"
        "// of pixel m's window, zero where the window hangs over the padding, read from\n"
        "// the input when a tile of A is loaded.\n"
        "//\n"
        "// Tiling. A block computes a tile of BM pixels x BN kernels of one group. It\n"
        "// walks the depth BK at a time: its threads copy the BK x BM slice of A and the\n"
        "// BK x BN slice of W into shared memory (out-of-range entries as zeros),\n"
        "// __syncthreads(), then each thread accumulates its TM x TN register tile with\n"
        "// BK x TM x TN FMAs, and __syncthreads() again before the next step overwrites\n"
        "// the tiles. A thread's pixels are t_m * TM + i and its kernels t_n * TN + j\n"
        "// (adjacent), so that it reads its TM pixels at a depth with one float4 load and\n"
        "// its TN kernels with TN / W_VEC float4 (float2) loads: a warp's 16 distinct\n"
        "// float4s of A are 256 consecutive bytes, 2 wavefronts free of bank conflicts,\n"
        "// and its W loads are 2 distinct addresses (broadcast).\n"
        "//\n"
        "// Loads. For A, consecutive threads take consecutive pixels of one depth row,\n"
        "// so a warp reads 32 neighbouring output pixels' taps: consecutive input\n"
        "// addresses for stride 1, STRIDE apart otherwise. Each thread keeps the same\n"
        "// pixel for a whole tile, so its window origin is computed once per tile. For\n"
        "// W, consecutive threads take consecutive depths of one kernel (16 consecutive\n"
        "// floats of a weight row); the W tile's rows are padded by B_PAD floats so that\n"
        "// these transposing stores hit 32 different banks.\n"
        "//\n"
        "// Grid. Tiles are numbered pixel tile major, kernel tile minor: blocks that run\n"
        "// together share their input pixels (the gathered operand) in L1/L2. A kernel\n"
        "// tile is one group's: the groups [FIRST_GROUP, FIRST_GROUP + GROUPS) that\n"
        "// [C_BEGIN, C_END) meets each get N_TILES_PER_GROUP, enough for the widest part\n"
        "// of a group computed here (a group cut by this device's range has fewer; its\n"
        "// surplus tiles are skipped). The plan launches whole pixel tiles per image\n"
        "// (at least as many blocks as tiles; up to a cap), and blocks loop over tiles\n"
        "// grid-stride.\n"
        "//\n",
        f);
  emit_precision_note(f, prec);
}

// Writes `text` with `indent` before each line but preprocessor lines and empty ones.
static void emit_indented(FILE *f, const char *indent, const char *text) {
  for (const char *line = text; *line;) {
    const char *nl = strchr(line, '\n');
    size_t len = nl ? (size_t)(nl - line) + 1 : strlen(line);
    if (*line != '#' && *line != '\n')
      fputs(indent, f);
    fwrite(line, 1, len, f);
    line += len;
  }
}

// The GEMM of one block tile: acc[i][j] = the conv at pixel t_m * TM + i and kernel
// n0 + t_n * TN + j of the tile, over the whole depth. Expects the loader's pixel
// (m_ok, iy0, ix0), the group's input (x_base) and the kernels [n0, n_end) in scope;
// block-uniform, as its barriers need. fp32: FMAs on the CUDA cores, each thread its
// register tile. tf32/bf16: the operands rounded as they are stored in shared memory,
// each warp multiplying 16 x 16 fragments on the tensor cores (wmma), the accumulators
// then passed through shared memory into the fp32 path's acc[i][j].
static const char FMA_INIT[] = "float acc[TM][TN] = {};\n";
static const char MMA_INIT[] =
    "wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc_frag[FRAGS_N];\n"
    "#pragma unroll\n"
    "for (int f = 0; f < FRAGS_N; f++)\n"
    "  wmma::fill_fragment(acc_frag[f], 0.0f);\n";
// The tile loads; each %s...%s wraps a loaded value (to_operand() with tensor cores), and
// each %*s indents the continuation lines under it.
static const char LOADS[] =
    "for (int k0 = 0; k0 < DEPTH; k0 += BK) {\n"
    "#pragma unroll\n"
    "  for (int r = 0; r < A_LOADS; r++) {\n"
    "    const int kr = a_k + A_ROW_STEP * r, k = k0 + kr;\n"
    "    const int ic = k / (K * K), ky = k / K %% K, kx = k %% K;\n"
    "    const int iy = iy0 + ky, ix = ix0 + kx;\n"
    "    a_tile[kr][a_m] = %sm_ok && k < DEPTH && iy >= 0 && iy < IN_H && ix >= 0 && ix < IN_W\n"
    "                      %*s    ? x0[x_base + (ic * IN_H + iy) * IN_W + ix]\n"
    "                      %*s    : 0.0f%s;\n"
    "  }\n"
    "#pragma unroll\n"
    "  for (int r = 0; r < B_LOADS; r++) {\n"
    "    const int nr = b_n + B_COL_STEP * r, k = k0 + b_k;\n"
    "    b_tile[b_k][nr] = %sn0 + nr < n_end && k < DEPTH\n"
    "                      %*s    ? w[(long long)(n0 + nr - C_BEGIN) * DEPTH + k]\n"
    "                      %*s    : 0.0f%s;\n"
    "  }\n"
    "  __syncthreads();  // the tiles are complete\n";
static const char FMA_STEP[] =
    "#pragma unroll\n"
    "  for (int kr = 0; kr < BK; kr++) {\n"
    "    // This thread's pixels and kernels at depth k0 + kr, in vector loads.\n"
    "    const float4 a4 = *reinterpret_cast<const float4 *>(&a_tile[kr][t_m * TM]);\n"
    "    const float a_frag[TM] = {a4.x, a4.y, a4.z, a4.w};\n"
    "    float w_frag[TN];\n"
    "    load_w(&b_tile[kr][t_n * TN], w_frag);\n"
    "#pragma unroll\n"
    "    for (int i = 0; i < TM; i++)\n"
    "#pragma unroll\n"
    "      for (int j = 0; j < TN; j++)\n"
    "        acc[i][j] += a_frag[i] * w_frag[j];  // contracted to an FMA\n"
    "  }\n";
static const char MMA_STEP[] =
    "#pragma unroll\n"
    "  for (int kk = 0; kk < BK; kk += WK) {\n"
    "    // The warp's 16 pixels, and each of its FRAGS_N x 16 kernels, at depths kk...\n"
    "    wmma::fragment<wmma::matrix_a, 16, 16, WK, OperandPrecision, wmma::col_major> a_frag;\n"
    "    wmma::load_matrix_sync(a_frag, &a_tile[kk][warp_m * 16], A_LD);\n"
    "#pragma unroll\n"
    "    for (int f = 0; f < FRAGS_N; f++) {\n"
    "      wmma::fragment<wmma::matrix_b, 16, 16, WK, OperandPrecision, wmma::row_major> b_frag;\n"
    "      wmma::load_matrix_sync(b_frag, &b_tile[kk][(warp_n * FRAGS_N + f) * 16], BN + B_PAD);\n"
    "      wmma::mma_sync(acc_frag[f], a_frag, b_frag, acc_frag[f]);\n"
    "    }\n"
    "  }\n";
static const char STEP_END[] =
    "  __syncthreads();  // every thread is done with the tiles\n"
    "}\n";
static const char MMA_TO_ACC[] =
    "// The warps' accumulators, through shared memory (c_tile, over the operand tiles: BN\n"
    "// kernels x BM pixels), into the fp32 path's layout: acc[i][j] at pixel t_m * TM + i,\n"
    "// kernel t_n * TN + j, read as float4s of the thread's 4 pixels. The whole tile at\n"
    "// once: each warp's fragments die as they are stored, before acc is loaded (in two\n"
    "// passes of half the tile both were live, and the kernels took up to 128 registers).\n"
    "#pragma unroll\n"
    "for (int f = 0; f < FRAGS_N; f++)\n"
    "  wmma::store_matrix_sync(&c_tile[(warp_n * FRAGS_N + f) * 16][warp_m * 16], acc_frag[f], C_LD,\n"
    "                          wmma::mem_col_major);\n"
    "__syncthreads();  // c_tile is complete\n"
    "float acc[TM][TN];\n"
    "#pragma unroll\n"
    "for (int j = 0; j < TN; j++) {\n"
    "  const float4 v = *reinterpret_cast<const float4 *>(&c_tile[t_n * TN + j][t_m * TM]);\n"
    "  acc[0][j] = v.x, acc[1][j] = v.y, acc[2][j] = v.z, acc[3][j] = v.w;\n"
    "}\n"
    "__syncthreads();  // c_tile is read: the next operand tiles may overwrite it\n";

static void emit_k_loop(FILE *f, const char *indent, RtPrecision prec) {
  bool tc = prec != RT_FP32;
  const char *open = tc ? "to_operand(" : "", *close = tc ? ")" : "";
  int w = (int)strlen(open);
  char loads[sizeof LOADS + 128];
  snprintf(loads, sizeof loads, LOADS, open, w, "", w, "", close, open, w, "", w, "", close);
  emit_indented(f, indent, tc ? MMA_INIT : FMA_INIT);
  emit_indented(f, indent, loads);
  emit_indented(f, indent, tc ? MMA_STEP : FMA_STEP);
  emit_indented(f, indent, STEP_END);
  if (tc)
    emit_indented(f, indent, MMA_TO_ACC);
}

// The tiling's constants (inside the kernel's namespace): the block, thread and, with
// tensor cores, warp tiles and the operand type.
static void emit_tiling(FILE *f, RtPrecision prec, int bn) {
  fprintf(f,
          "// The GEMM's tiling.\n"
          "constexpr int BM = %d, BN = %d, BK = %d;  // block tile: pixels x kernels, depth step\n"
          "constexpr int TM = %d, TN = %d;  // thread tile: pixels x kernels\n"
          "constexpr int THREADS_M = BM / TM, THREADS_N = BN / TN;\n"
          "constexpr int THREADS = THREADS_M * THREADS_N;\n"
          "constexpr int A_PAD = %d, B_PAD = %d;  // elements after each A, W tile row\n"
          "constexpr int A_LD = BM + A_PAD;\n"
          "constexpr int A_ROW_STEP = THREADS / BM, A_LOADS = BK / A_ROW_STEP;  // per thread and step\n"
          "constexpr int B_COL_STEP = THREADS / BK, B_LOADS = BN / B_COL_STEP;\n"
          "static_assert(THREADS %% BM == 0 && BK %% A_ROW_STEP == 0 && THREADS %% BK == 0 &&\n"
          "                  BN %% B_COL_STEP == 0,\n"
          "              \"the tile loads divide evenly among the threads\");\n"
          "static_assert(TM == 4, \"a thread's pixels at a depth are one float4\");\n",
          TILE_M, bn, TILE_K, THREAD_M, bn / THREADS_N, a_pad(prec), b_pad(prec));
  if (prec == RT_FP32) {
    fputs("constexpr int GEMM_SMEM = sizeof(float) * BK * (A_LD + BN + B_PAD);  // the operand tiles\n"
          "\n"
          "// A thread's TN kernels at one depth, from its row of the W tile: float4 loads where\n"
          "// TN allows, else float2 or float (the row, t_n * TN floats in, is aligned to them:\n"
          "// rows are BN + B_PAD floats, a multiple of 4).\n"
          "constexpr int W_VEC = TN % 4 == 0 ? 4 : TN % 2 == 0 ? 2 : 1;\n"
          "__device__ __forceinline__ void load_w(const float *row, float (&w_frag)[TN]) {\n"
          "#pragma unroll\n"
          "  for (int j = 0; j < TN; j += W_VEC) {\n"
          "    if constexpr (W_VEC == 4) {\n"
          "      const float4 v = *reinterpret_cast<const float4 *>(row + j);\n"
          "      w_frag[j] = v.x, w_frag[j + 1] = v.y, w_frag[j + 2] = v.z, w_frag[j + 3] = v.w;\n"
          "    } else if constexpr (W_VEC == 2) {\n"
          "      const float2 v = *reinterpret_cast<const float2 *>(row + j);\n"
          "      w_frag[j] = v.x, w_frag[j + 1] = v.y;\n"
          "    } else {\n"
          "      w_frag[j] = row[j];\n"
          "    }\n"
          "  }\n"
          "}\n",
          f);
    return;
  }
  bool tf32 = prec == RT_TF32;
  fprintf(f,
          "\n"
          "// Tensor cores (--precision %s): a warp computes 16 pixels x FRAGS_N x 16 kernels,\n"
          "// 16 x 16 x WK at a time; the operands are stored in shared memory %s.\n"
          "using Operand = %s;\n"
          "using OperandPrecision = %s;\n"
          "constexpr int WK = %d;\n"
          "__device__ __forceinline__ Operand to_operand(float v) { return %s(v); }\n"
          "constexpr int WARPS = THREADS / 32, WARPS_M = BM / 16, WARPS_N = WARPS / WARPS_M;\n"
          "constexpr int FRAGS_N = BN / 16 / WARPS_N;  // accumulator fragments per warp\n"
          "static_assert(WARPS %% WARPS_M == 0 && BN %% (16 * WARPS_N) == 0 && BK %% WK == 0,\n"
          "              \"the warps tile the block tile\");\n"

          "// Shared memory for the operand tiles, reused for the accumulators (c_tile).\n"
          "constexpr int C_LD = BM + %d;  // c_tile's rows: kernels, each BM pixels and padding\n"
          "constexpr int OPERAND_BYTES = sizeof(Operand) * BK * (A_LD + BN + B_PAD);\n"
          "constexpr int C_BYTES = sizeof(float) * C_LD * BN;\n"
          "constexpr int GEMM_SMEM = OPERAND_BYTES > C_BYTES ? OPERAND_BYTES : C_BYTES;\n",
          rt_precision_name(prec),
          tf32 ? "rounded to tf32 (float storage)" : "as bfloat16",
          tf32 ? "float" : "__nv_bfloat16", tf32 ? "wmma::precision::tf32" : "__nv_bfloat16",
          tf32 ? 8 : 16, tf32 ? "wmma::__float_to_tf32" : "__float2bfloat16", C_PAD);
}

// The kernel's shared operand tiles, carved out of the GEMM_SMEM bytes at `smem` (which
// the caller declares), and its threads' roles in loading and computing.
static void emit_gemm_preamble(FILE *f, RtPrecision prec, const char *smem) {
  if (prec == RT_FP32)
    fprintf(f,
            "  // A: input values under the taps; W, transposed: depth x kernels.\n"
            "  float(*const a_tile)[A_LD] = reinterpret_cast<float(*)[A_LD]>(%s);\n"
            "  float(*const b_tile)[BN + B_PAD] =\n"
            "      reinterpret_cast<float(*)[BN + B_PAD]>(%s + sizeof(float) * BK * A_LD);\n",
            smem, smem);
  else
    fprintf(f,
            "  // A: input values under the taps, W: transposed, depth x kernels; then the\n"
            "  // accumulators, kernels x pixels.\n"
            "  Operand(*const a_tile)[A_LD] = reinterpret_cast<Operand(*)[A_LD]>(%s);\n"
            "  Operand(*const b_tile)[BN + B_PAD] =\n"
            "      reinterpret_cast<Operand(*)[BN + B_PAD]>(%s + sizeof(Operand) * BK * A_LD);\n"
            "  float(*const c_tile)[C_LD] = reinterpret_cast<float(*)[C_LD]>(%s);\n",
            smem, smem, smem);
  fputs("  // Loads: A column a_m at rows a_k + A_ROW_STEP * r; W row b_k at columns\n"
        "  // b_n + B_COL_STEP * r. Compute: pixels t_m * TM + i, kernels t_n * TN + j.\n"
        "  const int a_m = threadIdx.x % BM, a_k = threadIdx.x / BM;\n"
        "  const int b_k = threadIdx.x % BK, b_n = threadIdx.x / BK;\n"
        "  const int t_m = threadIdx.x % THREADS_M, t_n = threadIdx.x / THREADS_M;\n",
        f);
  if (prec != RT_FP32)
    fputs("  const int warp = threadIdx.x / 32, warp_m = warp % WARPS_M, warp_n = warp / WARPS_M;\n", f);
}

// "// The convolution." and its constants, in both kernels' namespaces: sizes, the input
// channels held here, groups, depth, the channels computed here (stage[0], the weight
// slice's rows). The caller adds the output's size, under its kernel's names.
static void emit_conv_constants(FILE *f, const Graph *g, int node, int d) {
  const Node *n = &g->nodes[node], *in = &g->nodes[n->inputs[0]];
  const ConvAttrs *a = &n->conv;
  const Placement *pi = &in->place[d];
  Range r0 = n->place[d].stage[0];
  fprintf(f,
          "// The convolution.\n"
          "constexpr int IN_H = %lld, IN_W = %lld, K = %d, STRIDE = %d, PAD_TOP = %d, PAD_LEFT = %d;\n"
          "constexpr int IN_HELD_BEGIN = %lld, IN_HELD = %lld;  // input channels held here\n"
          "constexpr int IN_PER_GROUP = %lld, OUT_PER_GROUP = %lld;\n"
          "constexpr int DEPTH = IN_PER_GROUP * K * K;  // the GEMM's k: weights per kernel\n"
          "constexpr int C_BEGIN = %lld, C_END = %lld;  // computed here: the weight slice's rows\n",
          (long long)in->out.h, (long long)in->out.w, a->kernel, a->stride, a->pad.top, a->pad.left,
          (long long)pi->held.begin, (long long)range_len(pi->held),
          (long long)(in->out.c / a->groups), (long long)(a->out / a->groups),
          (long long)r0.begin, (long long)r0.end);
}

void cuda_emit_implicit_conv(FILE *f, const Graph *g, int node, int d, const char *kname,
                             const char *epilogue, RtPrecision prec) {
  const Node *n = &g->nodes[node];
  const ConvAttrs *a = &n->conv;
  const Placement *pl = &n->place[d];
  Implicit t = implicit_of(n, d, prec);
  bool writes_output = cuda_implicit_writes_output(n, d);
  emit_comment(f, n, &t, kname, epilogue, writes_output, prec);
  fprintf(f, "namespace node%02d_implicit {\n\n", node);
  emit_conv_constants(f, g, node, d);
  fprintf(f, "constexpr int OUT_H = %lld, OUT_W = %lld, PIXELS = OUT_H * OUT_W;  // its output\n",
          (long long)n->head_out.h, (long long)n->head_out.w);
  fprintf(f, "constexpr int FIRST_GROUP = %lld, GROUPS = %lld;  // the groups [C_BEGIN, C_END) meets\n",
          (long long)t.first_group, (long long)t.groups);
  if (writes_output)
    fprintf(f, "constexpr int HELD_BEGIN = %lld, HELD = %lld;  // output channels held here\n",
            (long long)pl->held.begin, (long long)range_len(pl->held));
  fprintf(f, "constexpr int N_TILES_PER_GROUP = %lld, N_TILES = GROUPS * N_TILES_PER_GROUP;\n\n",
          (long long)t.n_tiles_per_group);
  emit_tiling(f, prec, t.bn);
  fprintf(f, "\n}  // namespace node%02d_implicit\n\n", node);

  fprintf(f,
          "extern \"C\" __global__ __launch_bounds__(node%02d_implicit::THREADS) void %s(\n"
          "    const float *__restrict__ x0,\n"
          "    const float *__restrict__ w,\n",
          node, kname);
  if (writes_output)
    fprintf(f, "%s    float *__restrict__ y,\n", a->bias ? "    const float *__restrict__ b,\n" : "");
  else
    fputs("    float *__restrict__ out,\n", f);
  fprintf(f, "    int batch) {\n  using namespace node%02d_implicit;\n", node);
  fputs("  __shared__ __align__(32) unsigned char smem[GEMM_SMEM];\n", f);
  emit_gemm_preamble(f, prec, "smem");
  fprintf(f,
          "  const long long M = (long long)batch * PIXELS;%s\n"
          "  const long long tiles = (M + BM - 1) / BM * N_TILES;\n"
          "  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {\n"
          "    const long long m0 = tile / N_TILES * BM;\n"
          "    const int n_tile = (int)(tile %% N_TILES), group = FIRST_GROUP + n_tile / N_TILES_PER_GROUP;\n"
          "    const int group_begin = group * OUT_PER_GROUP > C_BEGIN ? group * OUT_PER_GROUP : C_BEGIN;\n"
          "    const int group_end = (group + 1) * OUT_PER_GROUP < C_END ? (group + 1) * OUT_PER_GROUP : C_END;\n"
          "    const int n0 = group_begin + n_tile %% N_TILES_PER_GROUP * BN;\n"
          "    const int n_end = n0 + BN < group_end ? n0 + BN : group_end;\n"
          "    if (n0 >= group_end)\n"
          "      continue;  // a surplus tile of a cut group: the same for the whole block\n"
          "\n"
          "    // The pixel whose taps this thread loads, and where its window starts.\n"
          "    const long long m = m0 + a_m;\n"
          "    const bool m_ok = m < M;\n"
          "    const long long img = m / PIXELS;\n"
          "    const int pixel = (int)(m %% PIXELS);\n"
          "    const int iy0 = pixel / OUT_W * STRIDE - PAD_TOP, ix0 = pixel %% OUT_W * STRIDE - PAD_LEFT;\n"
          "    const long long x_base = (img * IN_HELD + group * IN_PER_GROUP - IN_HELD_BEGIN) * (IN_H * IN_W);\n"
          "\n",
          writes_output ? "" : "  // also out's elements per channel");
  emit_k_loop(f, "    ", prec);
  fputc('\n', f);
  if (writes_output) {
    const char *relu = n->n_epilogue ? n->epilogue[0].name : NULL;
    fprintf(f,
            "    // y as the node's output buffer holds it: (image, channel - HELD_BEGIN, pixel).\n"
            "#pragma unroll\n"
            "    for (int i = 0; i < TM; i++) {\n"
            "      const long long mm = m0 + t_m * TM + i;\n"
            "      if (mm >= M)\n"
            "        continue;\n"
            "      const long long out_img = mm / PIXELS;\n"
            "      const int out_pixel = (int)(mm %% PIXELS);\n"
            "#pragma unroll\n"
            "      for (int j = 0; j < TN; j++) {\n"
            "        const int c = n0 + t_n * TN + j;\n"
            "        if (c >= n_end)\n"
            "          continue;\n"
            "        const float v = acc[i][j]%s;\n"
            "        y[(out_img * HELD + (c - HELD_BEGIN)) * PIXELS + out_pixel] = %s;%s%s\n"
            "      }\n"
            "    }\n"
            "  }\n"
            "}\n\n",
            a->bias ? " + b[c - C_BEGIN]" : "", relu ? "v > 0.0f ? v : 0.0f" : "v",
            relu ? "  // " : "", relu ? relu : "");
  } else {
    fputs("    // out, channel-major as cuBLAS writes it: (c - C_BEGIN) * M + m.\n"
          "#pragma unroll\n"
          "    for (int j = 0; j < TN; j++) {\n"
          "      const int c = n0 + t_n * TN + j;\n"
          "#pragma unroll\n"
          "      for (int i = 0; i < TM; i++) {\n"
          "        const long long mm = m0 + t_m * TM + i;\n"
          "        if (c < n_end && mm < M)\n"
          "          out[(c - C_BEGIN) * M + mm] = acc[i][j];\n"
          "      }\n"
          "    }\n"
          "  }\n"
          "}\n\n",
          f);
  }
}

// ---------------------------------------------------------------- --conv fused
//
// The whole node in one kernel: a block computes a tile of the node's final output
// (channels x rows x columns of one image). It first computes, with the GEMM above,
// the region of the conv output that tile depends on (the LRNs' channel halo, the
// pools' windows) into shared memory, bias added; then its threads compute the tile's
// outputs with the node's stage functions (render.c), whose stage 0 reads that region.
// Nothing but the final output goes to device memory.


int cuda_fused_staged(const Node *n) {
  int pool = 0;
  bool lrn_before = false, lrn_after = false;
  for (int k = 1; k <= n->n_epilogue; k++) {
    OpKind op = n->epilogue[k - 1].op;
    if (op == OP_MAXPOOL && !pool)
      pool = k;
    else if (op == OP_LRN)
      *(pool ? &lrn_after : &lrn_before) = true;
  }
  return pool && lrn_before && !lrn_after ? pool - 1 : 0;
}

// The fused kernel's shared memory in bytes, as its SMEM_BYTES computes it: the GEMM's
// operand tiles, which the staged stage's values (tc channels x the region's pixels)
// reuse once the region is complete, rounded up to 32 bytes (wmma's fragment
// alignment for the region after them); then the region, rc channels x rp pixels.
static int64_t fused_smem(RtPrecision prec, int bn, bool staged, int tc, int rc, int64_t rp) {
  int64_t gemm = gemm_smem(prec, bn), stage = staged ? (int64_t)sizeof(float) * tc * rp : 0;
  int64_t shared = ((gemm > stage ? gemm : stage) + 31) / 32 * 32;
  return shared + (int64_t)sizeof(float) * rc * rp;
}

// Rows (or columns) of the conv output that `len` consecutive rows of the node's output
// depend on: each pool, last to first, widens a run of len to (len - 1) * S + K.
static int region_len(const Node *n, int len) {
  for (int k = n->n_epilogue; k >= 1; k--) {
    const Node *s = &n->epilogue[k - 1];
    if (s->op == OP_MAXPOOL)
      len = (len - 1) * s->pool.stride + s->pool.kernel;
  }
  return len;
}

// GEMM tiles (BN kernels wide) that the kernel loop of one channel tile runs: the
// region's channels [c0, c0 + rc) that this device computes, split at group borders.
static int64_t channel_units(const Node *n, int d, int64_t c0, int64_t rc, int bn) {
  Range r0 = n->place[d].stage[0];
  int64_t per_group = n->conv.out / n->conv.groups, units = 0;
  int64_t lo = c0 > r0.begin ? c0 : r0.begin, hi = c0 + rc < r0.end ? c0 + rc : r0.end;
  while (lo < hi) {
    int64_t group_end = (lo / per_group + 1) * per_group;
    int64_t end = lo + bn < group_end ? lo + bn : group_end;
    lo = end < hi ? end : hi;
    units++;
  }
  return units;
}

// The cost of one 64 x BN GEMM tile in the fused kernel's model: SM cycles per warp and
// depth step (BK), from the instructions the k-loop issues per thread and step and what
// an SM (sm_90) can do per cycle: 4 warp-wide FP32 FMAs (128 lanes), 1 shared-memory
// wavefront (128 bytes: a conflict-free LDS.32 of 32 lanes, or an LDS.128 whose lanes
// read 8 different 16-byte words, the rest broadcast), 4 other warp instructions.
//   FMAs (fp32): 16 depths x TM x TN = 4 BN per thread: BN cycles.
//   Shared loads (fp32): per depth the thread's 4 pixels, one float4 (a warp's 16
//     distinct float4s, 256 bytes: 2 wavefronts), and its TN kernels in TN / W_VEC
//     vector loads (2 distinct addresses per warp: broadcast, 1 wavefront each; W_VEC
//     4, 2 or 1 as TN allows): 16 x (2 + TN / W_VEC) per step, 64 at BN 128. (Scalar,
//     as before the vector loads, they were 4 + TN wavefronts per depth: 64 + BN.)
//   Tensor cores: the fragments' loads (a 16 x 16 A fragment and BN / 32 B fragments
//     per 16 depths, 1 KiB each in tf32, 512 bytes in bf16) and nothing else: the MMAs
//     themselves are far faster than their operands' loads.
//   The gather (any precision): per thread 4 A elements (16 instructions each: the tap
//     from the depth, bounds, address; then the load and the store to shared memory)
//     and BN / 16 weights (a compare, the address, the load, the store): 24 + BN / 8.
// So fp32 at BN 128 costs 128 + 64 + 40 cycles, and thin tiles pay the gather and the
// pixels' loads as often as wide ones. Estimates for the comparison, not timings.
static double tile_cost(RtPrecision prec, int bn) {
  double gather = 24.0 + bn / 8.0;
  int tn = bn / THREADS_N, w_vec = tn % 4 == 0 ? 4 : tn % 2 == 0 ? 2 : 1;
  if (prec == RT_FP32)
    return bn + 16.0 * (2 + tn / w_vec) + gather;
  double fragment_wavefronts = (prec == RT_TF32 ? 8.0 : 4.0);  // 1 KiB or 512 B / 128 B
  return fragment_wavefronts * (1.0 + bn / 32.0) + gather;
}

// The tile size and BN: those whose GEMM tiles cost the least over an image (tile_cost
// each: the region's recomputed halo, partial tiles and group splits all count), among
// those whose shared memory (fused_smem) fits in CUDA_SMEM_LIMIT; on a tie, the fewest
// blocks. A model, not a measurement: a session with a GPU should check it per layer.
// Not modelled: occupancy (a block of 256 threads with more than half the SM's shared
// memory runs alone on its SM: 8 warps to hide the gather's latency).
CudaFusedTile cuda_fused_tile(const Node *n, int d, RtPrecision prec) {
  CudaFusedTile t = {.y_scale = 1, .x_scale = 1};
  for (int k = n->n_epilogue; k >= 1; k--) {
    const Node *s = &n->epilogue[k - 1];
    if (s->op == OP_LRN)
      t.halo += s->lrn.size / 2;
    if (s->op == OP_MAXPOOL) {  // a tile row y starts region row y * S - top pad
      t.y_shift = t.y_shift * s->pool.stride - s->pool.pad.top;
      t.x_shift = t.x_shift * s->pool.stride - s->pool.pad.left;
      t.y_scale *= s->pool.stride;
    }
  }
  t.x_scale = t.y_scale;
  Range out = n->place[d].stage[n->n_epilogue];
  int channels = (int)range_len(out), h = (int)n->out.h, w = (int)n->out.w;
  double best = INFINITY;
  int64_t best_tiles = INT64_MAX;
  t.staged = cuda_fused_staged(n);
  for (int bn = bn_step(prec); bn <= THREADS_N * MAX_TN; bn += bn_step(prec)) {
    for (int tc = 1; tc <= channels; tc++) {
      int rc = tc + 2 * t.halo, c_tiles = (channels + tc - 1) / tc;
      int64_t units = 0;  // BN-wide GEMM tiles over the channels of every channel tile
      for (int c = 0; c < c_tiles; c++)
        units += channel_units(n, d, out.begin + (int64_t)c * tc - t.halo, rc, bn);
      // The shared memory grows with the rows and the columns: the first that does not
      // fit ends each loop.
      for (int th = 1; th <= h && fused_smem(prec, bn, t.staged, tc, rc, region_len(n, th)) <= CUDA_SMEM_LIMIT;
           th++)
        for (int tw = 1; tw <= w; tw++) {
          int rh = region_len(n, th), rw = region_len(n, tw);
          if (fused_smem(prec, bn, t.staged, tc, rc, (int64_t)rh * rw) > CUDA_SMEM_LIMIT)
            break;
          int64_t spatial = (int64_t)((h + th - 1) / th) * ((w + tw - 1) / tw);
          int64_t gemm_tiles = units * spatial * ((rh * rw + TILE_M - 1) / TILE_M);
          double cost = (double)gemm_tiles * tile_cost(prec, bn);
          int64_t tiles = c_tiles * spatial;
          if (cost < best || (cost == best && tiles < best_tiles)) {
            best = cost;
            best_tiles = tiles;
            t.bn = bn, t.gemm_tiles = gemm_tiles;
            t.tc = tc, t.th = th, t.tw = tw, t.rc = rc, t.rh = rh, t.rw = rw;
            t.c_tiles = c_tiles, t.y_tiles = (h + th - 1) / th, t.x_tiles = (w + tw - 1) / tw;
          }
        }
    }
  }
  if (t.tc)
    t.smem = (int)fused_smem(prec, t.bn, t.staged, t.tc, t.rc, (int64_t)t.rh * t.rw);
  return t;
}

bool cuda_fused_applies(const Node *n, int d, RtPrecision prec) {
  if (n->op != OP_CONV || cuda_implicit_writes_output(n, d))
    return false;
  for (int k = 0; k < n->n_epilogue; k++) {
    OpKind op = n->epilogue[k].op;
    if (op != OP_RELU && op != OP_DROPOUT && op != OP_LRN && op != OP_MAXPOOL)
      return false;
  }
  return cuda_fused_tile(n, d, prec).tc > 0;
}

int64_t cuda_fused_work(const Node *n, int d, RtPrecision prec) {
  CudaFusedTile t = cuda_fused_tile(n, d, prec);
  return (int64_t)t.c_tiles * t.y_tiles * t.x_tiles * CUDA_IMPLICIT_THREADS;
}

static void emit_fused_comment(FILE *f, const Node *n, int d, const CudaFusedTile *t,
                               const char *kname, RtPrecision prec) {
  int64_t needed = range_len(n->place[d].stage[0]) * shape_plane(n->head_out);
  fprintf(f, "// ---------------------------------------------------------------- %s\n//\n", kname);
  fprintf(f, "// %s", n->name);
  for (int k = 0; k < n->n_epilogue; k++)
    fprintf(f, "+%s", n->epilogue[k].name);
  fprintf(f,
          " in one kernel (--conv fused). A block computes a tile\n"
          "// of the output: TC channels x TH rows x TW columns of one image. For it, the\n"
          "// conv's output over the region the tile depends on, RC channels (the LRN halo,\n"
          "// %d on each side) x RH rows x RW columns (the pools' windows), is computed\n"
          "// into shared memory with the bias added, as an implicit GEMM (the input under\n"
          "// each tap gathered as it is loaded, as in --conv implicit): BM region pixels\n"
          "// by BN of its channels at a time (split where a group ends), the threads\n"
          "// loading BK-deep slices of the input and the weights into shared memory and\n"
          "// each accumulating a TM x TN register tile. After a barrier\n"
          "// the block's threads compute the tile's outputs from the region with the\n"
          "// stage functions above%s.\n"
          "// Only the output reaches device memory. Neighbouring tiles share their halo,\n"
          "// which each computes: the tile\n"
          "// size is chosen to run the fewest GEMM tiles per image (a model; see\n"
          "// implicit.c, cuda_fused_tile). Here %lld GEMM tiles of %d x %d per image, which\n"
          "// the %lld conv outputs this device needs would fill to %.0f%%: the rest is\n"
          "// halo that neighbouring tiles both compute, and partial tiles.\n"
          "//\n",
          t->halo,
          t->staged ? " (the LRN, which the pool's windows overlap, first once per\n"
                      "// region pixel into shared memory, then the pool from there)"
                    : "",
          (long long)t->gemm_tiles, TILE_M, t->bn, (long long)needed,
          100.0 * (double)needed / ((double)t->gemm_tiles * TILE_M * t->bn));
  emit_precision_note(f, prec);
}

void cuda_emit_fused_head(FILE *f, const Graph *g, int node, int d, const char *kname,
                          RtPrecision prec) {
  const Node *n = &g->nodes[node];
  const Placement *pl = &n->place[d];
  CudaFusedTile t = cuda_fused_tile(n, d, prec);
  Range out = pl->stage[n->n_epilogue];
  emit_fused_comment(f, n, d, &t, kname, prec);
  fprintf(f, "namespace node%02d_fused {\n\n", node);
  emit_conv_constants(f, g, node, d);
  fprintf(f,
          "constexpr int CONV_H = %lld, CONV_W = %lld;  // its output\n"
          "\n"
          "// The node's output: channels [OUT_BEGIN, OUT_END) computed here, of HELD held.\n"
          "constexpr int OUT_BEGIN = %lld, OUT_END = %lld, OUT_H = %lld, OUT_W = %lld;\n"
          "constexpr int HELD_BEGIN = %lld, HELD = %lld;\n"
          "\n"
          "// The output tile, and the region of the conv output it needs, which starts\n"
          "// HALO channels before it and at rows (columns) tile row * SCALE + SHIFT.\n"
          "constexpr int TC = %d, TH = %d, TW = %d;\n"
          "constexpr int C_TILES = %d, Y_TILES = %d, X_TILES = %d;\n"
          "constexpr int TILES_PER_IMAGE = C_TILES * Y_TILES * X_TILES;\n"
          "constexpr int HALO = %d, RC = %d, RH = %d, RW = %d, RP = RH * RW;\n"
          "constexpr int Y_SCALE = %d, Y_SHIFT = %d, X_SCALE = %d, X_SHIFT = %d;\n"
          "\n",
          (long long)n->head_out.h, (long long)n->head_out.w, (long long)out.begin, (long long)out.end, (long long)n->out.h, (long long)n->out.w,
          (long long)pl->held.begin, (long long)range_len(pl->held), t.tc, t.th, t.tw,
          t.c_tiles, t.y_tiles, t.x_tiles, t.halo, t.rc, t.rh, t.rw, t.y_scale, t.y_shift,
          t.x_scale, t.x_shift);
  emit_tiling(f, prec, t.bn);
  int64_t smem = t.smem;
  if (t.staged)
    fprintf(f,
            "\n"
            "// Shared memory: the GEMM's operand tiles, reused once the region is complete for\n"
            "// stage %d (%s) over the tile's channels and the region's pixels, which the pool\n"
            "// then reads; after them the region.\n"
            "constexpr int STAGED_BYTES = sizeof(float) * TC * RP;\n",
            t.staged, n->epilogue[t.staged - 1].name);
  else
    fputs("\n"
          "// Shared memory: the GEMM's operand tiles, then the region.\n"
          "constexpr int STAGED_BYTES = 0;\n",
          f);
  fprintf(f,
          "constexpr int REGION_AT = ((GEMM_SMEM > STAGED_BYTES ? GEMM_SMEM : STAGED_BYTES) + 31) / 32 * 32;\n"
          "constexpr int SMEM_BYTES = REGION_AT + sizeof(float) * RC * RP;\n"
          "static_assert(SMEM_BYTES == %lld, \"the size cuda_fused_tile fitted, the plan's launch gives\");\n",
          (long long)smem);
  fprintf(f, "\n}  // namespace node%02d_fused\n\n", node);
}

void cuda_emit_fused_kernel(FILE *f, const Graph *g, int node, const char *kname,
                            RtPrecision prec) {
  const Node *n = &g->nodes[node];
  const ConvAttrs *a = &n->conv;
  fprintf(f,
          "extern \"C\" __global__ __launch_bounds__(node%02d_fused::THREADS) void %s(\n"
          "    const float *__restrict__ x0,\n"
          "    const float *__restrict__ w,\n"
          "%s"
          "    float *__restrict__ y,\n"
          "    int batch) {\n"
          "  using namespace node%02d_fused;\n",
          node, kname, a->bias ? "    const float *__restrict__ b,\n" : "", node);
  int staged = cuda_fused_staged(n);
  fputs("  // SMEM_BYTES of dynamic shared memory (the plan's launch gives them; more than the\n"
        "  // 48 KiB of static shared memory, up to the GPU's limit per block).\n"
        "  extern __shared__ __align__(128) unsigned char dynamic_smem[];\n"
        "  unsigned char *const smem = dynamic_smem;\n", f);
  emit_gemm_preamble(f, prec, "smem");
  fputs("  float *const region = reinterpret_cast<float *>(smem + REGION_AT);  // the conv output: channel, row, column\n", f);
  if (staged)
    fprintf(f, "  float *const staged = reinterpret_cast<float *>(smem);  // stage %d, over the GEMM's tiles\n",
            staged);
  fputs("  const long long tiles = (long long)batch * TILES_PER_IMAGE;\n", f);
  fprintf(f,
          "  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {\n"
          "    // Tiles are numbered image, row, column, channel (channel tiles of the same\n"
          "    // pixels run together and share their input in L1/L2).\n"
          "    const long long img = tile / TILES_PER_IMAGE;\n"
          "    const int in_image = (int)(tile %% TILES_PER_IMAGE);\n"
          "    const int oc0 = OUT_BEGIN + in_image %% C_TILES * TC;\n"
          "    const int ox0 = in_image / C_TILES %% X_TILES * TW;\n"
          "    const int oy0 = in_image / (C_TILES * X_TILES) * TH;\n"
          "    const int rc0 = oc0 - HALO, ry0 = oy0 * Y_SCALE + Y_SHIFT, rx0 = ox0 * X_SCALE + X_SHIFT;\n"
          "    // The region's channels computed here (the others are never read).\n"
          "    const int c_lo = rc0 > C_BEGIN ? rc0 : C_BEGIN, c_hi = rc0 + RC < C_END ? rc0 + RC : C_END;\n"
          "\n"
          "    for (int m0 = 0; m0 < RP; m0 += BM) {\n"
          "      // The region pixel whose taps this thread loads, and where its window starts;\n"
          "      // pixels outside the conv output (the region hangs over an edge) load zeros.\n"
          "      const int m = m0 + a_m, oy = ry0 + m / RW, ox = rx0 + m %% RW;\n"
          "      const bool m_ok = m < RP && oy >= 0 && oy < CONV_H && ox >= 0 && ox < CONV_W;\n"
          "      const int iy0 = oy * STRIDE - PAD_TOP, ix0 = ox * STRIDE - PAD_LEFT;\n"
          "      for (int n0 = c_lo; n0 < c_hi;) {\n"
          "        const int group = n0 / OUT_PER_GROUP;\n"
          "        const int group_end = (group + 1) * OUT_PER_GROUP < c_hi ? (group + 1) * OUT_PER_GROUP : c_hi;\n"
          "        const int n_end = n0 + BN < group_end ? n0 + BN : group_end;  // at most BN, of one group\n"
          "        const long long x_base = (img * IN_HELD + group * IN_PER_GROUP - IN_HELD_BEGIN) * (IN_H * IN_W);\n");
  emit_k_loop(f, "        ", prec);
  fprintf(f,
          "        // Into the region%s.\n"
          "#pragma unroll\n"
          "        for (int j = 0; j < TN; j++) {\n"
          "          const int c = n0 + t_n * TN + j;\n"
          "#pragma unroll\n"
          "          for (int i = 0; i < TM; i++) {\n"
          "            const int mm = m0 + t_m * TM + i;\n"
          "            if (c < n_end && mm < RP)\n"
          "              region[(c - rc0) * RP + mm] = acc[i][j]%s;\n"
          "          }\n"
          "        }\n"
          "        n0 = n_end;\n"
          "      }\n"
          "    }\n"
          "    __syncthreads();  // the region is complete\n"
          "\n",
          a->bias ? ", with the bias" : "", a->bias ? " + b[c - C_BEGIN]" : "");
  if (staged)
    fprintf(f,
            "    // Stage %d once per channel of the tile and pixel of the region, into shared\n"
            "    // memory: the pool's overlapping windows then read it there instead of each\n"
            "    // computing it again (%d x %d windows, stride %d: about %.2f times per value,\n"
            "    // each time reading its window's channels of the region). Pixels outside the\n"
            "    // conv output and channels past OUT_END are never read: skipped.\n"
            "    const node%02d::Ptrs p = {region, rc0, ry0, rx0, staged, oc0};\n"
            "    for (int e = threadIdx.x; e < TC * RP; e += THREADS) {\n"
            "      const int c = oc0 + e / RP, sy = ry0 + e %% RP / RW, sx = rx0 + e %% RW;\n"
            "      if (c < OUT_END && sy >= 0 && sy < CONV_H && sx >= 0 && sx < CONV_W)\n"
            "        staged[e] = node%02d::stage%d_compute(p, img, c, sy, sx);\n"
            "    }\n"
            "    __syncthreads();  // the staged values are complete\n"
            "\n",
            staged, n->epilogue[staged].pool.kernel, n->epilogue[staged].pool.kernel,
            n->epilogue[staged].pool.stride,
            (double)(n->epilogue[staged].pool.kernel * n->epilogue[staged].pool.kernel) /
                (n->epilogue[staged].pool.stride * n->epilogue[staged].pool.stride),
            node, node, staged);
  else
    fprintf(f, "    const node%02d::Ptrs p = {region, rc0, ry0, rx0};\n", node);
  fprintf(f,
          "    for (int e = threadIdx.x; e < TC * TH * TW; e += THREADS) {\n"
          "      const int c = oc0 + e / (TH * TW), oy = oy0 + e / TW %% TH, ox = ox0 + e %% TW;\n"
          "      if (c < OUT_END && oy < OUT_H && ox < OUT_W)\n"
          "        y[((img * HELD + (c - HELD_BEGIN)) * OUT_H + oy) * OUT_W + ox] = node%02d::stage%d(p, img, c, oy, ox);\n"
          "    }\n"
          "%s"
          "  }\n"
          "}\n\n",
          node, n->n_epilogue,
          staged ? "    __syncthreads();  // the staged values are read: the next tile's GEMM overwrites them\n"
                 : "    // No barrier needed here: the next tile writes the region only after its\n"
                   "    // GEMM's first barrier, which each thread reaches after these reads.\n");
}
