/* test.h - a tiny unit-test runner (Debian has no munit).
 *
 * Each test file defines tests with TEST(name) and lists them in a
 * TEST_SUITE array; tests/unit/runner.c runs every suite linked in, or only
 * those named on the command line, each test with an alarm() timeout. A run
 * ends with the line "N passed, N failed".
 *
 * CHECK(cond) records a failure and returns from the test;
 * CHECK_EQ_INT/CHECK_EQ_STR print both sides. */
#ifndef PZ_TEST_H
#define PZ_TEST_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "pz.h"

struct test_case {
    const char *name;
    void (*fn)(void);
};

struct test_suite {
    const char *name;
    const struct test_case *cases; /* terminated by {NULL, NULL} */
};

extern int test_failed_flag; /* set by CHECK on failure */

#define TEST(name) static void test_##name(void)
#define TEST_ENTRY(name) {#name, test_##name}
#define TEST_END {NULL, NULL}

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "    %s:%d: CHECK(%s) failed\n", __FILE__,       \
                    __LINE__, #cond);                                        \
            test_failed_flag = 1;                                            \
            return;                                                          \
        }                                                                    \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                   \
    do {                                                                     \
        long long a_ = (long long)(a), b_ = (long long)(b);                  \
        if (a_ != b_) {                                                      \
            fprintf(stderr, "    %s:%d: %s == %s failed: %lld != %lld\n",    \
                    __FILE__, __LINE__, #a, #b, a_, b_);                     \
            test_failed_flag = 1;                                            \
            return;                                                          \
        }                                                                    \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                   \
    do {                                                                     \
        const char *a_ = (a), *b_ = (b);                                     \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {               \
            fprintf(stderr, "    %s:%d: %s == %s failed: \"%s\" != \"%s\"\n", \
                    __FILE__, __LINE__, #a, #b, a_ ? a_ : "(null)",          \
                    b_ ? b_ : "(null)");                                     \
            test_failed_flag = 1;                                            \
            return;                                                          \
        }                                                                    \
    } while (0)

/* A copy of n bytes in a block of exactly n (pz_memdup adds a NUL), so
 * that AddressSanitizer sees a read one byte past them. */
static inline void *test_exact_copy(const void *p, size_t n)
{
    void *q = pz_malloc(n ? n : 1);
    if (n)
        memcpy(q, p, n);
    return q;
}

#endif
