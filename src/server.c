/* server.c - server mode: one loop for everything (Redis style).
 *
 * Each loop turn ends in the prepare hook (libuv's beforeSleep): the node
 * does its work and completes requests, then every connection's output is
 * flushed and closed connections are reaped. When work remains, an idle
 * handle keeps the next poll from blocking.
 *
 * Shutdown (SIGINT/SIGTERM): stop accepting, close idle connections, let
 * requests in flight finish and flush their replies (at most
 * SHUTDOWN_GRACE_MS), then close every handle so that uv_loop_close()
 * succeeds; a second signal exits at once (a first one while the server
 * stops by itself, server_stop, lets that finish).
 *
 * Start: the listen addresses are tried and the data directory checked
 * before the node opens or creates any state, so that a start that fails
 * on a busy port or a read-only directory leaves nothing behind. Once the
 * node has loaded its state and listens, the service manager is told
 * READY=1 (sdnotify.h), and STOPPING=1 when a shutdown begins.
 *
 * Reload (SIGHUP): the configuration is read again and what can change
 * in a running process is applied (reload.h): log-level, log-file,
 * max-clients, the client timeouts, and the TLS certificates and keys,
 * which are read again (tls_setup.h). */
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "conn.h"
#include "etcd.h"
#include "etcd_gateway.h"
#include "fwd.h"
#include "grpc.h"
#include "http.h"
#include "http_watch.h"
#include "log.h"
#include "node.h"
#include "reload.h"
#include "sdnotify.h"
#include "stats.h"
#include "tls_setup.h"

#define SHUTDOWN_GRACE_MS 5000
#define CRON_MS 250 /* connection housekeeping: deadlines fire this late */
/* Descriptors a node keeps for itself beside its clients' connections
 * (conn_fit_fds): its own files (the store's three, the log, a snapshot
 * being written or read for a follower, the loop's own), its peers'
 * links (up to 64 in their handshake, 16 from unknown ids, one each way
 * per member), the links it forwards requests on to the leader (32),
 * mandi's and the JSON gateway's, with room to spare; plus one per
 * snapshot being sent to a client (snapshot-max-streams). */
#define NODE_FD_RESERVE 256

struct server {
    uv_loop_t loop;                  /* the one loop */
    const struct pz_config *cfg;     /* borrowed from main */
    uv_prepare_t prepare;            /* before-sleep hook */
    uv_idle_t idle;                  /* keeps poll from blocking */
    uv_timer_t cron;                 /* CRON_MS housekeeping */
    uv_timer_t grace;                /* shutdown deadline */
    uv_signal_t sigint, sigterm;     /* shutdown requests */
    struct reload_hup hup;           /* reload requests */
    struct reload reload;            /* the configuration in effect */
    struct httpd http;               /* HTTP API */
    struct grpc_server grpc;         /* gRPC API */
    uint64_t start_ms;               /* uv_now() at start */
    bool shutting_down;              /* a signal, or server_stop */
    bool signalled;                  /* SIGINT or SIGTERM arrived */
    bool stopped;                    /* handles closed */
    bool reload_applying;            /* apply_config from a reload */
    size_t max_clients;              /* max-clients as the fds allow */
    uint64_t turn_at;                /* uv_hrtime() of the last turn's end */
    uint64_t turn_idle;              /* uv_metrics_idle_time() then */
};

static struct server srv;

static void on_node_closed(void)
{
    uv_close((uv_handle_t *)&srv.prepare, NULL);
    uv_close((uv_handle_t *)&srv.idle, NULL);
    uv_close((uv_handle_t *)&srv.cron, NULL);
    uv_close((uv_handle_t *)&srv.grace, NULL);
    uv_close((uv_handle_t *)&srv.sigint, NULL);
    uv_close((uv_handle_t *)&srv.sigterm, NULL);
    reload_hup_close(&srv.hup);
}

static void stop_all(void)
{
    if (srv.stopped)
        return;
    srv.stopped = true;
    fwd_close_all(); /* forwards made while draining: their timers close */
    etcd_gw_close();
    http_watch_close();
    grpc_close(&srv.grpc);
    node_close(on_node_closed);
}

static void on_idle(uv_idle_t *h)
{
    PZ_UNUSED(h);
}

/* Before each wait for events: count the turn that ends here (its time
 * less the time it waited). */
static void loop_turn(void)
{
    uint64_t now = uv_hrtime(), idle = uv_metrics_idle_time(&srv.loop);
    uint64_t span = now - srv.turn_at, waited = idle - srv.turn_idle;
    if (srv.turn_at && waited <= span)
        stats_loop_turn(span - waited);
    srv.turn_at = now;
    srv.turn_idle = idle;
}

static void on_prepare(uv_prepare_t *h)
{
    PZ_UNUSED(h);
    loop_turn();
    node_before_sleep();
    conn_before_sleep();
    if (node_write_now())
        conn_before_sleep(); /* what the write let go (acknowledgements) */
    if (srv.shutting_down && srv.http.ls.n_conns == 0 &&
        grpc_quiet(&srv.grpc) && !node_has_work()) {
        stop_all();
        return;
    }
    if (node_has_work() || conn_has_work())
        uv_idle_start(&srv.idle, on_idle);
    else
        uv_idle_stop(&srv.idle);
}

static void on_cron(uv_timer_t *t)
{
    PZ_UNUSED(t);
    conn_cron();
    http_watch_cron();
    etcd_gw_cron();
    etcd_watch_cron();
}

static void on_grace(uv_timer_t *t)
{
    PZ_UNUSED(t);
    pz_warn("shutdown: closing connections still busy after %d ms",
            SHUTDOWN_GRACE_MS);
    conn_listener_close_all(&srv.http.ls);
    conn_listener_close_all(&srv.grpc.ls);
    fwd_close_all();
}

static void begin_shutdown(void)
{
    srv.shutting_down = true;
    sdnotify("STOPPING=1");
    node_drain();
    http_drain(&srv.http);
    grpc_drain(&srv.grpc);
    fwd_close_all();
    uv_timer_start(&srv.grace, on_grace, SHUTDOWN_GRACE_MS, 0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    PZ_UNUSED(h);
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
    if (srv.signalled) {
        pz_warn("second signal %d: exiting now", signum);
        exit(1);
    }
    srv.signalled = true;
    if (srv.shutting_down) {
        /* Stopping by itself (server_stop: removed from the cluster...):
         * the first signal lets that shutdown finish. */
        pz_info("received %s while shutting down: finishing", name);
        return;
    }
    pz_info("received %s, shutting down", name);
    begin_shutdown();
}

/* Protected mode's answer to a client from elsewhere: one line saying how
 * to open the node up, as an HTTP reply, and for gRPC as the debug data
 * of an HTTP/2 GOAWAY (INADEQUATE_SECURITY) after the server preface. */
#define PROTECTED_LINE                                                       \
    "protected mode: this node serves clients on loopback only, having "   \
    "no TLS and no client authentication; set 'protected-mode no', or "    \
    "configure tls-cert-file and tls-key-file, or client-token-file "     \
    "(see the README's TLS section)\n"
static const char protected_http[] =
    "HTTP/1.1 403 Forbidden\r\n"
    "Content-Type: text/plain\r\n"
    "Connection: close\r\n\r\n" PROTECTED_LINE;
static char protected_grpc[9 + 9 + 8 + sizeof PROTECTED_LINE];

static void set_protected(struct conn_listener *ls, bool on, bool grpc)
{
    ls->loopback_only = on;
    if (!grpc) {
        ls->refusal = protected_http;
        ls->refusal_len = sizeof protected_http - 1;
        return;
    }
    /* SETTINGS (empty), then GOAWAY: last stream 0, error 0xc, the line. */
    size_t dlen = sizeof PROTECTED_LINE - 1, plen = 8 + dlen;
    unsigned char *p = (unsigned char *)protected_grpc;
    memset(p, 0, sizeof protected_grpc);
    p[3] = 0x4;
    p += 9;
    p[0] = (unsigned char)(plen >> 16);
    p[1] = (unsigned char)(plen >> 8);
    p[2] = (unsigned char)plen;
    p[3] = 0x7;
    p[9 + 7] = 0xc;
    memcpy(p + 9 + 8, PROTECTED_LINE, dlen);
    ls->refusal = protected_grpc;
    ls->refusal_len = 9 + 9 + plen;
}

/* max-clients for the HTTP and the gRPC port, as many as the open-files
 * limit holds beside NODE_FD_RESERVE (conn_fit_fds), into srv.max_clients.
 * Returns 0 or PZ_ECONFIG (err says why; srv.max_clients unchanged). */
static int fit_clients(const struct pz_config *c, char *err, size_t errlen)
{
    size_t per;
    int rv = conn_fit_fds((size_t)c->max_clients, 2,
                          NODE_FD_RESERVE + (size_t)c->snapshot_max_streams,
                          &per, err, errlen);
    if (rv == 0)
        srv.max_clients = per;
    return rv;
}

/* Put the values a reload may change in place (reload_apply_cb); on a
 * reload, read the TLS and token files again and say which of them could
 * not be put in place. */
static struct reload_refused apply_config(const struct pz_config *c, void *arg)
{
    PZ_UNUSED(arg);
    struct reload_refused no = {0, 0};
    pz_log_setup((enum pz_log_level)c->log_level, NULL);
    conn_set_idle_timeout((uint64_t)c->client_idle_timeout_ms);
    if (srv.reload_applying) {
        char err[300];
        if (fit_clients(c, err, sizeof err) < 0)
            pz_warn("max-clients stays %zu: %s", srv.max_clients, err);
    }
    srv.http.ls.max_conns = srv.max_clients;
    srv.http.o.max_clients = srv.max_clients;
    srv.http.o.header_timeout_ms = (uint64_t)c->client_header_timeout_ms;
    srv.http.o.body_timeout_ms = (uint64_t)c->client_body_timeout_ms;
    srv.grpc.ls.max_conns = srv.max_clients;
    srv.grpc.header_timeout = (uint64_t)c->client_header_timeout_ms;
    srv.grpc.body_timeout = (uint64_t)c->client_body_timeout_ms;
    srv.http.ls.send_timeout = (uint64_t)c->client_body_timeout_ms;
    srv.grpc.ls.send_timeout = (uint64_t)c->client_body_timeout_ms;
    srv.http.ls.handshake_ms = (uint64_t)c->client_header_timeout_ms;
    srv.grpc.ls.handshake_ms = (uint64_t)c->client_header_timeout_ms;
    if (srv.reload_applying) {
        int tls = tls_setup_load(c, true, NULL, 0);
        if (tls & TLS_SETUP_FAILED)
            no.failed |= RELOAD_TLS;
        if (tls & TLS_SETUP_RESTART)
            no.restart |= RELOAD_TLS;
        if (tls & TLS_SETUP_PEER_FAILED)
            no.failed |= RELOAD_PEER_TLS;
        if (tls & TLS_SETUP_PEER_RESTART)
            no.restart |= RELOAD_PEER_TLS;
        bool tokens = c->client_token_file[0] != '\0';
        if (tokens != auth_on())
            no.restart |= RELOAD_TOKENS; /* auth_load says so */
        if (auth_load(c, true, NULL, 0) < 0)
            no.failed |= RELOAD_TOKENS;
    }
    /* Client tokens count as client authentication. */
    bool open_tls = tls_slot_on(&tls_http) || auth_on();
    set_protected(&srv.http.ls, c->protected_mode && !open_tls, false);
    set_protected(&srv.grpc.ls, c->protected_mode && !open_tls, true);
    return no;
}

/* The reload a burst of SIGHUPs asks for (reload_hup). */
static void on_hups(unsigned hups)
{
    if (srv.shutting_down) {
        pz_info("received SIGHUP while shutting down: ignored");
        return;
    }
    reload_hup_log(hups);
    srv.reload_applying = true;
    reload_run(&srv.reload, apply_config, NULL);
    srv.reload_applying = false;
}

/* Can addr ("host:port", as conn_listen() takes it) be bound now? Bound
 * as libuv binds (SO_REUSEADDR), then closed at once: a port another
 * process listens on, or an address this machine does not have, fails
 * here before any state is made. */
static int try_bind(const char *what, const char *addr, char *err,
                    size_t errlen)
{
    char host[256];
    int port;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (pz_split_hostport(addr, host, sizeof host, &port) < 0)
        return 0; /* conn_listen reports it */
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    socklen_t len = sizeof(struct sockaddr_in);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0) {
        if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
            return 0; /* conn_listen reports it */
        len = sizeof(struct sockaddr_in6);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int on = 1, rv = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
        rv = -errno;
        snprintf(err, errlen, "%s: cannot listen on %s: %s%s", what, addr,
                 strerror(errno),
                 errno == EADDRINUSE ? " (is another server running?)" : "");
    }
    close(fd);
    return rv;
}

/* The data directory, if it exists, must be writable by this process (and
 * so must raft.db in it), else SQLite says only "unable to open database
 * file". A directory still to be created is store_open's business. */
static int check_data_dir(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) < 0)
        return 0;
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "raft-data %s is not a directory", dir);
        return PZ_EINVAL;
    }
    char db[4096];
    snprintf(db, sizeof db, "%s/raft.db", dir);
    const char *bad = NULL;
    if (access(dir, W_OK | X_OK) < 0 && errno == EACCES)
        bad = dir;
    else if (access(db, R_OK | W_OK) < 0 && errno == EACCES)
        bad = db;
    if (bad) {
        snprintf(err, errlen,
                 "raft-data: %.300s is not writable by this process (uid %u, "
                 "gid %u): check its owner and permissions",
                 bad, (unsigned)geteuid(), (unsigned)getegid());
        return PZ_EINVAL;
    }
    return 0;
}

void server_stop(const char *why)
{
    if (srv.shutting_down)
        return;
    pz_info("%s, shutting down", why);
    begin_shutdown();
}

int server_run(const struct pz_config *cfg)
{
    char err[512];
    int rv;
    memset(&srv, 0, sizeof srv);
    srv.cfg = cfg;
    /* Before anything is opened or created. */
    rv = check_data_dir(cfg->raft_data, err, sizeof err);
    if (rv == 0)
        rv = try_bind("raft", cfg->raft_addr, err, sizeof err);
    if (rv == 0)
        rv = try_bind("http", cfg->http_addr, err, sizeof err);
    if (rv == 0)
        rv = try_bind("grpc", cfg->grpc_addr, err, sizeof err);
    if (rv == 0 && tls_setup_load(cfg, false, err, sizeof err) < 0)
        rv = PZ_ECONFIG;
    if (rv == 0)
        rv = auth_load(cfg, false, err, sizeof err);
    if (rv == 0)
        rv = fit_clients(cfg, err, sizeof err);
    if (rv < 0) {
        pz_error("%s", err);
        tls_setup_free();
        auth_free();
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    uv_loop_init(&srv.loop);
    uv_loop_configure(&srv.loop, UV_METRICS_IDLE_TIME); /* loop_turn */
    srv.start_ms = uv_now(&srv.loop);
    struct conn_limits lim = {
        .high_water = (size_t)cfg->conn_high_water,
        .hard_limit = (size_t)cfg->conn_hard_limit,
        .idle_timeout = (uint64_t)cfg->client_idle_timeout_ms,
        .max_partial_input = (size_t)cfg->max_partial_input,
        .max_pending_output = (size_t)cfg->max_pending_output,
    };
    conn_setup(&srv.loop, &lim);
    uv_prepare_init(&srv.loop, &srv.prepare);
    uv_prepare_start(&srv.prepare, on_prepare);
    uv_idle_init(&srv.loop, &srv.idle);
    uv_timer_init(&srv.loop, &srv.cron);
    uv_timer_init(&srv.loop, &srv.grace);
    uv_signal_init(&srv.loop, &srv.sigint);
    uv_signal_init(&srv.loop, &srv.sigterm);
    uv_signal_start(&srv.sigint, on_signal, SIGINT);
    uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
    reload_hup_init(&srv.hup, &srv.loop, on_hups);
    reload_init(&srv.reload, cfg);
    /* Idle timeouts and request deadlines are checked on this tick. */
    uv_timer_start(&srv.cron, on_cron, CRON_MS, CRON_MS);
    uv_unref((uv_handle_t *)&srv.cron);

    /* A forwarded request waits on the leader, which gives up on the
     * cluster after request-timeout (twice, for one that first waits for
     * an election): past that the leader is not answering. */
    fwd_setup(&srv.loop, 2 * (uint64_t)cfg->request_timeout_ms + 1000);
    rv = node_init(&srv.loop, cfg, server_stop, err, sizeof err);
    if (rv == 0)
        rv = http_start(&srv.http, cfg, srv.start_ms, err, sizeof err);
    if (rv == 0)
        rv = grpc_start(&srv.grpc, &srv.loop, cfg, NULL, err, sizeof err);
    if (rv == 0) {
        /* Every connection accepted from here on speaks TLS if set. */
        srv.http.ls.tls = &tls_http;
        srv.grpc.ls.tls = &tls_grpc;
        apply_config(cfg, NULL);
    }
    if (rv < 0) {
        pz_error("%s", err);
        srv.shutting_down = true;
        http_drain(&srv.http);
        grpc_drain(&srv.grpc);
        stop_all();
        uv_run(&srv.loop, UV_RUN_DEFAULT);
        uv_loop_close(&srv.loop);
        reload_free(&srv.reload);
        tls_setup_free();
        auth_free();
        return 1;
    }
    pz_info("pyazdb %s node %s: HTTP%s on %s, gRPC%s on %s", PZ_VERSION,
            cfg->node_id, tls_slot_on(&tls_http) ? "S" : "", cfg->http_addr,
            tls_slot_on(&tls_grpc) ? " over TLS" : "", cfg->grpc_addr);
    if (cfg->protected_mode && !tls_slot_on(&tls_http) && !auth_on())
        pz_info("protected mode: HTTP and gRPC serve clients on loopback "
                "only (no TLS); 'protected-mode no' serves every client");
    char ready[700];
    snprintf(ready, sizeof ready,
             "READY=1\nSTATUS=node %s: HTTP on %s, gRPC on %s", cfg->node_id,
             cfg->http_addr, cfg->grpc_addr);
    sdnotify(ready);
    uv_run(&srv.loop, UV_RUN_DEFAULT);
    reload_free(&srv.reload);
    tls_setup_free();
    auth_free();
    rv = uv_loop_close(&srv.loop);
    if (rv != 0) {
        pz_error("loop did not close cleanly: %s", uv_strerror(rv));
        return 1;
    }
    pz_info("stopped");
    return 0;
}
