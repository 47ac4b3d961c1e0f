/* test_metrics.c - metric families and the text exposition format: exact
 * rendering of counters, gauges and histograms, escaping of HELP text and
 * label values, bucket boundaries (a value equal to a bound is in that
 * bucket), +Inf, _sum and _count, number formatting, the series cap. */
#include <math.h>
#include <stdlib.h>

#include "metrics.h"
#include "test.h"

/* b's text as a C string (b keeps ownership). */
static const char *text(struct pz_buf *b)
{
    pz_buf_append(b, "", 1);
    b->len--;
    return b->data;
}

TEST(counter_and_gauge)
{
    static const char *const lbl[] = {"api", "code", NULL};
    struct metrics_family f;
    metrics_family_init(&f, "pyazdb_requests_total", METRICS_COUNTER,
                        "Requests served.", lbl, NULL, 0);
    struct pz_buf b;
    pz_buf_init(&b);
    metrics_render(&b, &f);
    CHECK_EQ_STR(text(&b), "# HELP pyazdb_requests_total Requests served.\n"
                           "# TYPE pyazdb_requests_total counter\n");
    metrics_inc(metrics_get(&f, (const char *[]){"http", "200"}), 1);
    metrics_inc(metrics_get(&f, (const char *[]){"grpc", "0"}), 2);
    metrics_inc(metrics_get(&f, (const char *[]){"http", "200"}), 1);
    CHECK_EQ_INT(f.n_series, 2);
    pz_buf_reset(&b);
    metrics_render(&b, &f);
    CHECK_EQ_STR(text(&b),
                 "# HELP pyazdb_requests_total Requests served.\n"
                 "# TYPE pyazdb_requests_total counter\n"
                 "pyazdb_requests_total{api=\"http\",code=\"200\"} 2\n"
                 "pyazdb_requests_total{api=\"grpc\",code=\"0\"} 2\n");
    metrics_family_free(&f);

    pz_buf_reset(&b);
    metrics_render_one(&b, "pyazdb_raft_term", METRICS_GAUGE, "Term.", 7);
    CHECK_EQ_STR(text(&b), "# HELP pyazdb_raft_term Term.\n"
                           "# TYPE pyazdb_raft_term gauge\n"
                           "pyazdb_raft_term 7\n");
    pz_buf_free(&b);
}

TEST(escaping)
{
    static const char *const lbl[] = {"peer", NULL};
    struct metrics_family f;
    metrics_family_init(&f, "m", METRICS_GAUGE,
                        "Back\\slash, \"quotes\" and\nnewline.", lbl, NULL, 0);
    metrics_set(metrics_get(&f, (const char *[]){"a\\b\"c\nd"}), -1.5);
    struct pz_buf b;
    pz_buf_init(&b);
    metrics_render(&b, &f);
    /* HELP escapes backslash and newline only; label values also '"'. */
    CHECK_EQ_STR(text(&b), "# HELP m Back\\\\slash, \"quotes\" and\\nnewline.\n"
                           "# TYPE m gauge\n"
                           "m{peer=\"a\\\\b\\\"c\\nd\"} -1.5\n");
    metrics_family_free(&f);
    pz_buf_free(&b);
}

TEST(histogram)
{
    static const double bounds[] = {0.001, 0.01, 0.1};
    static const char *const lbl[] = {"op", NULL};
    struct metrics_family f;
    metrics_family_init(&f, "lat_seconds", METRICS_HISTOGRAM, "Latency.", lbl,
                        bounds, 3);
    struct metrics_series *s = metrics_get(&f, (const char *[]){"w"});
    metrics_observe(s, 0.0005); /* first bucket */
    metrics_observe(s, 0.001);  /* equal to a bound: that bucket */
    metrics_observe(s, 0.0011); /* next one */
    metrics_observe(s, 0.1);    /* last finite */
    metrics_observe(s, 3);      /* +Inf only */
    CHECK_EQ_INT(s->h.count, 5);
    CHECK_EQ_INT(s->h.counts[0], 2);
    CHECK_EQ_INT(s->h.counts[1], 1);
    CHECK_EQ_INT(s->h.counts[2], 1);
    CHECK_EQ_INT(s->h.counts[3], 1);
    struct pz_buf b;
    pz_buf_init(&b);
    metrics_render(&b, &f);
    CHECK_EQ_STR(text(&b), "# HELP lat_seconds Latency.\n"
                           "# TYPE lat_seconds histogram\n"
                           "lat_seconds_bucket{op=\"w\",le=\"0.001\"} 2\n"
                           "lat_seconds_bucket{op=\"w\",le=\"0.01\"} 3\n"
                           "lat_seconds_bucket{op=\"w\",le=\"0.1\"} 4\n"
                           "lat_seconds_bucket{op=\"w\",le=\"+Inf\"} 5\n"
                           "lat_seconds_sum{op=\"w\"} 3.1026\n"
                           "lat_seconds_count{op=\"w\"} 5\n");
    metrics_family_free(&f);

    /* No labels: le alone. */
    metrics_family_init(&f, "h", METRICS_HISTOGRAM, "H.", NULL, bounds, 1);
    metrics_observe(metrics_get(&f, NULL), 0);
    pz_buf_reset(&b);
    metrics_render(&b, &f);
    CHECK_EQ_STR(text(&b), "# HELP h H.\n# TYPE h histogram\n"
                           "h_bucket{le=\"0.001\"} 1\n"
                           "h_bucket{le=\"+Inf\"} 1\n"
                           "h_sum 0\nh_count 1\n");
    metrics_family_free(&f);
    pz_buf_free(&b);
}

TEST(shared_bounds_are_ascending)
{
    /* metrics_family_init asserts it; this names the failing table. */
    const double *t[] = {metrics_latency_bounds, metrics_disk_bounds,
                         metrics_batch_bounds};
    size_t n[] = {metrics_latency_n, metrics_disk_n, metrics_batch_n};
    for (size_t i = 0; i < 3; i++) {
        for (size_t j = 1; j < n[i]; j++)
            CHECK(t[i][j - 1] < t[i][j]);
    }
}

TEST(values)
{
    char buf[32];
    CHECK_EQ_STR(metrics_fmt_value(buf, 0), "0");
    CHECK_EQ_STR(metrics_fmt_value(buf, 18446744073709551615.0),
                 "1.8446744073709552e+19");
    CHECK_EQ_STR(metrics_fmt_value(buf, 9007199254740991.0),
                 "9007199254740991");
    CHECK_EQ_STR(metrics_fmt_value(buf, 0.1), "0.1");
    CHECK_EQ_STR(metrics_fmt_value(buf, 0.00025), "0.00025");
    CHECK_EQ_STR(metrics_fmt_value(buf, 1.0 / 3), "0.3333333333333333");
    CHECK_EQ_STR(metrics_fmt_value(buf, -2.5), "-2.5");
    CHECK_EQ_STR(metrics_fmt_value(buf, INFINITY), "+Inf");
    CHECK_EQ_STR(metrics_fmt_value(buf, -INFINITY), "-Inf");
    CHECK_EQ_STR(metrics_fmt_value(buf, NAN), "NaN");
    CHECK(strtod(metrics_fmt_value(buf, 1e-300), NULL) == 1e-300);
}

TEST(series_cap)
{
    static const char *const lbl[] = {"k", NULL};
    struct metrics_family f;
    metrics_family_init(&f, "c_total", METRICS_COUNTER, "C.", lbl, NULL, 0);
    f.max_series = 3;
    char v[16];
    for (int i = 0; i < 10; i++) {
        snprintf(v, sizeof v, "v%d", i);
        metrics_inc(metrics_get(&f, (const char *[]){v}), 1);
    }
    CHECK_EQ_INT(f.n_series, 3);
    CHECK_EQ_INT(f.dropped, 7);
    /* Existing series still count. */
    metrics_inc(metrics_get(&f, (const char *[]){"v1"}), 1);
    CHECK(f.series[1]->value == 2);
    /* A long value is cut, and the cut value finds the same series. */
    char longv[200];
    memset(longv, 'x', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    f.max_series = 10;
    struct metrics_series *s = metrics_get(&f, (const char *[]){longv});
    CHECK_EQ_INT(strlen(s->vals[0]), METRICS_VALUE_MAX - 1);
    CHECK(metrics_get(&f, (const char *[]){longv}) == s);
    metrics_family_free(&f);
}

static const struct test_case cases[] = {
    TEST_ENTRY(counter_and_gauge),
    TEST_ENTRY(escaping),
    TEST_ENTRY(histogram),
    TEST_ENTRY(shared_bounds_are_ascending),
    TEST_ENTRY(values),
    TEST_ENTRY(series_cap),
    TEST_END};

const struct test_suite suite_metrics = {"metrics", cases};
