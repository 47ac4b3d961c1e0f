/* runner.c - runs the unit suites. Each test runs in a forked child with a
 * timeout, so a crash or a hang fails that test and the run goes on; in an
 * AddressSanitizer build, so does a leak left by a test that passed.
 * Usage: test-unit [suite[/test] ...]
 * A name that matches no suite (or no test of its suite) stops the run
 * before any test, exit 2, listing the suites: a misspelled TESTS= must
 * not pass by running nothing. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"
#include "suites.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define LEAK_CHECK 1
#else
#define LEAK_CHECK 0
#endif

int test_failed_flag;

#define TEST_TIMEOUT_S 60

static bool selected(int argc, char **argv, const char *suite,
                     const char *test)
{
    if (argc <= 1)
        return true;
    for (int i = 1; i < argc; i++) {
        size_t sl = strlen(suite);
        if (strcmp(argv[i], suite) == 0)
            return true;
        if (strncmp(argv[i], suite, sl) == 0 && argv[i][sl] == '/' &&
            strcmp(argv[i] + sl + 1, test) == 0)
            return true;
    }
    return false;
}

/* Whether argument `arg` names a suite, or a suite and one of its tests. */
static bool known(const char *arg)
{
    for (const struct test_suite *const *s = all_suites; *s; s++) {
        size_t sl = strlen((*s)->name);
        if (strcmp(arg, (*s)->name) == 0)
            return true;
        if (strncmp(arg, (*s)->name, sl) != 0 || arg[sl] != '/')
            continue;
        for (const struct test_case *c = (*s)->cases; c->name; c++)
            if (strcmp(arg + sl + 1, c->name) == 0)
                return true;
    }
    return false;
}

int main(int argc, char **argv)
{
    int passed = 0, failed = 0;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 1; i < argc; i++) {
        if (known(argv[i]))
            continue;
        fprintf(stderr, "test-unit: no suite or test named '%s'; suites:",
                argv[i]);
        for (const struct test_suite *const *s = all_suites; *s; s++)
            fprintf(stderr, " %s", (*s)->name);
        fprintf(stderr, " (or suite/test)\n");
        return 2;
    }
    for (const struct test_suite *const *s = all_suites; *s; s++) {
        for (const struct test_case *c = (*s)->cases; c->name; c++) {
            if (!selected(argc, argv, (*s)->name, c->name))
                continue;
            pid_t pid = fork();
            if (pid == 0) {
                alarm(TEST_TIMEOUT_S);
                test_failed_flag = 0;
                c->fn();
#if LEAK_CHECK
                /* A test that passed must have freed what it allocated:
                 * _exit skips LeakSanitizer's check at exit. */
                if (!test_failed_flag && __lsan_do_recoverable_leak_check())
                    test_failed_flag = 1;
#endif
                fflush(stdout);
                fflush(stderr);
                _exit(test_failed_flag ? 1 : 0);
            }
            int st = 0;
            waitpid(pid, &st, 0);
            bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
            if (ok) {
                passed++;
            } else {
                failed++;
                if (WIFSIGNALED(st))
                    printf("  (killed by signal %d%s)\n", WTERMSIG(st),
                           WTERMSIG(st) == SIGALRM ? ": timeout" : "");
            }
            printf("%s %s/%s\n", ok ? "ok  " : "FAIL", (*s)->name, c->name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
