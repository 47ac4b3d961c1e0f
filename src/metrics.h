/* metrics.h - counters, gauges and fixed-bucket histograms, and their
 * rendering in the Prometheus text exposition format (version 0.0.4).
 *
 * Pure: no I/O, no clock, no locks. A family is one metric name with its
 * HELP text, type and label names; its series are the label-value
 * combinations seen so far, created on first use and kept for the life of
 * the family (counters never go back). The owner updates them from one
 * thread only (the loop): a figure measured on another thread is handed
 * over with the completion that already goes back to the loop.
 *
 * Happy path:
 *   static const char *const lbl[] = {"api", "method", "code", NULL};
 *   metrics_family_init(&f, "pyazdb_requests_total", METRICS_COUNTER,
 *                       "Requests served.", lbl, NULL, 0);
 *   metrics_inc(metrics_get(&f, (const char *[]){"http", "get", "200"}), 1);
 *   metrics_render(&buf, &f);
 *
 * Cardinality is bounded: past max_series label combinations, updates go
 * to a sink series that is never rendered (and counted in f->dropped), so
 * a label fed from outside cannot grow memory without bound. Label values
 * longer than METRICS_VALUE_MAX - 1 bytes are cut. */
#ifndef PZ_METRICS_H
#define PZ_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "pz.h"

#define METRICS_MAX_LABELS 3   /* label names per family, "le" not counted */
#define METRICS_VALUE_MAX 64   /* label value bytes, NUL included */
#define METRICS_MAX_SERIES 256 /* default series cap per family */

enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
};

struct metrics_hist {
    const double *bounds; /* upper bounds, strictly ascending; borrowed */
    size_t n_bounds;      /* their number (the +Inf bucket is extra) */
    uint64_t *counts;     /* n_bounds + 1 per-bucket counts, not
                             cumulative; the last is +Inf */
    double sum;           /* sum of observed values */
    uint64_t count;       /* observations */
};

struct metrics_series {
    char vals[METRICS_MAX_LABELS][METRICS_VALUE_MAX]; /* label values */
    double value;                                     /* counter or gauge */
    struct metrics_hist h; /* histogram families only */
};

struct metrics_family {
    const char *name; /* metric name; borrowed */
    const char *help; /* HELP text; borrowed */
    enum metrics_type type;
    const char *labels[METRICS_MAX_LABELS]; /* label names; borrowed */
    size_t n_labels;                        /* their number */
    const double *bounds; /* histogram bucket bounds; borrowed */
    size_t n_bounds;      /* their number */
    size_t max_series;    /* series cap (METRICS_MAX_SERIES by default) */
    struct metrics_series **series; /* in creation order (stable
                                       addresses: callers may cache) */
    size_t n_series;                /* series created */
    size_t cap;                     /* slots in series */
    struct metrics_series sink;     /* updates past max_series */
    uint64_t dropped;               /* updates that went to the sink */
    struct metrics_series *last;    /* last found: tried first */
};

/* labels: NULL-terminated list of at most METRICS_MAX_LABELS names, or
 * NULL for none. bounds/n_bounds: histograms only (n_bounds >= 1,
 * ascending, asserted). All strings and bounds are borrowed for the
 * family's life. */
void metrics_family_init(struct metrics_family *f, const char *name,
                         enum metrics_type type, const char *help,
                         const char *const *labels, const double *bounds,
                         size_t n_bounds);
void metrics_family_free(struct metrics_family *f);

/* The series with these label values (n_labels of them; NULL allowed when
 * the family has no labels), created at zero if new. Never NULL: past
 * max_series the sink. The pointer stays valid until the family is freed. */
struct metrics_series *metrics_get(struct metrics_family *f,
                                   const char *const *vals);

static inline void metrics_inc(struct metrics_series *s, double by)
{
    s->value += by;
}
static inline void metrics_set(struct metrics_series *s, double v)
{
    s->value = v;
}
/* Count v into the first bucket whose bound is >= v (+Inf if none). */
void metrics_observe(struct metrics_series *s, double v);
void metrics_hist_observe(struct metrics_hist *h, double v);

/* Append the family (HELP, TYPE and every series; histograms as
 * cumulative _bucket lines with le, then _sum and _count) to b. A family
 * with no series yet writes only HELP and TYPE. */
void metrics_render(struct pz_buf *b, const struct metrics_family *f);

/* Pieces for figures read at scrape time rather than kept in a family. */
void metrics_render_head(struct pz_buf *b, const char *name,
                         enum metrics_type type, const char *help);
/* One sample line: name{k1="v1",...} value; labels NULL-terminated names
 * with as many values (both NULL: no labels). Values are escaped. */
void metrics_render_sample(struct pz_buf *b, const char *name,
                           const char *const *labels, const char *const *vals,
                           double v);
/* HELP, TYPE and one unlabelled sample. */
void metrics_render_one(struct pz_buf *b, const char *name,
                        enum metrics_type type, const char *help, double v);

/* v as the format wants it: integers without exponent when exact,
 * otherwise the shortest form that reads back the same, "+Inf", "-Inf",
 * "NaN". buf needs 32 bytes. Returns buf. */
const char *metrics_fmt_value(char *buf, double v);

/* Common bucket bounds, in seconds and counts. */
extern const double metrics_latency_bounds[]; /* 100 us .. 10 s */
extern const size_t metrics_latency_n;
extern const double metrics_disk_bounds[]; /* 50 us .. 5 s */
extern const size_t metrics_disk_n;
extern const double metrics_wait_bounds[]; /* 10 us .. 1 s */
extern const size_t metrics_wait_n;
extern const double metrics_batch_bounds[]; /* 1 .. 4096 entries */
extern const size_t metrics_batch_n;

#endif
