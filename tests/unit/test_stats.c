/* test_stats.c - the process's metrics page: nothing counted before
 * stats_init, requests and connection events counted by label after it,
 * the latency histogram only with a start time, the process figures from
 * /proc and build info, collectors called on every render. */
#include <time.h>

#include "stats.h"
#include "test.h"

static const char *text(struct pz_buf *b)
{
    pz_buf_append(b, "", 1);
    b->len--;
    return b->data;
}

static int collected;

static void collector(struct pz_buf *b, void *arg)
{
    collected++;
    pz_buf_appendf(b, "# collector %s\n", (const char *)arg);
}

TEST(page)
{
    struct pz_buf b;
    pz_buf_init(&b);
    /* Not started: updates are no-ops, the page still has build info. */
    stats_request_http("http", "get", 200, stats_now_ns());
    stats_conn("http", STATS_CONN_ACCEPTED);
    stats_render(&b);
    CHECK(strstr(text(&b), "pyazdb_build_info{version=\"" PZ_VERSION "\"") !=
          NULL);
    CHECK(strstr(text(&b), "pyazdb_requests_total") == NULL);

    stats_init((double)time(NULL));
    stats_add_collector(collector, "here");
    uint64_t t0 = stats_now_ns();
    stats_request_http("http", "get", 200, t0);
    stats_request_http("http", "get", 200, t0);
    stats_request_http("http", "set", 503, 0); /* no latency */
    stats_request("grpc", "/kv.KVService/Get", "OK", t0);
    stats_conn("http", STATS_CONN_ACCEPTED);
    stats_conn("http", STATS_CONN_ACCEPTED);
    stats_conn("http", STATS_CONN_CLOSED);
    stats_conn("grpc", STATS_CONN_REFUSED);
    stats_conn("grpc", STATS_CONN_EVICTED);
    pz_buf_reset(&b);
    collected = 0;
    stats_render(&b);
    const char *t = text(&b);
    CHECK_EQ_INT(collected, 1);
    CHECK(strstr(t, "# collector here\n") != NULL);
    CHECK(strstr(t, "pyazdb_requests_total{api=\"http\",method=\"get\","
                    "code=\"200\"} 2\n") != NULL);
    CHECK(strstr(t, "pyazdb_requests_total{api=\"http\",method=\"set\","
                    "code=\"503\"} 1\n") != NULL);
    CHECK(strstr(t, "pyazdb_requests_total{api=\"grpc\",method=\""
                    "/kv.KVService/Get\",code=\"OK\"} 1\n") != NULL);
    CHECK(strstr(t, "pyazdb_request_duration_seconds_count{api=\"http\","
                    "method=\"get\"} 2\n") != NULL);
    CHECK(strstr(t, "pyazdb_request_duration_seconds_count{api=\"http\","
                    "method=\"set\"}") == NULL);
    CHECK(strstr(t, "pyazdb_clients_connected{listener=\"http\"} 1\n") != NULL);
    CHECK(strstr(t, "pyazdb_clients_accepted_total{listener=\"http\"} 2\n") !=
          NULL);
    CHECK(strstr(t, "pyazdb_clients_rejected_total{listener=\"grpc\","
                    "reason=\"refused\"} 1\n") != NULL);
    CHECK(strstr(t, "pyazdb_clients_rejected_total{listener=\"grpc\","
                    "reason=\"evicted\"} 1\n") != NULL);
    CHECK(strstr(t, "\nprocess_resident_memory_bytes ") != NULL);
    CHECK(strstr(t, "\nprocess_cpu_seconds_total ") != NULL);
    CHECK(strstr(t, "\nprocess_open_fds ") != NULL);
    CHECK(strstr(t, "# TYPE process_start_time_seconds gauge\n") != NULL);
    stats_close();
    pz_buf_reset(&b);
    stats_render(&b);
    CHECK(strstr(text(&b), "pyazdb_requests_total") == NULL);
    pz_buf_free(&b);
}

static const struct test_case cases[] = {TEST_ENTRY(page), TEST_END};

const struct test_suite suite_stats = {"stats", cases};
