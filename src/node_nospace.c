/* node_nospace.c - the node out of space: the NOSPACE alarm (a full disk,
 * quota-backend-bytes), what is refused meanwhile, and a leader asking
 * silent voters whether they are out of space (see "out of space" below
 * and docs/DESIGN.md, "Failure rules"). */
#include <stdio.h>
#include <string.h>

#include "httpc.h"
#include "json.h"
#include "log.h"
#include "node_internal.h"

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
 * machine's data reaches it, before the disk fills: a SET that would pass
 * it is refused, and while it is raised only deletes are accepted; it
 * clears once deletes bring the data to 90% of the quota. The data is its
 * keys and values plus KV_KEY_OVERHEAD per key (kv_quota_bytes): without
 * it, empty keys would take about 20 times the quota in memory. A leader
 * checks a write against the data applied plus what the writes it
 * accepted and has not applied yet add (the pending list below), so that
 * any number of writes sent at once passes the quota by no more than the
 * estimate of one. */

/* --- writes accepted, not applied: what each adds to the data, by log
 * index (a leader's proposals, in index order). An entry leaves once
 * apply reaches its index, whatever happened to it (applied, or replaced
 * by another leader's entry), and all of them when this node stops
 * leading: a follower forwards writes to the leader, which counts its
 * own, and nothing left behind can hold writes back later. */

struct quota_pending {
    uint64_t index; /* log index of the write */
    uint64_t bytes; /* what it adds (nospace_check's estimate) */
};

void nospace_proposed(uint64_t index, uint64_t bytes)
{
    if (bytes == 0)
        return;
    if (nd->quota_pending_n == nd->quota_pending_cap) {
        if (nd->quota_pending_head > 0) {
            /* Slide the live entries down before growing. */
            nd->quota_pending_n -= nd->quota_pending_head;
            memmove(nd->quota_pending,
                    nd->quota_pending + nd->quota_pending_head,
                    nd->quota_pending_n * sizeof *nd->quota_pending);
            nd->quota_pending_head = 0;
        }
        if (nd->quota_pending_n == nd->quota_pending_cap) {
            nd->quota_pending_cap =
                PZ_MAX((size_t)64, nd->quota_pending_cap * 2);
            nd->quota_pending =
                pz_realloc(nd->quota_pending,
                           nd->quota_pending_cap * sizeof *nd->quota_pending);
        }
    }
    nd->quota_pending[nd->quota_pending_n++] =
        (struct quota_pending){.index = index, .bytes = bytes};
    nd->quota_pending_bytes += bytes;
}

void nospace_applied(uint64_t applied)
{
    while (nd->quota_pending_head < nd->quota_pending_n &&
           nd->quota_pending[nd->quota_pending_head].index <= applied) {
        nd->quota_pending_bytes -=
            nd->quota_pending[nd->quota_pending_head].bytes;
        nd->quota_pending_head++;
    }
    if (nd->quota_pending_head == nd->quota_pending_n)
        nd->quota_pending_head = nd->quota_pending_n = 0;
}

void nospace_pending_clear(void)
{
    pz_free(nd->quota_pending);
    nd->quota_pending = NULL;
    nd->quota_pending_n = nd->quota_pending_head = 0;
    nd->quota_pending_cap = 0;
    nd->quota_pending_bytes = 0;
}

/* Out of space with a Ready owed and not the leader: frozen (above). */
bool nospace_frozen(void)
{
    if (!nd->ready_owed)
        return false;
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    return rs.role != RAFT_LEADER;
}

static void set_alarm_reason(void)
{
    if (nd->alarm_disk)
        return; /* keeps the store's message */
    if (nd->alarm_quota) {
        snprintf(nd->alarm_reason, sizeof nd->alarm_reason,
                 "the data (%zu bytes: keys, values and %d per key; %llu "
                 "more in writes not applied yet) reached "
                 "quota-backend-bytes (%lld): only deletes are accepted",
                 kv_quota_bytes(nd->kv), KV_KEY_OVERHEAD,
                 (unsigned long long)nd->quota_pending_bytes,
                 (long long)nd->cfg->quota_backend_bytes);
    } else {
        nd->alarm_reason[0] = '\0';
    }
}

void core_nospace(const char *errmsg)
{
    if (!nd->alarm_disk)
        pz_error("no space left on device: %s; refusing writes, retrying "
                 "every %d ms",
                 errmsg, NOSPACE_RETRY_MS);
    nd->alarm_disk = true;
    snprintf(nd->alarm_reason, sizeof nd->alarm_reason, "%s", errmsg);
}

void core_space_back(void)
{
    if (!nd->alarm_disk)
        return;
    nd->alarm_disk = false;
    pz_info("the disk has room again: the Raft log is written, writes are "
            "accepted");
    set_alarm_reason();
}

/* --- what silent voters say: a leader asks a voter it has not heard from
 * for an election timeout for its GET /status (HTTP still answers when
 * its core is frozen), at most every PALARM_ASK_MS, and shows the NOSPACE
 * alarm it reports next to it in its own /status. */

#define PALARM_ASK_MS 3000

struct peer_alarm *palarm_get(uint64_t id)
{
    for (size_t i = 0; i < nd->n_palarms; i++)
        if (nd->palarms[i].id == id)
            return &nd->palarms[i];
    return NULL;
}

static void palarm_answer(const struct httpc_result *res, void *data)
{
    uint64_t id = (uint64_t)(uintptr_t)data;
    struct peer_alarm *p = palarm_get(id);
    if (p == NULL || p->c == NULL)
        return;
    NIO(http_free, p->c); /* allowed from its own callback */
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
        /* One line of printable ASCII, whatever it sent: /status shows it
         * to whatever reads it (the log escapes by itself), and no UTF-8
         * sequence cut by the copy goes out either. */
        for (char *c = p->reason; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
                *c = '?';
        pz_free(r);
    }
    if (p->nospace) {
        struct member *m = members_find(id);
        pz_warn("member %s is out of space: %s",
                m && m->name[0] ? m->name : "(unknown)", p->reason);
    }
}

/* Forget every record (not leading any more, closing). */
void palarm_clear(void)
{
    for (size_t i = 0; i < nd->n_palarms; i++) {
        struct httpc *c = nd->palarms[i].c;
        nd->palarms[i].c = NULL; /* its callback finds nothing to do */
        if (c)
            NIO(http_free, c);
    }
    pz_free(nd->palarms);
    nd->palarms = NULL;
    nd->n_palarms = 0;
}

static void palarm_cron(const struct raft_status *rs)
{
    if (rs->role != RAFT_LEADER) {
        if (nd->n_palarms)
            palarm_clear();
        return;
    }
    uint64_t now = NIO(now);
    uint64_t silent_ms = (uint64_t)nd->cfg->election_timeout_ms;
    for (size_t i = 0; i < rs->n_peers; i++) {
        const struct raft_peer_status *ps = &rs->peers[i];
        struct peer_alarm *p = palarm_get(ps->id);
        if (ps->last_contact * nd->tick_ms < silent_ms) {
            if (p)
                p->nospace = false; /* it answers again */
            continue;
        }
        struct member *m = members_find(ps->id);
        if (m == NULL || !ps->voter || m->http[0] == '\0')
            continue;
        if (p == NULL) {
            nd->palarms = pz_realloc(nd->palarms, (nd->n_palarms + 1) *
                                                        sizeof *nd->palarms);
            p = &nd->palarms[nd->n_palarms++];
            memset(p, 0, sizeof *p);
            p->id = ps->id;
        } else if (p->c != NULL || now < p->asked_at + PALARM_ASK_MS) {
            continue;
        }
        p->asked_at = now;
        p->c = NIO(http_get, m->http, "/status", m->name, palarm_answer,
                   (void *)(uintptr_t)ps->id);
    }
}

/* Once a second: the quota alarm follows the data; a leader out of space
 * hands its leadership on; a leader asks silent voters why. */
void nospace_cron(void)
{
    int64_t quota = nd->cfg->quota_backend_bytes;
    size_t bytes = kv_quota_bytes(nd->kv);
    if (quota > 0 && !nd->alarm_quota && bytes >= (uint64_t)quota) {
        nd->alarm_quota = true;
        set_alarm_reason();
        pz_warn("NOSPACE alarm: %s", nd->alarm_reason);
    } else if (nd->alarm_quota &&
               (quota <= 0 || bytes <= (uint64_t)quota / 10 * 9)) {
        nd->alarm_quota = false;
        set_alarm_reason();
        pz_info("NOSPACE alarm cleared: the data (%zu bytes) is back under "
                "quota-backend-bytes",
                bytes);
    }
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    palarm_cron(&rs);
    if (!nd->ready_owed || rs.role != RAFT_LEADER || rs.transferee != 0)
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
    if (raft_transfer_leader(nd->raft, best) == 0)
        pz_warn("out of space: handing leadership to %s",
                m && m->name[0] ? m->name : "(unknown)");
}

/* What the puts of transaction c (both branches) add to the data, each
 * as a new key (KV_KEY_OVERHEAD included): 0 means "no put". */
static uint64_t txn_put_bytes(const struct kv_cmd *c)
{
    struct kv_op *ops = pz_calloc(c->nsucc + c->nfail + 1, sizeof *ops);
    kv_txn_items(c, NULL, ops, ops + c->nsucc);
    uint64_t n = 0;
    for (size_t i = 0; i < c->nsucc + c->nfail; i++)
        if (ops[i].type == KV_TOP_PUT)
            n += (uint64_t)ops[i].klen + ops[i].vlen + KV_KEY_OVERHEAD;
    pz_free(ops);
    return n;
}

/* PZ_ENOSPC if the write cmd may not be proposed now (above); else 0 and
 * *grow is what it adds to the data once applied (0 for one that adds
 * nothing), for nospace_proposed. */
int nospace_check(const struct kv_cmd *c, uint64_t *grow)
{
    *grow = 0;
    if (nd->alarm_disk)
        return PZ_ENOSPC;
    int64_t quota = nd->cfg->quota_backend_bytes;
    if (quota <= 0 && !nd->alarm_quota)
        return 0;
    bool decoded = c != NULL;
    uint64_t puts = decoded && c->op == KV_OP_TXN ? txn_put_bytes(c) : 0;
    bool set = decoded && (c->op == KV_OP_SET || c->op == KV_OP_SETL);
    if (decoded && (c->op == KV_OP_DEL || c->op == KV_OP_REVOKE ||
                    (c->op == KV_OP_TXN && puts == 0)))
        return 0; /* deletes (and reads) free space: always taken */
    if (nd->alarm_quota)
        return PZ_ENOSPC;
    if (!decoded || (!set && c->op != KV_OP_TXN))
        return 0;
    /* A transaction counts every put of both branches, as if new; a set
     * what it adds to the key's current value, or a new key. */
    uint64_t add = puts;
    if (set) {
        const uint8_t *old;
        size_t olen;
        if (!kv_get(nd->kv, c->key, c->klen, &old, &olen))
            add = c->klen + c->vlen + KV_KEY_OVERHEAD;
        else if (c->vlen > olen)
            add = c->vlen - olen;
    }
    /* Writes accepted and not applied yet count (a leader's: a follower
     * forwards, see pending above). */
    uint64_t inflight = nd->role == RAFT_LEADER ? nd->quota_pending_bytes : 0;
    uint64_t after = kv_quota_bytes(nd->kv) + inflight + add;
    if (add == 0 || after <= (uint64_t)quota) {
        *grow = add;
        return 0;
    }
    nd->alarm_quota = true;
    set_alarm_reason();
    pz_warn("NOSPACE alarm: a write of %llu bytes would take the data "
            "(%zu bytes, %llu more in writes not applied yet) past "
            "quota-backend-bytes (%lld): only deletes are accepted",
            (unsigned long long)add, kv_quota_bytes(nd->kv),
            (unsigned long long)inflight, (long long)quota);
    return PZ_ENOSPC;
}
