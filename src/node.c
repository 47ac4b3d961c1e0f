/* node.c - the node: the only place the Raft core meets I/O and time.
 *
 * Owns the state machine (kv), the Raft core, the log store and the peer
 * transport, one tick timer, and every client request waiting on them.
 *
 * Happy path, once per loop turn from the prepare hook (node_before_sleep),
 * the Ready cycle of STYLE.md section 1:
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
 * never go on with state that is not on disk). A request whose entry is
 * overwritten by another leader fails with PZ_ELEADERCHANGE; one that waits
 * longer than request-timeout fails with PZ_ETIMEDOUT (a write may still be
 * applied later). A database that fails its checks at start stops the
 * process with the reason. */
#include "node.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/statvfs.h>

#include "failpoint.h"
#include "log.h"
#include "mandi_client.h"
#include "raft.h"
#include "server.h"
#include "snapshot.h"
#include "store.h"
#include "transport.h"

#define NAME_SEED 0x7079617a6462ull /* hash seed of node names -> ids */

/* What the node knows of a member: from its configuration entry's meta,
 * and from its transport handshake (its client addresses). */
struct member {
    uint64_t id;        /* Raft id */
    unsigned caught_up; /* leader: consecutive checks a non-voter was
                           close behind the leader's log */
    char *name;         /* node-id */
    char *raft;         /* Raft address */
    char *http;         /* HTTP address, "" if unknown */
    char *grpc;         /* gRPC address, "" if unknown */
    bool voter;         /* in the current configuration */
};

/* A member a committed configuration removed: told so if it dials us. */
struct gone {
    uint64_t id;         /* its Raft id */
    uint64_t conf_index; /* the configuration entry without it */
    uint64_t conf_term;  /* that entry's term */
};

struct node {
    uv_loop_t *loop;             /* the process loop */
    const struct pz_config *cfg; /* borrowed from main */
    struct kv *kv;               /* the state machine */
    struct raft *raft;           /* the consensus core */
    struct store *store;         /* log, hard state, meta */
    struct transport *tr;        /* peer messages */
    uint64_t id;                 /* our Raft id */
    uint64_t cluster_id;         /* identity shared by all members */
    uv_timer_t tick;             /* drives raft_tick */
    uint64_t tick_ms;            /* its period */
    struct raft_ready rd;        /* the Ready being persisted */
    bool writing;                /* rd is with the store */
    bool fatal;                  /* a write failed: stop everything */
    struct pz_queue proposals;   /* writes waiting for apply, by index */
    struct pz_queue reads;       /* reads waiting for their read index */
    struct pz_queue reads_apply; /* reads waiting for applied >= index */
    struct pz_queue wait_leader; /* requests waiting for a leader */
    struct pz_queue transfers;   /* transfer requests: index = target id */
    struct pz_queue conf_wait;   /* removals waiting to start: ctx = id */
    struct pz_queue done;        /* requests to call back */
    uint64_t read_ctx;           /* last ReadIndex context used */
    uint64_t applied;            /* last index applied to kv */
    uint64_t leader;             /* known leader, 0 if none */
    uint8_t role;                /* enum raft_role */
    struct member *members;      /* current configuration (+ addresses) */
    size_t n_members;            /* entries in members */
    struct node_member *view;    /* node_status() scratch */
    void (*close_cb)(void);      /* node_close callback */
    bool open;                   /* node_init succeeded */
    bool closing;                /* node_close waits for a write */
    bool cluster_id_unsaved;     /* on_cluster_id came during a write */
    uint64_t saved_term;         /* term last handed to the store */
    uint64_t saved_vote;         /* vote last handed to the store */
    struct member departed[4];   /* members dropped from the conf lately
                                    (names for the logs) */
    size_t n_departed;           /* entries in departed */
    struct gone gone[16];        /* removed by committed confs, newest last */
    size_t n_gone;               /* entries in gone */
    uint64_t *committed_ids;     /* members as of the last committed conf */
    size_t n_committed_ids;      /* entries in committed_ids */
    bool removed;                /* this node left the configuration */
    uint64_t cron_at;            /* uv_now() of the next membership_cron */
    unsigned seconds;            /* membership_cron runs so far */
    struct mandi_client *mandi;  /* discovery service client */
    uint64_t mandi_put;          /* PUT /leader in flight (request id) */
    uint64_t mandi_poll;         /* GET /join-requests in flight */
    uint64_t mandi_join;         /* POST /join-requests in flight */
    uint64_t mandi_del;          /* DELETE /join-requests in flight */
    /* snapshots (see the section below) */
    struct snapshot_child snap_child; /* the forked writer, pid 0: none */
    uint64_t snap_index;         /* newest durable local snapshot */
    uint64_t snap_term;          /* its term */
    uint64_t snap_size;          /* its file size */
    uint64_t prev_snap_index;    /* the durable snapshot before it */
    uint64_t prev_snap_term;     /* its term */
    bool compact_pending;        /* store_compact waits for the write */
    struct pz_queue snap_waiters;/* POST /admin/snapshot requests */
    struct xfer *xfers;          /* snapshots being sent to followers */
    struct snapshot_receiver *rx;/* snapshot being received */
    uint64_t rx_from, rx_index, rx_term; /* what rx receives, from whom */
    uint64_t rx_total;           /* its announced size */
    uint64_t rx_leader_term;     /* the term its leader sends it in */
    uint64_t rx_last_ms;         /* uv_now() of its last chunk */
    uint64_t got_index, got_term;/* verified received file, not installed */
    struct kv *got_kv;           /* that file, loaded (the check loads) */
};

static struct node node;

struct xfer;
static void snapshot_install(const struct raft_snapshot_meta *sm);
static void snapshot_maybe(void);
static void snapshot_poll(void);
static void compact_store(void);
static void compact_step(void);
static void xfer_start(const struct raft_msg *m);
static void xfer_pump(void);
static bool install_msg_ready(const struct raft_msg *m);
static const char *on_chunk(void *data, uint64_t from,
                            const struct raft_snap_chunk *c);
static void on_peer_link(void *data, uint64_t id, bool connected);
static void rx_abort(void);
static void rx_check(void);
static void got_drop(void);
static void on_inbound_closed(void *data, uint64_t from);
static void xfer_free(struct xfer *x, bool ok);

static uint64_t name_to_id(const char *name)
{
    uint64_t id = pz_hash(name, strlen(name), NAME_SEED);
    return id ? id : 1;
}

/* --- members ---------------------------------------------------------- */

static void member_free(struct member *m)
{
    pz_free(m->name);
    pz_free(m->raft);
    pz_free(m->http);
    pz_free(m->grpc);
}

static struct member *member_find(uint64_t id)
{
    for (size_t i = 0; i < node.n_members; i++)
        if (node.members[i].id == id)
            return &node.members[i];
    return NULL;
}

static char *json_str(cJSON *o, const char *k)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return pz_strdup(cJSON_IsString(v) && v->valuestring ? v->valuestring
                                                         : "");
}

/* A member's meta in configuration entries: JSON with its name and the
 * addresses known when it was added. */
static char *make_meta(const char *name, const char *raft, const char *http,
                       const char *grpc)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "raft", raft);
    if (http)
        cJSON_AddStringToObject(o, "http", http);
    if (grpc)
        cJSON_AddStringToObject(o, "grpc", grpc);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    char *r = pz_strdup(s);
    cJSON_free(s);
    return r;
}

/* Rebuild the member list from the current configuration, keeping the
 * addresses learned from handshakes, and tell the transport. */
static void members_refresh(void)
{
    const struct raft_conf *conf = raft_conf_current(node.raft, NULL);
    struct member *ms = pz_calloc(conf->n ? conf->n : 1, sizeof *ms);
    for (size_t i = 0; i < conf->n; i++) {
        const struct raft_server *s = &conf->servers[i];
        struct member *m = &ms[i];
        struct member *old = member_find(s->id);
        cJSON *o = cJSON_Parse(s->meta ? s->meta : "");
        m->id = s->id;
        m->voter = s->voter;
        m->name = json_str(o, "name");
        m->raft = json_str(o, "raft");
        m->http = json_str(o, "http");
        m->grpc = json_str(o, "grpc");
        cJSON_Delete(o);
        if (old && old->http[0] && !m->http[0]) {
            pz_free(m->http);
            m->http = pz_strdup(old->http);
        }
        if (old && old->grpc[0] && !m->grpc[0]) {
            pz_free(m->grpc);
            m->grpc = pz_strdup(old->grpc);
        }
        if (old)
            m->caught_up = old->caught_up;
        if (s->id != node.id && m->raft[0])
            transport_set_peer(node.tr, s->id, m->raft);
    }
    /* Peers gone from the configuration: their names are remembered for
     * the log line when the change commits (conf_committed). */
    for (size_t i = 0; i < node.n_members; i++) {
        bool kept = false;
        for (size_t j = 0; j < conf->n; j++)
            kept |= conf->servers[j].id == node.members[i].id;
        if (kept) {
            member_free(&node.members[i]);
            continue;
        }
        /* The peer link stays until the change commits: a leader that
         * removes itself still needs the acknowledgements. */
        if (node.n_departed == PZ_ARRAY_SIZE(node.departed)) {
            member_free(&node.departed[0]);
            memmove(&node.departed[0], &node.departed[1],
                    sizeof node.departed - sizeof node.departed[0]);
            node.n_departed--;
        }
        node.departed[node.n_departed++] = node.members[i];
    }
    pz_free(node.members);
    node.members = ms;
    node.n_members = conf->n;
}

/* A client address a peer announced: "host:port" with a port, printable,
 * or it is not taken (forwarding would dial it). */
static bool plausible_addr(const char *a)
{
    char host[256];
    int port;
    for (const char *p = a; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return false;
    return pz_split_hostport(a, host, sizeof host, &port) == 0 && port > 0;
}

/* The transport learned a peer's addresses: its client addresses from the
 * reply of a member we dialed at its configured Raft address (dialed), or,
 * while this node is joining and knows no configuration, the Raft address
 * of a member that dialed us, so that we can answer it. What a dialer says
 * of itself is never taken once we have a configuration: a stranger could
 * otherwise redirect our forwarding or our replies. */
static void on_peer_info(void *data, uint64_t id, bool dialed,
                         const char *name, const char *raft, const char *http,
                         const char *grpc)
{
    PZ_UNUSED(data);
    PZ_UNUSED(name);
    if (!dialed) {
        /* An id we have no configured address for: joining, or a member
         * added after what our log holds (maybe our leader). */
        if (member_find(id) == NULL && raft && plausible_addr(raft) &&
            id != node.id)
            transport_set_peer(node.tr, id, raft);
        return;
    }
    struct member *m = member_find(id);
    if (m == NULL)
        return;
    if (http && plausible_addr(http) && strcmp(m->http, http) != 0) {
        pz_free(m->http);
        m->http = pz_strdup(http);
    }
    if (grpc && plausible_addr(grpc) && strcmp(m->grpc, grpc) != 0) {
        pz_free(m->grpc);
        m->grpc = pz_strdup(grpc);
    }
}

/* A joining node learned its cluster's id from the first member that
 * dialed it: keep it, so that a restart presents the same one. */
static void on_cluster_id(void *data, uint64_t id)
{
    PZ_UNUSED(data);
    node.cluster_id = id;
    if (store_busy(node.store)) {
        node.cluster_id_unsaved = true; /* saved after the write */
        return;
    }
    if (store_meta_set(node.store, id, 0, NULL) < 0) {
        pz_error("cannot record the cluster id: %s; stopping",
                 store_errmsg(node.store));
        exit(1);
    }
}

/* --- request lists ------------------------------------------------------- */

static void req_link(struct pz_queue *list, struct node_req *req)
{
    req->queued = true;
    pz_queue_push(list, &req->q);
}

static void req_done(struct node_req *req, int status)
{
    if (req->queued)
        pz_queue_remove(&req->q);
    req->status = status;
    req_link(&node.done, req);
}

static void req_prepare(struct node_req *req, node_req_cb cb)
{
    pz_queue_init(&req->q);
    req->cb = cb;
    req->queued = false;
    req->status = 0;
    req->index = req->term = req->ctx = 0;
    req->deadline = uv_now(node.loop) + (uint64_t)node.cfg->request_timeout_ms;
    memset(&req->res, 0, sizeof req->res);
}

static void fail_all(struct pz_queue *list, int status)
{
    while (!pz_queue_empty(list))
        req_done(container_of(pz_queue_head(list), struct node_req, q),
                 status);
}

/* Fail the requests of list past their deadline. Lists are not always in
 * deadline order (writes are kept in index order), so all are looked at. */
static void expire(struct pz_queue *list, int status)
{
    uint64_t now = uv_now(node.loop);
    struct pz_queue *e = list->next;
    while (e != list) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (r->deadline <= now)
            req_done(r, status);
    }
}

/* --- removal --------------------------------------------------------------
 * A member removed from the configuration no longer hears from the leader
 * (it is not replicated to once the change is appended), so it would never
 * learn that it was removed. It does when it next dials a member: its
 * election timer fires and it asks for votes, or it redials the leader
 * whose link to it closed at the commit. A member whose committed
 * configuration no longer has it answers with the REMOVED refusal and the
 * index of that configuration (check_peer), over the authenticated peer
 * link. The removed node stops unless it knows a newer configuration
 * (it was added again). A member removed before this node's last restart
 * is not remembered (gone[] lives in memory): it is refused as a
 * non-member and keeps retrying quietly until stopped by hand. */

static bool self_member(void)
{
    return member_find(node.id) != NULL;
}

static void gone_add(uint64_t id, uint64_t conf_index, uint64_t conf_term)
{
    for (size_t i = 0; i < node.n_gone; i++) {
        if (node.gone[i].id == id) {
            node.gone[i].conf_index = conf_index;
            node.gone[i].conf_term = conf_term;
            return;
        }
    }
    if (node.n_gone == PZ_ARRAY_SIZE(node.gone)) {
        memmove(&node.gone[0], &node.gone[1],
                sizeof node.gone - sizeof node.gone[0]);
        node.n_gone--;
    }
    node.gone[node.n_gone++] = (struct gone){id, conf_index, conf_term};
}

/* Who is dialing us (transport_config.check_peer). */
static int check_peer(void *data, uint64_t id, uint64_t *conf_index,
                      uint64_t *conf_term)
{
    PZ_UNUSED(data);
    if (node.n_members == 0)
        return TRANSPORT_PEER_JOINING;
    if (member_find(id) != NULL)
        return TRANSPORT_PEER_MEMBER;
    for (size_t i = 0; i < node.n_gone; i++) {
        if (node.gone[i].id == id) {
            *conf_index = node.gone[i].conf_index;
            *conf_term = node.gone[i].conf_term;
            return TRANSPORT_PEER_REMOVED;
        }
    }
    return TRANSPORT_PEER_STRANGER;
}

/* Peer `from`, which we dialed, says its committed configuration entry
 * (conf_index, conf_term) no longer has us. Nothing authenticates the
 * answer beyond the address we dialed, so it is weighed:
 *  - a node that leads, or heard from its leader within the election
 *    timeout, is a member in good standing: ignored (a removed node stops
 *    hearing from the leader once the removal is appended, so it soon
 *    listens);
 *  - a node whose newest configuration is newer than the one named,
 *    includes it and is committed here was added again: ignored;
 *  - otherwise it stops. */
static void on_removed(void *data, uint64_t from, uint64_t conf_index,
                       uint64_t conf_term)
{
    PZ_UNUSED(data);
    if (node.removed || !node.open || node.n_members == 0)
        return; /* a joining node was never removed */
    struct member *m = member_find(from);
    const char *who = m ? m->name : "a peer";
    struct raft_status rs;
    raft_status(node.raft, &rs);
    if (rs.lease) {
        pz_debug("%s says this node was removed (entry %llu), but it is in "
                 "touch with its leader: ignored",
                 who, (unsigned long long)conf_index);
        return;
    }
    uint64_t ours = 0;
    raft_conf_current(node.raft, &ours);
    if (ours > conf_index && ours <= rs.commit && self_member()) {
        pz_info("%s says this node was removed by configuration entry "
                "%llu, but entry %llu, committed, has it: ignored",
                who, (unsigned long long)conf_index,
                (unsigned long long)ours);
        return;
    }
    node.removed = true;
    pz_warn("removed from the cluster (configuration entry %llu, term "
            "%llu, as %s says): stopping",
            (unsigned long long)conf_index, (unsigned long long)conf_term,
            who);
    server_stop("removed from the cluster");
}

/* --- applying committed entries ------------------------------------------ */

static void conf_committed(const struct raft_entry *e);

static void apply_entry(const struct raft_entry *e)
{
    struct kv_result res = {0};
    if (e->type == RAFT_ENTRY_NORMAL) {
        int rv = kv_apply(node.kv, e->data, e->len, &res);
        if (rv < 0) /* every node rejects it alike: state stays equal */
            pz_warn("entry %llu: undecodable command (%s), skipped",
                    (unsigned long long)e->index, pz_strerror(rv));
    } else if (e->type == RAFT_ENTRY_CONF) {
        conf_committed(e);
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
            req_done(r, 0);
        } else {
            /* Another leader's entry took this place: ours is lost. */
            req_done(r, PZ_ELEADERCHANGE);
        }
    }
}

/* A configuration entry committed: say who joined and left; tell a
 * removed member (leader only), and stop if it is us. */
static void conf_committed(const struct raft_entry *e)
{
    struct raft_conf c;
    if (raft_conf_decode(e->data, e->len, &c) < 0)
        return; /* the core refused it already; nothing to act on */
    bool self_in = false, was_in = false;
    for (size_t i = 0; i < c.n; i++)
        self_in |= c.servers[i].id == node.id;
    for (size_t i = 0; i < node.n_committed_ids; i++)
        was_in |= node.committed_ids[i] == node.id;
    for (size_t i = 0; i < node.n_committed_ids; i++) {
        uint64_t id = node.committed_ids[i];
        if (raft_conf_get(&c, id) != NULL)
            continue;
        struct member *m = member_find(id);
        for (size_t j = 0; m == NULL && j < node.n_departed; j++)
            if (node.departed[j].id == id)
                m = &node.departed[j];
        pz_info("member %s left the cluster (entry %llu)",
                m && m->name[0] ? m->name : "(unknown)",
                (unsigned long long)e->index);
        if (id != node.id && member_find(id) == NULL) {
            /* Closes its links too: it redials and is told. */
            transport_remove_peer(node.tr, id);
            gone_add(id, e->index, e->term);
        }
    }
    pz_free(node.committed_ids);
    node.committed_ids = pz_calloc(c.n ? c.n : 1, sizeof(uint64_t));
    node.n_committed_ids = c.n;
    for (size_t i = 0; i < c.n; i++)
        node.committed_ids[i] = c.servers[i].id;
    raft_conf_free(&c);
    if (was_in && !self_in && !node.removed) {
        node.removed = true;
        pz_warn("this node was removed from the cluster configuration "
                "(entry %llu): stopping",
                (unsigned long long)e->index);
        server_stop("removed from the cluster");
    }
}

static void reads_check_applied(void)
{
    struct pz_queue *e = node.reads_apply.next;
    while (e != &node.reads_apply) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (r->index <= node.applied)
            req_done(r, 0);
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
    req->ctx = ++node.read_ctx;
    int rv = raft_read_index(node.raft, req->ctx);
    if (rv == 0)
        req_link(&node.reads, req);
    return rv;
}

/* --- the Ready cycle -------------------------------------------------------- */

static void send_all(const struct raft_msg *msgs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].type == RAFT_MSG_INSTALL_SNAPSHOT)
            xfer_start(&msgs[i]); /* the file goes first */
        else
            transport_send(node.tr, &msgs[i]);
    }
}

static void register_leader(void);

static void soft_state_changed(const struct raft_soft_state *ss)
{
    bool was_leader = node.role == RAFT_LEADER;
    if (ss->leader != node.leader) {
        struct member *m = member_find(ss->leader);
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
    /* Leadership transfers finish when the target leads. */
    struct pz_queue *e = node.transfers.next;
    while (e != &node.transfers) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (ss->leader == r->index)
            req_done(r, 0);
        else if (ss->leader != 0 && ss->leader != node.id)
            req_done(r, PZ_ELEADERCHANGE); /* someone else won */
    }
    if (was_leader && ss->role != RAFT_LEADER)
        pz_info("stepped down in term %llu", (unsigned long long)ss->term);
    if (!was_leader && ss->role == RAFT_LEADER)
        register_leader(); /* clients find the new leader at once */
    if (node.leader) {
        /* Requests waiting for a leader: go. Reads retry ReadIndex. */
        fail_all(&node.wait_leader, 0);
    }
}

static void on_written(struct store *s, int status, const char *errmsg,
                       void *arg);
static void finish_close(void);
static int snapshot_restore(const struct store_meta *sm,
                            const struct raft_entry *ents, size_t n,
                            struct raft_snapshot_meta *out, bool *have,
                            char *err, size_t errlen);

static void ready_apply(struct raft_ready *rd)
{
    if (rd->ss_changed)
        soft_state_changed(&rd->ss);
    if (rd->snapshot)
        snapshot_install(rd->snapshot);
    for (size_t i = 0; i < rd->n_committed; i++)
        apply_entry(&rd->committed[i]);
    if (rd->n_committed)
        snapshot_maybe();
    if (rd->conf_changed)
        members_refresh();
    for (size_t i = 0; i < rd->n_read_states; i++) {
        struct node_req *r = read_by_ctx(rd->read_states[i].ctx);
        if (r == NULL)
            continue; /* cancelled or timed out */
        r->index = rd->read_states[i].index;
        pz_queue_remove(&r->q);
        req_link(&node.reads_apply, r);
    }
    for (size_t i = 0; i < rd->n_dropped_reads; i++) {
        struct node_req *r = read_by_ctx(rd->dropped_reads[i]);
        if (r == NULL)
            continue;
        /* Leadership moved: wait for a leader and ask again. */
        pz_queue_remove(&r->q);
        r->queued = false;
        req_link(&node.wait_leader, r);
        r->ctx = UINT64_MAX; /* marks a read in wait_leader */
    }
    reads_check_applied();
}

/* Runs Ready cycles until one needs the disk or nothing is left. */
static void ready_cycle(void)
{
    for (int rounds = 0; rounds < 8 && !node.writing && !node.fatal &&
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
            int rv;
            if (rd->snapshot)
                rv = store_write_install(node.store, node.loop,
                                         rd->snapshot->index,
                                         rd->snapshot->term, &rd->hs,
                                         rd->entries, rd->n_entries,
                                         on_written, NULL);
            else
                rv = store_write(node.store, node.loop, &rd->hs, rd->entries,
                                 rd->n_entries, on_written, NULL);
            if (rv < 0) {
                pz_error("cannot write the Raft log: %s",
                         store_errmsg(node.store));
                exit(1); /* fail-stop */
            }
            node.writing = true;
            return;
        }
        send_all(rd->msgs_after_persist, rd->n_msgs_after_persist);
        raft_advance(node.raft, rd);
    }
    if (!node.writing && !raft_has_ready(node.raft))
        compact_step();
}

/* The leader replicates while the store is busy (a Ready being written, a
 * compaction step): heartbeats keep flowing through a slow fsync and
 * followers start on new entries at once (raft_take_msgs). */
static void send_early(void)
{
    if (!node.writing)
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
    if (status < 0) {
        /* Fail-stop: never go on with state that is not on disk. */
        pz_error("writing the Raft log failed: %s; stopping",
                 errmsg ? errmsg : pz_strerror(status));
        exit(1);
    }
    node.writing = false;
    if (node.cluster_id_unsaved) {
        node.cluster_id_unsaved = false;
        on_cluster_id(NULL, node.cluster_id);
    }
    if (node.closing) {
        finish_close();
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
    if (!install_msg_ready(m))
        return NULL; /* its file did not arrive whole: the leader retries */
    if (raft_step(node.raft, m) == PZ_EINVAL)
        return raft_errmsg(node.raft);
    if (m->type == RAFT_MSG_INSTALL_SNAPSHOT) {
        /* Not taken (we had it all already): its table need not wait. */
        struct raft_status rs;
        raft_status(node.raft, &rs);
        if (rs.snap_index != m->snap_index || rs.snap_term != m->snap_term)
            got_drop();
    }
    return NULL;
}

static void join_cron(void);
static void conf_wait_retry(void);

/* A non-voter is promoted once its log is within PROMOTE_SLACK entries of
 * the leader's for PROMOTE_CHECKS consecutive seconds (it has caught up
 * and keeps up), so that it adds to the quorum without slowing it. */
#define PROMOTE_SLACK 16
#define PROMOTE_CHECKS 2

static void membership_cron(void)
{
    join_cron();
    struct raft_status rs;
    raft_status(node.raft, &rs);
    if (!rs.lease && !node.removed) {
        /* Out of touch: (re)open a link to every member, so that one that
         * removed us (a non-voter never campaigns) can say so. */
        for (size_t i = 0; i < node.n_members; i++)
            if (node.members[i].id != node.id)
                transport_probe(node.tr, node.members[i].id);
    }
    if (node.role != RAFT_LEADER)
        return;
    for (size_t i = 0; i < node.n_members; i++) {
        struct member *m = &node.members[i];
        if (m->voter || m->id == node.id)
            continue;
        uint64_t match = 0;
        for (size_t j = 0; j < rs.n_peers; j++)
            if (rs.peers[j].id == m->id)
                match = rs.peers[j].match;
        if (match > 0 && match + PROMOTE_SLACK >= rs.last_index)
            m->caught_up++;
        else
            m->caught_up = 0;
        if (m->caught_up < PROMOTE_CHECKS)
            continue;
        struct raft_conf_change cc = {.type = RAFT_CC_PROMOTE, .id = m->id};
        int rv = raft_propose_conf(node.raft, &cc, NULL, NULL);
        if (rv == 0)
            pz_info("promoting %s to voter (match %llu of %llu)", m->name,
                    (unsigned long long)match,
                    (unsigned long long)rs.last_index);
        break; /* one configuration change at a time */
    }
}

static void on_tick(uv_timer_t *t)
{
    PZ_UNUSED(t);
    raft_tick(node.raft);
    snapshot_poll();
    xfer_pump();
    rx_check();
    expire(&node.proposals, PZ_ETIMEDOUT);
    expire(&node.reads, PZ_ETIMEDOUT);
    expire(&node.reads_apply, PZ_ETIMEDOUT);
    expire(&node.wait_leader, PZ_ENOLEADER);
    expire(&node.transfers, PZ_ETIMEDOUT);
    expire(&node.conf_wait, PZ_EBUSY);
    conf_wait_retry();
    /* Reads the leader refused (it has not committed in its term yet)
     * wait here with a leader known: retry them, once per tick. */
    if (node.leader)
        fail_all(&node.wait_leader, 0);
    /* Once a second of the clock (not of ticks, which run late on a loaded
     * machine): membership housekeeping, mandi registration and polling. */
    uint64_t now = uv_now(node.loop);
    if (now >= node.cron_at) {
        node.cron_at = now + 1000;
        membership_cron();
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
        if (r->ctx == UINT64_MAX && r->status == 0) {
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
            (!node.writing && raft_has_ready(node.raft)) ||
            (node.writing && raft_has_msgs(node.raft)));
}

/* --- the client-facing API --------------------------------------------------- */

/* Wait for the entry at req->index/term to apply. The list stays in index
 * order (a new term may reuse lower indexes). */
static void proposal_link(struct node_req *req)
{
    struct pz_queue *e = node.proposals.prev;
    while (e != &node.proposals &&
           container_of(e, struct node_req, q)->index > req->index)
        e = e->prev;
    req->queued = true;
    pz_queue_push(e->next, &req->q); /* insert before e->next */
}

int node_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                 node_req_cb cb)
{
    req_prepare(req, cb);
    if (node.role != RAFT_LEADER)
        return node.leader ? PZ_ENOTLEADER : PZ_ENOLEADER;
    int rv = raft_propose(node.raft, cmd, len, &req->index, &req->term);
    if (rv < 0)
        return rv;
    proposal_link(req);
    return 0;
}

int node_read(struct node_req *req, bool stale, node_req_cb cb)
{
    req_prepare(req, cb);
    if (stale) {
        req_done(req, 0);
        return 0;
    }
    if (read_start(req) < 0) {
        req->ctx = UINT64_MAX;
        req_link(&node.wait_leader, req);
    }
    return 0;
}

void node_wait_leader(struct node_req *req, node_req_cb cb)
{
    req_prepare(req, cb);
    if (node.leader)
        req_done(req, 0);
    else
        req_link(&node.wait_leader, req);
}

void node_cancel(struct node_req *req)
{
    if (req->queued) {
        pz_queue_remove(&req->q);
        req->queued = false;
    }
}

static struct member *member_by_name(const char *name)
{
    for (size_t i = 0; i < node.n_members; i++)
        if (strcmp(node.members[i].name, name) == 0)
            return &node.members[i];
    return NULL;
}

static int leader_only(void)
{
    if (node.role == RAFT_LEADER)
        return 0;
    return node.leader ? PZ_ENOTLEADER : PZ_ENOLEADER;
}

int node_remove_member(struct node_req *req, const char *name,
                       node_req_cb cb)
{
    req_prepare(req, cb);
    int rv = leader_only();
    if (rv < 0)
        return rv;
    struct member *m = member_by_name(name);
    if (m == NULL)
        return PZ_ENOTFOUND;
    struct raft_conf_change cc = {.type = RAFT_CC_REMOVE, .id = m->id};
    rv = raft_propose_conf(node.raft, &cc, &req->index, &req->term);
    if (rv == PZ_EBUSY) {
        /* Another change (or a transfer) is in flight, or we were elected
         * a moment ago and have not committed in our term yet: both end
         * within a round trip or two, so wait (up to request-timeout)
         * rather than make the caller retry. */
        pz_info("removing member %s: waiting for the change in progress",
                name);
        req->ctx = m->id;
        req_link(&node.conf_wait, req);
        return 0;
    }
    if (rv < 0)
        return rv;
    pz_info("removing member %s", name);
    proposal_link(req);
    return 0;
}

/* Once a tick: start the removals that waited for a change in progress.
 * One whose node lost the leadership meanwhile completes with
 * PZ_ENOTLEADER or PZ_ENOLEADER, with nothing proposed: the caller starts
 * it over (http.c forwards it to the new leader). */
static void conf_wait_retry(void)
{
    struct pz_queue *e = node.conf_wait.next;
    while (e != &node.conf_wait) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        int rv = leader_only();
        if (rv == 0) {
            struct raft_conf_change cc = {.type = RAFT_CC_REMOVE,
                                          .id = r->ctx};
            rv = raft_propose_conf(node.raft, &cc, &r->index, &r->term);
            if (rv == PZ_EBUSY)
                continue;
        }
        if (rv < 0) {
            /* EINVAL: removed by someone else meanwhile (404), or it
             * would leave no voter (400, as when asked directly) */
            if (rv == PZ_EINVAL && member_find(r->ctx) == NULL)
                rv = PZ_ENOTFOUND;
            req_done(r, rv);
            continue;
        }
        pz_queue_remove(&r->q);
        r->queued = false;
        struct member *m = member_find(r->ctx);
        pz_info("removing member %s", m ? m->name : "?");
        r->ctx = 0;
        proposal_link(r);
    }
}

int node_transfer(struct node_req *req, const char *name, node_req_cb cb)
{
    req_prepare(req, cb);
    int rv = leader_only();
    if (rv < 0)
        return rv;
    struct member *m = member_by_name(name);
    if (m == NULL)
        return PZ_ENOTFOUND;
    if (m->id == node.id) {
        req_done(req, 0); /* already leads */
        return 0;
    }
    rv = raft_transfer_leader(node.raft, m->id);
    if (rv < 0)
        return rv;
    pz_info("transferring leadership to %s", name);
    req->index = m->id;
    req_link(&node.transfers, req);
    return 0;
}

struct kv *node_kv(void)
{
    return node.kv;
}

bool node_is_leader(void)
{
    return node.role == RAFT_LEADER;
}

bool node_has_leader(void)
{
    return node.leader != 0;
}

static const char *leader_addr(bool http)
{
    if (node.leader == 0 || node.leader == node.id)
        return NULL;
    struct member *m = member_find(node.leader);
    if (m == NULL)
        return NULL;
    const char *a = http ? m->http : m->grpc;
    return a[0] ? a : NULL;
}

const char *node_leader_http_addr(void)
{
    return leader_addr(true);
}

const char *node_leader_grpc_addr(void)
{
    return leader_addr(false);
}

void node_status(struct node_status *st)
{
    struct raft_status rs;
    struct store_stats ss;
    memset(st, 0, sizeof *st);
    raft_status(node.raft, &rs);
    store_stats(node.store, &ss);
    struct member *lm = member_find(rs.leader);
    st->id = node.cfg->node_id;
    st->role = raft_role_name(rs.role);
    st->leader = lm ? lm->name : "";
    st->term = rs.term;
    st->commit_index = rs.commit;
    st->applied_index = node.applied;
    st->last_index = rs.last_index;
    st->persisted_index = rs.persisted_index;
    st->keys = kv_count(node.kv);
    st->fsyncs = ss.batches;
    st->fsync_entries = ss.entries;
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
        if (m->id == node.id)
            v->match = rs.persisted_index;
    }
    st->members = node.view;
    st->n_members = node.n_members;
}

/* --- start and stop ----------------------------------------------------------- */

/* The cluster id of a static initial cluster: the same on every member,
 * derived from the member list alone (name=address pairs, sorted). */
static uint64_t cluster_id_of(struct cfg_peer *peers, size_t n)
{
    struct pz_buf b;
    pz_buf_init(&b);
    for (size_t i = 0; i < n; i++) { /* n is small: selection order */
        size_t best = SIZE_MAX;
        for (size_t j = 0; j < n; j++) {
            if (peers[j].name[0] == '\0')
                continue;
            if (best == SIZE_MAX || strcmp(peers[j].name, peers[best].name) < 0)
                best = j;
        }
        pz_buf_appendf(&b, "%s=%s,", peers[best].name, peers[best].addr);
        peers[best].name[0] = '\0';
    }
    uint64_t id = pz_hash(b.data, b.len, 0x636c7573746572ull);
    pz_buf_free(&b);
    return id ? id : 1;
}

static int bootstrap(char *err, size_t errlen)
{
    const struct pz_config *cfg = node.cfg;
    struct raft_conf conf;
    raft_conf_init(&conf);
    if (cfg->initial_cluster[0]) {
        struct cfg_peer *peers;
        size_t n;
        char why[256];
        if (cfg_parse_cluster(cfg->initial_cluster, &peers, &n, why,
                              sizeof why) < 0) {
            snprintf(err, errlen, "initial-cluster %s", why);
            return PZ_ECONFIG;
        }
        for (size_t i = 0; i < n; i++) {
            /* Only what every member knows goes into entry 1, so that all
             * of them write the identical entry. */
            char *meta = make_meta(peers[i].name, peers[i].addr, NULL, NULL);
            raft_conf_add(&conf, name_to_id(peers[i].name), true, meta);
            pz_free(meta);
        }
        node.cluster_id = cluster_id_of(peers, n);
        pz_free(peers);
        pz_info("forming cluster from initial-cluster (%zu members)", conf.n);
    } else {
        char *meta = make_meta(cfg->node_id, cfg->raft_addr, cfg->http_addr,
                               cfg->grpc_addr);
        raft_conf_add(&conf, node.id, true, meta);
        pz_free(meta);
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, 0) != sizeof r)
            r = uv_hrtime();
        node.cluster_id = r ? r : 1;
        pz_info("bootstrapping a one-node cluster");
    }
    int rv = raft_bootstrap(node.raft, &conf);
    raft_conf_free(&conf);
    if (rv < 0) {
        snprintf(err, errlen, "cannot bootstrap: %s", pz_strerror(rv));
        return rv;
    }
    rv = store_meta_set(node.store, node.cluster_id, node.id, cfg->node_id);
    if (rv < 0) {
        snprintf(err, errlen, "%s", store_errmsg(node.store));
        return rv;
    }
    return 0;
}

static int restore(char *err, size_t errlen)
{
    struct raft_hard_state hs;
    struct raft_entry *ents = NULL;
    size_t n = 0;
    struct store_meta meta;
    int rv = store_load(node.store, &hs, &ents, &n, &meta);
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
    node.saved_term = hs.term;
    node.saved_vote = hs.vote;
    struct raft_snapshot_meta snap;
    bool have = false;
    rv = snapshot_restore(&meta, ents, n, &snap, &have, err, errlen);
    if (rv < 0) {
        store_entries_free(ents, n);
        return rv;
    }
    rv = raft_restore_snapshot(node.raft, &hs, have ? &snap : NULL, ents, n);
    if (have) {
        pz_info("loaded snapshot at index %llu (%zu keys)",
                (unsigned long long)snap.index, kv_count(node.kv));
        raft_conf_free(&snap.conf);
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

int node_init(uv_loop_t *loop, const struct pz_config *cfg, char *err,
              size_t errlen)
{
    uint64_t seed = 0;
    int rv;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = uv_hrtime();
    memset(&node, 0, sizeof node);
    node.loop = loop;
    node.cfg = cfg;
    node.kv = kv_new_seeded(seed);
    node.id = name_to_id(cfg->node_id);
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
    rv = restore(err, errlen);
    if (rv < 0)
        goto err_after_store;
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
            rv = bootstrap(err, errlen);
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
            rv = store_meta_set(node.store, 0, node.id, cfg->node_id);
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
    struct transport_config tc = {
        .listen_addr = cfg->raft_addr,
        .id = node.id,
        .name = cfg->node_id,
        .cluster_id = node.cluster_id,
        .token = cfg->cluster_token,
        .http_addr = cfg->http_addr,
        .grpc_addr = cfg->grpc_addr,
        .recv = on_recv,
        .on_peer_info = on_peer_info,
        .check_peer = check_peer,
        .on_removed = on_removed,
        .on_inbound_closed = on_inbound_closed,
        .on_cluster_id = on_cluster_id,
        .on_peer = on_peer_link,
        .on_chunk = on_chunk,
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
    if (cfg->cluster_token[0] == '\0')
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
    store_close(node.store);
err_after_raft:
    raft_free(node.raft);
err_after_kv:
    kv_free(node.kv);
    return PZ_ECONFIG;
}

/* Close order: the tick timer, then the transport (messages may arrive
 * until it is closed), then what they would have touched. */
static void on_transport_closed(void *data)
{
    PZ_UNUSED(data);
    store_close(node.store);
    raft_free(node.raft);
    kv_free(node.kv);
    for (size_t i = 0; i < node.n_members; i++)
        member_free(&node.members[i]);
    for (size_t i = 0; i < node.n_departed; i++)
        member_free(&node.departed[i]);
    pz_free(node.members);
    pz_free(node.view);
    pz_free(node.committed_ids);
    node.committed_ids = NULL;
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
    mandi_client_free(node.mandi);
    node.mandi = NULL;
    transport_close(node.tr, on_transport_closed);
}

static void finish_close(void)
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
    fail_all(&node.proposals, PZ_ESHUTDOWN);
    fail_all(&node.reads, PZ_ESHUTDOWN);
    fail_all(&node.reads_apply, PZ_ESHUTDOWN);
    fail_all(&node.wait_leader, PZ_ESHUTDOWN);
    fail_all(&node.transfers, PZ_ESHUTDOWN);
    fail_all(&node.conf_wait, PZ_ESHUTDOWN);
    fail_all(&node.snap_waiters, PZ_ESHUTDOWN);
    while (!pz_queue_empty(&node.done)) {
        struct node_req *r =
            container_of(pz_queue_head(&node.done), struct node_req, q);
        pz_queue_remove(&r->q);
        r->queued = false;
        r->cb(r, r->status);
    }
    uv_timer_stop(&node.tick);
    snapshot_child_kill(&node.snap_child);
    rx_abort();
    got_drop();
    while (node.xfers)
        xfer_free(node.xfers, false);
    if (node.writing) {
        /* The store cannot close under a write in flight: on_written
         * finishes the close. */
        node.closing = true;
        return;
    }
    finish_close();
}

/* --- mandi: leader registration and joining ----------------------------------
 * Soft state only: replication, forwarding and failover never need mandi.
 * The leader publishes itself (at once when elected, then every
 * MANDI_PUT_S seconds) and takes join requests (every MANDI_POLL_S
 * seconds): each unknown requester is added as a non-voter, promoted by
 * membership_cron once it has caught up, and its request deleted once it
 * votes. A node that is not a member posts its join request every
 * MANDI_PUT_S seconds until it sees itself in the configuration. At most
 * one request of each kind is in flight. */
#define MANDI_PUT_S 2
#define MANDI_POLL_S 3


static void on_mandi_done(const struct mandi_result *res, void *data)
{
    uint64_t *inflight = data;
    *inflight = 0;
    if (res->err == PZ_ECANCELED)
        return;
    if (res->err < 0)
        pz_debug("mandi: %s", pz_strerror(res->err));
    else if (res->http_status >= 300)
        pz_warn("mandi answered %d: %s", res->http_status, res->message);
}

static void register_leader(void)
{
    if (node.mandi == NULL || node.mandi_put)
        return;
    struct mandi_leader li;
    memset(&li, 0, sizeof li);
    struct raft_status rs;
    raft_status(node.raft, &rs);
    snprintf(li.id, sizeof li.id, "%s", node.cfg->node_id);
    snprintf(li.addr, sizeof li.addr, "%s", node.cfg->raft_addr);
    snprintf(li.http_addr, sizeof li.http_addr, "%s", node.cfg->http_addr);
    snprintf(li.grpc_addr, sizeof li.grpc_addr, "%s", node.cfg->grpc_addr);
    li.term = rs.term;
    node.mandi_put =
        mandi_put_leader(node.mandi, &li, on_mandi_done, &node.mandi_put);
}

static void on_joins(const struct mandi_result *res, void *data)
{
    PZ_UNUSED(data);
    node.mandi_poll = 0;
    if (res->err < 0 || res->http_status != 200 || node.role != RAFT_LEADER)
        return;
    bool proposed = false;
    for (size_t i = 0; i < res->n_joins; i++) {
        const struct mandi_join *j = &res->joins[i];
        struct member *m = member_by_name(j->id);
        if (m && m->voter) {
            /* Joined and voting: the request has served. */
            if (!node.mandi_del)
                node.mandi_del = mandi_delete_join(node.mandi, j->id,
                                                   on_mandi_done,
                                                   &node.mandi_del);
            continue;
        }
        if (m || proposed)
            continue; /* catching up, or one change per poll */
        char *meta = make_meta(j->id, j->addr, j->http_addr, j->grpc_addr);
        struct raft_conf_change cc = {
            .type = RAFT_CC_ADD_NONVOTER,
            .id = name_to_id(j->id),
            .meta = meta,
        };
        int rv = raft_propose_conf(node.raft, &cc, NULL, NULL);
        pz_free(meta);
        char eid[PZ_ESCAPED_MAX], eaddr[PZ_ESCAPED_MAX];
        pz_escape(eid, sizeof eid, j->id, strlen(j->id));
        pz_escape(eaddr, sizeof eaddr, j->addr, strlen(j->addr));
        if (rv == 0)
            pz_info("adding %s (%s) as a non-voter", eid, eaddr);
        else if (rv != PZ_EBUSY)
            pz_warn("cannot add %s: %s", eid, pz_strerror(rv));
        proposed = true;
    }
}

static void post_join(void)
{
    if (node.mandi == NULL || node.mandi_join)
        return;
    struct mandi_join j;
    memset(&j, 0, sizeof j);
    snprintf(j.id, sizeof j.id, "%s", node.cfg->node_id);
    snprintf(j.addr, sizeof j.addr, "%s", node.cfg->raft_addr);
    snprintf(j.http_addr, sizeof j.http_addr, "%s", node.cfg->http_addr);
    snprintf(j.grpc_addr, sizeof j.grpc_addr, "%s", node.cfg->grpc_addr);
    node.mandi_join =
        mandi_post_join(node.mandi, &j, on_mandi_done, &node.mandi_join);
}

static void join_cron(void)
{
    unsigned s = node.seconds++;
    if (node.role == RAFT_LEADER) {
        if (s % MANDI_PUT_S == 0)
            register_leader();
        if (s % MANDI_POLL_S == 0 && node.mandi && !node.mandi_poll)
            node.mandi_poll = mandi_get_joins(node.mandi, on_joins, NULL);
    } else if (!self_member() && !node.removed) {
        if (s % MANDI_PUT_S == 0)
            post_join();
    }
}

/* --- snapshots ------------------------------------------------------------
 * Taking one (every raft-snapshot-entries applied entries, or POST
 * /admin/snapshot): fork, as Redis's BGSAVE does, so that the child writes
 * the table as of the fork from copy-on-write memory while the loop goes on
 * serving; the parent only polls the child from the tick timer. When the
 * file is durable (written, fsynced, renamed), the Raft core records the
 * snapshot point and drops its log up to index - raft-trailing-entries,
 * and the store drops the same prefix. The two newest files are kept.
 * Fork rather than an incremental copy-on-write scan of the table: the
 * table stays simple and the loop does no snapshot work at all; the price
 * is the fork itself (page tables: a few milliseconds per GB) and memory
 * for the pages written meanwhile.
 *
 * Sending one (leader): an INSTALL_SNAPSHOT from the core is not sent as
 * it is: the file goes first, in chunks on the same ordered link, paced on
 * the transport's queue so that no chunk is dropped, then the message. The
 * outcome goes back to the core (raft_report_snapshot); a lost link fails
 * the transfer and the core retries.
 *
 * Receiving one (follower): chunks are written to a temporary file, which
 * is verified (checksum) and renamed into place when complete; only then is
 * the INSTALL_SNAPSHOT message handed to the core. The core's Ready then
 * carries the snapshot: the state machine is loaded from the file and the
 * store replaces its log in the same transaction as the Ready's hard state
 * and entries, so a crash leaves the old state or the new one.
 *
 * Restart: the newest snapshot file that checks out and agrees with the
 * stored log (the log holds its index with its term, or was compacted
 * exactly to it) is loaded, then the log after it is replayed. A damaged
 * file is reported and an older one tried; with none usable while the log
 * was compacted, the node refuses to start. */

#define XFER_CHUNK (256 * 1024)     /* bytes per snapshot chunk */
#define XFER_QUEUE_MAX (1024 * 1024) /* pace: peer queue below this */

struct xfer {
    struct xfer *next;              /* in node.xfers */
    uint64_t to;                    /* follower */
    struct raft_msg msg;            /* INSTALL_SNAPSHOT, sent last */
    struct raft_entry conf;         /* msg's entry (copied) */
    struct snapshot_reader *reader; /* the file */
    uint64_t offset;                /* bytes sent */
    uint64_t total;                 /* file size */
};

static void snapshot_start(void)
{
    if (node.snap_child.pid != 0 || node.applied == 0 ||
        node.applied <= node.snap_index)
        return;
    uint64_t at = node.applied;
    struct raft_snapshot_meta meta;
    int rv = raft_snapshot_meta_at(node.raft, at, &meta);
    if (rv < 0)
        return;
    uint8_t *conf;
    size_t conf_len;
    raft_conf_encode(&meta.conf, &conf, &conf_len);
    raft_conf_free(&meta.conf);
    char err[SNAPSHOT_ERRMSG_SIZE];
    rv = snapshot_write_fork(node.cfg->raft_data, node.kv, at, meta.term,
                             conf, conf_len, &node.snap_child, err,
                             sizeof err);
    pz_free(conf);
    if (rv < 0) {
        pz_warn("cannot start a snapshot: %s", err);
        return;
    }
    pz_info("snapshot at index %llu: writing (%zu keys, fork %llu us)",
            (unsigned long long)at, kv_count(node.kv),
            (unsigned long long)node.snap_child.fork_us);
}

static void snap_waiters_done(int status)
{
    fail_all(&node.snap_waiters, status);
}

/* Drop the stored log prefix the core dropped, COMPACT_ROWS entries per
 * step on the thread pool, between log writes (never during one), so that
 * a million-entry prefix never stalls the loop or the writes. */
#define COMPACT_ROWS 20000

static void on_compacted(struct store *s, int status, const char *errmsg,
                         void *arg)
{
    PZ_UNUSED(s);
    PZ_UNUSED(arg);
    if (status < 0) {
        pz_error("cannot compact the Raft log: %s; stopping",
                 errmsg ? errmsg : pz_strerror(status));
        exit(1);
    }
    node.writing = false;
    pz_failpoint("after-log-truncate");
    if (node.cluster_id_unsaved) {
        node.cluster_id_unsaved = false;
        on_cluster_id(NULL, node.cluster_id);
    }
    if (node.closing)
        finish_close();
}

static void compact_store(void)
{
    node.compact_pending = true;
}

/* From the Ready cycle, when no log write is due: one compaction step. */
static void compact_step(void)
{
    if (!node.compact_pending || node.writing || node.closing)
        return;
    struct raft_status rs;
    raft_status(node.raft, &rs);
    if (rs.first_index <= 1) {
        node.compact_pending = false;
        return;
    }
    pz_failpoint("before-log-truncate");
    int rv = store_compact_step(node.store, node.loop, rs.first_index - 1,
                                COMPACT_ROWS, on_compacted, NULL);
    if (rv < 0) {
        pz_error("cannot compact the Raft log: %s; stopping",
                 store_errmsg(node.store));
        exit(1);
    }
    if (rv == 1)
        node.compact_pending = false; /* done */
    else
        node.writing = true;
}

static void snapshot_poll(void)
{
    if (node.snap_child.pid == 0)
        return;
    bool done = false, ok = false;
    snapshot_child_poll(&node.snap_child, &done, &ok);
    if (!done)
        return;
    struct snapshot_child *c = &node.snap_child;
    if (!ok) {
        pz_warn("snapshot at index %llu failed: %s",
                (unsigned long long)c->index, c->errmsg);
        c->pid = 0;
        snap_waiters_done(PZ_EIO);
        return;
    }
    int rv = raft_compact(node.raft, c->index,
                          (uint64_t)node.cfg->raft_trailing_entries);
    if (rv == PZ_ECANCELED) {
        /* A newer snapshot came from the leader meanwhile. */
        unlink(c->path);
        c->pid = 0;
        snap_waiters_done(0);
        return;
    }
    struct snapshot_meta sm;
    char err[SNAPSHOT_ERRMSG_SIZE];
    node.prev_snap_index = node.snap_index;
    node.prev_snap_term = node.snap_term;
    node.snap_index = c->index;
    node.snap_term = c->term;
    if (snapshot_peek(c->path, &sm, err, sizeof err) == 0) {
        node.snap_size = sm.file_size;
        snapshot_meta_free(&sm);
    }
    pz_info("snapshot at index %llu done: %llu bytes",
            (unsigned long long)c->index,
            (unsigned long long)node.snap_size);
    c->pid = 0;
    if (rv == 0)
        compact_store();
    size_t removed = 0;
    /* Keep the two newest durable snapshots (the newest covers the
     * compacted log) and a received one waiting for its install; any other
     * file goes, a newer one included. */
    struct raft_status rs;
    raft_status(node.raft, &rs);
    struct snapshot_id keep[4] = {
        {node.snap_index, node.snap_term},
        {node.prev_snap_index, node.prev_snap_term},
        {node.got_index, node.got_term},
        {rs.snap_index, rs.snap_term}, /* installed, maybe not yet here */
    };
    if (node.rx == NULL) /* pruning removes temporary files too */
        snapshot_prune_except(node.cfg->raft_data, keep, 4, &removed, err,
                              sizeof err);
    snap_waiters_done(0);
}

/* After applying: time for a snapshot? */
static void snapshot_maybe(void)
{
    if (node.applied >=
        node.snap_index + (uint64_t)node.cfg->raft_snapshot_entries)
        snapshot_start();
}

int node_snapshot_now(struct node_req *req, node_req_cb cb)
{
    req_prepare(req, cb);
    req->deadline = UINT64_MAX; /* a large table takes a while */
    if (node.applied <= node.snap_index && node.snap_child.pid == 0) {
        req_done(req, 0); /* nothing new since the last one */
        return 0;
    }
    snapshot_start();
    if (node.snap_child.pid == 0)
        return PZ_EIO;
    req_link(&node.snap_waiters, req);
    return 0;
}

void node_snapshot_info(uint64_t *index, uint64_t *size)
{
    *index = node.snap_index;
    *size = node.snap_size;
}

/* --- sending snapshots --- */

static void xfer_free(struct xfer *x, bool ok)
{
    struct xfer **pp = &node.xfers;
    while (*pp && *pp != x)
        pp = &(*pp)->next;
    if (*pp)
        *pp = x->next;
    if (node.raft)
        raft_report_snapshot(node.raft, x->to, ok);
    snapshot_reader_close(x->reader);
    pz_free(x->conf.data);
    pz_free(x);
}

static void xfer_start(const struct raft_msg *m)
{
    for (struct xfer *x = node.xfers; x; x = x->next)
        if (x->to == m->to)
            return; /* one at a time per follower */
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    struct xfer *x = pz_calloc(1, sizeof *x);
    x->to = m->to;
    x->msg = *m;
    if (m->n_entries == 1) {
        x->conf = m->entries[0];
        x->conf.data = pz_memdup(m->entries[0].data, m->entries[0].len);
        x->msg.entries = &x->conf;
    }
    x->next = node.xfers;
    node.xfers = x;
    snapshot_path(node.cfg->raft_data, m->snap_index, m->snap_term, path,
                  sizeof path);
    if (snapshot_reader_open(path, &x->reader, err, sizeof err) < 0) {
        pz_warn("cannot send snapshot %llu to a follower: %s",
                (unsigned long long)m->snap_index, err);
        xfer_free(x, false);
        return;
    }
    x->total = snapshot_reader_size(x->reader);
    struct member *mb = member_find(m->to);
    pz_info("sending snapshot at index %llu (%llu bytes) to %s",
            (unsigned long long)m->snap_index,
            (unsigned long long)x->total, mb ? mb->name : "a follower");
}

static void xfer_pump(void)
{
    static uint8_t buf[XFER_CHUNK];
    struct xfer *x = node.xfers;
    struct raft_status rs;
    raft_status(node.raft, &rs);
    while (x) {
        struct xfer *next = x->next;
        struct transport_peer_stats ps;
        /* Chunks go out in the term we lead in; a leader that stepped down
         * has nothing to send (followers would drop it). */
        bool failed = rs.role != RAFT_LEADER || rs.term != x->msg.term ||
                      transport_peer_stats(node.tr, x->to, &ps) < 0;
        while (!failed && x->offset < x->total &&
               ps.queued_bytes < XFER_QUEUE_MAX) {
            size_t got = 0;
            char err[SNAPSHOT_ERRMSG_SIZE];
            if (snapshot_reader_read(x->reader, x->offset, buf, sizeof buf,
                                     &got, err, sizeof err) < 0 ||
                got == 0) {
                failed = true;
                break;
            }
            struct raft_snap_chunk c = {
                .term = x->msg.term,
                .snap_index = x->msg.snap_index,
                .snap_term = x->msg.snap_term,
                .offset = x->offset,
                .total = x->total,
                .data = buf,
                .len = got,
            };
            if (transport_send_chunk(node.tr, x->to, &c) < 0 ||
                transport_peer_stats(node.tr, x->to, &ps) < 0)
                failed = true;
            x->offset += got;
        }
        if (failed) {
            xfer_free(x, false);
        } else if (x->offset == x->total) {
            transport_send(node.tr, &x->msg);
            xfer_free(x, true);
        }
        x = next;
    }
}

/* A link went down: a transfer on it is lost. */
static void on_peer_link(void *data, uint64_t id, bool connected)
{
    PZ_UNUSED(data);
    if (connected)
        return;
    for (struct xfer *x = node.xfers; x; x = x->next) {
        if (x->to == id && x->offset > 0) {
            xfer_free(x, false);
            return;
        }
    }
}

/* --- receiving snapshots ---
 * Only the leader we follow, in our current term, may stream a snapshot
 * to us, one at a time, and only one that covers more than we have
 * committed. A transfer dies (its .recv.tmp removed) when its link
 * closes, the leader or term changes, or no chunk came for
 * RX_IDLE_MS. Its size is bounded before anything is written: by
 * raft-snapshot-max-size (0: four times our own state, at least
 * RX_AUTO_MIN), and by the free space of the data directory, which keeps
 * RX_DISK_RESERVE free. The file is checked by loading it (the loader's
 * checks, a repeated key included) into the table the install will use. */
#define RX_IDLE_MS 30000
#define RX_AUTO_MIN (UINT64_C(4) << 30)
#define RX_DISK_RESERVE (UINT64_C(64) << 20)

/* Forget a received snapshot awaiting its install: its table, and its
 * file (the disk check of the next transfer must see the space again). */
static void got_drop(void)
{
    if (node.got_kv) {
        char path[SNAPSHOT_PATH_MAX];
        snapshot_path(node.cfg->raft_data, node.got_index, node.got_term,
                      path, sizeof path);
        unlink(path);
    }
    kv_free(node.got_kv);
    node.got_kv = NULL;
    node.got_index = node.got_term = 0;
}

static void rx_abort(void)
{
    snapshot_receiver_abort(node.rx);
    node.rx = NULL;
}

static uint64_t rx_max_size(void)
{
    uint64_t cap = (uint64_t)node.cfg->raft_snapshot_max_size;
    return cap ? cap : PZ_MAX(RX_AUTO_MIN, 4 * (uint64_t)kv_bytes(node.kv));
}

/* Whether total more bytes fit on the data directory's disk, keeping
 * RX_DISK_RESERVE free; why not in why. */
static bool rx_fits_disk(uint64_t total, char *why, size_t len)
{
    struct statvfs vfs;
    if (statvfs(node.cfg->raft_data, &vfs) != 0)
        return true; /* cannot tell: the writes will say */
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (total + RX_DISK_RESERVE <= avail)
        return true;
    snprintf(why, len, "%llu bytes do not fit in the %llu bytes free in %s",
             (unsigned long long)total, (unsigned long long)avail,
             node.cfg->raft_data);
    return false;
}

static const char *on_chunk(void *data, uint64_t from,
                            const struct raft_snap_chunk *c)
{
    PZ_UNUSED(data);
    char err[SNAPSHOT_ERRMSG_SIZE];
    if (!node.open)
        return NULL;
    struct raft_status rs;
    raft_status(node.raft, &rs);
    struct snapshot_rx_view v = {
        .self = node.id,
        .leader = rs.leader,
        .term = rs.term,
        .commit = rs.commit,
        .receiving = node.rx != NULL,
        .rx_from = node.rx_from,
        .rx_index = node.rx_index,
        .rx_term = node.rx_term,
        .rx_offset = node.rx ? snapshot_receiver_offset(node.rx) : 0,
        .rx_total = node.rx_total,
        .have_index = node.got_kv ? node.got_index : 0,
        .have_term = node.got_kv ? node.got_term : 0,
        .max_size = rx_max_size(),
    };
    switch (snapshot_rx_decide(&v, from, c)) {
    case SNAPSHOT_RX_INVALID:
        return "snapshot chunk with an impossible index, term, size or "
               "offset";
    case SNAPSHOT_RX_STALE:
        if (node.rx && node.rx_from == from)
            rx_abort();
        return NULL;
    case SNAPSHOT_RX_TOO_BIG:
        rx_abort();
        pz_warn("refusing snapshot %llu from the leader: %llu bytes is over "
                "raft-snapshot-max-size (%llu)",
                (unsigned long long)c->snap_index,
                (unsigned long long)c->total,
                (unsigned long long)v.max_size);
        return NULL;
    case SNAPSHOT_RX_BEGIN:
        rx_abort();
        if (!rx_fits_disk(c->total, err, sizeof err)) {
            pz_warn("refusing snapshot %llu from the leader: %s",
                    (unsigned long long)c->snap_index, err);
            return NULL;
        }
        if (snapshot_receiver_begin(node.cfg->raft_data, c->snap_index,
                                    c->snap_term, c->total, &node.rx, err,
                                    sizeof err) < 0) {
            pz_warn("cannot receive snapshot %llu: %s",
                    (unsigned long long)c->snap_index, err);
            return NULL;
        }
        node.rx_from = from;
        node.rx_index = c->snap_index;
        node.rx_term = c->snap_term;
        node.rx_total = c->total;
        node.rx_leader_term = c->term;
        pz_info("receiving snapshot at index %llu (%llu bytes)",
                (unsigned long long)c->snap_index,
                (unsigned long long)c->total);
        break;
    case SNAPSHOT_RX_WRITE:
        break;
    default:
        return NULL;
    }
    node.rx_last_ms = uv_now(node.loop);
    if (snapshot_receiver_write(node.rx, c->offset, c->data, c->len, err,
                                sizeof err) < 0) {
        pz_warn("snapshot %llu: %s; dropping the transfer",
                (unsigned long long)c->snap_index, err);
        rx_abort();
        return NULL;
    }
    if (c->offset + c->len < c->total)
        return NULL;
    struct snapshot_receiver *rx = node.rx;
    node.rx = NULL;
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = uv_hrtime();
    struct kv *kv = kv_new_seeded(seed);
    if (snapshot_receiver_finish(rx, kv, NULL, 0, NULL, err, sizeof err) < 0) {
        pz_warn("snapshot %llu refused: %s",
                (unsigned long long)c->snap_index, err);
        kv_free(kv);
        return NULL;
    }
    got_drop();
    node.got_kv = kv;
    node.got_index = c->snap_index;
    node.got_term = c->snap_term;
    uv_update_time(node.loop); /* the load may have taken a while */
    node.rx_last_ms = uv_now(node.loop);
    pz_info("received snapshot at index %llu (%zu keys); installing it once "
            "the leader says so",
            (unsigned long long)c->snap_index, kv_count(kv));
    return NULL;
}

/* The last accepted link from `from` closed: a transfer on it is over,
 * and the address of a peer not in our configuration (learned from its
 * handshake) is forgotten. */
static void on_inbound_closed(void *data, uint64_t from)
{
    PZ_UNUSED(data);
    if (node.rx && node.rx_from == from) {
        pz_info("snapshot %llu: the leader's link closed; dropping the "
                "transfer",
                (unsigned long long)node.rx_index);
        rx_abort();
    }
    if (from != node.id && member_find(from) == NULL)
        transport_remove_peer(node.tr, from);
}

/* From the tick: a transfer whose leader moved on or went quiet. */
static void rx_check(void)
{
    if (node.rx == NULL && node.got_kv == NULL)
        return;
    struct raft_status rs;
    raft_status(node.raft, &rs);
    bool moved = rs.leader != node.rx_from || rs.term != node.rx_leader_term;
    bool idle = uv_now(node.loop) - node.rx_last_ms > RX_IDLE_MS;
    if (node.got_kv && node.rx == NULL && (moved || idle)) {
        /* Received whole, but its leader moved on or never sent the
         * message that installs it: the memory goes now (the file at the
         * next prune). */
        got_drop();
        return;
    }
    if (node.rx == NULL)
        return;
    if (moved || idle) {
        pz_info("snapshot %llu: %s; dropping the transfer",
                (unsigned long long)node.rx_index,
                moved ? "the leader changed" : "no data for 30 s");
        rx_abort();
    }
}

/* The core may see INSTALL_SNAPSHOT only once its file is here. */
static bool install_msg_ready(const struct raft_msg *m)
{
    return m->type != RAFT_MSG_INSTALL_SNAPSHOT ||
           (node.got_kv && m->snap_index == node.got_index &&
            m->snap_term == node.got_term);
}

/* rd.snapshot: the state machine becomes the received file's table
 * (loaded when the file was checked). The store write that makes it
 * durable follows in the Ready cycle. */
static void snapshot_install(const struct raft_snapshot_meta *sm)
{
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    struct snapshot_meta meta;
    snapshot_path(node.cfg->raft_data, sm->index, sm->term, path,
                  sizeof path);
    struct kv *kv = NULL;
    if (node.got_kv && node.got_index == sm->index &&
        node.got_term == sm->term) {
        kv = node.got_kv; /* the usual case: loaded when it arrived */
        node.got_kv = NULL;
        if (snapshot_peek(path, &meta, err, sizeof err) == 0) {
            node.snap_size = meta.file_size;
            snapshot_meta_free(&meta);
        }
    } else {
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
            seed = uv_hrtime();
        kv = kv_new_seeded(seed);
        if (snapshot_load(path, kv, &meta, err, sizeof err) < 0 ||
            meta.index != sm->index || meta.term != sm->term) {
            pz_error("cannot install snapshot %llu: %s; stopping",
                     (unsigned long long)sm->index, err);
            exit(1);
        }
        node.snap_size = meta.file_size;
        snapshot_meta_free(&meta);
    }
    got_drop();
    kv_free(node.kv);
    node.kv = kv;
    node.applied = sm->index;
    node.prev_snap_index = node.snap_index;
    node.prev_snap_term = node.snap_term;
    node.snap_index = sm->index;
    node.snap_term = sm->term;
    /* Writes waiting here can no longer be matched to their entries. */
    struct pz_queue *e = node.proposals.next;
    while (e != &node.proposals) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (r->index <= sm->index)
            req_done(r, PZ_ELEADERCHANGE);
    }
    reads_check_applied();
    pz_info("installed snapshot at index %llu (%zu keys)",
            (unsigned long long)sm->index, kv_count(kv));
}

/* Restart: the newest usable snapshot, or none. Returns 0 (*have says
 * whether one was loaded into node.kv and meta), or PZ_ECORRUPT when the
 * log was compacted and no snapshot covers it. */
static int snapshot_restore(const struct store_meta *sm,
                            const struct raft_entry *ents, size_t n,
                            struct raft_snapshot_meta *out, bool *have,
                            char *err, size_t errlen)
{
    struct snapshot_info *list = NULL;
    size_t nl = 0;
    char e2[SNAPSHOT_ERRMSG_SIZE];
    *have = false;
    if (snapshot_list(node.cfg->raft_data, &list, &nl, e2, sizeof e2) < 0)
        nl = 0;
    for (size_t i = 0; i < nl && !*have; i++) {
        struct snapshot_info *s = &list[i];
        /* Usable only if the stored log agrees with it. */
        bool fits = s->index == sm->snap_index && s->term == sm->snap_term;
        for (size_t j = 0; !fits && j < n; j++)
            if (ents[j].index == s->index)
                fits = ents[j].term == s->term;
        if (!fits)
            continue;
        uint64_t seed = 0;
        if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
            seed = uv_hrtime();
        struct kv *kv = kv_new_seeded(seed);
        struct snapshot_meta meta;
        if (snapshot_load(s->path, kv, &meta, e2, sizeof e2) < 0) {
            pz_warn("damaged snapshot %s: %s; trying an older one", s->path,
                    e2);
            kv_free(kv);
            continue;
        }
        out->index = meta.index;
        out->term = meta.term;
        raft_conf_init(&out->conf);
        if (raft_conf_decode(meta.conf, meta.conf_len, &out->conf) < 0) {
            pz_warn("snapshot %s: bad configuration; trying an older one",
                    s->path);
            snapshot_meta_free(&meta);
            kv_free(kv);
            continue;
        }
        kv_free(node.kv);
        node.kv = kv;
        node.applied = meta.index;
        node.snap_index = meta.index;
        node.snap_term = meta.term;
        node.snap_size = meta.file_size;
        snapshot_meta_free(&meta);
        *have = true;
    }
    snapshot_list_free(list, nl);
    if (!*have && sm->snap_index > 0) {
        snprintf(err, errlen,
                 "%s: the log was compacted up to index %llu but no valid "
                 "snapshot in %s covers it: refusing to start",
                 store_path(node.store), (unsigned long long)sm->snap_index,
                 node.cfg->raft_data);
        return PZ_ECORRUPT;
    }
    return 0;
}
