/* etcd_cluster.c - etcdserverpb.Cluster, Maintenance and Auth (etcd.h).
 *
 * Members: an etcd member id is the PyazDB node's Raft id, its name the
 * node-id, its peerURLs "http://" + its Raft address and its clientURLs
 * "http://" + its gRPC address (where etcd clients reach it); a non-voter
 * is a learner. MemberRemove and MoveLeader run on the leader (a follower
 * relays them), as DELETE /cluster/members and POST /admin/transfer do.
 * PyazDB adds members through its own join flow and promotes learners by
 * itself once they have caught up, so MemberAdd, MemberPromote (of a
 * learner) and MemberUpdate answer FAILED_PRECONDITION or UNIMPLEMENTED
 * saying so. Maintenance.Status and Alarm report the node's NOSPACE alarm
 * (the one GET /status shows); HashKV is kv_digest folded to 32 bits;
 * Defragment has nothing to do (the log database gives pages back by
 * itself, incrementally) and says so by succeeding. Snapshot streams
 * PyazDB's own backup file (see call_snapshot). */
#include "etcd.h"

#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "etcd_map.h"
#include "grpc_frame.h"
#include "grpc_pb.h"
#include "log.h"
#include "node.h"
#include "sha256.h"
#include "snapshot.h"
#include "store.h"

#define ETCD_API_VERSION "3.4.0" /* Status.version: the API we match */

/* Members of ns as etcd Members (strings in bufs: free_members). */
struct members {
    Etcdserverpb__Member *m;
    Etcdserverpb__Member **mp;
    char **urls; /* 2 per member: peer, client */
    char **peer_list, **client_list;
    size_t n;
};

static char *url(const char *addr)
{
    size_t n = strlen(addr) + sizeof "http://";
    char *u = pz_malloc(n);
    snprintf(u, n, "http://%s", addr);
    return u;
}

static void members_build(const struct node_status *ns, struct members *out)
{
    size_t n = ns->n_members;
    out->n = n;
    out->m = pz_calloc(n + 1, sizeof *out->m);
    out->mp = pz_calloc(n + 1, sizeof *out->mp);
    out->urls = pz_calloc(2 * n + 1, sizeof *out->urls);
    out->peer_list = pz_calloc(n + 1, sizeof *out->peer_list);
    out->client_list = pz_calloc(n + 1, sizeof *out->client_list);
    for (size_t i = 0; i < n; i++) {
        const struct node_member *nm = &ns->members[i];
        Etcdserverpb__Member init = ETCDSERVERPB__MEMBER__INIT;
        Etcdserverpb__Member *m = &out->m[i];
        *m = init;
        m->id = nm->id;
        m->name = (char *)(nm->name ? nm->name : "");
        m->islearner = !nm->voter;
        out->urls[2 * i] = url(nm->raft ? nm->raft : "");
        out->peer_list[i] = out->urls[2 * i];
        m->peerurls = &out->peer_list[i];
        m->n_peerurls = 1;
        if (nm->grpc && nm->grpc[0]) {
            out->urls[2 * i + 1] = url(nm->grpc);
            out->client_list[i] = out->urls[2 * i + 1];
            m->clienturls = &out->client_list[i];
            m->n_clienturls = 1;
        }
        out->mp[i] = m;
    }
}

static void members_free(struct members *ms)
{
    for (size_t i = 0; i < 2 * ms->n; i++)
        pz_free(ms->urls[i]);
    pz_free(ms->urls);
    pz_free(ms->peer_list);
    pz_free(ms->client_list);
    pz_free(ms->mp);
    pz_free(ms->m);
}

static const struct node_member *member_by_id(const struct node_status *ns,
                                              uint64_t id)
{
    for (size_t i = 0; i < ns->n_members; i++)
        if (ns->members[i].id == id)
            return &ns->members[i];
    return NULL;
}

static uint64_t leader_id(const struct node_status *ns)
{
    for (size_t i = 0; i < ns->n_members; i++)
        if (ns->leader && ns->members[i].name &&
            strcmp(ns->members[i].name, ns->leader) == 0)
            return ns->members[i].id;
    return 0;
}

static uint64_t revision(void)
{
    return kv_revision(node_kv());
}

/* A reply holding only a header: DefragmentResponse, MoveLeaderResponse,
 * AuthEnableResponse... all have header = 1 and nothing else we set. */
static void reply_members(struct gstream *st,
                          const ProtobufCMessageDescriptor *desc)
{
    /* MemberListResponse, MemberRemoveResponse, MemberPromoteResponse and
     * MemberUpdateResponse share one layout: header = 1, members = 2. */
    PZ_UNUSED(desc);
    struct node_status ns;
    node_status(&ns);
    struct members ms;
    members_build(&ns, &ms);
    Etcdserverpb__MemberListResponse r =
        ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, revision(), NULL);
    r.header = &h;
    r.members = ms.mp;
    r.n_members = ms.n;
    etcd_reply(st, &r.base);
    members_free(&ms);
}

static void reply_header_only(struct gstream *st)
{
    /* Every *Response with only a header encodes the same bytes. */
    Etcdserverpb__DefragmentResponse r =
        ETCDSERVERPB__DEFRAGMENT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, revision(), NULL);
    r.header = &h;
    etcd_reply(st, &r.base);
}

/* --- calls that need the leader --------------------------------------------
 */

static void on_remove_done(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    grpc_stream_in_node(st, false);
    if (status < 0)
        etcd_node_error(st, status, true);
    else
        reply_members(st, &etcdserverpb__member_remove_response__descriptor);
    grpc_stream_flush(st);
}

static void on_transfer_done(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    grpc_stream_in_node(st, false);
    if (status == 0)
        reply_header_only(st);
    else if (status == PZ_ELEADERCHANGE || status == PZ_ETIMEDOUT)
        grpc_stream_fail(st, GRPC_UNAVAILABLE,
                         "etcdserver: request timed out, leader transfer "
                         "took too long");
    else
        etcd_node_error(st, status, true);
    grpc_stream_flush(st);
}

static void on_leader_known(struct node_req *req, int status);

/* Errors of node_remove_member / node_transfer at the call. */
static void leader_call_error(struct gstream *st, int call, int rv)
{
    if (rv == PZ_ENOLEADER) {
        grpc_stream_in_node(st, true);
        grpc_stream_set_ext(st, (void *)(intptr_t)(call + 1), NULL);
        node_wait_leader(grpc_stream_req(st), on_leader_known);
        return;
    }
    switch (rv) {
    case PZ_ENOTFOUND:
        if (call == ETCD_MOVE_LEADER)
            grpc_stream_fail(st, GRPC_FAILED_PRECONDITION,
                             "etcdserver: bad leader transferee");
        else
            grpc_stream_fail(st, GRPC_NOT_FOUND,
                             "etcdserver: member not found");
        break;
    case PZ_EINVAL:
        grpc_stream_fail(st, GRPC_FAILED_PRECONDITION,
                         "etcdserver: bad leader transferee");
        break;
    case PZ_EBUSY:
        grpc_stream_fail(st, GRPC_UNAVAILABLE,
                         "etcdserver: another membership change or leader "
                         "transfer is in progress; retry");
        break;
    default:
        etcd_node_error(st, rv, true);
    }
}

static void leader_call(struct gstream *st, int call)
{
    uint64_t id;
    if (call == ETCD_MOVE_LEADER) {
        Etcdserverpb__MoveLeaderRequest *q =
            (Etcdserverpb__MoveLeaderRequest *)etcd_unpack(
                st, &etcdserverpb__move_leader_request__descriptor);
        if (q == NULL)
            return;
        id = q->targetid;
        protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
    } else {
        Etcdserverpb__MemberRemoveRequest *q =
            (Etcdserverpb__MemberRemoveRequest *)etcd_unpack(
                st, &etcdserverpb__member_remove_request__descriptor);
        if (q == NULL)
            return;
        id = q->id;
        protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
    }
    struct node_status ns;
    node_status(&ns);
    const struct node_member *m = member_by_id(&ns, id);
    if (m == NULL) {
        leader_call_error(st, call, PZ_ENOTFOUND);
        return;
    }
    if (call == ETCD_MOVE_LEADER && node_is_leader() && id == ns.self_id) {
        reply_header_only(st); /* already leads */
        return;
    }
    struct node_req *req = grpc_stream_req(st);
    grpc_stream_in_node(st, true);
    int rv = call == ETCD_MOVE_LEADER
                 ? node_transfer(req, m->name, on_transfer_done)
                 : node_remove_member(req, m->name, on_remove_done);
    if (rv < 0) {
        grpc_stream_in_node(st, false);
        leader_call_error(st, call, rv);
    }
}

static void on_leader_known(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    int call = (int)(intptr_t)grpc_stream_ext(st) - 1;
    grpc_stream_set_ext(st, NULL, NULL);
    grpc_stream_in_node(st, false);
    if (status < 0)
        grpc_stream_fail(st, GRPC_UNAVAILABLE, "etcdserver: no leader");
    else
        leader_call(st, call);
    grpc_stream_flush(st);
}

/* --- local answers ---------------------------------------------------------
 */

static void call_status(struct gstream *st)
{
    struct node_status ns;
    node_status(&ns);
    Etcdserverpb__StatusResponse r = ETCDSERVERPB__STATUS_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, ns.revision, &ns);
    r.header = &h;
    r.version = ETCD_API_VERSION;
    r.dbsize = (int64_t)node_db_size();
    r.dbsizeinuse = r.dbsize;
    r.leader = leader_id(&ns);
    r.raftindex = ns.commit_index;
    r.raftterm = ns.term;
    r.raftappliedindex = ns.applied_index;
    const struct node_member *self = member_by_id(&ns, ns.self_id);
    r.islearner = self && !self->voter;
    char err[256];
    char *errs[1] = {err};
    if (ns.nospace) {
        snprintf(err, sizeof err, "memberID:%llu alarm:NOSPACE (%s)",
                 (unsigned long long)ns.self_id, ns.alarm_reason);
        r.errors = errs;
        r.n_errors = 1;
    }
    etcd_reply(st, &r.base);
}

static void call_alarm(struct gstream *st)
{
    Etcdserverpb__AlarmRequest *q = (Etcdserverpb__AlarmRequest *)etcd_unpack(
        st, &etcdserverpb__alarm_request__descriptor);
    if (q == NULL)
        return;
    int action = q->action;
    protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
    if (action != ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__GET) {
        grpc_stream_fail(st, GRPC_UNIMPLEMENTED,
                         "PyazDB raises and clears its NOSPACE alarm by "
                         "itself (when disk space or the quota allows "
                         "writes again); only alarm list is supported");
        return;
    }
    struct node_status ns;
    node_status(&ns);
    Etcdserverpb__AlarmMember *am = pz_calloc(ns.n_members + 1, sizeof *am);
    Etcdserverpb__AlarmMember **amp = pz_calloc(ns.n_members + 1, sizeof *amp);
    size_t n = 0;
    for (size_t i = 0; i < ns.n_members; i++) {
        const struct node_member *m = &ns.members[i];
        bool on = m->id == ns.self_id ? ns.nospace : m->nospace;
        if (!on)
            continue;
        Etcdserverpb__AlarmMember init = ETCDSERVERPB__ALARM_MEMBER__INIT;
        am[n] = init;
        am[n].memberid = m->id;
        am[n].alarm = ETCDSERVERPB__ALARM_TYPE__NOSPACE;
        amp[n] = &am[n];
        n++;
    }
    Etcdserverpb__AlarmResponse r = ETCDSERVERPB__ALARM_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, ns.revision, &ns);
    r.header = &h;
    r.alarms = amp;
    r.n_alarms = n;
    etcd_reply(st, &r.base);
    pz_free(amp);
    pz_free(am);
}

static uint32_t hash32(void)
{
    uint64_t d = kv_digest(node_kv());
    return (uint32_t)(d ^ (d >> 32));
}

static void call_hashkv(struct gstream *st)
{
    Etcdserverpb__HashKVRequest *q = (Etcdserverpb__HashKVRequest *)etcd_unpack(
        st, &etcdserverpb__hash_kvrequest__descriptor);
    if (q == NULL)
        return;
    int64_t want = q->revision;
    protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
    uint64_t rev = revision();
    if (want > etcd_rev(rev)) {
        grpc_stream_fail(
            st, GRPC_OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision");
        return;
    }
    if (want > 0 && want < etcd_rev(rev)) {
        grpc_stream_fail(
            st, GRPC_OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted");
        return;
    }
    Etcdserverpb__HashKVResponse r = ETCDSERVERPB__HASH_KVRESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, rev, NULL);
    r.header = &h;
    r.hash = hash32();
    r.compact_revision = etcd_rev(rev);
    etcd_reply(st, &r.base);
}

static void call_hash(struct gstream *st)
{
    Etcdserverpb__HashResponse r = ETCDSERVERPB__HASH_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, revision(), NULL);
    r.header = &h;
    r.hash = hash32();
    etcd_reply(st, &r.base);
}

static void call_member_promote(struct gstream *st)
{
    Etcdserverpb__MemberPromoteRequest *q =
        (Etcdserverpb__MemberPromoteRequest *)etcd_unpack(
            st, &etcdserverpb__member_promote_request__descriptor);
    if (q == NULL)
        return;
    uint64_t id = q->id;
    protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
    struct node_status ns;
    node_status(&ns);
    const struct node_member *m = member_by_id(&ns, id);
    if (m == NULL)
        grpc_stream_fail(st, GRPC_NOT_FOUND, "etcdserver: member not found");
    else if (m->voter)
        grpc_stream_fail(st, GRPC_FAILED_PRECONDITION,
                         "etcdserver: can only promote a learner member");
    else
        grpc_stream_fail(st, GRPC_FAILED_PRECONDITION,
                         "etcdserver: can only promote a learner member "
                         "which is in sync with leader (PyazDB promotes a "
                         "learner by itself once it has caught up)");
}

/* --- Snapshot ---------------------------------------------------------------
 * As GET /admin/snapshot: a linearizable read, a snapshot covering it, then
 * its file (PyazDB's backup format, not etcd's bolt database) in
 * SNAP_CHUNK messages, each made when the client has taken the previous
 * one, with remaining_bytes counting down to 0. etcd ends its stream with
 * the SHA-256 of what came before, which etcd clients check, after data
 * whose length is a multiple of 512 (a bolt database's pages): so the file
 * is followed by zero bytes up to such a length, then the SHA-256 of the
 * file and those zeros. The saved file is thus the backup, at most 511
 * zero bytes and 32 bytes of digest. */
#define SNAP_CHUNK (64 * 1024)
#define SNAP_ALIGN 512

struct esnap {
    struct snapshot_reader *r;
    uint64_t off;    /* bytes of the stream sent */
    uint64_t size;   /* the file's size */
    uint64_t padded; /* size rounded up to SNAP_ALIGN */
    struct sha256 sha;
    struct gstream *st;
    bool slot;          /* holds a snapshot-max-streams slot */
    bool timer_on;      /* stall is initialized */
    uv_timer_t stall;   /* snapshot-stall-timeout: checks progress */
    uint64_t last_off;  /* off at the last check */
    uint64_t last_move; /* uv_now() when off last moved */
    uint8_t buf[SNAP_CHUNK];
};

static void esnap_closed(uv_handle_t *h)
{
    pz_free(h->data);
}

static void esnap_free(void *p)
{
    struct esnap *e = p;
    if (e->r)
        snapshot_reader_close(e->r);
    if (e->slot)
        node_snapshot_stream_put();
    if (e->timer_on) {
        uv_timer_stop(&e->stall);
        e->stall.data = e;
        uv_close((uv_handle_t *)&e->stall, esnap_closed);
    } else {
        pz_free(e);
    }
}

/* A client that takes nothing for snapshot-stall-timeout loses the
 * stream: its flow-control window would otherwise pin the file (and a
 * slot) for as long as it keeps the connection open. */
static void on_stall_check(uv_timer_t *t)
{
    struct esnap *e = t->data;
    uint64_t now = uv_now(t->loop);
    if (e->off != e->last_off) {
        e->last_off = e->off;
        e->last_move = now;
        return;
    }
    if (now - e->last_move < node_snapshot_stall_ms())
        return;
    pz_warn("etcd Snapshot: the client took nothing for %llu ms: "
            "cancelling the stream",
            (unsigned long long)(now - e->last_move));
    uv_timer_stop(t);
    struct gstream *st = e->st;
    grpc_stream_reset(st);
    grpc_stream_flush(st); /* may free e */
}

static void snap_pump(struct gstream *st)
{
    struct esnap *e = grpc_stream_ext(st);
    char err[SNAPSHOT_ERRMSG_SIZE];
    uint64_t total = e->padded + SHA256_SIZE;
    size_t n = 0;
    if (e->off < e->size) { /* the file */
        size_t want = (size_t)PZ_MIN((uint64_t)SNAP_CHUNK, e->size - e->off);
        if (snapshot_reader_read(e->r, e->off, e->buf, want, &n, err,
                                 sizeof err) < 0 ||
            n != want) {
            pz_warn("etcd Snapshot: %s", n != want ? "the file shrank" : err);
            grpc_stream_fail(st, GRPC_INTERNAL,
                             "etcdserver: snapshot failed (see the server "
                             "log)");
            return;
        }
        sha256_update(&e->sha, e->buf, n);
    } else if (e->off < e->padded) { /* zeros up to SNAP_ALIGN */
        n = (size_t)(e->padded - e->off);
        memset(e->buf, 0, n);
        sha256_update(&e->sha, e->buf, n);
    } else { /* the digest */
        sha256_final(&e->sha, e->buf);
        n = SHA256_SIZE;
    }
    e->off += n;
    Etcdserverpb__SnapshotResponse r = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, revision(), NULL);
    r.header = &h;
    r.remaining_bytes = total - e->off;
    r.blob.data = e->buf;
    r.blob.len = n;
    size_t len = protobuf_c_message_get_packed_size(&r.base);
    uint8_t *b = pz_malloc(len + 1);
    protobuf_c_message_pack(&r.base, b);
    if (e->off == total)
        grpc_stream_reply(st, b, len);
    else
        grpc_stream_send(st, b, len);
    pz_free(b);
}

static void on_snap_taken(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    grpc_stream_in_node(st, false);
    char err[SNAPSHOT_ERRMSG_SIZE];
    struct esnap *e = grpc_stream_ext(st);
    uint64_t index;
    if (status < 0 || node_snapshot_open(&e->r, &index, err, sizeof err) < 0) {
        if (status >= 0)
            pz_warn("etcd Snapshot: %s", err);
        grpc_stream_fail(st, GRPC_INTERNAL,
                         "etcdserver: snapshot failed (see the server log)");
    } else {
        e->size = snapshot_reader_size(e->r);
        e->padded = (e->size + SNAP_ALIGN - 1) / SNAP_ALIGN * SNAP_ALIGN;
        sha256_init(&e->sha);
        pz_info("streaming snapshot at index %llu (%llu bytes) over gRPC",
                (unsigned long long)index, (unsigned long long)e->size);
        uv_loop_t *loop = grpc_stream_server(st)->loop;
        uv_timer_init(loop, &e->stall);
        e->stall.data = e;
        e->timer_on = true;
        e->last_move = uv_now(loop);
        uint64_t every = PZ_MAX(node_snapshot_stall_ms() / 4, (uint64_t)100);
        uv_timer_start(&e->stall, on_stall_check, every, every);
        grpc_stream_pump(st, snap_pump);
    }
    grpc_stream_flush(st);
}

static void on_snap_read(struct node_req *req, int status)
{
    struct gstream *st = grpc_stream_of(req);
    grpc_stream_in_node(st, false);
    if (status < 0) {
        etcd_node_error(st, status, false);
    } else {
        grpc_stream_in_node(st, true);
        uint64_t retry_ms;
        int rv =
            node_snapshot_backup(req, req->index, on_snap_taken, &retry_ms);
        if (rv == PZ_EBUSY) {
            grpc_stream_in_node(st, false);
            grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                             "etcdserver: a snapshot for backups was started "
                             "less than snapshot-backup-interval ago: retry "
                             "in %llu s",
                             (unsigned long long)((retry_ms + 999) / 1000));
        } else if (rv < 0) {
            grpc_stream_in_node(st, false);
            on_snap_taken(req, PZ_EIO);
            return; /* flushed there */
        }
    }
    grpc_stream_flush(st);
}

static void call_snapshot(struct gstream *st)
{
    if (!node_snapshot_stream_get()) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: too many snapshots being sent "
                         "(snapshot-max-streams): retry later");
        return;
    }
    struct esnap *e = pz_calloc(1, sizeof *e);
    e->slot = true;
    e->st = st;
    grpc_stream_set_ext(st, e, esnap_free);
    grpc_stream_in_node(st, true);
    int rv = node_read(grpc_stream_req(st), false, on_snap_read);
    if (rv < 0) {
        grpc_stream_in_node(st, false);
        etcd_node_error(st, rv, false);
    }
}

static void call_auth_status(struct gstream *st)
{
    Etcdserverpb__AuthStatusResponse r =
        ETCDSERVERPB__AUTH_STATUS_RESPONSE__INIT;
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, revision(), NULL);
    r.header = &h;
    r.enabled = false;
    etcd_reply(st, &r.base);
}

/* Authenticate: with a cluster-token, user "root" and the token as its
 * password get the token back, which etcd clients then send as "token"
 * metadata (auth_grpc_etcd); so does a client token of
 * client-token-file under its name (auth.h). Without either, etcd's "not
 * enabled", which its clients take as "go on without a token". */
static void call_authenticate(struct gstream *st)
{
    Etcdserverpb__AuthenticateRequest *q =
        (Etcdserverpb__AuthenticateRequest *)etcd_unpack(
            st, &etcdserverpb__authenticate_request__descriptor);
    if (q == NULL)
        return;
    const char *token = auth_cluster_token();
    if (auth_user_ok(q->name, q->password))
        token = q->password;
    else if (auth_on() && strcmp(q->name, "root") != 0)
        token = NULL; /* refused below, not "not enabled" */
    if ((token == NULL || token[0] == '\0') && auth_on()) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: authentication failed, invalid user ID "
                         "or password");
    } else if (token == NULL || token[0] == '\0') {
        grpc_stream_fail(st, GRPC_FAILED_PRECONDITION,
                         "etcdserver: authentication is not enabled");
    } else if (token != q->password &&
               (strcmp(q->name, "root") != 0 ||
                !pz_token_equal(token, strlen(token), q->password,
                                strlen(q->password)))) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "etcdserver: authentication failed, invalid user ID "
                         "or password");
    } else {
        Etcdserverpb__AuthenticateResponse r =
            ETCDSERVERPB__AUTHENTICATE_RESPONSE__INIT;
        Etcdserverpb__ResponseHeader h;
        etcd_header(&h, revision(), NULL);
        r.header = &h;
        r.token = (char *)token;
        etcd_reply(st, &r.base);
    }
    protobuf_c_message_free_unpacked(&q->base, &grpc_pb_allocator);
}

void etcd_cluster_call(struct gstream *st, int call)
{
    switch (call) {
    case ETCD_MEMBER_LIST:
        reply_members(st, &etcdserverpb__member_list_response__descriptor);
        break;
    case ETCD_MEMBER_REMOVE:
    case ETCD_MOVE_LEADER:
        leader_call(st, call);
        break;
    case ETCD_MEMBER_PROMOTE:
        call_member_promote(st);
        break;
    case ETCD_MEMBER_ADD:
        grpc_stream_fail(st, GRPC_FAILED_PRECONDITION,
                         "PyazDB adds members itself: start the new node "
                         "with an empty data directory and the cluster's "
                         "mandi-addr (no initial-cluster); it asks to join, "
                         "is added as a learner and promoted once caught up");
        break;
    case ETCD_MEMBER_UPDATE:
        grpc_stream_fail(st, GRPC_UNIMPLEMENTED,
                         "PyazDB does not change a member's peer URLs: "
                         "remove the member and let it join again with "
                         "its new address");
        break;
    case ETCD_STATUS:
        call_status(st);
        break;
    case ETCD_ALARM:
        call_alarm(st);
        break;
    case ETCD_DEFRAGMENT:
        reply_header_only(st);
        break;
    case ETCD_HASH:
        call_hash(st);
        break;
    case ETCD_HASHKV:
        call_hashkv(st);
        break;
    case ETCD_SNAPSHOT:
        call_snapshot(st);
        break;
    case ETCD_AUTH_STATUS:
        call_auth_status(st);
        break;
    case ETCD_AUTHENTICATE:
        call_authenticate(st);
        break;
    default:
        grpc_stream_fail(st, GRPC_UNIMPLEMENTED,
                         "etcdserver: authentication is not supported by "
                         "PyazDB (no users or roles; AuthStatus reports it "
                         "disabled)");
    }
}
