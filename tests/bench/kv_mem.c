/* kv_mem.c - memory of the key-value table: RSS growth for N keys of
 * 16 bytes with 100-byte values (default N = 1,000,000), the time to load
 * them, and the time of an ordered scan of the 10,000 keys under one
 * prefix. Build and run with `make bench-kv-mem`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kv.h"

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            v = strtol(line + 6, NULL, 10);
    fclose(f);
    return v;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int count_key(void *arg, const struct kv_view *v)
{
    (void)v;
    (*(long *)arg)++;
    return 0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    char key[32], val[100];
    memset(val, 'v', sizeof val);
    long before = rss_kib();
    double t0 = now_s();
    struct kv *kv = kv_new_seeded(12345);
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key-%012ld", i);
        kv_set(kv, key, 16, val, sizeof val);
    }
    kv_rehash(kv, (size_t)-1);
    double t1 = now_s();
    long after = rss_kib();
    printf("keys=%ld rss_growth_kib=%ld bytes_per_key=%.1f load_s=%.2f\n", n,
           after - before, (double)(after - before) * 1024.0 / (double)n,
           t1 - t0);
    if (n >= 200000) {
        /* "key-00000010" prefixes keys 100000..109999. */
        long seen = 0;
        double t2 = now_s();
        const int runs = 100;
        for (int r = 0; r < runs; r++)
            kv_range(kv, "key-00000010", 12, "key-00000011", 12, false,
                     count_key, &seen);
        double t3 = now_s();
        printf("prefix scan: %ld keys, %.0f us each\n", seen / runs,
               (t3 - t2) / runs * 1e6);
    }
    kv_free(kv);
    return 0;
}
