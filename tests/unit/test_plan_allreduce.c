// The plan's RT_STEP_ALLREDUCE (data-parallel training's gradient sum): it round-trips
// through the plan file (format 7), the interpreter hands it to the executor's allreduce
// op with the resolved address and count, an executor without that op refuses the plan
// with a message, and malformed allreduce lines are refused.
#define _GNU_SOURCE  // memmem
#include <stdlib.h>
#include <string.h>

#include "../../runtime/alexrt.h"
#include "../../runtime/alexrt_cuda.h"
#include "test.h"

typedef struct {
  int calls, device;
  uint64_t buf;
  int64_t floats;
} Seen;

static bool record_allreduce(void *ctx, int device, uint64_t buf, int64_t floats) {
  Seen *s = ctx;
  s->calls++;
  s->device = device;
  s->buf = buf;
  s->floats = floats;
  return true;
}

// A one-device plan of 64 weight floats whose only step sums [16, 48).
static void make_plan(RtPlan *p) {
  memset(p, 0, sizeof *p);
  snprintf(p->network, sizeof p->network, "t");
  snprintf(p->arch, sizeof p->arch, "sm_90");
  p->n_devices = 1;
  p->in = (RtShape){1, {4}};
  p->out = (RtShape){1, {2}};
  p->dev[0].weights = 64;
  RtStep s = {.kind = RT_STEP_ALLREDUCE, .device = 0,
              .dst = {{RT_SPACE_WEIGHTS, 0, 16, 0}, 32}, .width = 32};
  snprintf(s.name, sizeof s.name, "gradients");
  snprintf(s.layer, sizeof s.layer, "gradients");
  rt_plan_add_step(p, &s);
}

// The plan's bytes with `from` replaced by `to` (once), parsed: whether it is accepted.
static bool parses_with(const uint8_t *data, size_t size, const char *from, const char *to) {
  char *text = malloc(size + 64);
  memcpy(text, data, size);
  text[size] = 0;
  char *at = strstr(text, from);
  bool ok = false;
  if (at) {
    size_t head = at - text, tail = size - head - strlen(from);
    char *edited = malloc(size + 64);
    memcpy(edited, text, head);
    memcpy(edited + head, to, strlen(to));
    memcpy(edited + head + strlen(to), at + strlen(from), tail);
    RtPlan q;
    ok = rt_plan_parse((const uint8_t *)edited, head + strlen(to) + tail, &q);
    if (ok)
      rt_plan_free(&q);
    free(edited);
  }
  free(text);
  return ok;
}

int main(void) {
  RtPlan p;
  make_plan(&p);
  uint8_t *data = NULL;
  size_t size = 0;
  CHECK(rt_plan_serialize(&p, &data, &size));
  CHECK(size > 16 && !memcmp(data, "alexc-cuda-plan 7\n", 18));
  CHECK(memmem(data, size, "\nallreduce 0 gradients w:0+16 32\n", 33) != NULL);

  RtPlan q;
  CHECK(rt_plan_parse(data, size, &q));
  CHECK(q.n_steps == 1 && q.steps[0].kind == RT_STEP_ALLREDUCE && q.steps[0].width == 32 &&
        q.steps[0].dst.addr.space == RT_SPACE_WEIGHTS && q.steps[0].dst.addr.fixed == 16);

  // The interpreter: the op gets weights + 16 floats and 32 floats.
  Seen seen = {0};
  RtPlanOps ops = {.ctx = &seen, .allreduce = record_allreduce};
  ops.weights[0] = 4096;
  CHECK(rt_plan_steps(&q, &ops, 3));
  CHECK(seen.calls == 1 && seen.device == 0 && seen.buf == 4096 + 16 * sizeof(float) &&
        seen.floats == 32);
  // From the step on (a rank with no images), and past the end (nothing to run).
  CHECK(rt_plan_steps_from(&q, &ops, 1, 0) && seen.calls == 2);
  CHECK(rt_plan_steps_from(&q, &ops, 1, 1) && seen.calls == 2);
  CHECK(!rt_plan_steps_from(&q, &ops, 1, 2));

  // Without the op: refused, with a message naming what is missing.
  ops.allreduce = NULL;
  CHECK(!rt_plan_steps(&q, &ops, 3));
  CHECK(strstr(rt_error(), "no all-reduce") != NULL);
  rt_plan_free(&q);

  // Malformed lines: outside the weight buffer, not in it, a zero count, a missing field.
  CHECK(parses_with(data, size, "w:0+16 32\n", "w:0+32 32\n"));  // the edit itself is fine
  CHECK(!parses_with(data, size, "w:0+16 32\n", "w:0+40 32\n"));
  CHECK(!parses_with(data, size, "w:0+16 32\n", "a:1+0 32\n"));
  CHECK(!parses_with(data, size, "w:0+16 32\n", "w:0+16 0\n"));
  CHECK(!parses_with(data, size, "w:0+16 32\n", "w:0+16\n"));
  free(data);
  rt_plan_free(&p);
  TEST_MAIN_END();
}
