/* snap_load.c - the snapshot loader alone, for profiling a restart:
 *
 *   snap-load make DIR N     write a snapshot of N keys (16-byte keys,
 *                            100-byte values, key-NNNNNNNNNNNN) into DIR
 *                            and print its path
 *   snap-load load PATH [R] [thread]
 *                            load PATH into a new table R times (default 1)
 *                            and verify it once without a table; prints
 *                            the first load's wall and CPU time (what a
 *                            restart pays: the table's memory is new to
 *                            the process), the best load's (memory the
 *                            previous load freed), keys and digest;
 *                            `thread`: the loads run on another thread,
 *                            as a snapshot received from the leader does
 *                            (on the thread pool: another malloc arena)
 *
 * Build and run with `make bench-snapshot-load` (SNAP_LOAD_KEYS=n). For
 * instruction counts, run `load` under valgrind --tool=callgrind
 * --toggle-collect=snapshot_load. */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "kv.h"
#include "pz.h"
#include "snapshot.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds of this process so far: on a shared machine, steadier than
 * the wall clock. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int make(const char *dir, long n)
{
    char key[32], val[100];
    struct kv *kv = kv_new_seeded(12345);
    uint64_t st = 1;
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key-%012ld", i);
        for (size_t j = 0; j < sizeof val; j++)
            val[j] = (char)('a' + pz_rand_next(&st) % 26);
        kv_set(kv, key, 16, val, sizeof val);
    }
    /* A one-member configuration, as raft_conf_encode writes it. */
    static const uint8_t conf[] = {1, 0, 0, 0, 1, 0, 0, 0, 0,
                                   0, 0, 0, 7, 1, 0, 0, 0, 0};
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    struct snapshot_point at = {(uint64_t)n + 1, 1, conf, sizeof conf};
    int rc = snapshot_write(dir, kv, &at, path, sizeof path, err, sizeof err);
    kv_free(kv);
    if (rc) {
        fprintf(stderr, "snap-load: %s\n", err);
        return 1;
    }
    printf("%s\n", path);
    return 0;
}

static int load(const char *path, int reps)
{
    char err[SNAPSHOT_ERRMSG_SIZE];
    double best = 1e9, cbest = 1e9, vbest = 1e9, first = 0, cfirst = 0;
    size_t keys = 0;
    uint64_t digest = 0, size = 0;
    for (int i = 0; i < reps; i++) {
        struct kv *kv = kv_new_seeded(4);
        struct snapshot_meta m;
        double t0 = now_s(), c0 = cpu_s();
        int rc = snapshot_load(path, kv, &m, err, sizeof err);
        double t = now_s() - t0, c = cpu_s() - c0;
        if (rc) {
            fprintf(stderr, "snap-load: %s\n", err);
            kv_free(kv);
            return 1;
        }
        if (i == 0) {
            first = t;
            cfirst = c;
        }
        best = t < best ? t : best;
        cbest = c < cbest ? c : cbest;
        keys = kv_count(kv);
        digest = kv_digest(kv);
        size = m.file_size;
        snapshot_meta_free(&m);
        kv_free(kv);
    }
    double t0 = now_s(), c0 = cpu_s();
    if (snapshot_verify(path, NULL, err, sizeof err)) {
        fprintf(stderr, "snap-load: %s\n", err);
        return 1;
    }
    vbest = now_s() - t0;
    double vcpu = cpu_s() - c0;
    printf("keys=%zu bytes=%" PRIu64 " first_load_s=%.3f (cpu %.3f) "
           "load_s=%.3f (cpu %.3f) verify_s=%.3f (cpu %.3f) digest=%016" PRIx64
           "\n",
           keys, size, first, cfirst, best, cbest, vbest, vcpu, digest);
    return 0;
}

struct load_args {
    const char *path;
    int reps, rc;
};

static void *load_main(void *arg)
{
    struct load_args *a = arg;
    a->rc = load(a->path, a->reps);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "make") == 0)
        return make(argv[2], atol(argv[3]));
    if (argc >= 3 && strcmp(argv[1], "load") == 0) {
        bool thread = strcmp(argv[argc - 1], "thread") == 0;
        int nargs = argc - thread; /* "thread" alone stands for R = 1 */
        struct load_args a = {argv[2], nargs > 3 ? atoi(argv[3]) : 1, 0};
        if (a.reps < 1) {
            fprintf(stderr, "snap-load: R must be 1 or more\n");
            return 2;
        }
        if (!thread)
            return load(a.path, a.reps);
        pthread_t th;
        if (pthread_create(&th, NULL, load_main, &a) != 0) {
            fprintf(stderr, "snap-load: cannot start a thread\n");
            return 1;
        }
        pthread_join(th, NULL);
        return a.rc;
    }
    fprintf(stderr, "usage: snap-load make DIR N | snap-load load PATH [R] "
                    "[thread]\n");
    return 2;
}
