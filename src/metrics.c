/* metrics.c - metric families and the Prometheus text format (metrics.h).
 *
 * Updates cost a linear search over a family's series (tens at most) and a
 * binary search over its bucket bounds; nothing is allocated after a
 * series exists. Rendering escapes HELP text (backslash, newline) and
 * label values (backslash, double quote, newline) as the format requires,
 * writes histogram buckets cumulatively with the +Inf bucket equal to
 * _count, and formats numbers so that Go's ParseFloat reads them back. */
#include "metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double metrics_latency_bounds[] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
const size_t metrics_latency_n = PZ_ARRAY_SIZE(metrics_latency_bounds);
const double metrics_disk_bounds[] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008,
    0.016,   0.032,  0.064,   0.128,  0.256, 0.512, 1.024, 5};
const size_t metrics_disk_n = PZ_ARRAY_SIZE(metrics_disk_bounds);
const double metrics_wait_bounds[] = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
    0.005,   0.01,     0.025,   0.05,   0.1,     0.25,   1};
const size_t metrics_wait_n = PZ_ARRAY_SIZE(metrics_wait_bounds);
const double metrics_batch_bounds[] = {1,  2,   4,   8,   16,   32,
                                       64, 128, 256, 512, 1024, 4096};
const size_t metrics_batch_n = PZ_ARRAY_SIZE(metrics_batch_bounds);

static void hist_init(struct metrics_hist *h, const double *bounds, size_t n)
{
    h->bounds = bounds;
    h->n_bounds = n;
    h->counts = n ? pz_calloc(n + 1, sizeof *h->counts) : NULL;
    h->sum = 0;
    h->count = 0;
}

void metrics_family_init(struct metrics_family *f, const char *name,
                         enum metrics_type type, const char *help,
                         const char *const *labels, const double *bounds,
                         size_t n_bounds)
{
    memset(f, 0, sizeof *f);
    f->name = name;
    f->help = help;
    f->type = type;
    for (size_t i = 0; labels && labels[i]; i++) {
        pz_assert(i < METRICS_MAX_LABELS);
        f->labels[i] = labels[i];
        f->n_labels = i + 1;
    }
    if (type == METRICS_HISTOGRAM) {
        pz_assert(bounds && n_bounds >= 1);
        for (size_t i = 1; i < n_bounds; i++)
            pz_assert(bounds[i - 1] < bounds[i]);
        f->bounds = bounds;
        f->n_bounds = n_bounds;
    }
    f->max_series = METRICS_MAX_SERIES;
    hist_init(&f->sink.h, f->bounds, f->n_bounds);
}

void metrics_family_free(struct metrics_family *f)
{
    for (size_t i = 0; i < f->n_series; i++) {
        pz_free(f->series[i]->h.counts);
        pz_free(f->series[i]);
    }
    pz_free(f->series);
    pz_free(f->sink.h.counts);
    f->series = NULL;
    f->last = NULL;
    f->n_series = f->cap = 0;
    f->sink.h.counts = NULL;
}

static bool same(const struct metrics_series *s, size_t n,
                 const char *const *vals)
{
    for (size_t i = 0; i < n; i++) {
        if (strncmp(s->vals[i], vals[i], METRICS_VALUE_MAX - 1) != 0)
            return false;
    }
    return true;
}

struct metrics_series *metrics_get(struct metrics_family *f,
                                   const char *const *vals)
{
    if (f->last && same(f->last, f->n_labels, vals))
        return f->last;
    for (size_t i = 0; i < f->n_series; i++) {
        if (same(f->series[i], f->n_labels, vals))
            return f->last = f->series[i];
    }
    if (f->n_series >= f->max_series) {
        f->dropped++;
        return &f->sink;
    }
    if (f->n_series == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 8;
        f->series = pz_realloc(f->series, f->cap * sizeof *f->series);
    }
    struct metrics_series *s = pz_calloc(1, sizeof *s);
    for (size_t i = 0; i < f->n_labels; i++)
        snprintf(s->vals[i], sizeof s->vals[i], "%s", vals[i]);
    hist_init(&s->h, f->bounds, f->n_bounds);
    f->series[f->n_series++] = s;
    return f->last = s;
}

void metrics_hist_observe(struct metrics_hist *h, double v)
{
    /* First bound >= v: Prometheus buckets are "less than or equal". */
    size_t lo = 0, hi = h->n_bounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= h->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    h->counts[lo]++; /* lo == n_bounds: +Inf (also NaN) */
    h->sum += v;
    h->count++;
}

void metrics_observe(struct metrics_series *s, double v)
{
    if (s->h.counts)
        metrics_hist_observe(&s->h, v);
}

/* --- rendering ------------------------------------------------------------ */

const char *metrics_fmt_value(char *buf, double v)
{
    if (isnan(v))
        return strcpy(buf, "NaN");
    if (isinf(v))
        return strcpy(buf, v > 0 ? "+Inf" : "-Inf");
    if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        snprintf(buf, 32, "%.0f", v);
        return buf;
    }
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

static void escape(struct pz_buf *b, const char *s, bool quotes)
{
    for (; *s; s++) {
        if (*s == '\\')
            pz_buf_append(b, "\\\\", 2);
        else if (*s == '\n')
            pz_buf_append(b, "\\n", 2);
        else if (*s == '"' && quotes)
            pz_buf_append(b, "\\\"", 2);
        else
            pz_buf_append(b, s, 1);
    }
}

static const char *type_name(enum metrics_type t)
{
    switch (t) {
    case METRICS_COUNTER:
        return "counter";
    case METRICS_GAUGE:
        return "gauge";
    case METRICS_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

void metrics_render_head(struct pz_buf *b, const char *name,
                         enum metrics_type type, const char *help)
{
    pz_buf_appendf(b, "# HELP %s ", name);
    escape(b, help, false);
    pz_buf_appendf(b, "\n# TYPE %s %s\n", name, type_name(type));
}

/* name{k="v",...,extra_k="extra_v"} value */
static void sample(struct pz_buf *b, const char *name, const char *suffix,
                   const char *const *labels, const char *const *vals, size_t n,
                   const char *extra_k, const char *extra_v, double v)
{
    char num[32];
    pz_buf_appendf(b, "%s%s", name, suffix);
    if (n > 0 || extra_k) {
        pz_buf_append(b, "{", 1);
        for (size_t i = 0; i < n; i++) {
            pz_buf_appendf(b, "%s%s=\"", i ? "," : "", labels[i]);
            escape(b, vals[i], true);
            pz_buf_append(b, "\"", 1);
        }
        if (extra_k)
            pz_buf_appendf(b, "%s%s=\"%s\"", n ? "," : "", extra_k, extra_v);
        pz_buf_append(b, "}", 1);
    }
    pz_buf_appendf(b, " %s\n", metrics_fmt_value(num, v));
}

void metrics_render_sample(struct pz_buf *b, const char *name,
                           const char *const *labels, const char *const *vals,
                           double v)
{
    size_t n = 0;
    while (labels && vals && labels[n])
        n++;
    sample(b, name, "", labels, vals, n, NULL, NULL, v);
}

void metrics_render_one(struct pz_buf *b, const char *name,
                        enum metrics_type type, const char *help, double v)
{
    metrics_render_head(b, name, type, help);
    sample(b, name, "", NULL, NULL, 0, NULL, NULL, v);
}

static void render_hist(struct pz_buf *b, const struct metrics_family *f,
                        const struct metrics_series *s, const char *const *vals)
{
    char le[32];
    uint64_t cum = 0;
    for (size_t i = 0; i < f->n_bounds; i++) {
        cum += s->h.counts[i];
        sample(b, f->name, "_bucket", f->labels, vals, f->n_labels, "le",
               metrics_fmt_value(le, f->bounds[i]), (double)cum);
    }
    sample(b, f->name, "_bucket", f->labels, vals, f->n_labels, "le", "+Inf",
           (double)s->h.count);
    sample(b, f->name, "_sum", f->labels, vals, f->n_labels, NULL, NULL,
           s->h.sum);
    sample(b, f->name, "_count", f->labels, vals, f->n_labels, NULL, NULL,
           (double)s->h.count);
}

void metrics_render(struct pz_buf *b, const struct metrics_family *f)
{
    metrics_render_head(b, f->name, f->type, f->help);
    for (size_t i = 0; i < f->n_series; i++) {
        const struct metrics_series *s = f->series[i];
        const char *vals[METRICS_MAX_LABELS];
        for (size_t j = 0; j < f->n_labels; j++)
            vals[j] = s->vals[j];
        if (f->type == METRICS_HISTOGRAM)
            render_hist(b, f, s, vals);
        else
            sample(b, f->name, "", f->labels, vals, f->n_labels, NULL, NULL,
                   s->value);
    }
}
