// `alexc golden record|check`: golden-output regression tests for users' networks.
//
// A golden directory holds golden.yaml (the manifest), a copy of the spec, and one
// .npy per recorded output. Weights are regenerated from the recorded seed; the input
// is either regenerated from a seed or stored as input.npy. `check` re-runs the
// network and reports the worst element of every output against the tolerance.
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "cli.h"

#define MAX_OUTPUTS 64
#define MAX_MANIFEST (64 << 10)

static const char GOLDEN_HELP[] =
    "usage: alexc golden record SPEC --seed S -o DIR [options]\n"
    "       alexc golden check DIR [--target ref|cpu] [--cpu NAME] [--threads N] [--no-fuse]\n"
    "                          [--fuse=LIST] [--devices N]\n"
    "\n"
    "record: runs SPEC with weights initialised from seed S and writes DIR/golden.yaml,\n"
    "        DIR/spec.yaml and one LAYER.npy per recorded output.\n"
    "  --batch N          images in the batch (default 2)\n"
    "  --scheme SCHEME    weight init: 'spec' (default) or 'fan-in' (see alexc init)\n"
    "  --input X.npy      record this input (copied to DIR/input.npy); default: N(0,1)\n"
    "                     noise regenerated from --input-seed (default 1) at check time\n"
    "  --layers A,B,...   outputs to record (default: the network's output)\n"
    "  --tolerance T      max relative error allowed at check time (default 1e-4)\n"
    "  --force            replace an existing golden test in DIR\n"
    "\n"
    "check:  re-runs the recorded test and prints, for each output, the worst element and\n"
    "        its relative error, max|got - want| / max|want|. Exit 0 if all are within the\n"
    "        tolerance, 1 otherwise. The compile options choose the plan that is checked:\n"
    PASS_OPTIONS_HELP;

typedef struct {
  char *spec;  // path relative to the manifest's directory
  uint64_t seed, input_seed;
  InitScheme scheme;
  int batch;
  char *input;  // stored input file, or NULL for input_seed
  double tolerance;
  int n_outputs;
  char *layer[MAX_OUTPUTS], *file[MAX_OUTPUTS];
} Manifest;

static void manifest_free(Manifest *m) {
  free(m->spec);
  free(m->input);
  for (int i = 0; i < m->n_outputs; i++) {
    free(m->layer[i]);
    free(m->file[i]);
  }
}

static char *join(const char *dir, const char *file) { return format("%s/%s", dir, file); }

// ---------------------------------------------------------------- manifest reading

typedef struct {
  const char *path;
  yaml_document_t *doc;
} Doc;

static bool bad(Doc *d, yaml_node_t *n, const char *msg, const char *key) {
  error_at((SrcLoc){d->path, (int)n->start_mark.line + 1, (int)n->start_mark.column + 1}, msg, key);
  return false;
}

static const char *scalar_of(yaml_node_t *n) {
  return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

// A stored file name: no directories, nothing hidden, so a manifest cannot point
// outside its own directory.
static bool plain_file_name(const char *s) {
  return s && *s && *s != '.' && !strchr(s, '/') && strlen(s) < 200;
}

static bool read_outputs(Doc *d, yaml_node_t *v, Manifest *m) {
  if (v->type != YAML_SEQUENCE_NODE)
    return bad(d, v, "'%s' must be a list of {layer, file}", "outputs");
  for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
    yaml_node_t *o = yaml_document_get_node(d->doc, *it);
    if (m->n_outputs == MAX_OUTPUTS)
      return bad(d, o, "too many outputs%s", "");
    if (o->type != YAML_MAPPING_NODE)
      return bad(d, o, "each output must be a mapping {layer, file}%s", "");
    const char *layer = NULL, *file = NULL;
    for (yaml_node_pair_t *p = o->data.mapping.pairs.start; p < o->data.mapping.pairs.top; p++) {
      const char *k = scalar_of(yaml_document_get_node(d->doc, p->key));
      const char *val = scalar_of(yaml_document_get_node(d->doc, p->value));
      if (k && !strcmp(k, "layer"))
        layer = val;
      else if (k && !strcmp(k, "file"))
        file = val;
      else
        return bad(d, yaml_document_get_node(d->doc, p->key), "unknown key '%s' in an output",
                   k ? k : "?");
    }
    if (!layer || !plain_file_name(file))
      return bad(d, o, "an output needs 'layer' and a plain 'file' name%s", "");
    m->layer[m->n_outputs] = xstrdup(layer);
    m->file[m->n_outputs++] = xstrdup(file);
  }
  return m->n_outputs ? true : bad(d, v, "'%s' is empty", "outputs");
}

static bool read_key(Doc *d, const char *k, yaml_node_t *v, Manifest *m) {
  const char *s = scalar_of(v);
  if (!strcmp(k, "outputs"))
    return read_outputs(d, v, m);
  if (!s)
    return bad(d, v, "'%s' must be a single value", k);
  if (!strcmp(k, "spec")) {
    free(m->spec);
    m->spec = xstrdup(s);
    return true;
  }
  if (!strcmp(k, "input")) {
    free(m->input);
    m->input = xstrdup(s);
    return plain_file_name(s) || bad(d, v, "'%s' must be a file name in the golden directory", k);
  }
  if (!strcmp(k, "seed"))
    return parse_u64(s, &m->seed) || bad(d, v, "'%s' must be an unsigned integer", k);
  if (!strcmp(k, "input_seed"))
    return parse_u64(s, &m->input_seed) || bad(d, v, "'%s' must be an unsigned integer", k);
  if (!strcmp(k, "init"))
    return parse_init_scheme(s, &m->scheme) || bad(d, v, "'%s' must be 'spec' or 'fan-in'", k);
  if (!strcmp(k, "batch"))
    return parse_int_in(s, 1, 65536, &m->batch) || bad(d, v, "'%s' must be from 1 to 65536", k);
  if (!strcmp(k, "tolerance")) {
    char *end;
    m->tolerance = strtod(s, &end);
    return (!*end && m->tolerance >= 0 && isfinite(m->tolerance)) ||
           bad(d, v, "'%s' must be a non-negative number", k);
  }
  return bad(d, v, "unknown key '%s' in a golden manifest", k);
}

static bool manifest_read(const char *path, Manifest *m) {
  *m = (Manifest){.batch = 0, .tolerance = -1, .input_seed = 1};
  uint8_t *text;
  size_t len;
  if (!rt_read_file(path, MAX_MANIFEST, &text, &len)) {
    error("%s", rt_error());
    return false;
  }
  yaml_parser_t parser;
  yaml_document_t doc;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_string(&parser, text, len);
  bool ok = yaml_parser_load(&parser, &doc);
  if (!ok) {
    error_at((SrcLoc){path, (int)parser.problem_mark.line + 1, (int)parser.problem_mark.column + 1},
             "malformed YAML: %s", parser.problem ? parser.problem : "syntax error");
  } else {
    Doc d = {path, &doc};
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    ok = root && root->type == YAML_MAPPING_NODE;
    if (!ok)
      error_at((SrcLoc){path, 1, 1}, "a golden manifest must be a mapping");
    for (yaml_node_pair_t *p = ok ? root->data.mapping.pairs.start : NULL;
         ok && p < root->data.mapping.pairs.top; p++) {
      yaml_node_t *k = yaml_document_get_node(&doc, p->key);
      ok = scalar_of(k) ? read_key(&d, scalar_of(k), yaml_document_get_node(&doc, p->value), m)
                        : bad(&d, k, "keys must be plain words%s", "");
    }
    if (ok && (!m->spec || !m->batch || m->tolerance < 0 || !m->n_outputs)) {
      error_at((SrcLoc){path, 1, 1}, "a golden manifest needs spec, seed, batch, tolerance and outputs");
      ok = false;
    }
    yaml_document_delete(&doc);
  }
  yaml_parser_delete(&parser);
  free(text);
  if (!ok)
    manifest_free(m);
  return ok;
}

// ---------------------------------------------------------------- check

// "[1, 417]" or "[0, 95, 12, 3]": the position of a flat index in (N, shape).
static void position(Shape s, int64_t at, char *buf, size_t size) {
  int64_t per = shape_elems(s);
  int64_t n = at / per, r = at % per;
  if (s.rank == 1)
    snprintf(buf, size, "[%lld, %lld]", (long long)n, (long long)r);
  else
    snprintf(buf, size, "[%lld, %lld, %lld, %lld]", (long long)n, (long long)(r / (s.h * s.w)),
             (long long)(r / s.w % s.h), (long long)(r % s.w));
}

// Compares one recorded output (`got`, gathered from the run); prints its report line.
static bool check_output(const Graph *g, int node, const float *got, int batch, const char *dir,
                         const Manifest *m, int k) {
  char *path = join(dir, m->file[k]);
  RtTensor want;
  bool ok = rt_npy_load(path, &want);
  if (!ok)
    error("%s", rt_error());
  else if (want.elems != shape_elems(g->nodes[node].out) * batch) {
    error("%s: has %lld elements, but layer '%s' gives %lld for a batch of %d", path,
          (long long)want.elems, m->layer[k], (long long)(shape_elems(g->nodes[node].out) * batch),
          batch);
    ok = false;
  }
  if (ok) {
    Compare c = compare(got, want.data, want.elems);
    char pos[96], shp[64];
    position(g->nodes[node].out, c.at, pos, sizeof pos);
    ok = c.rel <= m->tolerance;
    printf("  %-14s %-12s max rel err %-9.3g worst %-20s got %-13.7g want %-13.7g %s\n",
           m->layer[k], shape_str(g->nodes[node].out, shp, sizeof shp), c.rel, pos, got[c.at],
           want.data[c.at], ok ? "ok" : "FAIL");
  }
  rt_tensor_free(&want);
  free(path);
  return ok;
}

// Compiles g keeping `layers` observable, runs it, and returns their outputs in
// outs (and their nodes in nodes); false (message printed) on error.
static bool run_layers(Graph *g, const Weights *w, const PassOptions *passes, char *const *layers,
                       int n, const float *x, int batch, const Target *t,
                       const TargetOptions *o, int *nodes, float **outs) {
  if (!compile_graph(g, passes, layers, n))
    return false;
  for (int k = 0; k < n; k++)
    nodes[k] = graph_find_value(g, layers[k]);
  return t->run(g, w, x, batch, nodes, n, o, outs);
}

static int golden_check(const char *dir, const char *target, const PassOptions *passes,
                        const TargetOptions *topts) {
  char *mpath = join(dir, "golden.yaml");
  Manifest m;
  if (!manifest_read(mpath, &m)) {
    free(mpath);
    return EXIT_ERR;
  }
  char *spec = m.spec[0] == '/' ? xstrdup(m.spec) : join(dir, m.spec);
  Graph *g = load_spec(spec);
  float *x = NULL;
  int batch = m.batch;
  bool ok = g != NULL;
  if (ok && m.input) {
    char *ipath = join(dir, m.input);
    ok = load_input(g, ipath, &x, &batch);
    if (ok && batch != m.batch) {
      error("%s: holds %d images, but the manifest says %d", ipath, batch, m.batch);
      ok = false;
    }
    free(ipath);
  } else if (ok) {
    x = random_input(g, batch, m.input_seed);
  }
  if (ok) {
    printf("golden %s: network %s, batch %d, seed %llu (%s init), target %s, tolerance %g\n", dir,
           g->name, batch, (unsigned long long)m.seed, m.scheme == INIT_SPEC ? "spec" : "fan-in",
           target, m.tolerance);
    Weights *w = weights_init(g, m.seed, m.scheme);
    int nodes[MAX_OUTPUTS];
    float *outs[MAX_OUTPUTS] = {0};
    ok = run_layers(g, w, passes, m.layer, m.n_outputs, x, batch, target_find(target), topts,
                    nodes, outs);
    for (int k = 0; ok && k < m.n_outputs; k++)
      ok = check_output(g, nodes[k], outs[k], batch, dir, &m, k) && ok;
    for (int k = 0; k < m.n_outputs; k++)
      free(outs[k]);
    weights_free(w);
    printf("%s\n", ok ? "PASS" : "FAIL");
  }
  free(x);
  graph_free(g);
  free(spec);
  manifest_free(&m);
  free(mpath);
  return ok ? EXIT_OK : EXIT_ERR;
}

// ---------------------------------------------------------------- record

typedef struct {
  const char *spec, *dir, *input, *layers;
  uint64_t seed, input_seed;
  bool have_seed, force;
  InitScheme scheme;
  int batch;
  double tolerance;
} RecordArgs;

static bool make_dir(const char *dir) {
  if (mkdir(dir, 0777) == 0 || errno == EEXIST) {
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
      return true;
  }
  error("%s: cannot create directory: %s", dir, strerror(errno == 0 ? ENOTDIR : errno));
  return false;
}

static bool copy_file(const char *from, const char *to) {
  uint8_t *data;
  size_t len;
  bool ok = rt_read_file(from, 1 << 20, &data, &len) && rt_write_file_atomic(to, data, len);
  if (!ok)
    error("%s", rt_error());
  free(data);
  return ok;
}

// Splits "a,b,c" into layer names (allocated); -1 (message printed) if too many.
static int parse_layers(const Graph *g, const char *list, char **names) {
  if (!list) {
    names[0] = xstrdup(g->nodes[g->output].name);
    return 1;
  }
  int n = 0;
  char *copy = xstrdup(list), *save = NULL;
  for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    if (n == MAX_OUTPUTS) {
      error("--layers: at most %d layers", MAX_OUTPUTS);
      n = -1;
      break;
    }
    names[n++] = xstrdup(t);
  }
  free(copy);
  return n;
}

static bool write_manifest(const RecordArgs *a, const Graph *g, char *const *names, int n) {
  char *text = format("# alexc golden test of network '%s'. Check it with: alexc golden check DIR\n"
                      "spec: spec.yaml\nseed: %llu\ninit: %s\nbatch: %d\n",
                      g->name, (unsigned long long)a->seed,
                      a->scheme == INIT_SPEC ? "spec" : "fan-in", a->batch);
  char *more = a->input ? format("%sinput: input.npy\n", text)
                        : format("%sinput_seed: %llu\n", text, (unsigned long long)a->input_seed);
  free(text);
  text = format("%stolerance: %g\noutputs:\n", more, a->tolerance);
  free(more);
  for (int i = 0; i < n; i++) {
    more = format("%s  - {layer: %s, file: %s.npy}\n", text, names[i], names[i]);
    free(text);
    text = more;
  }
  char *path = join(a->dir, "golden.yaml");
  bool ok = rt_write_file_atomic(path, text, strlen(text));
  if (!ok)
    error("%s", rt_error());
  free(path);
  free(text);
  return ok;
}

static int golden_record(const RecordArgs *a) {
  char *mpath = join(a->dir, "golden.yaml");
  struct stat st;
  if (!a->force && stat(mpath, &st) == 0) {
    error("%s already exists; use --force to replace this golden test", mpath);
    free(mpath);
    return EXIT_ERR;
  }
  free(mpath);
  Graph *g = load_spec(a->spec);
  if (!g)
    return EXIT_ERR;
  RecordArgs args = *a;
  char *names[MAX_OUTPUTS] = {0};
  int nodes[MAX_OUTPUTS];
  float *outs[MAX_OUTPUTS] = {0};
  int n = parse_layers(g, a->layers, names);
  float *x = NULL;
  Weights *w = weights_init(g, a->seed, a->scheme);
  PassOptions passes = pass_defaults();
  bool ok = n > 0 && make_dir(a->dir);
  if (ok && a->input)
    ok = load_input(g, a->input, &x, &args.batch);
  else if (ok)
    x = random_input(g, a->batch, a->input_seed);
  TargetOptions none = {0};  // goldens are recorded by the oracle
  ok = ok && run_layers(g, w, &passes, names, n, x, args.batch, target_find("ref"), &none, nodes,
                        outs);
  for (int i = 0; ok && i < n; i++) {
    char *path = format("%s/%s.npy", a->dir, names[i]);
    ok = save_output(g, nodes[i], outs[i], args.batch, path);
    free(path);
  }
  weights_free(w);
  char *spec_copy = join(a->dir, "spec.yaml");
  char *input_copy = join(a->dir, "input.npy");
  ok = ok && copy_file(a->spec, spec_copy) &&
       (!a->input || save_output(g, 0, x, args.batch, input_copy)) &&
       write_manifest(&args, g, names, n);  // last, so a half-recorded test has no manifest
  if (ok)
    printf("recorded %d output(s) of '%s' (batch %d) in %s\n", n, g->name, args.batch, a->dir);
  for (int i = 0; i < MAX_OUTPUTS; i++) {
    free(names[i]);
    free(outs[i]);
  }
  free(spec_copy);
  free(input_copy);
  free(x);
  graph_free(g);
  return ok ? EXIT_OK : EXIT_ERR;
}

static int parse_record(int argc, char **argv, RecordArgs *a) {
  static const struct option opts[] = {
      {"seed", required_argument, 0, 's'},   {"output", required_argument, 0, 'o'},
      {"batch", required_argument, 0, 'b'},  {"scheme", required_argument, 0, 'S'},
      {"input", required_argument, 0, 'i'},  {"input-seed", required_argument, 0, 'I'},
      {"layers", required_argument, 0, 'l'}, {"tolerance", required_argument, 0, 't'},
      {"force", no_argument, 0, 'f'},        {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  *a = (RecordArgs){.batch = 2, .tolerance = 1e-4, .input_seed = 1};
  int c;
  char *end;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case 's':
      if (!(a->have_seed = parse_u64(optarg, &a->seed)))
        return usage_error("golden record", "--seed wants an unsigned integer, not '%s'", optarg);
      break;
    case 'I':
      if (!parse_u64(optarg, &a->input_seed))
        return usage_error("golden record", "--input-seed wants an unsigned integer");
      break;
    case 'o': a->dir = optarg; break;
    case 'i': a->input = optarg; break;
    case 'l': a->layers = optarg; break;
    case 'f': a->force = true; break;
    case 'b':
      if (!parse_int_in(optarg, 1, 65536, &a->batch))
        return usage_error("golden record", "--batch wants an integer from 1 to 65536");
      break;
    case 'S':
      if (!parse_init_scheme(optarg, &a->scheme))
        return usage_error("golden record", "--scheme is 'spec' or 'fan-in'");
      break;
    case 't':
      a->tolerance = strtod(optarg, &end);
      if (*end || !(a->tolerance >= 0) || !isfinite(a->tolerance))
        return usage_error("golden record", "--tolerance wants a non-negative number");
      break;
    case 'h':
      fputs(GOLDEN_HELP, stdout);
      return -1;
    default:
      return usage_error("golden record", "unknown option");
    }
  }
  if (optind + 1 != argc)
    return usage_error("golden record", "expected one SPEC file");
  if (!a->have_seed || !a->dir)
    return usage_error("golden record", "--seed and -o DIR are required");
  a->spec = argv[optind];
  return EXIT_OK;
}

static int parse_check(int argc, char **argv, const char **dir, const char **target,
                       PassOptions *passes, TargetOptions *topts) {
  static const struct option opts[] = {{"target", required_argument, 0, 'T'},
                                       {"help", no_argument, 0, 'h'},
                                       {"cpu", required_argument, 0, 'C'},
                                       {"threads", required_argument, 0, 'N'},
                                       PASS_LONG_OPTIONS,
                                       {0, 0, 0, 0}};
  *target = "ref";
  *passes = pass_defaults();
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    int rc = pass_option("golden check", c, optarg, passes);
    if (rc > 0)
      return rc;
    if (rc == 0)
      continue;
    if (c == 'T')
      *target = optarg;
    else if (c == 'C')
      topts->cpu.cpu = optarg;
    else if (c == 'N' && !parse_int_in(optarg, 1, 256, &topts->cpu.threads))
      return usage_error("golden check", "--threads wants 1 to 256, not '%s'", optarg);
    else if (c == 'N')
      continue;
    else if (c == 'h') {
      fputs(GOLDEN_HELP, stdout);
      return -1;
    } else
      return usage_error("golden check", "unknown option");
  }
  if (optind + 1 != argc)
    return usage_error("golden check", "expected one golden directory");
  const Target *t = target_find(*target);
  if (!t || !t->run)
    return usage_error("golden check", "unknown target '%s' (targets: ref, cpu)", *target);
  *dir = argv[optind];
  return EXIT_OK;
}

int cmd_golden(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(GOLDEN_HELP, argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_USAGE : EXIT_OK;
  }
  int rc;
  if (!strcmp(argv[1], "record")) {
    RecordArgs a;
    rc = parse_record(argc - 1, argv + 1, &a);
    return rc ? (rc < 0 ? EXIT_OK : rc) : golden_record(&a);
  }
  if (!strcmp(argv[1], "check")) {
    const char *dir = NULL, *target = NULL;
    PassOptions passes;
    TargetOptions topts = {0};
    rc = parse_check(argc - 1, argv + 1, &dir, &target, &passes, &topts);
    return rc ? (rc < 0 ? EXIT_OK : rc) : golden_check(dir, target, &passes, &topts);
  }
  return usage_error("golden", "unknown subcommand '%s' (record or check)", argv[1]);
}
