// `alexc compare`: two saved outputs side by side, as the tests compare them.
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char COMPARE_HELP[] =
    "usage: alexc compare GOT.npy WANT.npy [--tolerance T | --precision P]\n"
    "\n"
    "Prints the largest difference between two float32 .npy files of one shape, relative\n"
    "to the largest value expected: max|got - want| / max|want|, and where it is. Exit 1\n"
    "when the shapes differ, either holds NaN or infinity, or the difference exceeds the\n"
    "tolerance.\n"
    "\n"
    "  --tolerance T    the limit (default %g)\n"
    "  --precision P    the limit alexc run --compare-ref uses at precision P: fp32 %g,\n"
    "                   tf32 %g, bf16 %g\n";

int cmd_compare(int argc, char **argv) {
  static const struct option opts[] = {{"tolerance", required_argument, 0, 't'},
                                       {"precision", required_argument, 0, 'p'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  double tolerance = cuda_tolerance(RT_FP32);
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    char *end;
    switch (c) {
    case 't':
      tolerance = strtod(optarg, &end);
      if (!*optarg || *end || !(tolerance >= 0))
        return usage_error("compare", "--tolerance wants a number >= 0, not '%s'", optarg);
      break;
    case 'p': {
      RtPrecision p;
      if (!rt_parse_precision(optarg, &p))
        return usage_error("compare", "--precision is fp32, tf32 or bf16, not '%s'", optarg);
      tolerance = cuda_tolerance(p);
      break;
    }
    case 'h':
      printf(COMPARE_HELP, cuda_tolerance(RT_FP32), cuda_tolerance(RT_FP32),
             cuda_tolerance(RT_TF32), cuda_tolerance(RT_BF16));
      return EXIT_OK;
    default:
      return usage_error("compare", "unknown option");
    }
  }
  if (optind + 2 != argc)
    return usage_error("compare", "expected two .npy files");
  RtTensor got = {0}, want = {0};
  if (!rt_npy_load(argv[optind], &got) || !rt_npy_load(argv[optind + 1], &want)) {
    error("%s", rt_error());
    rt_tensor_free(&got);
    return EXIT_ERR;
  }
  bool same_shape = got.rank == want.rank &&
                    !memcmp(got.dims, want.dims, got.rank * sizeof *got.dims);
  bool ok = same_shape;
  if (!same_shape) {
    error("%s and %s have different shapes", argv[optind], argv[optind + 1]);
  } else {
    Compare d = compare(got.data, want.data, got.elems);
    ok = d.finite && d.rel <= tolerance;
    printf("max rel err %.3g (max abs %.3g at element %lld; tolerance %g): %s\n", d.rel, d.abs,
           (long long)d.at, tolerance, ok ? "OK" : d.finite ? "FAIL" : "FAIL (non-finite values)");
  }
  rt_tensor_free(&got);
  rt_tensor_free(&want);
  return ok ? EXIT_OK : EXIT_ERR;
}
