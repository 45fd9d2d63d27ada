// compiler/train/data.c: the training data pipelines. Writes tiny IDX files (plain and
// gzipped) and tiny photo folders (PNGs written here with libpng, plus tests/data/cat.jpg)
// into a temporary folder and checks shapes, the normalisation, the augmentation, the
// epoch permutations, determinism across loader thread counts and across a resumed
// epoch, the messages for bad data, unreadable photos skipped and counted, the ten crops
// and the PCA colour augmentation. Then, when Debian's Fashion-MNIST is installed, the
// real thing: 60000 + 10000 images of 28 x 28 in 10 classes, normalised to mean 0, std 1.
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <png.h>
#include <zlib.h>

#include "../../runtime/image.h"
#include "../unit/test.h"
#include "alexc.h"

static char root[] = "/tmp/alexc-test-data-XXXXXX";

static char *at(const char *fmt, const char *a) {
  static char buf[4][512];
  static int k;
  char *b = buf[k++ % 4], name[256];
  snprintf(name, sizeof name, fmt, a);
  snprintf(b, 512, "%s/%s", root, name);
  return b;
}

static void write_file(const char *p, const void *data, size_t n, bool gz) {
  if (gz) {
    gzFile f = gzopen(p, "wb");
    gzwrite(f, data, (unsigned)n);
    gzclose(f);
  } else {
    FILE *f = fopen(p, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
  }
}

static void put32(uint8_t *b, uint32_t v) {
  b[0] = (uint8_t)(v >> 24), b[1] = (uint8_t)(v >> 16), b[2] = (uint8_t)(v >> 8), b[3] = (uint8_t)v;
}

// ---- IDX fixtures: images of ROWS x COLS (not square, so that a swap shows)

enum { ROWS = 6, COLS = 5, NTRAIN = 20, NTEST = 7, CLASSES = 3 };

static uint8_t train_px(int i, int p) { return (uint8_t)(i * 11 + p * 7 + (p * p) % 13); }
static uint8_t test_px(int i, int p) { return (uint8_t)(200 - i * 5 + p * 3); }

// An IDX images file of n images (bytes: its size, 0 = all; magic and count overridable).
static void write_images(const char *p, int n, uint32_t count, uint32_t magic, int rows, int cols,
                         bool test, size_t cut, bool gz) {
  size_t size = 16 + (size_t)n * rows * cols;
  uint8_t *b = calloc(size, 1);
  put32(b, magic), put32(b + 4, count), put32(b + 8, (uint32_t)rows), put32(b + 12, (uint32_t)cols);
  for (int i = 0; i < n; i++)
    for (int q = 0; q < rows * cols; q++)
      b[16 + (size_t)i * rows * cols + q] = test ? test_px(i, q) : train_px(i, q);
  write_file(p, b, cut ? cut : size, gz);
  free(b);
}

static void write_labels(const char *p, int n, uint32_t count, int bad_at, bool gz) {
  uint8_t *b = calloc(8 + (size_t)n, 1);
  put32(b, 0x801), put32(b + 4, count);
  for (int i = 0; i < n; i++)
    b[8 + i] = (uint8_t)(i % CLASSES);
  if (bad_at >= 0)
    b[8 + bad_at] = 7;
  write_file(p, b, 8 + (size_t)n, gz);
  free(b);
}

// A good IDX folder at root/NAME.
static void make_idx(const char *name, bool gz) {
  mkdir(at("%s", name), 0755);
  char dir[256];
  snprintf(dir, sizeof dir, "%s", name);
  const char *sfx = gz ? ".gz" : "";
  char p[512];
  snprintf(p, sizeof p, "%s/%s/train-images-idx3-ubyte%s", root, dir, sfx);
  write_images(p, NTRAIN, NTRAIN, 0x803, ROWS, COLS, false, 0, gz);
  snprintf(p, sizeof p, "%s/%s/train-labels-idx1-ubyte%s", root, dir, sfx);
  write_labels(p, NTRAIN, NTRAIN, -1, gz);
  snprintf(p, sizeof p, "%s/%s/t10k-images-idx3-ubyte%s", root, dir, sfx);
  write_images(p, NTEST, NTEST, 0x803, ROWS, COLS, true, 0, gz);
  snprintf(p, sizeof p, "%s/%s/t10k-labels-idx1-ubyte%s", root, dir, sfx);
  write_labels(p, NTEST, NTEST, -1, gz);
}

static DataOptions idx_opts(bool train, bool augment, int threads) {
  DataOptions o = {1, ROWS, COLS, train, augment, false, 1234, 0, threads, 0, 0};
  return o;
}

// Every batch of one epoch, concatenated; returns the examples.
typedef struct {
  float *x;
  int32_t *labels;
  int64_t n;
  int batches;
  int sizes[64];
} Epoch;

static int64_t g_item;  // floats per view of the dataset under test

static Epoch epoch_of(Dataset *d, int epoch, int64_t first, int batch) {
  Epoch e = {0};
  int views = data_views(d);
  int64_t stride = g_item * views;
  int64_t cap = data_size(d);  // data_next writes only the examples it returns
  e.x = calloc((size_t)(cap * stride), sizeof *e.x);
  e.labels = calloc((size_t)cap, sizeof *e.labels);
  data_start(d, epoch, first);
  int n;
  while ((n = data_next(d, batch, e.x + e.n * stride, e.labels + e.n)) > 0) {
    if (e.batches < 64)
      e.sizes[e.batches] = n;
    e.batches++;
    e.n += n;
    if (e.n > data_size(d)) {
      CHECK(!"more examples than the split holds");
      break;
    }
  }
  return e;
}

static void epoch_free(Epoch *e) {
  free(e->x);
  free(e->labels);
}

static bool same_epoch(const Epoch *a, const Epoch *b, int64_t stride) {
  return a->n == b->n && !memcmp(a->labels, b->labels, (size_t)a->n * sizeof *a->labels) &&
         !memcmp(a->x, b->x, (size_t)(a->n * stride) * sizeof *a->x);
}

// Runs data_open with stderr captured; true when it fails with a message holding `needle`.
static bool fails_with(const char *path, DataOptions o, const char *needle) {
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s/stderr.txt", root);
  fflush(stderr);
  int saved = dup(2), fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(fd, 2);
  close(fd);
  Dataset *d = data_open(path, &o);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  char msg[2048] = "";
  FILE *f = fopen(tmp, "rb");
  size_t got = fread(msg, 1, sizeof msg - 1, f);
  msg[got] = 0;
  fclose(f);
  printf("  expected failure: %s", msg);
  bool ok = !d && strstr(msg, needle);
  if (!ok)
    fprintf(stderr, "wanted a failure naming '%s', got %s: %s\n", needle, d ? "success" : "failure",
            msg);
  data_close(d);
  return ok;
}

// Which training image (and augmentation) an example is: -1 if none matches.
static int identify_idx(const float *x, double mean, double std, bool augmented, int *how) {
  for (int i = 0; i < NTRAIN; i++)
    for (int dy = augmented ? -2 : 0; dy <= (augmented ? 2 : 0); dy++)
      for (int dx = augmented ? -2 : 0; dx <= (augmented ? 2 : 0); dx++)
        for (int flip = 0; flip <= (augmented ? 1 : 0); flip++) {
          bool match = true;
          for (int y = 0; match && y < ROWS; y++)
            for (int c = 0; match && c < COLS; c++) {
              int sy = y + dy, sx = (flip ? COLS - 1 - c : c) + dx;
              int v =
                  sy >= 0 && sy < ROWS && sx >= 0 && sx < COLS ? train_px(i, sy * COLS + sx) : 0;
              match = fabs(x[y * COLS + c] - (v / 255.0 - mean) / std) < 1e-5;
            }
          if (match) {
            if (how)
              *how = ((dy + 2) * 5 + dx + 2) * 2 + flip;
            return i;
          }
        }
  return -1;
}

static void test_idx(void) {
  make_idx("idx", false);
  make_idx("idxgz", true);
  g_item = ROWS * COLS;
  const int64_t stride = g_item;
  // The normalisation: the training pixels' mean and std.
  double s1 = 0, s2 = 0, np = (double)NTRAIN * ROWS * COLS;
  for (int i = 0; i < NTRAIN; i++)
    for (int p = 0; p < ROWS * COLS; p++) {
      double v = train_px(i, p) / 255.0;
      s1 += v;
      s2 += v * v;
    }
  double mean = s1 / np, std = sqrt(s2 / np - mean * mean);

  // The test split: in order, normalised with the training statistics.
  for (int gz = 0; gz < 2; gz++) {
    DataOptions o = idx_opts(false, true, 2);
    Dataset *d = data_open(at("%s", gz ? "idxgz" : "idx"), &o);
    CHECK(d);
    if (!d)
      return;
    CHECK(data_size(d) == NTEST && data_classes(d) == CLASSES && data_views(d) == 1);
    CHECK(data_skipped(d) == 0);
    Epoch e = epoch_of(d, 3, 0, 3);
    CHECK(e.n == NTEST && e.batches == 3 && e.sizes[0] == 3 && e.sizes[2] == 1);
    for (int i = 0; i < e.n; i++) {
      CHECK(e.labels[i] == i % CLASSES);
      for (int p = 0; p < ROWS * COLS; p++)
        CHECK_NEAR(e.x[i * stride + p], (test_px(i, p) / 255.0 - mean) / std, 1e-5);
    }
    epoch_free(&e);
    data_close(d);
  }

  // The training split without augmentation: every epoch a permutation, different ones.
  DataOptions o = idx_opts(true, false, 2);
  Dataset *d = data_open(at("%s", "idx"), &o);
  CHECK(d && data_size(d) == NTRAIN && data_classes(d) == CLASSES);
  int order[3][NTRAIN];
  for (int ep = 0; ep < 3 && d; ep++) {
    Epoch e = epoch_of(d, ep, 0, 6);
    CHECK(e.n == NTRAIN && e.batches == 4 && e.sizes[3] == 2);
    int seen[NTRAIN] = {0};
    for (int i = 0; i < e.n; i++) {
      int id = identify_idx(e.x + i * stride, mean, std, false, NULL);
      CHECK(id >= 0);
      if (id < 0)
        continue;
      CHECK(e.labels[i] == id % CLASSES);
      seen[id]++;
      order[ep][i] = id;
    }
    for (int i = 0; i < NTRAIN; i++)
      CHECK(seen[i] == 1);
    epoch_free(&e);
  }
  CHECK(memcmp(order[0], order[1], sizeof order[0]) && memcmp(order[1], order[2], sizeof order[0]));
  bool identity = true;
  for (int i = 0; i < NTRAIN; i++)
    identity = identity && order[0][i] == i;
  CHECK(!identity);
  // Epoch 0 again (after 1 and 2): the same order.
  Epoch again = epoch_of(d, 0, 0, 6);
  for (int i = 0; i < again.n; i++)
    CHECK(identify_idx(again.x + i * stride, mean, std, false, NULL) == order[0][i]);
  epoch_free(&again);
  data_close(d);

  // Augmentation: each example is its image shifted by -2..2 and perhaps flipped, the same
  // for any thread count, for a resumed epoch, and for the gzipped copy.
  Epoch ref[2];
  for (int ep = 0; ep < 2; ep++) {
    o = idx_opts(true, true, 1);
    d = data_open(at("%s", "idx"), &o);
    ref[ep] = epoch_of(d, ep, 0, 6);
    data_close(d);
  }
  int hows[50] = {0}, n_how = 0;
  for (int i = 0; i < ref[0].n; i++) {
    int how = -1, id = identify_idx(ref[0].x + i * stride, mean, std, true, &how);
    CHECK(id >= 0 && ref[0].labels[i] == id % CLASSES);
    if (how >= 0 && !hows[how]++)
      n_how++;
  }
  CHECK(n_how >= 8);  // 20 draws of 50 crops and flips: some variety
  CHECK(ref[0].n == NTRAIN &&
        memcmp(ref[0].x, ref[1].x, (size_t)(NTRAIN * stride) * sizeof(float)));
  for (int threads = 1; threads <= 4; threads += 3)
    for (int gz = 0; gz < 2; gz++) {
      o = idx_opts(true, true, threads);
      d = data_open(at("%s", gz ? "idxgz" : "idx"), &o);
      CHECK(d);
      if (!d)
        continue;
      for (int ep = 1; ep >= 0; ep--) {
        Epoch e = epoch_of(d, ep, 0, 6);
        CHECK(same_epoch(&e, &ref[ep], stride));
        epoch_free(&e);
        // Resumed at batch 2: the same as batches 2 and 3 of the whole epoch.
        e = epoch_of(d, ep, 2, 6);
        CHECK(e.n == 8 && e.batches == 2);
        CHECK(!memcmp(e.labels, ref[ep].labels + 12, 8 * sizeof *e.labels));
        CHECK(!memcmp(e.x, ref[ep].x + 12 * stride, (size_t)(8 * stride) * sizeof *e.x));
        epoch_free(&e);
      }
      // Past the end: nothing.
      data_start(d, 0, 4);
      float x[6 * ROWS * COLS];
      int32_t lab[6];
      CHECK(data_next(d, 6, x, lab) == 0);
      // Closed mid-epoch, with the loaders running ahead.
      data_start(d, 0, 0);
      CHECK(data_next(d, 2, x, lab) == 2);
      data_close(d);
    }
  epoch_free(&ref[0]);
  epoch_free(&ref[1]);

  // A batch size changed mid-epoch goes on from the first example not yet returned.
  o = idx_opts(false, false, 2);
  d = data_open(at("%s", "idx"), &o);
  if (d) {
    float x[4 * ROWS * COLS];
    int32_t lab[4];
    data_start(d, 0, 1);  // batch 1 of 3: examples 3-5
    CHECK(data_next(d, 3, x, lab) == 3 && lab[0] == 0 && lab[2] == 2);
    CHECK_NEAR(x[0], (test_px(3, 0) / 255.0 - mean) / std, 1e-5);
    CHECK(data_next(d, 4, x, lab) == 1 && lab[0] == 0);  // example 6 of 7
    CHECK_NEAR(x[0], (test_px(6, 0) / 255.0 - mean) / std, 1e-5);
    CHECK(data_next(d, 4, x, lab) == 0);
    data_close(d);
  }

  // limit: the first examples only.
  o = idx_opts(false, false, 2);
  o.limit = 4;
  d = data_open(at("%s", "idx"), &o);
  CHECK(d && data_size(d) == 4);
  data_close(d);

  // Bad data, each refused with a message naming the file.
  char p[600];
  // truncated images (plain)
  make_idx("trunc", false);
  snprintf(p, sizeof p, "%s/trunc/train-images-idx3-ubyte", root);
  write_images(p, NTRAIN, NTRAIN, 0x803, ROWS, COLS, false, 16 + 100, false);
  CHECK(fails_with(at("%s", "trunc"), idx_opts(true, false, 2),
                   "train-images-idx3-ubyte: truncated"));
  CHECK(fails_with(at("%s", "trunc"), idx_opts(false, false, 2),
                   "train-images-idx3-ubyte: truncated"));
  // truncated gzip stream, and a gzipped file cut short before compression
  make_idx("truncgz", true);
  snprintf(p, sizeof p, "%s/truncgz/t10k-images-idx3-ubyte.gz", root);
  write_images(p, NTEST, NTEST, 0x803, ROWS, COLS, true, 0, true);
  {
    FILE *f = fopen(p, "rb");
    uint8_t buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_file(p, buf, n - 12, false);  // cut the gzip stream's end
  }
  CHECK(fails_with(at("%s", "truncgz"), idx_opts(false, false, 2),
                   "t10k-images-idx3-ubyte.gz: truncated"));
  snprintf(p, sizeof p, "%s/truncgz/t10k-images-idx3-ubyte.gz", root);
  write_images(p, NTEST, NTEST, 0x803, ROWS, COLS, true, 16 + 3 * ROWS * COLS, true);
  CHECK(fails_with(at("%s", "truncgz"), idx_opts(false, false, 2),
                   "t10k-images-idx3-ubyte.gz: truncated"));
  // data past the end
  make_idx("long", false);
  snprintf(p, sizeof p, "%s/long/t10k-images-idx3-ubyte", root);
  write_images(p, NTEST, NTEST - 1, 0x803, ROWS, COLS, true, 0, false);
  CHECK(fails_with(at("%s", "long"), idx_opts(false, false, 2), "more data than its header"));
  // wrong magic
  make_idx("magic", true);
  snprintf(p, sizeof p, "%s/magic/train-images-idx3-ubyte.gz", root);
  write_images(p, NTRAIN, NTRAIN, 0x801, ROWS, COLS, false, 0, true);
  CHECK(fails_with(at("%s", "magic"), idx_opts(true, false, 2),
                   "train-images-idx3-ubyte.gz: bad magic"));
  // labels count differs from the images'
  make_idx("count", false);
  snprintf(p, sizeof p, "%s/count/train-labels-idx1-ubyte", root);
  write_labels(p, NTRAIN - 1, NTRAIN - 1, -1, false);
  CHECK(fails_with(at("%s", "count"), idx_opts(true, false, 2),
                   "train-labels-idx1-ubyte: 19 labels"));
  // a test label outside the training classes
  make_idx("label", false);
  snprintf(p, sizeof p, "%s/label/t10k-labels-idx1-ubyte", root);
  write_labels(p, NTEST, NTEST, 2, false);
  CHECK(fails_with(at("%s", "label"), idx_opts(false, false, 2), "label 7 of image 2"));
  // the network's input is not the images' shape
  DataOptions wrong = idx_opts(true, false, 2);
  wrong.height = COLS, wrong.width = ROWS;
  CHECK(
      fails_with(at("%s", "idx"), wrong, "images are 1x6x5 (CxHxW), the network's input is 1x5x6"));
  wrong = idx_opts(false, false, 2);
  wrong.channels = 3;
  CHECK(fails_with(at("%s", "idx"), wrong, "t10k-images-idx3-ubyte: the images are 1x6x5"));
  // a missing file, and a folder holding neither kind
  make_idx("missing", false);
  snprintf(p, sizeof p, "%s/missing/t10k-labels-idx1-ubyte", root);
  remove(p);
  CHECK(fails_with(at("%s", "missing"), idx_opts(false, false, 2), "t10k-labels-idx1-ubyte (or"));
  mkdir(at("%s", "empty"), 0755);
  CHECK(fails_with(at("%s", "empty"), idx_opts(true, false, 2), "neither IDX files"));
  CHECK(fails_with(at("%s", "nowhere"), idx_opts(true, false, 2), "not a folder"));
}

// ---- photo folders

static void write_png_rgb(const char *p, int w, int h, const uint8_t *px) {
  FILE *f = fopen(p, "wb");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    fprintf(stderr, "libpng failed writing %s\n", p);
    exit(1);
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < h; y++)
    png_write_row(png, (png_bytep)(px + (size_t)y * w * 3));
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  fclose(f);
}

// A w x h photo: a gradient and a few blocks, varied by k.
static void write_photo(const char *p, int w, int h, int k) {
  uint8_t *px = malloc((size_t)w * h * 3);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      uint8_t *q = px + ((size_t)y * w + x) * 3;
      q[0] = (uint8_t)(x * 255 / w + k * 30);
      q[1] = (uint8_t)(y * 255 / h + k * 50);
      q[2] = (uint8_t)((x / 3 + y / 2 + k) % 2 ? 220 : 20);
    }
  write_png_rgb(p, w, h, px);
  free(px);
}

static void write_flat(const char *p, uint8_t r, uint8_t g, uint8_t b) {
  uint8_t px[8 * 8 * 3];
  for (int i = 0; i < 64; i++)
    px[3 * i] = r, px[3 * i + 1] = g, px[3 * i + 2] = b;
  write_png_rgb(p, 8, 8, px);
}

static void copy_file(const char *from, const char *to) {
  FILE *f = fopen(from, "rb");
  if (!f) {
    fprintf(stderr, "cannot read %s (run from the repository root)\n", from);
    test_failures++;
    return;
  }
  static uint8_t buf[1 << 20];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  write_file(to, buf, n, false);
}

enum { PH = 200, PW = 224 };

static DataOptions photo_opts(bool train, bool augment, int threads) {
  DataOptions o = {3, PH, PW, train, augment, false, 99, 0, threads, 0, 0};
  return o;
}

static int count_cache(const char *dir) {
  DIR *dp = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (dp && (e = readdir(dp)))
    n += !strncmp(e->d_name, ".alexc-mean-", 12) || !strncmp(e->d_name, ".alexc-pca-", 11);
  if (dp)
    closedir(dp);
  return n;
}

// Data parallelism: the shards' parts of each batch, laid end to end in shard order, are
// the batch one process gets (images and labels, augmented, shuffled, resumed mid-epoch),
// and every shard sees the same number of batches, even when the last batch has fewer
// examples than there are shards (some parts are then empty, not skipped).
static void test_shards(void) {
  g_item = ROWS * COLS;
  const int64_t stride = g_item;
  const int shards_list[] = {2, 3, 7};
  for (size_t c = 0; c < sizeof shards_list / sizeof *shards_list; c++) {
    int shards = shards_list[c], batch = 6;  // 20 examples: 3 batches of 6, one of 2
    for (int64_t first = 0; first < 2; first++) {
      DataOptions o = idx_opts(true, true, 2);
      Dataset *whole = data_open(at("%s", "idx"), &o);
      CHECK(whole);
      if (!whole)
        return;
      Epoch e = epoch_of(whole, 1, first, batch);
      float *x = calloc((size_t)(batch * stride), sizeof *x);
      int32_t lab[6];
      int64_t at_ex = 0;
      int batches = -1;
      // Shard by shard, each batch's part must be the next piece of that batch.
      int64_t *seen = calloc((size_t)e.batches * shards, sizeof *seen);
      for (int r = 0; r < shards; r++) {
        DataOptions so = idx_opts(true, true, 2);
        so.shard = r;
        so.shards = shards;
        Dataset *d = data_open(at("%s", "idx"), &so);
        CHECK(d);
        if (!d)
          break;
        data_start(d, 1, first);
        int k = 0, n;
        while ((n = data_next_part(d, batch, x, lab)) >= 0) {
          int size = k < e.batches ? e.sizes[k] : 0;
          CHECK(n == (int)((int64_t)size * (r + 1) / shards - (int64_t)size * r / shards));
          int64_t off = (int64_t)size * r / shards;
          for (int k2 = 0; k2 < k; k2++)
            off += e.sizes[k2];
          for (int j = 0; j < n && off + j < e.n; j++) {
            CHECK(lab[j] == e.labels[off + j]);
            CHECK(!memcmp(x + j * stride, e.x + (off + j) * stride, stride * sizeof *x));
          }
          if (k < e.batches)
            seen[(int64_t)k * shards + r] = n;
          k++;
        }
        CHECK(batches < 0 || k == batches);
        batches = k;
        data_close(d);
      }
      CHECK(batches == e.batches);
      for (int k = 0; k < e.batches; k++) {  // the parts add up to the batch
        int64_t sum = 0;
        for (int r = 0; r < shards; r++)
          sum += seen[(int64_t)k * shards + r];
        CHECK(sum == e.sizes[k]);
        at_ex += sum;
      }
      CHECK(at_ex == e.n);
      free(seen);
      free(x);
      epoch_free(&e);
      data_close(whole);
    }
  }
}

static void test_photos(void) {
  const char *dirs[] = {"ph",           "ph/train", "ph/train/cat", "ph/train/dog",
                        "ph/train/emu", "ph/val",   "ph/val/cat",   "ph/val/emu"};
  for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++)
    mkdir(at("%s", dirs[i]), 0755);
  // train: cat 3 (one the JPEG fixture), dog 3 + a corrupt one + a text file, emu 2
  copy_file("tests/data/cat.jpg", at("%s", "ph/train/cat/a.jpg"));
  write_photo(at("%s", "ph/train/cat/b.png"), 40, 30, 1);
  write_photo(at("%s", "ph/train/cat/c.PNG"), 30, 44, 2);
  write_photo(at("%s", "ph/train/dog/a.png"), 20, 20, 3);
  write_photo(at("%s", "ph/train/dog/b.png"), 50, 21, 4);
  write_photo(at("%s", "ph/train/dog/d.png"), 26, 27, 5);
  write_file(at("%s", "ph/train/dog/c.jpg"), "\xff\xd8\xff garbage", 12, false);
  write_file(at("%s", "ph/train/dog/notes.txt"), "not a photo", 11, false);
  write_photo(at("%s", "ph/train/emu/a.png"), 33, 33, 6);
  copy_file("tests/data/cat.png", at("%s", "ph/train/emu/b.png"));
  write_photo(at("%s", "ph/val/cat/x.png"), 35, 25, 7);
  write_photo(at("%s", "ph/val/emu/y.png"), 25, 35, 8);
  write_photo(at("%s", "ph/val/emu/z.png"), 64, 64, 9);
  g_item = 3 * PH * PW;
  const int64_t stride = g_item, plane = 256 * 256;

  // The mean image, as the loader should compute it: the readable training photos.
  const char *train_files[] = {"cat/a.jpg", "cat/b.png", "cat/c.PNG", "dog/a.png",
                               "dog/b.png", "dog/d.png", "emu/a.png", "emu/b.png"};
  RtImagePrep prep = {3, 256, 256, 1, {0, 0, 0}, {1, 1, 1}, 256};
  float *img = calloc((size_t)(3 * plane), sizeof *img);
  double *mean = calloc((size_t)(3 * plane), sizeof *mean);
  for (int i = 0; i < 8; i++) {
    char name[64];
    snprintf(name, sizeof name, "ph/train/%s", train_files[i]);
    CHECK(rt_image_load(at("%s", name), &prep, img, NULL, 0));
    for (int64_t p = 0; p < 3 * plane; p++)
      mean[p] += img[p] / 8.0;
  }

  // The training split: 9 photos (one unreadable), 3 classes; the statistics cached.
  DataOptions o = photo_opts(true, true, 2);
  Dataset *d = data_open(at("%s", "ph"), &o);
  CHECK(d);
  if (!d)
    return;
  CHECK(data_size(d) == 9 && data_classes(d) == 3 && data_views(d) == 1);
  CHECK(data_skipped(d) == 1);
  CHECK(count_cache(at("%s", "ph")) == 2);
  Epoch ref = epoch_of(d, 0, 0, 4);
  CHECK(ref.n == 8 && data_skipped(d) == 1);
  int per_class[3] = {0};
  for (int i = 0; i < ref.n; i++)
    if (ref.labels[i] >= 0 && ref.labels[i] < 3)
      per_class[ref.labels[i]]++;
  CHECK(per_class[0] == 3 && per_class[1] == 3 && per_class[2] == 2);
  data_close(d);
  // Again, from the cache (the unreadable photo found while loading), with other thread
  // counts, and resumed: the same batches.
  for (int threads = 1; threads <= 3; threads += 2) {
    o = photo_opts(true, true, threads);
    d = data_open(at("%s", "ph"), &o);
    CHECK(d && data_skipped(d) == 0);
    if (!d)
      continue;
    Epoch e = epoch_of(d, 0, 0, 4);
    CHECK(same_epoch(&e, &ref, stride));
    CHECK(data_skipped(d) == 1);
    epoch_free(&e);
    e = epoch_of(d, 0, 1, 4);
    // batch 1 onwards: ref holds batch 0's readable examples first
    int64_t skip = ref.n - e.n;
    CHECK(skip == 3 || skip == 4);
    CHECK(!memcmp(e.x, ref.x + skip * stride, (size_t)(e.n * stride) * sizeof *e.x));
    epoch_free(&e);
    e = epoch_of(d, 1, 0, 4);
    CHECK(e.n == 8 && memcmp(e.x, ref.x, (size_t)(8 * stride) * sizeof *e.x));
    epoch_free(&e);
    data_close(d);
  }
  epoch_free(&ref);

  // Evaluation: the centre crop of (photo - mean image), classes in round-robin order.
  o = photo_opts(false, false, 2);
  d = data_open(at("%s", "ph"), &o);
  CHECK(d && data_size(d) == 3 && data_classes(d) == 3);
  Epoch val = epoch_of(d, 5, 0, 2);
  data_close(d);
  const char *val_files[] = {"ph/val/cat/x.png", "ph/val/emu/y.png", "ph/val/emu/z.png"};
  const int32_t val_labels[] = {0, 2, 2};
  CHECK(val.n == 3);
  for (int i = 0; i < val.n && i < 3; i++) {
    CHECK(val.labels[i] == val_labels[i]);
    CHECK(rt_image_load(at("%s", val_files[i]), &prep, img, NULL, 0));
    double worst = 0;
    for (int c = 0; c < 3; c++)
      for (int y = 0; y < PH; y++)
        for (int x = 0; x < PW; x++) {
          int64_t p = c * plane + (int64_t)(y + (256 - PH) / 2) * 256 + x + (256 - PW) / 2;
          double want = img[p] - mean[p], got = val.x[i * stride + ((int64_t)c * PH + y) * PW + x];
          if (fabs(want - got) > worst)
            worst = fabs(want - got);
        }
    CHECK(worst < 0.01);
  }
  // Ten crops: the centre one is view 4, the flips are views 5-9.
  o.ten_crop = true;
  d = data_open(at("%s", "ph"), &o);
  CHECK(d && data_views(d) == 10);
  g_item = stride;
  Epoch ten = epoch_of(d, 0, 0, 2);
  CHECK(ten.n == 3 && ten.batches == 2);
  for (int i = 0; i < ten.n && i < 3; i++) {
    const float *v = ten.x + (int64_t)i * 10 * stride;
    CHECK(!memcmp(v + 4 * stride, val.x + i * stride, (size_t)stride * sizeof *v));
    bool flipped = true;
    for (int k = 0; k < 5; k++)
      for (int c = 0; c < 3; c++)
        for (int y = 0; y < PH; y += 7)
          for (int x = 0; x < PW; x++)
            flipped = flipped && v[(5 + k) * stride + ((int64_t)c * PH + y) * PW + x] ==
                                     v[k * stride + ((int64_t)c * PH + y) * PW + PW - 1 - x];
    CHECK(flipped);
    CHECK(memcmp(v, v + stride, (size_t)stride * sizeof *v));  // the corners differ
    // view 0 is the top-left corner
    CHECK(rt_image_load(at("%s", val_files[i]), &prep, img, NULL, 0));
    CHECK_NEAR(v[(int64_t)1 * PH * PW + 3 * PW + 5],
               img[plane + 3 * 256 + 5] - mean[plane + 3 * 256 + 5], 0.01);
  }
  epoch_free(&ten);
  epoch_free(&val);
  data_close(d);
  free(img);
  free(mean);

  // Errors: a network of the wrong shape, a missing or odd validation split, an empty class.
  DataOptions gray = photo_opts(true, false, 2);
  gray.channels = 1;
  CHECK(fails_with(at("%s", "ph"), gray, "the network's input is 1x200x224"));
  DataOptions big = photo_opts(true, false, 2);
  big.width = 300;
  CHECK(fails_with(at("%s", "ph"), big, "3x256x256"));
  mkdir(at("%s", "ph/val/yak"), 0755);
  CHECK(fails_with(at("%s", "ph"), photo_opts(false, false, 2), "val/yak: not a class"));
  rmdir(at("%s", "ph/val/yak"));
  mkdir(at("%s", "ph/train/yak"), 0755);
  CHECK(fails_with(at("%s", "ph"), photo_opts(true, false, 2), "train/yak: no photos"));
  rmdir(at("%s", "ph/train/yak"));
  const char *nv[] = {"nv",  "nv/train",  "nv/train/a", "nv/train/b",
                      "bad", "bad/train", "bad/train/a"};
  for (size_t i = 0; i < sizeof nv / sizeof *nv; i++)
    mkdir(at("%s", nv[i]), 0755);
  write_photo(at("%s", "nv/train/a/1.png"), 30, 30, 1);
  write_photo(at("%s", "nv/train/b/1.png"), 30, 30, 2);
  d = data_open(at("%s", "nv"), &o);  // o: the test split
  CHECK(!d);
  o = photo_opts(true, false, 2);
  d = data_open(at("%s", "nv"), &o);
  CHECK(d && data_size(d) == 2 && data_classes(d) == 2);
  data_close(d);
  // A photo over 64 MiB (sparse) is skipped unread.
  {
    FILE *f = fopen(at("%s", "nv/train/b/huge.jpg"), "wb");
    fwrite("\xff\xd8\xff", 1, 3, f);
    CHECK(ftruncate(fileno(f), (off_t)65 << 20) == 0);
    fclose(f);
  }
  d = data_open(at("%s", "nv"), &o);
  CHECK(d && data_size(d) == 3 && data_skipped(d) == 1);
  if (d) {
    Epoch e = epoch_of(d, 0, 0, 1000000);  // a batch larger than the split
    CHECK(e.n == 2 && e.batches == 1);
    epoch_free(&e);
  }
  data_close(d);
  write_file(at("%s", "bad/train/a/1.jpg"), "nope", 4, false);
  CHECK(fails_with(at("%s", "bad"), photo_opts(true, false, 2), "none of the 1 training photos"));
}

// The PCA colour augmentation on flat photos, where crops and flips change nothing: the
// augmented example less the plain one is the colour shift, the same at every pixel; it
// follows the colours' one direction of variance (gray: r = g = b; red: r alone).
static void test_pca(void) {
  const char *dirs[] = {"gray", "gray/train", "gray/train/a", "gray/train/b",
                        "red",  "red/train",  "red/train/a",  "red/train/b"};
  for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++)
    mkdir(at("%s", dirs[i]), 0755);
  for (int k = 0; k < 6; k++) {
    char name[64];
    uint8_t v = (uint8_t)(20 + k * 40);
    snprintf(name, sizeof name, "gray/train/%c/%d.png", "ab"[k % 2], k);
    write_flat(at("%s", name), v, v, v);
    snprintf(name, sizeof name, "red/train/%c/%d.png", "ab"[k % 2], k);
    write_flat(at("%s", name), v, 90, 30);
  }
  enum { S = 32 };
  g_item = 3 * S * S;
  const int64_t stride = g_item, plane = S * S;
  for (int red = 0; red < 2; red++) {
    DataOptions o = {3, S, S, true, true, false, 5, 0, 2, 0, 0};
    Dataset *aug = data_open(at("%s", red ? "red" : "gray"), &o);
    o.augment = false;
    Dataset *plain = data_open(at("%s", red ? "red" : "gray"), &o);
    CHECK(aug && plain);
    if (!aug || !plain) {
      data_close(aug);
      data_close(plain);
      continue;
    }
    float shift[2][6][3];
    for (int ep = 0; ep < 2; ep++) {
      Epoch a = epoch_of(aug, ep, 0, 4), p = epoch_of(plain, ep, 0, 4);
      CHECK(a.n == 6 && p.n == 6 && !memcmp(a.labels, p.labels, sizeof(int32_t) * 6));
      for (int i = 0; i < 6 && i < a.n; i++) {
        for (int c = 0; c < 3; c++) {
          const float *x = a.x + i * stride + c * plane, *y = p.x + i * stride + c * plane;
          shift[ep][i][c] = x[0] - y[0];
          double worst = 0;
          for (int64_t q = 0; q < plane; q++)
            worst = fmax(worst, fabs((x[q] - y[q]) - shift[ep][i][c]));
          CHECK(worst < 1e-3);
        }
        float *s = shift[ep][i];
        double size = fabs(s[0]) + fabs(s[1]) + fabs(s[2]);
        // Gray: the variance of v/255 is ~0.054 (eigenvalue 3x that), alpha ~ N(0, 0.1):
        // shifts of a few levels of 255.
        CHECK(size > 1e-3 && size < 150);
        if (red)
          CHECK(fabs(s[1]) < 1e-3 * size && fabs(s[2]) < 1e-3 * size);
        else
          CHECK(fabs(s[0] - s[1]) < 1e-3 * size && fabs(s[0] - s[2]) < 1e-3 * size);
      }
      epoch_free(&a);
      epoch_free(&p);
    }
    // Every example and epoch draws its own shift; running again draws the same.
    CHECK(shift[0][0][0] != shift[0][1][0] && shift[0][0][0] != shift[1][0][0]);
    Epoch a = epoch_of(aug, 1, 0, 4), p = epoch_of(plain, 1, 0, 4);
    for (int i = 0; i < 6 && i < a.n; i++)
      CHECK(a.x[i * stride] - p.x[i * stride] == shift[1][i][0]);
    epoch_free(&a);
    epoch_free(&p);
    data_close(aug);
    data_close(plain);
  }
}

// Debian's Fashion-MNIST (package fashion-mnist), when installed.
static void test_fashion_mnist(void) {
  const char *dir = "/usr/share/datasets/fashion-mnist";
  if (access(dir, R_OK) != 0) {
    printf("skipped: %s is not installed\n", dir);
    return;
  }
  DataOptions o = {1, 28, 28, true, false, false, 1, 0, 2, 0, 0};
  Dataset *d = data_open(dir, &o);
  CHECK(d && data_size(d) == 60000 && data_classes(d) == 10);
  if (d) {
    // Normalised over the training pixels: mean 0, std 1, every class 6000 times.
    enum { B = 1000 };
    float *x = calloc((size_t)B * 784, sizeof *x);
    int32_t lab[B];
    int64_t count[10] = {0}, n = 0;
    double s1 = 0, s2 = 0;
    int got;
    data_start(d, 0, 0);
    while ((got = data_next(d, B, x, lab)) > 0) {
      for (int i = 0; i < got; i++)
        if (lab[i] >= 0 && lab[i] < 10)
          count[lab[i]]++;
      for (int64_t i = 0; i < (int64_t)got * 784; i++)
        s1 += x[i], s2 += (double)x[i] * x[i];
      n += got;
    }
    CHECK(n == 60000);
    for (int c = 0; c < 10; c++)
      CHECK(count[c] == 6000);
    double m = s1 / (n * 784.0), v = s2 / (n * 784.0) - m * m;
    CHECK_NEAR(m, 0, 1e-4);
    CHECK_NEAR(v, 1, 1e-4);
    free(x);
    data_close(d);
  }
  o.train = false;
  d = data_open(dir, &o);
  CHECK(d && data_size(d) == 10000 && data_classes(d) == 10);
  data_close(d);
  o.height = 32;
  CHECK(fails_with(dir, o, "the images are 1x28x28 (CxHxW), the network's input is 1x32x28"));
}

static void remove_tree(const char *p) {
  struct stat st;
  if (lstat(p, &st) != 0)
    return;
  if (S_ISDIR(st.st_mode)) {
    DIR *dp = opendir(p);
    struct dirent *e;
    while (dp && (e = readdir(dp))) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
        continue;
      char sub[1024];
      snprintf(sub, sizeof sub, "%s/%s", p, e->d_name);
      remove_tree(sub);
    }
    if (dp)
      closedir(dp);
    rmdir(p);
  } else
    unlink(p);
}

int main(void) {
  if (!mkdtemp(root)) {
    perror("mkdtemp");
    return 1;
  }
  test_idx();
  test_shards();
  test_photos();
  test_pca();
  test_fashion_mnist();
  remove_tree(root);
  TEST_MAIN_END();
}
