/* stats.c - the process's metrics and the GET /metrics page (stats.h).
 *
 * Happy path: stats_init at startup -> the loop counts requests and
 * connections as they happen (a linear lookup among a few series, one
 * histogram observation) -> a scrape renders every family, reads /proc for
 * the process figures and runs the collectors.
 *
 * Failure modes: /proc unreadable (not Linux, a sandbox) leaves those
 * process_* figures out of the page; nothing else can fail (allocation
 * failure aborts, as everywhere). */
#include "stats.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "commit.h"

#define MAX_COLLECTORS 4

static struct {
    bool on;                              /* stats_init ran */
    double started_unix;                  /* process start (epoch seconds) */
    struct metrics_family requests;       /* api, method, code */
    struct metrics_family latency;        /* api, method */
    struct metrics_family connected;      /* listener */
    struct metrics_family accepted;       /* listener */
    struct metrics_family rejected;       /* listener, reason */
    struct metrics_family loop_busy;      /* no labels */
    stats_collect_cb cbs[MAX_COLLECTORS]; /* collectors */
    void *args[MAX_COLLECTORS];           /* their arguments */
    size_t n_cbs;                         /* their number */
} st;

static const char *const lbl_req[] = {"api", "method", "code", NULL};
static const char *const lbl_lat[] = {"api", "method", NULL};
static const char *const lbl_ls[] = {"listener", NULL};
static const char *const lbl_rej[] = {"listener", "reason", NULL};
static const char *const lbl_none[] = {NULL};

void stats_init(double started_unix)
{
    if (st.on)
        return;
    st.on = true;
    st.started_unix = started_unix;
    metrics_family_init(&st.requests, "pyazdb_requests_total", METRICS_COUNTER,
                        "Requests answered, by API, method and result code.",
                        lbl_req, NULL, 0);
    metrics_family_init(&st.latency, "pyazdb_request_duration_seconds",
                        METRICS_HISTOGRAM,
                        "Time from a complete request to its answer, by API "
                        "and method.",
                        lbl_lat, metrics_latency_bounds, metrics_latency_n);
    metrics_family_init(&st.connected, "pyazdb_clients_connected",
                        METRICS_GAUGE, "Open client connections, by listener.",
                        lbl_ls, NULL, 0);
    metrics_family_init(
        &st.accepted, "pyazdb_clients_accepted_total", METRICS_COUNTER,
        "Client connections accepted, by listener.", lbl_ls, NULL, 0);
    metrics_family_init(&st.rejected, "pyazdb_clients_rejected_total",
                        METRICS_COUNTER,
                        "Client connections refused or evicted at "
                        "max-clients, by listener and reason.",
                        lbl_rej, NULL, 0);
    metrics_family_init(&st.loop_busy, "pyazdb_loop_busy_seconds",
                        METRICS_HISTOGRAM,
                        "Time each turn of the event loop spent working "
                        "rather than waiting: a long turn delays every "
                        "client and the node's heartbeats.",
                        lbl_none, metrics_latency_bounds, metrics_latency_n);
}

void stats_close(void)
{
    if (!st.on)
        return;
    metrics_family_free(&st.requests);
    metrics_family_free(&st.latency);
    metrics_family_free(&st.connected);
    metrics_family_free(&st.accepted);
    metrics_family_free(&st.rejected);
    metrics_family_free(&st.loop_busy);
    memset(&st, 0, sizeof st);
}

void stats_add_collector(stats_collect_cb cb, void *arg)
{
    pz_assert(st.n_cbs < MAX_COLLECTORS);
    st.cbs[st.n_cbs] = cb;
    st.args[st.n_cbs++] = arg;
}

uint64_t stats_now_ns(void)
{
    return uv_hrtime();
}

void stats_request(const char *api, const char *method, const char *code,
                   uint64_t started_ns)
{
    if (!st.on)
        return;
    metrics_inc(
        metrics_get(&st.requests, (const char *const[]){api, method, code}), 1);
    if (started_ns) {
        double s = (double)(uv_hrtime() - started_ns) / 1e9;
        metrics_observe(
            metrics_get(&st.latency, (const char *const[]){api, method}), s);
    }
}

void stats_request_http(const char *api, const char *method, int status,
                        uint64_t started_ns)
{
    /* Three digits without printf: this runs for every request. */
    char code[12];
    if (status >= 100 && status <= 999) {
        code[0] = (char)('0' + status / 100);
        code[1] = (char)('0' + status / 10 % 10);
        code[2] = (char)('0' + status % 10);
        code[3] = 0;
    } else {
        snprintf(code, sizeof code, "%d", status);
    }
    stats_request(api, method, code, started_ns);
}

void stats_loop_turn(uint64_t busy_ns)
{
    if (st.on)
        metrics_observe(metrics_get(&st.loop_busy, lbl_none),
                        (double)busy_ns / 1e9);
}

void stats_conn(const char *listener, enum stats_conn_event ev)
{
    if (!st.on)
        return;
    const char *const l[] = {listener};
    switch (ev) {
    case STATS_CONN_ACCEPTED:
        metrics_inc(metrics_get(&st.accepted, l), 1);
        metrics_inc(metrics_get(&st.connected, l), 1);
        break;
    case STATS_CONN_CLOSED:
        metrics_inc(metrics_get(&st.connected, l), -1);
        break;
    case STATS_CONN_REFUSED:
        metrics_inc(metrics_get(&st.rejected,
                                (const char *const[]){listener, "refused"}),
                    1);
        break;
    case STATS_CONN_EVICTED:
        metrics_inc(metrics_get(&st.rejected,
                                (const char *const[]){listener, "evicted"}),
                    1);
        break;
    }
}

/* --- process figures (Linux /proc) ---------------------------------------- */

static void render_process(struct pz_buf *b)
{
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        char line[1024];
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = 0;
        /* Fields after the command name (which may hold blanks and
         * parentheses: skip to the last ')'), from field 3 on. */
        char *p = strrchr(line, ')');
        unsigned long utime, stime, vsize;
        long rss;
        if (p && sscanf(p + 1,
                        " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu"
                        " %*d %*d %*d %*d %*d %*d %*u %lu %ld",
                        &utime, &stime, &vsize, &rss) == 4) {
            double hz = (double)sysconf(_SC_CLK_TCK);
            double page = (double)sysconf(_SC_PAGESIZE);
            metrics_render_one(b, "process_cpu_seconds_total", METRICS_COUNTER,
                               "Total user and system CPU time spent in "
                               "seconds.",
                               (double)(utime + stime) / hz);
            metrics_render_one(b, "process_virtual_memory_bytes", METRICS_GAUGE,
                               "Virtual memory size in bytes.", (double)vsize);
            metrics_render_one(b, "process_resident_memory_bytes",
                               METRICS_GAUGE, "Resident memory size in bytes.",
                               (double)rss * page);
        }
    }
    /* Counting descriptors costs one directory entry each (10,000 with as
     * many clients): at most once a second, however often /metrics is
     * asked for (it needs no token on mandi). */
    static uint64_t fds_at; /* CLOCK_MONOTONIC ns of the last count, 0 */
    static size_t fds;      /* its result, less the directory's own */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    if (fds_at == 0 || now - fds_at >= 1000000000u) {
        DIR *d = opendir("/proc/self/fd");
        if (d) {
            size_t n = 0;
            struct dirent *e;
            while ((e = readdir(d)) != NULL)
                n += e->d_name[0] != '.';
            closedir(d);
            fds = n - 1;
            fds_at = now;
        }
    }
    if (fds_at)
        metrics_render_one(b, "process_open_fds", METRICS_GAUGE,
                           "Number of open file descriptors.", (double)fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        metrics_render_one(b, "process_max_fds", METRICS_GAUGE,
                           "Maximum number of open file descriptors.",
                           rl.rlim_cur == RLIM_INFINITY ? 1.0 / 0.0
                                                        : (double)rl.rlim_cur);
    }
    metrics_render_one(b, "process_start_time_seconds", METRICS_GAUGE,
                       "Start time of the process since unix epoch in "
                       "seconds.",
                       st.started_unix);
}

void stats_render(struct pz_buf *b)
{
    static const char *const lbl_build[] = {"version", "commit", NULL};
    metrics_render_head(b, "pyazdb_build_info", METRICS_GAUGE,
                        "Always 1; the labels name the build.");
    metrics_render_sample(b, "pyazdb_build_info", lbl_build,
                          (const char *const[]){PZ_VERSION, PZ_COMMIT}, 1);
    render_process(b);
    if (!st.on)
        return;
    metrics_render(b, &st.requests);
    metrics_render(b, &st.latency);
    metrics_render(b, &st.connected);
    metrics_render(b, &st.accepted);
    metrics_render(b, &st.rejected);
    metrics_render(b, &st.loop_busy);
    for (size_t i = 0; i < st.n_cbs; i++)
        st.cbs[i](b, st.args[i]);
}
