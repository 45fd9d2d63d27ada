// The main of a standalone model (`alexc build`): linked with one model's object (its
// program text and kernels) and the runtime; no LLVM, no libyaml. It classifies photos
// (JPEG, PNG) or runs .npy batches.
//
//   ./alexnet photo.jpg [more.png ...] [--top 5] [--labels FILE] [--weights W.safetensors]
//   ./alexnet x.npy --output y.npy
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alexrt.h"
#include "alexrt_cpu.h"
#include "image.h"

// The model this executable was linked with (compiler/backends/cpu/aot.c).
const char *alexc_cpu_program_v1(unsigned long long *size);
extern const RtCpuKernel alexc_cpu_kernels_v1[];

#define MAX_OUTPUTS 1

static const char HELP[] =
    "usage: %s INPUT... [--top K] [--labels FILE] [--weights W.safetensors] [--output Y.npy]\n"
    "       [--threads N] [--resize S] [--scale F] [--mean R,G,B] [--std R,G,B]\n"
    "\n"
    "Runs the network this program was compiled from on each INPUT: a JPEG or PNG photo\n"
    "(shorter side resized to S, centre crop to the network's input, then\n"
    "(pixel * F - mean) / std per channel), or a .npy batch (N, C, H, W) or (C, H, W).\n"
    "\n"
    "  --top K         print the K best classes of each image (default 5)\n"
    "  --labels FILE   class names, one per line, for --top\n"
    "  --weights W     the weights (default: this program's path + .safetensors)\n"
    "  --output Y.npy  also write the outputs (N, ...) as .npy, replaced atomically\n"
    "  --threads N     threads (default: one per core)\n"
    "  --resize S      shorter side before the crop (default 256, the paper's)\n"
    "  --scale F       pixel scale (default 1/255)\n"
    "  --mean, --std   per-channel normalisation (default ImageNet's, as torchvision:\n"
    "                  0.485,0.456,0.406 and 0.229,0.224,0.225)\n";

// realloc that does not return NULL: out of memory ends the program with a message.
static void *grow(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fprintf(stderr, "out of memory (%zu bytes)\n", n);
    exit(1);
  }
  return q;
}

static bool parse_floats(const char *s, float *out) {
  char *end;
  for (int i = 0; i < 3; i++) {
    out[i] = strtof(s, &end);
    if (end == s || (i < 2 && *end != ',') || (i == 2 && *end))
      return false;
    s = end + 1;
  }
  return true;
}

static char **read_labels(const char *path, int *n) {
  uint8_t *data;
  size_t size;
  *n = 0;
  if (!rt_read_file(path, 16 << 20, &data, &size))
    return NULL;
  char **labels = NULL, *text = grow(NULL, size + 1), *save = NULL;
  memcpy(text, data, size);
  text[size] = 0;
  free(data);
  for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    labels = grow(labels, (*n + 1) * sizeof *labels);
    labels[*n] = grow(NULL, strlen(l) + 1);
    strcpy(labels[(*n)++], l);
  }
  free(text);
  return labels;
}

static void print_top(const char *what, const float *y, int64_t classes, int k, char **labels,
                      int n_labels) {
  printf("%s:", what);
  char *taken = grow(NULL, (size_t)classes);
  memset(taken, 0, (size_t)classes);
  for (int r = 0; r < k && r < classes; r++) {
    int64_t best = -1;
    for (int64_t j = 0; j < classes; j++)
      if (!taken[j] && (best < 0 || y[j] > y[best]))
        best = j;
    taken[best] = 1;
    if (best < n_labels)
      printf("  %s (%.4g)", labels[best], y[best]);
    else
      printf("  %lld (%.4g)", (long long)best, y[best]);
  }
  free(taken);
  printf("\n");
}

static bool is_npy(const char *path) {
  size_t n = strlen(path);
  return n > 4 && !strcmp(path + n - 4, ".npy");
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"top", required_argument, 0, 't'},    {"labels", required_argument, 0, 'l'},
      {"weights", required_argument, 0, 'w'}, {"output", required_argument, 0, 'o'},
      {"threads", required_argument, 0, 'n'}, {"resize", required_argument, 0, 'r'},
      {"scale", required_argument, 0, 's'},  {"mean", required_argument, 0, 'm'},
      {"std", required_argument, 0, 'd'},    {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  int top = 5, threads = 0;
  const char *labels_path = NULL, *weights_path = NULL, *output = NULL;
  RtImagePrep prep = {.scale = 1.0f / 255, .mean = {0.485f, 0.456f, 0.406f},
                      .std = {0.229f, 0.224f, 0.225f}, .resize = 256};
  int c;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    char *end = NULL;
    switch (c) {
    case 't': top = (int)strtol(optarg, &end, 10); break;
    case 'n': threads = (int)strtol(optarg, &end, 10); break;
    case 'r': prep.resize = (int)strtol(optarg, &end, 10); break;
    case 's': prep.scale = strtof(optarg, &end); break;
    case 'l': labels_path = optarg; break;
    case 'w': weights_path = optarg; break;
    case 'o': output = optarg; break;
    case 'm':
    case 'd':
      if (!parse_floats(optarg, c == 'm' ? prep.mean : prep.std)) {
        fprintf(stderr, "%s: --%s wants three numbers R,G,B, not '%s'\n", argv[0],
                c == 'm' ? "mean" : "std", optarg);
        return 2;
      }
      break;
    case 'h': printf(HELP, argv[0]); return 0;
    default: fprintf(stderr, "(see %s --help)\n", argv[0]); return 2;
    }
    if (end && *end) {
      fprintf(stderr, "%s: bad number '%s' (see --help)\n", argv[0], optarg);
      return 2;
    }
  }
  if (optind >= argc || top < 1 || threads < 0 || threads > 256 || prep.resize < 0) {
    fprintf(stderr, "%s: give one or more inputs (see --help)\n", argv[0]);
    return 2;
  }

  unsigned long long size;
  const char *text = alexc_cpu_program_v1(&size);
  RtCpuProgram p;
  char isa[16];
  int64_t in_shape[3], out_shape[MAX_OUTPUTS][3];
  if (!rt_cpu_program_parse(text, size, &p, isa, sizeof isa, in_shape, out_shape, MAX_OUTPUTS)) {
    fprintf(stderr, "%s: %s\n", argv[0], rt_error());
    return 1;
  }
  if (!rt_cpu_host_has(isa)) {
    fprintf(stderr, "%s: compiled for %s, which this CPU does not have; rebuild with alexc "
            "build --cpu x86-64-v3 (AVX2) or x86-64\n", argv[0], isa);
    return 1;
  }
  for (int i = 0, k = 0; i < p.n_steps; i++)
    if (p.steps[i].kind == RT_CPU_RUN)
      p.steps[i].fn = alexc_cpu_kernels_v1[k++];

  char *default_weights = NULL;
  if (!weights_path) {
    default_weights = grow(NULL, strlen(argv[0]) + 16);
    sprintf(default_weights, "%s.safetensors", argv[0]);
    weights_path = default_weights;
  }
  RtCpuWeights wf = {0};
  int rc = 1;
  RtCpuModel *m = NULL;
  char **labels = NULL;
  int n_labels = 0;
  float *x = NULL, *y = NULL;
  int *owner = NULL;  // the argument each image came from
  if (!rt_cpu_weights_open(weights_path, &wf)) {
    fprintf(stderr, "%s: %s\n", argv[0], rt_error());
    goto done;
  }
  if (!(m = rt_cpu_load(&p, rt_cpu_weight, &wf, threads))) {
    fprintf(stderr, "%s: %s\n", argv[0], rt_error());
    goto done;
  }
  if (labels_path && !(labels = read_labels(labels_path, &n_labels))) {
    fprintf(stderr, "%s: %s\n", argv[0], rt_error());
    goto done;
  }
  // Gather every input into one batch.
  prep.channels = (int)in_shape[0], prep.height = (int)in_shape[1], prep.width = (int)in_shape[2];
  int64_t per = p.in_elems, batch = 0;
  for (int i = optind; i < argc; i++) {
    RtTensor t = {0};
    int64_t n = 1;
    if (is_npy(argv[i])) {
      if (!rt_npy_load(argv[i], &t))
        goto bad_input;
      n = t.elems / per;
      if (t.elems % per || (t.rank != 4 && t.rank != 3) ||
          t.dims[t.rank - 3] != in_shape[0] || t.dims[t.rank - 2] != in_shape[1] ||
          t.dims[t.rank - 1] != in_shape[2]) {
        fprintf(stderr, "%s: %s: shape is not (N, %lld, %lld, %lld)\n", argv[0], argv[i],
                (long long)in_shape[0], (long long)in_shape[1], (long long)in_shape[2]);
        rt_tensor_free(&t);
        goto done;
      }
    }
    x = grow(x, (size_t)(batch + n) * per * sizeof(float));
    if (t.data)
      memcpy(x + batch * per, t.data, (size_t)n * per * sizeof(float));
    else if (!rt_image_load(argv[i], &prep, x + batch * per, NULL, 0))
      goto bad_input;
    rt_tensor_free(&t);
    owner = grow(owner, (size_t)(batch + n) * sizeof *owner);
    for (int64_t k = 0; k < n; k++)
      owner[batch + k] = i;
    batch += n;
    continue;
  bad_input:
    fprintf(stderr, "%s: %s\n", argv[0], rt_error());
    goto done;
  }
  int64_t classes = p.out_elems[0];
  y = grow(NULL, (size_t)(batch * classes) * sizeof(float));
  if (!rt_cpu_run(m, x, batch, &y)) {
    fprintf(stderr, "%s: %s\n", argv[0], rt_error());
    goto done;
  }
  if (output) {
    int64_t dims[4] = {batch, out_shape[0][0], out_shape[0][1], out_shape[0][2]};
    int rank = out_shape[0][1] == 1 && out_shape[0][2] == 1 ? 2 : 4;
    if (!rt_npy_save(output, y, rank, dims)) {
      fprintf(stderr, "%s: %s\n", argv[0], rt_error());
      goto done;
    }
  }
  for (int64_t i = 0, first = 0; i < batch; i++) {
    char what[512];
    if (i == 0 || owner[i] != owner[i - 1])
      first = i;
    snprintf(what, sizeof what, "%s", argv[owner[i]]);
    if (is_npy(argv[owner[i]]))
      snprintf(what + strlen(what), sizeof what - strlen(what), "[%lld]", (long long)(i - first));
    print_top(what, y + i * classes, classes, top, labels, n_labels);
  }
  rc = 0;
done:
  for (int i = 0; i < n_labels; i++)
    free(labels[i]);
  free(labels);
  free(owner);
  free(x);
  free(y);
  rt_cpu_free(m);
  rt_cpu_weights_close(&wf);
  free(default_weights);
  rt_cpu_program_free(&p);
  return rc;
}
