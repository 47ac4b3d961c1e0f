/* node_lease.c - lease expiry on the node (node_lease.h). */
#include "node_lease.h"

#include "kv.h"
#include "lease.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "stats.h"

/* An expiry REVOKE in flight. */
struct revoke_req {
    struct node_req req; /* first */
    uint64_t id;         /* the lease */
};

struct node_lease {
    uint64_t (*now)(void *); /* the monotonic clock, milliseconds */
    void *now_data;          /* its argument */
    struct lease_tracker t;  /* deadlines */
    struct kv *kv;           /* the table the tracker mirrors */
    bool leader;             /* this node led at the last role change */
    uint64_t term;           /* ... in this term */
    uint64_t next_check;     /* io now() of the next expiry scan */
    size_t inflight;         /* revoke_reqs outstanding */
    uint64_t max_ttl;        /* lease-max-ttl, seconds */
    uint64_t max_count;      /* lease-max-count */
    uint64_t rng;            /* lease ids */
    uint64_t grants;         /* grants applied here */
    uint64_t revokes;        /* revokes applied here */
    uint64_t expiries;       /* expiry revokes this node proposed, applied */
};

/* The lease state of the node the code runs as (node_lease_use). */
static struct node_lease *nl;
static bool collector; /* the metrics collector is added */

static uint64_t now_ms(void)
{
    return nl->now(nl->now_data);
}

static void on_lease(void *arg, bool granted, uint64_t id, uint64_t ttl)
{
    PZ_UNUSED(arg);
    /* The grant counts from now, when this node applied it: never
     * earlier than when it was decided. */
    if (granted) {
        lease_track(&nl->t, id, ttl, now_ms());
        nl->grants++;
    } else {
        lease_untrack(&nl->t, id);
        nl->revokes++;
    }
}

/* The node's table changed (startup, a snapshot installed): mirror it,
 * every deadline now + its full TTL (later than any it had). */
static void resync(struct kv *kv)
{
    lease_tracker_clear(&nl->t);
    nl->kv = kv;
    if (kv == NULL)
        return;
    kv_set_lease_cb(kv, on_lease, NULL);
    uint64_t now = now_ms();
    for (size_t i = 0; i < kv_lease_count(kv); i++) {
        struct kv_lease l;
        kv_lease_at(kv, i, &l);
        lease_track(&nl->t, l.id, l.ttl, now);
    }
}

static void collect(struct pz_buf *b, void *arg)
{
    PZ_UNUSED(arg);
    struct kv *kv = node_kv();
    if (kv == NULL || nl == NULL)
        return;
    metrics_render_one(b, "pyazdb_leases", METRICS_GAUGE,
                       "Leases in the state machine.",
                       (double)kv_lease_count(kv));
    metrics_render_one(b, "pyazdb_lease_grants_total", METRICS_COUNTER,
                       "Lease grants applied on this node.",
                       (double)nl->grants);
    metrics_render_one(b, "pyazdb_lease_revokes_total", METRICS_COUNTER,
                       "Lease revokes (expiries included) applied on this "
                       "node.",
                       (double)nl->revokes);
    metrics_render_one(b, "pyazdb_lease_expiries_total", METRICS_COUNTER,
                       "Leases this node, as leader, revoked on expiry.",
                       (double)nl->expiries);
}

struct node_lease *node_lease_init(uint64_t (*now)(void *), void *now_data,
                                   const struct pz_config *cfg, uint64_t seed)
{
    nl = pz_calloc(1, sizeof *nl);
    nl->now = now;
    nl->now_data = now_data;
    lease_tracker_init(&nl->t);
    nl->kv = NULL;
    nl->leader = false;
    nl->term = 0;
    nl->inflight = 0;
    nl->max_ttl = (uint64_t)cfg->lease_max_ttl_ms / 1000;
    nl->max_count = (uint64_t)cfg->lease_max_count;
    nl->rng = seed ^ 0x6c65617365ull; /* "lease" */
    if (!collector) {
        stats_add_collector(collect, NULL);
        collector = true;
    }
    return nl;
}

void node_lease_use(struct node_lease *l)
{
    nl = l;
}

void node_lease_free(void)
{
    if (nl == NULL)
        return;
    lease_tracker_free(&nl->t);
    pz_free(nl);
    nl = NULL;
}

void node_lease_role(bool leader, uint64_t term)
{
    if (leader && (!nl->leader || term != nl->term)) {
        /* A new leader knows nothing of the keep-alives its predecessor
         * answered: every lease gets its full TTL from now. */
        if (nl->kv != node_kv())
            resync(node_kv());
        lease_reset_all(&nl->t, now_ms());
    }
    nl->leader = leader;
    nl->term = term;
}

static void on_revoked(struct node_req *req, int status)
{
    struct revoke_req *r = (struct revoke_req *)req;
    nl->inflight--;
    if (status < 0)
        lease_retry(&nl->t, r->id); /* proposed again while leading */
    else if (req->res.status == KV_OK)
        nl->expiries++;
    pz_free(r);
}

void node_lease_tick(void)
{
    struct kv *kv = node_kv();
    if (kv != nl->kv)
        resync(kv);
    uint64_t now = now_ms();
    if (now < nl->next_check)
        return;
    nl->next_check = now + NODE_LEASE_CHECK_MS;
    if (!node_is_leader() || nl->inflight >= NODE_LEASE_INFLIGHT)
        return;
    uint64_t ids[NODE_LEASE_INFLIGHT];
    size_t n = lease_expired(&nl->t, now, ids, NODE_LEASE_INFLIGHT - nl->inflight);
    for (size_t i = 0; i < n; i++) {
        struct pz_buf cmd;
        pz_buf_init(&cmd);
        pz_assert(kv_encode_lease_revoke(&cmd, ids[i]) == 0);
        struct revoke_req *r = pz_calloc(1, sizeof(*r));
        r->id = ids[i];
        r->req.unbounded = true; /* at most NODE_LEASE_INFLIGHT */
        int rv = node_propose(&r->req, (const uint8_t *)cmd.data, cmd.len,
                              on_revoked);
        pz_buf_free(&cmd);
        if (rv < 0) {
            lease_retry(&nl->t, ids[i]);
            pz_free(r);
            break;
        }
        nl->inflight++;
        pz_debug("lease %llu expired: revoking",
                 (unsigned long long)ids[i]);
    }
}

bool node_lease_keepalive(uint64_t id, uint64_t *ttl)
{
    struct kv_lease l;
    if (!kv_lease_get(node_kv(), id, &l))
        return false;
    switch (lease_keepalive(&nl->t, id, now_ms())) {
    case LEASE_KA_UNTRACKED:
        lease_track(&nl->t, id, l.ttl, now_ms());
        break;
    case LEASE_KA_RENEWED:
        break;
    case LEASE_KA_EXPIRED:
        return false; /* its revoke applies whatever we answer */
    }
    *ttl = l.ttl;
    return true;
}

bool node_lease_remaining(uint64_t id, uint64_t *ms)
{
    struct kv_lease l;
    if (!kv_lease_get(node_kv(), id, &l))
        return false;
    if (!lease_remaining(&nl->t, id, now_ms(), ms))
        *ms = l.ttl * 1000;
    return true;
}

uint64_t node_lease_new_id(void)
{
    struct kv_lease l;
    for (;;) {
        uint64_t id = pz_rand_next(&nl->rng) & KV_LEASE_ID_MAX;
        if (id != 0 && !kv_lease_get(node_kv(), id, &l))
            return id;
    }
}

uint64_t node_lease_max_ttl(void)
{
    return nl->max_ttl;
}

uint64_t node_lease_max_count(void)
{
    return nl->max_count;
}
