/* runner.c - runs the unit suites. Each test runs in a forked child with a
 * timeout, so a crash or a hang fails that test and the run goes on; in an
 * AddressSanitizer build, so does a leak left by a test that passed.
 * Usage: test-unit [suite[/test] ...]
 * Tests run TEST_JOBS at a time (default: two per CPU, as most of them
 * wait on timers, sockets or fsync rather than compute); each one's output
 * is held until it ends and printed in the suites' order, so the report
 * reads as if they had run one after another.
 * A name that matches no suite (or no test of its suite) stops the run
 * before any test, exit 2, listing the suites: a misspelled TESTS= must
 * not pass by running nothing. */
#include <errno.h>
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

/* One selected test: where its output goes and how it ended. */
struct job {
    const struct test_suite *suite;
    const struct test_case *test;
    FILE *out; /* what the child printed (stdout and stderr) */
    pid_t pid; /* the child's, once started */
    bool done; /* reaped (its pid may since be another test's) */
    int status;
};

static int jobs_wanted(void)
{
    const char *v = getenv("TEST_JOBS");
    long n = v != NULL && *v ? strtol(v, NULL, 10)
                             : 2 * sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

static void start(struct job *j)
{
    j->out = tmpfile();
    if (j->out == NULL) {
        perror("test-unit: tmpfile");
        exit(2);
    }
    fflush(stdout);
    fflush(stderr);
    j->pid = fork();
    if (j->pid < 0) {
        perror("test-unit: fork");
        exit(2);
    }
    if (j->pid == 0) {
        dup2(fileno(j->out), STDOUT_FILENO);
        dup2(fileno(j->out), STDERR_FILENO);
        alarm(TEST_TIMEOUT_S);
        test_failed_flag = 0;
        j->test->fn();
#if LEAK_CHECK
        /* A test that passed must have freed what it allocated: _exit
         * skips LeakSanitizer's check at exit. */
        if (!test_failed_flag && __lsan_do_recoverable_leak_check())
            test_failed_flag = 1;
#endif
        fflush(stdout);
        fflush(stderr);
        _exit(test_failed_flag ? 1 : 0);
    }
}

/* Prints what a test printed, then its verdict; true if it passed. */
static bool report(struct job *j)
{
    char buf[4096];
    size_t n;
    rewind(j->out);
    while ((n = fread(buf, 1, sizeof buf, j->out)) > 0)
        fwrite(buf, 1, n, stdout);
    fclose(j->out);
    int st = j->status;
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (WIFSIGNALED(st))
        printf("  (killed by signal %d%s)\n", WTERMSIG(st),
               WTERMSIG(st) == SIGALRM ? ": timeout" : "");
    printf("%s %s/%s\n", ok ? "ok  " : "FAIL", j->suite->name, j->test->name);
    return ok;
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
    size_t n = 0;
    for (const struct test_suite *const *s = all_suites; *s; s++)
        for (const struct test_case *c = (*s)->cases; c->name; c++)
            n += selected(argc, argv, (*s)->name, c->name);
    struct job *jobs = calloc(n ? n : 1, sizeof *jobs);
    if (jobs == NULL)
        return 2;
    size_t k = 0;
    for (const struct test_suite *const *s = all_suites; *s; s++)
        for (const struct test_case *c = (*s)->cases; c->name; c++)
            if (selected(argc, argv, (*s)->name, c->name))
                jobs[k++] = (struct job){.suite = *s, .test = c};
    int max = jobs_wanted(), running = 0;
    size_t next = 0, shown = 0;
    while (shown < n) {
        /* Finished tests wait for those before them to be printed, each
         * holding a file: at most 256 ahead of the first unprinted. */
        while (running < max && next < n && next - shown < 256) {
            start(&jobs[next++]);
            running++;
        }
        int st = 0;
        pid_t pid = wait(&st);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            perror("test-unit: wait");
            return 2;
        }
        for (size_t i = shown; i < next; i++) {
            if (jobs[i].pid == pid && !jobs[i].done) {
                jobs[i].done = true;
                jobs[i].status = st;
                running--;
                break;
            }
        }
        while (shown < n && jobs[shown].done) {
            if (report(&jobs[shown++]))
                passed++;
            else
                failed++;
        }
    }
    free(jobs);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
