// `alexc train` (SGD over a data set, with checkpoints, metrics and curves) and
// `alexc eval` (loss, top-1 and top-5 of saved weights on a test split).
//
// The loop is deterministic for a seed: batch k of epoch e depends only on (seed, e, k)
// (train/data.c), dropout on (seed, step) (train/philox.c), the learning rate on the step
// and the state the checkpoint keeps, and the kernels give the same bits for any thread
// count. So a run killed at any moment and resumed from its last checkpoint ends with
// the same weights, byte for byte, as one never interrupted.
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../backends/cuda/train.h"
#include "cli.h"

static const char TRAIN_HELP[] =
    "usage: alexc train SPEC --data PATH --out DIR [options]\n"
    "\n"
    "Trains SPEC's network with the paper's SGD (momentum 0.9, weight decay 0.0005, on\n"
    "the mean softmax cross-entropy), evaluating on the test split after every epoch.\n"
    "DIR receives checkpoint.safetensors (weights, momenta and the training state, written\n"
    "atomically), weights.safetensors (the final weights), metrics.csv (a row per epoch)\n"
    "and curves.png (loss and accuracy per epoch). Settings default to the spec's\n"
    "`train:` section, then to the values below; flags override both.\n"
    "\n"
    "  --data PATH         a directory of IDX files (MNIST, Fashion-MNIST: e.g.\n"
    "                      /usr/share/datasets/fashion-mnist) or a folder with train/ and\n"
    "                      val/ subfolders of class folders of JPEG/PNG photos\n"
    "  --out DIR           where the run's files go (created); an existing run there is\n"
    "                      continued only with --resume, never overwritten\n"
    "  --target T          ref (the reference executor: slow, the oracle), cpu (the\n"
    "                      default: the CPU target's kernels) or cuda (the generated step\n"
    "                      on the GPU(s), state resident there; evaluations on the CPU)\n"
    "  --epochs N          epochs to train (default 10)\n"
    "  --batch B           images per step (default 128)\n"
    "  --lr X              base learning rate (default 0.01, the paper's)\n"
    "  --schedule S        constant; step:E1,E2,... (divide by 10 at those epochs, as the\n"
    "                      paper did by hand); plateau[:P] (divide by 10 when the test\n"
    "                      error has not improved for P epochs, default 1); cosine (to 0\n"
    "                      over the run, per step; the default)\n"
    "  --warmup E          epochs of linear warm-up before the schedule (default 0)\n"
    "  --init S            spec (each layer's rule from the spec, the default) or fan-in\n"
    "                      (N(0, sqrt(2/fan_in)) weights, zero biases)\n"
    "  --weights W         start from these weights instead of initialising\n"
    "  --seed S            seeds initialisation, data order, augmentation, dropout\n"
    "                      (default 1)\n"
    "  --no-augment        no random crops or flips\n"
    "  --limit N           train on the first N examples only; --test-limit N likewise\n"
    "  --checkpoint-every N  also checkpoint every N steps (default 1000; 0: epoch ends\n"
    "                      only)\n"
    "  --resume            continue the run in DIR from its checkpoint\n"
    "  --threads N         threads for the kernels (default: all CPUs this process has)\n"
    "  --devices N         train model-parallel on N logical devices, as the paper split\n"
    "                      AlexNet over two GPUs: the partition plan's channel split,\n"
    "                      its transfers forward and their sums backward (default 1)\n"
    "  --device-ranks      under mpirun: each rank is one device of the --devices split\n"
    "                      (mpirun -np N ... --devices N --device-ranks), its transfers\n"
    "                      MPI messages; every rank reads the whole batch (no data\n"
    "                      parallelism) and gets the weights one process would with\n"
    "                      --devices N. On the CPU: not with --target cuda\n"
    "  --quiet             no progress, only the per-epoch lines\n"
    "  --bucket-kib N      with several ranks: gradients are summed over the ranks in\n"
    "                      buckets of about N KiB, each started as the backward pass\n"
    "                      finishes it (default 1024)\n"
    "\n"
    "Data parallelism: `mpirun -np N alexc train ...` (a build with MPI) trains on N\n"
    "ranks, each on its share of every batch: --batch is per rank, so a step takes N * B\n"
    "images and gives the weights one process would at batch N * B (to float rounding).\n"
    "Rank 0 alone writes DIR's files; --resume needs the same N. --threads defaults to\n"
    "the CPUs divided among the ranks on each machine. With --target cuda each rank\n"
    "trains on one GPU (--devices 1; ranks on a machine take GPUs 0, 1, ... by local\n"
    "rank) and the gradients are summed over the ranks with NCCL (libnccl.so.2) after\n"
    "the whole backward pass, before the update: no overlap with the backward.\n"
    "\n"
    "Ctrl-C (or SIGTERM) finishes the step, writes a checkpoint and stops; --resume\n"
    "continues from it.\n";

static const char EVAL_HELP[] =
    "usage: alexc eval SPEC --weights W --data PATH [--ten-crop] [--target T] [--batch B]\n"
    "                  [--limit N] [--threads N] [--devices N]\n"
    "\n"
    "Prints the mean cross-entropy loss, top-1 and top-5 accuracy of weights W on the\n"
    "test split of PATH (see alexc train --help). --ten-crop averages the softmax of the\n"
    "paper's ten crops (four corners and centre, and their mirror images; photo folders).\n";

typedef enum { SCHED_CONSTANT, SCHED_STEP, SCHED_PLATEAU, SCHED_COSINE } ScheduleKind;

typedef struct {
  ScheduleKind kind;
  int at[16], n_at;  // step: the epochs at which to divide by 10
  int patience;      // plateau
  double warmup;     // epochs
} Schedule;

// The settings of a run. Flags set them; what no flag set comes from the spec's `train:`
// section, then from the defaults (resolve_settings): 0 and NULL mean "not set yet".
typedef struct {
  const char *spec, *data, *out, *weights, *target;
  int epochs, batch, threads, checkpoint_every, devices;
  int rank, ranks;  // this process in an mpirun job (dist_*): 0 of 1 without one
  bool device_ranks;  // each rank one device of the --devices split, not a replica
  int bucket_kib;   // gradient buckets summed over the ranks
  double lr, warmup;  // warmup < 0: not set
  const char *schedule_text, *init_text;
  Schedule schedule;
  InitScheme init;
  uint64_t seed;
  int64_t limit, test_limit;
  int augment;  // -1: not set
  bool resume, quiet;
} TrainArgs;

static bool parse_schedule(const char *s, Schedule *out) {
  Schedule sc = {.kind = SCHED_COSINE, .patience = 1};
  if (!strcmp(s, "constant")) {
    sc.kind = SCHED_CONSTANT;
  } else if (!strcmp(s, "cosine")) {
    sc.kind = SCHED_COSINE;
  } else if (!strncmp(s, "plateau", 7) && (s[7] == 0 || s[7] == ':')) {
    sc.kind = SCHED_PLATEAU;
    if (s[7] && !parse_int_in(s + 8, 1, 1000, &sc.patience))
      return false;
  } else if (!strncmp(s, "step:", 5)) {
    sc.kind = SCHED_STEP;
    for (const char *p = s + 5; *p;) {
      char *end;
      long e = strtol(p, &end, 10);
      if (end == p || e < 1 || e > 1000000 || sc.n_at == 16 || (*end && *end != ','))
        return false;
      sc.at[sc.n_at++] = (int)e;
      p = *end ? end + 1 : end;
    }
    if (!sc.n_at)
      return false;
  } else {
    return false;
  }
  sc.warmup = out->warmup;
  *out = sc;
  return true;
}

// Fills what no flag set from the spec's train section, then from the defaults. False
// after a message for a bad schedule or init in the spec.
static bool resolve_settings(TrainArgs *a, const Graph *g) {
  const TrainSpec *t = &g->train;
  if (!a->epochs)
    a->epochs = t->epochs ? t->epochs : 10;
  if (!a->batch)
    a->batch = t->batch ? t->batch : 128;
  if (!a->lr)
    a->lr = t->lr ? t->lr : 0.01;
  if (a->warmup < 0)
    a->warmup = t->warmup;
  if (a->augment < 0)
    a->augment = t->augment >= 0 ? t->augment : 1;
  a->schedule.warmup = a->warmup;
  if (!a->schedule_text && t->schedule && !parse_schedule(t->schedule, &a->schedule)) {
    error_at(t->schedule_loc, "schedule must be constant, cosine, step:E1,E2,... or "
                              "plateau[:PATIENCE], not '%s'", t->schedule);
    return false;
  }
  a->schedule_text = a->schedule_text ? a->schedule_text : t->schedule ? t->schedule : "cosine";
  if (!a->init_text && t->init && !parse_init_scheme(t->init, &a->init)) {
    error_at(t->init_loc, "init must be 'spec' or 'fan-in', not '%s'", t->init);
    return false;
  }
  return true;
}

// The learning rate of step `step` (0-based, epoch `epoch`): base (the state's lr, which
// the plateau rule divides) times the warm-up ramp and the schedule's factor. A pure
// function of its arguments, so a resumed run uses the same rates.
static double lr_at(const TrainArgs *a, double base, int64_t step, int epoch,
                    int64_t steps_per_epoch) {
  const Schedule *sc = &a->schedule;
  double warm = sc->warmup * steps_per_epoch;
  if (step < warm)
    return base * (double)(step + 1) / warm;
  switch (sc->kind) {
  case SCHED_STEP:
    for (int i = 0; i < sc->n_at; i++)
      if (epoch >= sc->at[i])
        base /= 10;
    return base;
  case SCHED_COSINE: {
    double total = (double)a->epochs * steps_per_epoch - warm;
    return base * 0.5 * (1 + cos(M_PI * (step - warm) / (total > 1 ? total : 1)));
  }
  case SCHED_CONSTANT:
  case SCHED_PLATEAU:
    break;
  }
  return base;
}

// ---------------------------------------------------------------- evaluation

typedef struct {
  double loss, top1, top5;
  int64_t n;
} EvalResult;

// Adds one example's loss and hits, from the softmax of its views averaged (the paper's
// ten crops) in double.
static void score_views(const float *logits, int views, int classes, int label, double *prob,
                        EvalResult *r) {
  memset(prob, 0, classes * sizeof *prob);
  for (int v = 0; v < views; v++) {
    const float *z = logits + (int64_t)v * classes;
    double m = z[0], sum = 0;
    for (int c = 1; c < classes; c++)
      m = z[c] > m ? z[c] : m;
    for (int c = 0; c < classes; c++)
      sum += exp(z[c] - m);
    for (int c = 0; c < classes; c++)
      prob[c] += exp(z[c] - m) / sum / views;
  }
  int above = 0;  // other classes at least as probable: ties count against the label,
  for (int c = 0; c < classes; c++)  // as in softmax_xent
    above += c != label && !(prob[label] > prob[c]);
  r->loss += -log(prob[label] > 1e-300 ? prob[label] : 1e-300);
  r->top1 += above < 1;
  r->top5 += above < 5;
}

// The ranks that split the data: with --device-ranks every rank reads the whole batch.
static int data_ranks(const TrainArgs *a) { return a->device_ranks ? 1 : a->ranks; }

// This rank's part of the next batch (batch images per rank); -1 at the epoch's end. One
// process passes over a batch of only unreadable photos; ranks keep it (maybe empty for
// some), since every rank must take part in every step's sums.
static int next_part(int ranks, Dataset *d, int batch, float *x, int32_t *labels) {
  if (ranks > 1)
    return data_next_part(d, batch * ranks, x, labels);
  int n = data_next(d, batch, x, labels);
  return n > 0 ? n : -1;
}

// Mean loss and accuracies over the test split (dropout off); with several ranks, each
// scores its share and the sums are added up.
static EvalResult evaluate(Trainer *t, const Graph *g, const Weights *w, Dataset *d, int batch,
                           int ranks) {
  int views = data_views(d), classes = trainer_classes(t);
  int64_t in = shape_elems(g->nodes[0].out);
  float *x = xcalloc((size_t)batch * views * in, sizeof(float));
  float *logits = xcalloc((size_t)batch * views * classes, sizeof(float));
  int32_t *labels = xcalloc(batch, sizeof *labels);
  double *prob = xcalloc(classes, sizeof *prob);
  EvalResult r = {0};
  data_start(d, 0, 0);
  int n;
  while ((n = next_part(ranks, d, batch, x, labels)) >= 0) {
    if (n)
      trainer_logits(t, w, x, n * views, logits);
    for (int i = 0; i < n; i++)
      score_views(logits + (int64_t)i * views * classes, views, classes, labels[i], prob, &r);
    r.n += n;
  }
  double sums[4] = {r.loss, r.top1, r.top5, (double)r.n};
  if (ranks > 1)  // each rank scored its share (with --device-ranks, all of it)
    dist_allreduce_f64(sums, 4);
  r = (EvalResult){sums[0], sums[1], sums[2], (int64_t)sums[3]};
  if (r.n) {
    r.loss /= r.n;
    r.top1 /= r.n;
    r.top5 /= r.n;
  }
  free(x);
  free(logits);
  free(labels);
  free(prob);
  return r;
}

// ---------------------------------------------------------------- the run's files

typedef struct {
  char *checkpoint, *weights, *csv, *png, *config;
} RunFiles;

static RunFiles run_files(const char *dir) {
  return (RunFiles){format("%s/checkpoint.safetensors", dir), format("%s/weights.safetensors", dir),
                    format("%s/metrics.csv", dir), format("%s/curves.png", dir),
                    format("%s/run.txt", dir)};
}

static void run_files_free(RunFiles *f) {
  free(f->checkpoint);
  free(f->weights);
  free(f->csv);
  free(f->png);
  free(f->config);
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

// The settings that decide a run's bits, one "key value" per line: a resumed run must
// use the same, or it would not continue the same run.
// The device count rounds differently (partial input gradients are summed across devices),
// so it is part of the config; its line appears only above 1, so that runs made before
// --devices existed still resume.
static char *config_text(const TrainArgs *a) {
  const char *sched[] = {"constant", "step", "plateau", "cosine"};
  char at[200] = "", devices[32] = "", ranks[64] = "";
  for (int i = 0; i < a->schedule.n_at; i++)
    snprintf(at + strlen(at), sizeof at - strlen(at), "%s%d", i ? "," : "", a->schedule.at[i]);
  if (a->devices > 1)
    snprintf(devices, sizeof devices, "devices %d\n", a->devices);
  // The rank count splits every batch and the bucket size may decide how MPI sums: both
  // decide the bits. Lines only above one rank, as for devices.
  // --device-ranks: each rank one device, no gradient sums, so no buckets.
  if (a->ranks > 1 && a->device_ranks)
    snprintf(ranks, sizeof ranks, "ranks %d\ndevice-ranks 1\n", a->ranks);
  else if (a->ranks > 1)
    snprintf(ranks, sizeof ranks, "ranks %d\nbucket-kib %d\n", a->ranks, a->bucket_kib);
  return format("spec %s\ndata %s\ntarget %s\nepochs %d\nbatch %d\nlr %a\nschedule %s %s %d\n"
                "warmup %a\nseed %llu\ninit %s\nweights %s\nlimit %lld\naugment %d\n%s%s",
                a->spec, a->data, a->target, a->epochs, a->batch, a->lr,
                sched[a->schedule.kind], at, a->schedule.patience, a->schedule.warmup,
                (unsigned long long)a->seed, a->init == INIT_FAN_IN ? "fan-in" : "spec",
                a->weights ? a->weights : "-", (long long)a->limit, a->augment, devices, ranks);
}

// The first line where two configs differ, for the message.
static void first_difference(const char *want, const char *got, char *out, size_t size) {
  while (*want || *got) {  // a line only one side has (devices) differs from nothing
    size_t lw = strcspn(want, "\n"), lg = strcspn(got, "\n");
    if (lw != lg || strncmp(want, got, lw)) {
      snprintf(out, size, "'%.*s' (this command) against '%.*s' (the run)", (int)lw, want,
               (int)lg, got);
      return;
    }
    want += lw + (want[lw] == '\n');
    got += lg + (got[lg] == '\n');
  }
  snprintf(out, size, "the settings");
}

static bool check_config(const TrainArgs *a, const RunFiles *f, const char *text) {
  uint8_t *saved = NULL;
  size_t size = 0;
  if (!rt_read_file(f->config, 1 << 16, &saved, &size)) {
    error("%s", rt_error());
    return false;
  }
  char *got = xcalloc(size + 1, 1);
  memcpy(got, saved, size);
  free(saved);
  bool same = !strcmp(got, text);
  const char *line = strstr(got, "\nranks ");
  int run_ranks = line ? atoi(line + 7) : 1;
  if (!same && run_ranks != a->ranks) {
    error("--resume: the run in %s was trained by %d rank%s and this job has %d: resume it "
          "with the same number (mpirun -np %d), since %s", a->out, run_ranks,
          run_ranks == 1 ? "" : "s", a->ranks, run_ranks,
          strstr(got, "\ndevice-ranks ") ? "each rank was one of its devices"
                                         : "the ranks split every batch");
  } else if (!same) {
    char diff[600];
    first_difference(text, got, diff, sizeof diff);
    error("--resume: the run in %s was started with other settings: %s; resume it with the "
          "same flags (see %s)", f->config, diff, f->config);
  }
  free(got);
  return same;
}

// Keeps the header and the rows of epochs before `epoch`: rows a killed run wrote after
// its last checkpoint are written again when the resumed run gets there.
static bool metrics_keep_before(const char *csv, int epoch) {
  uint8_t *data = NULL;
  size_t size = 0;
  if (!exists(csv))
    return true;
  if (!rt_read_file(csv, 64 << 20, &data, &size)) {
    error("%s", rt_error());
    return false;
  }
  char *out = xcalloc(size + 1, 1);
  size_t n = 0;
  for (size_t at = 0; at < size;) {
    size_t len = 0;
    while (at + len < size && data[at + len] != '\n')
      len++;
    bool complete = at + len < size;  // a partial last line is dropped
    bool header = at == 0;
    long row_epoch = header ? 0 : strtol((const char *)data + at, NULL, 10);
    if (complete && (header || row_epoch <= epoch)) {
      memcpy(out + n, data + at, len + 1);
      n += len + 1;
    }
    at += len + 1;
  }
  bool ok = rt_write_file_atomic(csv, out, n);
  if (!ok)
    error("%s", rt_error());
  free(out);
  free(data);
  return ok;
}

// ---------------------------------------------------------------- the loop

static volatile sig_atomic_t stop_requested;
static void on_stop_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

typedef struct {
  const TrainArgs *a;
  const Graph *g;
  Trainer *t;          // the step's kernels; with --target cuda, the CPU's, to evaluate
  CudaTrainer *cuda;   // --target cuda: the step on the GPU(s), the state resident there
  Dataset *train, *test;
  RunFiles files;
  TrainState s;
  int64_t steps_per_epoch;
  double *parts;  // several ranks: each rank's images in this step, and the stop flag
  char arch[16];  // --target cuda: the GPUs' architecture
} Run;

// A fresh state (initialised or loaded weights, zero momenta), or the checkpoint's.
static bool start_state(Run *r, const char *config) {
  const TrainArgs *a = r->a;
  if (a->resume) {
    if (!exists(r->files.checkpoint)) {
      error("--resume: %s has no checkpoint to continue", a->out);
      return false;
    }
    if (!check_config(a, &r->files, config) || !checkpoint_load(r->files.checkpoint, r->g, &r->s))
      return false;
    printf("resuming %s at epoch %d, step %lld\n", a->out, r->s.epoch + 1, (long long)r->s.step);
    return metrics_keep_before(r->files.csv, r->s.epoch);
  }
  if (exists(r->files.checkpoint) || exists(r->files.csv)) {
    error("%s already holds a training run: continue it with --resume, or choose another --out",
          a->out);
    return false;
  }
  r->s.w = a->weights ? weights_load(r->g, a->weights) : weights_init(r->g, a->seed, a->init);
  if (!r->s.w)
    return false;
  r->s.v = weights_zeros(r->g);
  r->s.seed = a->seed;
  r->s.lr = a->lr;
  r->s.best_metric = INFINITY;
  if (!rt_write_file_atomic(r->files.config, config, strlen(config))) {
    error("%s", rt_error());
    return false;
  }
  return true;
}

// One run per directory at a time: two would interleave their checkpoints. The lock
// (flock on DIR/lock) goes with the process, so a killed run leaves none behind.
static int lock_run_dir(const char *dir) {
  char *path = format("%s/lock", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0)
    error("%s: cannot open: %s", path, strerror(errno));
  else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    error("%s is in use by another alexc train (%s is locked)", dir, path);
    close(fd);
    fd = -1;
  }
  free(path);
  return fd;
}

// A run killed while saving leaves its temporary file (NAME.tmp.PID) behind. With the
// directory locked no other run is writing there, so the leftovers of the run's own
// files can go.
static void remove_stale_temporaries(const char *dir) {
  static const char *const names[] = {"checkpoint.safetensors.tmp.", "weights.safetensors.tmp.",
                                      "metrics.csv.tmp.", "curves.png.tmp.", "run.txt.tmp."};
  DIR *d = opendir(dir);
  for (struct dirent *e; d && (e = readdir(d));)
    for (size_t k = 0; k < sizeof names / sizeof *names; k++)
      if (!strncmp(e->d_name, names[k], strlen(names[k]))) {
        char *path = format("%s/%s", dir, e->d_name);
        remove(path);
        free(path);
      }
  if (d)
    closedir(d);
}

// Rank 0 alone writes the run's files. A write that fails there (after its message) ends
// the whole job: the other ranks, which cannot know, would wait for it in the next sum.
static bool lead_wrote(const Run *r, bool ok) {
  if (!ok && r->a->ranks > 1)
    dist_abort(EXIT_ERR);
  return ok;
}

// --target cuda: the parameters and momenta the GPU(s) hold, into the host's state (before
// a checkpoint, an evaluation, the final weights).
static bool sync_state(Run *r) {
  return !r->cuda || cuda_trainer_download(r->cuda, r->s.w, r->s.v);
}

// --device-ranks: each rank's weights and momenta are right only in its own devices' rows
// (the others drift, unread); before they are read whole, every rank takes the owners'
// rows. Every rank calls it at the same points: it is a collective.
static void assemble_state(Run *r) {
  if (r->a->device_ranks)
    trainer_assemble_state(r->t, &r->s);
}

static bool save_checkpoint(Run *r) {
  return r->a->rank ||
         lead_wrote(r, sync_state(r) && checkpoint_save(r->files.checkpoint, &r->s));
}

// The plateau rule: divide the rate by 10 once the test error has not improved for
// `patience` epochs.
static void plateau_update(Run *r, double error_rate) {
  if (r->a->schedule.kind != SCHED_PLATEAU)
    return;
  if (error_rate < r->s.best_metric) {
    r->s.best_metric = error_rate;
    r->s.bad_epochs = 0;
  } else if (++r->s.bad_epochs >= r->a->schedule.patience) {
    r->s.lr /= 10;
    r->s.bad_epochs = 0;
    if (!r->a->rank)
      printf("test error has not improved for %d epoch(s): learning rate now %g\n",
           r->a->schedule.patience, r->s.lr);
  }
}

// Progress: on a terminal every step (the line redraws itself), otherwise ten lines
// an epoch, so a log stays readable.
static void show_progress(const Run *r, int64_t done_steps, double elapsed, int64_t images) {
  if (r->a->quiet || r->a->rank)
    return;
  int64_t every = r->steps_per_epoch / 10 > 0 ? r->steps_per_epoch / 10 : 1;
  if (!isatty(fileno(stdout)) && r->s.epoch_step % every && r->s.epoch_step != r->steps_per_epoch)
    return;
  double rate = elapsed > 0 ? images / elapsed : 0;
  int64_t left = (int64_t)(r->a->epochs - r->s.epoch) * r->steps_per_epoch - r->s.epoch_step;
  double eta = done_steps ? elapsed / done_steps * left : 0;
  progress_show(stdout, r->s.epoch + 1, r->a->epochs, r->s.epoch_step, r->steps_per_epoch,
                r->s.seen ? r->s.loss_sum / r->s.epoch_step : 0, rate, eta);
}

// Several ranks, before a step: each learns how many images every rank holds (so where
// its own lie in the global batch, and the total) and whether any rank was asked to stop,
// in one sum. Stopping together keeps the ranks in step: one that stopped alone would
// leave the others waiting in the next sum.
static void gather_parts(Run *r, int n, int *first, int *total, bool *stop) {
  int ranks = r->a->ranks;
  memset(r->parts, 0, (ranks + 1) * sizeof *r->parts);
  r->parts[r->a->rank] = n;
  r->parts[ranks] = stop_requested;
  dist_allreduce_f64(r->parts, ranks + 1);
  *first = *total = 0;
  for (int k = 0; k < ranks; k++) {
    *first += k < r->a->rank ? (int)r->parts[k] : 0;
    *total += (int)r->parts[k];
  }
  *stop = r->parts[ranks] > 0;
}

// One SGD step on this rank's n images (all of them with one process). Returns the
// global batch's mean loss; *hits and *total count over the global batch too.
static double train_step(Run *r, double lr, const float *x, const int32_t *labels, int n,
                         int first, int total, int *hits) {
  double part;  // this rank's loss sum
  if (r->cuda && r->a->ranks < 2) {  // trainer_step's contract: the state advances by a step
    double loss = cuda_trainer_step(r->cuda, lr, r->s.seed, r->s.step, x, labels, n, hits);
    r->s.step++;
    return loss;
  } else if (r->cuda) {
    part = cuda_trainer_step_part(r->cuda, lr, r->s.seed, r->s.step, x, labels, n, first, total,
                                  hits);
    r->s.step++;
  } else if (data_ranks(r->a) < 2) {  // --device-ranks: every rank has the whole loss
    return trainer_step(r->t, &r->s, lr, x, labels, n, hits);
  } else {
    part = trainer_step_part(r->t, &r->s, lr, x, labels, n, first, total, hits);
  }
  double sums[2] = {part, 0};
  sums[1] = *hits;
  dist_allreduce_f64(sums, 2);  // a NaN on any rank is a NaN on all: they stop together
  *hits = (int)sums[1];
  return sums[0] / total;
}

// One epoch from where the state stands. False on a stop request or a diverged loss.
static bool train_epoch(Run *r, float *x, int32_t *labels, double *seconds) {
  const TrainArgs *a = r->a;
  data_start(r->train, r->s.epoch, r->s.epoch_step);
  double t0 = now_seconds();
  int64_t steps = 0, images = 0;
  int n;
  bool stop = false;
  while (!stop && (n = next_part(data_ranks(a), r->train, a->batch, x, labels)) >= 0) {
    int first = 0, total = n, hits = 0;
    if (a->ranks > 1) {
      gather_parts(r, n, &first, &total, &stop);
      if (a->device_ranks)  // every rank holds the whole batch
        first = 0, total = n;
      if (stop) {  // before the step: the state is the last step's on every rank
        stop_requested = 1;
        assemble_state(r);
        if (!save_checkpoint(r))
          return false;
        break;
      }
      if (!total)  // only unreadable photos: one process would pass over the batch too
        continue;
    }
    double lr = lr_at(a, r->s.lr, r->s.step, r->s.epoch, r->steps_per_epoch);
    double loss = train_step(r, lr, x, labels, n, first, total, &hits);
    if (!isfinite(loss)) {
      if (!a->rank)
        error("the loss is %g at step %lld (epoch %d): training diverged; try a lower --lr "
              "(the last checkpoint is kept)", loss, (long long)r->s.step, r->s.epoch + 1);
      return false;
    }
    r->s.epoch_step++;
    r->s.loss_sum += loss;
    r->s.hits += hits;
    r->s.seen += total;
    steps++;
    images += total;
    show_progress(r, steps, now_seconds() - t0, images);
    stop = a->ranks < 2 && stop_requested;  // ranks stop together, at the next step's sum
    if (stop || (a->checkpoint_every && r->s.step % a->checkpoint_every == 0)) {
      assemble_state(r);
      if (!save_checkpoint(r))
        return false;
    }
  }
  if (stop) {
    if (!a->rank)
      printf("\nstopped at step %lld; checkpoint saved: continue with --resume\n",
             (long long)r->s.step);
    return false;
  }
  *seconds = now_seconds() - t0;  // progress_show ended its line at the epoch's last step
  return true;
}

// Rank 0 writes for all, so the ranks must hold the same weights. They should (every rank
// takes the same summed gradients), unless an MPI library sums in another order on some
// ranks: checked after every epoch, so that such a job stops instead of quietly training
// several models.
static bool ranks_agree(const Run *r) {
  if (r->a->ranks < 2)
    return true;
  uint64_t h = FNV_OFFSET;
  for (int i = 0; i < r->s.w->n; i++)
    h = fnv1a(h, r->s.w->data[i], r->s.w->info[i].elems * sizeof(float));
  uint64_t lead = h;
  dist_broadcast(&lead, sizeof lead);
  double differ = h != lead;
  dist_allreduce_f64(&differ, 1);
  if (differ && !r->a->rank)
    error("after epoch %d the ranks' weights differ (MPI's sums were not the same on every "
          "rank): stopping; the last checkpoint is kept", r->s.epoch + 1);
  return !differ;
}

// After an epoch: test, schedule, metrics row, checkpoint, curves.
static bool finish_epoch(Run *r, double seconds) {
  assemble_state(r);
  if (!sync_state(r) || !ranks_agree(r))  // --target cuda: the weights the GPUs hold
    return false;
  EvalResult e = evaluate(r->t, r->g, r->s.w, r->test, r->a->batch, data_ranks(r->a));
  int64_t steps = r->s.epoch_step ? r->s.epoch_step : 1;
  EpochRow row = {r->s.epoch + 1, r->s.step, r->s.loss_sum / steps,
                  r->s.seen ? (double)r->s.hits / r->s.seen : 0, e.loss, e.top1, e.top5,
                  lr_at(r->a, r->s.lr, r->s.step - 1, r->s.epoch, r->steps_per_epoch), seconds};
  bool lead = !r->a->rank;  // the ranks hold the same state: rank 0 reports and writes
  if (lead)
    printf("epoch %d/%d: train loss %.4f top-1 %.2f%% | test loss %.4f top-1 %.2f%% top-5 %.2f%% "
         "| lr %.3g | %.1f s\n", row.epoch, r->a->epochs, row.train_loss, 100 * row.train_top1,
         row.test_loss, 100 * row.test_top1, 100 * row.test_top5, row.lr, seconds);
  fflush(stdout);
  plateau_update(r, 1 - e.top1);
  r->s.epoch++;
  r->s.epoch_step = 0;
  r->s.loss_sum = 0;
  r->s.hits = r->s.seen = 0;
  // The row first, then the checkpoint: a run killed between the two drops the row on
  // resume (metrics_keep_before) and writes it again, so no row is lost or doubled.
  if (lead && (!lead_wrote(r, metrics_append(r->files.csv, &row)) || !save_checkpoint(r)))
    return false;
  if (lead && !metrics_plot(r->files.csv, r->files.png))
    fprintf(stderr, "alexc: warning: could not draw %s\n", r->files.png);
  return true;
}

// Every label of the data must be one of the network's classes.
static bool classes_fit(const Dataset *d, const Trainer *t, const char *path, const Graph *g) {
  if (data_classes(d) <= trainer_classes(t))
    return true;
  error("%s has %d classes but network '%s' scores %d", path, data_classes(d), g->name,
        trainer_classes(t));
  return false;
}

static DataOptions data_options(const Graph *g, const TrainArgs *a, bool train) {
  Shape in = g->nodes[0].out;
  return (DataOptions){(int)in.c, (int)in.h, (int)in.w, train, train && a->augment, false,
                       a->seed, train ? a->limit : a->test_limit, 0,
                       data_ranks(a) > 1 ? a->rank : 0, data_ranks(a)};
}

// ---------------------------------------------------------------- one message a job
// Under mpirun every rank parses the same flags, spec and data, so a setup error would be
// printed once per rank. Ranks other than 0 therefore hold what they print to stderr
// until the ranks have compared their setups (share_start): when rank 0 failed too, it
// has said it and the held text goes; when rank 0 did not, the error is this rank's own
// (a file missing on its machine) and is shown with the rank's number.

static int real_stderr = -1;  // while held: the process's stderr; fd 2 is `held`
static FILE *held;

// The launcher's rank for this process (before MPI_Init), 0 without a launcher.
static int launcher_rank(void) {
  const char *names[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (getenv(names[i]))
      return atoi(getenv(names[i]));
  return 0;
}

static void hold_messages(void) {
  if (launcher_rank() <= 0 || !(held = tmpfile()))
    return;
  fflush(stderr);
  real_stderr = dup(2);
  if (real_stderr < 0 || dup2(fileno(held), 2) < 0) {  // cannot hold: print as usual
    if (real_stderr >= 0)
      close(real_stderr);
    real_stderr = -1;
    fclose(held);
    held = NULL;
  }
}

static void release_messages(bool show) {
  if (real_stderr < 0)
    return;
  fflush(stderr);
  dup2(real_stderr, 2);
  close(real_stderr);
  real_stderr = -1;
  char line[1024];
  rewind(held);
  bool line_start = true;
  while (show && fgets(line, sizeof line, held)) {
    if (line_start)
      fprintf(stderr, "[rank %d] ", launcher_rank());
    fputs(line, stderr);
    line_start = strchr(line, '\n') != NULL;
  }
  fclose(held);
  held = NULL;
}

// Several ranks: whether every rank got through its setup (rank 0 printed its failure;
// another rank's is shown only when rank 0 did not fail), then rank 0's state (fresh or
// resumed) sent to all, so that the others need neither the run directory nor the
// --weights file.
static bool share_start(Run *r, bool ok) {
  if (r->a->ranks < 2) {
    release_messages(!ok);
    return ok;
  }
  double failed[2] = {!ok, r->a->rank == 0 && !ok};  // any rank, rank 0
  dist_allreduce_f64(failed, 2);
  release_messages(!ok && !failed[1]);
  if (failed[0])
    return false;
  if (r->a->rank) {
    r->s.w = weights_zeros(r->g);
    r->s.v = weights_zeros(r->g);
  }
  TrainState s = r->s;
  dist_broadcast(&s, sizeof s);
  s.w = r->s.w;  // rank 0's pointers mean nothing here
  s.v = r->s.v;
  r->s = s;
  for (int i = 0; i < s.w->n; i++) {
    dist_broadcast(s.w->data[i], s.w->info[i].elems * sizeof(float));
    dist_broadcast(s.v->data[i], s.v->info[i].elems * sizeof(float));
  }
  return true;
}

// --target cuda under mpirun: one device a rank (the model-parallel split is not combined
// with data parallelism), and enough GPUs on this machine for its ranks, which take GPUs
// local rank x devices onwards. Every rank checks the same, so rank 0's message is shown.
static bool cuda_ranks_fit(const TrainArgs *a) {
  if (a->devices > 1) {
    error("--target cuda under mpirun trains on one GPU a rank: --devices %d is for one "
          "process (run without mpirun, or with --devices 1)", a->devices);
    return false;
  }
  int gpus = 0;
  if (!rt_cuda_gpu_count(&gpus)) {
    error("--target cuda: %s", rt_error());
    return false;
  }
  int need = dist_local_size() * a->devices;
  if (need > gpus) {
    error("--target cuda: mpirun started %d ranks on this machine of %d GPU(s), each rank "
          "needing %d: start at most %d rank%s a machine", dist_local_size(), gpus, a->devices,
          gpus / a->devices, gpus / a->devices == 1 ? "" : "s");
    return false;
  }
  return true;
}

// Several ranks, --target cuda: the step on each rank's GPU, then the NCCL communicator
// (rank 0's id sent to all over MPI). Every rank learns whether all got through each
// part, so that none waits in a collective another has left.
static bool start_cuda_ranks(Run *r) {
  const TrainArgs *a = r->a;
  if (strcmp(a->target, "cuda") || a->ranks < 2)
    return true;
  r->cuda = cuda_trainer_new_rank(r->g, a->devices, a->ranks, dist_local_rank() * a->devices,
                                  r->arch, r->s.w, r->s.v);
  struct {
    uint8_t id[RT_NCCL_ID_BYTES];
    uint8_t ok;
  } start = {.ok = 1};
  double failed = !r->cuda;
  dist_allreduce_f64(&failed, 1);
  if (failed)
    return false;
  if (!a->rank)
    start.ok = cuda_trainer_nccl_id(start.id);
  dist_broadcast(&start, sizeof start);
  if (!start.ok)  // rank 0 said why
    return false;
  failed = !cuda_trainer_join(r->cuda, a->rank, a->ranks, start.id);
  dist_allreduce_f64(&failed, 1);
  return !failed;
}

// Rank 0 alone owns the run directory: it locks it and starts or resumes the run.
static bool start_lead(Run *r, const char *config, int *lock) {
  const TrainArgs *a = r->a;
  if (a->rank)
    return true;
  if (!make_dirs(a->out) || (*lock = lock_run_dir(a->out)) < 0)
    return false;
  remove_stale_temporaries(a->out);
  return start_state(r, config);
}

// --device-ranks: one rank a device of the split, on the CPU. Every rank checks the same,
// so rank 0's message is shown.
static bool device_ranks_fit(const TrainArgs *a) {
  if (!a->device_ranks)
    return true;
  if (!strcmp(a->target, "cuda")) {
    error("--device-ranks runs the split's devices as ranks on the CPU: not with --target "
          "cuda (run it with --target cpu or ref)");
    return false;
  }
  int n = a->devices < 2 ? 2 : a->devices;  // what the command should have said
  if (a->ranks == 1) {
    error("--device-ranks needs mpirun, one rank a device: run mpirun -np %d alexc train ... "
          "--devices %d --device-ranks", n, n);
    return false;
  }
  if (a->ranks != a->devices) {
    error("--device-ranks makes each mpirun rank one of the --devices: this job has %d ranks "
          "and --devices %d; run mpirun -np N alexc train ... --devices N --device-ranks",
          a->ranks, a->devices);
    return false;
  }
  return true;
}

// Everything a run needs before its first step, on every rank. False after a message.
static bool set_up(Run *r, TrainArgs *a, Graph *g, char **config, int *lock) {
  if (!g || !resolve_settings(a, g) || !device_ranks_fit(a))
    return false;
  *config = config_text(a);
  // --target cuda: the step on the GPU(s) (compiler/backends/cuda/train_run.c), the CPU
  // target's kernels for the evaluations.
  bool cuda = !strcmp(a->target, "cuda");
  const Target *target = target_find(cuda ? "cpu" : a->target);
  if (!target || !target->train) {
    error("--target %s cannot train (training targets: ref, cpu, cuda)", a->target);
    return false;
  }
  if (cuda && a->ranks > 1 && !cuda_ranks_fit(a))
    return false;
  if (a->threads)
    cpu_train_set_threads(a->threads);
  DataOptions dtr = data_options(g, a, true), dte = data_options(g, a, false);
  bool ok = (r->train = data_open(a->data, &dtr)) && (r->test = data_open(a->data, &dte)) &&
            (r->t = trainer_new(g, target->train, a->batch, a->devices)) &&
            (!a->device_ranks || (trainer_set_device_rank(r->t, a->rank), true)) &&
            classes_fit(r->train, r->t, a->data, g) && start_lead(r, *config, lock);
  // One process starts its GPU step here; ranks after share_start (start_cuda_ranks),
  // when every rank holds rank 0's weights.
  if (ok && cuda)
    ok = resolve_arch(NULL, true, r->arch, sizeof r->arch) &&
         (a->ranks > 1 ||
          (r->cuda = cuda_trainer_new(g, a->devices, r->arch, r->s.w, r->s.v)) != NULL);
  return ok;
}

static int train_run(TrainArgs *a) {
  Graph *g = load_spec(a->spec);
  int status = EXIT_ERR, lock = -1;
  Run r = {.a = a, .g = g, .files = run_files(a->out)};
  char *config = NULL;
  if (!share_start(&r, set_up(&r, a, g, &config, &lock)) || !start_cuda_ranks(&r))
    goto done;
  trainer_set_bucket_bytes(r.t, (int64_t)a->bucket_kib << 10);
  r.parts = xcalloc(a->ranks + 1, sizeof *r.parts);
  int64_t global_batch = (int64_t)a->batch * data_ranks(a);
  r.steps_per_epoch = (data_size(r.train) + global_batch - 1) / global_batch;
  char how[64] = "";
  if (a->device_ranks)
    snprintf(how, sizeof how, ", %d ranks as the split's devices", a->ranks);
  else if (a->ranks > 1)
    snprintf(how, sizeof how, ", %d ranks of batch %d", a->ranks, a->batch);
  if (!a->rank)
    printf("training %s on %s: %lld images, %lld steps an epoch, target %s%s\n", g->name,
           a->data, (long long)data_size(r.train), (long long)r.steps_per_epoch, a->target, how);
  signal(SIGINT, on_stop_signal);
  signal(SIGTERM, on_stop_signal);
  float *x = xcalloc((size_t)a->batch * shape_elems(g->nodes[0].out), sizeof(float));
  int32_t *labels = xcalloc(a->batch, sizeof *labels);
  bool ok = true;
  while (ok && r.s.epoch < a->epochs) {
    double seconds = 0;
    ok = train_epoch(&r, x, labels, &seconds) && finish_epoch(&r, seconds);
  }
  free(x);
  free(labels);
  if (ok)
    assemble_state(&r);
  if (ok && (a->rank || (sync_state(&r) && weights_save(r.s.w, r.files.weights)))) {
    if (!a->rank)
      printf("wrote %s, %s, %s\n", r.files.weights, r.files.csv, r.files.png);
    status = EXIT_OK;
  }
  if (data_skipped(r.train))
    fprintf(stderr, "alexc: warning: %lld unreadable images were skipped\n",
            (long long)data_skipped(r.train));
done:
  if (lock >= 0)
    close(lock);
  free(r.parts);
  free(config);
  weights_free(r.s.w);
  weights_free(r.s.v);
  trainer_free(r.t);
  cuda_trainer_free(r.cuda);
  data_close(r.train);
  data_close(r.test);
  run_files_free(&r.files);
  graph_free(g);
  return status;
}

// ---------------------------------------------------------------- commands

enum {
  OPT_DATA = 1200, OPT_OUT, OPT_TARGET, OPT_EPOCHS, OPT_BATCH, OPT_LR, OPT_SCHEDULE, OPT_WARMUP,
  OPT_INIT, OPT_WEIGHTS, OPT_SEED, OPT_NO_AUGMENT, OPT_LIMIT, OPT_TEST_LIMIT, OPT_CHECKPOINT,
  OPT_RESUME, OPT_THREADS, OPT_DEVICES, OPT_QUIET, OPT_TEN_CROP, OPT_BUCKET, OPT_DEVICE_RANKS,
  OPT_HELP
};

static const struct option TRAIN_OPTIONS[] = {
    {"data", required_argument, 0, OPT_DATA},
    {"out", required_argument, 0, OPT_OUT},
    {"target", required_argument, 0, OPT_TARGET},
    {"epochs", required_argument, 0, OPT_EPOCHS},
    {"batch", required_argument, 0, OPT_BATCH},
    {"lr", required_argument, 0, OPT_LR},
    {"schedule", required_argument, 0, OPT_SCHEDULE},
    {"warmup", required_argument, 0, OPT_WARMUP},
    {"init", required_argument, 0, OPT_INIT},
    {"weights", required_argument, 0, OPT_WEIGHTS},
    {"seed", required_argument, 0, OPT_SEED},
    {"no-augment", no_argument, 0, OPT_NO_AUGMENT},
    {"limit", required_argument, 0, OPT_LIMIT},
    {"test-limit", required_argument, 0, OPT_TEST_LIMIT},
    {"checkpoint-every", required_argument, 0, OPT_CHECKPOINT},
    {"resume", no_argument, 0, OPT_RESUME},
    {"threads", required_argument, 0, OPT_THREADS},
    {"devices", required_argument, 0, OPT_DEVICES},
    {"quiet", no_argument, 0, OPT_QUIET},
    {"ten-crop", no_argument, 0, OPT_TEN_CROP},
    {"bucket-kib", required_argument, 0, OPT_BUCKET},
    {"device-ranks", no_argument, 0, OPT_DEVICE_RANKS},
    {"help", no_argument, 0, OPT_HELP},
    {0, 0, 0, 0}};

static bool parse_double_in(const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || !(v >= lo && v <= hi))
    return false;
  *out = v;
  return true;
}

static bool parse_count(const char *s, int64_t *out) {
  uint64_t v;
  if (!parse_u64(s, &v) || v > (uint64_t)1 << 40)
    return false;
  *out = (int64_t)v;
  return true;
}

// One option of train or eval; 0 when handled, EXIT_USAGE after a message.
static int train_option(const char *cmd, int c, const char *arg, TrainArgs *a, bool *ten_crop) {
  switch (c) {
  case OPT_DATA: a->data = arg; return 0;
  case OPT_OUT: a->out = arg; return 0;
  case OPT_TARGET: a->target = arg; return 0;
  case OPT_WEIGHTS: a->weights = arg; return 0;
  case OPT_NO_AUGMENT: a->augment = 0; return 0;
  case OPT_RESUME: a->resume = true; return 0;
  case OPT_QUIET: a->quiet = true; return 0;
  case OPT_DEVICE_RANKS: a->device_ranks = true; return 0;
  case OPT_TEN_CROP: *ten_crop = true; return 0;
  case OPT_EPOCHS:
    return parse_int_in(arg, 1, 100000, &a->epochs) ? 0
           : usage_error(cmd, "--epochs wants 1 to 100000, not '%s'", arg);
  case OPT_BATCH:
    return parse_int_in(arg, 1, 65536, &a->batch) ? 0
           : usage_error(cmd, "--batch wants 1 to 65536, not '%s'", arg);
  case OPT_THREADS:
    return parse_int_in(arg, 1, 1024, &a->threads) ? 0
           : usage_error(cmd, "--threads wants 1 to 1024, not '%s'", arg);
  case OPT_DEVICES:
    return parse_int_in(arg, 1, MAX_DEVICES, &a->devices) ? 0
           : usage_error(cmd, "--devices wants 1 to %d, not '%s'", MAX_DEVICES, arg);
  case OPT_BUCKET:
    return parse_int_in(arg, 1, 1 << 20, &a->bucket_kib) ? 0
           : usage_error(cmd, "--bucket-kib wants 1 to 1048576 KiB, not '%s'", arg);
  case OPT_CHECKPOINT:
    return parse_int_in(arg, 0, 1 << 30, &a->checkpoint_every) ? 0
           : usage_error(cmd, "--checkpoint-every wants a step count, not '%s'", arg);
  case OPT_LR:
    return parse_double_in(arg, 1e-12, 100, &a->lr) ? 0
           : usage_error(cmd, "--lr wants a positive number up to 100, not '%s'", arg);
  case OPT_WARMUP:
    return parse_double_in(arg, 0, 1000, &a->warmup) ? 0
           : usage_error(cmd, "--warmup wants 0 to 1000 epochs, not '%s'", arg);
  case OPT_SCHEDULE:
    a->schedule_text = arg;
    return parse_schedule(arg, &a->schedule) ? 0
           : usage_error(cmd, "--schedule wants constant, cosine, step:E1,E2,... or "
                              "plateau[:PATIENCE], not '%s'", arg);
  case OPT_INIT:
    a->init_text = arg;
    return parse_init_scheme(arg, &a->init) ? 0
           : usage_error(cmd, "--init is 'spec' or 'fan-in', not '%s'", arg);
  case OPT_SEED:
    return parse_u64(arg, &a->seed) ? 0
           : usage_error(cmd, "--seed wants an unsigned integer, not '%s'", arg);
  case OPT_LIMIT:
    return parse_count(arg, &a->limit) ? 0 : usage_error(cmd, "--limit wants a count, not '%s'", arg);
  case OPT_TEST_LIMIT:
    return parse_count(arg, &a->test_limit) ? 0
           : usage_error(cmd, "--test-limit wants a count, not '%s'", arg);
  default:
    return usage_error(cmd, "unknown option");
  }
}

static TrainArgs train_defaults(void) {
  return (TrainArgs){.target = "cpu", .warmup = -1, .augment = -1, .init = INIT_SPEC,
                     .schedule = {.kind = SCHED_COSINE, .patience = 1}, .seed = 1,
                     .checkpoint_every = 1000, .devices = 1, .ranks = 1, .bucket_kib = 1024};
}

// Parses train's or eval's command line into a: 0 to go on, else the exit status (after
// --help or a usage message). Both take SPEC and the same options; --ten-crop is eval's.
static int parse_command(const char *cmd, const char *help, int argc, char **argv, TrainArgs *a,
                         bool *ten_crop) {
  *a = train_defaults();
  *ten_crop = false;
  int c;
  while ((c = getopt_long(argc, argv, "h", TRAIN_OPTIONS, NULL)) != -1) {
    if (c == OPT_HELP || c == 'h') {
      fputs(help, stdout);
      return -1;
    }
    if (c == OPT_TEN_CROP && !strcmp(cmd, "train"))
      return usage_error("train", "--ten-crop is an option of alexc eval");
    if (c == OPT_DEVICE_RANKS && strcmp(cmd, "train"))
      return usage_error(cmd, "--device-ranks is an option of alexc train (eval runs in one "
                              "process)");
    int rc = train_option(cmd, c, optarg, a, ten_crop);
    if (rc)
      return rc;
  }
  if (optind + 1 != argc)
    return usage_error(cmd, "expected one SPEC file");
  a->spec = argv[optind];
  return 0;
}

int cmd_train(int argc, char **argv) {
  TrainArgs a;
  bool ten_crop;
  hold_messages();  // until share_start, or a usage error every rank makes alike
  int rc = parse_command("train", TRAIN_HELP, argc, argv, &a, &ten_crop);
  if (!rc && (!a.data || !a.out))
    rc = usage_error("train", "--data and --out are required");
  if (rc) {
    release_messages(false);
    return rc < 0 ? EXIT_OK : rc;
  }
  if (!dist_init()) {
    release_messages(true);
    return EXIT_ERR;
  }
  a.rank = dist_rank();
  a.ranks = dist_size();
  if (a.ranks > 1 && !a.threads) {  // ranks sharing a machine share its CPUs
    long cpus = sysconf(_SC_NPROCESSORS_ONLN) / dist_local_size();
    a.threads = cpus > 1 ? (int)cpus : 1;
  }
  stop_requested = 0;
  int status = train_run(&a);
  dist_finalize();
  return stop_requested ? 128 + SIGINT : status;
}

int cmd_eval(int argc, char **argv) {
  TrainArgs a;
  bool ten_crop;
  int rc = parse_command("eval", EVAL_HELP, argc, argv, &a, &ten_crop);
  if (rc)
    return rc < 0 ? EXIT_OK : rc;
  if (!a.data || !a.weights)
    return usage_error("eval", "--weights and --data are required");
  const char *ranks = getenv("OMPI_COMM_WORLD_SIZE");
  if (ranks && atoi(ranks) > 1) {  // N copies would each print the same scores
    error("alexc eval runs in one process: run it without mpirun (this is one of %s ranks)",
          ranks);
    return EXIT_ERR;
  }
  Graph *g = load_spec(a.spec);
  if (!g)
    return EXIT_ERR;
  const Target *target = target_find(a.target);
  if (!target || !target->train)
    error("--target %s cannot evaluate (ref or cpu)", a.target);
  if (!target || !target->train || !resolve_settings(&a, g)) {
    graph_free(g);
    return EXIT_ERR;
  }
  if (a.threads)
    cpu_train_set_threads(a.threads);
  a.test_limit = a.limit;
  DataOptions o = data_options(g, &a, false);
  o.ten_crop = ten_crop;
  Weights *w = weights_load(g, a.weights);
  Dataset *d = w ? data_open(a.data, &o) : NULL;
  Trainer *t = d ? trainer_new(g, target->train, a.batch, a.devices) : NULL;
  if (t && !classes_fit(d, t, a.data, g)) {
    trainer_free(t);
    t = NULL;
  }
  if (t && ten_crop && data_views(d) == 1)
    fprintf(stderr, "alexc: warning: --ten-crop applies to photo folders; %s's images are "
            "scored whole\n", a.data);
  int status = EXIT_ERR;
  if (t) {
    EvalResult e = evaluate(t, g, w, d, a.batch, 1);
    printf("%lld images%s: loss %.4f  top-1 %.2f%%  top-5 %.2f%%\n", (long long)e.n,
           ten_crop ? " (ten crops each)" : "", e.loss, 100 * e.top1, 100 * e.top5);
    status = EXIT_OK;
  }
  trainer_free(t);
  data_close(d);
  weights_free(w);
  graph_free(g);
  return status;
}
