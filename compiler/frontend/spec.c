// The frontend: a YAML network spec (docs/spec-format.md) -> a Graph.
//
// Specs are untrusted input. Everything is checked and reported once as
// FILE:LINE:COL: error: ... — unknown keys (with a suggestion for typos), wrong
// types, out-of-range values, duplicate or dangling names and cycles. Layer names
// are restricted to a safe alphabet so they can reach generated code and file
// names; backends still sanitize what they emit.
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "../alexc.h"

#define MAX_SPEC_BYTES (1 << 20)
#define MAX_LAYERS 4096
#define MAX_NAME MAX_LAYER_NAME
#define MAX_DIM (1 << 20)
#define MAX_DEPTH 32  // nesting of YAML collections; libyaml is quadratic in flow depth

typedef struct {
  const char *path;
  yaml_document_t *doc;
} Ctx;

// A layer as written, before it becomes a node: enough to resolve names and cycles.
typedef struct {
  const char *name;
  SrcLoc loc;
  yaml_node_t *map;
  yaml_node_t *inputs;  // the `inputs:` value, or NULL for "the previous layer"
} RawLayer;

static SrcLoc loc_of(Ctx *cx, yaml_node_t *node) {
  return (SrcLoc){cx->path, (int)node->start_mark.line + 1, (int)node->start_mark.column + 1};
}

static const char *scalar(yaml_node_t *node) {
  return node && node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value : NULL;
}

static yaml_node_t *node_at(Ctx *cx, int id) { return yaml_document_get_node(cx->doc, id); }

// A user's string as messages show it: control characters escaped and long strings
// cut, so that every message stays one short line. Returns one of a few static buffers.
static const char *shown(const char *s) {
  static char bufs[8][96];
  static int next;
  char *b = bufs[next++ % 8];
  size_t o = 0;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (o > 60 && (c & 0xC0) != 0x80) {  // cut only between UTF-8 characters
      memcpy(b + o, "...", 4);
      return b;
    }
    if (c == '\n')
      o += (size_t)snprintf(b + o, 8, "\\n");
    else if (c < 0x20 || c == 0x7F)
      o += (size_t)snprintf(b + o, 8, "\\x%02X", c);
    else
      b[o++] = (char)c;
  }
  b[o] = 0;
  return b;
}

// What a wrongly typed value is, for "must be ..., not X" messages.
static const char *describe(yaml_node_t *v) {
  static char bufs[2][128];
  static int next;
  if (v->type == YAML_SEQUENCE_NODE)
    return "a list";
  if (v->type == YAML_MAPPING_NODE)
    return "a mapping";
  const char *s = scalar(v);
  if (!*s && v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
    return "an empty value";
  char *b = bufs[next++ % 2];
  snprintf(b, sizeof bufs[0], v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? "'%s'"
                                                                        : "the quoted string '%s'",
           shown(s));
  return b;
}

// ---------------------------------------------------------------- mappings

static bool in_list(const char *s, const char *const *words) {
  for (; *words; words++)
    if (!strcmp(s, *words))
      return true;
  return false;
}

static int list_len(const char *const *words) {
  int n = 0;
  while (words[n])
    n++;
  return n;
}

static bool need_map(Ctx *cx, yaml_node_t *node, const char *what) {
  if (node->type == YAML_MAPPING_NODE)
    return true;
  error_at(loc_of(cx, node), "%s must be a mapping of keys to values", what);
  return false;
}

// Every key must be a scalar; lookup() relies on it. YAML merge keys ('<<')
// are not expanded by libyaml, so they are refused here rather than read as a key.
static bool plain_keys(Ctx *cx, yaml_node_t *map, const char *what) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = node_at(cx, p->key);
    const char *key = scalar(k);
    if (!key) {
      error_at(loc_of(cx, k), "keys of %s must be plain words, not %s", what, describe(k));
      return false;
    }
    if (!strcmp(key, "<<") && k->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
      error_at(loc_of(cx, k), "YAML merge keys ('<<') are not supported; write the keys of %s "
               "out in full", what);
      return false;
    }
  }
  return true;
}

static const char *const *op_keys(OpKind op);

// Every key must be a scalar, unique, and one of `allowed` (NULL-terminated). For a
// layer (`op` < OP_COUNT), a key of another op says which ops take it.
static bool check_keys(Ctx *cx, yaml_node_t *map, const char *const *allowed, const char *what,
                       OpKind op) {
  if (!plain_keys(cx, map, what))
    return false;
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = node_at(cx, p->key);
    const char *key = scalar(k);
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++)
      if (!strcmp(scalar(node_at(cx, q->key)), key)) {
        error_at(loc_of(cx, k), "duplicate key '%s' in %s (first at line %d)", shown(key), what,
                 (int)node_at(cx, q->key)->start_mark.line + 1);
        return false;
      }
    if (in_list(key, allowed))
      continue;
    char owners[128] = "";
    for (int o = OP_CONV; op < OP_COUNT && o < OP_COUNT; o++)
      if (o != (int)op && in_list(key, op_keys((OpKind)o)))
        snprintf(owners + strlen(owners), sizeof owners - strlen(owners), "%s%s",
                 *owners ? ", " : "", op_name((OpKind)o));
    const char *s = closest_word(key, allowed, list_len(allowed));
    char keys[160] = "";
    for (const char *const *a = op < OP_COUNT ? op_keys(op) : allowed; *a; a++)
      snprintf(keys + strlen(keys), sizeof keys - strlen(keys), "%s%s", *keys ? ", " : "", *a);
    if (*owners)
      error_at(loc_of(cx, k), "unknown key '%s' in %s: '%s' is for %s layers; %s layers take %s",
               key, what, key, owners, op_name(op), *keys ? keys : "no attributes");
    else if (s)
      error_at(loc_of(cx, k), "unknown key '%s' in %s; did you mean '%s'?", shown(key), what, s);
    else if (op < OP_COUNT)
      error_at(loc_of(cx, k), "unknown key '%s' in %s (%s layers take name, op, inputs%s%s)",
               shown(key), what, op_name(op), *keys ? ", " : "", keys);
    else
      error_at(loc_of(cx, k), "unknown key '%s' in %s (expected %s)", shown(key), what, keys);
    return false;
  }
  return true;
}

static yaml_node_t *lookup(Ctx *cx, yaml_node_t *map, const char *key) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++)
    if (!strcmp(scalar(node_at(cx, p->key)), key))
      return node_at(cx, p->value);
  return NULL;
}

// ---------------------------------------------------------------- typed values

static bool missing(Ctx *cx, yaml_node_t *map, const char *key, const char *what) {
  error_at(loc_of(cx, map), "%s is missing required key '%s'", what, key);
  return false;
}

static bool get_string(Ctx *cx, yaml_node_t *map, const char *key, const char *what,
                       const char **out) {
  yaml_node_t *v = lookup(cx, map, key);
  if (!v)
    return missing(cx, map, key, what);
  if (!scalar(v) || !*scalar(v)) {
    error_at(loc_of(cx, v), "'%s' in %s must be a non-empty string, not %s", key, what,
             describe(v));
    return false;
  }
  *out = scalar(v);
  return true;
}

// An integer scalar node in [lo, hi] (get_int() for a node that is not a map's value,
// such as a list element); `what` names it in messages.
static bool node_int(Ctx *cx, yaml_node_t *v, const char *what, long lo, long hi, int *out) {
  const char *s = scalar(v);
  char *end = NULL;
  errno = 0;
  long val = s ? strtol(s, &end, 10) : 0;
  if (!s || !*s || *end || isspace((unsigned char)*s) ||
      v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
    error_at(loc_of(cx, v), "%s must be an integer, not %s", what, describe(v));
    return false;
  }
  if (errno == ERANGE || val < lo || val > hi) {
    error_at(loc_of(cx, v), "%s must be between %ld and %ld, not %s", what, lo, hi, shown(s));
    return false;
  }
  *out = (int)val;
  return true;
}

// An integer in [lo, hi]; when `required` is false and the key is absent, *out keeps its default.
static bool get_int(Ctx *cx, yaml_node_t *map, const char *key, const char *what, bool required,
                    long lo, long hi, int *out) {
  yaml_node_t *v = lookup(cx, map, key);
  if (!v)
    return required ? missing(cx, map, key, what) : true;
  char named[160];
  snprintf(named, sizeof named, "'%s' in %s", key, what);
  return node_int(cx, v, named, lo, hi, out);
}

static bool get_number(Ctx *cx, yaml_node_t *map, const char *key, const char *what, bool required,
                       double lo, double hi, double *out) {
  yaml_node_t *v = lookup(cx, map, key);
  if (!v)
    return required ? missing(cx, map, key, what) : true;
  const char *s = scalar(v);
  char *end = NULL;
  double val = s ? strtod(s, &end) : 0;
  // Decimal notation only: strtod would also take "inf", "nan" and hexadecimal.
  if (!s || !*s || *end || s[strspn(s, "0123456789+-.eE")] ||
      v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
    error_at(loc_of(cx, v), "'%s' in %s must be a number, not %s", key, what, describe(v));
    return false;
  }
  if (!isfinite(val) || val < lo || val > hi) {
    error_at(loc_of(cx, v), "'%s' in %s must be between %g and %g, not %s", key, what, lo, hi,
             shown(s));
    return false;
  }
  *out = val;
  return true;
}

static bool get_bool(Ctx *cx, yaml_node_t *map, const char *key, const char *what, bool *out) {
  yaml_node_t *v = lookup(cx, map, key);
  if (!v)
    return true;
  const char *s = v->type == YAML_SCALAR_NODE && v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE
                      ? scalar(v)
                      : NULL;
  if (s && !strcmp(s, "true"))
    *out = true;
  else if (s && !strcmp(s, "false"))
    *out = false;
  else {
    error_at(loc_of(cx, v), "'%s' in %s must be true or false, not %s", key, what, describe(v));
    return false;
  }
  return true;
}

// `pad:` of a conv or maxpool: P (all four sides), [h, w] (top and bottom h, left and
// right w), [top, left, bottom, right] (ONNX's order), or `same` (chosen from the input
// by graph_infer()). Absent: no padding.
static bool get_pad(Ctx *cx, yaml_node_t *map, const char *what, Pads *out) {
  *out = (Pads){0};
  yaml_node_t *v = lookup(cx, map, "pad");
  if (!v)
    return true;
  char elem[160];
  if (v->type == YAML_SCALAR_NODE && v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
      !strcmp(scalar(v), "same")) {
    out->same = true;
    return true;
  }
  const char *s = scalar(v);
  bool digits = s && *s && !s[strspn(s, "+-0123456789")];
  if (v->type == YAML_SCALAR_NODE && digits) {
    int p;
    snprintf(elem, sizeof elem, "'pad' in %s", what);
    if (!node_int(cx, v, elem, 0, 1024, &p))
      return false;
    *out = (Pads){p, p, p, p, false};
    return true;
  }
  int n = v->type == YAML_SEQUENCE_NODE
              ? (int)(v->data.sequence.items.top - v->data.sequence.items.start)
              : -1;
  if (v->type == YAML_SCALAR_NODE || (n != 2 && n != 4)) {
    char items[32];
    snprintf(items, sizeof items, "a list of %d item%s", n, n == 1 ? "" : "s");
    error_at(loc_of(cx, v), "'pad' in %s must be an integer, [h, w], [top, left, bottom, right] "
             "or same, not %s", what, n < 0 ? describe(v) : items);
    return false;
  }
  int p[4];
  for (int i = 0; i < n; i++) {
    yaml_node_t *item = node_at(cx, v->data.sequence.items.start[i]);
    snprintf(elem, sizeof elem, "item %d of 'pad' in %s", i + 1, what);
    if (!node_int(cx, item, elem, 0, 1024, &p[i]))
      return false;
  }
  *out = n == 2 ? (Pads){p[0], p[1], p[0], p[1], false} : (Pads){p[0], p[1], p[2], p[3], false};
  return true;
}

// ---------------------------------------------------------------- names

bool layer_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > MAX_NAME || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
    return false;
  for (size_t i = 0; i < n; i++)
    if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == '.' || s[i] == '-'))
      return false;
  return true;
}

static bool check_name(Ctx *cx, yaml_node_t *v, const char *s, const char *what) {
  if (layer_name_ok(s))
    return true;
  if (strlen(s) > MAX_NAME) {
    error_at(loc_of(cx, v), "%s '%s' is %zu characters long; the limit is %d", what, shown(s),
             strlen(s), MAX_NAME);
    return false;
  }
  error_at(loc_of(cx, v),
           "%s '%s' is not a valid name (a letter or '_', then letters, digits, '_', '.', '-'; "
           "at most %d characters)",
           what, shown(s), MAX_NAME);
  return false;
}

// ---------------------------------------------------------------- network header

static bool parse_init(Ctx *cx, yaml_node_t *v, const char *what, InitRule *rule) {
  static const char *const keys[] = {"weight_std", "bias", "bias_std", NULL};
  if (!need_map(cx, v, what) || !check_keys(cx, v, keys, what, OP_COUNT))
    return false;
  return get_number(cx, v, "weight_std", what, false, 0, 1e6, &rule->weight_std) &&
         get_number(cx, v, "bias", what, false, -1e6, 1e6, &rule->bias) &&
         get_number(cx, v, "bias_std", what, false, 0, 1e6, &rule->bias_std);
}

static bool parse_input(Ctx *cx, yaml_node_t *v, Graph *g) {
  static const char *const keys[] = {"channels", "height", "width", NULL};
  const char *what = "the network input";
  if (!need_map(cx, v, what) || !check_keys(cx, v, keys, what, OP_COUNT))
    return false;
  int c, h, w;
  if (!get_int(cx, v, "channels", what, true, 1, MAX_DIM, &c) ||
      !get_int(cx, v, "height", what, true, 1, MAX_DIM, &h) ||
      !get_int(cx, v, "width", what, true, 1, MAX_DIM, &w))
    return false;
  int idx = graph_add(g, "input", OP_INPUT, loc_of(cx, v));
  g->nodes[idx].out = (Shape){.rank = 3, .c = c, .h = h, .w = w};
  return true;
}

// ---------------------------------------------------------------- layers

static const char *const COMMON_KEYS[] = {"name", "op", "inputs"};

// The keys each op accepts besides COMMON_KEYS (NULL-terminated): the op table's.
static const char *const *op_keys(OpKind op) { return op_info(op)->keys; }

static bool check_layer_keys(Ctx *cx, yaml_node_t *map, OpKind op, const char *what) {
  const char *allowed[24];
  int n = 0;
  for (int i = 0; i < 3; i++)
    allowed[n++] = COMMON_KEYS[i];
  for (const char *const *k = op_keys(op); *k; k++)
    allowed[n++] = *k;
  allowed[n] = NULL;
  return check_keys(cx, map, allowed, what, op);
}

static bool parse_attrs(Ctx *cx, yaml_node_t *m, Node *n, const InitRule *net_init, const char *w) {
  n->init = *net_init;
  yaml_node_t *init = lookup(cx, m, "init");
  char init_what[128];
  snprintf(init_what, sizeof init_what, "the init of layer '%s'", n->name);
  if (init && !parse_init(cx, init, init_what, &n->init))
    return false;
  switch (n->op) {
  case OP_CONV:
    n->conv = (ConvAttrs){.stride = 1, .groups = 1, .bias = true};
    return get_int(cx, m, "out", w, true, 1, MAX_DIM, &n->conv.out) &&
           get_int(cx, m, "kernel", w, true, 1, 1024, &n->conv.kernel) &&
           get_int(cx, m, "stride", w, false, 1, 1024, &n->conv.stride) &&
           get_pad(cx, m, w, &n->conv.pad) &&
           get_int(cx, m, "groups", w, false, 1, MAX_DIM, &n->conv.groups) &&
           get_bool(cx, m, "bias", w, &n->conv.bias);
  case OP_LRN:
    n->lrn = (LrnAttrs){.groups = 1};
    if (!get_int(cx, m, "size", w, true, 1, 1023, &n->lrn.size) ||
        !get_number(cx, m, "alpha", w, true, 0, 1e6, &n->lrn.alpha) ||
        !get_number(cx, m, "beta", w, true, 0, 1e3, &n->lrn.beta) ||
        !get_number(cx, m, "k", w, true, 1e-12, 1e6, &n->lrn.k) ||
        !get_int(cx, m, "groups", w, false, 1, MAX_DIM, &n->lrn.groups))
      return false;
    if (n->lrn.size % 2 == 0) {
      error_at(loc_of(cx, lookup(cx, m, "size")), "'size' in %s must be odd (a window centred on "
               "each channel), not %d", w, n->lrn.size);
      return false;
    }
    return true;
  case OP_MAXPOOL:
    n->pool = (PoolAttrs){0};
    if (!get_int(cx, m, "kernel", w, true, 1, 1024, &n->pool.kernel))
      return false;
    n->pool.stride = n->pool.kernel;  // PyTorch's default: windows side by side
    return get_int(cx, m, "stride", w, false, 1, 1024, &n->pool.stride) &&
           get_pad(cx, m, w, &n->pool.pad) &&
           get_bool(cx, m, "ceil_mode", w, &n->pool.ceil_mode);
  case OP_FC:
    n->fc = (FcAttrs){.bias = true};
    return get_int(cx, m, "out", w, true, 1, MAX_DIM, &n->fc.out) &&
           get_bool(cx, m, "bias", w, &n->fc.bias);
  case OP_DROPOUT:
    if (!get_number(cx, m, "p", w, true, 0, 1, &n->dropout.p))
      return false;
    if (n->dropout.p >= 1) {
      error_at(loc_of(cx, lookup(cx, m, "p")), "'p' in %s must be below 1 (the probability of "
               "dropping a unit), not %s", w, shown(scalar(lookup(cx, m, "p"))));
      return false;
    }
    return true;
  default:
    return true;
  }
}

// Takes a layer's name and `inputs:` as written, checking nothing, so that a layer can
// tell a forward reference or a cycle from an unknown name. The checks happen layer by
// layer in check_raw_layer() and build_layer(), so the first error in the file is the
// one reported.
static void read_raw_layer(Ctx *cx, yaml_node_t *m, RawLayer *raw) {
  raw->map = m;
  if (m->type != YAML_MAPPING_NODE)
    return;
  for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
    const char *key = scalar(node_at(cx, p->key));
    yaml_node_t *v = node_at(cx, p->value);
    if (key && !strcmp(key, "name") && !raw->name)
      raw->name = scalar(v);
    else if (key && !strcmp(key, "inputs") && !raw->inputs)
      raw->inputs = v;
  }
}

// Checks what read_raw_layer() took on trust: a mapping with plain keys, a valid
// name, and inputs that are a name or a list.
static bool check_raw_layer(Ctx *cx, int index, RawLayer *raw) {
  char what[64];
  snprintf(what, sizeof what, "layer %d", index + 1);
  yaml_node_t *m = raw->map;
  if (!need_map(cx, m, what) || !plain_keys(cx, m, what))
    return false;
  yaml_node_t *nv = lookup(cx, m, "name");
  if (!get_string(cx, m, "name", what, &raw->name) || !check_name(cx, nv, raw->name, "layer name"))
    return false;
  raw->loc = loc_of(cx, m);
  if (raw->inputs && raw->inputs->type == YAML_MAPPING_NODE) {
    error_at(loc_of(cx, raw->inputs), "'inputs' of layer '%s' must be a layer name or a list of "
             "names, not a mapping", raw->name);
    return false;
  }
  return true;
}

// The names a raw layer reads, as YAML nodes; `prev` is the default.
static int raw_inputs(Ctx *cx, const RawLayer *r, yaml_node_t **out, int max) {
  if (!r->inputs || r->inputs->type == YAML_MAPPING_NODE)
    return 0;
  if (r->inputs->type == YAML_SCALAR_NODE) {
    out[0] = r->inputs;
    return 1;
  }
  int n = 0;
  for (yaml_node_item_t *it = r->inputs->data.sequence.items.start;
       it < r->inputs->data.sequence.items.top && n < max; it++)
    out[n++] = node_at(cx, *it);
  return n;
}

static int raw_find(RawLayer *raw, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (raw[i].name && !strcmp(raw[i].name, name))
      return i;
  return -1;
}

// Does raw layer `from` (transitively) read raw layer `target`? Used to tell a cycle
// from a mere forward reference. Iterative: a chain may be MAX_LAYERS long.
static bool reaches(Ctx *cx, RawLayer *raw, int n, int from, int target) {
  char *seen = xcalloc(n, 1);
  int *stack = xcalloc(n, sizeof *stack);
  int top = 0;
  bool found = false;
  stack[top++] = from;
  seen[from] = 1;
  while (top > 0 && !found) {
    int i = stack[--top];
    yaml_node_t *ins[64];
    int k = raw_inputs(cx, &raw[i], ins, 64);
    for (int j = 0; j < (raw[i].inputs ? k : 1); j++) {
      int next = raw[i].inputs ? (scalar(ins[j]) ? raw_find(raw, n, scalar(ins[j])) : -1) : i - 1;
      if (next == target)
        found = true;
      else if (next >= 0 && !seen[next]) {
        seen[next] = 1;
        stack[top++] = next;
      }
    }
  }
  free(stack);
  free(seen);
  return found;
}

static bool resolve_input(Ctx *cx, Graph *g, RawLayer *raw, int n_raw, int self, yaml_node_t *v,
                          int *out) {
  const char *name = scalar(v);
  if (!name || !*name) {
    error_at(loc_of(cx, v), "inputs of layer '%s' must be layer names, not %s", raw[self].name,
             describe(v));
    return false;
  }
  int idx = graph_find(g, name);
  if (idx >= 0) {
    *out = idx;
    return true;
  }
  int later = raw_find(raw, n_raw, name);
  if (later == self) {
    error_at(loc_of(cx, v), "layer '%s' reads itself (a cycle)", name);
    return false;
  }
  if (later > self) {
    if (reaches(cx, raw, n_raw, later, self))
      error_at(loc_of(cx, v), "cycle: layer '%s' reads '%s', which depends on '%s'",
               raw[self].name, name, raw[self].name);
    else
      error_at(loc_of(cx, v), "layer '%s' reads '%s', which is defined later; a layer must come "
               "after its inputs", raw[self].name, name);
    return false;
  }
  const char **names = xcalloc(g->n_nodes, sizeof *names);
  for (int i = 0; i < g->n_nodes; i++)
    names[i] = g->nodes[i].name;
  const char *s = closest_word(name, (const char *const *)names, g->n_nodes);
  if (s)
    error_at(loc_of(cx, v), "layer '%s' reads unknown layer '%s'; did you mean '%s'?",
             raw[self].name, shown(name), s);
  else
    error_at(loc_of(cx, v), "layer '%s' reads unknown layer '%s'", raw[self].name, shown(name));
  free(names);
  return false;
}

static bool build_layer(Ctx *cx, Graph *g, RawLayer *raw, int n_raw, int i, const InitRule *init) {
  RawLayer *r = &raw[i];
  if (!check_raw_layer(cx, i, r))
    return false;
  char what[128];
  snprintf(what, sizeof what, "layer '%s'", r->name);
  const char *op_s;
  yaml_node_t *op_v = lookup(cx, r->map, "op");
  if (!get_string(cx, r->map, "op", what, &op_s))
    return false;
  OpKind op = op_from_name(op_s);
  if (op == OP_COUNT) {
    static const char *const ops[] = {"conv",    "relu",    "lrn",    "maxpool", "fc",
                                      "dropout", "flatten", "concat", "softmax"};
    const char *s = closest_word(op_s, ops, 9);
    error_at(loc_of(cx, op_v), "unknown op '%s' in %s%s%s%s", shown(op_s), what,
             s ? "; did you mean '" : "", s ? s : "",
             s ? "'?" : " (ops: conv relu lrn maxpool fc dropout flatten concat softmax)");
    return false;
  }
  snprintf(what, sizeof what, "%s layer '%s'", op_s, r->name);
  if (!check_layer_keys(cx, r->map, op, what))
    return false;
  int first = graph_find(g, r->name);
  if (first == 0) {
    error_at(loc_of(cx, lookup(cx, r->map, "name")), "a layer may not be named 'input': the name "
             "is reserved for the network input");
    return false;
  }
  if (first > 0) {
    error_at(loc_of(cx, lookup(cx, r->map, "name")), "duplicate layer name '%s' (first used at "
             "line %d)", r->name, g->nodes[first].loc.line);
    return false;
  }

  yaml_node_t *ins[64];
  int k = raw_inputs(cx, r, ins, 64);
  if (r->inputs && r->inputs->type == YAML_SEQUENCE_NODE &&
      r->inputs->data.sequence.items.top - r->inputs->data.sequence.items.start > 64) {
    error_at(loc_of(cx, r->inputs), "%s has more than 64 inputs", what);
    return false;
  }
  if (op == OP_CONCAT ? k < 2 : (r->inputs && k != 1)) {
    error_at(loc_of(cx, r->inputs ? r->inputs : r->map),
             op == OP_CONCAT ? "%s needs 'inputs' listing at least two layers"
                             : "%s takes exactly one input", what);
    return false;
  }
  int in_idx[64];
  for (int j = 0; j < k; j++)
    if (!resolve_input(cx, g, raw, n_raw, i, ins[j], &in_idx[j]))
      return false;
  if (k == 0)
    in_idx[k++] = g->n_nodes - 1;  // the previous layer, or the network input

  int idx = graph_add(g, r->name, op, r->loc);
  Node *n = &g->nodes[idx];
  for (int j = 0; j < k; j++)
    node_add_input(n, in_idx[j]);
  return parse_attrs(cx, r->map, n, init, what);
}

static bool parse_layers(Ctx *cx, yaml_node_t *v, Graph *g, const InitRule *init) {
  if (v->type != YAML_SEQUENCE_NODE || v->data.sequence.items.top == v->data.sequence.items.start) {
    error_at(loc_of(cx, v), "'layers' must be a non-empty list of layers, not %s",
             v->type == YAML_SEQUENCE_NODE ? "an empty list" : describe(v));
    return false;
  }
  int n = (int)(v->data.sequence.items.top - v->data.sequence.items.start);
  if (n > MAX_LAYERS) {
    error_at(loc_of(cx, v), "too many layers (%d; the limit is %d)", n, MAX_LAYERS);
    return false;
  }
  RawLayer *raw = xcalloc(n, sizeof *raw);
  for (int i = 0; i < n; i++)
    read_raw_layer(cx, node_at(cx, v->data.sequence.items.start[i]), &raw[i]);
  bool ok = true;
  for (int i = 0; ok && i < n; i++)
    ok = build_layer(cx, g, raw, n, i, init);
  free(raw);
  return ok;
}

// Layers whose output nobody reads, other than the last, are probably mistakes.
static void warn_unused(const Graph *g) {
  char *used = xcalloc(g->n_nodes, 1);
  for (int i = 0; i < g->n_nodes; i++)
    for (int j = 0; j < g->nodes[i].n_inputs; j++)
      used[g->nodes[i].inputs[j]] = 1;
  for (int i = 0; i + 1 < g->n_nodes; i++)
    if (!used[i]) {
      const Node *n = &g->nodes[i];
      fprintf(stderr, "%s:%d:%d: warning: the output of layer '%s' is never used\n", n->loc.file,
              n->loc.line, n->loc.col, n->name);
    }
  free(used);
}

// The `train:` section: alexc train's defaults (docs/spec-format.md).
static bool parse_train(Ctx *cx, yaml_node_t *m, TrainSpec *t) {
  static const char *const keys[] = {"epochs", "batch", "lr", "warmup", "schedule", "init",
                                     "augment", NULL};
  const char *what = "the train section";
  *t = (TrainSpec){.augment = -1};
  if (!need_map(cx, m, what) || !check_keys(cx, m, keys, what, OP_COUNT))
    return false;
  bool augment = true;
  if (!get_int(cx, m, "epochs", what, false, 1, 100000, &t->epochs) ||
      !get_int(cx, m, "batch", what, false, 1, 65536, &t->batch) ||
      !get_number(cx, m, "lr", what, false, 1e-12, 100, &t->lr) ||
      !get_number(cx, m, "warmup", what, false, 0, 1000, &t->warmup) ||
      !get_bool(cx, m, "augment", what, &augment))
    return false;
  if (lookup(cx, m, "augment"))
    t->augment = augment;
  const char *str;
  if (lookup(cx, m, "schedule")) {
    if (!get_string(cx, m, "schedule", what, &str))
      return false;
    t->schedule = xstrdup(str);
    t->schedule_loc = loc_of(cx, lookup(cx, m, "schedule"));
  }
  if (lookup(cx, m, "init")) {
    if (!get_string(cx, m, "init", what, &str))
      return false;
    t->init = xstrdup(str);
    t->init_loc = loc_of(cx, lookup(cx, m, "init"));
  }
  return true;
}

static Graph *build_graph(Ctx *cx, yaml_node_t *root) {
  static const char *const keys[] = {"name", "description", "input", "init", "layers", "train",
                                     NULL};
  if (!need_map(cx, root, "a network spec") || !check_keys(cx, root, keys, "the network", OP_COUNT))
    return NULL;
  const char *name;
  if (!get_string(cx, root, "name", "the network", &name) ||
      !check_name(cx, lookup(cx, root, "name"), name, "network name"))
    return NULL;
  yaml_node_t *desc = lookup(cx, root, "description");
  if (desc && !scalar(desc)) {
    error_at(loc_of(cx, desc), "'description' must be a string, not %s", describe(desc));
    return NULL;
  }
  InitRule init = {.weight_std = 0.01, .bias = 0, .bias_std = 0};  // the paper's defaults
  yaml_node_t *init_v = lookup(cx, root, "init");
  if (init_v && !parse_init(cx, init_v, "the network's init", &init))
    return NULL;
  yaml_node_t *input = lookup(cx, root, "input");
  yaml_node_t *layers = lookup(cx, root, "layers");
  if (!input) {
    missing(cx, root, "input", "the network");
    return NULL;
  }
  if (!layers) {
    missing(cx, root, "layers", "the network");
    return NULL;
  }
  Graph *g = graph_new(name);
  g->loc = loc_of(cx, root);
  yaml_node_t *train = lookup(cx, root, "train");
  if ((train && !parse_train(cx, train, &g->train)) || !parse_input(cx, input, g) ||
      !parse_layers(cx, layers, g, &init) || !graph_infer(g)) {
    graph_free(g);
    return NULL;
  }
  g->output = g->n_nodes - 1;
  warn_unused(g);
  return g;
}

// libyaml reports reader errors (bad UTF-8, control characters) as a byte offset.
static SrcLoc offset_loc(const char *path, const char *text, size_t len, size_t offset) {
  SrcLoc loc = {path, 1, 1};
  for (size_t i = 0; i < offset && i < len; i++) {
    unsigned char c = (unsigned char)text[i];
    if (c == '\n' || (c == '\r' && (i + 1 == len || text[i + 1] != '\n'))) {
      loc.line++;
      loc.col = 1;
    } else if ((c & 0xC0) != 0x80) {  // columns count characters, as libyaml's do
      loc.col++;
    }
  }
  return loc;
}

// The byte at a libyaml mark (0-based line, column in characters), or 0 past the end.
static char byte_at(const char *text, size_t len, size_t line, size_t column) {
  size_t i = 0;
  for (; i < len && line > 0; i++)
    if (text[i] == '\n')
      line--;
  for (; i < len && text[i] != '\n'; i++)
    if ((text[i] & 0xC0) != 0x80 && column-- == 0)
      return text[i];
  return 0;
}

// The offset of the first byte that is not well-formed UTF-8 (*cp = -1) or starts a
// character YAML does not allow in a file (*cp = the character), or len. libyaml
// checks the same, but reports a bad lead byte at the byte after it.
static size_t text_invalid_at(const unsigned char *s, size_t len, long *cp) {
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    size_t n = c < 0x80 ? 0 : c >= 0xC2 && c <= 0xDF ? 1 : c >= 0xE0 && c <= 0xEF ? 2
             : c >= 0xF0 && c <= 0xF4                ? 3
                                                     : 9;
    *cp = -1;
    if (n == 9 || n >= len - i)
      return i;
    long v = (long)(n == 0 ? c : n == 1 ? c & 0x1F : n == 2 ? c & 0x0F : c & 0x07);
    for (size_t k = 1; k <= n; k++) {
      if ((s[i + k] & 0xC0) != 0x80)
        return i;
      v = v << 6 | (s[i + k] & 0x3F);
    }
    // No overlong forms, surrogates, or code points above U+10FFFF.
    if ((c == 0xE0 && s[i + 1] < 0xA0) || (c == 0xED && s[i + 1] >= 0xA0) ||
        (c == 0xF0 && s[i + 1] < 0x90) || (c == 0xF4 && s[i + 1] >= 0x90))
      return i;
    // YAML's printable characters.
    if (!(v == 0x9 || v == 0xA || v == 0xD || (v >= 0x20 && v <= 0x7E) || v == 0x85 ||
          (v >= 0xA0 && v <= 0xD7FF) || (v >= 0xE000 && v <= 0xFFFD) || v >= 0x10000)) {
      *cp = v;
      return i;
    }
    i += n + 1;
  }
  return len;
}

// One message for whatever libyaml found wrong, at the place it found it.
static void yaml_error(const char *path, const yaml_parser_t *p, const char *text, size_t len) {
  const char *problem = p->problem ? p->problem : "syntax error";
  if (p->error == YAML_READER_ERROR) {
    SrcLoc loc = offset_loc(path, text, len, p->problem_offset);
    if (p->problem_value >= 0)
      error_at(loc, "the spec is not text: %s (0x%02X)", problem, (unsigned)p->problem_value);
    else
      error_at(loc, "the spec is not text: %s", problem);
    return;
  }
  SrcLoc loc = {path, (int)p->problem_mark.line + 1, (int)p->problem_mark.column + 1};
  if (byte_at(text, len, p->problem_mark.line, p->problem_mark.column) == '\t')
    error_at(loc, "malformed YAML: a tab character; YAML indents with spaces only");
  else if (p->context && (p->context_mark.line != p->problem_mark.line ||
                     p->context_mark.column != p->problem_mark.column))
    error_at(loc, "malformed YAML: %s (%s that starts at line %d, column %d)", problem, p->context,
             (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
  else if (p->context)
    error_at(loc, "malformed YAML: %s %s", problem, p->context);
  else
    error_at(loc, "malformed YAML: %s", problem);
}

// A first pass over the tokens, before libyaml builds the document: it refuses what a
// spec has no use for and what would make loading slow or confusing. Anchors and
// aliases would put one node in several places (and messages at the anchor); tags
// would be ignored; and libyaml takes time quadratic in the nesting depth of flow
// collections and in the number of anchors and %TAG directives.
static bool scan_tokens(const char *path, const char *text, size_t len) {
  yaml_parser_t parser;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  int depth = 0;
  bool ok = true, end = false;
  while (ok && !end) {
    yaml_token_t t;
    if (!yaml_parser_scan(&parser, &t)) {
      yaml_error(path, &parser, text, len);
      ok = false;
      break;
    }
    SrcLoc loc = {path, (int)t.start_mark.line + 1, (int)t.start_mark.column + 1};
    switch (t.type) {
    case YAML_BLOCK_SEQUENCE_START_TOKEN:
    case YAML_BLOCK_MAPPING_START_TOKEN:
    case YAML_FLOW_SEQUENCE_START_TOKEN:
    case YAML_FLOW_MAPPING_START_TOKEN:
      if (++depth > MAX_DEPTH) {
        error_at(loc, "the spec nests lists and mappings more than %d levels deep", MAX_DEPTH);
        ok = false;
      }
      break;
    case YAML_BLOCK_END_TOKEN:
    case YAML_FLOW_SEQUENCE_END_TOKEN:
    case YAML_FLOW_MAPPING_END_TOKEN:
      depth--;
      break;
    case YAML_ANCHOR_TOKEN:
    case YAML_ALIAS_TOKEN:
      error_at(loc, "YAML anchors and aliases ('%s%s') are not supported; write the value out",
               t.type == YAML_ANCHOR_TOKEN ? "&" : "*",
               shown((const char *)(t.type == YAML_ANCHOR_TOKEN ? t.data.anchor.value
                                                                : t.data.alias.value)));
      ok = false;
      break;
    case YAML_TAG_TOKEN:
    case YAML_TAG_DIRECTIVE_TOKEN:
      error_at(loc, "YAML tags and %%TAG directives are not supported; a value's type comes from "
               "its key");
      ok = false;
      break;
    case YAML_STREAM_END_TOKEN:
      end = true;
      break;
    default:
      break;
    }
    yaml_token_delete(&t);
  }
  yaml_parser_delete(&parser);
  return ok;
}

Graph *parse_spec_string(const char *path, const char *text, size_t len) {
  if (len > MAX_SPEC_BYTES) {
    error_at((SrcLoc){path, 1, 1}, "the spec is %zu bytes, more than the limit of %d (1 MiB)", len,
             MAX_SPEC_BYTES);
    return NULL;
  }
  long cp;
  size_t bad = text_invalid_at((const unsigned char *)text, len, &cp);
  if (bad < len && cp < 0) {
    error_at(offset_loc(path, text, len, bad), "the spec is not UTF-8 text: byte 0x%02X is not "
             "valid UTF-8 here", (unsigned char)text[bad]);
    return NULL;
  }
  if (bad < len) {
    error_at(offset_loc(path, text, len, bad), "the spec is not text: it contains the control "
             "character U+%04lX", cp);
    return NULL;
  }
  if (!scan_tokens(path, text, len))
    return NULL;
  yaml_parser_t parser;
  yaml_document_t doc, extra;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, &doc)) {
    yaml_error(path, &parser, text, len);
    yaml_parser_delete(&parser);
    return NULL;
  }
  Ctx cx = {path, &doc};
  Graph *g = NULL;
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  if (!root) {
    error_at((SrcLoc){path, 1, 1}, "the spec is empty");
  } else if (!yaml_parser_load(&parser, &extra)) {
    yaml_error(path, &parser, text, len);
  } else {
    // A second document ('---') would otherwise be ignored without a word.
    if (yaml_document_get_root_node(&extra))
      error_at((SrcLoc){path, (int)extra.start_mark.line + 1, (int)extra.start_mark.column + 1},
               "the spec holds more than one YAML document; only one is allowed");
    else
      g = build_graph(&cx, root);
    yaml_document_delete(&extra);
  }
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  return g;
}

Graph *parse_spec_file(const char *path) {
  // Checked here too, so that an oversized spec gets a FILE:LINE:COL message.
  struct stat st;
  if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > MAX_SPEC_BYTES) {
    error_at((SrcLoc){path, 1, 1}, "the spec is %lld bytes, more than the limit of %d (1 MiB)",
             (long long)st.st_size, MAX_SPEC_BYTES);
    return NULL;
  }
  uint8_t *text;
  size_t len;
  if (!rt_read_file(path, MAX_SPEC_BYTES, &text, &len)) {
    error("%s", rt_error());
    return NULL;
  }
  Graph *g = parse_spec_string(path, (const char *)text, len);
  free(text);
  return g;
}
