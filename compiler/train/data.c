// Training data: IDX files (MNIST, Fashion-MNIST) and folders of class subfolders of
// photos (ImageNet style), loaded and augmented on loader threads ahead of the compute.
//
// IDX (PATH holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
// t10k-labels-idx1-ubyte, each plain or gzipped with a .gz suffix; both read through zlib,
// which passes plain files through). Every byte count is bounded by the header, which is
// checked first: magic, dims, then exactly the bytes it states (a truncated file, or one
// with data past its end, is refused naming the file). Pixels become x / 255, then
// (x - mean) / std with one scalar mean and std over every pixel of the training split's
// images (all 60000 even under `limit`, whichever split is opened: the PyTorch peer's
// Normalize((mean,), (std,)); Fashion-MNIST: 0.2860, 0.3530). The classes are the
// training labels' largest value + 1; a test label outside them is refused. Augmentation
// (training split, `augment`): pad by 2 with the value a 0 pixel normalises to, a random
// H x W crop of the (H+4) x (W+4) result, a horizontal flip with p = 0.5.
//
// Photo folders (PATH/train/CLASS/*.{jpg,jpeg,png} and PATH/val/CLASS/...; the classes are
// the training split's sorted subfolder names; val's subfolders must be among them). An
// example's order within a split is round-robin over the classes (class 0's first photo,
// class 1's first, ..., class 0's second, ...; each class's photos sorted by name), so the
// first `limit` examples mix the classes. The paper's preprocessing (section 2): shorter
// side resized to 256 and the central 256 x 256 kept (at load, runtime/image.c), pixel
// values 0..255, minus the mean image: the per-pixel mean (3 x 256 x 256) over the whole
// training split. The PCA colour augmentation (section 4.1) uses the eigenvectors p_i and
// eigenvalues l_i of the 3 x 3 covariance of RGB values scaled to [0, 1] over a sample of
// the training pixels (every 4th row and column of every training image), from a Jacobi
// decomposition. Both are computed when either split is first opened (every training image
// is read once, summed in fixed point so that the result is exact and independent of the
// thread count) and cached in PATH/.alexc-mean-HASH.npy (3, 256, 256) and
// PATH/.alexc-pca-HASH.npy (4, 3: rows 0-2 the eigenvectors by decreasing eigenvalue, row 3
// the eigenvalues), HASH being a hash of the training split's file names and sizes (when
// PATH is not writable: in ~/.cache/alexc, or $ALEXC_CACHE). Training (`augment`): per
// image and epoch, alpha_i ~ N(0, 0.1) and 255 * sum_i p_i alpha_i l_i added to every
// pixel, then a random H x W crop and a flip with p = 0.5; without `augment`, the centre
// crop. Evaluation: the centre crop, or with `ten_crop` the four corner crops and the
// centre one, then the same five flipped (the example's ten views contiguous in the
// batch). Ten crops are for evaluation only (the training split has one view). The network
// must want 3 channels and at most 256 x 256. A photo that cannot be read (corrupt, not
// JPEG or PNG, over 64 MiB, too many pixels for runtime/image.c) is warned about once per
// Dataset, counted by data_skipped and left out of its batch, which comes out shorter (it
// stays in data_size, so that the order of the others does not depend on when it was
// found); an empty class folder, or no readable training photo, is an error.
//
// Determinism. Random numbers are Philox4x32-10 words with key = seed and counter
// {example, epoch, 0, purpose}: the training split's order in epoch e is a Fisher-Yates
// shuffle whose i-th swap draws from counter {i, e, 0, "perm"}, and example i's crop,
// flip and colour draw from {i, e, 0, "crop"} and {i, e, 0, "pca "} (and "pca " + 1). The
// test split is never shuffled. So a batch is a pure function of (seed, epoch, its first example's
// position, the batch size): the same for any number of loader threads, and for a run
// started at batch 0 or resumed at batch k.
//
// Threads. data_open starts o->threads loader threads (default 2). The batch size is
// known at the first data_next after data_start; then the loaders fill a ring of QUEUE
// batches ahead of the consumer, a few examples per task (one photo, or IDX_CHUNK IDX
// images), under one mutex with two condition variables. data_start and data_close first
// wait for the tasks in flight (tasks are short), so nothing is written after a restart
// or after the buffers are freed. One thread consumes (data_start / data_next).
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "../../runtime/image.h"
#include "../alexc.h"

#define QUEUE 2          // batches prepared ahead
#define IDX_CHUNK 64     // IDX images per loader task
#define MAX_THREADS 64
#define PHOTO_SIDE 256   // photos are resized and centre-cropped to this square at load
#define PHOTO_MAX_FILE ((int64_t)64 << 20)
#define PCA_STRIDE 4     // the colour covariance samples every 4th row and column
#define IDX_MAX_SIDE 4096
#define IDX_MAX_BYTES ((uint64_t)1 << 33)
#define MAX_EXAMPLES ((int64_t)INT32_MAX)

// The last word of a counter: which draw it is.
#define TAG_PERM 0x7065726du  // "perm"
#define TAG_CROP 0x63726f70u  // "crop"
#define TAG_PCA 0x70636120u   // "pca "

typedef enum { KIND_IDX, KIND_PHOTOS } Kind;

typedef struct {
  int64_t k;      // the batch it holds (-1: none yet)
  int n;          // its examples
  int left;       // examples not yet loaded
  float *x;       // (batch * views, C, H, W)
  int32_t *lab;
  uint8_t *ok;    // example loaded (a photo may be unreadable)
} Slot;

typedef struct {
  struct Dataset *d;
  pthread_t th;
  float *scratch;  // a 3 x 256 x 256 photo
} Worker;

struct Dataset {
  Kind kind;
  char *path;
  DataOptions o;
  int C, H, W, views;
  int64_t n;  // examples (after limit)
  int classes;
  int32_t *labels;
  int64_t item;  // floats per view

  // IDX
  uint8_t *pixels;  // n images of H x W bytes
  float lut[256];   // byte -> normalised value
  double mean, std;

  // photo folders
  char **files;
  uint8_t *bad;     // per file: found unreadable (warned, counted); under mu
  float *mean_img;  // 3 x 256 x 256
  float pca_vec[3][3], pca_val[3];

  // the pipeline; everything below is under mu
  pthread_mutex_t mu;
  pthread_cond_t cv_work;  // loaders wait for a task
  pthread_cond_t cv_done;  // the consumer waits for a batch, or for the loaders to idle
  Worker *workers;
  int n_workers;
  bool quit;
  int busy;                // tasks in flight
  uint64_t gen;            // bumped by a restart; a task of an older generation is dropped
  int epoch;
  int64_t *perm;           // the training split's order this epoch (NULL: in order)
  int64_t first;           // data_start's first batch
  int B;                   // the batch size (0: not known since data_start)
  int64_t start;           // the position of batch 0's first example
  int64_t n_batches;
  int64_t next_out;        // the batch data_next returns next
  int64_t ak;              // the next task: batch ak, from its example aj
  int aj;
  Slot slots[QUEUE];
  int64_t skipped;
};

// ---------------------------------------------------------------- random numbers

static void draw(const Dataset *d, uint32_t i, uint32_t epoch, uint32_t tag, uint32_t out[4]) {
  const uint32_t ctr[4] = {i, epoch, 0, tag};
  const uint32_t key[2] = {(uint32_t)d->o.seed, (uint32_t)(d->o.seed >> 32)};
  philox4x32_10(ctr, key, out);
}

// A uniform integer in [0, m) from a 32-bit word (multiply-shift; bias below m / 2^32).
static uint32_t below(uint32_t word, uint32_t m) { return (uint32_t)(((uint64_t)word * m) >> 32); }

// A normal deviate from two words (Box-Muller; u1 in (0, 1], u2 in [0, 1)).
static double normal(uint32_t a, uint32_t b) {
  double u1 = ((a >> 8) + 1) * (1.0 / 16777216), u2 = (b >> 8) * (1.0 / 16777216);
  return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

static void make_perm(Dataset *d) {
  if (!d->perm)
    return;
  for (int64_t i = 0; i < d->n; i++)
    d->perm[i] = i;
  for (int64_t i = d->n - 1; i > 0; i--) {
    uint32_t r[4];
    draw(d, (uint32_t)i, (uint32_t)d->epoch, TAG_PERM, r);
    int64_t j = below(r[0], (uint32_t)(i + 1));
    int64_t t = d->perm[i];
    d->perm[i] = d->perm[j];
    d->perm[j] = t;
  }
}

// ---------------------------------------------------------------- IDX files

typedef struct {
  char *path;
  gzFile f;
  int ndim;
  uint32_t dims[3];
  uint64_t bytes;  // of data, as the header states
} Idx;

static void idx_close(Idx *x) {
  if (x->f)
    gzclose(x->f);
  free(x->path);
  memset(x, 0, sizeof *x);
}

// Reads n bytes; false with a message on a short read.
static bool gz_read(Idx *x, uint8_t *buf, uint64_t n, uint64_t *got) {
  *got = 0;
  while (*got < n) {
    uint64_t want = n - *got;
    int r = gzread(x->f, buf + *got, (unsigned)(want > (1u << 30) ? 1u << 30 : want));
    if (r < 0) {
      int code;
      const char *msg = gzerror(x->f, &code);
      if (code == Z_BUF_ERROR)
        error("%s: truncated: the gzip stream ends early (%s)", x->path, msg);
      else
        error("%s: cannot read: %s", x->path, code == Z_ERRNO ? strerror(errno) : msg);
      return false;
    }
    if (r == 0)
      break;
    *got += (uint64_t)r;
  }
  return true;
}

// Opens DIR/NAME or DIR/NAME.gz and checks its header: unsigned bytes, ndim dims.
static bool idx_open(const char *dir, const char *name, int ndim, Idx *x) {
  memset(x, 0, sizeof *x);
  x->path = format("%s/%s", dir, name);
  struct stat st;
  if (stat(x->path, &st) != 0) {
    char *gz = format("%s.gz", x->path);
    if (stat(gz, &st) != 0) {
      error("%s: %s (or %s.gz) is missing", dir, name, name);
      free(gz);
      idx_close(x);
      return false;
    }
    free(x->path);
    x->path = gz;
  }
  if (!S_ISREG(st.st_mode)) {
    error("%s: not a regular file", x->path);
    idx_close(x);
    return false;
  }
  x->f = gzopen(x->path, "rb");
  if (!x->f) {
    error("%s: cannot open: %s", x->path, strerror(errno));
    idx_close(x);
    return false;
  }
  gzbuffer(x->f, 1 << 17);
  uint8_t h[16];
  uint64_t got;
  size_t hsize = 4 + 4 * (size_t)ndim;
  if (!gz_read(x, h, hsize, &got)) {
    idx_close(x);
    return false;
  }
  if (got < hsize) {
    error("%s: truncated: %llu bytes, less than an IDX header", x->path, (unsigned long long)got);
    idx_close(x);
    return false;
  }
  uint32_t magic = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
  if (magic != (0x800u | (uint32_t)ndim)) {
    error("%s: bad magic number 0x%08x (an IDX file of %s wants 0x%08x)", x->path, magic,
          ndim == 1 ? "labels" : "images", 0x800u | (uint32_t)ndim);
    idx_close(x);
    return false;
  }
  x->ndim = ndim;
  x->bytes = 1;
  for (int i = 0; i < ndim; i++) {
    const uint8_t *b = h + 4 + 4 * i;
    x->dims[i] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    x->bytes *= x->dims[i];
  }
  if (x->dims[0] == 0 || x->dims[0] > MAX_EXAMPLES) {
    error("%s: %u examples (want 1 to %lld)", x->path, x->dims[0], (long long)MAX_EXAMPLES);
    idx_close(x);
    return false;
  }
  if (ndim == 3 && (x->dims[1] == 0 || x->dims[2] == 0 || x->dims[1] > IDX_MAX_SIDE ||
                    x->dims[2] > IDX_MAX_SIDE || x->bytes > IDX_MAX_BYTES)) {
    error("%s: bad image size %ux%u x %u images (sides 1 to %d, at most %llu bytes)", x->path,
          x->dims[1], x->dims[2], x->dims[0], IDX_MAX_SIDE, (unsigned long long)IDX_MAX_BYTES);
    idx_close(x);
    return false;
  }
  return true;
}

// Reads the data: keeps its first `keep` bytes in *out (allocated) when out is not NULL,
// counts every byte's value in hist when not NULL, and checks that the file holds exactly
// the bytes its header states.
static bool idx_data(Idx *x, uint64_t keep, uint8_t **out, uint64_t hist[256]) {
  uint8_t *buf = out ? xcalloc(keep ? keep : 1, 1) : NULL;
  uint8_t *chunk = xcalloc(1 << 20, 1);
  uint64_t done = 0;
  bool ok = true;
  while (ok && done < x->bytes) {
    uint64_t want = x->bytes - done, got;
    if (want > (1u << 20))
      want = 1u << 20;
    ok = gz_read(x, chunk, want, &got);
    if (ok && hist)
      for (uint64_t i = 0; i < got; i++)
        hist[chunk[i]]++;
    if (ok && buf && done < keep)
      memcpy(buf + done, chunk, keep - done < got ? keep - done : got);
    done += got;
    if (ok && got < want) {
      if (x->ndim == 3)
        error("%s: truncated: its header says %u images of %ux%u (%llu bytes of pixels), it "
              "holds %llu", x->path, x->dims[0], x->dims[1], x->dims[2],
              (unsigned long long)x->bytes, (unsigned long long)done);
      else
        error("%s: truncated: its header says %u labels, it holds %llu", x->path, x->dims[0],
              (unsigned long long)done);
      ok = false;
    }
  }
  uint64_t extra = 0;
  if (ok)
    ok = gz_read(x, chunk, 1, &extra);
  if (ok && extra) {
    error("%s: more data than its header states (%u %s)", x->path, x->dims[0],
          x->ndim == 3 ? "images" : "labels");
    ok = false;
  }
  free(chunk);
  if (!ok) {
    free(buf);
    buf = NULL;
  }
  if (out)
    *out = buf;
  return ok;
}

// Reads a labels file (all of it), checking its count against `count`.
static uint8_t *idx_labels(const char *dir, const char *name, uint32_t count, const char *images) {
  Idx x;
  if (!idx_open(dir, name, 1, &x))
    return NULL;
  uint8_t *lab = NULL;
  if (x.dims[0] != count)
    error("%s: %u labels for the %u images of %s", x.path, x.dims[0], count, images);
  else
    idx_data(&x, x.bytes, &lab, NULL);
  idx_close(&x);
  return lab;
}

static bool open_idx(Dataset *d) {
  const char *dir = d->path;
  const char *img_name = d->o.train ? "train-images-idx3-ubyte" : "t10k-images-idx3-ubyte";
  const char *lab_name = d->o.train ? "train-labels-idx1-ubyte" : "t10k-labels-idx1-ubyte";
  bool ok = false;
  uint64_t hist[256] = {0};
  uint8_t *train_lab = NULL, *lab = NULL;
  Idx tr = {0}, te = {0};

  // The training images: the normalisation's statistics (and the data, for that split).
  if (!idx_open(dir, "train-images-idx3-ubyte", 3, &tr))
    goto done;
  if (!d->o.train && !idx_open(dir, img_name, 3, &te))
    goto done;
  Idx *x = d->o.train ? &tr : &te;
  if (d->C != 1 || (int64_t)x->dims[1] != d->H || (int64_t)x->dims[2] != d->W) {
    error("%s: the images are 1x%ux%u (CxHxW), the network's input is %dx%dx%d", x->path,
          x->dims[1], x->dims[2], d->C, d->H, d->W);
    goto done;
  }
  if (x != &tr && (tr.dims[1] != x->dims[1] || tr.dims[2] != x->dims[2])) {
    error("%s: the images are %ux%u, the training split's (%s) %ux%u", x->path, x->dims[1],
          x->dims[2], tr.path, tr.dims[1], tr.dims[2]);
    goto done;
  }
  d->n = x->dims[0];
  if (d->o.limit > 0 && d->o.limit < d->n)
    d->n = d->o.limit;
  uint64_t plane = (uint64_t)d->H * d->W;
  if (!idx_data(&tr, d->o.train ? (uint64_t)d->n * plane : 0, d->o.train ? &d->pixels : NULL,
                hist))
    goto done;
  if (!d->o.train && !idx_data(&te, (uint64_t)d->n * plane, &d->pixels, NULL))
    goto done;
  if (!(train_lab = idx_labels(dir, "train-labels-idx1-ubyte", tr.dims[0], tr.path)))
    goto done;
  if (!d->o.train && !(lab = idx_labels(dir, lab_name, te.dims[0], te.path)))
    goto done;

  // The classes: the training labels' range.
  int max = 0;
  int64_t count[256] = {0};
  for (uint32_t i = 0; i < tr.dims[0]; i++) {
    count[train_lab[i]]++;
    if (train_lab[i] > max)
      max = train_lab[i];
  }
  d->classes = max + 1;
  if (d->classes < 2) {
    error("%s/train-labels-idx1-ubyte: every label is %d: one class, nothing to learn", dir, max);
    goto done;
  }
  for (int c = 0; c < d->classes; c++)
    if (!count[c])
      fprintf(stderr, "alexc: warning: %s/train-labels-idx1-ubyte: labels run 0 to %d but no "
              "image has label %d\n", dir, max, c);
  const uint8_t *l = d->o.train ? train_lab : lab;
  d->labels = xcalloc((size_t)d->n, sizeof *d->labels);
  for (int64_t i = 0; i < d->n; i++) {
    if (l[i] >= d->classes) {
      error("%s/%s: label %d of image %lld is not a class of the training split (0 to %d)", dir,
            lab_name, l[i], (long long)i, d->classes - 1);
      goto done;
    }
    d->labels[i] = l[i];
  }

  // Normalisation: x / 255, less the training pixels' mean, over their std.
  double total = 0, s1 = 0, s2 = 0;
  for (int v = 0; v < 256; v++) {
    total += (double)hist[v];
    s1 += (double)hist[v] * v;
    s2 += (double)hist[v] * v * v;
  }
  d->mean = s1 / total / 255;
  double var = s2 / total / (255.0 * 255) - d->mean * d->mean;
  d->std = var > 1e-12 ? sqrt(var) : 1;
  for (int v = 0; v < 256; v++)
    d->lut[v] = (float)((v / 255.0 - d->mean) / d->std);
  ok = true;
done:
  idx_close(&tr);
  idx_close(&te);
  free(train_lab);
  free(lab);
  return ok;
}

// An IDX example: padded by 2, cropped and flipped when augmenting.
static void fill_idx(const Dataset *d, int64_t id, int epoch, float *out) {
  const uint8_t *src = d->pixels + id * (int64_t)d->H * d->W;
  const int H = d->H, W = d->W;
  if (!(d->o.train && d->o.augment)) {
    for (int64_t i = 0; i < (int64_t)H * W; i++)
      out[i] = d->lut[src[i]];
    return;
  }
  uint32_t r[4];
  draw(d, (uint32_t)id, (uint32_t)epoch, TAG_CROP, r);
  int dy = (int)below(r[0], 5) - 2, dx = (int)below(r[1], 5) - 2;  // pad 2: offsets -2..2
  bool flip = r[2] >> 31;
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      int sy = y + dy, sx = (flip ? W - 1 - x : x) + dx;
      out[y * W + x] = sy >= 0 && sy < H && sx >= 0 && sx < W ? d->lut[src[sy * W + sx]]
                                                              : d->lut[0];
    }
}

// ---------------------------------------------------------------- photo folders

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_photo_name(const char *name) {
  const char *dot = strrchr(name, '.');
  return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png"));
}

typedef struct {
  char **v;
  int64_t n, cap;
} Names;

static void names_add(Names *s, char *name) {
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 64;
    s->v = xrealloc(s->v, (size_t)s->cap * sizeof *s->v);
  }
  s->v[s->n++] = name;
}

static void names_free(Names *s) {
  for (int64_t i = 0; i < s->n; i++)
    free(s->v[i]);
  free(s->v);
  memset(s, 0, sizeof *s);
}

// The sorted names of DIR's subfolders (dirs) or photo files (!dirs), hidden ones left out.
static bool list_dir(const char *dir, bool dirs, Names *out) {
  memset(out, 0, sizeof *out);
  DIR *dp = opendir(dir);
  if (!dp) {
    error("%s: cannot read the folder: %s", dir, strerror(errno));
    return false;
  }
  struct dirent *e;
  while ((e = readdir(dp))) {
    if (e->d_name[0] == '.' || (!dirs && !is_photo_name(e->d_name)))
      continue;
    char *p = format("%s/%s", dir, e->d_name);
    struct stat st;
    bool keep = stat(p, &st) == 0 && (dirs ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode));
    free(p);
    if (keep) {
      if (out->n >= MAX_EXAMPLES) {
        error("%s: more than %lld entries", dir, (long long)MAX_EXAMPLES);
        closedir(dp);
        names_free(out);
        return false;
      }
      names_add(out, xstrdup(e->d_name));
    }
  }
  closedir(dp);
  if (out->n)
    qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_str);
  return true;
}

// The photos of split folder DIR for the classes `cls`, round-robin over the classes.
// Every class folder present must hold photos; one that is missing is allowed only when
// `missing_ok` (a validation split need not have every class).
static bool list_split(const char *dir, const Names *cls, bool missing_ok, Names *files,
                       int32_t **labels) {
  memset(files, 0, sizeof *files);
  *labels = NULL;
  Names sub;
  if (!list_dir(dir, true, &sub))
    return false;
  bool ok = true;
  for (int64_t i = 0; ok && i < sub.n; i++)
    if (!bsearch(&sub.v[i], cls->v, (size_t)cls->n, sizeof *cls->v, cmp_str)) {
      error("%s/%s: not a class of the training split", dir, sub.v[i]);
      ok = false;
    }
  if (ok && !sub.n) {
    error("%s: no class subfolders", dir);
    ok = false;
  }
  Names *per = xcalloc((size_t)cls->n, sizeof *per);
  int64_t total = 0, most = 0;
  for (int64_t c = 0; ok && c < cls->n; c++) {
    char *cdir = format("%s/%s", dir, cls->v[c]);
    struct stat st;
    if (stat(cdir, &st) != 0 && missing_ok) {
      free(cdir);
      continue;
    }
    if (!list_dir(cdir, false, &per[c]))
      ok = false;
    else if (!per[c].n) {
      error("%s: no photos (.jpg, .jpeg, .png) in the class folder", cdir);
      ok = false;
    }
    free(cdir);
    total += per[c].n;
    if (per[c].n > most)
      most = per[c].n;
    if (total > MAX_EXAMPLES) {
      error("%s: more than %lld photos", dir, (long long)MAX_EXAMPLES);
      ok = false;
    }
  }
  if (ok) {
    *labels = xcalloc((size_t)total, sizeof **labels);
    for (int64_t r = 0; r < most; r++)
      for (int64_t c = 0; c < cls->n; c++)
        if (r < per[c].n) {
          (*labels)[files->n] = (int32_t)c;
          names_add(files, format("%s/%s/%s", dir, cls->v[c], per[c].v[r]));
        }
  }
  for (int64_t c = 0; c < cls->n; c++)
    names_free(&per[c]);
  free(per);
  names_free(&sub);
  if (!ok) {
    names_free(files);
    free(*labels);
    *labels = NULL;
  }
  return ok;
}

// Loads photo `file` at 256 x 256 (values 0..255). On failure marks it bad (warning once,
// counting it) and returns false. `bad` may be NULL (no marks).
static bool load_photo(Dataset *d, const char *file, uint8_t *bad, float *img) {
  if (bad) {
    pthread_mutex_lock(&d->mu);
    bool known = *bad;
    pthread_mutex_unlock(&d->mu);
    if (known)
      return false;
  }
  char err[512] = "";
  struct stat st;
  bool ok;
  if (stat(file, &st) != 0) {
    snprintf(err, sizeof err, "%s: cannot read: %s", file, strerror(errno));
    ok = false;
  } else if (st.st_size > PHOTO_MAX_FILE) {
    snprintf(err, sizeof err, "%s: %lld bytes, more than the limit of %lld", file,
             (long long)st.st_size, (long long)PHOTO_MAX_FILE);
    ok = false;
  } else {
    RtImagePrep prep = {3, PHOTO_SIDE, PHOTO_SIDE, 1, {0, 0, 0}, {1, 1, 1}, PHOTO_SIDE};
    ok = rt_image_load(file, &prep, img, err, sizeof err);
  }
  if (!ok && bad) {
    pthread_mutex_lock(&d->mu);
    if (!*bad) {
      *bad = 1;
      d->skipped++;
      fprintf(stderr, "alexc: warning: skipped an unreadable photo: %s\n", err);
    }
    pthread_mutex_unlock(&d->mu);
  }
  return ok;
}

// The eigenvalues (decreasing) and eigenvectors (vec[k] is the k-th) of a symmetric 3x3
// matrix, by cyclic Jacobi rotations. Each eigenvector's largest component is positive.
static void eig3(const double m[3][3], double val[3], double vec[3][3]) {
  double a[3][3], v[3][3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}};
  memcpy(a, m, sizeof a);
  for (int sweep = 0; sweep < 64; sweep++) {
    double off = a[0][1] * a[0][1] + a[0][2] * a[0][2] + a[1][2] * a[1][2];
    double diag = a[0][0] * a[0][0] + a[1][1] * a[1][1] + a[2][2] * a[2][2];
    if (off <= 1e-30 * diag || off == 0)
      break;
    for (int p = 0; p < 2; p++)
      for (int q = p + 1; q < 3; q++) {
        if (a[p][q] == 0)
          continue;
        double theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
        double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
        double c = 1 / sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < 3; k++) {  // A J
          double akp = a[k][p], akq = a[k][q];
          a[k][p] = c * akp - s * akq;
          a[k][q] = s * akp + c * akq;
        }
        for (int k = 0; k < 3; k++) {  // J^T (A J)
          double apk = a[p][k], aqk = a[q][k];
          a[p][k] = c * apk - s * aqk;
          a[q][k] = s * apk + c * aqk;
        }
        for (int k = 0; k < 3; k++) {  // V J
          double vkp = v[k][p], vkq = v[k][q];
          v[k][p] = c * vkp - s * vkq;
          v[k][q] = s * vkp + c * vkq;
        }
      }
  }
  int order[3] = {0, 1, 2};
  for (int i = 0; i < 3; i++)
    for (int j = i + 1; j < 3; j++)
      if (a[order[j]][order[j]] > a[order[i]][order[i]]) {
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
      }
  for (int k = 0; k < 3; k++) {
    int col = order[k];
    val[k] = a[col][col] > 0 ? a[col][col] : 0;  // a covariance: rounding only below 0
    int big = 0;
    for (int c = 1; c < 3; c++)
      if (fabs(v[c][col]) > fabs(v[big][col]))
        big = c;
    double sign = v[big][col] < 0 ? -1 : 1;
    for (int c = 0; c < 3; c++)
      vec[k][c] = sign * v[c][col];
  }
}

// The training statistics, summed in fixed point (exact, so any thread count gives the
// same): the mean image in 1/256 steps, the colour moments in 1/16 steps.
typedef struct {
  Dataset *d;
  const Names *files;
  uint8_t *bad;
  int64_t *next;  // the next file to read; under d->mu
  int64_t *sum;   // 3 x 256 x 256
  int64_t moments[9];  // r, g, b, rr, gg, bb, rg, rb, gb
  int64_t pixels, images;
} StatJob;

static void *stat_main(void *arg) {
  StatJob *j = arg;
  Dataset *d = j->d;
  const int64_t plane = (int64_t)PHOTO_SIDE * PHOTO_SIDE;
  float *img = xcalloc((size_t)(3 * plane), sizeof *img);
  for (;;) {
    pthread_mutex_lock(&d->mu);
    int64_t i = (*j->next)++;
    pthread_mutex_unlock(&d->mu);
    if (i >= j->files->n)
      break;
    if (!load_photo(d, j->files->v[i], &j->bad[i], img))
      continue;
    j->images++;
    for (int64_t p = 0; p < 3 * plane; p++)
      j->sum[p] += llrintf(img[p] * 256);
    for (int y = 0; y < PHOTO_SIDE; y += PCA_STRIDE)
      for (int x = 0; x < PHOTO_SIDE; x += PCA_STRIDE) {
        int64_t p = (int64_t)y * PHOTO_SIDE + x;
        int64_t r = llrintf(img[p] * 16), g = llrintf(img[plane + p] * 16),
                b = llrintf(img[2 * plane + p] * 16);
        int64_t *m = j->moments;
        m[0] += r, m[1] += g, m[2] += b, m[3] += r * r, m[4] += g * g, m[5] += b * b;
        m[6] += r * g, m[7] += r * b, m[8] += g * b;
        j->pixels++;
      }
  }
  free(img);
  return NULL;
}

// Reads every training photo: the mean image and the colour PCA (d->mean_img, pca_*).
static bool compute_stats(Dataset *d, const char *train_dir, const Names *files, uint8_t *bad) {
  const int64_t plane = (int64_t)PHOTO_SIDE * PHOTO_SIDE;
  int threads = d->n_workers;
  if (files->n > 2000)
    fprintf(stderr, "alexc: computing the mean image and colour PCA of the %lld training photos "
            "in %s (once: cached in %s when it is writable)\n", (long long)files->n, train_dir,
            d->path);
  int64_t next = 0;
  StatJob *jobs = xcalloc((size_t)threads, sizeof *jobs);
  pthread_t *th = xcalloc((size_t)threads, sizeof *th);
  bool *started = xcalloc((size_t)threads, sizeof *started);
  for (int t = 0; t < threads; t++) {
    jobs[t] = (StatJob){.d = d, .files = files, .bad = bad, .next = &next};
    jobs[t].sum = xcalloc((size_t)(3 * plane), sizeof *jobs[t].sum);
    started[t] = t > 0 && pthread_create(&th[t], NULL, stat_main, &jobs[t]) == 0;
  }
  stat_main(&jobs[0]);
  int64_t images = 0, pixels = 0, m[9] = {0};
  int64_t *sum = jobs[0].sum;
  for (int t = 0; t < threads; t++) {
    if (started[t])
      pthread_join(th[t], NULL);
    images += jobs[t].images;
    pixels += jobs[t].pixels;
    for (int k = 0; k < 9; k++)
      m[k] += jobs[t].moments[k];
    if (t) {
      for (int64_t p = 0; p < 3 * plane; p++)
        sum[p] += jobs[t].sum[p];
      free(jobs[t].sum);
    }
  }
  bool ok = images > 0;
  if (!ok)
    error("%s: none of the %lld training photos could be read", train_dir, (long long)files->n);
  else {
    d->mean_img = xcalloc((size_t)(3 * plane), sizeof *d->mean_img);
    for (int64_t p = 0; p < 3 * plane; p++)
      d->mean_img[p] = (float)((double)sum[p] / 256 / (double)images);
    // Covariance of the RGB values scaled to [0, 1].
    double s = 16.0 * 255, np = (double)pixels, mu[3], cov[3][3];
    for (int c = 0; c < 3; c++)
      mu[c] = (double)m[c] / np / s;
    const int pair[3][3] = {{3, 6, 7}, {6, 4, 8}, {7, 8, 5}};
    for (int a = 0; a < 3; a++)
      for (int b = 0; b < 3; b++)
        cov[a][b] = (double)m[pair[a][b]] / np / (s * s) - mu[a] * mu[b];
    double val[3], vec[3][3];
    eig3(cov, val, vec);
    for (int k = 0; k < 3; k++) {
      d->pca_val[k] = (float)val[k];
      for (int c = 0; c < 3; c++)
        d->pca_vec[k][c] = (float)vec[k][c];
    }
  }
  free(jobs[0].sum);
  free(jobs);
  free(th);
  free(started);
  return ok;
}

// The cache's name: a hash of the training photos' names (relative to PATH, so that a
// moved dataset keeps its cache) and sizes.
static uint64_t stats_key(const Dataset *d, const Names *files) {
  uint64_t h = fnv1a(FNV_OFFSET, "alexc-photo-stats v1 256/4", 26);
  size_t skip = strlen(d->path) + 1;
  for (int64_t i = 0; i < files->n; i++) {
    struct stat st;
    int64_t size = stat(files->v[i], &st) == 0 ? (int64_t)st.st_size : -1;
    const char *rel = files->v[i] + skip;
    h = fnv1a(h, rel, strlen(rel) + 1);
    h = fnv1a(h, &size, sizeof size);
  }
  return h;
}

static bool load_cached_stats(Dataset *d, const char *mean_path, const char *pca_path) {
  const int64_t plane = (int64_t)PHOTO_SIDE * PHOTO_SIDE;
  if (access(mean_path, R_OK) != 0 || access(pca_path, R_OK) != 0)
    return false;
  RtTensor m = {0}, p = {0};
  bool ok = rt_npy_load(mean_path, &m) && rt_npy_load(pca_path, &p) && m.rank == 3 &&
            m.dims[0] == 3 && m.dims[1] == PHOTO_SIDE && m.dims[2] == PHOTO_SIDE && p.rank == 2 &&
            p.dims[0] == 4 && p.dims[1] == 3;
  for (int64_t i = 0; ok && i < m.elems; i++)
    ok = isfinite(m.data[i]);
  for (int64_t i = 0; ok && i < p.elems; i++)
    ok = isfinite(p.data[i]);
  if (ok) {
    d->mean_img = xcalloc((size_t)(3 * plane), sizeof *d->mean_img);
    memcpy(d->mean_img, m.data, (size_t)(3 * plane) * sizeof *d->mean_img);
    for (int k = 0; k < 3; k++) {
      d->pca_val[k] = p.data[9 + k];
      for (int c = 0; c < 3; c++)
        d->pca_vec[k][c] = p.data[3 * k + c];
    }
  } else
    fprintf(stderr, "alexc: warning: %s: a bad cache of the training statistics, computing them "
            "again\n", mean_path);
  rt_tensor_free(&m);
  rt_tensor_free(&p);
  return ok;
}

// The statistics from the cache in PATH or, when PATH is not writable, in the compile
// cache's folder (~/.cache/alexc); else computed and cached there.
static bool photo_stats(Dataset *d, const char *train_dir, const Names *files, uint8_t *bad) {
  uint64_t key = stats_key(d, files);
  char *dir = access(d->path, W_OK) == 0 ? xstrdup(d->path) : cache_dir();
  char *mean_path = NULL, *pca_path = NULL;
  bool ok = false;
  for (int where = 0; !ok && where < 2; where++) {
    const char *base = where ? dir : d->path;
    if (!base || (where && !strcmp(dir, d->path)))
      continue;
    free(mean_path);
    free(pca_path);
    mean_path = format("%s/.alexc-mean-%016llx.npy", base, (unsigned long long)key);
    pca_path = format("%s/.alexc-pca-%016llx.npy", base, (unsigned long long)key);
    ok = load_cached_stats(d, mean_path, pca_path);
  }
  if (!ok && (ok = compute_stats(d, train_dir, files, bad)) && dir) {
    free(mean_path);
    free(pca_path);
    mean_path = format("%s/.alexc-mean-%016llx.npy", dir, (unsigned long long)key);
    pca_path = format("%s/.alexc-pca-%016llx.npy", dir, (unsigned long long)key);
    float pca[12];
    for (int k = 0; k < 3; k++) {
      pca[9 + k] = d->pca_val[k];
      for (int c = 0; c < 3; c++)
        pca[3 * k + c] = d->pca_vec[k][c];
    }
    const int64_t mdims[3] = {3, PHOTO_SIDE, PHOTO_SIDE}, pdims[2] = {4, 3};
    // The PCA first: the mean's presence then means both are complete.
    if (!rt_npy_save(pca_path, pca, 2, pdims) || !rt_npy_save(mean_path, d->mean_img, 3, mdims))
      fprintf(stderr, "alexc: warning: not caching the training statistics: %s\n", rt_error());
  }
  free(dir);
  free(mean_path);
  free(pca_path);
  return ok;
}

static bool open_photos(Dataset *d) {
  if (d->C != 3 || d->H > PHOTO_SIDE || d->W > PHOTO_SIDE) {
    error("%s: photos are cropped from 3x%dx%d images; the network's input is %dx%dx%d", d->path,
          PHOTO_SIDE, PHOTO_SIDE, d->C, d->H, d->W);
    return false;
  }
  char *train_dir = format("%s/train", d->path), *val_dir = format("%s/val", d->path);
  Names cls = {0}, train = {0}, files = {0};
  int32_t *train_labels = NULL;
  uint8_t *train_bad = NULL;
  bool ok = false;
  struct stat st;
  if (stat(train_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    error("%s: no training split (%s): the classes and the mean image come from it", d->path,
          train_dir);
    goto done;
  }
  if (!list_dir(train_dir, true, &cls))
    goto done;
  if (!cls.n) {
    error("%s: no class subfolders", train_dir);
    goto done;
  }
  if (cls.n > INT32_MAX / 2) {
    error("%s: too many classes", train_dir);
    goto done;
  }
  d->classes = (int)cls.n;
  if (!list_split(train_dir, &cls, false, &train, &train_labels))
    goto done;
  if (!d->o.train) {
    if (stat(val_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
      error("%s: no validation split (%s)", d->path, val_dir);
      goto done;
    }
    if (!list_split(val_dir, &cls, true, &files, &d->labels))
      goto done;
  }
  train_bad = xcalloc((size_t)train.n, 1);
  if (!photo_stats(d, train_dir, &train, train_bad))
    goto done;
  if (d->o.train) {
    files = train;
    memset(&train, 0, sizeof train);
    d->labels = train_labels;
    train_labels = NULL;
    d->bad = train_bad;
    train_bad = NULL;
  } else
    d->bad = xcalloc((size_t)files.n, 1);
  d->files = files.v;
  d->n = files.n;
  memset(&files, 0, sizeof files);
  if (d->o.limit > 0 && d->o.limit < d->n) {
    for (int64_t i = d->o.limit; i < d->n; i++)
      free(d->files[i]);
    d->n = d->o.limit;
  }
  ok = true;
done:
  names_free(&cls);
  names_free(&train);
  names_free(&files);
  free(train_labels);
  free(train_bad);
  free(train_dir);
  free(val_dir);
  return ok;
}

// Copies an H x W crop at (x0, y0) of a 3 x 256 x 256 image, flipped when `flip`.
static void crop(const Dataset *d, const float *img, int x0, int y0, bool flip, float *out) {
  const int H = d->H, W = d->W, S = PHOTO_SIDE;
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < H; y++) {
      const float *s = img + ((int64_t)c * S + y0 + y) * S + x0;
      float *o = out + ((int64_t)c * H + y) * W;
      if (flip)
        for (int x = 0; x < W; x++)
          o[x] = s[W - 1 - x];
      else
        memcpy(o, s, (size_t)W * sizeof *o);
    }
}

static bool fill_photo(Dataset *d, int64_t id, int epoch, float *img, float *out) {
  if (!load_photo(d, d->files[id], &d->bad[id], img))
    return false;
  const int64_t plane = (int64_t)PHOTO_SIDE * PHOTO_SIDE;
  bool aug = d->o.train && d->o.augment;
  float shift[3] = {0, 0, 0};
  if (aug) {
    uint32_t r[4];
    draw(d, (uint32_t)id, (uint32_t)epoch, TAG_PCA, r);
    double alpha[3] = {0.1 * normal(r[0], r[1]), 0.1 * normal(r[2], r[3]), 0};
    draw(d, (uint32_t)id, (uint32_t)epoch, TAG_PCA + 1, r);
    alpha[2] = 0.1 * normal(r[0], r[1]);
    for (int c = 0; c < 3; c++) {
      double s = 0;
      for (int k = 0; k < 3; k++)
        s += (double)d->pca_vec[k][c] * alpha[k] * d->pca_val[k];
      shift[c] = (float)(255 * s);
    }
  }
  for (int c = 0; c < 3; c++)
    for (int64_t p = 0; p < plane; p++)
      img[c * plane + p] = img[c * plane + p] - d->mean_img[c * plane + p] + shift[c];
  const int dx = PHOTO_SIDE - d->W, dy = PHOTO_SIDE - d->H;
  if (aug) {
    uint32_t r[4];
    draw(d, (uint32_t)id, (uint32_t)epoch, TAG_CROP, r);
    crop(d, img, (int)below(r[0], (uint32_t)dx + 1), (int)below(r[1], (uint32_t)dy + 1),
         r[2] >> 31, out);
  } else if (d->views == 10) {
    const int x0[5] = {0, dx, 0, dx, dx / 2}, y0[5] = {0, 0, dy, dy, dy / 2};
    for (int v = 0; v < 10; v++)
      crop(d, img, x0[v % 5], y0[v % 5], v >= 5, out + v * d->item);
  } else
    crop(d, img, dx / 2, dy / 2, false, out);
  return true;
}

// ---------------------------------------------------------------- the pipeline

static int batch_items(const Dataset *d, int64_t k) {
  int64_t left = d->n - d->start - k * d->B;
  return (int)(left < d->B ? left : d->B);
}

// This shard's part of batch k: its examples [*lo, *hi) (the whole batch without shards).
// Contiguous and in rank order, so the shards' parts laid end to end are the batch.
static void shard_part(const Dataset *d, int64_t k, int *lo, int *hi) {
  int64_t n = batch_items(d, k), shards = d->o.shards > 1 ? d->o.shards : 1;
  *lo = (int)(n * d->o.shard / shards);
  *hi = (int)(n * (d->o.shard + 1) / shards);
}

static bool task_ready(const Dataset *d) {
  return d->B > 0 && d->ak < d->n_batches && d->ak < d->next_out + QUEUE;
}

static void *worker_main(void *arg) {
  Worker *w = arg;
  Dataset *d = w->d;
  pthread_mutex_lock(&d->mu);
  for (;;) {
    while (!d->quit && !task_ready(d))
      pthread_cond_wait(&d->cv_work, &d->mu);
    if (d->quit)
      break;
    int64_t k = d->ak;
    Slot *s = &d->slots[k % QUEUE];
    int lo, hi;
    shard_part(d, k, &lo, &hi);
    int n = hi - lo, j0 = d->aj;
    if (j0 == 0) {
      s->k = k;
      s->n = n;
      s->left = n;
    }
    int j1 = j0 + (d->kind == KIND_IDX ? IDX_CHUNK : 1);
    if (j1 >= n) {
      j1 = n;
      d->ak++;
      d->aj = 0;
    } else
      d->aj = j1;
    d->busy++;
    const uint64_t gen = d->gen;
    const int epoch = d->epoch;
    const int64_t base = d->start + k * d->B + lo, *perm = d->perm, stride = d->item * d->views;
    float *x = s->x;
    int32_t *lab = s->lab;
    uint8_t *okv = s->ok;
    pthread_mutex_unlock(&d->mu);

    for (int j = j0; j < j1; j++) {
      int64_t id = perm ? perm[base + j] : base + j;
      lab[j] = d->labels[id];
      if (d->kind == KIND_IDX) {
        fill_idx(d, id, epoch, x + j * stride);
        okv[j] = 1;
      } else
        okv[j] = fill_photo(d, id, epoch, w->scratch, x + j * stride);
    }

    pthread_mutex_lock(&d->mu);
    d->busy--;
    if (gen == d->gen && (s->left -= j1 - j0) == 0)
      pthread_cond_broadcast(&d->cv_done);
    if (!d->busy)
      pthread_cond_broadcast(&d->cv_done);
  }
  pthread_mutex_unlock(&d->mu);
  return NULL;
}

// Stops the loaders' work on the current pass (under mu): waits for the tasks in flight.
static void cancel(Dataset *d) {
  d->gen++;
  d->B = 0;
  while (d->busy)
    pthread_cond_wait(&d->cv_done, &d->mu);
  d->next_out = d->ak = d->n_batches = 0;
  d->aj = 0;
  for (int i = 0; i < QUEUE; i++)
    d->slots[i].k = -1;
}

static void stop_workers(Dataset *d) {
  pthread_mutex_lock(&d->mu);
  d->quit = true;
  pthread_cond_broadcast(&d->cv_work);
  pthread_mutex_unlock(&d->mu);
  for (int i = 0; i < d->n_workers; i++)
    pthread_join(d->workers[i].th, NULL);
}

void data_close(Dataset *d) {
  if (!d)
    return;
  if (d->workers) {
    stop_workers(d);
    for (int i = 0; i < d->n_workers; i++)
      free(d->workers[i].scratch);
    free(d->workers);
  }
  pthread_mutex_destroy(&d->mu);
  pthread_cond_destroy(&d->cv_work);
  pthread_cond_destroy(&d->cv_done);
  for (int i = 0; i < QUEUE; i++) {
    free(d->slots[i].x);
    free(d->slots[i].lab);
    free(d->slots[i].ok);
  }
  if (d->files)
    for (int64_t i = 0; i < d->n; i++)
      free(d->files[i]);
  free(d->files);
  free(d->bad);
  free(d->mean_img);
  free(d->pixels);
  free(d->labels);
  free(d->perm);
  free(d->path);
  free(d);
}

Dataset *data_open(const char *path, const DataOptions *o) {
  if (o->channels < 1 || o->height < 1 || o->width < 1 || o->channels > 4096 ||
      o->height > RT_IMAGE_MAX_SIDE || o->width > RT_IMAGE_MAX_SIDE ||
      (int64_t)o->channels * o->height * o->width > MAX_ELEMS) {
    error("%s: bad input shape %dx%dx%d", path, o->channels, o->height, o->width);
    return NULL;
  }
  Dataset *d = xcalloc(1, sizeof *d);
  d->path = xstrdup(path);
  size_t len = strlen(d->path);
  while (len > 1 && d->path[len - 1] == '/')
    d->path[--len] = 0;
  d->o = *o;
  d->C = o->channels;
  d->H = o->height;
  d->W = o->width;
  d->item = (int64_t)d->C * d->H * d->W;
  d->n_workers = o->threads > 0 ? (o->threads < MAX_THREADS ? o->threads : MAX_THREADS) : 2;
  pthread_mutex_init(&d->mu, NULL);
  pthread_cond_init(&d->cv_work, NULL);
  pthread_cond_init(&d->cv_done, NULL);
  for (int i = 0; i < QUEUE; i++)
    d->slots[i].k = -1;

  struct stat st;
  char *probe = format("%s/train-images-idx3-ubyte", d->path), *probe_gz = format("%s.gz", probe);
  char *train = format("%s/train", d->path);
  bool idx = stat(probe, &st) == 0 || stat(probe_gz, &st) == 0;
  bool photos = !idx && stat(train, &st) == 0 && S_ISDIR(st.st_mode);
  free(probe);
  free(probe_gz);
  free(train);
  bool ok;
  if (idx) {
    d->kind = KIND_IDX;
    d->views = 1;
    ok = open_idx(d);
  } else if (photos) {
    d->kind = KIND_PHOTOS;
    d->views = o->ten_crop && !o->train ? 10 : 1;
    ok = open_photos(d);
  } else {
    if (stat(d->path, &st) != 0 || !S_ISDIR(st.st_mode))
      error("%s: not a folder of training data", d->path);
    else
      error("%s: neither IDX files (train-images-idx3-ubyte[.gz], ...) nor photos in class "
            "subfolders of %s/train", d->path, d->path);
    ok = false;
  }
  if (!ok) {
    data_close(d);
    return NULL;
  }
  if (o->train)
    d->perm = xcalloc((size_t)d->n, sizeof *d->perm);
  make_perm(d);

  d->workers = xcalloc((size_t)d->n_workers, sizeof *d->workers);
  int started = 0;
  for (int i = 0; i < d->n_workers; i++) {
    Worker *w = &d->workers[started];
    w->d = d;
    if (d->kind == KIND_PHOTOS)
      w->scratch = xcalloc((size_t)3 * PHOTO_SIDE * PHOTO_SIDE, sizeof *w->scratch);
    if (pthread_create(&w->th, NULL, worker_main, w) != 0) {
      free(w->scratch);
      w->scratch = NULL;
      break;
    }
    started++;
  }
  d->n_workers = started;
  if (!started) {
    error("%s: cannot start a loader thread", d->path);
    data_close(d);
    return NULL;
  }
  return d;
}

int64_t data_size(const Dataset *d) { return d->n; }
int data_classes(const Dataset *d) { return d->classes; }
int data_views(const Dataset *d) { return d->views; }

int64_t data_skipped(const Dataset *d) {
  Dataset *m = (Dataset *)d;  // the count is under the mutex
  pthread_mutex_lock(&m->mu);
  int64_t n = m->skipped;
  pthread_mutex_unlock(&m->mu);
  return n;
}

void data_start(Dataset *d, int epoch, int64_t first) {
  pthread_mutex_lock(&d->mu);
  cancel(d);
  bool reshuffle = epoch != d->epoch;
  d->epoch = epoch;
  d->first = first > 0 ? first : 0;
  d->start = 0;
  if (reshuffle)
    make_perm(d);
  pthread_mutex_unlock(&d->mu);
}

// Starts the loaders on batches of B from example position `start` (under mu).
static void begin(Dataset *d, int B, int64_t start) {
  cancel(d);
  size_t most = (size_t)(B < d->n ? B : d->n);  // examples a batch can hold
  size_t floats = most * (size_t)d->views * (size_t)d->item;
  for (int i = 0; i < QUEUE; i++) {
    Slot *s = &d->slots[i];
    s->x = xrealloc(s->x, floats * sizeof *s->x);
    s->lab = xrealloc(s->lab, most * sizeof *s->lab);
    s->ok = xrealloc(s->ok, most);
  }
  d->B = B;
  d->start = start < d->n ? start : d->n;
  d->n_batches = (d->n - d->start + B - 1) / B;
  pthread_cond_broadcast(&d->cv_work);
}

// The next batch's examples (this shard's part), or -1 at the epoch's end. With
// skip_empty, a batch none of whose photos could be read is passed over.
static int next_batch(Dataset *d, int batch, float *x, int32_t *labels, bool skip_empty) {
  if (batch < 1)
    return -1;
  pthread_mutex_lock(&d->mu);
  if (d->B != batch) {
    // First call since data_start (B = 0): start at its batch. A new batch size mid-epoch
    // goes on from the first example not yet returned.
    int64_t start = d->B ? d->start + d->next_out * d->B
                         : (d->first > d->n / batch ? d->n : d->first * batch);
    begin(d, batch, start);
  }
  const int64_t stride = d->item * d->views;
  for (;;) {
    if (d->next_out >= d->n_batches) {
      pthread_mutex_unlock(&d->mu);
      return -1;
    }
    Slot *s = &d->slots[d->next_out % QUEUE];
    while (!(s->k == d->next_out && s->left == 0))
      pthread_cond_wait(&d->cv_done, &d->mu);
    pthread_mutex_unlock(&d->mu);
    // The slot is ours until next_out moves on: no loader takes batch next_out + QUEUE.
    int m = 0;
    for (int j = 0; j < s->n; j++)
      if (s->ok[j]) {
        memcpy(x + m * stride, s->x + j * stride, (size_t)stride * sizeof *x);
        labels[m++] = s->lab[j];
      }
    pthread_mutex_lock(&d->mu);
    d->next_out++;
    pthread_cond_broadcast(&d->cv_work);
    if (m || !skip_empty) {
      pthread_mutex_unlock(&d->mu);
      return m;
    }
  }
}

int data_next(Dataset *d, int batch, float *x, int32_t *labels) {
  int n = next_batch(d, batch, x, labels, true);
  return n > 0 ? n : 0;
}

// Shards pass nothing over: every shard must take part in every step's sums, even one
// whose part of the batch is empty.
int data_next_part(Dataset *d, int batch, float *x, int32_t *labels) {
  return next_batch(d, batch, x, labels, false);
}
