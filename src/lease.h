/* lease.h - when leases expire: the leader's deadlines. Pure: the caller
 * passes the time (`now`, monotonic milliseconds) into every call.
 *
 * The lease table itself (ids, TTLs, attached keys) is replicated state in
 * the key-value table (kv.h "Leases"); this module holds only what is not
 * replicated: a deadline per lease, meaningful on the leader. Happy path
 * (node_lease.c): lease_track() when a grant is applied (deadline = now +
 * ttl, now being when this node applied it, never before the grant was
 * decided), lease_untrack() when a revoke is applied, lease_keepalive()
 * on a keep-alive the leader answers, lease_reset_all() when this node
 * becomes leader (every deadline = now + its full TTL), and
 * lease_expired() once per timer tick: the leases whose deadline has
 * passed, for which the leader proposes a REVOKE entry.
 *
 * Why this is safe: a deadline is always set to the time of an event on
 * this node's monotonic clock plus the full TTL, and that event (applying
 * the grant here, a keep-alive here, winning an election) happens no
 * earlier than the grant itself or the last keep-alive any earlier leader
 * confirmed (keep-alives are answered only after a ReadIndex round proves
 * leadership, so a new leader is elected after them). So the leader never
 * decides an expiry before grant + TTL or last keep-alive + TTL; deadlines
 * are soft state, and losing them (a crash, a failover) only makes leases
 * live longer. A lease whose revoke was proposed is not reported again
 * until lease_retry() (the proposal failed) or LEASE_RETRY_MS passed.
 *
 * Memory: one record per lease; the caller bounds the number of leases
 * (kv's lease table is bounded). Errors: none; a bug trips pz_assert. */
#ifndef PZ_LEASE_H
#define PZ_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LEASE_RETRY_MS 5000 /* re-report a lease whose revoke is pending */

struct lease_dl {
    uint64_t id;         /* lease id */
    uint64_t ttl_ms;     /* its TTL */
    uint64_t deadline;   /* expires when now >= deadline */
    uint64_t revoke_at;  /* a revoke was proposed at this time; 0: none */
};

struct lease_tracker {
    struct lease_dl *v;  /* sorted by id */
    size_t n;            /* leases tracked */
    size_t cap;          /* room in v */
};

void lease_tracker_init(struct lease_tracker *t);
void lease_tracker_free(struct lease_tracker *t);
/* Forget every lease. */
void lease_tracker_clear(struct lease_tracker *t);

/* Track lease id (ttl seconds) with deadline now + ttl; an id already
 * tracked gets the new ttl and deadline. */
void lease_track(struct lease_tracker *t, uint64_t id, uint64_t ttl_s,
                 uint64_t now);
void lease_untrack(struct lease_tracker *t, uint64_t id);
/* What lease_keepalive did. */
enum lease_ka {
    LEASE_KA_UNTRACKED, /* id is not tracked */
    LEASE_KA_RENEWED,   /* deadline = now + ttl */
    LEASE_KA_EXPIRED,   /* its deadline passed (a revoke is due or pending):
                         * left alone, the lease is as good as gone */
};
/* Deadline = now + ttl, unless the lease already expired: once the
 * deadline passed the leader is about to revoke it (or did propose it),
 * and renewing it then would promise a TTL the revoke in flight breaks. */
enum lease_ka lease_keepalive(struct lease_tracker *t, uint64_t id,
                              uint64_t now);
/* Every deadline = now + its ttl, pending revokes forgotten (a new
 * leader). */
void lease_reset_all(struct lease_tracker *t, uint64_t now);
/* Milliseconds left for id (0 once expired); false if not tracked. */
bool lease_remaining(const struct lease_tracker *t, uint64_t id, uint64_t now,
                     uint64_t *ms);
/* Write up to max ids of expired leases with no revoke pending (or one
 * pending for LEASE_RETRY_MS) into ids, mark them pending at now; returns
 * how many. */
size_t lease_expired(struct lease_tracker *t, uint64_t now, uint64_t *ids,
                     size_t max);
/* The revoke proposed for id failed: report it again when expired. */
void lease_retry(struct lease_tracker *t, uint64_t id);

#endif
