/* node_metrics.h - the node's figures in GET /metrics: Raft, storage,
 * snapshots and peer transport (stats.h renders the page).
 *
 * The node driver reports events with one call each (a leader change, a
 * message sent or received, a batch made durable, a snapshot written);
 * the rest (term, indexes, follower lag, queue and database sizes) is read
 * from raft_status, store_stats and transport stats when a scrape comes.
 * The consensus core knows nothing of this: its figures are read through
 * its getters by the driver.
 *
 * Loop thread only. A store batch's timings were measured on the store's
 * worker thread and reach the loop in store_stats with the write's
 * completion (node_metrics_written reads them there). */
#ifndef PZ_NODE_METRICS_H
#define PZ_NODE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft.h"

/* Set up the families and add the collector (once per process). */
void node_metrics_init(void);
/* Before the node takes on ss (node.role and node.leader still old). */
void node_metrics_soft_state(const struct raft_soft_state *ss);
void node_metrics_sent(const struct raft_msg *m);
void node_metrics_recv(const struct raft_msg *m);
/* A store job finished on the loop: a log batch, if one was counted. */
void node_metrics_written(void);
/* n committed entries were handed to apply. */
void node_metrics_applied(size_t n);
/* raft_propose returned rv (0: accepted). */
void node_metrics_proposed(int rv);
/* An accepted proposal's request ended with an error. */
void node_metrics_proposal_failed(void);
/* A write proposed at proposed_ns (stats_now_ns) is applied. */
void node_metrics_committed(uint64_t proposed_ns);
void node_metrics_compacted(void);
/* A local snapshot finished (ok or not); started_ms: its monotonic start
 * in ms (snapshot_child.started_ms). */
void node_metrics_snapshot(bool ok, uint64_t started_ms);
/* A local snapshot started: its fork() held the loop fork_us. */
void node_metrics_snapshot_forked(uint64_t fork_us);
/* A local snapshot started for backups was called off: they all went. */
void node_metrics_snapshot_cancelled(void);
/* The state was loaded at startup; started_ns from uv_hrtime() before. */
void node_metrics_restored(uint64_t started_ns);

#endif
