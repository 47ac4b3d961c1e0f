/* test_grpc.c - the gRPC client against the gRPC server on one real loop in
 * this process: unary calls over one persistent connection, forwarding by a
 * server whose node is not the leader (relayed answers and errors, leader
 * changes), deadlines on both sides, cancellation, lost connections. The
 * servers run on fake nodes (struct grpc_backend): "a" is a leader that
 * applies writes to its own table at once, the others are never the
 * leader, never answer or fail on purpose. Each test ends by draining
 * everything and checking uv_loop_close() == 0. */
#include <stdlib.h>
#include <uv.h>

#include "config.h"
#include "conn.h"
#include "grpc.h"
#include "grpc_client.h"
#include "grpc_frame.h"
#include "grpc_pb.h"
#include "kv.h"
#include "node.h"
#include "test.h"

/* --- the leader: a table, requests completed on the next prepare ------- */

static struct kv *mem_kv;
static struct pz_queue mem_done;

static void mem_complete(struct node_req *req, node_req_cb cb)
{
    pz_queue_init(&req->q);
    req->cb = cb;
    req->status = 0;
    req->queued = true;
    pz_queue_push(&mem_done, &req->q);
}

static int mem_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                       node_req_cb cb)
{
    int rv = kv_apply(mem_kv, cmd, len, &req->res);
    if (rv < 0)
        return rv;
    mem_complete(req, cb);
    return 0;
}

static int mem_read(struct node_req *req, bool stale, node_req_cb cb)
{
    PZ_UNUSED(stale);
    mem_complete(req, cb);
    return 0;
}

static void mem_cancel(struct node_req *req)
{
    if (req->queued) {
        pz_queue_remove(&req->q);
        req->queued = false;
    }
}

static struct kv *mem_table(void)
{
    return mem_kv;
}

static const char *no_leader(void)
{
    return NULL;
}

static void leader_status(struct node_status *st)
{
    memset(st, 0, sizeof *st);
    st->id = "a";
    st->role = "leader";
    st->leader = "a";
}

static const struct grpc_backend leader = {
    .propose = mem_propose,
    .read = mem_read,
    .cancel = mem_cancel,
    .kv = mem_table,
    .leader_grpc_addr = no_leader,
    .status = leader_status,
};

static void mem_before_sleep(void)
{
    struct pz_queue batch;
    pz_queue_init(&batch);
    while (!pz_queue_empty(&mem_done)) {
        struct pz_queue *e = pz_queue_head(&mem_done);
        pz_queue_remove(e);
        pz_queue_push(&batch, e);
    }
    while (!pz_queue_empty(&batch)) {
        struct node_req *r =
            container_of(pz_queue_head(&batch), struct node_req, q);
        pz_queue_remove(&r->q);
        r->queued = false;
        r->cb(r, r->status);
    }
}

struct fx {
    uv_loop_t loop;       /* the loop */
    uv_prepare_t prep;    /* fake node and conn before-sleep work */
    uv_idle_t idle;       /* keeps poll from blocking on work */
    uv_timer_t tick;      /* wakes UV_RUN_ONCE regularly */
    struct pz_config cfg; /* defaults, grpc-addr on a free port */
    struct grpc_server a; /* on the fake leader */
    struct grpc_server b; /* on a fake backend, when started */
    bool b_on;            /* b was started */
    char a_addr[64];      /* "127.0.0.1:port" of a */
    char b_addr[64];      /* "127.0.0.1:port" of b */
};

static void on_idle(uv_idle_t *h)
{
    PZ_UNUSED(h);
}

static void on_prep(uv_prepare_t *h)
{
    struct fx *f = h->data;
    mem_before_sleep();
    conn_before_sleep();
    if (!pz_queue_empty(&mem_done) || conn_has_work())
        uv_idle_start(&f->idle, on_idle);
    else
        uv_idle_stop(&f->idle);
}

static void on_tick(uv_timer_t *t)
{
    PZ_UNUSED(t);
}

static bool run_until(struct fx *f, const bool *flag, uint64_t ms)
{
    uint64_t end = uv_now(&f->loop) + ms;
    while (!*flag && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    return *flag;
}

static void run_for(struct fx *f, uint64_t ms)
{
    static const bool never = false;
    run_until(f, &never, ms);
}

static int fx_init(struct fx *f)
{
    char err[256];
    memset(f, 0, sizeof *f);
    uv_loop_init(&f->loop);
    struct conn_limits lim = {.high_water = 1 << 20, .hard_limit = 64 << 20};
    conn_setup(&f->loop, &lim);
    cfg_init(&f->cfg);
    pz_free(f->cfg.grpc_addr);
    f->cfg.grpc_addr = pz_strdup("127.0.0.1:0");
    mem_kv = kv_new();
    pz_queue_init(&mem_done);
    uv_prepare_init(&f->loop, &f->prep);
    f->prep.data = f;
    uv_prepare_start(&f->prep, on_prep);
    uv_idle_init(&f->loop, &f->idle);
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, on_tick, 5, 5);
    if (grpc_start(&f->a, &f->loop, &f->cfg, &leader, err, sizeof err) < 0)
        return -1;
    snprintf(f->a_addr, sizeof f->a_addr, "127.0.0.1:%d",
             grpc_local_port(&f->a));
    return 0;
}

static int fx_start_b(struct fx *f, const struct grpc_backend *be)
{
    char err[256];
    if (grpc_start(&f->b, &f->loop, &f->cfg, be, err, sizeof err) < 0)
        return -1;
    f->b_on = true;
    snprintf(f->b_addr, sizeof f->b_addr, "127.0.0.1:%d",
             grpc_local_port(&f->b));
    return 0;
}

/* Drain and close everything; returns uv_loop_close(). */
static int fx_close(struct fx *f)
{
    grpc_drain(&f->a);
    if (f->b_on)
        grpc_drain(&f->b);
    conn_close_outbound();
    for (int i = 0; i < 2000 && conn_count() > 0; i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    grpc_close(&f->a);
    if (f->b_on)
        grpc_close(&f->b);
    kv_free(mem_kv);
    mem_kv = NULL;
    uv_close((uv_handle_t *)&f->prep, NULL);
    uv_close((uv_handle_t *)&f->idle, NULL);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    cfg_free(&f->cfg);
    return uv_loop_close(&f->loop);
}

struct res {
    struct grpc_call call; /* the call */
    bool done;             /* callback ran */
    int status;            /* its status */
    char msg[256];         /* its message */
    struct pz_buf resp;    /* its response message */
    bool has_resp;         /* a message came */
};

static void on_done(struct grpc_call *c)
{
    struct res *r = container_of(c, struct res, call);
    r->done = true;
    r->status = c->status;
    snprintf(r->msg, sizeof r->msg, "%s", c->message);
    r->has_resp = c->has_resp;
    pz_buf_reset(&r->resp);
    pz_buf_append(&r->resp, c->resp.data ? c->resp.data : "", c->resp.len);
    grpc_call_reset(c);
}

static void res_init(struct res *r)
{
    memset(r, 0, sizeof *r);
    grpc_call_init(&r->call);
    pz_buf_init(&r->resp);
}

static void res_free(struct res *r)
{
    grpc_call_reset(&r->call);
    pz_buf_free(&r->resp);
}

/* Start a kv call and wait for it. */
static int kv_call(struct fx *f, struct grpc_client *cl, int kind,
                   const char *key, const char *value, uint64_t timeout_ms,
                   struct res *r)
{
    static const char *const paths[] = {
        [GRPC_KV_GET] = "/kv.KVService/Get",
        [GRPC_KV_SET] = "/kv.KVService/Set",
        [GRPC_KV_DEL] = "/kv.KVService/Delete",
    };
    struct grpc_kv_req q = {.kind = kind,
                            .key = (const uint8_t *)key,
                            .klen = strlen(key),
                            .value = (const uint8_t *)(value ? value : ""),
                            .vlen = value ? strlen(value) : 0};
    struct pz_buf b;
    pz_buf_init(&b);
    grpc_kv_req_encode(&b, &q);
    struct grpc_call_opts o = {.timeout_ms = timeout_ms};
    r->done = false;
    int rv =
        grpc_client_call(cl, &r->call, paths[kind], b.data, b.len, &o, on_done);
    pz_buf_free(&b);
    if (rv < 0)
        return rv;
    run_until(f, &r->done, 5000);
    return r->done ? 0 : PZ_ETIMEDOUT;
}

static bool get_value(struct res *r, const char *want)
{
    const uint8_t *v;
    size_t vl;
    bool found;
    if (r->status != GRPC_OK || !r->has_resp ||
        grpc_kv_get_resp_decode((uint8_t *)r->resp.data, r->resp.len, &v, &vl,
                                &found) < 0)
        return false;
    if (want == NULL)
        return !found && vl == 0;
    return found && vl == strlen(want) && memcmp(v, want, vl) == 0;
}

TEST(unary_calls_share_one_connection)
{
    struct fx f;
    struct res r;
    CHECK_EQ_INT(fx_init(&f), 0);
    res_init(&r);
    struct grpc_client *cl = grpc_client_new(&f.loop, f.a_addr, 1 << 20);
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_SET, "k", "v1", 2000, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_OK);
    bool ok = false;
    CHECK_EQ_INT(
        grpc_kv_ok_resp_decode((uint8_t *)r.resp.data, r.resp.len, &ok), 0);
    CHECK(ok);
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_GET, "k", NULL, 0, &r), 0);
    CHECK(get_value(&r, "v1"));
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_DEL, "k", NULL, 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_OK);
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_GET, "k", NULL, 0, &r), 0);
    CHECK(get_value(&r, NULL));
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_GET, "", NULL, 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_INVALID_ARGUMENT);
    CHECK_EQ_STR(r.msg, "key is required");
    CHECK_EQ_INT(grpc_client_connects(cl), 1);

    /* Many calls in flight at once on the same connection. */
    enum { N = 300 };
    struct res *many = pz_calloc(N, sizeof *many);
    char key[N][16];
    for (int i = 0; i < N; i++) {
        res_init(&many[i]);
        snprintf(key[i], sizeof key[i], "key%d", i);
        struct grpc_kv_req q = {.kind = GRPC_KV_SET,
                                .key = (const uint8_t *)key[i],
                                .klen = strlen(key[i]),
                                .value = (const uint8_t *)key[i],
                                .vlen = strlen(key[i])};
        struct pz_buf b;
        pz_buf_init(&b);
        grpc_kv_req_encode(&b, &q);
        CHECK_EQ_INT(grpc_client_call(cl, &many[i].call, "/kv.KVService/Set",
                                      b.data, b.len, NULL, on_done),
                     0);
        pz_buf_free(&b);
    }
    CHECK_EQ_INT(grpc_client_active(cl), N);
    for (int i = 0; i < N; i++) {
        CHECK(run_until(&f, &many[i].done, 5000));
        CHECK_EQ_INT(many[i].status, GRPC_OK);
        res_free(&many[i]);
    }
    pz_free(many);
    CHECK_EQ_INT(kv_count(mem_kv), N);
    CHECK_EQ_INT(grpc_client_connects(cl), 1);
    CHECK_EQ_INT(grpc_client_active(cl), 0);
    grpc_client_close(cl);
    /* No connection can be opened (an address that is none): said so, not
     * taken for a message too big. */
    struct grpc_client *bad =
        grpc_client_new(&f.loop, "no-such-address", 1 << 20);
    struct grpc_call call;
    grpc_call_init(&call);
    CHECK_EQ_INT(
        grpc_client_call(bad, &call, "/kv.KVService/Get", "", 0, NULL, on_done),
        PZ_EIO);
    grpc_call_reset(&call);
    grpc_client_close(bad);
    res_free(&r);
    CHECK_EQ_INT(fx_close(&f), 0);
}

/* --- a backend whose node is never the leader ---------------------------- */

static const char *fake_leader_addr;
static int fake_reads, fake_proposes;

static int fake_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                        node_req_cb cb)
{
    PZ_UNUSED(req);
    PZ_UNUSED(cmd);
    PZ_UNUSED(len);
    PZ_UNUSED(cb);
    fake_proposes++;
    return PZ_ENOTLEADER;
}

static int fake_read(struct node_req *req, bool stale, node_req_cb cb)
{
    PZ_UNUSED(req);
    PZ_UNUSED(stale);
    PZ_UNUSED(cb);
    fake_reads++;
    return PZ_ENOTLEADER;
}

static void fake_cancel(struct node_req *req)
{
    PZ_UNUSED(req);
}

static const char *fake_leader(void)
{
    return fake_leader_addr;
}

static void fake_status(struct node_status *st)
{
    memset(st, 0, sizeof *st);
    st->id = "b";
    st->role = "follower";
    st->leader = fake_leader_addr ? "a" : "";
}

static const struct grpc_backend follower = {
    .propose = fake_propose,
    .read = fake_read,
    .cancel = fake_cancel,
    .kv = mem_table,
    .leader_grpc_addr = fake_leader,
    .status = fake_status,
};

static void on_flip_leader(uv_timer_t *t)
{
    fake_leader_addr = t->data;
}

TEST(follower_forwards_to_leader)
{
    struct fx f;
    struct res r;
    CHECK_EQ_INT(fx_init(&f), 0);
    CHECK_EQ_INT(fx_start_b(&f, &follower), 0);
    res_init(&r);
    fake_leader_addr = f.a_addr;
    struct grpc_client *cl = grpc_client_new(&f.loop, f.b_addr, 1 << 20);

    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_SET, "fk", "fv", 2000, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_OK);
    CHECK_EQ_INT(fake_proposes, 1);
    const uint8_t *v;
    size_t vl;
    CHECK(kv_get(mem_kv, "fk", 2, &v, &vl)); /* applied on the leader */
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_GET, "fk", NULL, 2000, &r), 0);
    CHECK(get_value(&r, "fv"));
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_DEL, "fk", NULL, 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_OK);
    CHECK(!kv_get(mem_kv, "fk", 2, &v, &vl));
    CHECK_EQ_INT(f.b.stats.forwarded, 3);
    CHECK_EQ_INT(f.a.stats.calls, 3);
    /* One connection from b to the leader, reused. */
    CHECK(f.b.fwd != NULL);
    CHECK_EQ_INT(grpc_client_connects(f.b.fwd), 1);

    /* An error found by the leader is relayed as it is: the value is over
     * the leader's limit but not over b's (b is given a bigger one). */
    f.a.max_value = 3;
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_SET, "fk", "toolong", 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_INVALID_ARGUMENT);
    CHECK(strstr(r.msg, "value too large") != NULL);
    f.a.max_value = f.b.max_value;

    /* Errors found locally are not forwarded. */
    int before = fake_proposes;
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_SET, "", "x", 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_INVALID_ARGUMENT);
    CHECK_EQ_INT(fake_proposes, before);

    /* No leader known. */
    fake_leader_addr = NULL;
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_GET, "fk", NULL, 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
    CHECK_EQ_STR(r.msg, "not the leader and no leader known");

    /* A leader that does not answer: the connect error comes back. */
    uv_tcp_t probe;
    struct sockaddr_in sa;
    uv_tcp_init(&f.loop, &probe);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&probe, (struct sockaddr *)&sa, 0);
    int len = sizeof sa;
    uv_tcp_getsockname(&probe, (struct sockaddr *)&sa, &len);
    char dead[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", ntohs(sa.sin_port));
    uv_close((uv_handle_t *)&probe, NULL); /* port now closed */
    run_for(&f, 20);
    fake_leader_addr = dead;
    /* It never reached the leader: sent again (to the leader known then)
     * for the retry window, then the connect error comes back. */
    f.b.retry_window = 300;
    uint64_t t0 = uv_now(&f.loop);
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_GET, "fk", NULL, 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
    CHECK(strstr(r.msg, "cannot connect") != NULL);
    CHECK(uv_now(&f.loop) - t0 >= 300);
    CHECK(grpc_client_connects(f.b.fwd) >= 3);
    /* The leader moves while the retries go on: the call gets there. */
    f.b.retry_window = 5000;
    uv_timer_t flip;
    uv_timer_init(&f.loop, &flip);
    flip.data = f.a_addr;
    uv_timer_start(&flip, on_flip_leader, 120, 0);
    before = fake_proposes;
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_SET, "moved", "m", 0, &r), 0);
    uv_close((uv_handle_t *)&flip, NULL);
    CHECK_EQ_INT(r.status, GRPC_OK);
    CHECK(kv_get(mem_kv, "moved", 5, &v, &vl)); /* applied on a */
    CHECK(fake_proposes >= before + 2); /* started over on each retry */
    fake_leader_addr = dead;

    /* The leader moves back to a: a new connection to it. */
    fake_leader_addr = f.a_addr;
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_SET, "k2", "v2", 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_OK);
    CHECK_EQ_STR(grpc_client_addr(f.b.fwd), f.a_addr);

    /* A request already forwarded once is not forwarded again. */
    struct grpc_client *cl2 = grpc_client_new(&f.loop, f.b_addr, 1 << 20);
    static const char *const md[] = {"pyazdb-forwarded", "1", NULL};
    struct grpc_call_opts o = {.metadata = md};
    struct pz_buf b;
    pz_buf_init(&b);
    struct grpc_kv_req q = {
        .kind = GRPC_KV_GET, .key = (const uint8_t *)"k2", .klen = 2};
    grpc_kv_req_encode(&b, &q);
    r.done = false;
    CHECK_EQ_INT(grpc_client_call(cl2, &r.call, "/kv.KVService/Get", b.data,
                                  b.len, &o, on_done),
                 0);
    pz_buf_free(&b);
    CHECK(run_until(&f, &r.done, 5000));
    CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);

    grpc_client_close(cl);
    grpc_client_close(cl2);
    res_free(&r);
    fake_leader_addr = NULL;
    CHECK_EQ_INT(fx_close(&f), 0);
}

/* --- a node that never answers ---------------------------------------------
 */

static struct node_req *hung;
static int hung_cancels;

static int hang_read(struct node_req *req, bool stale, node_req_cb cb)
{
    PZ_UNUSED(stale);
    PZ_UNUSED(cb);
    hung = req;
    return 0;
}

static int hang_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                        node_req_cb cb)
{
    PZ_UNUSED(cmd);
    PZ_UNUSED(len);
    return hang_read(req, false, cb);
}

static void hang_cancel(struct node_req *req)
{
    if (req == hung) {
        hung = NULL;
        hung_cancels++;
    }
}

static const struct grpc_backend hanging = {
    .propose = hang_propose,
    .read = hang_read,
    .cancel = hang_cancel,
    .kv = mem_table,
    .leader_grpc_addr = no_leader,
    .status = leader_status,
};

TEST(server_deadline_cancels_node_request)
{
    struct fx f;
    struct res r;
    CHECK_EQ_INT(fx_init(&f), 0);
    CHECK_EQ_INT(fx_start_b(&f, &hanging), 0);
    res_init(&r);
    struct grpc_client *cl = grpc_client_new(&f.loop, f.b_addr, 1 << 20);
    /* grpc-timeout sent by hand: the client keeps no deadline of its own,
     * so the status must come from the server. */
    static const char *const md[] = {"grpc-timeout", "150m", NULL};
    struct grpc_call_opts o = {.metadata = md};
    struct pz_buf b;
    pz_buf_init(&b);
    struct grpc_kv_req q = {.kind = GRPC_KV_SET,
                            .key = (const uint8_t *)"k",
                            .klen = 1,
                            .value = (const uint8_t *)"v",
                            .vlen = 1};
    grpc_kv_req_encode(&b, &q);
    hung = NULL;
    hung_cancels = 0;
    uint64_t t0 = uv_now(&f.loop);
    CHECK_EQ_INT(grpc_client_call(cl, &r.call, "/kv.KVService/Set", b.data,
                                  b.len, &o, on_done),
                 0);
    pz_buf_free(&b);
    CHECK(run_until(&f, &r.done, 5000));
    uint64_t took = uv_now(&f.loop) - t0;
    CHECK_EQ_INT(r.status, GRPC_DEADLINE_EXCEEDED);
    CHECK(took >= 140 && took < 2000);
    CHECK_EQ_INT(hung_cancels, 1);
    CHECK(hung == NULL);
    CHECK_EQ_INT(f.b.stats.deadlines, 1);
    CHECK_EQ_STR(r.msg, "deadline exceeded (150 ms)");

    /* With the client's own deadline as well, whichever fires first. */
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_GET, "k", NULL, 100, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_DEADLINE_EXCEEDED);
    for (int i = 0; i < 100 && hung_cancels < 2; i++)
        uv_run(&f.loop, UV_RUN_ONCE);
    CHECK_EQ_INT(hung_cancels, 2);
    grpc_client_close(cl);
    res_free(&r);
    CHECK_EQ_INT(fx_close(&f), 0);
}

TEST(client_cancel_resets_stream)
{
    struct fx f;
    struct res r;
    CHECK_EQ_INT(fx_init(&f), 0);
    CHECK_EQ_INT(fx_start_b(&f, &hanging), 0);
    res_init(&r);
    hung = NULL;
    hung_cancels = 0;
    struct grpc_client *cl = grpc_client_new(&f.loop, f.b_addr, 1 << 20);
    struct pz_buf b;
    pz_buf_init(&b);
    struct grpc_kv_req q = {
        .kind = GRPC_KV_GET, .key = (const uint8_t *)"k", .klen = 1};
    grpc_kv_req_encode(&b, &q);
    CHECK_EQ_INT(grpc_client_call(cl, &r.call, "/kv.KVService/Get", b.data,
                                  b.len, NULL, on_done),
                 0);
    pz_buf_free(&b);
    for (int i = 0; i < 500 && hung == NULL; i++)
        uv_run(&f.loop, UV_RUN_ONCE);
    CHECK(hung != NULL);
    CHECK_EQ_INT(f.b.stats.streams_open, 1);
    grpc_client_cancel(&r.call);
    grpc_client_cancel(&r.call); /* idempotent */
    CHECK_EQ_INT(grpc_client_active(cl), 0);
    for (int i = 0; i < 500 && hung_cancels == 0; i++)
        uv_run(&f.loop, UV_RUN_ONCE);
    CHECK_EQ_INT(hung_cancels, 1);
    run_for(&f, 50);
    CHECK(!r.done); /* no callback after cancel */
    CHECK_EQ_INT(f.b.stats.streams_open, 0);
    grpc_client_close(cl);
    res_free(&r);
    CHECK_EQ_INT(fx_close(&f), 0);
}

/* A listener that accepts and never answers. */
static void silent_data(struct conn *c, const char *data, size_t len)
{
    PZ_UNUSED(c);
    PZ_UNUSED(data);
    PZ_UNUSED(len);
}

static const struct conn_ops silent_ops = {.on_data = silent_data};

TEST(client_deadline_and_lost_connection)
{
    struct fx f;
    struct res r, r2;
    char err[128];
    CHECK_EQ_INT(fx_init(&f), 0);
    res_init(&r);
    res_init(&r2);
    struct conn_listener silent;
    CHECK_EQ_INT(conn_listen(&silent, "127.0.0.1:0", &silent_ops, "silent", 10,
                             err, sizeof err),
                 0);
    struct sockaddr_in sa;
    int len = sizeof sa;
    uv_tcp_getsockname(&silent.tcp, (struct sockaddr *)&sa, &len);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(sa.sin_port));
    struct grpc_client *cl = grpc_client_new(&f.loop, addr, 1 << 20);

    /* Local deadline: the server never answers. */
    uint64_t t0 = uv_now(&f.loop);
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_GET, "k", NULL, 100, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_DEADLINE_EXCEEDED);
    CHECK(uv_now(&f.loop) - t0 >= 95);

    /* The connection goes away with a call in flight. */
    struct pz_buf b;
    pz_buf_init(&b);
    struct grpc_kv_req q = {
        .kind = GRPC_KV_GET, .key = (const uint8_t *)"k", .klen = 1};
    grpc_kv_req_encode(&b, &q);
    CHECK_EQ_INT(grpc_client_call(cl, &r2.call, "/kv.KVService/Get", b.data,
                                  b.len, NULL, on_done),
                 0);
    pz_buf_free(&b);
    run_for(&f, 30);
    conn_listener_close_all(&silent);
    CHECK(run_until(&f, &r2.done, 2000));
    CHECK_EQ_INT(r2.status, GRPC_UNAVAILABLE);
    conn_listener_stop(&silent, NULL);

    /* A closed client refuses new calls. */
    grpc_client_close(cl);
    r.done = false;
    CHECK_EQ_INT(grpc_client_call(cl, &r.call, "/kv.KVService/Get", "", 0, NULL,
                                  on_done),
                 PZ_ESHUTDOWN);
    res_free(&r);
    res_free(&r2);
    CHECK_EQ_INT(fx_close(&f), 0);
}

TEST(abort_fails_calls_in_flight)
{
    struct fx f;
    struct res r;
    CHECK_EQ_INT(fx_init(&f), 0);
    CHECK_EQ_INT(fx_start_b(&f, &hanging), 0);
    res_init(&r);
    struct grpc_client *cl = grpc_client_new(&f.loop, f.b_addr, 1 << 20);
    CHECK_EQ_INT(grpc_client_call(cl, &r.call, "/kv.KVService/Get", "\x0a\x01k",
                                  3, NULL, on_done),
                 0);
    run_for(&f, 30);
    grpc_client_abort(cl);
    CHECK(r.done);
    CHECK_EQ_INT(r.status, GRPC_CANCELLED);
    res_free(&r);
    CHECK_EQ_INT(fx_close(&f), 0);
}

/* --- a node that fails with a given code ------------------------------- */

static int fail_code;   /* what the node answers */
static bool fail_async; /* through the callback instead of at once */
static struct node_req *fail_req;
static node_req_cb fail_cb;
static uv_timer_t fail_timer;

static void on_fail_timer(uv_timer_t *t)
{
    PZ_UNUSED(t);
    if (fail_req) {
        struct node_req *r = fail_req;
        fail_req = NULL;
        fail_cb(r, fail_code);
    }
}

static int fail_read(struct node_req *req, bool stale, node_req_cb cb)
{
    PZ_UNUSED(stale);
    if (!fail_async)
        return fail_code;
    fail_req = req;
    fail_cb = cb;
    uv_timer_start(&fail_timer, on_fail_timer, 1, 0);
    return 0;
}

static int fail_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                        node_req_cb cb)
{
    PZ_UNUSED(cmd);
    PZ_UNUSED(len);
    return fail_read(req, false, cb);
}

static void fail_cancel(struct node_req *req)
{
    if (req == fail_req)
        fail_req = NULL;
}

static const struct grpc_backend failing = {
    .propose = fail_propose,
    .read = fail_read,
    .cancel = fail_cancel,
    .kv = mem_table,
    .leader_grpc_addr = no_leader,
    .status = leader_status,
};

TEST(node_errors_map_to_statuses)
{
    static const struct {
        int code;        /* node answer */
        int kind;        /* call */
        int status;      /* gRPC status expected */
        const char *msg; /* part of the message */
    } cases[] = {
        {PZ_ENOLEADER, GRPC_KV_GET, GRPC_UNAVAILABLE, "no leader known"},
        {PZ_ENOLEADER, GRPC_KV_SET, GRPC_UNAVAILABLE, "no leader known"},
        {PZ_ENOTLEADER, GRPC_KV_SET, GRPC_UNAVAILABLE,
         "gRPC address is not known yet"},
        {PZ_ESHUTDOWN, GRPC_KV_DEL, GRPC_UNAVAILABLE, "shutting down"},
        {PZ_ETIMEDOUT, GRPC_KV_SET, GRPC_UNAVAILABLE, "timed out"},
        {PZ_ELEADERCHANGE, GRPC_KV_SET, GRPC_INTERNAL, "replication failed"},
        {PZ_ELEADERCHANGE, GRPC_KV_GET, GRPC_UNAVAILABLE, "leadership changed"},
        {PZ_EIO, GRPC_KV_SET, GRPC_INTERNAL, "replication failed"},
        {PZ_EIO, GRPC_KV_DEL, GRPC_INTERNAL, "replication failed"},
        {PZ_EOVERLOAD, GRPC_KV_SET, GRPC_UNAVAILABLE,
         "too many writes waiting to commit"},
    };
    struct fx f;
    struct res r;
    CHECK_EQ_INT(fx_init(&f), 0);
    CHECK_EQ_INT(fx_start_b(&f, &failing), 0);
    uv_timer_init(&f.loop, &fail_timer);
    res_init(&r);
    struct grpc_client *cl = grpc_client_new(&f.loop, f.b_addr, 1 << 20);
    for (int async = 0; async < 2; async++) {
        fail_async = async;
        for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
            fail_code = cases[i].code;
            CHECK_EQ_INT(kv_call(&f, cl, cases[i].kind, "k", "v", 0, &r), 0);
            if (r.status != cases[i].status ||
                strstr(r.msg, cases[i].msg) == NULL)
                fprintf(stderr, "    case %zu async %d: %s %s\n", i, async,
                        grpc_status_name(r.status), r.msg);
            CHECK_EQ_INT(r.status, cases[i].status);
            CHECK(strstr(r.msg, cases[i].msg) != NULL);
        }
    }
    uv_close((uv_handle_t *)&fail_timer, NULL);
    grpc_client_close(cl);
    res_free(&r);
    CHECK_EQ_INT(fx_close(&f), 0);
}

/* --- a node with no leader known, until a timer elects one ---------------
 * wait_leader parks the request while no leader is known; the timer
 * "elects" (a leader at a's address for the follower, this node itself
 * for the candidate) and completes it. */

static struct node_req *parked; /* the request waiting for a leader */
static node_req_cb parked_cb;
static bool cand_leads; /* the candidate has won */
static int waits;       /* wait_leader calls */

static void park_wait_leader(struct node_req *req, node_req_cb cb)
{
    waits++;
    if (fake_leader_addr || cand_leads) {
        mem_complete(req, cb);
        return;
    }
    parked = req;
    parked_cb = cb;
}

static void park_cancel(struct node_req *req)
{
    if (parked == req)
        parked = NULL;
    mem_cancel(req);
}

static void on_elected(uv_timer_t *t)
{
    fake_leader_addr = t->data; /* NULL: the candidate itself */
    cand_leads = t->data == NULL;
    if (parked) {
        struct node_req *r = parked;
        parked = NULL;
        mem_complete(r, parked_cb);
    }
}

static int cand_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                        node_req_cb cb)
{
    if (!cand_leads)
        return PZ_ENOLEADER;
    return mem_propose(req, cmd, len, cb);
}

static void cand_status(struct node_status *st)
{
    memset(st, 0, sizeof *st);
    st->id = "b";
    st->role = cand_leads ? "leader" : "candidate";
    st->leader = cand_leads ? "b" : "";
}

/* A follower that knows no leader: its writes are not the leader's
 * (PZ_ENOTLEADER, as a node that heard of one but not its address). */
static const struct grpc_backend leaderless_follower = {
    .propose = fake_propose,
    .read = fake_read,
    .cancel = park_cancel,
    .kv = mem_table,
    .leader_grpc_addr = fake_leader,
    .status = fake_status,
    .wait_leader = park_wait_leader,
};

/* A candidate: no leader known (PZ_ENOLEADER) until it wins. */
static const struct grpc_backend candidate = {
    .propose = cand_propose,
    .read = mem_read,
    .cancel = park_cancel,
    .kv = mem_table,
    .leader_grpc_addr = no_leader,
    .status = cand_status,
    .wait_leader = park_wait_leader,
};

TEST(relayed_call_waits_for_a_leader)
{
    struct fx f;
    struct res r;
    uv_timer_t elect;
    CHECK_EQ_INT(fx_init(&f), 0);
    fake_leader_addr = NULL;
    parked = NULL;
    waits = 0;
    CHECK_EQ_INT(fx_start_b(&f, &leaderless_follower), 0);
    res_init(&r);
    struct grpc_client *cl = grpc_client_new(&f.loop, f.b_addr, 1 << 20);
    /* No leader to forward to: the call waits for one, then goes to it
     * (before, UNAVAILABLE "not the leader and no leader known" at once). */
    uv_timer_init(&f.loop, &elect);
    elect.data = f.a_addr;
    uv_timer_start(&elect, on_elected, 200, 0);
    uint64_t t0 = uv_now(&f.loop);
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_SET, "w", "1", 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_OK);
    CHECK(uv_now(&f.loop) - t0 >= 150);
    CHECK_EQ_INT(waits, 1);
    const uint8_t *v;
    size_t vl;
    CHECK(kv_get(mem_kv, "w", 1, &v, &vl)); /* applied on the leader */
    CHECK_EQ_INT(f.b.stats.forwarded, 1);
    /* A node that says a leader is known yet gives no address: two waits
     * (each over at once), then the error, not waits for ever. */
    fake_leader_addr = "";
    CHECK_EQ_INT(kv_call(&f, cl, GRPC_KV_SET, "w", "2", 0, &r), 0);
    CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
    CHECK_EQ_STR(r.msg, "the leader's (a) gRPC address is not known yet");
    CHECK_EQ_INT(waits, 3);
    uv_close((uv_handle_t *)&elect, NULL);
    grpc_client_close(cl);
    res_free(&r);
    fake_leader_addr = NULL;
    CHECK_EQ_INT(fx_close(&f), 0);
}

TEST(forwarded_call_waits_for_an_election_here)
{
    struct fx f;
    struct res r;
    uv_timer_t elect;
    CHECK_EQ_INT(fx_init(&f), 0);
    cand_leads = false;
    parked = NULL;
    waits = 0;
    CHECK_EQ_INT(fx_start_b(&f, &candidate), 0);
    res_init(&r);
    /* A write another node forwarded here (it took us for the leader)
     * while no node leads: it waits for the election and is proposed
     * here once this node wins (before: UNAVAILABLE "no leader known" at
     * once, where an HTTP request waited). */
    struct grpc_client *cl = grpc_client_new(&f.loop, f.b_addr, 1 << 20);
    static const char *const md[] = {"pyazdb-forwarded", "1", NULL};
    struct grpc_call_opts o = {.metadata = md};
    struct grpc_kv_req q = {.kind = GRPC_KV_SET,
                            .key = (const uint8_t *)"h",
                            .klen = 1,
                            .value = (const uint8_t *)"1",
                            .vlen = 1};
    struct pz_buf b;
    pz_buf_init(&b);
    grpc_kv_req_encode(&b, &q);
    uv_timer_init(&f.loop, &elect);
    elect.data = NULL;
    uv_timer_start(&elect, on_elected, 200, 0);
    r.done = false;
    CHECK_EQ_INT(grpc_client_call(cl, &r.call, "/kv.KVService/Set", b.data,
                                  b.len, &o, on_done),
                 0);
    pz_buf_free(&b);
    CHECK(run_until(&f, &r.done, 5000));
    CHECK_EQ_INT(r.status, GRPC_OK);
    CHECK_EQ_INT(waits, 1);
    const uint8_t *v;
    size_t vl;
    CHECK(kv_get(mem_kv, "h", 1, &v, &vl));
    CHECK_EQ_INT(f.b.stats.forwarded, 0);
    uv_close((uv_handle_t *)&elect, NULL);
    grpc_client_close(cl);
    res_free(&r);
    cand_leads = false;
    CHECK_EQ_INT(fx_close(&f), 0);
}

static const struct test_case cases[] = {
    TEST_ENTRY(unary_calls_share_one_connection),
    TEST_ENTRY(follower_forwards_to_leader),
    TEST_ENTRY(relayed_call_waits_for_a_leader),
    TEST_ENTRY(forwarded_call_waits_for_an_election_here),
    TEST_ENTRY(server_deadline_cancels_node_request),
    TEST_ENTRY(client_cancel_resets_stream),
    TEST_ENTRY(client_deadline_and_lost_connection),
    TEST_ENTRY(abort_fails_calls_in_flight),
    TEST_ENTRY(node_errors_map_to_statuses),
    TEST_END,
};

const struct test_suite suite_grpc = {"grpc", cases};
