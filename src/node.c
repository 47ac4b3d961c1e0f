/* node.c - the node: the only place the Raft core meets I/O and time.
 *
 * Owns the state machine (kv), the Raft core, the log store and the peer
 * transport, one tick timer, and every client request waiting on them.
 *
 * Happy path, once per loop turn from the prepare hook (node_before_sleep),
 * the Ready cycle (docs/DESIGN.md, "The life of a write"):
 *   1. take a Ready; apply its committed entries (durable here already) and
 *      complete the writes and reads they unblock;
 *   2. send the messages that may go at once (the leader's AppendEntries
 *      go out before its own disk write: thesis §10.2.1);
 *   3. hand the hard state and new entries to the store, which commits them
 *      in one SQLite transaction on libuv's thread pool while the loop goes
 *      on serving (group commit: whatever arrives meanwhile forms the next
 *      batch, so the batch grows with the load);
 *   4. when the write is durable: send the messages that needed it (votes,
 *      acknowledgements), raft_advance, and start over.
 * Failure modes: a failed log write is fatal (fail-stop: log it and exit,
 * never go on with state that is not on disk), except for lack of space
 * (see "out of space" below: the Ready is written again until it fits,
 * and client writes are refused meanwhile). A request whose entry is
 * overwritten by another leader fails with PZ_ELEADERCHANGE; one that waits
 * longer than request-timeout fails with PZ_ETIMEDOUT (a write may still be
 * applied later). A database that fails its checks at start stops the
 * process with the reason. */
#include "node.h"
#include "tls_setup.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpc.h"
#include "json.h"
#include "log.h"
#include "node_internal.h"
#include "node_lease.h"
#include "watch.h"

struct node node;

/* Every change the state machine makes, for GET /watch (watch.h): fed
 * from kv's event callback, published once per applied entry. */
static struct watch_hub watch_hub;

static void on_kv_event(void *arg, int type, const struct kv_view *cur,
                        const struct kv_view *prev)
{
    PZ_UNUSED(arg);
    watch_hub_record(&watch_hub, kv_revision(node.kv), type, cur, prev);
}

void core_kv_replaced(void)
{
    kv_set_event_cb(node.kv, on_kv_event, NULL);
    watch_hub_reset(&watch_hub, kv_revision(node.kv));
}

struct watch_hub *node_watch(void)
{
    return &watch_hub;
}

void core_fatal(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Fail-stop: never go on with state that is not on disk or not as
     * the log says). */
    pz_error("%s; stopping", msg);
    exit(1);
}

static void apply_entry(const struct raft_entry *e);
static struct node_req *read_by_ctx(uint64_t ctx);
static int read_start(struct node_req *req);
static void send_all(const struct raft_msg *msgs, size_t n);
static void soft_state_changed(const struct raft_soft_state *ss);
static void ready_apply(struct raft_ready *rd);
static void ready_cycle(void);
static void send_early(void);
static void on_written(struct store *s, int status, const char *errmsg,
                       void *arg);
static const char *on_recv(void *data, const struct raft_msg *m);
static void on_tick(uv_timer_t *t);
static int restore(char *err, size_t errlen);
static void on_transport_closed(void *data);
static void on_tick_closed(uv_handle_t *h);
static int write_ready(void);
static bool frozen(void);

/* --- applying committed entries ------------------------------------------ */

/* The write waiting on exactly this entry, or NULL. */
static struct node_req *proposal_of(const struct raft_entry *e)
{
    struct pz_queue *q;
    PZ_QUEUE_FOREACH(q, &node.proposals)
    {
        struct node_req *r = container_of(q, struct node_req, q);
        if (r->index >= e->index)
            return r->index == e->index && r->term == e->term ? r : NULL;
    }
    return NULL;
}

static void apply_entry(const struct raft_entry *e)
{
    struct kv_result res = {0};
    if (e->type == RAFT_ENTRY_NORMAL) {
        struct node_req *w = proposal_of(e);
        int rv =
            kv_apply_sink(node.kv, e->data, e->len, &res, w ? w->sink : NULL);
        if (rv < 0) /* every node rejects it alike: state stays equal */
            pz_warn("entry %llu: undecodable command (%s), skipped",
                    (unsigned long long)e->index, pz_strerror(rv));
        watch_hub_commit(&watch_hub);
    } else if (e->type == RAFT_ENTRY_CONF) {
        members_conf_committed(e);
    }
    node.applied = e->index;
    /* Complete the writes waiting on this index. */
    while (!pz_queue_empty(&node.proposals)) {
        struct node_req *r =
            container_of(pz_queue_head(&node.proposals), struct node_req, q);
        if (r->index > e->index)
            break;
        if (r->index == e->index && r->term == e->term) {
            r->res = res;
            reqs_done(r, 0);
        } else {
            /* Another leader's entry took this place: ours is lost. */
            reqs_done(r, PZ_ELEADERCHANGE);
        }
    }
}

void core_reads_check_applied(void)
{
    struct pz_queue *e = node.reads_apply.next;
    while (e != &node.reads_apply) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (r->index <= node.applied)
            reqs_done(r, 0);
    }
}

static struct node_req *read_by_ctx(uint64_t ctx)
{
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &node.reads)
    {
        struct node_req *r = container_of(e, struct node_req, q);
        if (r->ctx == ctx)
            return r;
    }
    return NULL;
}

static int read_start(struct node_req *req)
{
    req->read_waits = false;
    req->ctx = ++node.read_ctx;
    int rv = raft_read_index(node.raft, req->ctx);
    if (rv == 0)
        reqs_link(&node.reads, req);
    return rv;
}

/* --- out of space -----------------------------------------------------------
 * A log write that fails for lack of space (PZ_ENOSPC from the store:
 * SQLite rolled it back whole) is not fatal. The Ready stays owed: it is
 * written again every NOSPACE_RETRY_MS and the core is not advanced
 * before it is durable, exactly as with a very slow disk, so no entry is
 * acknowledged to a peer, counted by a leader for itself, or applied here
 * before it is stored. Meanwhile:
 *  - the NOSPACE alarm is raised (/status "alarms", node_health), client
 *    writes are refused with PZ_ENOSPC (HTTP 507, gRPC RESOURCE_EXHAUSTED)
 *    and stale reads go on from the state machine;
 *  - a leader hands its leadership to the most up-to-date voter, which can
 *    store what this node cannot;
 *  - a node that does not lead is frozen, as if paused (SIGSTOP): no
 *    ticks, peer messages dropped, so nothing piles up in memory while the
 *    disk stays full; the leader sees it stop answering (its match_index
 *    and last_contact_ms in the leader's /status).
 * A compaction step that fails the same way is tried again later. The
 * first write that succeeds clears the alarm and the node goes on.
 *
 * quota-backend-bytes (when not 0) raises the same alarm when the state
 * machine's keys and values reach it, before the disk fills: a SET that
 * would pass it is refused, and while it is raised only deletes are
 * accepted; it clears once deletes bring the data to 90% of the quota. */

#define NOSPACE_RETRY_MS 1000

/* Out of space with a Ready owed and not the leader: frozen (above). */
static bool frozen(void)
{
    if (!node.ready_owed)
        return false;
    struct raft_status rs;
    raft_status(node.raft, &rs);
    return rs.role != RAFT_LEADER;
}

static void set_alarm_reason(void)
{
    if (node.alarm_disk)
        return; /* keeps the store's message */
    if (node.alarm_quota) {
        snprintf(node.alarm_reason, sizeof node.alarm_reason,
                 "the data (%zu bytes of keys and values) reached "
                 "quota-backend-bytes (%lld): only deletes are accepted",
                 kv_bytes(node.kv),
                 (long long)node.cfg->quota_backend_bytes);
    } else {
        node.alarm_reason[0] = '\0';
    }
}

void core_nospace(const char *errmsg)
{
    if (!node.alarm_disk)
        pz_error("no space left on device: %s; refusing writes, retrying "
                 "every %d ms",
                 errmsg, NOSPACE_RETRY_MS);
    node.alarm_disk = true;
    snprintf(node.alarm_reason, sizeof node.alarm_reason, "%s", errmsg);
}

void core_space_back(void)
{
    if (!node.alarm_disk)
        return;
    node.alarm_disk = false;
    pz_info("the disk has room again: the Raft log is written, writes are "
            "accepted");
    set_alarm_reason();
}

/* --- what silent voters say: a leader asks a voter it has not heard from
 * for an election timeout for its GET /status (HTTP still answers when
 * its core is frozen), at most every PALARM_ASK_MS, and shows the NOSPACE
 * alarm it reports next to it in its own /status. */

#define PALARM_ASK_MS 3000

static struct peer_alarm *palarm_get(uint64_t id)
{
    for (size_t i = 0; i < node.n_palarms; i++)
        if (node.palarms[i].id == id)
            return &node.palarms[i];
    return NULL;
}

static void palarm_answer(const struct httpc_result *res, void *data)
{
    uint64_t id = (uint64_t)(uintptr_t)data;
    struct peer_alarm *p = palarm_get(id);
    if (p == NULL || p->c == NULL)
        return;
    httpc_free(p->c); /* allowed from its own callback */
    p->c = NULL;
    p->nospace = false;
    p->reason[0] = '\0';
    struct json_val root, v, e;
    if (res->err != 0 || res->status != 200 ||
        json_parse(res->body, res->blen, &root) < 0 ||
        !json_get(&root, "alarms", &v) || v.type != JSON_ARRAY)
        return;
    struct json_iter it;
    json_iter_init(&it, &v);
    while (json_iter_next(&it, NULL, &e))
        if (e.type == JSON_STRING && json_str_is(&e, "NOSPACE", 7))
            p->nospace = true;
    if (p->nospace && json_get(&root, "alarm_reason", &v) &&
        v.type == JSON_STRING) {
        size_t len;
        char *r = json_strdup(&v, &len);
        snprintf(p->reason, sizeof p->reason, "%s", r);
        for (char *c = p->reason; *c; c++)
            if ((unsigned char)*c < 0x20)
                *c = ' '; /* one line, whatever it sent */
        pz_free(r);
    }
    if (p->nospace) {
        struct member *m = members_find(id);
        pz_warn("member %s is out of space: %s",
                m && m->name[0] ? m->name : "(unknown)", p->reason);
    }
}

/* Forget every record (not leading any more, closing). */
static void palarm_clear(void)
{
    for (size_t i = 0; i < node.n_palarms; i++) {
        struct httpc *c = node.palarms[i].c;
        node.palarms[i].c = NULL; /* its callback finds nothing to do */
        if (c)
            httpc_free(c);
    }
    pz_free(node.palarms);
    node.palarms = NULL;
    node.n_palarms = 0;
}

static void palarm_cron(const struct raft_status *rs)
{
    if (rs->role != RAFT_LEADER) {
        if (node.n_palarms)
            palarm_clear();
        return;
    }
    uint64_t now = uv_now(node.loop);
    uint64_t silent_ms = (uint64_t)node.cfg->election_timeout_ms;
    for (size_t i = 0; i < rs->n_peers; i++) {
        const struct raft_peer_status *ps = &rs->peers[i];
        struct peer_alarm *p = palarm_get(ps->id);
        if (ps->last_contact * node.tick_ms < silent_ms) {
            if (p)
                p->nospace = false; /* it answers again */
            continue;
        }
        struct member *m = members_find(ps->id);
        if (m == NULL || !ps->voter || m->http[0] == '\0')
            continue;
        if (p == NULL) {
            node.palarms = pz_realloc(node.palarms, (node.n_palarms + 1) *
                                                        sizeof *node.palarms);
            p = &node.palarms[node.n_palarms++];
            memset(p, 0, sizeof *p);
            p->id = ps->id;
        } else if (p->c != NULL || now < p->asked_at + PALARM_ASK_MS) {
            continue;
        }
        struct httpc_opts o = {.max_head = 16384,
                               .max_body = 65536,
                               .timeout_ms = 2000,
                               .max_attempts = 1,
                               .log_name = m->name,
                               .quiet_dial = true,
                               .tls = &tls_http_client};
        p->asked_at = now;
        p->c = httpc_new(node.loop, m->http, &o);
        if (p->c == NULL)
            continue;
        httpc_request(p->c, "GET", "/status", NULL, NULL, 0, palarm_answer,
                      (void *)(uintptr_t)ps->id);
    }
}

/* Once a second: the quota alarm follows the data; a leader out of space
 * hands its leadership on; a leader asks silent voters why. */
static void nospace_cron(void)
{
    int64_t quota = node.cfg->quota_backend_bytes;
    size_t bytes = kv_bytes(node.kv);
    if (quota > 0 && !node.alarm_quota && bytes >= (uint64_t)quota) {
        node.alarm_quota = true;
        set_alarm_reason();
        pz_warn("NOSPACE alarm: %s", node.alarm_reason);
    } else if (node.alarm_quota &&
               (quota <= 0 || bytes <= (uint64_t)quota / 10 * 9)) {
        node.alarm_quota = false;
        set_alarm_reason();
        pz_info("NOSPACE alarm cleared: the data (%zu bytes) is back under "
                "quota-backend-bytes",
                bytes);
    }
    struct raft_status rs;
    raft_status(node.raft, &rs);
    palarm_cron(&rs);
    if (!node.ready_owed || rs.role != RAFT_LEADER || rs.transferee != 0)
        return;
    uint64_t best = 0, best_match = 0;
    for (size_t i = 0; i < rs.n_peers; i++) {
        if (rs.peers[i].voter && rs.peers[i].match >= best_match &&
            rs.peers[i].match > 0) {
            best = rs.peers[i].id;
            best_match = rs.peers[i].match;
        }
    }
    if (best == 0)
        return;
    struct member *m = members_find(best);
    if (raft_transfer_leader(node.raft, best) == 0)
        pz_warn("out of space: handing leadership to %s",
                m && m->name[0] ? m->name : "(unknown)");
}

/* PZ_ENOSPC if the write cmd may not be proposed now (above). */
/* Key and value bytes of every put in transaction c (both branches);
 * 1 for a put of an empty key and value, so that 0 means "no put". */
static uint64_t txn_put_bytes(const struct kv_cmd *c)
{
    struct kv_op *ops = pz_calloc(c->nsucc + c->nfail + 1, sizeof *ops);
    kv_txn_items(c, NULL, ops, ops + c->nsucc);
    uint64_t n = 0;
    for (size_t i = 0; i < c->nsucc + c->nfail; i++)
        if (ops[i].type == KV_TOP_PUT)
            n += PZ_MAX((uint64_t)1, (uint64_t)ops[i].klen + ops[i].vlen);
    pz_free(ops);
    return n;
}

static int space_check(const uint8_t *cmd, size_t len)
{
    if (node.alarm_disk)
        return PZ_ENOSPC;
    int64_t quota = node.cfg->quota_backend_bytes;
    if (quota <= 0 && !node.alarm_quota)
        return 0;
    struct kv_cmd c;
    bool decoded = kv_decode(cmd, len, &c) == 0;
    uint64_t puts = decoded && c.op == KV_OP_TXN ? txn_put_bytes(&c) : 0;
    bool set = decoded && (c.op == KV_OP_SET || c.op == KV_OP_SETL);
    if (decoded && (c.op == KV_OP_DEL || c.op == KV_OP_REVOKE ||
                    (c.op == KV_OP_TXN && puts == 0)))
        return 0; /* deletes (and reads) free space: always taken */
    if (node.alarm_quota)
        return PZ_ENOSPC;
    if (!decoded || (!set && c.op != KV_OP_TXN))
        return 0;
    /* A transaction counts every put of both branches, as if new. */
    uint64_t grow = set ? c.klen + c.vlen : puts;
    uint64_t after = kv_bytes(node.kv) + grow;
    const uint8_t *old;
    size_t olen;
    if (set && kv_get(node.kv, c.key, c.klen, &old, &olen))
        after -= c.klen + olen;
    if (after <= (uint64_t)quota)
        return 0;
    node.alarm_quota = true;
    set_alarm_reason();
    pz_warn("NOSPACE alarm: a write of %llu bytes would take the data past "
            "quota-backend-bytes (%lld): only deletes are accepted",
            (unsigned long long)grow, (long long)quota);
    return PZ_ENOSPC;
}

/* --- the Ready cycle -------------------------------------------------------- */

static void send_all(const struct raft_msg *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        node_metrics_sent(&msgs[i]);
        if (msgs[i].type == RAFT_MSG_INSTALL_SNAPSHOT)
            snaps_xfer_start(&msgs[i]); /* the file goes first */
        else
            transport_send(node.tr, &msgs[i]);
    }
}


static void soft_state_changed(const struct raft_soft_state *ss)
{
    node_metrics_soft_state(ss);
    bool was_leader = node.role == RAFT_LEADER;
    if (ss->leader != node.leader) {
        struct member *m = members_find(ss->leader);
        if (ss->leader == 0)
            pz_info("term %llu: no leader", (unsigned long long)ss->term);
        else
            pz_info("term %llu: leader is %s%s",
                    (unsigned long long)ss->term,
                    m && m->name[0] ? m->name : "(unknown)",
                    ss->leader == node.id ? " (this node)" : "");
    }
    node.leader = ss->leader;
    node.role = ss->role;
    node_lease_role(ss->role == RAFT_LEADER, ss->term);
    /* Leadership transfers finish when the target leads. */
    struct pz_queue *e = node.transfers.next;
    while (e != &node.transfers) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (ss->leader == r->member)
            reqs_done(r, 0);
        else if (ss->leader != 0 && ss->leader != node.id)
            reqs_done(r, PZ_ELEADERCHANGE); /* someone else won */
    }
    if (was_leader && ss->role != RAFT_LEADER)
        pz_info("stepped down in term %llu", (unsigned long long)ss->term);
    if (!was_leader && ss->role == RAFT_LEADER)
        members_register_leader(); /* clients find the new leader at once */
    if (node.leader) {
        /* Requests waiting for a leader: go. Reads retry ReadIndex. */
        reqs_finish_all(&node.wait_leader, 0);
    }
}


static void ready_apply(struct raft_ready *rd)
{
    if (rd->ss_changed)
        soft_state_changed(&rd->ss);
    if (rd->snapshot)
        snaps_install(rd->snapshot);
    node_metrics_applied(rd->n_committed);
    for (size_t i = 0; i < rd->n_committed; i++)
        apply_entry(&rd->committed[i]);
    if (rd->n_committed)
        snaps_maybe();
    if (rd->conf_changed)
        members_refresh();
    for (size_t i = 0; i < rd->n_read_states; i++) {
        struct node_req *r = read_by_ctx(rd->read_states[i].ctx);
        if (r == NULL)
            continue; /* cancelled or timed out */
        r->index = rd->read_states[i].index;
        pz_queue_remove(&r->q);
        reqs_link(&node.reads_apply, r);
    }
    for (size_t i = 0; i < rd->n_dropped_reads; i++) {
        struct node_req *r = read_by_ctx(rd->dropped_reads[i]);
        if (r == NULL)
            continue;
        /* Leadership moved: wait for a leader and ask again. */
        pz_queue_remove(&r->q);
        r->queued = false;
        reqs_link(&node.wait_leader, r);
        r->read_waits = true;
    }
    core_reads_check_applied();
}

/* Hand node.rd's snapshot, hard state and entries to the store. */
static int write_ready(void)
{
    struct raft_ready *rd = &node.rd;
    if (rd->snapshot)
        return store_write_install(node.store, node.loop,
                                   rd->snapshot->index, rd->snapshot->term,
                                   &rd->hs, rd->entries, rd->n_entries,
                                   on_written, NULL);
    return store_write(node.store, node.loop, &rd->hs, rd->entries,
                       rd->n_entries, on_written, NULL);
}

/* Runs Ready cycles until one needs the disk or nothing is left. */
static void ready_cycle(void)
{
    for (int rounds = 0; rounds < 8 && !node.store_busy &&
                         raft_has_ready(node.raft);
         rounds++) {
        struct raft_ready *rd = &node.rd;
        raft_ready(node.raft, rd);
        ready_apply(rd);
        send_all(rd->msgs, rd->n_msgs);
        /* Term and vote must be durable before anything that depends on
         * them (Figure 3.1); the commit index need not be (it is learned
         * again from the leader after a restart), so a Ready that only
         * moves it costs no fsync: it rides along with the next write. */
        bool hs_needed = rd->hs_changed && (rd->hs.term != node.saved_term ||
                                            rd->hs.vote != node.saved_vote);
        if (hs_needed || rd->n_entries || rd->snapshot) {
            node.saved_term = rd->hs.term;
            node.saved_vote = rd->hs.vote;
            int rv = write_ready();
            if (rv < 0) {
                core_fatal("cannot write the Raft log: %s",
                           store_errmsg(node.store));
            }
            node.store_busy = true;
            return;
        }
        send_all(rd->msgs_after_persist, rd->n_msgs_after_persist);
        raft_advance(node.raft, rd);
    }
    if (!node.store_busy && !raft_has_ready(node.raft))
        snaps_compact_step();
}

/* The leader replicates while the store is busy (a Ready being written, a
 * compaction step): heartbeats keep flowing through a slow fsync and
 * followers start on new entries at once (raft_take_msgs). */
static void send_early(void)
{
    if (!node.store_busy)
        return; /* ready_cycle sends them with the next Ready */
    const struct raft_msg *msgs;
    size_t n = raft_take_msgs(node.raft, &msgs);
    send_all(msgs, n);
}

static void on_written(struct store *s, int status, const char *errmsg,
                       void *arg)
{
    PZ_UNUSED(s);
    PZ_UNUSED(arg);
    if (status == PZ_ENOSPC) {
        /* Nothing of the Ready is stored (the store rolled it back): it
         * stays owed, as if the disk were very slow, and is written again
         * later; nothing it acknowledges is sent, the core is not
         * advanced. */
        core_nospace(errmsg ? errmsg : pz_strerror(status));
        node.ready_owed = true;
        node.retry_due = true;
        node.retry_at = uv_now(node.loop) + NOSPACE_RETRY_MS;
        if (node.closing)
            core_finish_close();
        return;
    }
    if (status < 0) {
        /* A failed write or fsync may have dropped dirty pages the kernel
         * still shows us (PostgreSQL's fsync lesson): never retry it, never
         * read it back; a restart recovers from what is on disk. */
        core_fatal("writing the Raft log failed: %s; after a failed write "
                   "or fsync the page cache cannot be trusted: restart the "
                   "node to recover from what is on disk",
                   errmsg ? errmsg : pz_strerror(status));
    }
    node.ready_owed = false;
    core_space_back();
    node.store_busy = false;
    node_metrics_written();
    if (node.cluster_id_unsaved) {
        node.cluster_id_unsaved = false;
        members_save_cluster_id(NULL, node.cluster_id);
    }
    if (node.closing) {
        core_finish_close();
        return;
    }
    send_all(node.rd.msgs_after_persist, node.rd.n_msgs_after_persist);
    raft_advance(node.raft, &node.rd);
}

/* A message from a peer; the reason if the core calls it invalid (the
 * transport then closes the link). */
static const char *on_recv(void *data, const struct raft_msg *m)
{
    PZ_UNUSED(data);
    if (!node.open)
        return NULL; /* closing: the core is about to go */
    if (frozen())
        return NULL; /* out of space: as if paused (see frozen) */
    if (!snaps_install_ready(m)) {
        /* its file did not arrive whole: the leader retries */
        pz_debug("raft: INSTALL_SNAPSHOT %llu/%llu from node %llu without "
                 "its file: ignored",
                 (unsigned long long)m->snap_index,
                 (unsigned long long)m->snap_term,
                 (unsigned long long)m->from);
        return NULL;
    }
    node_metrics_recv(m);
    if (raft_step(node.raft, m) == PZ_EINVAL)
        return raft_errmsg(node.raft);
    if (m->type == RAFT_MSG_INSTALL_SNAPSHOT) {
        /* Not taken (we had it all already): its table need not wait. */
        struct raft_status rs;
        raft_status(node.raft, &rs);
        if (rs.snap_index != m->snap_index || rs.snap_term != m->snap_term)
            snaps_got_drop();
    }
    return NULL;
}

static void on_tick(uv_timer_t *t)
{
    PZ_UNUSED(t);
    uint64_t now = uv_now(node.loop);
    if (node.retry_due && now >= node.retry_at) {
        node.retry_due = false;
        if (write_ready() < 0)
            core_fatal("cannot write the Raft log: %s",
                       store_errmsg(node.store));
    }
    if (!frozen())
        raft_tick(node.raft);
    snaps_poll();
    snaps_xfer_pump();
    snaps_rx_check();
    reqs_expire(&node.proposals, PZ_ETIMEDOUT);
    reqs_expire(&node.reads, PZ_ETIMEDOUT);
    reqs_expire(&node.reads_apply, PZ_ETIMEDOUT);
    /* With a leader known, what waited here was a read it kept refusing
     * or dropping: that is a timeout, not a missing leader. */
    reqs_expire(&node.wait_leader, node.leader ? PZ_ETIMEDOUT : PZ_ENOLEADER);
    reqs_expire(&node.transfers, PZ_ETIMEDOUT);
    reqs_expire(&node.conf_wait, PZ_EBUSY);
    members_conf_wait_retry();
    node_lease_tick();
    /* Reads the leader refused (it has not committed in its term yet)
     * wait here with a leader known: retry them, once per tick. */
    if (node.leader)
        reqs_finish_all(&node.wait_leader, 0);
    /* Once a second of the clock (not of ticks, which run late on a loaded
     * machine): membership housekeeping, mandi registration and polling. */
    if (now >= node.cron_at) {
        node.cron_at = now + 1000;
        members_cron();
        nospace_cron();
    }
}

void node_before_sleep(void)
{
    if (!node.open)
        return;
    ready_cycle();
    /* Callbacks may start new requests; those wait for the next turn. */
    struct pz_queue batch;
    pz_queue_init(&batch);
    while (!pz_queue_empty(&node.done)) {
        struct pz_queue *e = pz_queue_head(&node.done);
        pz_queue_remove(e);
        pz_queue_push(&batch, e);
    }
    while (!pz_queue_empty(&batch)) {
        struct node_req *r =
            container_of(pz_queue_head(&batch), struct node_req, q);
        pz_queue_remove(&r->q);
        r->queued = false;
        if (r->read_waits && r->status == 0) {
            /* A read that waited for a leader: ask for a read index now. */
            if (read_start(r) == 0)
                continue;
            r->status = PZ_ENOLEADER;
        }
        r->cb(r, r->status);
    }
    send_early(); /* including what those callbacks proposed */
}

bool node_has_work(void)
{
    return node.open &&
           (!pz_queue_empty(&node.done) ||
            (!node.store_busy && raft_has_ready(node.raft)) ||
            (node.store_busy && raft_has_msgs(node.raft)));
}

int node_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                 node_req_cb cb)
{
    return node_propose_sink(req, cmd, len, NULL, cb);
}

/* A read-only transaction, once the read is confirmed: run on the local
 * table (kv_txn_read), then the caller's callback. */
static void ro_txn_done(struct node_req *req, int status)
{
    uint8_t *cmd = req->ro_cmd;
    req->ro_cmd = NULL;
    if (status == 0)
        status = kv_txn_read(node.kv, cmd, req->ro_len,
                             (uint64_t)node.cfg->txn_max_range_keys, &req->res,
                             req->sink);
    pz_free(cmd);
    req->ro_cb(req, status);
}

int node_propose_sink(struct node_req *req, const uint8_t *cmd, size_t len,
                      const struct kv_sink *sink, node_req_cb cb)
{
    /* A transaction that only reads does not go through the log (where
     * every node would walk its ranges as it applies): a ReadIndex read,
     * then the local table, on whichever node has it (as etcd). */
    if (kv_txn_readonly(cmd, len)) {
        req->ro_cmd = pz_malloc(len + 1);
        memcpy(req->ro_cmd, cmd, len);
        req->ro_len = len;
        req->ro_cb = cb;
        req->sink = sink;
        int rr = node_read(req, false, ro_txn_done);
        req->sink = sink;
        return rr;
    }
    reqs_prepare(req, cb);
    req->sink = sink;
    int rv = space_check(cmd, len);
    if (rv < 0)
        return rv;
    if (node.role != RAFT_LEADER)
        return node.leader ? PZ_ENOTLEADER : PZ_ENOLEADER;
    /* Ranges over txn-max-range-keys: refused here, as apply would past
     * KV_TXN_KEYS_MAX, without a proposal. */
    if (kv_txn_check(node.kv, cmd, len,
                     (uint64_t)node.cfg->txn_max_range_keys) != KV_OK) {
        memset(&req->res, 0, sizeof req->res);
        req->res.op = KV_OP_TXN;
        req->res.status = KV_ETXN_KEYS;
        req->res.revision = kv_revision(node.kv);
        reqs_done(req, 0);
        return 0;
    }
    rv = raft_propose(node.raft, cmd, len, &req->index, &req->term);
    node_metrics_proposed(rv);
    if (rv < 0)
        return rv;
    reqs_link_proposal(req);
    return 0;
}

int node_read(struct node_req *req, bool stale, node_req_cb cb)
{
    reqs_prepare(req, cb);
    if (stale) {
        reqs_done(req, 0);
        return 0;
    }
    if (read_start(req) < 0) {
        req->read_waits = true;
        reqs_link(&node.wait_leader, req);
    }
    return 0;
}

void node_wait_leader(struct node_req *req, node_req_cb cb)
{
    reqs_prepare(req, cb);
    if (node.leader)
        reqs_done(req, 0);
    else
        reqs_link(&node.wait_leader, req);
}

void node_cancel(struct node_req *req)
{
    if (req->queued) {
        pz_queue_remove(&req->q);
        req->queued = false;
    }
    pz_free(req->ro_cmd);
    req->ro_cmd = NULL;
}

struct kv *node_kv(void)
{
    return node.kv;
}

bool node_is_leader(void)
{
    return node.role == RAFT_LEADER;
}

void node_status(struct node_status *st)
{
    struct raft_status rs;
    struct store_stats ss;
    memset(st, 0, sizeof *st);
    raft_status(node.raft, &rs);
    store_stats(node.store, &ss);
    struct member *lm = members_find(rs.leader);
    st->id = node.cfg->node_id;
    st->role = raft_role_name(rs.role);
    st->leader = lm ? lm->name : "";
    st->term = rs.term;
    st->commit_index = rs.commit;
    st->applied_index = node.applied;
    st->last_index = rs.last_index;
    st->persisted_index = rs.persisted_index;
    st->keys = kv_count(node.kv);
    st->revision = kv_revision(node.kv);
    st->fsyncs = ss.batches;
    st->fsync_entries = ss.entries;
    st->nospace = node.alarm_disk || node.alarm_quota;
    st->alarm_reason = st->nospace ? node.alarm_reason : "";
    st->cluster_id = node.cluster_id;
    st->self_id = node.id;
    pz_free(node.view);
    node.view = pz_calloc(node.n_members ? node.n_members : 1,
                          sizeof *node.view);
    for (size_t i = 0; i < node.n_members; i++) {
        struct member *m = &node.members[i];
        struct node_member *v = &node.view[i];
        v->name = m->name;
        v->id = m->id;
        v->voter = m->voter;
        v->raft = m->raft;
        v->http = m->id == node.id ? node.cfg->http_addr : m->http;
        v->grpc = m->id == node.id ? node.cfg->grpc_addr : m->grpc;
        for (size_t j = 0; j < rs.n_peers; j++) {
            if (rs.peers[j].id == m->id) {
                v->match = rs.peers[j].match;
                v->last_contact_ms = rs.peers[j].last_contact * node.tick_ms;
            }
        }
        struct peer_alarm *pa = palarm_get(m->id);
        v->alarm_reason = "";
        if (pa != NULL && pa->nospace) {
            v->nospace = true;
            v->alarm_reason = pa->reason;
        }
        if (m->id == node.id)
            v->match = rs.persisted_index;
    }
    st->members = node.view;
    st->n_members = node.n_members;
}

void node_ids(uint64_t *cluster_id, uint64_t *self_id, uint64_t *term)
{
    *cluster_id = node.cluster_id;
    *self_id = node.id;
    *term = node.saved_term;
}

/* The term of the entry at index: from the log, or the snapshot's when
 * index is its point; 0 when neither holds it. */
static uint64_t term_at(const struct raft_status *rs, uint64_t index)
{
    const struct raft_entry *e = raft_log_get(node.raft, index);
    if (e != NULL)
        return e->term;
    return index == rs->snap_index ? rs->snap_term : 0;
}

bool node_health(struct node_health *h)
{
    struct raft_status rs;
    memset(h, 0, sizeof *h);
    if (!node.open) {
        snprintf(h->reason, sizeof h->reason, "the node is not open");
        return false;
    }
    raft_status(node.raft, &rs);
    struct member *lm = members_find(rs.leader);
    h->role = raft_role_name(rs.role);
    h->leader = lm ? lm->name : "";
    h->term = rs.term;
    uint64_t timeout_ms = (uint64_t)node.cfg->election_timeout_ms;
    uint64_t window = timeout_ms / node.tick_ms; /* election_ticks */
    if (node.closing) {
        snprintf(h->reason, sizeof h->reason, "the node is shutting down");
        return false;
    }
    if (node.ready_owed) {
        /* Nothing applies here until the log can be written. */
        snprintf(h->reason, sizeof h->reason,
                 "no space left on device: the Raft log cannot be written");
        return false;
    }
    if (rs.leader == 0) {
        snprintf(h->reason, sizeof h->reason, "no leader known (%s, term %llu)",
                 h->role, (unsigned long long)rs.term);
        return false;
    }
    if (rs.role != RAFT_LEADER) {
        /* The follower's lease: its election timer was reset by the leader
         * within the last election timeout. */
        if (!rs.lease) {
            snprintf(h->reason, sizeof h->reason,
                     "no word from the leader (%s) within the election "
                     "timeout (%llu ms)",
                     h->leader[0] ? h->leader : "unknown",
                     (unsigned long long)timeout_ms);
            return false;
        }
        return true;
    }
    /* Thesis §6.2 (CheckQuorum) as of now rather than at the next check:
     * a majority of the voters, this leader included, heard from within
     * the election timeout. */
    const struct raft_conf *conf = raft_conf_current(node.raft, NULL);
    size_t voters = raft_conf_voters(conf), heard = 0;
    const struct raft_server *self = raft_conf_get(conf, node.id);
    if (self != NULL && self->voter)
        heard++;
    for (size_t i = 0; i < rs.n_peers; i++)
        if (rs.peers[i].voter && rs.peers[i].last_contact < window)
            heard++;
    size_t quorum = voters / 2 + 1;
    if (heard < quorum) {
        snprintf(h->reason, sizeof h->reason,
                 "leader without a quorum: heard from %zu of %zu voters "
                 "within the election timeout (%llu ms), %zu needed",
                 heard, voters, (unsigned long long)timeout_ms, quorum);
        return false;
    }
    /* Thesis §6.4: a new leader serves reads once an entry of its term
     * (its no-op) is committed. */
    if (term_at(&rs, rs.commit) != rs.term) {
        snprintf(h->reason, sizeof h->reason,
                 "new leader: no entry of term %llu committed yet",
                 (unsigned long long)rs.term);
        return false;
    }
    return true;
}

static int restore(char *err, size_t errlen)
{
    struct raft_hard_state hs;
    struct raft_entry *ents = NULL;
    size_t n = 0;
    struct store_meta meta;
    /* The state only: the log comes with the snapshot (snaps_restore). */
    int rv = store_load_from(node.store, UINT64_MAX, &hs, &ents, &n, &meta);
    if (rv < 0) {
        snprintf(err, errlen, "%s", store_errmsg(node.store));
        return rv;
    }
    if (meta.node_name[0] && strcmp(meta.node_name, node.cfg->node_id) != 0) {
        snprintf(err, errlen,
                 "%s belongs to node '%s', but node-id is '%s': refusing to "
                 "start",
                 store_path(node.store), meta.node_name, node.cfg->node_id);
        store_entries_free(ents, n);
        return PZ_ECONFIG;
    }
    if (n == 0 && hs.term == 0) {
        store_entries_free(ents, n);
        return 1; /* nothing stored */
    }
    node.cluster_id = meta.cluster_id;
    node.incarnation = meta.incarnation;
    node.saved_term = hs.term;
    node.saved_vote = hs.vote;
    struct raft_snapshot_meta snap;
    bool have = false;
    rv = snaps_restore(&meta, &ents, &n, &snap, &have, err, errlen);
    if (rv < 0) {
        store_entries_free(ents, n);
        return rv;
    }
    rv = raft_restore_snapshot(node.raft, &hs, have ? &snap : NULL, ents, n);
    if (have) {
        pz_info("loaded snapshot at index %llu (%zu keys)",
                (unsigned long long)snap.index, kv_count(node.kv));
        if (rv == 0)
            members_snapshot_committed(&snap.conf);
        raft_conf_free(&snap.conf);
    }
    if (rv == 0 && node.removed) {
        store_entries_free(ents, n);
        snprintf(err, errlen,
                 "%s belongs to a member removed from the cluster: to join "
                 "again, start this node with an empty data dir",
                 store_path(node.store));
        return PZ_ECONFIG;
    }
    store_entries_free(ents, n);
    if (rv < 0) {
        snprintf(err, errlen, "%s: stored Raft state is inconsistent (%s)",
                 store_path(node.store), pz_strerror(rv));
        return rv;
    }
    pz_info("recovered term %llu, %zu log entries, commit %llu",
            (unsigned long long)hs.term, n, (unsigned long long)hs.commit);
    return 0;
}

int node_init(uv_loop_t *loop, const struct pz_config *cfg, node_stop_cb stop,
              char *err, size_t errlen)
{
    uint64_t seed = pz_seed();
    int rv;
    memset(&node, 0, sizeof node);
    node.loop = loop;
    node.cfg = cfg;
    node.stop = stop;
    node_metrics_init();
    node_lease_init(loop, cfg);
    node.kv = kv_new_seeded(seed);
    struct watch_limits wl = {
        .max_events = (size_t)cfg->watch_history_events,
        .max_bytes = (size_t)cfg->watch_history_bytes,
        .max_watchers = (size_t)cfg->max_watchers,
        .max_lag = (size_t)cfg->watch_max_buffer,
    };
    watch_hub_init(&watch_hub, &wl);
    core_kv_replaced();
    node.id = members_name_to_id(cfg->node_id);
    pz_queue_init(&node.proposals);
    pz_queue_init(&node.reads);
    pz_queue_init(&node.reads_apply);
    pz_queue_init(&node.wait_leader);
    pz_queue_init(&node.transfers);
    pz_queue_init(&node.conf_wait);
    pz_queue_init(&node.snap_waiters);
    pz_queue_init(&node.done);

    /* Time is ticks: ten per heartbeat interval. */
    node.tick_ms = (uint64_t)PZ_MAX(1, cfg->heartbeat_interval_ms / 10);
    struct raft_config rc = {
        .id = node.id,
        .heartbeat_ticks = (int)(cfg->heartbeat_interval_ms /
                                 (int64_t)node.tick_ms),
        .election_ticks = (int)(cfg->election_timeout_ms /
                                (int64_t)node.tick_ms),
        .seed = seed ^ node.id,
        .pre_vote = true,
        .check_quorum = true,
    };
    char rerr[RAFT_ERRMSG_SIZE];
    node.raft = raft_new(&rc, rerr);
    if (node.raft == NULL) {
        snprintf(err, errlen, "%s", rerr);
        goto err_after_kv;
    }
    rv = store_open(cfg->raft_data, &node.store, err, errlen);
    if (rv < 0)
        goto err_after_raft;
    uint64_t load_ns = uv_hrtime();
    rv = restore(err, errlen);
    if (rv < 0)
        goto err_after_store;
    node_metrics_restored(load_ns);
    /* What a crash left of interrupted snapshot writes and transfers. */
    size_t stale = 0;
    char serr[SNAPSHOT_ERRMSG_SIZE];
    if (snapshot_remove_temp(cfg->raft_data, &stale, serr, sizeof serr) < 0)
        pz_warn("cannot remove temporary snapshot files: %s", serr);
    else if (stale > 0)
        pz_info("removed %zu temporary snapshot file%s left by a crash",
                stale, stale == 1 ? "" : "s");
    if (rv == 1) { /* no state yet */
        if (cfg->initial_cluster[0] || cfg->raft_bootstrap) {
            rv = members_bootstrap(err, errlen);
            if (rv < 0)
                goto err_after_store;
        } else {
            /* Neither: join a running cluster through mandi. The cluster
             * id comes with the first member that dials us. */
            if (strcmp(cfg->mandi_addr, "none") == 0) {
                snprintf(err, errlen,
                         "no Raft state in %s and nothing to start from: "
                         "set initial-cluster, raft-bootstrap yes, or a "
                         "mandi-addr to join through (it is none)",
                         cfg->raft_data);
                goto err_after_store;
            }
            /* A joining node's data dir gets its incarnation, once. */
            struct store_meta sm;
            store_meta_get(node.store, &sm);
            node.incarnation = sm.incarnation;
            while (node.incarnation == 0)
                node.incarnation = pz_seed();
            rv = store_meta_set(node.store, 0, node.id, cfg->node_id);
            if (rv == 0)
                rv = store_meta_set_incarnation(node.store, node.incarnation);
            if (rv < 0) {
                snprintf(err, errlen, "%s", store_errmsg(node.store));
                goto err_after_store;
            }
            pz_info("no Raft state and no initial-cluster or raft-bootstrap: "
                    "asking to join through mandi at %s",
                    cfg->mandi_addr);
        }
    }
    if (strcmp(cfg->mandi_addr, "none") != 0) {
        node.mandi = mandi_client_new(loop, cfg->mandi_addr,
                                      cfg->cluster_token, 2000, err, errlen);
        if (node.mandi == NULL)
            goto err_after_store;
    }
    /* raft-bind-source: the IP of raft-addr, not a name or a wildcard. */
    char source[256] = "";
    if (cfg->raft_bind_source) {
        int sport;
        struct sockaddr_in6 sa;
        if (pz_split_hostport(cfg->raft_addr, source, sizeof source,
                              &sport) < 0 ||
            (uv_ip4_addr(source, 0, (struct sockaddr_in *)&sa) != 0 &&
             uv_ip6_addr(source, 0, &sa) != 0) ||
            strcmp(source, "0.0.0.0") == 0 || strcmp(source, "::") == 0) {
            snprintf(err, errlen,
                     "raft-bind-source needs a raft-addr with an IP address "
                     "(not '%s')",
                     cfg->raft_addr);
            goto err_after_mandi;
        }
    }
    struct transport_config tc = {
        .listen_addr = cfg->raft_addr,
        .id = node.id,
        .incarnation = node.incarnation,
        .source_addr = source,
        .name = cfg->node_id,
        .cluster_id = node.cluster_id,
        .token = cfg->cluster_token,
        .tls_in = &tls_peer_in,
        .tls_out = &tls_peer_out,
        .name_to_id = members_name_to_id,
        .http_addr = cfg->http_addr,
        .grpc_addr = cfg->grpc_addr,
        .recv = on_recv,
        .on_peer_info = members_on_peer_info,
        .check_peer = members_check_peer,
        .member_since = members_member_since,
        .on_removed = members_on_removed,
        .on_inbound_closed = snaps_on_inbound_closed,
        .on_cluster_id = members_save_cluster_id,
        .on_peer = snaps_on_peer_link,
        .on_chunk = snaps_on_chunk,
        .data = &node,
        .seed = seed,
        /* A member may send frames up to RAFT_FRAME_MAX, whatever our own
         * limits (config refuses a max-value-size that would not fit). */
        .max_frame = RAFT_FRAME_MAX,
    };
    node.tr = transport_new(loop, &tc, err, errlen);
    if (node.tr == NULL)
        goto err_after_mandi;
    members_refresh();
    if (cfg->cluster_token[0] == '\0' && tls_slot_on(&tls_peer_in))
        pz_info("cluster-token is not set: peers are authenticated by "
                "their TLS certificates; the membership endpoints are "
                "open to HTTP clients");
    else if (cfg->cluster_token[0] == '\0')
        pz_warn("cluster-token is not set: anyone who can reach this node "
                "can join the cluster or change its membership");
    uv_timer_init(loop, &node.tick);
    node.cron_at = uv_now(loop) + 1000;
    uv_timer_start(&node.tick, on_tick, node.tick_ms, node.tick_ms);
    node.open = true;
    /* A lone voter need not wait for an election timeout. */
    const struct raft_conf *conf = raft_conf_current(node.raft, NULL);
    if (conf->n == 1 && conf->servers[0].id == node.id)
        raft_campaign(node.raft);
    return 0;

err_after_mandi:
    mandi_client_free(node.mandi);
err_after_store:
    raft_conf_free(&node.committed);
    store_close(node.store);
err_after_raft:
    raft_free(node.raft);
err_after_kv:
    node_lease_free();
    kv_free(node.kv);
    watch_hub_close(&watch_hub);
    return PZ_ECONFIG;
}

/* Close order: the tick timer, then the transport (messages may arrive
 * until it is closed), then what they would have touched. */
static void on_transport_closed(void *data)
{
    PZ_UNUSED(data);
    store_close(node.store);
    raft_free(node.raft);
    node_lease_free();
    kv_free(node.kv);
    watch_hub_close(&watch_hub);
    for (size_t i = 0; i < node.n_members; i++)
        members_free_one(&node.members[i]);
    for (size_t i = 0; i < node.n_departed; i++)
        members_free_one(&node.departed[i]);
    pz_free(node.members);
    pz_free(node.view);
    raft_conf_free(&node.committed);
    node.store = NULL;
    node.raft = NULL;
    node.kv = NULL;
    node.members = NULL;
    node.view = NULL;
    node.n_members = 0;
    if (node.close_cb)
        node.close_cb();
}

static void on_tick_closed(uv_handle_t *h)
{
    PZ_UNUSED(h);
    palarm_clear();
    mandi_client_free(node.mandi);
    node.mandi = NULL;
    transport_close(node.tr, on_transport_closed);
}

void core_finish_close(void)
{
    uv_close((uv_handle_t *)&node.tick, on_tick_closed);
}

void node_close(void (*cb)(void))
{
    if (!node.open) {
        if (cb)
            cb();
        return;
    }
    node.open = false;
    node.close_cb = cb;
    reqs_finish_all(&node.proposals, PZ_ESHUTDOWN);
    reqs_finish_all(&node.reads, PZ_ESHUTDOWN);
    reqs_finish_all(&node.reads_apply, PZ_ESHUTDOWN);
    reqs_finish_all(&node.wait_leader, PZ_ESHUTDOWN);
    reqs_finish_all(&node.transfers, PZ_ESHUTDOWN);
    reqs_finish_all(&node.conf_wait, PZ_ESHUTDOWN);
    reqs_finish_all(&node.snap_waiters, PZ_ESHUTDOWN);
    while (!pz_queue_empty(&node.done)) {
        struct node_req *r =
            container_of(pz_queue_head(&node.done), struct node_req, q);
        pz_queue_remove(&r->q);
        r->queued = false;
        r->cb(r, r->status);
    }
    uv_timer_stop(&node.tick);
    snaps_close();
    if (node.store_busy && !node.retry_due) {
        /* The store cannot close under a write in flight: on_written
         * finishes the close. */
        node.closing = true;
        return;
    }
    core_finish_close();
}
