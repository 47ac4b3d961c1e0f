/* cli.c - pyazdb-cli, the command-line client.
 *
 *   pyazdb-cli [--mandi URL | --addr HOST:PORT[,...]] [--timeout SECONDS]
 *              get KEY | set KEY VALUE | delete KEY | status | ...
 *
 * Happy path: without --addr, ask mandi (--mandi, else $MANDI_ADDR, else
 * http://127.0.0.1:7000) for the leader with GET /leader and take its
 * grpc_addr; then make one gRPC call over HTTP/2 (grpc_client.c) and print
 * the result the way the original kv-cli did (COMPAT.md): the value, or
 * "Key 'K' not found", "Set 'K' = 'V'", "Deleted 'K'". `status` prints what
 * the node reports (pyazdb.Cluster/Status). `members`, `remove`,
 * `transfer`, `list`, `txn`, `set --if-revision` and `delete --prefix`
 * talk to a node's HTTP API. HTTP goes through the client the
 * nodes use (httpc.c, on a libuv loop of ours), JSON through the strict
 * reader (json.c), and mandi's answer is held to the rules nodes hold it
 * to (mandi_codec.h).
 * Retries: a call that fails for want of a node (no connection,
 * UNAVAILABLE, an attempt's own deadline) goes to the next address given
 * (or asks mandi again), then, once every address failed, again after a
 * backoff (50 ms doubling to 1 s), until --timeout; get, status and
 * members are reads, set and delete are idempotent (see the README), so
 * all of them are retried; remove and transfer only move to the next
 * address when the connection could not be made (nothing was sent). A
 * node that answers UNAVAILABLE is asked once for the members, whose
 * addresses join the list (learn_members).
 * Failure modes: discovery or RPC errors print one line on stderr and exit
 * 1; a missing key exits 1; bad usage prints the usage and exits 1
 * (--help exits 0). --timeout bounds discovery, the calls and the
 * retries together. */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "cluster.pb-c.h"
#include "cli_snapshot.h"
#include "cli_watch.h"
#include "conn.h"
#include "grpc_client.h"
#include "grpc_frame.h"
#include "grpc_pb.h"
#include "http_parse.h"
#include "httpc.h"
#include "json.h"
#include "kv.h"
#include "log.h"
#include "mandi_codec.h"
#include "pz.h"
#include "tls.h"

#define DEFAULT_MANDI "http://127.0.0.1:7000"
#define DEFAULT_TIMEOUT_MS 5000

static const char usage_text[] =
    "Usage: pyazdb-cli [--mandi URL | --addr HOST:PORT[,HOST:PORT...]]"
    " [--timeout SECONDS] COMMAND\n"
    "\n"
    "Commands:\n"
    "  get KEY          print the value of KEY\n"
    "  set KEY VALUE    set KEY to VALUE\n"
    "  delete KEY       delete KEY\n"
    "  status           show what the node reports about the cluster\n"
    "  members          the members as the leader sees them (a table)\n"
    "  remove ID        remove member ID from the cluster\n"
    "  transfer ID      hand leadership to member ID\n"
    "  snapshot save FILE  download a backup (GET /admin/snapshot), verify\n"
    "                   it, write it to FILE\n"
    "  list PREFIX [--limit N] [--keys-only]\n"
    "                   the keys under PREFIX in order, KEY<TAB>VALUE\n"
    "  set --if-revision N KEY VALUE\n"
    "                   set KEY only if its mod_revision is N (0: only if\n"
    "                   it does not exist); exit 2 if not\n"
    "  delete --prefix PREFIX  delete every key under PREFIX\n"
    "  txn FILE         run the transaction in FILE (JSON as POST /txn;\n"
    "                   - reads stdin); exit 2 if its failure branch ran\n"
    "  watch KEY | watch --prefix PREFIX [--rev N] [--prev]\n"
    "                   print changes as they happen (from revision N),\n"
    "                   one line each, until interrupted; resumes on the\n"
    "                   next --http node when a stream breaks; exit 3 if\n"
    "                   the history no longer holds where it resumes\n"
    "  set --lease ID KEY VALUE  set KEY, attached to lease ID\n"
    "  lease grant TTL [--id ID]  grant a lease of TTL seconds\n"
    "  lease keepalive ID [--follow]  keep lease ID alive once, or with\n"
    "                   --follow every third of its TTL until Ctrl-C\n"
    "  lease revoke ID  revoke lease ID, deleting its keys\n"
    "  lease ttl ID [--keys]  its TTL, time left (and its keys)\n"
    "  lease list       every lease\n"
    "\n"
    "Options:\n"
    "  --mandi URL      discovery service (default $MANDI_ADDR, "
    "else " DEFAULT_MANDI ")\n"
    "  --addr HOST:PORT talk to this node's gRPC address, skip discovery;\n"
    "                   a comma-separated list, or the option repeated,\n"
    "                   gives nodes to try in turn (--endpoints is the\n"
    "                   same option)\n"
    "  --timeout SECS   give up after this long, retries included "
    "(default 5)\n"
    "  --http HOST:PORT members/remove/transfer/list/txn/lease, set\n"
    "                   --if-revision/--lease, delete --prefix: this node's\n"
    "                   HTTP address,\n"
    "                   or a list as --addr (default: the leader's, from\n"
    "                   mandi)\n"
    "  --token TOKEN    bearer token sent with every request (HTTP\n"
    "                   Authorization, gRPC authorization metadata): a\n"
    "                   client token, or the cluster token for\n"
    "                   remove/transfer/snapshot (default $PYAZDB_TOKEN)\n"
    "  --token-file FILE  read the token from the first line of FILE\n"
    "  --tls            talk TLS to the nodes (gRPC with ALPN h2, HTTPS),\n"
    "                   trusting the system's CAs; implied by the three\n"
    "                   options below. The node's certificate must name\n"
    "                   the IP address dialed. An https:// --mandi is\n"
    "                   asked over HTTPS with the same three options\n"
    "  --cacert FILE    trust the CA certificates in FILE (PEM)\n"
    "  --cert FILE      client certificate (PEM), for nodes that ask\n"
    "  --key FILE       its private key (PEM)\n"
    "  -o, --output FORMAT  text (default) or json: get, status, members\n"
    "                   and lease print one JSON document instead, watch\n"
    "                   one per event (also accepted after the command)\n"
    "  --version        print the version\n"
    "  -h, --help       this text\n";

/* TLS to the nodes (--tls, --cacert, --cert, --key); off: plain text. */
static struct tls_slot tls_cli_http, tls_cli_grpc;
/* The request in flight goes to mandi: plain HTTP, or HTTPS through
 * tls_cli_mandi for an https:// mandi (--cacert, --cert, --key apply). */
static bool to_mandi;
static struct tls_slot tls_cli_mandi;
static bool mandi_https;                      /* the mandi URL is https */
static const char *opt_cacert, *opt_cert, *opt_key; /* for tls_cli_mandi */

/* --- addresses and retries ---------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#define MAX_ENDPOINTS 64
#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS 1000

/* Addresses from --addr/--endpoints or --http, in the order given. */
struct endpoints {
    const char *v[MAX_ENDPOINTS]; /* pieces of the option values */
    size_t n;                     /* entries in v */
};

/* Add the comma-separated addresses of val, an option value in argv, cut
 * in place (nothing to free, whatever path main() leaves by). Returns 0,
 * or -1 for an empty piece or too many addresses. */
static int endpoints_add(struct endpoints *e, char *val)
{
    size_t pieces = 1;
    for (const char *q = val; *q; q++)
        pieces += *q == ',';
    if (val[0] == '\0' || val[0] == ',' || val[strlen(val) - 1] == ',' ||
        strstr(val, ",,") != NULL || pieces > MAX_ENDPOINTS - e->n)
        return -1;
    for (char *p = strtok(val, ","); p != NULL; p = strtok(NULL, ","))
        e->v[e->n++] = p;
    return 0;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000),
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* The retry schedule over n addresses (0: mandi finds one each time):
 * the next address at once while some of this round are untried, else a
 * pause that doubles from BACKOFF_FIRST_MS to BACKOFF_MAX_MS. Returns
 * false when the deadline leaves no time for another attempt. */
struct retry {
    uint64_t deadline; /* now_ms() past which we give up */
    uint64_t backoff;  /* next pause, ms */
    size_t n;          /* addresses */
    size_t attempts;   /* made so far */
};

static bool retry_next(struct retry *r)
{
    r->attempts++;
    uint64_t now = now_ms();
    if (now >= r->deadline)
        return false;
    if (r->n > 1 && r->attempts % r->n != 0)
        return true;
    uint64_t pause = PZ_MIN(r->backoff, r->deadline - now);
    sleep_ms(pause);
    r->backoff = PZ_MIN(r->backoff * 2, BACKOFF_MAX_MS);
    return now_ms() < r->deadline;
}

/* Time one attempt may take: all that is left with one address, else a
 * share of it, so that a node that accepts and never answers (stopped)
 * leaves time for the others. */
static uint64_t attempt_deadline(const struct retry *r)
{
    uint64_t now = now_ms();
    if (now >= r->deadline)
        return now;
    uint64_t left = r->deadline - now;
    if (r->n <= 1)
        return r->deadline;
    uint64_t share = PZ_MAX(left / r->n, PZ_MIN(left, (uint64_t)500));
    return now + share;
}

/* --- the loop ------------------------------------------------------------
 * Each network step (discovery, a membership request, the call) runs on
 * a libuv loop of its own, closed again before the next one (conn.c then
 * starts from nothing). */

static uv_loop_t loop;
static uv_prepare_t prep;

static void on_prepare(uv_prepare_t *h)
{
    PZ_UNUSED(h);
    conn_before_sleep();
}

static void loop_open(void)
{
    uv_loop_init(&loop);
    struct conn_limits lim = {.high_water = 1 << 20,
                              .hard_limit = (size_t)1 << 30};
    conn_setup(&loop, &lim);
    uv_prepare_init(&loop, &prep);
    uv_prepare_start(&prep, on_prepare);
}

static void loop_close(void)
{
    conn_close_outbound();
    while (conn_count() > 0)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&prep, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

/* "host:port" with a name or an empty host -> "ip:port" for conn_connect. */
static int resolve_addr(const char *in, char *out, size_t outlen, char *err,
                        size_t errlen)
{
    char host[256];
    int port;
    if (pz_split_hostport(in, host, sizeof host, &port) < 0 || port == 0) {
        snprintf(err, errlen, "bad address '%s' (want HOST:PORT)", in);
        return -1;
    }
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0) {
        snprintf(out, outlen, "127.0.0.1:%d", port);
        return 0;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rv = getaddrinfo(host, NULL, &hints, &res);
    if (rv != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rv));
        return -1;
    }
    char ip[INET6_ADDRSTRLEN] = "";
    if (res->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip,
                  sizeof ip);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr,
                  ip, sizeof ip);
    freeaddrinfo(res);
    if (strchr(ip, ':'))
        snprintf(out, outlen, "[%s]:%d", ip, port);
    else
        snprintf(out, outlen, "%s:%d", ip, port);
    return 0;
}

/* --- HTTP: mandi's GET /leader, the membership endpoints ---------------- */

#define HTTP_MAX_HEAD (64 * 1024)   /* status line and headers */
#define HTTP_MAX_BODY (1024 * 1024) /* an answer's body */

struct http_answer {
    bool done;          /* the callback ran */
    int err;            /* its error, 0: answered */
    int status;         /* the HTTP status */
    struct pz_buf body; /* the body */
};

static void on_http_answer(const struct httpc_result *res, void *data)
{
    struct http_answer *a = data;
    a->done = true;
    a->err = res->err;
    a->status = res->status;
    pz_buf_append(&a->body, res->body, res->blen);
}

/* method target on addr ("host:port"; a host name is resolved) with the
 * token as a bearer token (NULL: none), answered before deadline. Returns
 * the HTTP status (> 0) with the body, or -1 with a message in err and,
 * when not NULL, *unsent true if the request surely never reached the
 * server (no connection was made, or the address is unusable). */
static int http_request_ex(const char *method, const char *addr,
                           const char *target, const char *token,
                           const char *req_body, size_t req_len,
                           uint64_t deadline, struct pz_buf *body, char *err,
                           size_t errlen, bool *unsent)
{
    bool dummy;
    if (unsent == NULL)
        unsent = &dummy;
    *unsent = true;
    char ip[MANDI_ADDR_MAX + 1], headers[512];
    uint64_t now = now_ms();
    if (now >= deadline) {
        snprintf(err, errlen, "%s: timed out", addr);
        return -1;
    }
    if (resolve_addr(addr, ip, sizeof ip, err, errlen) < 0)
        return -1;
    int n = snprintf(headers, sizeof headers,
                     "User-Agent: pyazdb-cli/" PZ_VERSION "\r\n"
                     "Accept: application/json\r\n");
    if (req_len)
        n += snprintf(headers + n, sizeof headers - (size_t)n,
                      "Content-Type: application/json\r\n");
    if (token && token[0])
        snprintf(headers + n, sizeof headers - (size_t)n,
                 "Authorization: Bearer %s\r\n", token);
    loop_open();
    struct httpc_opts o = {.max_head = HTTP_MAX_HEAD,
                           .max_body = HTTP_MAX_BODY,
                           .timeout_ms = deadline - now,
                           .max_attempts = 1,
                           .log_name = addr,
                           .tls = !to_mandi     ? &tls_cli_http
                                  : mandi_https ? &tls_cli_mandi
                                                : NULL};
    struct httpc *c = httpc_new(&loop, ip, &o);
    struct http_answer a = {.done = false};
    pz_buf_init(&a.body);
    bool get = strcmp(method, "GET") == 0;
    httpc_request(c, method, target, headers,
                  get        ? NULL
                  : req_body ? req_body
                             : "",
                  req_len, on_http_answer, &a);
    while (!a.done)
        uv_run(&loop, UV_RUN_ONCE);
    httpc_free(c);
    loop_close();
    if (a.err < 0) {
        snprintf(err, errlen, "%s: %s", addr,
                 a.err == PZ_EPROTO ? "bad HTTP response"
                                    : pz_strerror(a.err));
        /* httpc: a libuv code is a failed connect, PZ_EINVAL an address
         * that cannot be dialled; the others come after sending. */
        *unsent = a.err != PZ_EIO && a.err != PZ_ETIMEDOUT &&
                  a.err != PZ_EPROTO && a.err != PZ_ECANCELED;
        pz_buf_free(&a.body);
        return -1;
    }
    *unsent = false;
    *body = a.body;
    return a.status;
}

static int http_request(const char *method, const char *addr,
                        const char *target, const char *token,
                        uint64_t deadline, struct pz_buf *body, char *err,
                        size_t errlen)
{
    return http_request_ex(method, addr, target, token, NULL, 0, deadline, body,
                           err, errlen, NULL);
}

/* Split "http://host:port[/...]" or "https://..." into "host:port"
 * (default port 80 or 443), *https telling which; returns 0 or
 * PZ_EINVAL. */
static int mandi_hostport(const char *url, char *out, size_t outlen,
                          bool *https)
{
    const char *p = url;
    *https = false;
    if (strncmp(p, "http://", 7) == 0) {
        p += 7;
    } else if (strncmp(p, "https://", 8) == 0) {
        p += 8;
        *https = true;
    } else if (strstr(p, "://") != NULL) {
        return PZ_EINVAL; /* other schemes */
    }
    size_t n = strcspn(p, "/");
    char hp[300];
    if (n == 0 || n >= sizeof hp)
        return PZ_EINVAL;
    memcpy(hp, p, n);
    hp[n] = '\0';
    const char *colon = strrchr(hp, ':');
    const char *close = strrchr(hp, ']');
    bool has_port = colon && (close == NULL || colon > close);
    if (has_port && colon[1] == '\0')
        return PZ_EINVAL;
    if (hp[0] == ':' || (hp[0] == '[' && close == NULL))
        return PZ_EINVAL;
    snprintf(out, outlen, has_port ? "%s" : *https ? "%s:443" : "%s:80", hp);
    return 0;
}

/* Ask mandi for the leader's gRPC or HTTP address (field "grpc_addr" or
 * "http_addr"). Mandi's answer is held to the rules nodes hold it to
 * (mandi_codec.h). Returns 0 or -1. */
static int discover_field(const char *mandi, const char *field,
                          uint64_t deadline, char *addr, size_t addrlen,
                          char *err, size_t errlen, bool *again)
{
    bool dummy;
    if (again == NULL)
        again = &dummy;
    *again = false;
    char hostport[300], msg[400];
    struct pz_buf body;
    if (mandi_hostport(mandi, hostport, sizeof hostport, &mandi_https) < 0) {
        snprintf(err, errlen, "bad mandi address '%s' (want http://host:port)",
                 mandi);
        return -1;
    }
    if (mandi_https && !tls_slot_on(&tls_cli_mandi)) {
        char terr[512];
        struct tls_opts to = {.server = false,
                              .cert_file = opt_cert ? opt_cert : "",
                              .key_file = opt_key ? opt_key : "",
                              .ca_file = opt_cacert ? opt_cacert : "",
                              .alpn = "http/1.1"};
        if (tls_slot_load(&tls_cli_mandi, "mandi", &to, terr, sizeof terr) <
            0) {
            snprintf(err, errlen, "%s", terr);
            return -1;
        }
    }
    to_mandi = true;
    int status = http_request("GET", hostport, "/leader", NULL, deadline,
                              &body, msg, sizeof msg);
    to_mandi = false;
    if (status < 0) {
        snprintf(err, errlen, "leader discovery through %s failed: %s", mandi,
                 msg);
        *again = true; /* mandi restarting, or slow */
        return -1;
    }
    int rv = -1;
    struct mandi_leader l;
    char why[128];
    if (status == 404) {
        snprintf(err, errlen, "no leader available (mandi at %s)", mandi);
        *again = true; /* an election, or mandi just restarted */
    } else if (status != 200) {
        snprintf(err, errlen, "leader discovery through %s: HTTP %d", mandi,
                 status);
    } else if (mandi_parse_leader(body.data ? body.data : "", body.len, &l,
                                  why, sizeof why) < 0) {
        snprintf(err, errlen, "mandi at %s gave no leader %s: %s", mandi,
                 field, why);
    } else {
        const char *v = strcmp(field, "grpc_addr") == 0 ? l.grpc_addr
                                                        : l.http_addr;
        if (v[0] == '\0') {
            snprintf(err, errlen, "mandi at %s gave no leader %s", mandi,
                     field);
        } else {
            snprintf(addr, addrlen, "%s", v);
            rv = 0;
        }
    }
    pz_buf_free(&body);
    return rv;
}

static int discover(const char *mandi, uint64_t deadline, char *addr,
                    size_t addrlen, char *err, size_t errlen, bool *again)
{
    return discover_field(mandi, "grpc_addr", deadline, addr, addrlen, err,
                          errlen, again);
}

/* --- the call
 * ------------------------------------------------------------------ */

struct cli_call {
    struct grpc_call call; /* the RPC */
    bool done;             /* its callback ran */
};

static void on_call_done(struct grpc_call *call)
{
    struct cli_call *c = container_of(call, struct cli_call, call);
    c->done = true;
}

/* "Bearer <token>" sent with every call, or NULL (--token). */
static char *grpc_authz;

/* The token in the first line of file (--token-file), blanks around it
 * dropped, into tok; -1 with a message on stderr when there is none. */
static int read_token_file(const char *file, char *tok, size_t toklen)
{
    FILE *f = fopen(file, "r");
    if (f == NULL) {
        fprintf(stderr, "pyazdb-cli: --token-file %s: %s\n", file,
                strerror(errno));
        return -1;
    }
    char line[1024];
    bool got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    char *b = line + (got ? strspn(line, " \t") : 0);
    size_t n = got ? strcspn(b, " \t\r\n") : 0;
    if (n == 0 || n >= toklen) {
        fprintf(stderr, "pyazdb-cli: --token-file %s: no token on its first "
                        "line\n", file);
        return -1;
    }
    memcpy(tok, b, n);
    tok[n] = '\0';
    return 0;
}

/* One unary call; fills *call's results. Returns 0 or -1 (err set). */
static int rpc(const char *addr, const char *path, const void *msg, size_t len,
               uint64_t deadline, struct cli_call *c, char *err, size_t errlen)
{
    uint64_t now = now_ms();
    if (now >= deadline) {
        snprintf(err, errlen, "timed out");
        return -1;
    }
    loop_open();
    struct grpc_client *cl =
        grpc_client_new(&loop, addr, KV_VALUE_MAX + (1 << 16));
    grpc_client_set_tls(cl, &tls_cli_grpc);
    const char *md[] = {"authorization", grpc_authz, NULL};
    struct grpc_call_opts opts = {.timeout_ms = deadline - now,
                                  .metadata = grpc_authz ? md : NULL};
    grpc_call_init(&c->call);
    c->done = false;
    int rv =
        grpc_client_call(cl, &c->call, path, msg, len, &opts, on_call_done);
    if (rv < 0)
        snprintf(err, errlen, "cannot call %s: %s", addr, pz_strerror(rv));
    while (rv == 0 && !c->done)
        uv_run(&loop, UV_RUN_ONCE);
    grpc_client_close(cl);
    loop_close();
    return rv < 0 ? -1 : 0;
}

/* The node at addr (resolved "ip:port") answered but could not serve the
 * call: ask it for the members (pyazdb.Cluster/Status) and add the gRPC
 * addresses not in e yet, to be tried after the others. A member address
 * without a host (":9090", "0.0.0.0:9090") is on the host of addr. Once
 * per run; errors are ignored (the retries go on without them). */
static void learn_members(const char *addr, struct endpoints *e,
                          uint64_t deadline)
{
    static char learned[MAX_ENDPOINTS][MANDI_ADDR_MAX + 1];
    static size_t n_learned;
    char err[256], host[256], mhost[256], cand[MANDI_ADDR_MAX + 1];
    char ip[MANDI_ADDR_MAX + 1], known[MANDI_ADDR_MAX + 1];
    int port, mport;
    struct cli_call c;
    if (pz_split_hostport(addr, host, sizeof host, &port) < 0)
        return;
    uint64_t dl = PZ_MIN(deadline, now_ms() + 1000);
    if (rpc(addr, "/pyazdb.Cluster/Status", "", 0, dl, &c, err, sizeof err) <
        0)
        return;
    Pyazdb__StatusResponse *r =
        c.call.status != GRPC_OK
            ? NULL
            : pyazdb__status_response__unpack(&grpc_pb_allocator,
                                              c.call.resp.len,
                                              (uint8_t *)c.call.resp.data);
    for (size_t i = 0; r && i < r->n_members; i++) {
        const char *g = r->members[i]->grpc_addr;
        if (g == NULL || g[0] == '\0' ||
            pz_split_hostport(g, mhost, sizeof mhost, &mport) < 0 ||
            mport == 0)
            continue;
        if (mhost[0] == '\0' || strcmp(mhost, "0.0.0.0") == 0 ||
            strcmp(mhost, "::") == 0)
            snprintf(cand, sizeof cand, strchr(host, ':') ? "[%s]:%d" : "%s:%d",
                     host, mport);
        else
            snprintf(cand, sizeof cand, "%s", g);
        if (resolve_addr(cand, ip, sizeof ip, err, sizeof err) < 0)
            continue;
        bool dup = false;
        for (size_t j = 0; j < e->n && !dup; j++)
            dup = resolve_addr(e->v[j], known, sizeof known, err,
                               sizeof err) == 0 &&
                  strcmp(known, ip) == 0;
        if (dup || e->n == MAX_ENDPOINTS || n_learned == MAX_ENDPOINTS)
            continue;
        snprintf(learned[n_learned], sizeof learned[n_learned], "%s", ip);
        e->v[e->n++] = learned[n_learned++];
    }
    if (r)
        pyazdb__status_response__free_unpacked(r, &grpc_pb_allocator);
    grpc_call_reset(&c.call);
}

/* -o json: get, status and members print one JSON document. */
static bool out_json;

/* Append "name":"s" (with a comma before unless first) to b. */
static void put_field(struct pz_buf *b, const char *name, const char *s,
                      bool first)
{
    pz_buf_appendf(b, "%s\"%s\":", first ? "" : ",", name);
    json_put_string(b, s, strlen(s));
}

/* Write b and a newline to stdout. */
static void put_doc(struct pz_buf *b)
{
    pz_buf_append(b, "\n", 1);
    fwrite(b->data, 1, b->len, stdout);
    pz_buf_free(b);
}

static void print_status_json(const char *addr,
                              const Pyazdb__StatusResponse *r)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "{", 1);
    put_field(&b, "addr", addr, true);
    put_field(&b, "id", r->id, false);
    put_field(&b, "role", r->role, false);
    put_field(&b, "leader", r->leader, false);
    put_field(&b, "leader_grpc_addr", r->leader_grpc_addr, false);
    pz_buf_appendf(&b,
                   ",\"term\":%llu,\"commit_index\":%llu,"
                   "\"applied_index\":%llu,\"last_index\":%llu,"
                   "\"keys\":%llu",
                   (unsigned long long)r->term,
                   (unsigned long long)r->commit_index,
                   (unsigned long long)r->applied_index,
                   (unsigned long long)r->last_index,
                   (unsigned long long)r->keys);
    put_field(&b, "version", r->version, false);
    pz_buf_appendf(&b, ",\"uptime_seconds\":%llu,\"members\":[",
                   (unsigned long long)r->uptime_seconds);
    for (size_t i = 0; i < r->n_members; i++) {
        pz_buf_append(&b, i ? ",{" : "{", i ? 2 : 1);
        put_field(&b, "id", r->members[i]->id, true);
        put_field(&b, "raft_addr", r->members[i]->raft_addr, false);
        put_field(&b, "grpc_addr", r->members[i]->grpc_addr, false);
        pz_buf_appendf(&b, ",\"voter\":%s}",
                       r->members[i]->voter ? "true" : "false");
    }
    pz_buf_append(&b, "]}", 2);
    put_doc(&b);
}

/* A node's string for the terminal (pz_free it): escaped as standard
 * error is (stderr_write), tabs and newlines too, so that a field stays
 * on its line and in its column. Keys and values (get, list, watch) are
 * the user's data and are written as they are. */
static char *shown_n(const char *s, size_t n)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_text_escape(&b, s, n, ""); /* a NUL within is written \x00 */
    pz_buf_append(&b, "", 1);     /* the NUL */
    return b.data;
}

static char *shown(const char *s)
{
    return shown_n(s, strlen(s));
}

/* "name: s" on a line, s escaped (shown). */
static void put_line(const char *name, const char *s)
{
    char *e = shown(s);
    printf("%s: %s\n", name, e);
    pz_free(e);
}

static void print_status(const char *addr, const struct grpc_call *call)
{
    Pyazdb__StatusResponse *r = pyazdb__status_response__unpack(
        &grpc_pb_allocator, call->resp.len, (uint8_t *)call->resp.data);
    if (r == NULL) {
        fprintf(stderr, "pyazdb-cli: status: bad response from %s\n", addr);
        exit(1);
    }
    if (out_json) {
        print_status_json(addr, r);
        pyazdb__status_response__free_unpacked(r, &grpc_pb_allocator);
        return;
    }
    put_line("addr", addr);
    put_line("id", r->id);
    put_line("role", r->role);
    put_line("leader", r->leader);
    put_line("leader_grpc_addr", r->leader_grpc_addr);
    printf("term: %llu\n", (unsigned long long)r->term);
    printf("commit_index: %llu\n", (unsigned long long)r->commit_index);
    printf("applied_index: %llu\n", (unsigned long long)r->applied_index);
    printf("last_index: %llu\n", (unsigned long long)r->last_index);
    printf("keys: %llu\n", (unsigned long long)r->keys);
    put_line("version", r->version);
    printf("uptime_seconds: %llu\n", (unsigned long long)r->uptime_seconds);
    for (size_t i = 0; i < r->n_members; i++) {
        char *id = shown(r->members[i]->id);
        char *raft = shown(r->members[i]->raft_addr);
        char *grpc = shown(r->members[i]->grpc_addr);
        printf("member: %s raft=%s grpc=%s %s\n", id, raft, grpc,
               r->members[i]->voter ? "voter" : "non-voter");
        pz_free(id);
        pz_free(raft);
        pz_free(grpc);
    }
    pyazdb__status_response__free_unpacked(r, &grpc_pb_allocator);
}

/* Standard error goes through pz_text_escape: our messages carry what a
 * node or mandi said (a gRPC status message, an HTTP error line, an
 * address), and a hostile or broken server must not drive the user's
 * terminal with it. Newlines and tabs pass; the rest is written \xNN. */
static ssize_t stderr_write(void *cookie, const char *buf, size_t n)
{
    PZ_UNUSED(cookie);
    struct pz_buf b;
    pz_buf_init(&b);
    pz_text_escape(&b, buf, n, "\n\t");
    for (size_t off = 0; off < b.len;) {
        ssize_t w = write(STDERR_FILENO, b.data + off, b.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    pz_buf_free(&b);
    return (ssize_t)n;
}

static void escape_stderr(void)
{
    cookie_io_functions_t io = {.write = stderr_write};
    FILE *f = fopencookie(NULL, "w", io);
    if (f == NULL)
        return; /* the plain stream, then */
    setvbuf(f, NULL, _IOLBF, 0);
    stderr = f;
}

static int usage_error(const char *fmt, const char *arg)
{
    if (fmt) {
        fprintf(stderr, "pyazdb-cli: ");
        fprintf(stderr, fmt, arg);
        fprintf(stderr, "\n");
    }
    fputs(usage_text, stdout);
    return 1;
}

/* A member's string field for the terminal (shown), "" when absent
 * (pz_free it). */
static char *member_str(const struct json_val *m, const char *name)
{
    struct json_val v;
    size_t len;
    if (!json_get(m, name, &v) || v.type != JSON_STRING)
        return pz_strdup("");
    char *raw = json_strdup(&v, &len);
    char *e = shown_n(raw, len);
    pz_free(raw);
    return e;
}

static bool member_true(const struct json_val *m, const char *name)
{
    struct json_val v;
    return json_get(m, name, &v) && v.type == JSON_TRUE;
}

/* GET /cluster's answer as a table. */
static void print_members(const char *json, size_t len)
{
    struct json_val root, ms, m;
    struct json_iter it;
    printf("%-16s %-6s %-6s %-22s %-22s %-22s %10s %10s\n", "ID", "VOTER",
           "LEADER", "RAFT", "HTTP", "GRPC", "MATCH", "CONTACT");
    if (json_parse(json, len, &root) < 0 || !json_get(&root, "members", &ms))
        return;
    json_iter_init(&it, &ms);
    while (json_iter_next(&it, NULL, &m)) {
        static const char *const f[4] = {"id", "raft_addr", "http_addr",
                                         "grpc_addr"};
        char *v[4];
        for (int k = 0; k < 4; k++)
            v[k] = member_str(&m, f[k]);
        struct json_val x;
        uint64_t n;
        char mb[24] = "-", cb[24] = "-";
        if (json_get(&m, "match_index", &x) && json_u64(&x, &n) == 0)
            snprintf(mb, sizeof mb, "%llu", (unsigned long long)n);
        if (json_get(&m, "last_contact_ms", &x) && json_u64(&x, &n) == 0)
            snprintf(cb, sizeof cb, "%llums", (unsigned long long)n);
        printf("%-16s %-6s %-6s %-22s %-22s %-22s %10s %10s\n", v[0],
               member_true(&m, "voter") ? "yes" : "no",
               member_true(&m, "leader") ? "yes" : "", v[1], v[2], v[3], mb,
               cb);
        for (int k = 0; k < 4; k++)
            pz_free(v[k]);
    }
}

static int api_call(const char *what, const char *method, const char *path,
                    const struct pz_buf *req, const struct endpoints *http,
                    const char *mandi, const char *token, uint64_t deadline,
                    struct pz_buf *body);

/* members / remove ID / transfer ID over the node's HTTP API (api_call:
 * at the addresses of --http in turn, else at the leader's from mandi).
 * members (a read) is retried on a failed connection, 502 and 503; remove
 * and transfer move on only when nothing was sent. */
static int api_failed(const char *what, int st, const struct pz_buf *body);

static int membership(const char *cmd, const char *id,
                      const struct endpoints *http, const char *mandi,
                      const char *token, uint64_t deadline)
{
    bool read = cmd[0] == 'm';
    const char *method = "GET";
    struct pz_buf path;
    pz_buf_init(&path);
    if (read) {
        pz_buf_appendf(&path, "/cluster");
    } else if (cmd[0] == 'r') {
        method = "DELETE";
        pz_buf_appendf(&path, "/cluster/members/");
        http_pct_encode(&path, id, strlen(id));
    } else {
        method = "POST";
        pz_buf_appendf(&path, "/cluster/transfer?to=");
        http_pct_encode(&path, id, strlen(id));
    }
    struct pz_buf body;
    pz_buf_init(&body);
    int st = api_call(cmd, method, path.data, NULL, http, mandi, token,
                      deadline, &body);
    pz_buf_free(&path);
    if (st < 0)
        return 1;
    int code = 0;
    if (read && st == 200 && out_json) {
        struct json_val root, ms;
        if (json_parse(body.data, body.len, &root) < 0 ||
            !json_get(&root, "members", &ms) || ms.type != JSON_ARRAY) {
            fprintf(stderr, "pyazdb-cli: members: bad answer (no members "
                            "array)\n");
            code = 1;
        } else {
            printf("%.*s\n", (int)ms.len, ms.s);
        }
    } else if (read && st == 200) {
        print_members(body.data, body.len);
    } else if (!read && st == 204) {
        if (cmd[0] == 'r')
            printf("Removed '%s'\n", id);
        else
            printf("Leadership transferred to '%s'\n", id);
    } else {
        code = api_failed(cmd, st, &body);
    }
    pz_buf_free(&body);
    return code;
}

/* snapshot save FILE: a backup from the node's HTTP API (cli_snapshot.h). */
static int snapshot_cmd(int nargs, char **args, const char *http,
                        const char *mandi, const char *token,
                        uint64_t timeout_ms)
{
    char err[1024], target[MANDI_ADDR_MAX + 1];
    if (nargs != 2 || strcmp(args[0], "save") != 0)
        return usage_error("usage: snapshot save FILE%s", "");
    if (http) {
        snprintf(target, sizeof target, "%s", http);
    } else {
        if (mandi == NULL)
            mandi = getenv("MANDI_ADDR");
        if (mandi == NULL || mandi[0] == '\0')
            mandi = DEFAULT_MANDI;
        if (discover_field(mandi, "http_addr", now_ms() + timeout_ms, target,
                           sizeof target, err, sizeof err, NULL) < 0) {
            fprintf(stderr, "pyazdb-cli: %s\n", err);
            return 1;
        }
    }
    struct snapshot_meta m;
    if (cli_snapshot_save(target, token, &tls_cli_http, args[1], timeout_ms,
                          &m, err, sizeof err) < 0) {
        fprintf(stderr, "pyazdb-cli: snapshot save failed: %s\n", err);
        return 1;
    }
    printf("Saved snapshot at index %llu (%llu keys, %llu bytes) to %s\n",
           (unsigned long long)m.index, (unsigned long long)m.nkeys,
           (unsigned long long)m.file_size, args[1]);
    snapshot_meta_free(&m);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* --- revisions, ranges, conditions, transactions (HTTP) -------------------
 * list, set --if-revision, delete --prefix and txn talk to a node's HTTP
 * API (--http, else the leader's http_addr from mandi). Reads are retried
 * on the next address as `members` is; writes only when nothing was sent. */

/* One request to the HTTP API with the retries above. Returns the HTTP
 * status with the body in *body, or -1 after printing why. */
static int api_call(const char *what, const char *method, const char *path,
                    const struct pz_buf *req, const struct endpoints *http,
                    const char *mandi, const char *token, uint64_t deadline,
                    struct pz_buf *body)
{
    char err[512] = "", target[MANDI_ADDR_MAX + 1], host[256];
    int port, st = -1;
    bool read = strcmp(method, "GET") == 0;
    if (http->n == 0) {
        if (mandi == NULL)
            mandi = getenv("MANDI_ADDR");
        if (mandi == NULL || mandi[0] == '\0')
            mandi = DEFAULT_MANDI;
    }
    struct retry r = {
        .deadline = deadline, .backoff = BACKOFF_FIRST_MS, .n = http->n};
    size_t tries = 0;
    for (;;) {
        bool again = false;
        tries++;
        if (http->n > 0) {
            snprintf(target, sizeof target, "%s", http->v[r.attempts % r.n]);
        } else if (discover_field(mandi, "http_addr", deadline, target,
                                  sizeof target, err, sizeof err, &again) < 0) {
            if (again && retry_next(&r))
                continue;
            break;
        }
        if (pz_split_hostport(target, host, sizeof host, &port) < 0) {
            snprintf(err, sizeof err, "bad HTTP address '%s'", target);
            break;
        }
        bool unsent = false;
        st =
            http_request_ex(method, target, path, token, req ? req->data : NULL,
                            req ? req->len : 0, attempt_deadline(&r), body, err,
                            sizeof err, &unsent);
        if (st < 0) {
            again = unsent || read;
        } else if (read && (st == 502 || st == 503)) {
            pz_buf_append(body, "", 1);
            body->data[strcspn(body->data, "\n")] = '\0';
            snprintf(err, sizeof err, "%s: HTTP %d: %s", target, st,
                     body->data);
            pz_buf_free(body);
            st = -1;
            again = true;
        } else {
            break;
        }
        if (!again || !retry_next(&r))
            break;
    }
    if (st < 0) {
        if (tries > 1)
            fprintf(stderr, "pyazdb-cli: %s failed after %zu attempts: %s\n",
                    what, tries, err);
        else
            fprintf(stderr, "pyazdb-cli: %s\n", err);
        return -1;
    }
    pz_buf_append(body, "", 1); /* a NUL after the bytes */
    body->len--;
    return st;
}

/* The failure line of an answer that is not the expected one. */
static int api_failed(const char *what, int st, const struct pz_buf *body)
{
    int n = (int)strcspn(body->data ? body->data : "", "\n");
    fprintf(stderr, "pyazdb-cli: %s failed: HTTP %d: %.*s\n", what, st, n,
            body->data ? body->data : "");
    return 1;
}

bool cli_json_bytes(const struct json_val *obj, const char *name,
                    struct pz_buf *out)
{
    struct json_val v;
    char b64[32];
    pz_buf_reset(out);
    if (json_get(obj, name, &v) && v.type == JSON_STRING) {
        json_str(&v, out);
        return true;
    }
    snprintf(b64, sizeof b64, "%s_b64", name);
    if (json_get(obj, b64, &v) && v.type == JSON_STRING) {
        struct pz_buf raw;
        pz_buf_init(&raw);
        json_str(&v, &raw);
        int rc = http_b64_decode(out, raw.data ? raw.data : "", raw.len);
        pz_buf_free(&raw);
        return rc == 0;
    }
    return false;
}

static void put_json_string(struct pz_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    pz_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            pz_buf_append(b, e, 2);
        } else if (*p < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
            pz_buf_append(b, e, 6);
        } else {
            pz_buf_append(b, p, 1);
        }
    }
    pz_buf_append(b, "\"", 1);
}

/* Bytewise order of two byte strings (as keys are ordered): <0, 0, >0. */
static int bytes_cmp(const struct pz_buf *a, const struct pz_buf *b)
{
    size_t n = PZ_MIN(a->len, b->len);
    int c = n ? memcmp(a->data, b->data, n) : 0;
    if (c)
        return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* One page of a listing, checked before any of it is printed. Its
 * revision is compared with the first page's (*rev, set from the first
 * page): the node keeps no older state to read a later page at, so a
 * listing of several pages is one state of the store only if nothing
 * was written between them. A change is said once on stderr (*warned)
 * and the listing goes on, as a key that exists throughout still shows
 * exactly once; failing instead would make every long listing of a busy
 * cluster fail. When another page is to follow (more, and fewer than
 * room keys in this one), `next` must come after what was asked (cur:
 * the prefix, then the previous next) and after the page's last key, or
 * a broken node could keep the listing going round.
 * Returns 0 with *follow and next set, or 1 after a line on stderr. */
static int list_page(const struct json_val *root, const struct json_val *kvs,
                     bool first, uint64_t *rev, bool *warned,
                     unsigned long long room, const struct pz_buf *cur,
                     bool *follow, struct pz_buf *next)
{
    struct json_val rv, item, more;
    uint64_t r;
    if (!json_get(root, "revision", &rv) || json_u64(&rv, &r) < 0) {
        fprintf(stderr, "pyazdb-cli: list: bad answer (no revision)\n");
        return 1;
    }
    if (first) {
        *rev = r;
    } else if (r != *rev && !*warned) {
        fprintf(stderr,
                "pyazdb-cli: list: note: the keys changed during the "
                "listing (revision %llu, then %llu): keys written "
                "meanwhile may be missing or stale\n",
                (unsigned long long)*rev, (unsigned long long)r);
        *warned = true;
    }
    /* The page's last key, and how many it holds. */
    struct pz_buf k, last;
    pz_buf_init(&k);
    pz_buf_init(&last);
    unsigned long long n = 0;
    bool any = false;
    struct json_iter it;
    json_iter_init(&it, kvs);
    while (json_iter_next(&it, NULL, &item)) {
        if (cli_json_bytes(&item, "key", &k)) {
            pz_buf_reset(&last);
            pz_buf_append(&last, k.data, k.len);
            any = true;
        }
        n++;
    }
    *follow =
        json_get(root, "more", &more) && more.type == JSON_TRUE && n < room;
    int code = 0;
    if (*follow &&
        (!cli_json_bytes(root, "next", next) || bytes_cmp(next, cur) <= 0 ||
         (any && bytes_cmp(next, &last) <= 0))) {
        fprintf(stderr, "pyazdb-cli: list: bad answer (more keys, but no "
                        "next key after the ones listed)\n");
        code = 1;
    }
    pz_buf_free(&k);
    pz_buf_free(&last);
    return code;
}

/* list PREFIX [--limit N] [--keys-only]: every key under PREFIX, one
 * "KEY<TAB>VALUE" line each (KEY alone with --keys-only), in key order,
 * following the continuation; at most N keys with --limit. A write
 * between two pages is said on stderr (list_page). */
static int list_cmd(int nargs, char **args, const struct endpoints *http,
                    const char *mandi, const char *token, uint64_t deadline)
{
    const char *prefix = NULL;
    bool keys_only = false;
    unsigned long long want = 0;
    for (int k = 0; k < nargs; k++) {
        if (strcmp(args[k], "--keys-only") == 0) {
            keys_only = true;
        } else if (strcmp(args[k], "--limit") == 0 && k + 1 < nargs) {
            char *e;
            want = strtoull(args[++k], &e, 10);
            if (*e || want == 0 || args[k][0] == '-')
                return usage_error("bad --limit '%s'", args[k]);
        } else if (prefix == NULL) {
            prefix = args[k];
        } else {
            return usage_error("usage: list PREFIX [--limit N] "
                               "[--keys-only]%s",
                               "");
        }
    }
    if (prefix == NULL)
        return usage_error("usage: list PREFIX [--limit N] [--keys-only]%s",
                           "");
    struct pz_buf from, next, path, body, k, v;
    pz_buf_init(&from);
    pz_buf_init(&next);
    pz_buf_init(&path);
    pz_buf_init(&k);
    pz_buf_init(&v);
    pz_buf_append(&from, prefix, strlen(prefix));
    bool first = true;
    unsigned long long got = 0;
    uint64_t rev = 0;
    bool warned = false;
    int code = 0;
    for (;;) {
        pz_buf_reset(&path);
        pz_buf_appendf(&path, "/range?prefix=");
        http_pct_encode(&path, prefix, strlen(prefix));
        unsigned long long lim = HTTP_RANGE_LIMIT;
        if (want && want - got < lim)
            lim = want - got;
        pz_buf_appendf(&path, "&limit=%llu%s", lim,
                       keys_only ? "&keys_only=true" : "");
        if (!first) {
            pz_buf_appendf(&path, "&from=");
            http_pct_encode(&path, from.data, from.len);
        }
        pz_buf_append(&path, "", 1);
        int st = api_call("list", "GET", path.data, NULL, http, mandi, token,
                          deadline, &body);
        if (st < 0) {
            code = 1;
            break;
        }
        struct json_val root, kvs, item;
        if (st != 200) {
            code = api_failed("list", st, &body);
            pz_buf_free(&body);
            break;
        }
        if (json_parse(body.data, body.len, &root) < 0 ||
            !json_get(&root, "kvs", &kvs) || kvs.type != JSON_ARRAY) {
            fprintf(stderr, "pyazdb-cli: list: bad answer\n");
            pz_buf_free(&body);
            code = 1;
            break;
        }
        bool follow = false;
        code = list_page(&root, &kvs, first, &rev, &warned,
                         want ? want - got : ULLONG_MAX, &from, &follow, &next);
        if (code) {
            pz_buf_free(&body);
            break;
        }
        struct json_iter it;
        json_iter_init(&it, &kvs);
        while (json_iter_next(&it, NULL, &item)) {
            pz_buf_reset(&k);
            pz_buf_reset(&v);
            cli_json_bytes(&item, "key", &k);
            fwrite(k.data ? k.data : "", 1, k.len, stdout);
            if (!keys_only) {
                cli_json_bytes(&item, "value", &v);
                fputc('\t', stdout);
                fwrite(v.data ? v.data : "", 1, v.len, stdout);
            }
            fputc('\n', stdout);
            got++;
        }
        pz_buf_free(&body);
        if (!follow)
            break;
        pz_buf_reset(&from);
        pz_buf_append(&from, next.data, next.len);
        first = false;
    }
    pz_buf_free(&from);
    pz_buf_free(&next);
    pz_buf_free(&path);
    pz_buf_free(&k);
    pz_buf_free(&v);
    if (fflush(stdout) != 0)
        code = 1;
    return code;
}

/* The 412 answer of a conditional write, as one line on stderr. */
static int precondition_failed(const char *key, const struct pz_buf *body)
{
    struct json_val root, rev, cur, mr;
    uint64_t r = 0, m = 0;
    if (json_parse(body->data, body->len, &root) == 0 &&
        json_get(&root, "revision", &rev))
        json_u64(&rev, &r);
    if (json_get(&root, "current", &cur) && cur.type == JSON_OBJECT &&
        json_get(&cur, "mod_revision", &mr) && json_u64(&mr, &m) == 0)
        fprintf(stderr,
                "pyazdb-cli: precondition failed: '%s' was modified at "
                "revision %llu (current revision %llu)\n",
                key, (unsigned long long)m, (unsigned long long)r);
    else
        fprintf(stderr,
                "pyazdb-cli: precondition failed: '%s' does not exist "
                "(current revision %llu)\n",
                key, (unsigned long long)r);
    return 2;
}

/* The body of a POST /set of key = value with one more number member
 * (prev_revision, lease), into req (initialised here). */
static void set_body(struct pz_buf *req, const char *key, const char *value,
                     const char *member, unsigned long long n)
{
    pz_buf_init(req);
    pz_buf_appendf(req, "{\"key\":");
    put_json_string(req, key);
    pz_buf_appendf(req, ",\"value\":");
    put_json_string(req, value);
    pz_buf_appendf(req, ",\"%s\":%llu}", member, n);
}

/* set --if-revision N KEY VALUE (N = 0: only if KEY does not exist). */
static int cas_set_cmd(int nargs, char **args, const struct endpoints *http,
                       const char *mandi, const char *token, uint64_t deadline)
{
    char *e;
    if (nargs != 4 || strcmp(args[0], "--if-revision") != 0)
        return usage_error("usage: set --if-revision N KEY VALUE%s", "");
    unsigned long long n = strtoull(args[1], &e, 10);
    if (*e || args[1][0] == '\0' || args[1][0] == '-')
        return usage_error("bad revision '%s'", args[1]);
    struct pz_buf req, body;
    set_body(&req, args[2], args[3], "prev_revision", n);
    int st = api_call("set", "POST", "/set", &req, http, mandi, token, deadline,
                      &body);
    pz_buf_free(&req);
    if (st < 0)
        return 1;
    int code = 0;
    if (st == 204)
        printf("Set '%s' = '%s'\n", args[2], args[3]);
    else if (st == 412)
        code = precondition_failed(args[2], &body);
    else
        code = api_failed("set", st, &body);
    pz_buf_free(&body);
    return fflush(stdout) == 0 ? code : 1;
}

/* delete --prefix P */
static int delete_prefix_cmd(int nargs, char **args,
                             const struct endpoints *http, const char *mandi,
                             const char *token, uint64_t deadline)
{
    if (nargs != 2 || strcmp(args[0], "--prefix") != 0)
        return usage_error("usage: delete --prefix PREFIX%s", "");
    struct pz_buf req, body;
    pz_buf_init(&req);
    pz_buf_appendf(&req, "{\"prefix\":");
    put_json_string(&req, args[1]);
    pz_buf_append(&req, "}", 1);
    int st = api_call("delete", "POST", "/delete", &req, http, mandi, token,
                      deadline, &body);
    pz_buf_free(&req);
    if (st < 0)
        return 1;
    int code = 0;
    struct json_val root, d;
    uint64_t n;
    if (st == 200 && json_parse(body.data, body.len, &root) == 0 &&
        json_get(&root, "deleted", &d) && json_u64(&d, &n) == 0)
        printf("Deleted %llu key%s with prefix '%s'\n", (unsigned long long)n,
               n == 1 ? "" : "s", args[1]);
    else
        code = api_failed("delete", st, &body);
    pz_buf_free(&body);
    return fflush(stdout) == 0 ? code : 1;
}

/* txn FILE (or - for stdin): POST /txn with the file's JSON; print the
 * answer; exit 0 if the success branch ran, 2 if the failure branch did. */
static int txn_cmd(int nargs, char **args, const struct endpoints *http,
                   const char *mandi, const char *token, uint64_t deadline)
{
    if (nargs != 1)
        return usage_error("usage: txn FILE (JSON; - reads stdin)%s", "");
    FILE *f = strcmp(args[0], "-") == 0 ? stdin : fopen(args[0], "rb");
    if (f == NULL) {
        fprintf(stderr, "pyazdb-cli: txn: cannot open %s\n", args[0]);
        return 1;
    }
    struct pz_buf req, body;
    pz_buf_init(&req);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        pz_buf_append(&req, buf, n);
        if (req.len > HTTP_MAX_BODY) {
            fprintf(stderr, "pyazdb-cli: txn: %s is too large\n", args[0]);
            if (f != stdin)
                fclose(f);
            pz_buf_free(&req);
            return 1;
        }
    }
    if (f != stdin)
        fclose(f);
    int st = api_call("txn", "POST", "/txn", &req, http, mandi, token, deadline,
                      &body);
    pz_buf_free(&req);
    if (st < 0)
        return 1;
    int code;
    struct json_val root, ok;
    if (st == 200 && json_parse(body.data, body.len, &root) == 0 &&
        json_get(&root, "succeeded", &ok)) {
        fwrite(body.data, 1, body.len, stdout);
        code = ok.type == JSON_TRUE ? 0 : 2;
    } else {
        code = api_failed("txn", st, &body);
    }
    pz_buf_free(&body);
    return fflush(stdout) == 0 ? code : 1;
}

/* --- leases (HTTP) -------------------------------------------------------- */

/* A lease id argument: 1..2^53-1. */
static bool lease_arg(const char *a, uint64_t *id)
{
    char *e;
    if (a[0] < '0' || a[0] > '9')
        return false;
    unsigned long long n = strtoull(a, &e, 10);
    *id = n;
    return *e == '\0' && n >= 1 && n <= KV_LEASE_ID_MAX;
}

static uint64_t json_num(const struct json_val *o, const char *name)
{
    struct json_val v;
    uint64_t n = 0;
    if (json_get(o, name, &v))
        json_u64(&v, &n);
    return n;
}

/* set --lease ID KEY VALUE */
static int lease_set_cmd(int nargs, char **args, const struct endpoints *http,
                         const char *mandi, const char *token,
                         uint64_t deadline)
{
    uint64_t id;
    if (nargs != 4 || strcmp(args[0], "--lease") != 0)
        return usage_error("usage: set --lease ID KEY VALUE%s", "");
    if (!lease_arg(args[1], &id))
        return usage_error("bad lease id '%s'", args[1]);
    struct pz_buf req, body;
    set_body(&req, args[2], args[3], "lease", id);
    int st = api_call("set", "POST", "/set", &req, http, mandi, token, deadline,
                      &body);
    pz_buf_free(&req);
    if (st < 0)
        return 1;
    int code = 0;
    if (st == 204)
        printf("Set '%s' = '%s' (lease %llu)\n", args[2], args[3],
               (unsigned long long)id);
    else if (st == 404 && fprintf(stderr, "pyazdb-cli: lease %llu not "
                                          "found\n",
                                  (unsigned long long)id) > 0)
        code = 1;
    else
        code = api_failed("set", st, &body);
    pz_buf_free(&body);
    return fflush(stdout) == 0 ? code : 1;
}

/* One lease request: status and JSON body (NUL-terminated), or -1. */
static int lease_call(const char *what, const char *method, const char *path,
                      const struct pz_buf *req, const struct endpoints *http,
                      const char *mandi, const char *token, uint64_t deadline,
                      struct pz_buf *body, struct json_val *root)
{
    int st = api_call(what, method, path, req, http, mandi, token, deadline,
                      body);
    if (st == 200 && json_parse(body->data, body->len, root) < 0) {
        fprintf(stderr, "pyazdb-cli: %s: bad answer from the node\n", what);
        return -1;
    }
    return st;
}

/* lease grant|keepalive|revoke|ttl|list ... */
static int lease_cmd(int nargs, char **args, const struct endpoints *http,
                     const char *mandi, const char *token, uint64_t timeout_ms)
{
    if (nargs < 1)
        return usage_error("usage: lease grant|keepalive|revoke|ttl|list%s",
                           "");
    const char *sub = args[0];
    struct pz_buf req, body;
    struct json_val root;
    uint64_t id = 0, ttl = 0;
    bool follow = false, keys = false;
    char path[96];
    int st, code = 0;
    pz_buf_init(&req);
    pz_buf_init(&body);
    if (strcmp(sub, "grant") == 0) {
        char *e;
        if ((nargs != 2 && !(nargs == 4 && strcmp(args[2], "--id") == 0)) ||
            args[1][0] < '0' || args[1][0] > '9')
            return usage_error("usage: lease grant TTL [--id ID]%s", "");
        ttl = strtoull(args[1], &e, 10);
        if (*e || ttl == 0)
            return usage_error("bad TTL '%s' (seconds, > 0)", args[1]);
        if (nargs == 4 && !lease_arg(args[3], &id))
            return usage_error("bad lease id '%s'", args[3]);
        pz_buf_appendf(&req, "{\"ttl\":%llu", (unsigned long long)ttl);
        if (id)
            pz_buf_appendf(&req, ",\"id\":%llu", (unsigned long long)id);
        pz_buf_append(&req, "}", 1);
        st = lease_call("lease grant", "POST", "/lease/grant", &req, http,
                        mandi, token, now_ms() + timeout_ms, &body, &root);
        if (st == 200 && out_json)
            fwrite(body.data, 1, body.len, stdout);
        else if (st == 200)
            printf("Granted lease %llu with TTL %llus\n",
                   (unsigned long long)json_num(&root, "id"),
                   (unsigned long long)json_num(&root, "ttl"));
        else if (st >= 0)
            code = api_failed("lease grant", st, &body);
        else
            code = 1;
    } else if (strcmp(sub, "keepalive") == 0 || strcmp(sub, "revoke") == 0) {
        bool ka = sub[0] == 'k';
        if (ka && nargs == 3 && strcmp(args[2], "--follow") == 0)
            follow = true;
        else if (nargs != 2)
            return usage_error(ka ? "usage: lease keepalive ID [--follow]%s"
                                  : "usage: lease revoke ID%s",
                               "");
        if (!lease_arg(args[1], &id))
            return usage_error("bad lease id '%s'", args[1]);
        pz_buf_appendf(&req, "{\"id\":%llu}", (unsigned long long)id);
        const char *what = ka ? "lease keepalive" : "lease revoke";
        for (;;) {
            pz_buf_reset(&body);
            st = lease_call(what, "POST",
                            ka ? "/lease/keepalive" : "/lease/revoke", &req,
                            http, mandi, token, now_ms() + timeout_ms, &body,
                            &root);
            if (st == 404) {
                fprintf(stderr, "pyazdb-cli: lease %llu not found\n",
                        (unsigned long long)id);
                code = 1;
            } else if (st == 200 && out_json) {
                fwrite(body.data, 1, body.len, stdout);
            } else if (st == 200 && ka) {
                ttl = json_num(&root, "ttl");
                printf("Lease %llu kept alive, TTL %llus\n",
                       (unsigned long long)id, (unsigned long long)ttl);
            } else if (st == 200) {
                printf("Revoked lease %llu (%llu keys deleted)\n",
                       (unsigned long long)id,
                       (unsigned long long)json_num(&root, "deleted"));
            } else {
                code = st >= 0 ? api_failed(what, st, &body) : 1;
            }
            if (fflush(stdout) != 0)
                code = 1;
            if (!follow || st == 404)
                break;
            if (code) {
                /* no leader for now (a failover): try again soon; the
                 * new leader gives the lease its whole TTL */
                code = 0;
                sleep_ms(250);
                continue;
            }
            /* a third of the TTL, so two keep-alives may be lost */
            sleep_ms(PZ_MAX(ttl * 1000 / 3, (uint64_t)200));
        }
    } else if (strcmp(sub, "ttl") == 0 || strcmp(sub, "list") == 0) {
        bool list = sub[0] == 'l';
        if (list ? nargs != 1
                 : !(nargs == 2 ||
                     (nargs == 3 && strcmp(args[2], "--keys") == 0)))
            return usage_error(list ? "usage: lease list%s"
                                    : "usage: lease ttl ID [--keys]%s",
                               "");
        keys = nargs == 3;
        if (!list && !lease_arg(args[1], &id))
            return usage_error("bad lease id '%s'", args[1]);
        if (list)
            snprintf(path, sizeof path, "/leases");
        else
            snprintf(path, sizeof path, "/lease?id=%llu%s",
                     (unsigned long long)id, keys ? "&keys=true" : "");
        st = lease_call(list ? "lease list" : "lease ttl", "GET", path, NULL,
                        http, mandi, token, now_ms() + timeout_ms, &body,
                        &root);
        if (st == 404 && !list) {
            fprintf(stderr, "pyazdb-cli: lease %llu not found\n",
                    (unsigned long long)id);
            code = 1;
        } else if (st == 200 && out_json) {
            fwrite(body.data, 1, body.len, stdout);
        } else if (st == 200 && !list) {
            printf("Lease %llu: TTL %llus, %llus left, %llu keys\n",
                   (unsigned long long)id,
                   (unsigned long long)json_num(&root, "ttl"),
                   (unsigned long long)json_num(&root, "remaining"),
                   (unsigned long long)json_num(&root, "count"));
            struct json_val arr, item;
            if (keys && json_get(&root, "keys", &arr)) {
                struct json_iter it;
                json_iter_init(&it, &arr);
                while (json_iter_next(&it, NULL, &item)) {
                    struct pz_buf k;
                    pz_buf_init(&k);
                    if (cli_json_bytes(&item, "key", &k)) {
                        fwrite(k.data, 1, k.len, stdout);
                        putchar('\n');
                    }
                    pz_buf_free(&k);
                }
            }
        } else if (st == 200) {
            struct json_val arr, item;
            if (json_get(&root, "leases", &arr)) {
                struct json_iter it;
                json_iter_init(&it, &arr);
                while (json_iter_next(&it, NULL, &item))
                    printf("%llu\tttl=%llu\tremaining=%llu\tkeys=%llu\n",
                           (unsigned long long)json_num(&item, "id"),
                           (unsigned long long)json_num(&item, "ttl"),
                           (unsigned long long)json_num(&item, "remaining"),
                           (unsigned long long)json_num(&item, "count"));
            }
        } else {
            code = st >= 0 ? api_failed(sub, st, &body) : 1;
        }
    } else {
        return usage_error("unknown lease command '%s' (grant, keepalive, "
                           "revoke, ttl, list)", sub);
    }
    pz_buf_free(&req);
    pz_buf_free(&body);
    return fflush(stdout) == 0 ? code : 1;
}

static int set_output(const char *v)
{
    if (strcmp(v, "json") == 0)
        out_json = true;
    else if (strcmp(v, "text") == 0)
        out_json = false;
    else
        return -1;
    return 0;
}

/* -o FORMAT, --output FORMAT and --output=FORMAT among a command's
 * arguments (before a "--", which is dropped too) are taken out of
 * args[0..*nargs). Returns NULL, or the bad format (or option lacking
 * one). */
static const char *take_output(int *nargs, char **args)
{
    int n = 0, k = 0;
    for (; k < *nargs; k++) {
        const char *a = args[k];
        if (strcmp(a, "--") == 0) {
            k++;
            break;
        }
        if (strcmp(a, "-o") == 0 || strcmp(a, "--output") == 0) {
            if (k + 1 >= *nargs)
                return a;
            if (set_output(args[++k]) < 0)
                return args[k];
        } else if (strncmp(a, "--output=", 9) == 0) {
            if (set_output(a + 9) < 0)
                return a + 9;
        } else {
            args[n++] = args[k];
        }
    }
    for (; k < *nargs; k++)
        args[n++] = args[k];
    *nargs = n;
    return NULL;
}

/* watch: at the --http nodes, else at the leader mandi names. */
static int watch_cmd(int nargs, char **args, const struct endpoints *http,
                     size_t naddr, const char *mandi, const char *token,
                     uint64_t deadline)
{
    char err[512], target[MANDI_ADDR_MAX + 1];
    const char *one[1] = {target};
    if (naddr > 0)
        return usage_error("'watch' talks HTTP: use --http, not --addr%s",
                           "");
    if (http->n > 0)
        return cli_watch(nargs, args, http->v, http->n, token, &tls_cli_http,
                         out_json);
    if (mandi == NULL)
        mandi = getenv("MANDI_ADDR");
    if (mandi == NULL || mandi[0] == '\0')
        mandi = DEFAULT_MANDI;
    if (discover_field(mandi, "http_addr", deadline, target, sizeof target,
                       err, sizeof err, NULL) < 0) {
        fprintf(stderr, "pyazdb-cli: %s\n", err);
        return 1;
    }
    return cli_watch(nargs, args, one, 1, token, &tls_cli_http, out_json);
}

int main(int argc, char **argv)
{
    const char *mandi = NULL;
    const char *token = NULL, *token_file = NULL;
    static char file_token[512];
    struct endpoints addrs = {.n = 0}, https = {.n = 0};
    uint64_t timeout_ms = DEFAULT_TIMEOUT_MS;
    bool timeout_given = false;
    /* Ctrl-C ends `watch` and `lease keepalive --follow`, also when the
     * shell that started us in the background left SIGINT ignored. */
    signal(SIGINT, SIG_DFL);
    escape_stderr();
    const char *cacert = NULL, *cert = NULL, *key = NULL;
    bool tls = false;
    int i;
    pz_log_setup(PZ_LOG_ERROR, "pyazdb-cli");
    for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
        char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (strcmp(a, "--version") == 0) {
            printf("pyazdb-cli %s\n", PZ_VERSION);
            return 0;
        }
        if (strcmp(a, "--tls") == 0) {
            tls = true;
            continue;
        }
        char *val = NULL;
        size_t nl = strcspn(a, "=");
        if (a[nl] == '=')
            val = a + nl + 1;
        else if (i + 1 < argc &&
                 (strcmp(a, "--mandi") == 0 || strcmp(a, "--addr") == 0 ||
                  strcmp(a, "--endpoints") == 0 ||
                  strcmp(a, "--timeout") == 0 || strcmp(a, "--http") == 0 ||
                  strcmp(a, "--token") == 0 ||
                  strcmp(a, "--token-file") == 0 || strcmp(a, "-o") == 0 ||
                  strcmp(a, "--output") == 0 || strcmp(a, "--cacert") == 0 ||
                  strcmp(a, "--cert") == 0 || strcmp(a, "--key") == 0))
            val = argv[++i];
        if (strncmp(a, "--mandi", nl) == 0 && nl == 7 && val) {
            mandi = val;
        } else if (((strncmp(a, "--addr", nl) == 0 && nl == 6) ||
                    (strncmp(a, "--endpoints", nl) == 0 && nl == 11)) &&
                   val) {
            if (endpoints_add(&addrs, val) < 0)
                return usage_error("bad address list '%s' (HOST:PORT,...)",
                                   val);
        } else if (strncmp(a, "--http", nl) == 0 && nl == 6 && val) {
            if (endpoints_add(&https, val) < 0)
                return usage_error("bad address list '%s' (HOST:PORT,...)",
                                   val);
        } else if (strncmp(a, "--token", nl) == 0 && nl == 7 && val) {
            token = val;
        } else if (strncmp(a, "--token-file", nl) == 0 && nl == 12 && val) {
            token_file = val;
        } else if (strncmp(a, "--cacert", nl) == 0 && nl == 8 && val) {
            cacert = val;
            tls = true;
        } else if (strncmp(a, "--cert", nl) == 0 && nl == 6 && val) {
            cert = val;
            tls = true;
        } else if (strncmp(a, "--key", nl) == 0 && nl == 5 && val) {
            key = val;
            tls = true;
        } else if (((strncmp(a, "-o", nl) == 0 && nl == 2) ||
                    (strncmp(a, "--output", nl) == 0 && nl == 8)) &&
                   val) {
            if (set_output(val) < 0)
                return usage_error("bad output format '%s' (text or json)",
                                   val);
        } else if (strncmp(a, "--timeout", nl) == 0 && nl == 9 && val) {
            char *end;
            double s = strtod(val, &end);
            if (end == val || *end != '\0' || !(s > 0) || s > 86400)
                return usage_error("bad --timeout '%s' (seconds, > 0)", val);
            timeout_ms = (uint64_t)(s * 1000 + 0.5);
            timeout_given = true;
            if (timeout_ms == 0)
                timeout_ms = 1;
        } else {
            return usage_error("unknown or incomplete option '%s'", a);
        }
    }
    if (mandi && addrs.n > 0)
        return usage_error("--mandi and --addr%s exclude each other", "");
    if ((cert == NULL) != (key == NULL))
        return usage_error("--cert and --key go together%s", "");
    if (token && token_file)
        return usage_error("--token and --token-file exclude each other%s",
                           "");
    if (token_file) {
        if (read_token_file(token_file, file_token, sizeof file_token) < 0)
            return 1;
        token = file_token;
    }
    if (token == NULL)
        token = getenv("PYAZDB_TOKEN");
    if (token && token[0] == '\0')
        token = NULL;
    if (token) {
        grpc_authz = pz_malloc(strlen(token) + 8);
        sprintf(grpc_authz, "Bearer %s", token);
    }
    opt_cacert = cacert;
    opt_cert = cert;
    opt_key = key;
    if (tls) {
        char terr[512];
        struct tls_opts to = {.server = false,
                              .cert_file = cert ? cert : "",
                              .key_file = key ? key : "",
                              .ca_file = cacert ? cacert : "",
                              .alpn = "http/1.1"};
        int trv = tls_slot_load(&tls_cli_http, "http", &to, terr, sizeof terr);
        to.alpn = "h2";
        if (trv == 0)
            trv = tls_slot_load(&tls_cli_grpc, "grpc", &to, terr, sizeof terr);
        if (trv < 0) {
            fprintf(stderr, "pyazdb-cli: %s\n", terr);
            return 1;
        }
    }
    if (i >= argc)
        return usage_error("missing command%s", "");
    const char *cmd = argv[i++];
    int nargs = argc - i;
    char **args = argv + i;
    if (strcmp(cmd, "get") == 0 || strcmp(cmd, "status") == 0 ||
        strcmp(cmd, "members") == 0 || strcmp(cmd, "watch") == 0 ||
        strcmp(cmd, "lease") == 0) {
        const char *bad = take_output(&nargs, args);
        if (bad)
            return usage_error("bad output format '%s' (text or json)", bad);
    } else if (out_json) {
        return usage_error(
            "-o json: only get, status, members, lease and watch (not '%s')",
            cmd);
    }
    if (strcmp(cmd, "members") == 0 || strcmp(cmd, "remove") == 0 ||
        strcmp(cmd, "transfer") == 0) {
        if (nargs != (cmd[0] == 'm' ? 0 : 1))
            return usage_error("wrong number of arguments for '%s'", cmd);
        if (addrs.n > 0)
            return usage_error("'%s' talks HTTP: use --http, not --addr",
                               cmd);
        int rc = membership(cmd, nargs ? args[0] : NULL, &https, mandi,
                            token ? token : getenv("PYAZDB_TOKEN"),
                            now_ms() + timeout_ms);
        return rc;
    }
    if (strcmp(cmd, "snapshot") == 0) {
        if (addrs.n > 0)
            return usage_error("'snapshot' talks HTTP: use --http, not "
                               "--addr%s", "");
        /* Taking a large snapshot takes a while: here --timeout bounds
         * each wait (connecting, each read), 60 s unless given. The
         * first --http address is the node asked. */
        return snapshot_cmd(nargs, args, https.n > 0 ? https.v[0] : NULL,
                            mandi,
                            token ? token : getenv("PYAZDB_TOKEN"),
                            timeout_given ? timeout_ms : 60000);
    }
    const char *tok = token ? token : getenv("PYAZDB_TOKEN");
    if (strcmp(cmd, "watch") == 0)
        return watch_cmd(nargs, args, &https, addrs.n, mandi, tok,
                         now_ms() + timeout_ms);
    bool coord = strcmp(cmd, "list") == 0 || strcmp(cmd, "txn") == 0 ||
                 strcmp(cmd, "lease") == 0 ||
                 (strcmp(cmd, "set") == 0 && nargs > 0 &&
                  (strcmp(args[0], "--if-revision") == 0 ||
                   strcmp(args[0], "--lease") == 0)) ||
                 (strcmp(cmd, "delete") == 0 && nargs > 0 &&
                  strcmp(args[0], "--prefix") == 0);
    if (coord && addrs.n > 0)
        return usage_error("'%s' talks HTTP: use --http, not --addr", cmd);
    if (strcmp(cmd, "list") == 0)
        return list_cmd(nargs, args, &https, mandi, tok, now_ms() + timeout_ms);
    if (strcmp(cmd, "txn") == 0)
        return txn_cmd(nargs, args, &https, mandi, tok, now_ms() + timeout_ms);
    if (strcmp(cmd, "lease") == 0)
        return lease_cmd(nargs, args, &https, mandi, tok, timeout_ms);
    if (coord && cmd[0] == 's' && strcmp(args[0], "--lease") == 0)
        return lease_set_cmd(nargs, args, &https, mandi, tok,
                             now_ms() + timeout_ms);
    if (coord && cmd[0] == 's')
        return cas_set_cmd(nargs, args, &https, mandi, tok,
                           now_ms() + timeout_ms);
    if (coord)
        return delete_prefix_cmd(nargs, args, &https, mandi, tok,
                                 now_ms() + timeout_ms);
    const char *path;
    struct pz_buf msg;
    pz_buf_init(&msg);
    if (strcmp(cmd, "get") == 0 && nargs == 1) {
        path = "/kv.KVService/Get";
    } else if (strcmp(cmd, "set") == 0 && nargs == 2) {
        path = "/kv.KVService/Set";
    } else if (strcmp(cmd, "delete") == 0 && nargs == 1) {
        path = "/kv.KVService/Delete";
    } else if (strcmp(cmd, "status") == 0 && nargs == 0) {
        path = "/pyazdb.Cluster/Status";
    } else if (strcmp(cmd, "get") == 0 || strcmp(cmd, "set") == 0 ||
               strcmp(cmd, "delete") == 0 || strcmp(cmd, "status") == 0) {
        return usage_error("wrong number of arguments for '%s'", cmd);
    } else {
        return usage_error("unknown command '%s'", cmd);
    }
    if (path[1] == 'k') {
        struct grpc_kv_req q = {
            .kind = cmd[0] == 'g'   ? GRPC_KV_GET
                    : cmd[0] == 's' ? GRPC_KV_SET
                                    : GRPC_KV_DEL,
            .key = (const uint8_t *)args[0],
            .klen = strlen(args[0]),
            .value = (const uint8_t *)(nargs > 1 ? args[1] : ""),
            .vlen = nargs > 1 ? strlen(args[1]) : 0,
        };
        grpc_kv_req_encode(&msg, &q);
    }

    uint64_t deadline = now_ms() + timeout_ms;
    char err[512], target[MANDI_ADDR_MAX + 1], addr[MANDI_ADDR_MAX + 1];
    if (addrs.n == 0) {
        if (mandi == NULL)
            mandi = getenv("MANDI_ADDR");
        if (mandi == NULL || mandi[0] == '\0')
            mandi = DEFAULT_MANDI;
    }
    /* Retried on what says "no node served it", never on an answer. */
    struct retry r = {.deadline = deadline,
                      .backoff = BACKOFF_FIRST_MS,
                      .n = addrs.n};
    struct cli_call c;
    size_t tries = 0;
    bool learned = false;
    int rv;
    for (;;) {
        bool again = false;
        tries++;
        if (addrs.n > 0) {
            snprintf(target, sizeof target, "%s", addrs.v[r.attempts % r.n]);
        } else if (discover(mandi, deadline, target, sizeof target, err,
                            sizeof err, &again) < 0) {
            rv = -1;
            if (again && retry_next(&r))
                continue;
            break;
        }
        if (resolve_addr(target, addr, sizeof addr, err, sizeof err) < 0) {
            rv = -1;
            if (addrs.n > 1 && retry_next(&r))
                continue; /* a name that does not resolve: the next */
            break;
        }
        rv = rpc(addr, path, msg.data ? msg.data : "", msg.len,
                 attempt_deadline(&r), &c, err, sizeof err);
        if (rv < 0)
            break; /* refused at once: the message or the address */
        if (c.call.status != GRPC_UNAVAILABLE &&
            c.call.status != GRPC_DEADLINE_EXCEEDED)
            break; /* answered */
        snprintf(err, sizeof err, "%s failed: %s: %s", cmd,
                 grpc_status_name(c.call.status), c.call.message);
        if (!learned && addrs.n > 0 && c.call.status == GRPC_UNAVAILABLE &&
            !c.call.unsent) {
            /* A live node that cannot serve now: the others may. */
            learned = true;
            learn_members(addr, &addrs, deadline);
            r.n = addrs.n;
        }
        if (!retry_next(&r))
            break;
        grpc_call_reset(&c.call);
    }
    pz_buf_free(&msg);
    if (rv < 0 || (tries > 1 && (c.call.status == GRPC_UNAVAILABLE ||
                                 c.call.status == GRPC_DEADLINE_EXCEEDED))) {
        if (tries > 1)
            fprintf(stderr, "pyazdb-cli: %s (%zu attempts in %.1f s)\n", err,
                    tries, (double)(now_ms() + timeout_ms - deadline) / 1000);
        else
            fprintf(stderr, "pyazdb-cli: %s\n", err);
        if (rv == 0)
            grpc_call_reset(&c.call);
        return 1;
    }
    int code = 0;
    if (c.call.status != GRPC_OK) {
        fprintf(stderr, "pyazdb-cli: %s failed: %s: %s\n", cmd,
                grpc_status_name(c.call.status), c.call.message);
        code = 1;
    } else if (cmd[0] == 'g') {
        const uint8_t *v;
        size_t vl;
        bool found;
        if (grpc_kv_get_resp_decode((uint8_t *)c.call.resp.data,
                                    c.call.resp.len, &v, &vl, &found) < 0) {
            fprintf(stderr, "pyazdb-cli: get: bad response from %s\n", addr);
            code = 1;
        } else if (out_json) {
            struct pz_buf b;
            pz_buf_init(&b);
            size_t kl = strlen(args[0]);
            bool ku = pz_utf8_valid(args[0], kl);
            pz_buf_appendf(&b, "{\"%s\":", ku ? "key" : "key_b64");
            if (ku) {
                json_put_string(&b, args[0], kl);
            } else {
                pz_buf_append(&b, "\"", 1);
                http_b64_encode(&b, args[0], kl);
                pz_buf_append(&b, "\"", 1);
            }
            pz_buf_appendf(&b, ",\"found\":%s", found ? "true" : "false");
            if (found && pz_utf8_valid(v, vl)) {
                pz_buf_appendf(&b, ",\"value\":");
                json_put_string(&b, v, vl);
            } else if (found) {
                pz_buf_appendf(&b, ",\"value_b64\":\"");
                http_b64_encode(&b, v, vl);
                pz_buf_append(&b, "\"", 1);
            }
            pz_buf_append(&b, "}", 1);
            put_doc(&b);
            code = found ? 0 : 1;
        } else if (!found) {
            printf("Key '%s' not found\n", args[0]);
            code = 1;
        } else {
            fwrite(v, 1, vl, stdout);
            fputc('\n', stdout);
        }
    } else if (cmd[0] == 's' && cmd[1] == 'e') {
        printf("Set '%s' = '%s'\n", args[0], args[1]);
    } else if (cmd[0] == 'd') {
        printf("Deleted '%s'\n", args[0]);
    } else {
        print_status(target, &c.call);
    }
    grpc_call_reset(&c.call);
    if (fflush(stdout) != 0)
        code = 1;
    return code;
}
