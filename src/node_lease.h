/* node_lease.h - lease expiry on the node: the deadline tracker (lease.h)
 * fed from the state machine and the clock, and the leader's REVOKE
 * proposals for expired leases.
 *
 * Happy path: node.c calls node_lease_role() whenever its soft state
 * changes (a new leader term resets every deadline to now + full TTL),
 * node_lease_tick() from its tick timer (every LEASE_CHECK_MS of the
 * monotonic loop clock the leader proposes a REVOKE for each expired
 * lease, at most NODE_LEASE_INFLIGHT at once); the tracker learns grants
 * and revokes from the state machine's lease hook as entries apply here.
 * The HTTP API calls node_lease_keepalive() and node_lease_remaining() on
 * the leader, after a ReadIndex round has confirmed it still leads.
 * Failure modes: a REVOKE proposal that fails (leader change, timeout) is
 * proposed again later if this node still leads; one that finds the lease
 * already gone does nothing. Loop thread only. */
#ifndef PZ_NODE_LEASE_H
#define PZ_NODE_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define NODE_LEASE_CHECK_MS 100 /* how often the leader looks for expiry */
#define NODE_LEASE_INFLIGHT 64  /* most expiry REVOKEs proposed at once */

/* The lease state of one node. init makes a new one current; free frees
 * the current one; use makes l current (the node selects its own). */
struct node_lease;
struct node_lease *node_lease_init(uint64_t (*now)(void *), void *now_data,
                                   const struct pz_config *cfg, uint64_t seed);
void node_lease_use(struct node_lease *l);
void node_lease_free(void);
/* The node's role now (term: its current term). */
void node_lease_role(bool leader, uint64_t term);
/* From the node's tick timer. */
void node_lease_tick(void);

/* Leader: the lease's deadline becomes now + its TTL. false if the lease
 * does not exist here or already expired (its revoke is due or pending,
 * so it is gone for the client). *ttl gets its TTL in seconds. */
bool node_lease_keepalive(uint64_t id, uint64_t *ttl);
/* Leader: milliseconds left before the leader revokes it (its TTL if not
 * tracked yet). false if the lease does not exist here. */
bool node_lease_remaining(uint64_t id, uint64_t *ms);
/* A fresh random lease id, 1..KV_LEASE_ID_MAX, not in use here. */
uint64_t node_lease_new_id(void);
/* lease-max-ttl in seconds, lease-max-count. */
uint64_t node_lease_max_ttl(void);
uint64_t node_lease_max_count(void);

#endif
