/* etcd_lease.c - etcdserverpb.Lease (etcd.h) on PyazDB's leases (kv.h
 * "Leases", lease.h, node_lease.h).
 *
 * LeaseGrant and LeaseRevoke are Raft commands proposed by the leader (a
 * follower relays the call; with no leader known it waits for an
 * election, as KV writes do). LeaseTimeToLive needs the leader's deadline,
 * so a follower relays it too; the leader answers after a ReadIndex round
 * shows it still leads. LeaseLeases is answered where it arrives, after a
 * ReadIndex round. LeaseKeepAlive is a bidirectional stream: its requests
 * are handled one at a time, in order; on the leader each after a
 * ReadIndex round (node_lease_keepalive), on a follower each relayed to
 * the leader as one unary call of the same method
 * (grpc_stream_forward_call; with no leader known, or not its address,
 * after waiting for one, as the other calls; what a relay holds counts
 * against max-pending-output, and one with no room fails the stream with
 * GRPC_RELAY_BUSY_MSG, as the other relayed calls). A relay that gets no
 * answer from the leader (the node it went to is not the leader any more
 * or knows none, it went away, the relay timed out) goes again after
 * 50 ms, as etcd's follower renews again (a keep-alive is idempotent):
 * to the leader known then, here if this node won, or after waiting for
 * one; for up to request-timeout after the request's first try, then the
 * stream fails with UNAVAILABLE "etcdserver: request timed out" (etcd's
 * ErrTimeout; "etcdserver: no leader" when that time ran out waiting for
 * a leader). Every request gets one answer, in order, pulled by the
 * client's reads. When the client ends its side, the call ends (OK) once
 * every answer went.
 *
 * etcd's answers for leases that do not exist: KeepAlive TTL 0,
 * TimeToLive TTL -1, Revoke NOT_FOUND "etcdserver: requested lease not
 * found". Lease ids are PyazDB's, 1 to 2^53 - 1: a Grant naming another
 * is INVALID_ARGUMENT. Bounds: at most KA_MAX requests and answers wait on
 * one keep-alive stream (RESOURCE_EXHAUSTED beyond: the client sends
 * without reading); TimeToLive lists keys up to grpc-max-message bytes. */
#include "etcd.h"

#include <string.h>

#include "grpc_pb.h"
#include "kv.h"
#include "log.h"
#include "node.h"
#include "node_lease.h"

#define KA_MAX 1024 /* requests + answers waiting on one keep-alive stream */
#define KA_PAUSE_MS 50 /* between relays of one keep-alive request, as etcd */

/* This node must lead: true if it does; else the call is relayed to the
 * leader, or waits for one it can reach and runs again (grpc.h,
 * grpc_stream_forward). */
static bool on_leader(struct gstream *st)
{
    if (node_is_leader())
        return true;
    etcd_node_error(st, PZ_ENOTLEADER, true);
    return false;
}

static bool id_ok(int64_t id)
{
    return id > 0 && (uint64_t)id <= KV_LEASE_ID_MAX;
}

/* --- Grant, Revoke ------------------------------------------------------- */

struct elease {
    int call;
    int64_t id, ttl;
};

static void write_done(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    struct elease *e = grpc_stream_ext(st);
    grpc_stream_in_node(st, false);
    if (status < 0) {
        etcd_node_error(st, status, true);
        grpc_stream_flush(st);
        return;
    }
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, req->res.revision, NULL);
    switch (req->res.status) {
    case KV_ELEASE_NOTFOUND:
        grpc_stream_fail(st, GRPC_NOT_FOUND,
                         "etcdserver: requested lease not found");
        break;
    case KV_ELEASE_EXISTS:
        grpc_stream_fail(st, GRPC_FAILED_PRECONDITION,
                         "etcdserver: lease already exists");
        break;
    case KV_ELEASE_FULL:
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: too many leases (lease-max-count)");
        break;
    case KV_EREVISION:
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: the revision is at its maximum "
                         "(2^62 - 1): the revoke was refused");
        break;
    default:
        if (e->call == ETCD_LEASE_GRANT) {
            Etcdserverpb__LeaseGrantResponse r =
                ETCDSERVERPB__LEASE_GRANT_RESPONSE__INIT;
            r.header = &h;
            r.id = e->id;
            r.ttl = e->ttl;
            etcd_reply(st, &r.base);
        } else {
            Etcdserverpb__LeaseRevokeResponse r =
                ETCDSERVERPB__LEASE_REVOKE_RESPONSE__INIT;
            r.header = &h;
            etcd_reply(st, &r.base);
        }
    }
    grpc_stream_flush(st);
}

static void propose(struct gstream *st, struct pz_buf *cmd)
{
    grpc_stream_in_node(st, true);
    int rv = node_propose(grpc_stream_req(st), (const uint8_t *)cmd->data,
                          cmd->len, write_done);
    if (rv < 0) {
        grpc_stream_in_node(st, false);
        etcd_node_error(st, rv, true);
    }
}

static void call_grant(struct gstream *st)
{
    Etcdserverpb__LeaseGrantRequest *q =
        (Etcdserverpb__LeaseGrantRequest *)etcd_unpack(
            st, &etcdserverpb__lease_grant_request__descriptor);
    if (q == NULL)
        return;
    int64_t id = q->id, ttl = q->ttl;
    protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
    if (id != 0 && !id_ok(id)) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: PyazDB lease IDs are from 1 to 2^53 - 1");
        return;
    }
    /* etcd raises a TTL below its minimum to the minimum. */
    if (ttl < 1)
        ttl = 1;
    if ((uint64_t)ttl > node_lease_max_ttl()) {
        grpc_stream_fail(st, GRPC_OUT_OF_RANGE,
                         "etcdserver: too large lease TTL");
        return;
    }
    if (!on_leader(st))
        return;
    struct kv_lease l;
    if (kv_lease_count(node_kv()) >= node_lease_max_count()) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: too many leases (lease-max-count)");
        return;
    }
    if (id == 0)
        id = (int64_t)node_lease_new_id();
    else if (kv_lease_get(node_kv(), (uint64_t)id, &l)) {
        grpc_stream_fail(st, GRPC_FAILED_PRECONDITION,
                         "etcdserver: lease already exists");
        return;
    }
    struct elease *e = pz_calloc(1, sizeof *e);
    e->call = ETCD_LEASE_GRANT;
    e->id = id;
    e->ttl = ttl;
    grpc_stream_set_ext(st, e, pz_free);
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    kv_encode_lease_grant(&cmd, (uint64_t)id, (uint64_t)ttl);
    propose(st, &cmd);
    pz_buf_free(&cmd);
}

static void call_revoke(struct gstream *st)
{
    Etcdserverpb__LeaseRevokeRequest *q =
        (Etcdserverpb__LeaseRevokeRequest *)etcd_unpack(
            st, &etcdserverpb__lease_revoke_request__descriptor);
    if (q == NULL)
        return;
    int64_t id = q->id;
    protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
    if (!id_ok(id)) {
        grpc_stream_fail(st, GRPC_NOT_FOUND,
                         "etcdserver: requested lease not found");
        return;
    }
    if (!on_leader(st))
        return;
    struct elease *e = pz_calloc(1, sizeof *e);
    e->call = ETCD_LEASE_REVOKE;
    e->id = id;
    grpc_stream_set_ext(st, e, pz_free);
    struct pz_buf cmd;
    pz_buf_init(&cmd);
    kv_encode_lease_revoke(&cmd, (uint64_t)id);
    propose(st, &cmd);
    pz_buf_free(&cmd);
}

/* --- TimeToLive, Leases -------------------------------------------------- */

struct ttl_keys {
    ProtobufCBinaryData *keys;
    size_t n, cap, bytes, max;
};

static int ttl_key(void *arg, const struct kv_view *v)
{
    struct ttl_keys *k = arg;
    if (k->bytes + v->klen + 8 > k->max)
        return 1; /* the answer must fit one message */
    if (k->n == k->cap) {
        k->cap = k->cap ? 2 * k->cap : 16;
        k->keys = pz_realloc(k->keys, k->cap * sizeof *k->keys);
    }
    k->keys[k->n].data = (uint8_t *)v->key;
    k->keys[k->n].len = v->klen;
    k->n++;
    k->bytes += v->klen + 8;
    return 0;
}

/* The answer to a read whose round is done, from the state as it is now
 * (at once, or once the client has room for it). */
static void read_answer(struct gstream *st)
{
    struct elease *e = grpc_stream_ext(st);
    struct kv *kv = node_kv();
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, kv_revision(kv), NULL);
    if (e->call == ETCD_LEASE_LEASES) {
        size_t n = kv_lease_count(kv);
        Etcdserverpb__LeaseStatus *ls = pz_calloc(n + 1, sizeof *ls);
        Etcdserverpb__LeaseStatus **lp = pz_calloc(n + 1, sizeof *lp);
        for (size_t i = 0; i < n; i++) {
            struct kv_lease l;
            kv_lease_at(kv, i, &l);
            Etcdserverpb__LeaseStatus init = ETCDSERVERPB__LEASE_STATUS__INIT;
            ls[i] = init;
            ls[i].id = (int64_t)l.id;
            lp[i] = &ls[i];
        }
        Etcdserverpb__LeaseLeasesResponse r =
            ETCDSERVERPB__LEASE_LEASES_RESPONSE__INIT;
        r.header = &h;
        r.n_leases = n;
        r.leases = lp;
        etcd_reply(st, &r.base);
        pz_free(lp);
        pz_free(ls);
        return;
    }
    if (!node_is_leader()) {
        /* Leadership moved during the round: ask the new leader. */
        etcd_node_error(st, PZ_ENOTLEADER, false);
        return;
    }
    Etcdserverpb__LeaseTimeToLiveResponse r =
        ETCDSERVERPB__LEASE_TIME_TO_LIVE_RESPONSE__INIT;
    r.header = &h;
    r.id = e->id;
    struct kv_lease l;
    struct ttl_keys k = {.max = grpc_stream_server(st)->max_message / 2};
    if (!id_ok(e->id) || !kv_lease_get(kv, (uint64_t)e->id, &l)) {
        r.ttl = -1; /* etcd: the lease does not exist */
    } else {
        uint64_t ms = 0;
        if (!node_lease_remaining(l.id, &ms))
            ms = l.ttl * 1000;
        r.ttl = (int64_t)(ms / 1000); /* etcd truncates */
        r.grantedttl = (int64_t)l.ttl;
        if (e->ttl) /* keys asked for */
            kv_lease_keys(kv, l.id, ttl_key, &k);
        r.n_keys = k.n;
        r.keys = k.keys;
    }
    etcd_reply(st, &r.base);
    pz_free(k.keys);
}

static void read_done(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    grpc_stream_in_node(st, false);
    if (status < 0)
        etcd_node_error(st, status, false);
    else if (!grpc_stream_hold_read(st, read_answer))
        read_answer(st);
    grpc_stream_flush(st);
}

static void call_read(struct gstream *st, int call)
{
    struct elease *e = pz_calloc(1, sizeof *e);
    e->call = call;
    if (call == ETCD_LEASE_TTL) {
        Etcdserverpb__LeaseTimeToLiveRequest *q =
            (Etcdserverpb__LeaseTimeToLiveRequest *)etcd_unpack(
                st, &etcdserverpb__lease_time_to_live_request__descriptor);
        if (q == NULL) {
            pz_free(e);
            return;
        }
        e->id = q->id;
        e->ttl = q->keys; /* keys asked for */
        protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
        if (!on_leader(st)) {
            pz_free(e);
            return;
        }
    } else {
        Etcdserverpb__LeaseLeasesRequest *q =
            (Etcdserverpb__LeaseLeasesRequest *)etcd_unpack(
                st, &etcdserverpb__lease_leases_request__descriptor);
        if (q == NULL) {
            pz_free(e);
            return;
        }
        protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
    }
    grpc_stream_set_ext(st, e, pz_free);
    grpc_stream_in_node(st, true);
    int rv = node_read(grpc_stream_req(st), false, read_done);
    if (rv < 0) {
        grpc_stream_in_node(st, false);
        etcd_node_error(st, rv, false);
    }
}

void etcd_lease_call(struct gstream *st, int call)
{
    switch (call) {
    case ETCD_LEASE_GRANT:
        call_grant(st);
        break;
    case ETCD_LEASE_REVOKE:
        call_revoke(st);
        break;
    default:
        call_read(st, call);
    }
}

/* --- KeepAlive ----------------------------------------------------------- */

struct ka_msg {
    struct ka_msg *next;
    int64_t id;     /* a request: the lease */
    size_t len;     /* an answer: its bytes */
    uint8_t data[]; /* packed LeaseKeepAliveResponse */
};

struct ka_list {
    struct ka_msg *head, *tail;
};

struct eka {
    struct gstream *st;
    struct ka_list reqs, answers;
    size_t waiting;        /* requests + answers */
    int64_t cur;           /* the request being served */
    bool busy;             /* one is being served */
    bool client_done;      /* the client ended its side */
    struct grpc_call call; /* a request relayed to the leader */
    size_t held;           /* what call holds, counted against
                              max-pending-output (grpc_call_opts.held) */
    bool charged;          /* GRPC_RELAY_COST counted with the stream's
                              output while call is in flight */
    bool in_call;
    bool leader_waited; /* waited for a leader since the last relay */
    bool leader_wait;   /* waiting for one now (node_wait_leader) */
    uint64_t deadline;  /* uv_now() past which the request being served
                           is not relayed again: request-timeout after
                           its first try */
    uv_timer_t pause;   /* the pause before a relay goes again, or the
                           deadline of a wait for a leader */
    bool timer_on;      /* pause is initialized: closed with the eka */
};

static void ka_push(struct ka_list *l, struct ka_msg *m)
{
    m->next = NULL;
    if (l->tail)
        l->tail->next = m;
    else
        l->head = m;
    l->tail = m;
}

static struct ka_msg *ka_pop(struct ka_list *l)
{
    struct ka_msg *m = l->head;
    if (m) {
        l->head = m->next;
        if (l->head == NULL)
            l->tail = NULL;
    }
    return m;
}

static void ka_closed(uv_handle_t *h)
{
    pz_free(h->data);
}

/* The stream is freed: a relay in flight is cancelled; a pending pause is
 * closed, and the eka freed once libuv has let go of its timer. */
static void ka_free(void *p)
{
    struct eka *k = p;
    struct ka_msg *m;
    if (k->in_call)
        grpc_client_cancel(&k->call);
    grpc_call_reset(&k->call);
    while ((m = ka_pop(&k->reqs)))
        pz_free(m);
    while ((m = ka_pop(&k->answers)))
        pz_free(m);
    if (k->timer_on) {
        uv_timer_stop(&k->pause);
        k->pause.data = k;
        uv_close((uv_handle_t *)&k->pause, ka_closed);
    } else {
        pz_free(k);
    }
}

static void ka_pump(struct gstream *st)
{
    struct eka *k = grpc_stream_ext(st);
    struct ka_msg *m = ka_pop(&k->answers);
    if (m) {
        k->waiting--;
        grpc_stream_charge(st, 0, m->len);
        grpc_stream_send(st, m->data, m->len);
        pz_free(m);
    } else if (k->client_done && !k->busy && k->reqs.head == NULL) {
        grpc_stream_fail(st, GRPC_OK, "%s", "");
    }
}

static void ka_answer_bytes(struct eka *k, const void *b, size_t len)
{
    if (!grpc_stream_charge(k->st, len, 0))
        return; /* over max-pending-output: the connection is closing */
    struct ka_msg *m = pz_malloc(sizeof *m + len + 1);
    m->id = 0;
    m->len = len;
    memcpy(m->data, b, len);
    ka_push(&k->answers, m);
}

static void ka_answer(struct eka *k, int64_t id, int64_t ttl)
{
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, kv_revision(node_kv()), NULL);
    Etcdserverpb__LeaseKeepAliveResponse r =
        ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
    r.header = &h;
    r.id = id;
    r.ttl = ttl;
    uint8_t buf[128];
    size_t n = etcdserverpb__lease_keep_alive_response__pack(&r, buf);
    ka_answer_bytes(k, buf, n);
}

static void ka_next(struct eka *k);

/* The request is served: its answer waits for the client's reads. */
static void ka_served(struct eka *k)
{
    k->busy = false;
    grpc_stream_pump(k->st, ka_pump); /* resumes output */
    ka_next(k);
}

static void ka_read_done(struct node_req *req, int status);
static void ka_leader_known(struct node_req *req, int status);
static void ka_serve(struct eka *k);

/* The pause is over: relay the request again (or serve it here, if this
 * node now leads), unless its deadline passed; or a wait for a leader ran
 * to the request's deadline. */
static void ka_timer(uv_timer_t *t)
{
    struct eka *k = t->data;
    struct gstream *st = k->st;
    if (k->leader_wait) {
        /* Ends the wait too (the node request is cancelled). */
        k->leader_wait = false;
        grpc_stream_fail(st, GRPC_UNAVAILABLE, GRPC_ETCD_NO_LEADER_MSG);
    } else if (grpc_stream_ended(st)) {
        return; /* ended meanwhile (its deadline, a drain) */
    } else if (uv_now(t->loop) >= k->deadline) {
        grpc_stream_fail(st, GRPC_UNAVAILABLE, "etcdserver: request timed out");
    } else {
        ka_serve(k);
    }
    grpc_stream_flush(st); /* may free k (ka_free closes t) */
}

static void ka_timer_start(struct eka *k, uint64_t ms)
{
    if (!k->timer_on) {
        uv_timer_init(grpc_stream_server(k->st)->loop, &k->pause);
        k->pause.data = k;
        k->timer_on = true;
    }
    uv_timer_start(&k->pause, ka_timer, ms, 0);
}

/* The relay of the request being served ended without an answer. When
 * that is no answer from the leader (the node it went to was not the
 * leader, or knew none, or went away, or the relay timed out), the
 * request goes again after KA_PAUSE_MS, as etcd's follower renews again
 * (a keep-alive is idempotent): to the leader known then, here if this
 * node won, or after waiting for one; until request-timeout after its
 * first try, then the stream fails as etcd's (ErrTimeout). Any other
 * status (the leader refused the token, say) ends the stream with it. */
static void ka_relay_failed(struct eka *k, const struct grpc_call *call)
{
    struct gstream *st = k->st;
    struct grpc_server *gs = grpc_stream_server(st);
    uint64_t now = uv_now(gs->loop);
    bool lost = call->unsent || call->status == GRPC_UNAVAILABLE ||
                call->status == GRPC_DEADLINE_EXCEEDED;
    if (!lost || gs->draining || grpc_stream_ended(st)) {
        grpc_stream_fail(
            st, call->status == GRPC_OK ? GRPC_UNAVAILABLE : call->status, "%s",
            call->message && call->message[0] ? call->message
                                              : "etcdserver: no leader");
    } else if (now >= k->deadline) {
        grpc_stream_fail(st, GRPC_UNAVAILABLE, "etcdserver: request timed out");
    } else {
        pz_debug("etcd LeaseKeepAlive: relaying lease %lld: %s; trying again",
                 (long long)k->cur, call->message ? call->message : "");
        ka_timer_start(k, PZ_MIN((uint64_t)KA_PAUSE_MS, k->deadline - now));
    }
}

static void ka_forward_done(struct grpc_call *call)
{
    struct eka *k = container_of(call, struct eka, call);
    struct gstream *st = k->st;
    k->in_call = false;
    if (k->charged)
        grpc_stream_charge(st, 0, GRPC_RELAY_COST);
    k->charged = false;
    bool ok = call->status == GRPC_OK && call->has_resp;
    if (ok)
        ka_answer_bytes(k, call->resp.data, call->resp.len);
    else
        ka_relay_failed(k, call);
    grpc_call_reset(call); /* before the next relay reuses it */
    if (ok)
        ka_served(k);
    grpc_stream_flush(st);
}

static void ka_serve(struct eka *k)
{
    struct gstream *st = k->st;
    if (node_is_leader()) {
        grpc_stream_in_node(st, true);
        int rv = node_read(grpc_stream_req(st), false, ka_read_done);
        if (rv < 0) {
            grpc_stream_in_node(st, false);
            grpc_stream_fail(st, GRPC_UNAVAILABLE, "etcdserver: %s",
                             rv == PZ_ETIMEDOUT ? "request timed out"
                                                : "leader changed");
        }
        return;
    }
    Etcdserverpb__LeaseKeepAliveRequest q =
        ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    q.id = k->cur;
    uint8_t buf[32];
    size_t n = etcdserverpb__lease_keep_alive_request__pack(&q, buf);
    int rv = grpc_stream_forward_call(st, &k->call, buf, n,
                                      grpc_stream_server(st)->fwd_timeout,
                                      &k->held, ka_forward_done);
    uint64_t now = uv_now(grpc_stream_server(st)->loop);
    if (rv == PZ_ENOLEADER && !k->leader_waited &&
        !grpc_stream_server(st)->draining && now < k->deadline) {
        /* No leader known, or not its gRPC address: wait for one, as the
         * other calls a follower relays do (once between relays: after
         * the wait, the node knows a leader it can reach; one relayed to
         * us is served if this node won, else refused), up to the
         * request's deadline. */
        k->leader_waited = true;
        k->leader_wait = true;
        grpc_stream_in_node(st, true);
        node_wait_leader(grpc_stream_req(st), ka_leader_known);
        ka_timer_start(k, k->deadline - now);
    } else if (rv == PZ_EOVERLOAD) {
        grpc_stream_fail(st, GRPC_UNAVAILABLE, GRPC_RELAY_BUSY_MSG);
    } else if (rv == PZ_EIO && !grpc_stream_server(st)->draining &&
               now < k->deadline) {
        /* No connection to the leader could be opened: again later. */
        ka_timer_start(k, PZ_MIN((uint64_t)KA_PAUSE_MS, k->deadline - now));
    } else if (rv < 0) {
        grpc_stream_fail(st, GRPC_UNAVAILABLE, "etcdserver: no leader");
    } else {
        k->in_call = true;
        k->charged = true;
        k->leader_waited = false;
    }
}

static void ka_leader_known(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    struct eka *k = grpc_stream_ext(st);
    grpc_stream_in_node(st, false);
    k->leader_wait = false;
    if (k->timer_on)
        uv_timer_stop(&k->pause); /* the wait's deadline */
    if (status < 0)
        grpc_stream_fail(st, GRPC_UNAVAILABLE, "etcdserver: no leader");
    else
        ka_serve(grpc_stream_ext(st)); /* here, or relayed to it */
    grpc_stream_flush(st);
}

static void ka_read_done(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    struct eka *k = grpc_stream_ext(st);
    grpc_stream_in_node(st, false);
    if (status < 0) {
        etcd_node_error(st, status == PZ_ENOTLEADER ? PZ_ELEADERCHANGE : status,
                        false);
    } else if (!node_is_leader()) {
        ka_serve(k); /* leadership moved: relay it */
    } else {
        uint64_t ttl = 0;
        struct kv_lease l;
        if (id_ok(k->cur) && kv_lease_get(node_kv(), (uint64_t)k->cur, &l))
            node_lease_keepalive(l.id, &ttl);
        ka_answer(k, k->cur, (int64_t)ttl); /* 0: no such lease, as etcd */
        ka_served(k);
    }
    grpc_stream_flush(st);
}

static void ka_next(struct eka *k)
{
    if (k->busy)
        return;
    struct ka_msg *m = ka_pop(&k->reqs);
    if (m == NULL)
        return;
    k->busy = true;
    k->cur = m->id;
    k->leader_waited = false;
    k->deadline = uv_now(grpc_stream_server(k->st)->loop) +
                  grpc_stream_server(k->st)->retry_window;
    pz_free(m);
    ka_serve(k);
}

void etcd_lease_keepalive_message(struct gstream *st)
{
    struct eka *k = grpc_stream_ext(st);
    if (k == NULL) {
        k = pz_calloc(1, sizeof *k);
        k->st = st;
        grpc_call_init(&k->call);
        grpc_stream_set_ext(st, k, ka_free);
        grpc_stream_pump(st, ka_pump); /* response headers go now */
    }
    size_t len;
    const uint8_t *msg = grpc_stream_msg(st, &len);
    Etcdserverpb__LeaseKeepAliveRequest *q =
        etcdserverpb__lease_keep_alive_request__unpack(&grpc_pb_allocator, len,
                                                       msg);
    if (q == NULL) {
        grpc_stream_fail(
            st, GRPC_INVALID_ARGUMENT,
            "request is not a valid etcdserverpb.LeaseKeepAliveRequest");
        return;
    }
    int64_t id = q->id;
    etcdserverpb__lease_keep_alive_request__free_unpacked(q,
                                                          &grpc_pb_allocator);
    if (k->waiting >= KA_MAX) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: too many keep-alive requests waiting "
                         "for the client to read their answers");
        return;
    }
    struct ka_msg *m = pz_malloc(sizeof *m);
    m->id = id;
    m->len = 0;
    ka_push(&k->reqs, m);
    k->waiting++;
    ka_next(k);
}

void etcd_lease_keepalive_end(struct gstream *st)
{
    struct eka *k = grpc_stream_ext(st);
    if (k == NULL) {
        grpc_stream_fail(st, GRPC_OK, "%s", "");
        return;
    }
    k->client_done = true;
    grpc_stream_pump(st, ka_pump); /* ends once every answer went */
}
