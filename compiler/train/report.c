// Reports: the per-epoch metrics CSV, its plot (cairo, PNG), and the progress line.
//
// The CSV has a header row and one row per epoch:
//   epoch,step,train_loss,train_top1,test_loss,test_top1,test_top5,lr,seconds
// seconds being the epoch's training time (evaluation excluded), accuracies fractions
// in [0, 1] (the plot shows them in percent), a value not measured "nan". Each row is one write(2) to a file opened with O_APPEND, then
// fsync: a crash leaves at most a partial last line, which the next append starts a
// new line after and the plot skips. A resumed run that repeats an epoch appends its
// row again; the plot keeps the last row of each epoch.
#include <cairo.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../alexc.h"

enum { C_EPOCH, C_STEP, C_TRAIN_LOSS, C_TRAIN_TOP1, C_TEST_LOSS, C_TEST_TOP1, C_TEST_TOP5, C_LR,
       C_SECONDS, N_COLS };
static const char *const COLS[N_COLS] = {"epoch",     "step",      "train_loss",
                                         "train_top1", "test_loss", "test_top1",
                                         "test_top5",  "lr",        "seconds"};

#define MAX_CSV ((size_t)64 << 20)

// LeakSanitizer (ALEXC_SANITIZE builds): fontconfig, which cairo's text loads, keeps
// parts of its configuration in memory it never frees; so does Open MPI (under mpirun,
// train/dist.c), in its plugins (mca_*.so), which MPI_Finalize unloads, so that their
// frames have no names: they are matched by the Open MPI library or libevent (its progress
// thread) further up the stack, which tests/train/mpi.sh has LeakSanitizer unwind in
// full (fast_unwind_on_malloc=0). Not our leaks: not reported.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ALEXC_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(ALEXC_ASAN)
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) {
  return "leak:libfontconfig.so\n"
         "leak:libmpi.so\nleak:libopen-pal.so\nleak:libopen-rte.so\nleak:libpmix.so\n"
         "leak:libevent_core\n";  // the event loop of Open MPI's progress thread
}
#endif

bool metrics_append(const char *csv, const EpochRow *r) {
  int fd = open(csv, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) {
    error("cannot write metrics %s: %s", csv, strerror(errno));
    return false;
  }
  struct stat sb = {0};
  bool fresh = fstat(fd, &sb) == 0 && sb.st_size == 0;
  char last = '\n';
  if (!fresh && sb.st_size > 0 && pread(fd, &last, 1, sb.st_size - 1) != 1)
    last = '\n';
  char row[1024];
  int n = 0;
  if (fresh)
    for (int c = 0; c < N_COLS; c++)
      n += snprintf(row + n, sizeof row - n, "%s%s", COLS[c], c + 1 < N_COLS ? "," : "\n");
  else if (last != '\n')  // a partial line a crash left: start a new one
    row[n++] = '\n';
  n += snprintf(row + n, sizeof row - n, "%d,%lld,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.3f\n", r->epoch,
                (long long)r->step, r->train_loss, r->train_top1, r->test_loss, r->test_top1,
                r->test_top5, r->lr, r->seconds);
  bool ok = true;
  for (int done = 0; ok && done < n;) {  // one write; more only after a short write
    ssize_t k = write(fd, row + done, (size_t)(n - done));
    if (k < 0 && errno == EINTR)
      continue;
    ok = k > 0;
    done += ok ? (int)k : 0;
  }
  ok = ok && (fsync(fd) == 0 || errno == EINVAL);
  int err = errno;
  ok = close(fd) == 0 && ok;
  if (!ok)
    error("cannot write metrics %s: %s", csv, strerror(err ? err : errno));
  return ok;
}

// ---------------------------------------------------------------- reading the CSV

typedef struct {
  double v[N_COLS];
  int64_t order;  // row index in the file, to keep the last row of an epoch
} Row;

// Splits `line` (NUL-terminated, modified) at commas into at most max fields.
static int split(char *line, char **fields, int max) {
  int n = 0;
  for (char *p = line;; p++) {
    if (n == max)
      return max + 1;
    fields[n++] = p;
    p = strchr(p, ',');
    if (!p)
      return n;
    *p = 0;
  }
}

static bool parse_number(const char *s, double *out) {
  while (*s == ' ')
    s++;
  if (!*s) {
    *out = NAN;
    return true;
  }
  char *end;
  *out = strtod(s, &end);
  while (*end == ' ')
    end++;
  return end != s && !*end;
}

static int row_cmp(const void *a, const void *b) {
  const Row *x = a, *y = b;
  if (x->v[C_EPOCH] != y->v[C_EPOCH])
    return x->v[C_EPOCH] < y->v[C_EPOCH] ? -1 : 1;
  return x->order < y->order ? -1 : x->order > y->order;
}

// Reads the CSV's rows, sorted by epoch, the last row of each epoch kept. A line that
// does not parse is skipped: silently when it is a partial last line, else with a warning.
static bool read_rows(const char *csv, Row **rows_out, int *n_out) {
  *rows_out = NULL;
  *n_out = 0;
  uint8_t *text;
  size_t size;
  if (!rt_read_file(csv, MAX_CSV, &text, &size)) {
    error("cannot read metrics %s", rt_error());
    return false;
  }
  char *p = (char *)text, *end = p + size;
  int col[N_COLS], n_fields = 0;
  for (int c = 0; c < N_COLS; c++)
    col[c] = -1;
  Row *rows = NULL;
  int n = 0, cap = 0, line_no = 0, skipped = 0;
  bool ok = true;
  while (p < end) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    bool partial = !nl;
    char *line = p;
    if (nl)
      *nl = 0;
    size_t len = strlen(line);
    if (len && line[len - 1] == '\r')  // written on Windows, or edited there
      line[len - 1] = 0;
    p = nl ? nl + 1 : end;
    line_no++;
    char *fields[64];
    int k = split(line, fields, 64);
    if (line_no == 1) {  // the header: columns found by name
      n_fields = k;
      for (int f = 0; f < k && f < 64; f++)
        for (int c = 0; c < N_COLS; c++)
          if (!strcmp(fields[f], COLS[c]))
            col[c] = f;
      if (col[C_EPOCH] < 0) {
        error("metrics %s: the first line is not a header with an 'epoch' column", csv);
        ok = false;
        break;
      }
      continue;
    }
    if (k == 1 && !*fields[0])
      continue;  // an empty line
    Row r = {.order = n};
    bool good = k == n_fields;
    for (int c = 0; good && c < N_COLS; c++)
      if (col[c] < 0)
        r.v[c] = NAN;
      else
        good = parse_number(fields[col[c]], &r.v[c]);
    good = good && isfinite(r.v[C_EPOCH]);
    if (!good) {
      if (!partial && !skipped++)
        fprintf(stderr, "alexc: warning: metrics %s: line %d is malformed, skipped\n", csv,
                line_no);
      continue;
    }
    if (n == cap)
      rows = xrealloc(rows, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *rows);
    rows[n++] = r;
  }
  free(text);
  if (!ok) {
    free(rows);
    return false;
  }
  if (n)
    qsort(rows, (size_t)n, sizeof *rows, row_cmp);
  int m = 0;
  for (int i = 0; i < n; i++) {
    if (i + 1 < n && rows[i + 1].v[C_EPOCH] == rows[i].v[C_EPOCH])
      continue;  // a later row for the same epoch replaces it
    rows[m++] = rows[i];
  }
  *rows_out = rows;
  *n_out = m;
  return true;
}

// ---------------------------------------------------------------- drawing

typedef struct {
  double lo, hi, step;  // axis range and tick spacing
} Axis;

// Ticks at 1, 2, 5 x 10^k, about `target` of them over [lo, hi]; the range is widened
// to whole ticks.
static Axis nice_axis(double lo, double hi, int target, double min_step) {
  if (!isfinite(lo) || !isfinite(hi)) {
    lo = 0;
    hi = 1;
  }
  if (hi - lo < 1e-12) {
    double pad = fabs(lo) > 1e-6 ? fabs(lo) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  }
  double raw = (hi - lo) / target, mag = pow(10, floor(log10(raw))), norm = raw / mag;
  double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  if (step < min_step)
    step = min_step;
  return (Axis){floor(lo / step + 1e-9) * step, ceil(hi / step - 1e-9) * step, step};
}

static void tick_text(double v, double step, char *buf, size_t size) {
  int decimals = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
  if (decimals > 6)
    decimals = 6;
  if (fabs(v) < step * 1e-6)
    v = 0;  // no "-0.0"
  snprintf(buf, size, "%.*f", decimals, v);
}

typedef struct {
  const char *label;
  int col;
  double r, g, b;
  bool dashed;
} Series;

typedef struct {
  cairo_t *cr;
  double x, y, w, h;  // the plot area
  Axis ax, ay;
} Panel;

static double px(const Panel *p, double v) { return p->x + (v - p->ax.lo) / (p->ax.hi - p->ax.lo) * p->w; }
static double py(const Panel *p, double v) {
  return p->y + p->h - (v - p->ay.lo) / (p->ay.hi - p->ay.lo) * p->h;
}

static void text_at(cairo_t *cr, double x, double y, const char *s, double align_x,
                    double align_y) {
  cairo_text_extents_t e;
  cairo_font_extents_t fe;
  cairo_text_extents(cr, s, &e);
  cairo_font_extents(cr, &fe);
  double cap = fe.ascent * 0.76;  // about the height of a capital (the same for any text)
  cairo_move_to(cr, x - e.x_advance * align_x, y + cap * align_y);
  cairo_show_text(cr, s);
}

static void set_font(cairo_t *cr, double size, bool bold) {
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL,
                         bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
}

// Scales accuracy columns to percent when they are fractions.
static double value(const Row *r, int col, double scale) { return r->v[col] * scale; }

// One panel: frame, grid, ticks, labels, the series' curves and a legend at the
// corner (legend_top: top right, else bottom right).
static void draw_panel(cairo_t *cr, double x0, double y0, double w0, double h0, const char *title,
                       const char *ylabel, const Row *rows, int n, const Series *series,
                       int n_series, double scale, bool from_zero, double clamp_hi,
                       bool legend_top) {
  Panel p = {.cr = cr, .x = x0 + 78, .y = y0 + 36, .w = w0 - 78 - 24, .h = h0 - 36 - 58};
  double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
  for (int i = 0; i < n; i++) {
    xlo = fmin(xlo, rows[i].v[C_EPOCH]);
    xhi = fmax(xhi, rows[i].v[C_EPOCH]);
    for (int s = 0; s < n_series; s++) {
      double v = value(&rows[i], series[s].col, scale);
      if (isfinite(v)) {
        ylo = fmin(ylo, v);
        yhi = fmax(yhi, v);
      }
    }
  }
  if (xlo > xhi) {
    xlo = 0;
    xhi = 1;
  }
  if (xlo == xhi) {
    xlo -= 1;
    xhi += 1;
  }
  if (ylo > yhi) {
    ylo = 0;
    yhi = clamp_hi > 0 ? clamp_hi : 1;
  }
  if (from_zero && ylo > 0)
    ylo = 0;
  double pad = (yhi - ylo) * 0.05;
  ylo = from_zero && ylo >= 0 ? ylo : ylo - pad;
  yhi += pad;
  if (clamp_hi > 0) {
    ylo = fmax(ylo, 0);
    yhi = fmin(yhi, clamp_hi);
  }
  p.ax = nice_axis(xlo, xhi, 8, 1);
  p.ay = nice_axis(ylo, yhi, 6, 0);
  if (clamp_hi > 0) {
    p.ay.lo = fmax(p.ay.lo, 0);
    p.ay.hi = fmin(p.ay.hi, clamp_hi);
  }

  // Panel title.
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  set_font(cr, 16, true);
  text_at(cr, p.x + p.w / 2, y0 + 20, title, 0.5, 0.5);

  // Grid and ticks.
  set_font(cr, 12, false);
  cairo_set_line_width(cr, 1);
  char buf[64];
  for (double v = p.ay.lo; v <= p.ay.hi + p.ay.step * 1e-6; v += p.ay.step) {
    double y = round(py(&p, v)) + 0.5;
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, p.x, y);
    cairo_line_to(cr, p.x + p.w, y);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
    cairo_move_to(cr, p.x - 5, y);
    cairo_line_to(cr, p.x, y);
    cairo_stroke(cr);
    tick_text(v, p.ay.step, buf, sizeof buf);
    text_at(cr, p.x - 8, y, buf, 1, 0.5);
  }
  for (double v = p.ax.lo; v <= p.ax.hi + p.ax.step * 1e-6; v += p.ax.step) {
    double x = round(px(&p, v)) + 0.5;
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, x, p.y);
    cairo_line_to(cr, x, p.y + p.h);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
    cairo_move_to(cr, x, p.y + p.h);
    cairo_line_to(cr, x, p.y + p.h + 5);
    cairo_stroke(cr);
    tick_text(v, p.ax.step, buf, sizeof buf);
    text_at(cr, x, p.y + p.h + 10, buf, 0.5, 1);
  }
  cairo_set_source_rgb(cr, 0.3, 0.3, 0.3);
  cairo_rectangle(cr, round(p.x) + 0.5, round(p.y) + 0.5, round(p.w), round(p.h));
  cairo_stroke(cr);

  // Axis labels.
  set_font(cr, 14, false);
  cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
  text_at(cr, p.x + p.w / 2, p.y + p.h + 44, "epoch", 0.5, 0);
  cairo_save(cr);
  cairo_translate(cr, x0 + 20, p.y + p.h / 2);
  cairo_rotate(cr, -M_PI / 2);
  text_at(cr, 0, 0, ylabel, 0.5, 0.5);
  cairo_restore(cr);

  // Curves, clipped to the plot area (and whole markers on its edges); a non-finite
  // value breaks the line.
  cairo_save(cr);
  cairo_rectangle(cr, p.x - 4, p.y - 4, p.w + 8, p.h + 8);
  cairo_clip(cr);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  cairo_set_line_cap(cr, CAIRO_LINE_CAP_ROUND);
  for (int s = 0; s < n_series; s++) {
    const Series *se = &series[s];
    cairo_set_source_rgb(cr, se->r, se->g, se->b);
    cairo_set_line_width(cr, 2.2);
    double dash[] = {7, 4};
    cairo_set_dash(cr, dash, se->dashed ? 2 : 0, 0);
    bool pen = false;
    for (int i = 0; i < n; i++) {
      double v = value(&rows[i], se->col, scale);
      if (!isfinite(v)) {
        pen = false;
        continue;
      }
      if (pen)
        cairo_line_to(cr, px(&p, rows[i].v[C_EPOCH]), py(&p, v));
      else
        cairo_move_to(cr, px(&p, rows[i].v[C_EPOCH]), py(&p, v));
      pen = true;
    }
    cairo_stroke(cr);
    cairo_set_dash(cr, NULL, 0, 0);
    if (n <= 60)  // markers, so a single epoch still shows
      for (int i = 0; i < n; i++) {
        double v = value(&rows[i], se->col, scale);
        if (isfinite(v)) {
          cairo_new_sub_path(cr);
          cairo_arc(cr, px(&p, rows[i].v[C_EPOCH]), py(&p, v), 3.2, 0, 2 * M_PI);
        }
      }
    cairo_fill(cr);
  }
  cairo_restore(cr);

  // Legend.
  set_font(cr, 13, false);
  double lw = 0, lh = 22 * n_series + 10;
  for (int s = 0; s < n_series; s++) {
    cairo_text_extents_t e;
    cairo_text_extents(cr, series[s].label, &e);
    lw = fmax(lw, e.x_advance);
  }
  lw += 52;
  double lx = p.x + p.w - lw - 10, ly = legend_top ? p.y + 10 : p.y + p.h - lh - 10;
  cairo_rectangle(cr, lx, ly, lw, lh);
  cairo_set_source_rgba(cr, 1, 1, 1, 0.88);
  cairo_fill_preserve(cr);
  cairo_set_source_rgb(cr, 0.75, 0.75, 0.75);
  cairo_set_line_width(cr, 1);
  cairo_stroke(cr);
  for (int s = 0; s < n_series; s++) {
    double y = ly + 16 + 22 * s;
    cairo_set_source_rgb(cr, series[s].r, series[s].g, series[s].b);
    cairo_set_line_width(cr, 2.2);
    double dash[] = {7, 4};
    cairo_set_dash(cr, dash, series[s].dashed ? 2 : 0, 0);
    cairo_move_to(cr, lx + 10, y);
    cairo_line_to(cr, lx + 38, y);
    cairo_stroke(cr);
    cairo_set_dash(cr, NULL, 0, 0);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    text_at(cr, lx + 44, y, series[s].label, 0, 0.35);
  }
}

static cairo_status_t png_to_memory(void *closure, const unsigned char *data, unsigned int len) {
  struct {
    uint8_t *buf;
    size_t size, cap;
  } *m = closure;
  if (m->size + len > m->cap) {
    m->cap = (m->size + len) * 2;
    m->buf = xrealloc(m->buf, m->cap);
  }
  memcpy(m->buf + m->size, data, len);
  m->size += len;
  return CAIRO_STATUS_SUCCESS;
}

bool metrics_plot(const char *csv, const char *png) {
  Row *rows;
  int n;
  if (!read_rows(csv, &rows, &n))
    return false;

  // Accuracies are fractions; shown in percent (a CSV that holds percents is left as is).
  double acc_max = 0;
  for (int i = 0; i < n; i++)
    for (int c = C_TRAIN_TOP1; c <= C_TEST_TOP5; c++)
      if (c != C_TEST_LOSS && isfinite(rows[i].v[c]))
        acc_max = fmax(acc_max, rows[i].v[c]);
  double scale = acc_max <= 1.0 ? 100 : 1;

  const int W = 1400, H = 600;
  cairo_surface_t *surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
  cairo_t *cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);

  // Title and a one-line summary.
  const char *base = strrchr(csv, '/') ? strrchr(csv, '/') + 1 : csv;
  char title[300], summary[300];
  snprintf(title, sizeof title, "Training curves \xe2\x80\x94 %s", base);
  if (n) {
    const Row *last = &rows[n - 1];
    int best = -1;
    for (int i = 0; i < n; i++)
      if (isfinite(rows[i].v[C_TEST_TOP1]) &&
          (best < 0 || rows[i].v[C_TEST_TOP1] > rows[best].v[C_TEST_TOP1]))
        best = i;
    int k = snprintf(summary, sizeof summary, "%d epoch%s, %lld steps", n, n == 1 ? "" : "s",
                     (long long)last->v[C_STEP]);
    if (best >= 0)
      k += snprintf(summary + k, sizeof summary - k, "  \xc2\xb7  best test top-1 %.2f%% (epoch %g)",
                    rows[best].v[C_TEST_TOP1] * scale, rows[best].v[C_EPOCH]);
    if (isfinite(last->v[C_LR]))
      k += snprintf(summary + k, sizeof summary - k, "  \xc2\xb7  lr %g", last->v[C_LR]);
    double seconds = 0;  // the column is each epoch's training time: the run's is the sum
    for (int i = 0; i < n; i++)
      seconds += isfinite(rows[i].v[C_SECONDS]) ? rows[i].v[C_SECONDS] : 0;
    if (k < (int)sizeof summary)
      snprintf(summary + k, sizeof summary - k, "  \xc2\xb7  %.1f min of training", seconds / 60);
  } else {
    snprintf(summary, sizeof summary, "no epochs recorded yet");
  }
  cairo_set_source_rgb(cr, 0.05, 0.05, 0.05);
  set_font(cr, 22, true);
  text_at(cr, W / 2.0, 30, title, 0.5, 0.5);
  cairo_set_source_rgb(cr, 0.35, 0.35, 0.35);
  set_font(cr, 14, false);
  text_at(cr, W / 2.0, 56, summary, 0.5, 0.5);

  static const Series loss[] = {{"train loss", C_TRAIN_LOSS, 0.122, 0.467, 0.706, false},
                                {"test loss", C_TEST_LOSS, 1.0, 0.498, 0.055, false}};
  static const Series acc[] = {{"train top-1", C_TRAIN_TOP1, 0.122, 0.467, 0.706, false},
                               {"test top-1", C_TEST_TOP1, 1.0, 0.498, 0.055, false},
                               {"test top-5", C_TEST_TOP5, 0.173, 0.627, 0.173, true}};
  draw_panel(cr, 10, 76, W / 2.0 - 20, H - 86, "Loss", "cross-entropy loss", rows, n, loss, 2, 1,
             true, 0, true);
  draw_panel(cr, W / 2.0 + 10, 76, W / 2.0 - 20, H - 86, "Accuracy",
             scale == 100 ? "accuracy (%)" : "accuracy", rows, n, acc, 3, scale, false,
             scale == 100 ? 100 : 0, false);
  free(rows);

  struct {
    uint8_t *buf;
    size_t size, cap;
  } mem = {0};
  cairo_status_t status = cairo_status(cr);
  cairo_destroy(cr);
  if (status == CAIRO_STATUS_SUCCESS)
    status = cairo_surface_write_to_png_stream(surface, png_to_memory, &mem);
  cairo_surface_destroy(surface);
  if (status != CAIRO_STATUS_SUCCESS) {
    free(mem.buf);
    error("cannot draw %s: %s", png, cairo_status_to_string(status));
    return false;
  }
  bool ok = rt_write_file_atomic(png, mem.buf, mem.size);  // temporary file, then rename
  free(mem.buf);
  if (!ok)
    error("%s", rt_error());
  return ok;
}

// ---------------------------------------------------------------- progress

static void eta_text(double s, char *buf, size_t size) {
  if (!isfinite(s) || s < 0 || s > 1e8) {
    snprintf(buf, size, "--:--");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, size, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(buf, size, "%02ld:%02ld", t / 60, t % 60);
}

// On a terminal, one line redrawn in place with \r (fitted to the terminal's width),
// ended with a newline when step reaches steps; call it as often as you like (every
// step is fine). Elsewhere (a log file, a pipe) each call prints a plain line, so the
// caller decides how often: every few hundred steps or seconds, not every step.
void progress_show(FILE *out, int epoch, int epochs, int64_t step, int64_t steps, double loss,
                   double images_per_s, double eta_s) {
  char eta[32];
  eta_text(eta_s, eta, sizeof eta);
  if (!isatty(fileno(out))) {
    fprintf(out, "epoch %d/%d step %lld/%lld loss %.4f %.0f img/s eta %s\n", epoch, epochs,
            (long long)step, (long long)steps, loss, images_per_s, eta);
    fflush(out);
    return;
  }
  char left[96], right[128];
  snprintf(left, sizeof left, "epoch %d/%d  step %lld/%lld ", epoch, epochs, (long long)step,
           (long long)steps);
  double frac = steps > 0 ? (double)step / (double)steps : 0;
  frac = frac < 0 ? 0 : frac > 1 ? 1 : frac;
  snprintf(right, sizeof right, " %3.0f%%  loss %.4f  %.0f img/s  ETA %s", 100 * frac, loss,
           images_per_s, eta);
  int cols = 80;
  struct winsize ws;
  if (ioctl(fileno(out), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
    cols = ws.ws_col;
  int width = cols - 1 - (int)strlen(left) - (int)strlen(right) - 2;
  if (width > 40)
    width = 40;
  char bar[48] = "";
  if (width >= 8) {
    int fill = (int)(frac * width + 0.5);
    bar[0] = '[';
    for (int i = 0; i < width; i++)
      bar[1 + i] = i < fill ? '=' : i == fill ? '>' : ' ';
    bar[1 + width] = ']';
    bar[2 + width] = 0;
  }
  fprintf(out, "\r%s%s%s\033[K", left, bar, right);
  if (steps > 0 && step >= steps)
    fputc('\n', out);
  fflush(out);
}
