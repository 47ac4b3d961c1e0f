/* test_httpd.c - the HTTP/1.1 server toolkit (httpd.c) and client
 * (httpc.c) on a real loop: a small protocol on 127.0.0.1.
 *
 * Server, against raw sockets: pipelined requests in order, answers held
 * and given later, HEAD, Connection: close, 401 with its challenge, the
 * bearer check, the request deadlines, the partial-input budget, refusal
 * at max_clients, draining, and streamed replies paced by the reader. Client, against the server: answers with
 * their headers, in order; a request sent once (max_attempts 1) fails
 * with the connection that is lost or stuck, and is not sent again.
 * (mandi's tests drive the client further: resends, malformed and
 * oversized answers, cancel, free.) Every wait has a deadline. */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "conn.h"
#include "httpc.h"
#include "httpd.h"
#include "test.h"

static uv_loop_t loop;
static uv_prepare_t prep;
static uv_timer_t ticker; /* wakes UV_RUN_ONCE up, runs conn_cron */
static uv_timer_t later;  /* answers held requests */
static struct httpd srv;
static int port;
static struct httpd_conn *held; /* the request /held is waiting */
static int closes;              /* on_close calls */

static void on_prep(uv_prepare_t *h)
{
    PZ_UNUSED(h);
    conn_before_sleep();
}

static void on_tick(uv_timer_t *h)
{
    PZ_UNUSED(h);
    conn_cron();
}

static void on_later(uv_timer_t *t)
{
    PZ_UNUSED(t);
    struct httpd_conn *hc = held;
    held = NULL;
    if (hc)
        httpd_text(hc, 200, "later", NULL);
}

/* /stream: STREAM_TOTAL bytes, byte i being i % 251, in STREAM_PIECE
 * pieces as on_stream asks for them. */
#define STREAM_TOTAL (16u << 20)
#define STREAM_PIECE (100u * 1024)
static uint64_t stream_sent;    /* body bytes handed to httpd */
static size_t stream_max_pend;  /* most output waiting at an on_stream */

static void on_stream(struct httpd_conn *hc)
{
    static uint8_t piece[STREAM_PIECE];
    size_t pend = conn_output_pending(hc->c);
    stream_max_pend = PZ_MAX(stream_max_pend, pend);
    size_t n = (size_t)PZ_MIN((uint64_t)STREAM_PIECE, hc->stream_left);
    for (size_t i = 0; i < n; i++)
        piece[i] = (uint8_t)((stream_sent + i) % 251);
    stream_sent += n;
    httpd_stream_write(hc, piece, n);
}

#define BIG_ANSWER (4u << 20)
#define HUGE_ANSWER (16u << 20)
#define MID_ANSWER (40u << 10) /* under the buffer httpc keeps */

/* Routes: /big and /huge are BIG_ANSWER and HUGE_ANSWER bytes, /held answers 50
 * ms later, /stream streams (above), /auth wants token "s3cret", /close closes
 * after its answer, /cut closes a quarter into a BIG_ANSWER, /empty is 204,
 * anything else echoes its path. */
static size_t turn_in_at; /* conn_in_total() when /turn was dispatched */

static void on_request(struct httpd_conn *hc)
{
    const struct http_req *req = &hc->p.req;
    char path[256];
    snprintf(path, sizeof path, "%.*s", (int)req->url.len,
             req->url.data ? req->url.data : "");
    if (strcmp(path, "/held") == 0) {
        httpd_hold(hc);
        held = hc;
        uv_timer_start(&later, on_later, 50, 0);
    } else if (strcmp(path, "/auth") == 0) {
        if (!httpd_bearer_ok(req, "s3cret"))
            httpd_text(hc, 401, "unauthorized", NULL);
        else
            httpd_text(hc, 200, "welcome", NULL);
    } else if (strcmp(path, "/close") == 0) {
        httpd_close_after(hc);
        httpd_text(hc, 200, "bye", NULL);
    } else if (strcmp(path, "/drop") == 0) {
        httpd_hold(hc); /* and lose the connection */
        conn_close(hc->c);
    } else if (strcmp(path, "/mid") == 0) {
        char body[MID_ANSWER];
        memset(body, 'm', sizeof body);
        struct httpd_reply r = {.status = 200,
                                .ctype = "text/plain",
                                .body = body,
                                .blen = sizeof body};
        httpd_reply(hc, &r);
    } else if (strcmp(path, "/cut") == 0) {
        /* BIG_ANSWER announced, a quarter of it sent, then the
         * connection closes. */
        httpd_hold(hc);
        char head[128];
        int hn = snprintf(head, sizeof head,
                          "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n",
                          BIG_ANSWER);
        char *body = pz_malloc(BIG_ANSWER / 4);
        memset(body, 'b', BIG_ANSWER / 4);
        conn_write(hc->c, head, (size_t)hn);
        conn_write(hc->c, body, BIG_ANSWER / 4);
        pz_free(body);
        conn_close_after_flush(hc->c);
    } else if (strcmp(path, "/stuck") == 0) {
        httpd_hold(hc); /* never answered */
    } else if (strcmp(path, "/405") == 0) {
        httpd_text(hc, 405, "no", "GET, PUT");
    } else if (strcmp(path, "/stream") == 0) {
        httpd_hold(hc);
        httpd_stream_begin(hc, 200, "application/octet-stream",
                           STREAM_TOTAL);
    } else if (strcmp(path, "/big") == 0 || strcmp(path, "/huge") == 0) {
        /* One answer of BIG_ANSWER (HUGE_ANSWER) bytes, under the hard
         * limit. */
        size_t n = path[1] == 'b' ? BIG_ANSWER : HUGE_ANSWER;
        char *body = pz_malloc(n);
        memset(body, 'b', n);
        struct httpd_reply r = {.status = 200, .ctype = "text/plain",
                                .body = body, .blen = n};
        httpd_reply(hc, &r);
        pz_free(body);
    } else if (strcmp(path, "/turn") == 0) {
        turn_in_at = conn_in_total();
        httpd_text(hc, 200, path, NULL);
    } else if (strcmp(path, "/empty") == 0) {
        struct httpd_reply r = {.status = 204};
        httpd_reply(hc, &r);
    } else {
        httpd_text(hc, 200, path, NULL);
    }
}

static void on_close(struct httpd_conn *hc)
{
    if (held == hc)
        held = NULL;
    closes++;
}

static const struct httpd_ops ops = {.on_request = on_request,
                                     .on_close = on_close,
                                     .on_stream = on_stream};

static size_t out_budget; /* max_pending_output of the next world_init */
static size_t turn_share; /* turn_input of the next world_init */

static bool world_init(size_t budget, uint64_t header_ms, size_t max_clients)
{
    signal(SIGPIPE, SIG_IGN);
    pz_assert(uv_loop_init(&loop) == 0);
    struct conn_limits lim = {.high_water = 1u << 20,
                              .hard_limit = 64u << 20,
                              .max_partial_input = budget,
                              .max_pending_output = out_budget,
                              .turn_input = turn_share};
    conn_setup(&loop, &lim);
    uv_prepare_init(&loop, &prep);
    uv_prepare_start(&prep, on_prep);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, on_tick, 5, 5);
    uv_timer_init(&loop, &later);
    held = NULL;
    closes = 0;
    memset(&srv, 0, sizeof srv);
    struct httpd_opts o = {
        .limits = {.max_header_bytes = 4096,
                   .max_headers = 20,
                   .max_body = 1 << 20},
        .header_timeout_ms = header_ms,
        .body_timeout_ms = header_ms,
        .max_clients = max_clients,
        .realm = "test",
    };
    char err[256];
    if (httpd_listen(&srv, "127.0.0.1:0", &ops, &o, "test", NULL, err,
                     sizeof err) < 0) {
        fprintf(stderr, "    httpd_listen: %s\n", err);
        return false;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getsockname(&srv.ls.tcp, (struct sockaddr *)&ss, &len) != 0)
        return false;
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return true;
}

static int world_close(void)
{
    httpd_drain(&srv);
    conn_listener_close_all(&srv.ls);
    for (int i = 0; i < 20; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    uv_close((uv_handle_t *)&prep, NULL);
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_close((uv_handle_t *)&later, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    return uv_loop_close(&loop) == 0 && conn_count() == 0 ? 0 : -1;
}

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        return -1;
    return fd;
}

static bool send_all(int fd, const char *s)
{
    size_t n = strlen(s);
    return send(fd, s, n, 0) == (ssize_t)n;
}

/* Run the loop and read what fd receives until it holds `want` (or, with
 * want NULL, until the server closes), at most ms. Returns what was read
 * (static, NUL-terminated); *closed says whether the server closed. */
static const char *read_until(int fd, const char *want, uint64_t ms,
                              bool *closed)
{
    static char buf[65536];
    size_t n = 0;
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + ms;
    *closed = false;
    buf[0] = '\0';
    while (uv_now(&loop) < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        ssize_t got = recv(fd, buf + n, sizeof buf - 1 - n, MSG_DONTWAIT);
        if (got > 0) {
            n += (size_t)got;
            buf[n] = '\0';
            if (want && strstr(buf, want))
                break;
        } else if (got == 0) {
            *closed = true;
            break;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            *closed = true;
            break;
        }
        usleep(1000);
        uv_update_time(&loop);
    }
    return buf;
}

static void run_for(uint64_t ms)
{
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + ms;
    while (uv_now(&loop) < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
        uv_update_time(&loop);
    }
}

static bool starts(const char *s, const char *prefix)
{
    bool ok = strncmp(s, prefix, strlen(prefix)) == 0;
    if (!ok)
        fprintf(stderr, "    got: %s\n", s);
    return ok;
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

TEST(pipelined_in_order_with_a_held_answer)
{
    CHECK(world_init(0, 0, 10));
    int fd = dial();
    CHECK(fd >= 0);
    CHECK(send_all(fd, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /held HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                       "HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /empty HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /d HTTP/1.1\r\nConnection: close\r\n\r\n"));
    bool closed;
    const char *out = read_until(fd, NULL, 3000, &closed);
    CHECK(closed);
    const char *a = strstr(out, "\r\n\r\n/a\n");
    const char *l = strstr(out, "\r\n\r\nlater\n");
    const char *b = strstr(out, "\r\n\r\n/b\n");
    const char *e = strstr(out, "HTTP/1.1 204 No Content\r\n\r\n");
    const char *d = strstr(out, "\r\n\r\n/d\n");
    CHECK(a && l && b && e && d);
    CHECK(a < l && l < b && b < e && e < d);
    /* HEAD: the length of the body it would have had, no body. */
    CHECK(strstr(out, "Content-Length: 3\r\n\r\nHTTP/1.1 204") != NULL);
    CHECK_EQ_INT(count(out, "HTTP/1.1 200 OK"), 5);
    CHECK_EQ_INT(count(out, "Connection: close"), 1);
    close(fd);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(close_after_and_unauthorized)
{
    CHECK(world_init(0, 0, 10));
    int fd = dial();
    CHECK(send_all(fd, "GET /auth HTTP/1.1\r\nAuthorization: Bearer no\r\n\r\n"
                       "GET /auth HTTP/1.1\r\n"
                       "Authorization: bEaReR   s3cret \r\n\r\n"
                       "GET /close HTTP/1.1\r\n\r\n"
                       "GET /never HTTP/1.1\r\n\r\n"));
    bool closed;
    const char *out = read_until(fd, NULL, 3000, &closed);
    CHECK(closed);
    CHECK(starts(out, "HTTP/1.1 401 Unauthorized\r\n"));
    CHECK(strstr(out, "WWW-Authenticate: Bearer realm=\"test\"\r\n") != NULL);
    CHECK(strstr(out, "\r\n\r\nwelcome\n") != NULL);
    CHECK(strstr(out, "Connection: close\r\n\r\nbye\n") != NULL);
    CHECK(strstr(out, "/never") == NULL);
    close(fd);
    CHECK_EQ_INT(world_close(), 0);
}

/* httpd_bearer_ok on a parsed request with this Authorization value. */
static bool bearer(const char *value, const char *token)
{
    struct http_limits lim = {4096, 20, 1024};
    struct http_parser p;
    char req[512];
    size_t used;
    if (value)
        snprintf(req, sizeof req, "GET / HTTP/1.1\r\nAuthorization: %s\r\n\r\n",
                 value);
    else
        snprintf(req, sizeof req, "GET / HTTP/1.1\r\n\r\n");
    http_parser_init(&p, &lim);
    pz_assert(http_parser_feed(&p, req, strlen(req), &used) ==
              HTTP_PARSE_REQUEST);
    bool ok = httpd_bearer_ok(&p.req, token);
    http_parser_free(&p);
    return ok;
}

TEST(bearer_check)
{
    CHECK(bearer("Bearer tok", "tok"));
    CHECK(bearer("bearer tok", "tok")); /* RFC 7235: any case */
    CHECK(bearer("BEARER\ttok", "tok"));
    CHECK(bearer("  Bearer   tok  ", "tok"));
    CHECK(!bearer("Bearer tok2", "tok"));
    CHECK(!bearer("Bearer to", "tok"));
    CHECK(!bearer("Bearer", "tok"));
    CHECK(!bearer("Bearertok", "tok"));
    CHECK(!bearer("Basic tok", "tok"));
    CHECK(!bearer("tok", "tok"));
    CHECK(!bearer("Bearer t ok", "tok"));
    CHECK(!bearer(NULL, "tok"));
    /* No token set: open. */
    CHECK(bearer(NULL, ""));
    CHECK(bearer("Bearer x", NULL));
}

TEST(header_deadline_cannot_be_trickled)
{
    CHECK(world_init(0, 200, 10));
    int fd = dial();
    CHECK(send_all(fd, "GET /slow HTTP/1.1\r\n"));
    bool closed;
    /* Trickle a header byte now and then: the deadline does not move. */
    for (int i = 0; i < 3; i++) {
        read_until(fd, "HTTP/", 40, &closed);
        CHECK(!closed);
        CHECK(send_all(fd, "X"));
    }
    const char *out = read_until(fd, NULL, 2000, &closed);
    CHECK(closed);
    CHECK(starts(out, "HTTP/1.1 408 Request Timeout\r\n"));
    CHECK(strstr(out, "Request headers not received in time\n") != NULL);
    close(fd);
    /* A complete request, then silence: no deadline runs. */
    fd = dial();
    CHECK(send_all(fd, "GET /ok HTTP/1.1\r\n\r\n"));
    out = read_until(fd, "/ok\n", 2000, &closed);
    CHECK(strstr(out, "/ok\n") != NULL);
    read_until(fd, "HTTP/", 400, &closed);
    CHECK(!closed);
    close(fd);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(partial_input_budget)
{
    CHECK(world_init(8192, 0, 10));
    int a = dial(), b = dial();
    CHECK(a >= 0 && b >= 0);
    /* a holds 3000 bytes of a body; b's 5500 more would pass 8192. */
    char body[5501];
    memset(body, 'x', 3000);
    body[3000] = '\0';
    CHECK(send_all(a, "POST /a HTTP/1.1\r\nContent-Length: 5000\r\n\r\n"));
    CHECK(send_all(a, body));
    bool closed;
    read_until(a, "HTTP/", 200, &closed);
    CHECK(!closed);
    CHECK(conn_in_total() >= 3000);
    memset(body, 'z', 5500);
    body[5500] = '\0';
    CHECK(send_all(b, "POST /b HTTP/1.1\r\nContent-Length: 6000\r\n\r\n"));
    CHECK(send_all(b, body));
    const char *out = read_until(b, NULL, 2000, &closed);
    CHECK(closed);
    CHECK(starts(out, "HTTP/1.1 503 "));
    CHECK(strstr(out, "Server busy") != NULL);
    /* a goes on, and its bytes go back to the budget once served. */
    memset(body, 'y', 2000);
    body[2000] = '\0';
    CHECK(send_all(a, body));
    out = read_until(a, "/a\n", 2000, &closed);
    CHECK(strstr(out, "HTTP/1.1 200 OK") != NULL);
    CHECK_EQ_INT(conn_in_total(), 0);
    close(a);
    close(b);
    CHECK_EQ_INT(world_close(), 0);
}

/* A client sending as fast as it can takes a share of each loop turn's
 * input: another client's request is served after one share of the
 * first one's bytes, not after all that the socket holds. */
TEST(one_client_takes_a_share_of_each_turn)
{
    turn_share = 64 * 1024;
    bool ok = world_init(8u << 20, 0, 10);
    turn_share = 0;
    CHECK(ok);
    /* room for some 200 kB in each accepted socket (listener's buffer
     * sizes are inherited) before the server reads any */
    uv_os_fd_t lfd;
    int rcv = 1 << 20;
    CHECK(uv_fileno((uv_handle_t *)&srv.ls.tcp, &lfd) == 0);
    CHECK(setsockopt(lfd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv) == 0);
    int a = dial(), b = dial();
    CHECK(a >= 0 && b >= 0);
    run_for(20); /* both accepted */
    CHECK(send_all(a, "POST /a HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"));
    static char chunk[16384];
    memset(chunk, 'x', sizeof chunk);
    size_t sent = 0;
    while (sent < 900000) {
        ssize_t n = send(a, chunk, sizeof chunk, MSG_DONTWAIT);
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    CHECK(sent > 200000);
    CHECK(send_all(b, "GET /turn HTTP/1.1\r\n\r\n"));
    usleep(50000); /* all of it in the server's sockets */
    bool closed;
    const char *out = read_until(b, "/turn\n", 2000, &closed);
    CHECK(strstr(out, "HTTP/1.1 200 OK") != NULL);
    /* a's bytes taken before b's turn: one share of 64 KiB (a few more
     * if b's request came in a turn later), not the 200 kB waiting */
    if (turn_in_at > 140000)
        fprintf(stderr, "    %zu bytes of a taken before b's turn\n",
                turn_in_at);
    CHECK(turn_in_at <= 140000);
    close(a);
    close(b);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(refused_at_max_clients)
{
    CHECK(world_init(0, 0, 1));
    int a = dial();
    bool closed;
    CHECK(send_all(a, "GET /a HTTP/1.1\r\n\r\n"));
    read_until(a, "/a\n", 2000, &closed);
    int b = dial();
    const char *out = read_until(b, NULL, 2000, &closed);
    CHECK(closed);
    CHECK(starts(out, "HTTP/1.1 503 Service Unavailable\r\n"));
    CHECK(strstr(out, "Content-Length: 17\r\nConnection: close\r\n\r\n"
                      "Too many clients\n") != NULL);
    close(a);
    close(b);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(drain_finishes_held_requests)
{
    CHECK(world_init(0, 0, 10));
    int idle = dial(), busy = dial();
    bool closed;
    CHECK(send_all(idle, "GET /a HTTP/1.1\r\n\r\n"));
    read_until(idle, "/a\n", 2000, &closed);
    CHECK(send_all(busy, "GET /held HTTP/1.1\r\n\r\n"));
    read_until(busy, "HTTP/", 20, &closed);
    CHECK(held != NULL);
    httpd_drain(&srv);
    /* The idle one goes at once; the held one gets its answer, closing. */
    read_until(idle, NULL, 2000, &closed);
    CHECK(closed);
    const char *out = read_until(busy, NULL, 2000, &closed);
    CHECK(closed);
    CHECK(strstr(out, "Connection: close\r\n\r\nlater\n") != NULL);
    close(idle);
    close(busy);
    run_for(100); /* the server sees them go */
    CHECK_EQ_INT(closes, 2);
    /* Draining twice, or one that never listened, is harmless. */
    httpd_drain(&srv);
    struct httpd never;
    memset(&never, 0, sizeof never);
    httpd_drain(&never);
    CHECK_EQ_INT(world_close(), 0);
}

/* --- the client ----------------------------------------------------------- */

struct answer {
    int calls;      /* callback runs */
    int err;        /* result */
    int status;     /* its status */
    char ctype[64]; /* its Content-Type */
    char allow[64]; /* its Allow */
    char body[64];  /* its body */
    int order;      /* completion order */
};

static int answered;

static void record(const struct httpc_result *res, void *data)
{
    struct answer *a = data;
    a->calls++;
    a->order = ++answered;
    a->err = res->err;
    a->status = res->status;
    snprintf(a->ctype, sizeof a->ctype, "%s", res->content_type);
    snprintf(a->allow, sizeof a->allow, "%s", res->allow);
    snprintf(a->body, sizeof a->body, "%.*s", (int)res->blen, res->body);
}

static bool wait_answers(struct answer *a, int n, uint64_t ms)
{
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + ms;
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += a[i].calls > 0;
        if (done == n)
            return true;
        if (uv_now(&loop) >= end)
            return false;
        uv_run(&loop, UV_RUN_ONCE);
        uv_update_time(&loop);
    }
}

static struct httpc *client(int attempts, uint64_t timeout_ms)
{
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    struct httpc_opts o = {.max_head = 4096,
                           .max_body = 4096,
                           .timeout_ms = timeout_ms,
                           .max_attempts = attempts,
                           .log_name = "test client"};
    return httpc_new(&loop, addr, &o);
}

TEST(client_answers_in_order)
{
    CHECK(world_init(0, 0, 10));
    struct httpc *c = client(1, 2000);
    struct answer a[4];
    memset(a, 0, sizeof a);
    answered = 0;
    CHECK(httpc_request(c, "GET", "/held", NULL, NULL, 0, record, &a[0]) > 0);
    CHECK(httpc_request(c, "POST", "/x%20y", "X-A: 1\r\n", "body", 4, record,
                        &a[1]) > 0);
    CHECK(httpc_request(c, "GET", "/405", NULL, NULL, 0, record, &a[2]) > 0);
    CHECK(httpc_request(c, "GET", "/empty", NULL, NULL, 0, record, &a[3]) > 0);
    CHECK_EQ_INT(a[0].calls, 0); /* never from inside the call */
    CHECK_EQ_INT(httpc_pending(c), 4);
    CHECK(wait_answers(a, 4, 3000));
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(a[i].err, 0);
        CHECK_EQ_INT(a[i].order, i + 1);
    }
    CHECK_EQ_STR(a[0].body, "later\n");
    CHECK_EQ_STR(a[1].body, "/x%20y\n");
    CHECK_EQ_STR(a[1].ctype, "text/plain; charset=utf-8");
    CHECK_EQ_INT(a[2].status, 405);
    CHECK_EQ_STR(a[2].allow, "GET, PUT");
    CHECK_EQ_INT(a[3].status, 204);
    CHECK_EQ_STR(a[3].body, "");
    CHECK_EQ_INT(httpc_pending(c), 0);
    httpc_free(c);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(client_sends_once_when_asked)
{
    CHECK(world_init(0, 0, 10));
    struct httpc *c = client(1, 300);
    struct answer a[3];
    memset(a, 0, sizeof a);
    answered = 0;
    /* Lost with the connection: both fail, neither is sent again. */
    httpc_request(c, "POST", "/drop", NULL, "", 0, record, &a[0]);
    httpc_request(c, "POST", "/a", NULL, "", 0, record, &a[1]);
    CHECK(wait_answers(a, 2, 3000));
    CHECK_EQ_INT(a[0].err, PZ_EIO);
    CHECK_EQ_INT(a[1].err, PZ_EIO);
    CHECK_EQ_INT(a[0].status, 0);
    /* Stuck: the oldest times out and takes the others with it. */
    memset(a, 0, sizeof a);
    httpc_request(c, "POST", "/stuck", NULL, "", 0, record, &a[0]);
    httpc_request(c, "POST", "/b", NULL, "", 0, record, &a[1]);
    CHECK(wait_answers(a, 2, 3000));
    CHECK_EQ_INT(a[0].err, PZ_ETIMEDOUT);
    CHECK_EQ_INT(a[1].err, PZ_ETIMEDOUT);
    /* The next request dials again, and is answered. */
    httpc_request(c, "GET", "/c", NULL, NULL, 0, record, &a[2]);
    CHECK(wait_answers(&a[2], 1, 3000));
    CHECK_EQ_INT(a[2].err, 0);
    CHECK_EQ_STR(a[2].body, "/c\n");
    /* Cancelled: no callback; freed: the others are cancelled inside. */
    memset(a, 0, sizeof a);
    uint64_t id =
        httpc_request(c, "GET", "/held", NULL, NULL, 0, record, &a[0]);
    httpc_request(c, "GET", "/held", NULL, NULL, 0, record, &a[1]);
    void *data = NULL;
    CHECK(httpc_cancel(c, id, &data));
    CHECK(data == &a[0]);
    CHECK(!httpc_cancel(c, id, NULL));
    httpc_free(c);
    CHECK_EQ_INT(a[0].calls, 0);
    CHECK_EQ_INT(a[1].calls, 1);
    CHECK_EQ_INT(a[1].err, PZ_ECANCELED);
    CHECK_EQ_INT(world_close(), 0);
}

/* What the answers to the requests of a client with opts.hold asked. */
struct held_answer {
    struct answer a;    /* as record() saw it */
    bool refuse;        /* hold() says no */
    int asks;           /* hold() calls */
    size_t asked;       /* the last one's bytes */
    struct pz_buf kept; /* the body, taken from httpc */
};

static bool hold_answer(void *data, size_t bytes)
{
    struct held_answer *h = data;
    h->asks++;
    h->asked = bytes;
    return !h->refuse;
}

static void record_held(const struct httpc_result *res, void *data)
{
    struct held_answer *h = data;
    record(res, &h->a);
    if (res->buf) {
        h->kept = *res->buf; /* moved, not copied */
        pz_buf_init(res->buf);
    }
}

/* An httpc client of the test server whose answers are held by
 * hold_answer. */
static struct httpc *held_client(void)
{
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    struct httpc_opts o = {.max_head = 4096,
                           .max_body = 2 * BIG_ANSWER,
                           .timeout_ms = 5000,
                           .max_attempts = 1,
                           .log_name = "test client",
                           .hold = hold_answer};
    return httpc_new(&loop, addr, &o);
}

/* Run the loop until a's callback came, 5 s at most. */
static void run_until_called(struct answer *a)
{
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + 5000;
    while (a->calls == 0 && uv_now(&loop) < end) {
        uv_run(&loop, UV_RUN_ONCE);
        uv_update_time(&loop);
    }
}

/* An answer's body is held only as the caller grants it: its whole
 * Content-Length asked once, before any of it is kept, and taken by the
 * callback without a copy; one refused is dropped as it arrives, its
 * request fails with PZ_ENOSPC and its status, and the connection goes
 * on with the next answer. */
TEST(client_holds_answers_as_granted)
{
    CHECK(world_init(0, 0, 10));
    struct httpc *c = held_client();
    struct held_answer h[3];
    memset(h, 0, sizeof h);
    answered = 0;
    h[1].refuse = true;
    httpc_request(c, "GET", "/big", NULL, NULL, 0, record_held, &h[0]);
    httpc_request(c, "GET", "/big", NULL, NULL, 0, record_held, &h[1]);
    httpc_request(c, "GET", "/c", NULL, NULL, 0, record_held, &h[2]);
    struct answer *a[3] = {&h[0].a, &h[1].a, &h[2].a};
    run_until_called(&h[2].a);
    CHECK_EQ_INT(a[0]->err, 0);
    CHECK_EQ_INT(h[0].asks, 1);
    CHECK_EQ_INT(h[0].asked, BIG_ANSWER + 1); /* the body and its NUL */
    CHECK_EQ_INT(h[0].kept.len, BIG_ANSWER);
    CHECK_EQ_INT(h[0].kept.cap, BIG_ANSWER + 1);
    CHECK(h[0].kept.data[0] == 'b' && h[0].kept.data[BIG_ANSWER - 1] == 'b');
    CHECK_EQ_INT(a[1]->err, PZ_ENOSPC);
    CHECK_EQ_INT(a[1]->status, 200);
    CHECK_EQ_INT(h[1].asks, 1);
    CHECK_EQ_STR(a[1]->body, "");
    CHECK_EQ_INT(h[1].kept.cap, 0);
    CHECK_EQ_INT(a[2]->err, 0);
    CHECK_EQ_STR(a[2]->body, "/c\n");
    CHECK_EQ_INT(a[2]->order, 3);
    for (int i = 0; i < 3; i++)
        pz_buf_free(&h[i].kept);
    httpc_free(c);
    CHECK_EQ_INT(world_close(), 0);
}

/* An answer cut short by a closed connection leaves no buffer behind
 * uncounted: the next answer is asked for again (before, the buffer kept
 * the cut answer's size, and an answer that fit in it was never asked
 * for: up to 64 MiB per link to the leader, outside the budget). */
TEST(client_answer_after_a_cut_one_is_held)
{
    CHECK(world_init(0, 0, 10));
    struct httpc *c = held_client();
    struct held_answer h[2];
    memset(h, 0, sizeof h);
    answered = 0;
    httpc_request(c, "GET", "/cut", NULL, NULL, 0, record_held, &h[0]);
    run_until_called(&h[0].a);
    CHECK(h[0].a.err < 0);
    CHECK_EQ_INT(h[0].asks, 1);
    CHECK_EQ_INT(h[0].asked, BIG_ANSWER + 1);
    httpc_request(c, "GET", "/small-after-a-cut", NULL, NULL, 0, record_held,
                  &h[1]);
    run_until_called(&h[1].a);
    CHECK_EQ_INT(h[1].a.err, 0);
    CHECK_EQ_STR(h[1].a.body, "/small-after-a-cut\n");
    CHECK_EQ_INT(h[1].asks, 1);
    CHECK(h[1].asked >= sizeof "/small-after-a-cut\n" - 1 + 1);
    CHECK(h[1].asked < BIG_ANSWER);
    for (int i = 0; i < 2; i++)
        pz_buf_free(&h[i].kept);
    httpc_free(c);
    CHECK_EQ_INT(world_close(), 0);
}

/* The buffer httpc keeps between answers (up to 64 KiB) is granted again
 * for each answer that uses it: one left by an answer whose callback did
 * not take it was used by the next without asking. */
TEST(client_answer_in_a_kept_buffer_is_held)
{
    CHECK(world_init(0, 0, 10));
    struct httpc *c = held_client();
    struct held_answer h[2];
    memset(h, 0, sizeof h);
    answered = 0;
    /* record(), not record_held(): the body is copied, the buffer kept */
    httpc_request(c, "GET", "/mid", NULL, NULL, 0, record, &h[0].a);
    httpc_request(c, "GET", "/small", NULL, NULL, 0, record, &h[1].a);
    run_until_called(&h[1].a);
    CHECK_EQ_INT(h[0].a.err, 0);
    CHECK_EQ_INT(h[1].a.err, 0);
    CHECK_EQ_STR(h[1].a.body, "/small\n");
    CHECK_EQ_INT(h[0].asks, 1);
    CHECK_EQ_INT(h[0].asked, MID_ANSWER + 1);
    CHECK_EQ_INT(h[1].asks, 1);
    CHECK_EQ_INT(h[1].asked, MID_ANSWER + 1); /* the buffer it uses */
    httpc_free(c);
    CHECK_EQ_INT(world_close(), 0);
}

/* A streamed body goes out only as fast as the client reads it: nothing
 * is produced while more than HTTPD_STREAM_WANT bytes wait, a client that
 * reads nothing gets no more than the socket buffers hold, and the next
 * pipelined request is served once the body is complete. */
TEST(streamed_reply_follows_the_reader)
{
    CHECK(world_init(0, 0, 10));
    stream_sent = 0;
    stream_max_pend = 0;
    int fd = dial();
    CHECK(fd >= 0);
    int small = 32 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    CHECK(send_all(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"
                       "HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /after HTTP/1.1\r\nHost: x\r\n\r\n"));
    run_for(300); /* the client reads nothing meanwhile */
    uint64_t unread = stream_sent;
    fprintf(stderr, "    %llu bytes produced for a client not reading\n",
            (unsigned long long)unread);
    CHECK(unread > 0 && unread < 8u << 20);
    CHECK(stream_max_pend < HTTPD_STREAM_WANT);
    /* Now read it all: header, the body byte by byte checked, the HEAD
     * answer (a length, no body), then /after. */
    static char buf[1 << 16];
    size_t have = 0, body = 0;
    bool in_body = false, bad = false;
    char tail[512] = "";
    size_t tail_len = 0;
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + 20000;
    while (uv_now(&loop) < end && !strstr(tail, "/after\n")) {
        uv_run(&loop, UV_RUN_NOWAIT);
        ssize_t got = recv(fd, buf + have, sizeof buf - have, MSG_DONTWAIT);
        if (got <= 0) {
            if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                break;
            usleep(200);
            uv_update_time(&loop);
            continue;
        }
        have += (size_t)got;
        size_t at = 0;
        if (!in_body && body == 0) {
            char *hdr_end = memmem(buf, have, "\r\n\r\n", 4);
            if (!hdr_end)
                continue;
            CHECK(starts(buf, "HTTP/1.1 200 OK"));
            CHECK(memmem(buf, have, "Content-Length: 16777216\r\n", 26));
            at = (size_t)(hdr_end + 4 - buf);
            in_body = true;
        }
        for (; in_body && at < have && body < STREAM_TOTAL; at++, body++)
            if ((uint8_t)buf[at] != body % 251)
                bad = true;
        if (body == STREAM_TOTAL)
            in_body = false;
        if (!in_body && at < have) {
            size_t c = PZ_MIN(have - at, sizeof tail - 1 - tail_len);
            memcpy(tail + tail_len, buf + at, c);
            tail_len += c;
            tail[tail_len] = '\0';
        }
        have = 0;
        uv_update_time(&loop);
    }
    CHECK(!bad);
    CHECK_EQ_INT(body, STREAM_TOTAL);
    CHECK_EQ_INT(stream_sent, STREAM_TOTAL);
    CHECK(stream_max_pend < HTTPD_STREAM_WANT);
    CHECK(strstr(tail, "Content-Length: 16777216\r\n\r\nHTTP/1.1 200 OK"));
    CHECK(strstr(tail, "\r\n\r\n/after\n"));
    close(fd);
    CHECK_EQ_INT(world_close(), 0);
}

/* A client that stops reading a streamed body is dropped after the body
 * deadline: the stream's resources do not stay held forever. */
TEST(streamed_reply_to_a_stalled_client_ends)
{
    CHECK(world_init(0, 200, 10));
    stream_sent = 0;
    int fd = dial();
    CHECK(fd >= 0);
    int small = 32 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    CHECK(send_all(fd, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
    run_for(800);
    CHECK_EQ_INT(closes, 1);
    CHECK(stream_sent < STREAM_TOTAL);
    close(fd);
    CHECK_EQ_INT(world_close(), 0);
}

/* A client with a 4 KiB receive buffer that has asked for path: its
 * answer waits in the server. -1 if it could not. */
static int dial_small(const char *path)
{
    int small = 4096;
    int fd = dial();
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    char req[128];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    if (!send_all(fd, req)) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Read fd's answer: up to chunk bytes every step_ms, for at most steps
 * steps or until whole bytes or the end; slow (unless -1) meanwhile reads
 * 4 KiB every 50 steps. The bytes read. */
static size_t read_answer(int fd, size_t whole, int steps, uint64_t step_ms,
                          size_t chunk, int slow)
{
    static char buf[256 * 1024];
    size_t got = 0;
    for (int i = 0; i < steps && got < whole; i++) {
        run_for(step_ms);
        ssize_t n = recv(fd, buf, PZ_MIN(chunk, sizeof buf), MSG_DONTWAIT);
        if (n == 0)
            break;
        if (n > 0)
            got += (size_t)n;
        if (slow >= 0 && i % 50 == 0)
            (void)recv(slow, buf, 4096, MSG_DONTWAIT);
    }
    return got;
}

/* An answer its client reads none of, below the hard limit, is dropped
 * with its connection once the socket has taken nothing of it for the body
 * deadline; one the client reads goes out whole, however slowly. */
TEST(unread_answer_is_dropped_after_the_body_deadline)
{
    /* 1 s: a reader's window can stay shut for a few hundred ms (the
     * sender's zero-window probes back off from 200 ms). */
    CHECK(world_init(0, 1000, 10));
    int small = 16 * 1024;
    int fd = dial();
    CHECK(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    CHECK(send_all(fd, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"));
    run_for(500);
    CHECK_EQ_INT(closes, 0); /* not before the deadline */
    run_for(1000);
    CHECK_EQ_INT(closes, 1);
    close(fd);
    /* A reader that takes 64 KiB every 50 ms (4 MiB in about 3 s, far
     * over the deadline) is not cut. */
    int rd = dial();
    CHECK(rd >= 0);
    setsockopt(rd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    CHECK(send_all(rd, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"));
    size_t whole = BIG_ANSWER + 60; /* and its status line and headers */
    CHECK(read_answer(rd, whole, 400, 50, 64 * 1024, -1) >= whole);
    CHECK_EQ_INT(closes, 1);
    close(rd);
    CHECK_EQ_INT(world_close(), 0);
}

/* Under max_pending_output, an answer that would pass it first closes
 * the connections whose output has not moved for a second: a client that
 * reads gets its answer, the one that stopped reading is dropped. */
TEST(stalled_answers_make_room_for_a_reader)
{
    out_budget = 20u << 20;
    CHECK(world_init(0, 0, 10)); /* no deadlines, no send timeout */
    out_budget = 0;
    int a = dial_small("/huge");
    CHECK(a >= 0);
    /* Until the sockets take no more of a's answer (on a loaded machine
     * that can take a while), then over a second more: its output has
     * not moved for a second, whatever the machine's speed. */
    size_t prev = (size_t)-1;
    for (int i = 0; i < 50 && conn_output_total() != prev; i++) {
        prev = conn_output_total();
        run_for(100);
    }
    run_for(1300);
    /* 16 MiB, less the most a send buffer takes (4 MiB), wait unmoved. */
    CHECK(conn_output_total() > (12u << 20));
    CHECK_EQ_INT(closes, 0);
    int b = dial();
    CHECK(b >= 0);
    CHECK(send_all(b, "GET /huge HTTP/1.1\r\nHost: x\r\n\r\n"));
    size_t whole = HUGE_ANSWER + 60;
    CHECK(read_answer(b, whole, 2000, 2, 256 * 1024, -1) >= whole);
    CHECK_EQ_INT(closes, 1); /* a's */
    close(a);
    close(b);
    CHECK_EQ_INT(world_close(), 0);
}

/* A client that reads, but a segment at a time (4 KiB every 100 ms), is
 * never stalled, yet would hold its 16 MiB answer for over an hour: once
 * its rate is known (CONN_RATE_WINDOW_MS), an answer that would pass
 * max_pending_output closes it rather than the client asking. */
TEST(slow_readers_make_room_for_a_reader)
{
    out_budget = 20u << 20;
    CHECK(world_init(0, 2000, 10)); /* send timeout 2 s */
    out_budget = 0;
    int a = dial_small("/huge");
    CHECK(a >= 0);
    static char buf[4096];
    size_t slow = 0;
    for (int i = 0; i < 30; i++) { /* 3 s */
        run_for(100);
        ssize_t n = recv(a, buf, 4096, MSG_DONTWAIT);
        if (n > 0)
            slow += (size_t)n;
    }
    CHECK(slow > 0);
    CHECK_EQ_INT(closes, 0); /* it reads: no send timeout */
    CHECK(conn_output_total() > (8u << 20));
    int b = dial();
    CHECK(b >= 0);
    CHECK(send_all(b, "GET /huge HTTP/1.1\r\nHost: x\r\n\r\n"));
    size_t whole = HUGE_ANSWER + 60;
    CHECK(read_answer(b, whole, 2000, 2, 256 * 1024, a) >= whole);
    CHECK_EQ_INT(closes, 1); /* a's */
    close(a);
    close(b);
    CHECK_EQ_INT(world_close(), 0);
}

static const struct test_case cases[] = {
    TEST_ENTRY(streamed_reply_follows_the_reader),
    TEST_ENTRY(streamed_reply_to_a_stalled_client_ends),
    TEST_ENTRY(unread_answer_is_dropped_after_the_body_deadline),
    TEST_ENTRY(stalled_answers_make_room_for_a_reader),
    TEST_ENTRY(slow_readers_make_room_for_a_reader),
    TEST_ENTRY(pipelined_in_order_with_a_held_answer),
    TEST_ENTRY(close_after_and_unauthorized),
    TEST_ENTRY(bearer_check),
    TEST_ENTRY(header_deadline_cannot_be_trickled),
    TEST_ENTRY(partial_input_budget),
    TEST_ENTRY(one_client_takes_a_share_of_each_turn),
    TEST_ENTRY(refused_at_max_clients),
    TEST_ENTRY(drain_finishes_held_requests),
    TEST_ENTRY(client_answers_in_order),
    TEST_ENTRY(client_sends_once_when_asked),
    TEST_ENTRY(client_holds_answers_as_granted),
    TEST_ENTRY(client_answer_after_a_cut_one_is_held),
    TEST_ENTRY(client_answer_in_a_kept_buffer_is_held),
    TEST_END,
};

const struct test_suite suite_httpd = {"httpd", cases};
