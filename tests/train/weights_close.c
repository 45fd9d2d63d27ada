// weights_close SPEC GOT WANT TOLERANCE: whether two weight files of SPEC's network agree,
// tensor by tensor, within TOLERANCE relative to the largest value wanted (the measure of
// train.steps and `alexc compare`). Prints the worst tensor; exit 1 when it is over, or
// when either file cannot be read. For tests/train/mpi.sh, which has no numpy.
#include <math.h>
#include <stdlib.h>

#include "../../compiler/tools/cli.h"

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: weights_close SPEC GOT.safetensors WANT.safetensors TOLERANCE\n");
    return 2;
  }
  double tolerance = strtod(argv[4], NULL);
  Graph *g = load_spec(argv[1]);
  Weights *got = g ? weights_load(g, argv[2]) : NULL, *want = g ? weights_load(g, argv[3]) : NULL;
  if (!got || !want)
    return 1;
  double worst = 0;
  const char *where = "";
  for (int i = 0; i < got->n; i++) {
    Compare c = compare(got->data[i], want->data[i], got->info[i].elems);
    printf("  %-14s rel err %.3g\n", got->info[i].name, c.rel);
    if (!(c.rel <= worst)) {  // NaN and infinity are worst
      worst = c.finite ? c.rel : INFINITY;
      where = got->info[i].name;
    }
  }
  bool ok = worst <= tolerance;
  printf("%s: worst weight rel err %.3g (%s; tolerance %g)\n", ok ? "close" : "NOT CLOSE", worst,
         where, tolerance);
  weights_free(got);
  weights_free(want);
  graph_free(g);
  return ok ? 0 : 1;
}
