/* stats.h - the process's metrics: the figures the loop updates as it
 * serves (requests, client connections), the standard process_* figures
 * read from /proc at scrape time, pyazdb_build_info, and the page GET
 * /metrics serves (the Prometheus text format, metrics.h).
 *
 * Loop thread only: every function here is called from the loop, and
 * nothing is locked. Figures measured on another thread (the store's
 * write times) reach it with the completion the loop already receives.
 *
 * Other modules contribute a collector (stats_add_collector) that appends
 * their families at scrape time: the node (node_metrics.c) its Raft,
 * storage and transport figures. mandi has no node and contributes its
 * own. Before stats_init every update is a no-op, so modules shared with
 * the CLI (conn.c) may call in unconditionally. */
#ifndef PZ_STATS_H
#define PZ_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "metrics.h"
#include "pz.h"

/* Content-Type of the page: text format 0.0.4. */
#define STATS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

enum stats_conn_event {
    STATS_CONN_ACCEPTED, /* a client connected */
    STATS_CONN_CLOSED,   /* ...and went */
    STATS_CONN_REFUSED,  /* refused at max-clients */
    STATS_CONN_EVICTED,  /* evicted to make room at max-clients */
};

typedef void (*stats_collect_cb)(struct pz_buf *b, void *arg);

/* Start counting. started_unix: process start, seconds since the epoch. */
void stats_init(double started_unix);
/* Free everything (at exit; later updates are no-ops again). */
void stats_close(void);
/* Append cb's families to every scrape, after the process's own; at most
 * a few collectors. */
void stats_add_collector(stats_collect_cb cb, void *arg);

/* A monotonic timestamp for stats_request (ns). */
uint64_t stats_now_ns(void);
/* A request of api ("http", "grpc", "mandi") and method (a route name or
 * gRPC method: a fixed set, never client text) was answered with code
 * (HTTP status or gRPC status name); started_ns from stats_now_ns when it
 * arrived, 0 if unknown (counted, no latency). */
void stats_request(const char *api, const char *method, const char *code,
                   uint64_t started_ns);
/* The same with an HTTP status. */
void stats_request_http(const char *api, const char *method, int status,
                        uint64_t started_ns);
/* A client connection event on a listener ("http", "grpc", "raft"...). */
void stats_conn(const char *listener, enum stats_conn_event ev);
/* One turn of the event loop worked busy_ns (its time not waiting). */
void stats_loop_turn(uint64_t busy_ns);

/* The page: every family, then the collectors'. b is appended to. */
void stats_render(struct pz_buf *b);

#endif
