// A tiny test harness: CHECK records a failure and goes on; main returns the count.
#ifndef ALEXC_TEST_H
#define ALEXC_TEST_H

#include <math.h>
#include <stdio.h>

static int test_failures;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      test_failures++;                                                     \
    }                                                                      \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                       \
  do {                                                                              \
    double a_ = (a), b_ = (b);                                                      \
    if (!(fabs(a_ - b_) <= (tol))) {                                                \
      fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %.9g, %s = %.9g\n", __FILE__, \
              __LINE__, #a, a_, #b, b_);                                            \
      test_failures++;                                                              \
    }                                                                               \
  } while (0)

#define TEST_MAIN_END()                                         \
  do {                                                          \
    if (test_failures)                                          \
      fprintf(stderr, "%d check(s) failed\n", test_failures);   \
    return test_failures ? 1 : 0;                               \
  } while (0)

#endif
