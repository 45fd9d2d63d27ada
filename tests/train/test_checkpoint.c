// Checkpoints (train/checkpoint.c) and reports (train/report.c): bit-exact round trips,
// refusal of corrupt, truncated and foreign files, atomic replacement under kill -9,
// and a metrics CSV drawn into a PNG that cairo reads back.
#define _GNU_SOURCE  // memmem
#include <cairo.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "alexc.h"
#include "../unit/test.h"

static char dir[64];

static const char *path(const char *name) {
  static char buf[4][256];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

static const char SPEC_A[] = "name: tiny\ninput: {channels: 3, height: 8, width: 8}\n"
                             "layers:\n"
                             "  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}\n"
                             "  - {name: relu1, op: relu}\n"
                             "  - {name: pool1, op: maxpool, kernel: 2, stride: 2}\n"
                             "  - {name: flat, op: flatten}\n"
                             "  - {name: fc1, op: fc, out: 10}\n";
// The same layers, conv1 wider: every tensor is there, two with other shapes.
static const char SPEC_WIDE[] = "name: wide\ninput: {channels: 3, height: 8, width: 8}\n"
                                "layers:\n"
                                "  - {name: conv1, op: conv, out: 6, kernel: 3, pad: 1}\n"
                                "  - {name: relu1, op: relu}\n"
                                "  - {name: pool1, op: maxpool, kernel: 2, stride: 2}\n"
                                "  - {name: flat, op: flatten}\n"
                                "  - {name: fc1, op: fc, out: 10}\n";
// One layer more (fc2 missing from A's checkpoint) ...
static const char SPEC_MORE[] = "name: more\ninput: {channels: 3, height: 8, width: 8}\n"
                                "layers:\n"
                                "  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}\n"
                                "  - {name: relu1, op: relu}\n"
                                "  - {name: pool1, op: maxpool, kernel: 2, stride: 2}\n"
                                "  - {name: flat, op: flatten}\n"
                                "  - {name: fc1, op: fc, out: 10}\n"
                                "  - {name: fc2, op: fc, out: 10}\n";
// ... and one fewer (A's checkpoint holds fc1, which it lacks).
static const char SPEC_LESS[] = "name: less\ninput: {channels: 3, height: 8, width: 8}\n"
                                "layers:\n"
                                "  - {name: conv1, op: conv, out: 4, kernel: 3, pad: 1}\n";

static Graph *spec(const char *text) {
  Graph *g = parse_spec_string("<test>", text, strlen(text));
  CHECK(g && graph_verify(g));
  return g;
}

// A training state with weights from `seed`, momenta from seed + 100, every field set.
static TrainState make_state(const Graph *g, uint64_t seed, int variant) {
  TrainState s = {0};
  s.w = weights_init(g, seed, INIT_FAN_IN);
  s.v = weights_init(g, seed + 100, INIT_FAN_IN);
  s.step = variant ? 123456789012345ll : 7;
  s.epoch = variant ? 41 : 0;
  s.epoch_step = variant ? 5003 : 7;
  s.seed = variant ? 0xfedcba9876543210ull : UINT64_MAX;
  s.lr = variant ? 0.01 / 3 : 0.01 / 7;  // no short decimal form: only %a is exact
  s.best_metric = variant ? 0.123456789012345678 : INFINITY;
  s.bad_epochs = variant ? 3 : 0;
  s.loss_sum = variant ? 1234.5678901234567 : 0.1 + 0.2;
  s.hits = variant ? 987654 : 0;
  s.seen = variant ? 1281167 : 5;
  return s;
}

static void free_state(TrainState *s) {
  weights_free(s->w);
  weights_free(s->v);
  s->w = s->v = NULL;
}

static bool same_weights(const Weights *a, const Weights *b) {
  if (a->n != b->n)
    return false;
  for (int i = 0; i < a->n; i++)
    if (strcmp(a->info[i].name, b->info[i].name) || a->info[i].elems != b->info[i].elems ||
        memcmp(a->data[i], b->data[i], (size_t)a->info[i].elems * sizeof(float)))
      return false;
  return true;
}

static bool same_state(const TrainState *a, const TrainState *b) {
  return same_weights(a->w, b->w) && same_weights(a->v, b->v) && a->step == b->step &&
         a->epoch == b->epoch && a->epoch_step == b->epoch_step && a->seed == b->seed &&
         !memcmp(&a->lr, &b->lr, sizeof a->lr) &&
         !memcmp(&a->best_metric, &b->best_metric, sizeof a->best_metric) &&
         a->bad_epochs == b->bad_epochs &&
         !memcmp(&a->loss_sum, &b->loss_sum, sizeof a->loss_sum) && a->hits == b->hits &&
         a->seen == b->seen;
}

static bool write_bytes(const char *p, const void *data, size_t n) {
  FILE *f = fopen(p, "wb");
  if (!f)
    return false;
  bool ok = fwrite(data, 1, n, f) == n;
  return fclose(f) == 0 && ok;
}

// stderr goes to a file while `quiet` is on; captured() returns what was written.
static int saved_stderr = -1;
static void quiet(bool on) {
  fflush(stderr);
  if (on) {
    saved_stderr = dup(2);
    int fd = open(path("stderr.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
  } else {
    dup2(saved_stderr, 2);
    close(saved_stderr);
  }
}

static char *captured(void) {
  uint8_t *data;
  size_t n;
  if (!rt_read_file(path("stderr.txt"), 1 << 20, &data, &n))
    return calloc(1, 1);
  return (char *)data;
}

// Loads `file` for g expecting a refusal whose message contains every `want` (NULL-ended).
static void expect_refused(const char *file, const Graph *g, const char *want, const char *want2) {
  TrainState s = {0};
  quiet(true);
  bool ok = checkpoint_load(file, g, &s);
  quiet(false);
  char *msg = captured();
  CHECK(!ok);
  CHECK(!s.w && !s.v);
  bool has = strstr(msg, file) && (!want || strstr(msg, want)) && (!want2 || strstr(msg, want2));
  if (!has || getenv("ALEXC_TEST_VERBOSE"))
    fprintf(stderr, "%s message for %s: %s", has ? "the" : "unexpected", file, msg);
  CHECK(has);
  // One message, one line.
  char *nl = strchr(msg, '\n');
  CHECK(nl && !nl[1]);
  free(msg);
  if (ok)
    free_state(&s);
}

static int count_temporaries(void) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));)
    n += strstr(e->d_name, ".tmp.") != NULL;
  if (d)
    closedir(d);
  return n;
}

static void test_round_trip(void) {
  Graph *g = spec(SPEC_A);
  for (int variant = 0; variant < 2; variant++) {
    TrainState a = make_state(g, 1 + variant, variant), b = {0};
    CHECK(checkpoint_save(path("a.ckpt"), &a));
    CHECK(count_temporaries() == 0);
    CHECK(checkpoint_load(path("a.ckpt"), g, &b));
    CHECK(b.w && b.v && same_state(&a, &b));
    // Saving what was loaded gives the same bytes.
    uint8_t *x, *y;
    size_t nx, ny;
    CHECK(checkpoint_save(path("b.ckpt"), &b));
    CHECK(rt_read_file(path("a.ckpt"), 1 << 20, &x, &nx) &&
          rt_read_file(path("b.ckpt"), 1 << 20, &y, &ny));
    CHECK(nx == ny && !memcmp(x, y, nx));
    free(x);
    free(y);
    free_state(&a);
    free_state(&b);
  }

  // The checkpoint is a weights file too: weights_load takes it, without warnings about
  // the momenta, and `format` and the state are plain metadata.
  TrainState a = make_state(g, 5, 1);
  CHECK(checkpoint_save(path("w.ckpt"), &a));
  quiet(true);
  Weights *w = weights_load(g, path("w.ckpt"));
  quiet(false);
  char *msg = captured();
  CHECK(w && same_weights(w, a.w));
  CHECK(!*msg);
  free(msg);
  weights_free(w);
  RtSafetensors st;
  CHECK(rt_st_open(path("w.ckpt"), &st));
  CHECK(st.n == 2 * a.w->n && rt_st_find(&st, "momentum/conv1.weight"));
  const char *fmt = rt_st_meta(&st, "format"), *lr = rt_st_meta(&st, "lr");
  CHECK(fmt && !strcmp(fmt, "alexc-checkpoint-1"));
  CHECK(lr && !strcmp(lr, "0x1.b4e81b4e81b4fp-9"));  // 0.01 / 3, exactly
  CHECK(rt_st_meta(&st, "seed") && !strcmp(rt_st_meta(&st, "seed"), "18364758544493064720"));
  CHECK(!rt_st_meta(&st, "nope"));
  rt_st_close(&st);

  // A plain weights file is not a checkpoint.
  CHECK(weights_save(a.w, path("plain.safetensors")));
  expect_refused(path("plain.safetensors"), g, "not an alexc checkpoint", NULL);
  // Nor is a missing file.
  expect_refused(path("missing.ckpt"), g, "cannot read", NULL);
  free_state(&a);
  graph_free(g);
}

static void test_corruption(void) {
  Graph *g = spec(SPEC_A);
  TrainState a = make_state(g, 3, 1);
  CHECK(checkpoint_save(path("c.ckpt"), &a));
  uint8_t *buf;
  size_t n;
  CHECK(rt_read_file(path("c.ckpt"), 1 << 20, &buf, &n));

  // Every single changed byte, header or data, is refused. (The byte is changed in
  // place: rewriting the file each time is slow on file systems that discard freed blocks.)
  int refused = 0, positions = 0;
  CHECK(write_bytes(path("flip.ckpt"), buf, n));
  int fd = open(path("flip.ckpt"), O_WRONLY);
  CHECK(fd >= 0);
  quiet(true);
  for (size_t i = 0; i < n; i++) {
    uint8_t old = buf[i], flipped = old ^ (uint8_t)(1u << (i % 8));
    CHECK(pwrite(fd, &flipped, 1, (off_t)i) == 1);
    TrainState s = {0};
    bool ok = checkpoint_load(path("flip.ckpt"), g, &s);
    refused += !ok;
    positions++;
    if (ok) {
      fprintf(stdout, "flipped byte %zu was accepted\n", i);
      free_state(&s);
    }
    CHECK(pwrite(fd, &old, 1, (off_t)i) == 1);
  }
  quiet(false);
  close(fd);
  CHECK(refused == positions);

  // A changed data byte: the message says corrupt and names the file.
  buf[n - 5] ^= 0x40;
  write_bytes(path("flip.ckpt"), buf, n);
  expect_refused(path("flip.ckpt"), g, "is corrupt", "hash mismatch");
  buf[n - 5] ^= 0x40;

  // Truncated anywhere.
  size_t cuts[] = {0, 4, 8, 20, n / 2, n - 4, n - 1};
  for (size_t k = 0; k < sizeof cuts / sizeof *cuts; k++) {
    write_bytes(path("trunc.ckpt"), buf, cuts[k]);
    expect_refused(path("trunc.ckpt"), g, "is corrupt", NULL);
  }
  free(buf);
  free_state(&a);
  graph_free(g);
}

static void test_other_spec(void) {
  Graph *g = spec(SPEC_A), *wide = spec(SPEC_WIDE), *more = spec(SPEC_MORE),
        *less = spec(SPEC_LESS);
  TrainState a = make_state(g, 4, 0);
  CHECK(checkpoint_save(path("a.ckpt"), &a));
  expect_refused(path("a.ckpt"), wide, "does not fit network 'wide'",
                 "'conv1.weight' has shape [4, 3, 3, 3], want [6, 3, 3, 3]");
  expect_refused(path("a.ckpt"), more, "does not fit", "'fc2.weight' is missing");
  expect_refused(path("a.ckpt"), less, "does not fit network 'less'", "tensor 'fc1.weight'");

  // Momenta that do not match the weights are not saved.
  TrainState bad = a;
  bad.v = weights_init(wide, 1, INIT_FAN_IN);
  quiet(true);
  CHECK(!checkpoint_save(path("bad.ckpt"), &bad));
  quiet(false);
  weights_free(bad.v);
  CHECK(access(path("bad.ckpt"), F_OK) != 0);
  free_state(&a);
  graph_free(g);
  graph_free(wide);
  graph_free(more);
  graph_free(less);
}

// Writes a checkpoint of s by hand, with metadata `keys` = `values` (the hash filled
// in as the format says: FNV-1a 64 of the file with its own 16 digits read as '0').
static void forge(const char *file, const TrainState *s, const char *const *keys,
                  const char *const *values, int n_meta) {
  int n = s->w->n;
  RtStTensor *t = calloc(2 * n, sizeof *t);
  char (*names)[200] = calloc(n, sizeof *names);
  for (int i = 0; i < n; i++) {
    const ParamInfo *p = &s->w->info[i];
    snprintf(names[i], sizeof names[i], "momentum/%s", p->name);
    t[i] = (RtStTensor){p->name, p->rank, p->dims, s->w->data[i]};
    t[n + i] = (RtStTensor){names[i], p->rank, p->dims, s->v->data[i]};
  }
  uint8_t *buf;
  size_t size;
  CHECK(rt_st_encode(file, t, 2 * n, keys, values, n_meta, &buf, &size));
  char *at = memmem(buf, size, "\"hash\":\"0000000000000000\"", 25);
  CHECK(at);
  char digits[17];
  snprintf(digits, sizeof digits, "%016llx", (unsigned long long)fnv1a(FNV_OFFSET, buf, size));
  memcpy(at + 8, digits, 16);
  CHECK(write_bytes(file, buf, size));
  free(buf);
  free(names);
  free(t);
}

static void test_metadata(void) {
  Graph *g = spec(SPEC_A);
  TrainState a = make_state(g, 6, 1), b = {0};
  const char *keys[] = {"format", "hash",        "step",       "epoch",    "epoch_step", "seed",
                        "lr",     "best_metric", "bad_epochs", "loss_sum", "hits",       "seen"};
  const char *good[] = {"alexc-checkpoint-1", "0000000000000000", "123456789012345", "41", "5003",
                        "18364758544493064720", "0x1.b4e81b4e81b4fp-9", "0x1.f9add3746f65fp-4",
                        "3", "0x1.34a4584fd0fdfp+10", "987654", "1281167"};
  // The format as documented: a hand-made file loads, and equals what checkpoint_save wrote.
  forge(path("forged.ckpt"), &a, keys, good, 12);
  CHECK(checkpoint_load(path("forged.ckpt"), g, &b) && same_state(&a, &b));
  free_state(&b);
  struct {
    int key;
    const char *value, *want;
  } bad[] = {{0, "alexc-checkpoint-9", "unsupported format"},
             {2, "-5", "\"step\" is '-5'"},
             {2, "12x", "not an integer"},
             {3, "99999999999", "\"epoch\""},
             {5, "-1", "\"seed\" is '-1'"},
             {5, "18446744073709551616", "64-bit"},
             {6, "inf", "\"lr\" is 'inf', not a finite number"},
             {6, "", "\"lr\""},
             {7, "0.5 ", "\"best_metric\""},
             {9, "1e", "\"loss_sum\""},
             {11, "0x10", "\"seen\""}};
  for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
    const char *values[12];
    memcpy(values, good, sizeof values);
    values[bad[k].key] = bad[k].value;
    forge(path("forged.ckpt"), &a, keys, values, 12);
    expect_refused(path("forged.ckpt"), g, bad[k].want, NULL);
  }
  // A key missing.
  forge(path("forged.ckpt"), &a, keys, good, 11);
  expect_refused(path("forged.ckpt"), g, "bad metadata", "no \"seen\"");
  free_state(&a);
  graph_free(g);
}

// A child saves two states in turn, forever; killed with SIGKILL at random moments, it
// must always leave one of them whole on disk.
static void test_kill(void) {
  Graph *g = spec(SPEC_A);
  TrainState s[2] = {make_state(g, 10, 0), make_state(g, 20, 1)};
  const char *file = path("k.ckpt");
  CHECK(checkpoint_save(file, &s[0]));
  srand((unsigned)time(NULL) ^ (unsigned)getpid());
  int seen[2] = {0, 0};
  for (int round = 0; round < 12; round++) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
      alarm(30);  // never outlive a parent that died
      for (unsigned i = (unsigned)round;; i++)
        if (!checkpoint_save(file, &s[i & 1]))
          _exit(3);
    }
    CHECK(pid > 0);
    if (pid <= 0)
      break;
    usleep(2000 + (useconds_t)(rand() % 40000));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    TrainState t = {0};
    bool ok = checkpoint_load(file, g, &t);
    CHECK(ok);
    if (ok) {
      int which = same_state(&t, &s[0]) ? 0 : same_state(&t, &s[1]) ? 1 : -1;
      CHECK(which >= 0);
      if (which >= 0)
        seen[which]++;
      free_state(&t);
    }
    // The child's temporary, if it was killed between creating and renaming it.
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", file, (long)pid);
    remove(tmp);
  }
  CHECK(count_temporaries() == 0);
  printf("kill -9 rounds: state A %d, state B %d\n", seen[0], seen[1]);
  free_state(&s[0]);
  free_state(&s[1]);
  graph_free(g);
}

static void test_metrics(void) {
  const char *csv = path("metrics.csv"), *png = path("curves.png");
  remove(csv);
  for (int e = 0; e < 12; e++) {
    EpochRow r = {.epoch = e,
                  .step = (e + 1) * 469,
                  .train_loss = 2.3 * exp(-0.25 * e) + 0.2,
                  .train_top1 = 0.95 - 0.85 * exp(-0.4 * e),
                  .test_loss = e == 3 ? NAN : 2.2 * exp(-0.22 * e) + 0.3,
                  .test_top1 = 0.91 - 0.8 * exp(-0.35 * e),
                  .test_top5 = 0.995 - 0.5 * exp(-0.6 * e),
                  .lr = e < 8 ? 0.01 : 0.001,
                  .seconds = 12.5 * (e + 1)};
    CHECK(metrics_append(csv, &r));
  }
  uint8_t *text;
  size_t n;
  CHECK(rt_read_file(csv, 1 << 20, &text, &n));
  static const char head[] =
      "epoch,step,train_loss,train_top1,test_loss,test_top1,test_top5,lr,seconds\n"
      "0,469,2.5,0.1,2.5,0.11,0.495,0.01,12.500\n"
      "1,938,1.9912418,0.380227961,2.06554136,0.346249528,0.720594182,0.01,25.000\n";
  CHECK(n > sizeof head && !strncmp((char *)text, head, sizeof head - 1));
  CHECK(strstr((char *)text, "\n3,1876,1.28644307,0.69398492,nan,0.630049801,"));
  int lines = 0;
  for (size_t i = 0; i < n; i++)
    lines += text[i] == '\n';
  CHECK(lines == 13);
  free(text);

  // A crash left a partial last line: the plot skips it, the next append starts afresh.
  int fd = open(csv, O_WRONLY | O_APPEND);
  CHECK(fd >= 0 && write(fd, "12,6100,0.3", 11) == 11);
  close(fd);
  CHECK(metrics_plot(csv, png));
  EpochRow r = {.epoch = 12, .step = 6097, .train_loss = 0.21, .train_top1 = 0.94,
                .test_loss = 0.31, .test_top1 = 0.905, .test_top5 = 0.99, .lr = 0.001,
                .seconds = 162.5};
  CHECK(metrics_append(csv, &r));
  CHECK(rt_read_file(csv, 1 << 20, &text, &n));
  CHECK(strstr((char *)text, "12,6100,0.3\n12,6097,0.21,"));
  free(text);
  quiet(true);
  CHECK(metrics_plot(csv, png));  // the malformed middle line is skipped with a warning
  quiet(false);
  char *msg = captured();
  CHECK(strstr(msg, "line 14 is malformed"));
  free(msg);
  CHECK(count_temporaries() == 0);

  uint8_t *data;
  CHECK(rt_read_file(png, 1 << 24, &data, &n));
  CHECK(n > 8 && !memcmp(data, "\x89PNG\r\n\x1a\n", 8));
  free(data);
  cairo_surface_t *img = cairo_image_surface_create_from_png(png);
  CHECK(cairo_surface_status(img) == CAIRO_STATUS_SUCCESS);
  CHECK(cairo_image_surface_get_width(img) == 1400 && cairo_image_surface_get_height(img) == 600);
  // Something was drawn: not every pixel is white.
  cairo_surface_flush(img);
  const uint8_t *px = cairo_image_surface_get_data(img);
  int stride = cairo_image_surface_get_stride(img), ink = 0;
  for (int y = 0; px && y < 600; y += 3)
    for (int x = 0; x < 1400; x += 3)
      ink += (*(const uint32_t *)(px + y * stride + 4 * x) & 0xffffff) != 0xffffff;
  CHECK(ink > 1000);
  cairo_surface_destroy(img);

  // One row, and a header alone, still plot.
  const char *one = path("one.csv");
  remove(one);
  CHECK(metrics_append(one, &r));
  CHECK(metrics_plot(one, path("one.png")));
  CHECK(write_bytes(path("empty.csv"),
                    "epoch,step,train_loss,train_top1,test_loss,test_top1,test_top5,lr,seconds\n",
                    74));
  CHECK(metrics_plot(path("empty.csv"), path("empty.png")));
  // Not a metrics file.
  CHECK(write_bytes(path("junk.csv"), "hello\n1,2\n", 10));
  quiet(true);
  CHECK(!metrics_plot(path("junk.csv"), path("junk.png")));
  quiet(false);
  CHECK(access(path("junk.png"), F_OK) != 0);
}

static void test_progress(void) {
  // Not a terminal: plain lines.
  FILE *f = fopen(path("progress.txt"), "w");
  CHECK(f);
  progress_show(f, 3, 90, 1200, 5004, 2.345678, 812.4, 754);
  progress_show(f, 3, 90, 1300, 5004, NAN, 0, INFINITY);
  progress_show(f, 3, 90, 5004, 5004, 1.5, 900, 3725);
  fclose(f);
  uint8_t *text;
  size_t n;
  CHECK(rt_read_file(path("progress.txt"), 1 << 16, &text, &n));
  CHECK(!strcmp((char *)text, "epoch 3/90 step 1200/5004 loss 2.3457 812 img/s eta 12:34\n"
                              "epoch 3/90 step 1300/5004 loss nan 0 img/s eta --:--\n"
                              "epoch 3/90 step 5004/5004 loss 1.5000 900 img/s eta 1:02:05\n"));
  free(text);
}

// Removes the test directory's files (one level) and the directory.
static void cleanup(void) {
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d));)
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
      remove(path(e->d_name));
  if (d)
    closedir(d);
  rmdir(dir);
}

int main(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, sizeof dir, "%s/alexc-ckpt-XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_round_trip();
  test_corruption();
  test_other_spec();
  test_metadata();
  test_kill();
  test_metrics();
  test_progress();
  if (!test_failures && !getenv("ALEXC_TEST_KEEP"))  // set it to look at the PNG
    cleanup();
  else
    fprintf(stderr, "files kept in %s\n", dir);
  TEST_MAIN_END();
}
