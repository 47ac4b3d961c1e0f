/* fuzz_common.c - linked into every harness: sanitizer defaults that hold
 * however the binary is started (make fuzz, or by hand to reproduce a
 * crash), so a UBSan report always stops the run like an ASan one. */
#include "fuzz.h"

#ifndef FUZZ_UBSAN_SUPP
#define FUZZ_UBSAN_SUPP "/dev/null"
#endif

const char *__ubsan_default_options(void);

/* halt_on_error: the first report is fatal, and libFuzzer saves the
 * input. The suppressions file names open findings (tests/fuzz/ubsan.supp)
 * so that one known report does not stop every run. */
const char *__ubsan_default_options(void)
{
    return "halt_on_error=1:print_stacktrace=1:suppressions=" FUZZ_UBSAN_SUPP;
}
