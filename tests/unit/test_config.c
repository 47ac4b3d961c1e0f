/* test_config.c - the directive table, value parsers, config-file syntax,
 * sources and their precedence, cross-field rules, initial-cluster, and
 * agreement between the table and the shipped pyazdb.conf. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "pz.h"
#include "test.h"

/* The first line of an error message (file errors add a ">>>" line). */
static const char *line1(const char *err)
{
    static char buf[512];
    size_t n = strcspn(err, "\n");
    if (n >= sizeof buf)
        n = sizeof buf - 1;
    memcpy(buf, err, n);
    buf[n] = '\0';
    return buf;
}

/* Apply one value through cfg_set with source "test"; 0 or PZ_ECONFIG. */
static int set1(struct pz_config *c, const char *name, const char *value,
                char *err, size_t errlen)
{
    return cfg_set(c, name, value, "test", 0, err, errlen);
}

/* Load text as a file named pyazdb.conf on top of the defaults. */
static int load_text(struct pz_config *c, const char *text, char *err,
                     size_t errlen)
{
    cfg_init(c);
    return cfg_load_string(c, text, strlen(text), "pyazdb.conf", err, errlen);
}

/* Write text to a fresh temporary file; returns its path (static). */
static const char *temp_file(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/pyazdb-test-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    close(fd);
    return w == (ssize_t)len ? path : NULL;
}

TEST(defaults)
{
    struct pz_config c;
    char err[256] = "";
    cfg_init(&c);
    CHECK_EQ_INT(c.mode, CFG_MODE_SERVER);
    CHECK_EQ_STR(c.node_id, "node1");
    CHECK_EQ_STR(c.raft_addr, "127.0.0.1:12000");
    CHECK_EQ_STR(c.raft_data, "./data");
    CHECK(!c.raft_bootstrap);
    CHECK_EQ_STR(c.initial_cluster, "");
    CHECK_EQ_STR(c.http_addr, ":8080");
    CHECK_EQ_STR(c.grpc_addr, ":9090");
    CHECK_EQ_STR(c.mandi_addr, "http://127.0.0.1:7000");
    CHECK_EQ_INT(c.log_level, CFG_LOG_INFO);
    CHECK_EQ_STR(c.log_file, "");
    CHECK_EQ_INT(c.heartbeat_interval_ms, 100);
    CHECK_EQ_INT(c.election_timeout_ms, 1000);
    CHECK_EQ_INT(c.max_clients, 10000);
    CHECK_EQ_INT(c.client_idle_timeout_ms, 300000);
    CHECK_EQ_INT(c.max_key_size, 64 * 1024);
    CHECK_EQ_INT(c.max_value_size, 1024 * 1024);
    CHECK_EQ_INT(c.http_max_body, 4 * 1024 * 1024);
    CHECK_EQ_INT(c.http_max_header_size, 16 * 1024);
    CHECK_EQ_INT(c.http_max_headers, 100);
    CHECK_EQ_INT(c.conn_high_water, 1024 * 1024);
    CHECK_EQ_INT(c.conn_hard_limit, 64 * 1024 * 1024);
    CHECK_EQ_INT(c.grpc_max_message, 4 * 1024 * 1024);
    CHECK_EQ_INT(c.client_header_timeout_ms, 10000);
    CHECK_EQ_INT(c.client_body_timeout_ms, 60000);
    CHECK_EQ_INT(c.max_partial_input, 256 * 1024 * 1024);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    cfg_free(&c);
    CHECK(c.node_id == NULL && c.log_file == NULL && c.http_addr == NULL);
}

TEST(table_rows_sane)
{
    CHECK(cfg_directive_count() >= 23);
    CHECK(cfg_directive_at(cfg_directive_count()) == NULL);
    for (size_t i = 0; i < cfg_directive_count(); i++) {
        const struct cfg_directive *d = cfg_directive_at(i);
        CHECK(d->name && d->def && d->help && d->section);
        CHECK(cfg_find(d->name) == d);
        CHECK(d->offset < sizeof(struct pz_config));
        if (d->type == CFG_INT || d->type == CFG_SIZE ||
            d->type == CFG_DURATION)
            CHECK(d->min <= d->max);
        for (size_t j = 0; j < i; j++)
            CHECK(strcmp(cfg_directive_at(j)->name, d->name) != 0);
    }
    CHECK(cfg_find("no-such-thing") == NULL);
    CHECK(cfg_find("MAX-CLIENTS") == cfg_find("max-clients"));
    CHECK(cfg_find("mode")->flags & CFG_MANDI);
    CHECK(cfg_find("node-id")->flags & CFG_IMMUTABLE);
    CHECK(!(cfg_find("max-key-size")->flags & CFG_MANDI));
    for (size_t i = 0; i < cfg_env_count(); i++)
        CHECK(cfg_find(cfg_env_at(i)->directive) != NULL);
    CHECK_EQ_INT(cfg_env_count(), 7);
}

/* Every default formats back to text that parses to the same value. */
TEST(format_round_trip)
{
    struct pz_config c, d;
    char err[256];
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "max-value-size", "3kb", err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "election-timeout", "1500", err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "log-file", "a b", err, sizeof err), 0);
    cfg_init(&d);
    for (size_t i = 0; i < cfg_directive_count(); i++) {
        const struct cfg_directive *dir = cfg_directive_at(i);
        char a[400], b[400];
        cfg_format(&c, dir, a, sizeof a);
        CHECK_EQ_INT(set1(&d, dir->name, a, err, sizeof err), 0);
        cfg_format(&d, dir, b, sizeof b);
        CHECK_EQ_STR(a, b);
    }
    char buf[64];
    cfg_format(&c, cfg_find("max-value-size"), buf, sizeof buf);
    CHECK_EQ_STR(buf, "3kb");
    cfg_format(&c, cfg_find("election-timeout"), buf, sizeof buf);
    CHECK_EQ_STR(buf, "1500ms");
    cfg_format(&c, cfg_find("client-idle-timeout"), buf, sizeof buf);
    CHECK_EQ_STR(buf, "300s");
    cfg_format(&c, cfg_find("raft-bootstrap"), buf, sizeof buf);
    CHECK_EQ_STR(buf, "no");
    cfg_format(&c, cfg_find("log-level"), buf, sizeof buf);
    CHECK_EQ_STR(buf, "info");
    CHECK_EQ_INT(d.max_value_size, 3072);
    CHECK_EQ_STR(d.log_file, "a b");
    cfg_free(&c);
    cfg_free(&d);
}

TEST(parse_bool)
{
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    const char *yes[] = {"yes", "YES", "true", "True", "1"};
    const char *no[] = {"no", "No", "false", "FALSE", "0"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(yes); i++) {
        c.raft_bootstrap = false;
        CHECK_EQ_INT(set1(&c, "raft-bootstrap", yes[i], err, sizeof err), 0);
        CHECK(c.raft_bootstrap);
        CHECK_EQ_INT(set1(&c, "raft-bootstrap", no[i], err, sizeof err), 0);
        CHECK(!c.raft_bootstrap);
    }
    CHECK_EQ_INT(set1(&c, "raft-bootstrap", "maybe", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'raft-bootstrap' must be yes or no: 'maybe'");
    CHECK_EQ_INT(set1(&c, "raft-bootstrap", "", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_INT(set1(&c, "raft-bootstrap", "2", err, sizeof err), PZ_ECONFIG);
    CHECK(!c.raft_bootstrap);
    cfg_free(&c);
}

TEST(parse_int_bounds)
{
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "max-clients", "1", err, sizeof err), 0);
    CHECK_EQ_INT(c.max_clients, 1);
    CHECK_EQ_INT(set1(&c, "max-clients", "1000000", err, sizeof err), 0);
    CHECK_EQ_INT(c.max_clients, 1000000);
    CHECK_EQ_INT(set1(&c, "max-clients", "0", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'max-clients' must be between 1 and 1000000: "
                      "'0'");
    CHECK_EQ_INT(set1(&c, "max-clients", "1000001", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_INT(set1(&c, "max-clients", "-5", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'max-clients' must be between 1 and 1000000: "
                      "'-5'");
    CHECK_EQ_INT(
        set1(&c, "max-clients", "99999999999999999999", err, sizeof err),
        PZ_ECONFIG);
    CHECK(strstr(err, "must be between 1 and 1000000") != NULL);
    const char *bad[] = {"abc", "", "12x", " 12", "12 ", "+12", "1k", "-"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        CHECK_EQ_INT(set1(&c, "max-clients", bad[i], err, sizeof err),
                     PZ_ECONFIG);
        CHECK(strstr(err, "'max-clients' must be an integer") != NULL);
    }
    CHECK_EQ_INT(c.max_clients, 1000000); /* unchanged by failures */
    CHECK_EQ_INT(set1(&c, "http-max-headers", "10000", err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "http-max-headers", "10001", err, sizeof err),
                 PZ_ECONFIG);
    cfg_free(&c);
}

TEST(parse_size_units)
{
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    struct {
        const char *text;
        int64_t bytes;
    } ok[] = {
        {"1024", 1024},     {"2048b", 2048},      {"1k", 1024},
        {"1kb", 1024},      {"3KB", 3072},        {"2Kb", 2048},
        {"1m", 1048576},    {"5mb", 5 * 1048576}, {"7MB", 7 * 1048576},
        {"1g", 1073741824}, {"1gb", 1073741824},  {"1GB", 1073741824},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(ok); i++) {
        CHECK_EQ_INT(set1(&c, "http-max-body", ok[i].text, err, sizeof err), 0);
        CHECK_EQ_INT(c.http_max_body, ok[i].bytes);
    }
    /* The limits the sample file gives as "1tb" are written that way. */
    const char *tb[] = {"1tb", "1TB", "1t", "1024gb"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(tb); i++) {
        CHECK_EQ_INT(set1(&c, "raft-snapshot-bytes", tb[i], err, sizeof err),
                     0);
        CHECK_EQ_INT(c.raft_snapshot_bytes, INT64_C(1) << 40);
    }
    CHECK_EQ_INT(set1(&c, "raft-snapshot-bytes", "2tb", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'raft-snapshot-bytes' must be between 1kb and "
                      "1tb: '2tb'");
    const char *bad[] = {"1pb",  "1.5mb", "kb",  "-1",   "",
                         "1 kb", "1kbb",  "mb1", "0x10", "1tbb"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        CHECK_EQ_INT(set1(&c, "http-max-body", bad[i], err, sizeof err),
                     PZ_ECONFIG);
        CHECK(strstr(err, "'http-max-body' must be a size") != NULL);
    }
    CHECK_EQ_INT(set1(&c, "max-key-size", "1", err, sizeof err), 0);
    CHECK_EQ_INT(c.max_key_size, 1);
    CHECK_EQ_INT(set1(&c, "max-key-size", "1mb", err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "max-key-size", "2mb", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'max-key-size' must be between 1 and 1mb: "
                      "'2mb'");
    CHECK_EQ_INT(set1(&c, "max-key-size", "0", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_INT(set1(&c, "max-value-size", "0", err, sizeof err), 0);
    CHECK_EQ_INT(c.max_value_size, 0);
    CHECK_EQ_INT(set1(&c, "max-value-size", "513mb", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'max-value-size' must be between 0 and 512mb: "
                      "'513mb'");
    CHECK_EQ_INT(set1(&c, "http-max-body", "1023", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'http-max-body' must be between 1kb and 1gb: "
                      "'1023'");
    /* Overflow of the multiplication is out of range, not a wrap. */
    CHECK_EQ_INT(
        set1(&c, "conn-hard-limit", "9000000000000gb", err, sizeof err),
        PZ_ECONFIG);
    CHECK(strstr(err, "must be between 1kb and 16gb") != NULL);
    /* (2^34 + 1) gb would wrap to exactly 1gb, inside the range */
    CHECK_EQ_INT(
        set1(&c, "conn-hard-limit", "17179869185gb", err, sizeof err),
        PZ_ECONFIG);
    CHECK(strstr(err, "must be between 1kb and 16gb") != NULL);
    CHECK_EQ_INT(set1(&c, "conn-hard-limit", "16gb", err, sizeof err), 0);
    CHECK_EQ_INT(c.conn_hard_limit, 16LL * 1024 * 1024 * 1024);
    cfg_free(&c);
}

TEST(parse_duration_units)
{
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    struct {
        const char *text;
        int64_t ms;
    } ok[] = {
        {"0", 0},         {"250", 250},         {"250ms", 250},
        {"1500MS", 1500}, {"2s", 2000},         {"5m", 300000},
        {"1M", 60000},    {"86400s", 86400000}, {"1440m", 86400000},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(ok); i++) {
        CHECK_EQ_INT(
            set1(&c, "client-idle-timeout", ok[i].text, err, sizeof err), 0);
        CHECK_EQ_INT(c.client_idle_timeout_ms, ok[i].ms);
    }
    const char *bad[] = {"1h", "s", "1.5s", "-1", "", "10 s", "1d", "ms"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        CHECK_EQ_INT(set1(&c, "client-idle-timeout", bad[i], err, sizeof err),
                     PZ_ECONFIG);
        CHECK(strstr(err, "'client-idle-timeout' must be a duration") != NULL);
    }
    CHECK_EQ_INT(set1(&c, "client-idle-timeout", "86401s", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'client-idle-timeout' must be between 0 and "
                      "86400s: '86401s'");
    CHECK_EQ_INT(set1(&c, "heartbeat-interval", "5ms", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'heartbeat-interval' must be between 10ms and "
                      "10s: '5ms'");
    CHECK_EQ_INT(set1(&c, "heartbeat-interval", "10", err, sizeof err), 0);
    CHECK_EQ_INT(c.heartbeat_interval_ms, 10);
    CHECK_EQ_INT(set1(&c, "heartbeat-interval", "10s", err, sizeof err), 0);
    CHECK_EQ_INT(c.heartbeat_interval_ms, 10000);
    CHECK_EQ_INT(set1(&c, "heartbeat-interval", "10001", err, sizeof err),
                 PZ_ECONFIG);
    cfg_free(&c);
}

TEST(parse_enum)
{
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "mode", "mandi", err, sizeof err), 0);
    CHECK_EQ_INT(c.mode, CFG_MODE_MANDI);
    CHECK_EQ_INT(set1(&c, "mode", "SERVER", err, sizeof err), 0);
    CHECK_EQ_INT(c.mode, CFG_MODE_SERVER);
    const char *levels[] = {"debug", "info", "warning", "error"};
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(set1(&c, "log-level", levels[i], err, sizeof err), 0);
        CHECK_EQ_INT(c.log_level, i);
    }
    CHECK_EQ_INT(set1(&c, "log-level", "loud", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'log-level' must be one of debug, info, "
                      "warning, error: 'loud'");
    CHECK_EQ_INT(set1(&c, "mode", "", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'mode' must be one of server, mandi: ''");
    CHECK_EQ_INT(c.log_level, CFG_LOG_ERROR);
    cfg_free(&c);
}

TEST(parse_address)
{
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    const char *ok[] = {":8080",   "127.0.0.1:8080", "[::1]:80", "localhost:1",
                        "h:65535", "0.0.0.0:9",      "[::]:7"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(ok); i++) {
        CHECK_EQ_INT(set1(&c, "http-addr", ok[i], err, sizeof err), 0);
        CHECK_EQ_STR(c.http_addr, ok[i]);
    }
    const char *bad[] = {
        ":0",      "h:0",    "8080",  "h:65536", "h:+80",   "h: 80",
        "a b:80",  "::1:80", "[]:80", "h:",      "",        ":",
        "[::1:80", "h]:80",  "h:80x", "h:-1",    "h:000000"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        CHECK_EQ_INT(set1(&c, "grpc-addr", bad[i], err, sizeof err),
                     PZ_ECONFIG);
        char want[128];
        snprintf(want, sizeof want,
                 "test: 'grpc-addr' must be host:port or :port with a port "
                 "from 1 to 65535: '%s'",
                 bad[i]);
        CHECK_EQ_STR(err, want);
    }
    CHECK_EQ_STR(c.grpc_addr, ":9090");
    CHECK_EQ_INT(set1(&c, "raft-addr", "10.0.0.1:12001", err, sizeof err), 0);
    cfg_free(&c);
}

TEST(parse_strings)
{
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "node-id", "n-1.x_Y9", err, sizeof err), 0);
    CHECK_EQ_STR(c.node_id, "n-1.x_Y9");
    char long_id[80];
    memset(long_id, 'a', 63);
    long_id[63] = '\0';
    CHECK_EQ_INT(set1(&c, "node-id", long_id, err, sizeof err), 0);
    long_id[63] = 'a';
    long_id[64] = '\0';
    CHECK_EQ_INT(set1(&c, "node-id", long_id, err, sizeof err), PZ_ECONFIG);
    const char *bad_ids[] = {"", "a b", "n/1", "n:1", "é"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad_ids); i++) {
        CHECK_EQ_INT(set1(&c, "node-id", bad_ids[i], err, sizeof err),
                     PZ_ECONFIG);
        CHECK(strstr(err, "'node-id' must be 1 to 63 characters from A-Z "
                          "a-z 0-9 . _ -") != NULL);
    }
    CHECK_EQ_INT(strlen(c.node_id), 63);
    CHECK_EQ_INT(set1(&c, "raft-data", "", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "test: 'raft-data' must not be empty: ''");
    CHECK_EQ_INT(set1(&c, "raft-data", "/var/lib/pyazdb", err, sizeof err), 0);
    CHECK_EQ_STR(c.raft_data, "/var/lib/pyazdb");
    CHECK_EQ_INT(set1(&c, "log-file", "", err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "log-file", "/tmp/x y.log", err, sizeof err), 0);
    CHECK_EQ_STR(c.log_file, "/tmp/x y.log");

    const char *urls[] = {"http://127.0.0.1:7000", "http://mandi:7000/",
                          "HTTP://h:1", "http://[::1]:7000", "none",
                          "https://h:7000", "HTTPS://[::1]:7000/"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(urls); i++)
        CHECK_EQ_INT(set1(&c, "mandi-addr", urls[i], err, sizeof err), 0);
    const char *bad_urls[] = {
        "ftp://h:7000", "http://:7000", "http://h", "http://h:70/x",
        "h:7000",         "http://h:0",   "http://",  "",
        "None"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad_urls); i++) {
        CHECK_EQ_INT(set1(&c, "mandi-addr", bad_urls[i], err, sizeof err),
                     PZ_ECONFIG);
        CHECK(strstr(err, "'mandi-addr' must be a URL http://host:port or "
                          "https://host:port, "
                          "or none") != NULL);
    }
    char host[64];
    int port = 0;
    CHECK_EQ_INT(
        cfg_url_hostport("http://10.1.2.3:7001/", host, sizeof host, &port), 0);
    CHECK_EQ_STR(host, "10.1.2.3");
    CHECK_EQ_INT(port, 7001);
    CHECK_EQ_INT(
        cfg_url_hostport("http://[::1]:7000", host, sizeof host, &port), 0);
    CHECK_EQ_STR(host, "::1");
    CHECK_EQ_INT(cfg_url_hostport("http://abcdefgh:1", host, 4, &port),
                 PZ_EINVAL);
    cfg_free(&c);
}

TEST(unknown_directive_set)
{
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    CHECK_EQ_INT(cfg_set(&c, "foo", "1", "pyazdb.conf", 12, err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(err, "pyazdb.conf:12: unknown directive 'foo'");
    /* A tiny buffer truncates but stays terminated. */
    char small[8];
    CHECK_EQ_INT(
        cfg_set(&c, "foo", "1", "pyazdb.conf", 12, small, sizeof small),
        PZ_ECONFIG);
    CHECK_EQ_STR(small, "pyazdb.");
    cfg_free(&c);
}

TEST(file_syntax)
{
    struct pz_config c;
    char err[256] = "";
    const char *text = "# a comment\n"
                       "\n"
                       "   \t  \n"
                       "   # indented comment\n"
                       "node-id   n7\n"
                       "\tmax-clients\t42   \n"
                       "log-file \"my log.txt\"\n"
                       "raft-data \"a\\\"b\\\\c\"  \n"
                       "http-addr 127.0.0.1:8081\r\n"
                       "MODE server\n"
                       "initial-cluster \"\"\n"
                       "max-value-size 2mb"; /* no final newline */
    CHECK_EQ_INT(load_text(&c, text, err, sizeof err), 0);
    CHECK_EQ_STR(c.node_id, "n7");
    CHECK_EQ_INT(c.max_clients, 42);
    CHECK_EQ_STR(c.log_file, "my log.txt");
    CHECK_EQ_STR(c.raft_data, "a\"b\\c");
    CHECK_EQ_STR(c.http_addr, "127.0.0.1:8081");
    CHECK_EQ_STR(c.initial_cluster, "");
    CHECK_EQ_INT(c.max_value_size, 2 * 1024 * 1024);
    cfg_free(&c);

    CHECK_EQ_INT(load_text(&c, "log-file \"\"\n", err, sizeof err), 0);
    CHECK_EQ_STR(c.log_file, "");
    cfg_free(&c);
    CHECK_EQ_INT(load_text(&c, "", err, sizeof err), 0);
    cfg_free(&c);
    CHECK_EQ_INT(load_text(&c, "\n\n# only comments\n", err, sizeof err), 0);
    cfg_free(&c);
}

/* Each syntax error: exact "file:line: message" and the quoted line. */
TEST(file_syntax_errors)
{
    struct {
        const char *text;
        const char *msg;
        const char *quoted;
    } cases[] = {
        {"# c\n\nfoo bar\n", "pyazdb.conf:3: unknown directive 'foo'",
         ">>> 'foo bar'"},
        {"node-id\n", "pyazdb.conf:1: missing value for 'node-id'",
         ">>> 'node-id'"},
        {"node-id   \t\n", "pyazdb.conf:1: missing value for 'node-id'", NULL},
        {"\nlog-file \"abc\n",
         "pyazdb.conf:2: unterminated quoted value for 'log-file'",
         ">>> 'log-file \"abc'"},
        {"log-file \"abc\\\"\n",
         "pyazdb.conf:1: unterminated quoted value for 'log-file'", NULL},
        {"log-file \"a\\nb\"\n",
         "pyazdb.conf:1: unknown escape in quoted value (only \\\" and \\\\ "
         "are allowed) for 'log-file'",
         NULL},
        {"log-file \"a\" b\n",
         "pyazdb.conf:1: unexpected text after the value (quote a value that "
         "holds blanks) for 'log-file'",
         ">>> 'log-file \"a\" b'"},
        {"node-id my node\n",
         "pyazdb.conf:1: unexpected text after the value (quote a value that "
         "holds blanks) for 'node-id'",
         NULL},
        {"max-clients 10 # ten\n",
         "pyazdb.conf:1: unexpected text after the value (quote a value that "
         "holds blanks) for 'max-clients'",
         NULL},
        {"log-file ab\"c\n",
         "pyazdb.conf:1: unexpected quote inside a value for 'log-file'", NULL},
        {"--node-id x\n", "pyazdb.conf:1: unknown directive '--node-id'", NULL},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
        struct pz_config c;
        char err[512] = "";
        CHECK_EQ_INT(load_text(&c, cases[i].text, err, sizeof err), PZ_ECONFIG);
        CHECK_EQ_STR(line1(err), cases[i].msg);
        if (cases[i].quoted)
            CHECK_EQ_STR(strchr(err, '\n') + 1, cases[i].quoted);
        cfg_free(&c);
    }
}

TEST(file_value_errors)
{
    struct pz_config c;
    char err[512] = "";
    const char *text = "# limits\n"
                       "\n"
                       "node-id n1\n"
                       "\n"
                       "\n"
                       "# next line is wrong\n"
                       "max-clients 0\n"
                       "node-id n2\n";
    CHECK_EQ_INT(load_text(&c, text, err, sizeof err), PZ_ECONFIG);
    /* Every error of the file is reported, each with its line. */
    CHECK_EQ_STR(err, "pyazdb.conf:7: 'max-clients' must be between 1 and "
                      "1000000: '0'\n>>> 'max-clients 0'\n"
                      "pyazdb.conf:8: duplicate directive 'node-id' (first "
                      "set on line 3)\n>>> 'node-id n2'");
    CHECK_EQ_STR(c.node_id, "n1");
    cfg_free(&c);

    /* The first five, then how many more. */
    char big[2048];
    CHECK_EQ_INT(load_text(&c, "a 1\nb 1\nc 1\nd 1\ne 1\nf 1\ng 1\n", big,
                           sizeof big),
                 PZ_ECONFIG);
    CHECK(strstr(big, "pyazdb.conf:5: unknown directive 'e'") != NULL);
    CHECK(strstr(big, "'f'") == NULL);
    CHECK(strstr(big, "\n(2 more errors)") != NULL);
    cfg_free(&c);

    CHECK_EQ_INT(load_text(&c, "a\n\nheartbeat-interval 1h\n", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(line1(err), "pyazdb.conf:1: unknown directive 'a'");
    cfg_free(&c);

    CHECK_EQ_INT(load_text(&c, "\n\nheartbeat-interval 1h\n", err, sizeof err),
                 PZ_ECONFIG);
    CHECK(strncmp(err,
                  "pyazdb.conf:3: 'heartbeat-interval' must be a "
                  "duration",
                  50) == 0);
    cfg_free(&c);

    static const char nul_text[] = "node-id a\nlog-file x\0y\n";
    cfg_init(&c);
    CHECK_EQ_INT(cfg_load_string(&c, nul_text, sizeof nul_text - 1,
                                 "pyazdb.conf", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(line1(err), "pyazdb.conf:2: NUL byte in the line");
    cfg_free(&c);
}

TEST(file_duplicates)
{
    struct pz_config c;
    char err[512] = "";
    const char *text = "node-id a\n"
                       "max-clients 5\n"
                       "# again\n"
                       "node-id b\n";
    CHECK_EQ_INT(load_text(&c, text, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(line1(err), "pyazdb.conf:4: duplicate directive 'node-id' "
                             "(first set on line 1)");
    CHECK_EQ_STR(c.node_id, "a");
    cfg_free(&c);
    /* Case-insensitive names are the same directive. */
    CHECK_EQ_INT(
        load_text(&c, "log-level info\nLOG-LEVEL debug\n", err, sizeof err),
        PZ_ECONFIG);
    CHECK_EQ_STR(line1(err), "pyazdb.conf:2: duplicate directive "
                             "'log-level' (first set on line 1)");
    cfg_free(&c);
    /* Two separate loads are separate files: no duplicate. */
    CHECK_EQ_INT(load_text(&c, "node-id a\n", err, sizeof err), 0);
    CHECK_EQ_INT(
        cfg_load_string(&c, "node-id b\n", 10, "other.conf", err, sizeof err),
        0);
    CHECK_EQ_STR(c.node_id, "b");
    cfg_free(&c);
}

TEST(file_unreadable)
{
    struct pz_config c;
    char err[256] = "";
    cfg_init(&c);
    CHECK_EQ_INT(cfg_load_file(&c, "/nonexistent/dir/x.conf", err, sizeof err),
                 PZ_ECONFIG);
    CHECK_EQ_STR(err, "/nonexistent/dir/x.conf: cannot open: No such file "
                      "or directory");
    CHECK_EQ_INT(cfg_load_file(&c, "/tmp", err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "/tmp: cannot open: not a regular file");
    /* a FIFO is refused at once, never waited on for a writer */
    char fifo[64];
    snprintf(fifo, sizeof fifo, "/tmp/pz-cfg-fifo-%d", (int)getpid());
    unlink(fifo);
    CHECK_EQ_INT(mkfifo(fifo, 0600), 0);
    int rc = cfg_load_file(&c, fifo, err, sizeof err);
    unlink(fifo);
    CHECK_EQ_INT(rc, PZ_ECONFIG);
    char refused[128];
    snprintf(refused, sizeof refused, "%s: cannot open: not a regular file",
             fifo);
    CHECK_EQ_STR(err, refused);
    /* /dev/null is an empty file (--test-config /dev/null) */
    CHECK_EQ_INT(cfg_load_file(&c, "/dev/null", err, sizeof err), 0);
    cfg_free(&c);

    /* A real file: errors carry its path as the source. */
    const char *path = temp_file("node-id f1\n\nbogus 1\n");
    CHECK(path != NULL);
    cfg_init(&c);
    CHECK_EQ_INT(cfg_load_file(&c, path, err, sizeof err), PZ_ECONFIG);
    char want[128];
    snprintf(want, sizeof want, "%s:3: unknown directive 'bogus'", path);
    CHECK_EQ_STR(line1(err), want);
    CHECK_EQ_STR(c.node_id, "f1");
    unlink(path);
    cfg_free(&c);
}

TEST(env_mapping)
{
    struct pz_config c;
    char err[256] = "";
    char *env[] = {"PATH=/bin",
                   "NODE_ID=envnode",
                   "RAFT_ADDR=127.0.0.1:12005",
                   "RAFT_DATA=/tmp/envdata",
                   "RAFT_LEADER=true",
                   "GRPC_ADDR=:9191",
                   "HTTP_ADDR=127.0.0.1:8181",
                   "MANDI_ADDR=http://127.0.0.1:7001",
                   "NODE_ID=second-ignored",
                   "NODE_IDX=nope",
                   NULL};
    cfg_init(&c);
    CHECK_EQ_INT(cfg_load_env(&c, env, err, sizeof err), 0);
    CHECK_EQ_STR(c.node_id, "envnode");
    CHECK_EQ_STR(c.raft_addr, "127.0.0.1:12005");
    CHECK_EQ_STR(c.raft_data, "/tmp/envdata");
    CHECK(c.raft_bootstrap);
    CHECK_EQ_STR(c.grpc_addr, ":9191");
    CHECK_EQ_STR(c.http_addr, "127.0.0.1:8181");
    CHECK_EQ_STR(c.mandi_addr, "http://127.0.0.1:7001");
    char *env2[] = {"RAFT_LEADER=false", "NODE_ID=", NULL};
    CHECK_EQ_INT(cfg_load_env(&c, env2, err, sizeof err), 0);
    CHECK(!c.raft_bootstrap);
    CHECK_EQ_STR(c.node_id, "envnode"); /* empty means unset */
    CHECK_EQ_INT(cfg_load_env(&c, NULL, err, sizeof err), 0);
    cfg_free(&c);

    char *bad[] = {"NODE_ID=a b", NULL};
    cfg_init(&c);
    CHECK_EQ_INT(cfg_load_env(&c, bad, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "environment NODE_ID: 'node-id' must be 1 to 63 "
                      "characters from A-Z a-z 0-9 . _ -: 'a b'");
    char *bad2[] = {"RAFT_LEADER=maybe", NULL};
    CHECK_EQ_INT(cfg_load_env(&c, bad2, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "environment RAFT_LEADER: 'raft-bootstrap' must be yes "
                      "or no: 'maybe'");
    char *bad3[] = {"HTTP_ADDR=:0", NULL};
    CHECK_EQ_INT(cfg_load_env(&c, bad3, err, sizeof err), PZ_ECONFIG);
    CHECK(strncmp(err, "environment HTTP_ADDR: 'http-addr' must be", 42) == 0);
    cfg_free(&c);
}

TEST(precedence)
{
    const char *path = temp_file("node-id filenode\n"
                                 "http-addr :8100\n"
                                 "grpc-addr :9100\n"
                                 "max-clients 7\n"
                                 "log-level debug\n");
    CHECK(path != NULL);
    char p[64];
    snprintf(p, sizeof p, "%s", path);
    char *env[] = {"NODE_ID=envnode", "HTTP_ADDR=:8200", NULL};
    char *argv[] = {"pyazdb-server",       p,   "--node-id", "argnode",
                    "--log-level=warning", NULL};
    struct pz_config c;
    char err[256] = "";
    CHECK_EQ_INT(cfg_load(&c, 5, argv, env, err, sizeof err), 0);
    CHECK_EQ_STR(c.node_id, "argnode");           /* argv > env > file */
    CHECK_EQ_STR(c.http_addr, ":8200");           /* env > file */
    CHECK_EQ_STR(c.grpc_addr, ":9100");           /* file > default */
    CHECK_EQ_INT(c.max_clients, 7);               /* file */
    CHECK_EQ_INT(c.log_level, CFG_LOG_WARNING);   /* argv > file */
    CHECK_EQ_STR(c.raft_addr, "127.0.0.1:12000"); /* default */
    cfg_free(&c);

    /* The file may come after the flags: it is still below them. */
    char *argv2[] = {"pyazdb-server", "--max-clients", "9", p, NULL};
    CHECK_EQ_INT(cfg_load(&c, 4, argv2, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(c.max_clients, 9);
    CHECK_EQ_STR(c.node_id, "filenode");
    cfg_free(&c);

    /* No file, no env, no flags: the defaults. */
    char *argv3[] = {"pyazdb-server", NULL};
    CHECK_EQ_INT(cfg_load(&c, 1, argv3, NULL, err, sizeof err), 0);
    CHECK_EQ_STR(c.node_id, "node1");
    cfg_free(&c);
    CHECK_EQ_INT(cfg_load(&c, 0, NULL, NULL, err, sizeof err), 0);
    cfg_free(&c);

    /* An environment error is reported even when argv would override. */
    char *env_bad[] = {"NODE_ID=bad id", NULL};
    char *argv4[] = {"pyazdb-server", "--node-id", "ok", NULL};
    CHECK_EQ_INT(cfg_load(&c, 3, argv4, env_bad, err, sizeof err), PZ_ECONFIG);
    CHECK(strncmp(err, "environment NODE_ID:", 20) == 0);
    cfg_free(&c);
    unlink(p);
}

TEST(command_line)
{
    struct pz_config c;
    char err[256] = "";
    char *a1[] = {"srv",
                  "--http-addr",
                  ":8300",
                  "--max-clients=12",
                  "--raft-bootstrap",
                  "yes",
                  "--help",
                  "-v",
                  NULL};
    CHECK_EQ_INT(cfg_load(&c, 8, a1, NULL, err, sizeof err), 0);
    CHECK_EQ_STR(c.http_addr, ":8300");
    CHECK_EQ_INT(c.max_clients, 12);
    CHECK(c.raft_bootstrap);
    cfg_free(&c);

    struct {
        int argc;
        char *argv[6];
        const char *msg;
    } bad[] = {
        {2,
         {"srv", "--node-id"},
         "command line: missing value for "
         "'--node-id'"},
        {3, {"srv", "--foo", "1"}, "command line: unknown directive 'foo'"},
        {2, {"srv", "-x"}, "command line: unknown option '-x'"},
        {2, {"srv", "--"}, "command line: unknown option '--'"},
        {5,
         {"srv", "--node-id", "a", "--node-id", "b"},
         "command line: duplicate directive 'node-id'"},
        {4,
         {"srv", "--node-id", "a", "--NODE-ID=b"},
         "command line: duplicate directive 'node-id'"},
        {3,
         {"srv", "--max-clients", "0"},
         "command line: 'max-clients' must be between 1 and 1000000: '0'"},
        {3,
         {"srv", "a.conf", "b.conf"},
         "command line: more than one config file: 'a.conf' and 'b.conf'"},
        {4,
         {"srv", "a.conf", "--test-config", "b.conf"},
         "command line: more than one config file: 'a.conf' and 'b.conf'"},
        {2,
         {"srv", "--test-config"},
         "command line: missing value for '--test-config'"},
        {2,
         {"srv", "/nonexistent.conf"},
         "/nonexistent.conf: cannot open: No such file or directory"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        CHECK_EQ_INT(
            cfg_load(&c, bad[i].argc, bad[i].argv, NULL, err, sizeof err),
            PZ_ECONFIG);
        CHECK_EQ_STR(err, bad[i].msg);
        cfg_free(&c);
    }

    /* The grammar is checked before the file is read. */
    char *a2[] = {"srv", "/nonexistent.conf", "--bogus", "1", NULL};
    CHECK_EQ_INT(cfg_load(&c, 4, a2, NULL, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "command line: unknown directive 'bogus'");
    cfg_free(&c);

    /* A value may look like a flag or be empty. */
    char *a3[] = {"srv", "--log-file", "--help", "--initial-cluster=", NULL};
    CHECK_EQ_INT(cfg_load(&c, 4, a3, NULL, err, sizeof err), 0);
    CHECK_EQ_STR(c.log_file, "--help");
    cfg_free(&c);
}

TEST(test_config_and_flags)
{
    const char *path = temp_file("node-id tc\n");
    CHECK(path != NULL);
    char p[64];
    snprintf(p, sizeof p, "%s", path);
    struct pz_config c;
    char err[256] = "";
    char *a1[] = {"srv", "--test-config", p, "--max-clients", "3", NULL};
    CHECK_EQ_INT(cfg_load(&c, 5, a1, NULL, err, sizeof err), 0);
    CHECK_EQ_STR(c.node_id, "tc");
    CHECK_EQ_INT(c.max_clients, 3);
    cfg_free(&c);
    unlink(p);

    CHECK(cfg_has_flag(5, a1, "--test-config"));
    CHECK(!cfg_has_flag(5, a1, "--help"));
    char *a2[] = {"srv", "--log-file", "--help", "--version", NULL};
    CHECK(!cfg_has_flag(4, a2, "--help")); /* a value, not a flag */
    CHECK(cfg_has_flag(4, a2, "--version"));
    CHECK(cfg_has_flag(4, a2, "--log-file"));
    char *a3[] = {"srv", "--bogus", "--help", "--mandi", NULL};
    CHECK(cfg_has_flag(4, a3, "--help"));
    CHECK(cfg_has_flag(4, a3, "--mandi"));
    char *a4[] = {"srv", "-h", "x.conf", NULL};
    CHECK(cfg_has_flag(3, a4, "-h"));
    CHECK(!cfg_has_flag(3, a4, "x.conf"));
    CHECK(!cfg_has_flag(1, a4, "-h"));
}

TEST(mandi_shorthand)
{
    struct pz_config c;
    char err[256] = "";
    char *a1[] = {"srv", "--mandi", NULL};
    CHECK_EQ_INT(cfg_load(&c, 2, a1, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(c.mode, CFG_MODE_MANDI);
    cfg_free(&c);

    char *a2[] = {"srv", "--mode", "mandi", NULL};
    CHECK_EQ_INT(cfg_load(&c, 3, a2, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(c.mode, CFG_MODE_MANDI);
    cfg_free(&c);

    char *a3[] = {"srv", "--mandi", "--mode", "server", NULL};
    CHECK_EQ_INT(cfg_load(&c, 4, a3, NULL, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "command line: duplicate directive 'mode'");
    cfg_free(&c);

    /* --mandi overrides the file's mode. */
    const char *path = temp_file("mode server\n");
    CHECK(path != NULL);
    char p[64];
    snprintf(p, sizeof p, "%s", path);
    char *a4[] = {"srv", p, "--mandi", NULL};
    CHECK_EQ_INT(cfg_load(&c, 3, a4, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(c.mode, CFG_MODE_MANDI);
    cfg_free(&c);
    unlink(p);
}

TEST(cross_field)
{
    struct pz_config c;
    char err[256] = "";

    /* mandi over HTTPS needs its certificate; a node needs none for it */
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "mandi-addr", "https://127.0.0.1:7000", err,
                      sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "mode", "mandi", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "an https 'mandi-addr' needs 'tls-cert-file' and "
                      "'tls-key-file' in mandi mode");
    CHECK_EQ_INT(set1(&c, "tls-cert-file", "/c", err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "tls-key-file", "/k", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    cfg_free(&c);

    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "election-timeout", "299", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'election-timeout' (299ms) must be at least 3 x "
                      "'heartbeat-interval' (100ms)");
    CHECK_EQ_INT(set1(&c, "election-timeout", "300", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    cfg_free(&c);

    /* Order of sources does not matter: checked after everything. */
    char *a1[] = {
        "srv", "--heartbeat-interval", "1s", "--election-timeout", "3s", NULL};
    CHECK_EQ_INT(cfg_load(&c, 5, a1, NULL, err, sizeof err), 0);
    cfg_free(&c);
    char *a2[] = {"srv", "--heartbeat-interval", "2s", NULL};
    CHECK_EQ_INT(cfg_load(&c, 3, a2, NULL, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "command line: 'election-timeout' (1s, the default) "
                      "must be at least 3 x 'heartbeat-interval' (2s)");
    cfg_free(&c);

    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "max-value-size", "4mb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'http-max-body' (4mb) must be at least 'max-key-size' "
                      "(64kb) + 'max-value-size' (4mb) + 1kb");
    CHECK_EQ_INT(set1(&c, "http-max-body", "4161kb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'grpc-max-message' (4mb) must be at least "
                      "'max-key-size' (64kb) + 'max-value-size' (4mb) + "
                      "1kb");
    CHECK_EQ_INT(set1(&c, "grpc-max-message", "4161kb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "http-max-body", "4160kb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    cfg_free(&c);

    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "conn-high-water", "64mb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'conn-hard-limit' (64mb) must be greater than "
                      "'conn-high-water' (64mb)");
    CHECK_EQ_INT(set1(&c, "conn-high-water", "4kb", err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "conn-hard-limit", "1mb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'conn-hard-limit' (1mb) must be at least "
                      "'max-value-size' (1mb) + 1kb");
    CHECK_EQ_INT(set1(&c, "conn-hard-limit", "1025kb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    cfg_free(&c);

    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "grpc-addr", "127.0.0.1:8080", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'http-addr' (:8080) and 'grpc-addr' (127.0.0.1:8080) "
                      "must not use the same port");
    CHECK_EQ_INT(set1(&c, "http-addr", "127.0.0.2:8080", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "raft-addr", "127.0.0.2:8080", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK(strstr(err, "'raft-addr' (127.0.0.2:8080) and 'http-addr'") != NULL);
    /* Mandi mode does not open those ports. */
    CHECK_EQ_INT(set1(&c, "mode", "mandi", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    cfg_free(&c);

    /* One request of the largest size must fit the partial-input budget. */
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "max-partial-input", "2mb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'max-partial-input' (2mb) must be at least "
                      "'http-max-body' (4mb)");
    CHECK_EQ_INT(set1(&c, "http-max-body", "1mb", err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "max-value-size", "512kb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'max-partial-input' (2mb) must be at least "
                      "'grpc-max-message' (4mb)");
    CHECK_EQ_INT(set1(&c, "grpc-max-message", "2mb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    CHECK_EQ_INT(set1(&c, "max-partial-input", "1kb", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    /* Mandi holds no partial gRPC or node requests: not checked there. */
    CHECK_EQ_INT(set1(&c, "mode", "mandi", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    cfg_free(&c);

    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "initial-cluster",
                      "n2=127.0.0.1:12002,n3=127.0.0.1:12003", err, sizeof err),
                 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'initial-cluster' must list 'node-id' (node1)");
    CHECK_EQ_INT(set1(&c, "node-id", "n3", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
    cfg_free(&c);
}

/* cfg_load() of a config file holding text (none when NULL), then the
 * command-line words of args (NULL-terminated, may be NULL) and the
 * environment env. Returns "ok" or the message, the file's path written
 * "F" so that expectations read like the file (static). */
static const char *load_at(const char *text, const char *const *args,
                           char **env)
{
    static char out[1024];
    char *argv[16] = {"srv"};
    int argc = 1;
    char path[64] = "";
    if (text != NULL) {
        const char *p = temp_file(text);
        if (p == NULL)
            return "(no temporary file)";
        snprintf(path, sizeof path, "%s", p);
        argv[argc++] = path;
    }
    for (size_t i = 0; args != NULL && args[i] != NULL && argc < 15; i++)
        argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    struct pz_config c;
    char err[1024] = "";
    int rc = cfg_load(&c, argc, argv, env, err, sizeof err);
    cfg_free(&c);
    if (path[0] != '\0')
        unlink(path);
    if (rc == 0)
        return "ok";
    size_t n = 0, pl = strlen(path);
    for (const char *e = err; *e && n + 1 < sizeof out;) {
        if (pl > 0 && strncmp(e, path, pl) == 0) {
            out[n++] = 'F';
            e += pl;
        } else {
            out[n++] = *e++;
        }
    }
    out[n] = '\0';
    return out;
}

/* A broken cross-field rule names the place of the directive it blames,
 * as a bad value does, and where the others came from. */
TEST(cross_field_names_the_place)
{
    /* From the file: the line of each directive. */
    CHECK_EQ_STR(load_at("node-id n1\nheartbeat-interval 500ms\n"
                         "election-timeout 1s\n",
                         NULL, NULL),
                 "F:3: 'election-timeout' (1s) must be at least 3 x "
                 "'heartbeat-interval' (500ms, set at F:2)");
    /* A default is never blamed when the other was set. */
    CHECK_EQ_STR(load_at("heartbeat-interval 500ms\n", NULL, NULL),
                 "F:1: 'election-timeout' (1s, the default) must be at "
                 "least 3 x 'heartbeat-interval' (500ms)");
    CHECK_EQ_STR(load_at("# ports\ngrpc-addr :8080\n", NULL, NULL),
                 "F:2: 'http-addr' (:8080, the default) and 'grpc-addr' "
                 "(:8080) must not use the same port");
    CHECK_EQ_STR(
        load_at("node-id n1\ninitial-cluster n2=127.0.0.1:1\n", NULL, NULL),
        "F:2: 'initial-cluster' must list 'node-id' (n1, set at "
        "F:1)");
    CHECK_EQ_STR(
        load_at("max-partial-input 2mb\nhttp-max-body 8mb\n", NULL, NULL),
        "F:1: 'max-partial-input' (2mb) must be at least "
        "'http-max-body' (8mb, set at F:2)");
    CHECK_EQ_STR(load_at("max-value-size 4mb\n", NULL, NULL),
                 "F:1: 'http-max-body' (4mb, the default) must be at least "
                 "'max-key-size' (64kb, the default) + 'max-value-size' "
                 "(4mb) + 1kb");
    CHECK_EQ_STR(load_at("conn-high-water 64mb\n", NULL, NULL),
                 "F:1: 'conn-hard-limit' (64mb, the default) must be "
                 "greater than 'conn-high-water' (64mb)");
    CHECK_EQ_STR(load_at("max-value-size 64mb\nhttp-max-body 65mb\n"
                         "grpc-max-message 65mb\nconn-hard-limit 1gb\n"
                         "max-pending-output 1gb\n",
                         NULL, NULL),
                 "F:1: 'max-key-size' (64kb, the default) + "
                 "'max-value-size' (64mb) must stay within 64mb: a write "
                 "must fit in one Raft peer frame");
    CHECK(strncmp(load_at("\nraft-addr 0.0.0.0:12000\n", NULL, NULL),
                  "F:2: 'raft-addr' (0.0.0.0:12000) is not a loopback "
                  "address and 'cluster-token' is not set",
                  80) == 0);
    /* The TLS sets: the file named is blamed, not the one left empty. */
    CHECK_EQ_STR(load_at("tls-cert-file \"\"\ntls-key-file /k\n", NULL, NULL),
                 "F:2: 'tls-cert-file' and 'tls-key-file' must be set "
                 "together");
    CHECK_EQ_STR(load_at("node-id n1\npeer-tls-ca-file /ca\n", NULL, NULL),
                 "F:2: 'peer-tls-cert-file', 'peer-tls-key-file' and "
                 "'peer-tls-ca-file' must be set together (mutual TLS)");
    CHECK_EQ_STR(load_at("tls-client-auth require\n", NULL, NULL),
                 "F:1: 'tls-client-auth' require needs 'tls-cert-file', "
                 "'tls-key-file' and 'tls-ca-file' (the CA client "
                 "certificates chain to)");

    /* Mandi mode, from --mandi, with its file. */
    static const char *const mandi[] = {"--mandi", NULL};
    CHECK_EQ_STR(load_at("log-level info\nmandi-addr https://127.0.0.1:7000\n",
                         mandi, NULL),
                 "F:2: an https 'mandi-addr' needs 'tls-cert-file' and "
                 "'tls-key-file' in mandi mode");

    /* The command line: its own place, and it takes over from the file. */
    static const char *const hb[] = {"--heartbeat-interval", "400ms", NULL};
    CHECK_EQ_STR(load_at("election-timeout 1s\n", hb, NULL),
                 "F:1: 'election-timeout' (1s) must be at least 3 x "
                 "'heartbeat-interval' (400ms, set on the command line)");
    static const char *const et[] = {"--election-timeout", "1200ms", NULL};
    CHECK_EQ_STR(
        load_at("heartbeat-interval 500ms\nelection-timeout 2s\n", et, NULL),
        "command line: 'election-timeout' (1200ms) must be at "
        "least 3 x 'heartbeat-interval' (500ms, set at F:1)");
    static const char *const ports[] = {"--http-addr", ":7", "--grpc-addr=:7",
                                        NULL};
    CHECK_EQ_STR(load_at(NULL, ports, NULL),
                 "command line: 'http-addr' (:7) and 'grpc-addr' (:7, set "
                 "on the command line) must not use the same port");
    static const char *const node[] = {"--node-id", "n3", NULL};
    CHECK_EQ_STR(load_at("initial-cluster n2=127.0.0.1:1\n", node, NULL),
                 "F:1: 'initial-cluster' must list 'node-id' (n3, set on "
                 "the command line)");

    /* The environment: the variable, as for a bad value. */
    char *env_http[] = {"HTTP_ADDR=:9090", NULL};
    CHECK_EQ_STR(load_at(NULL, NULL, env_http),
                 "environment HTTP_ADDR: 'http-addr' (:9090) and "
                 "'grpc-addr' (:9090, the default) must not use the same "
                 "port");
    char *env_both[] = {"GRPC_ADDR=127.0.0.1:5", "HTTP_ADDR=:5", NULL};
    CHECK_EQ_STR(load_at(NULL, NULL, env_both),
                 "environment HTTP_ADDR: 'http-addr' (:5) and 'grpc-addr' "
                 "(127.0.0.1:5, set by environment GRPC_ADDR) must not use "
                 "the same port");
    char *env_node[] = {"NODE_ID=n3", NULL};
    CHECK_EQ_STR(load_at("initial-cluster n2=127.0.0.1:1\n", NULL, env_node),
                 "F:1: 'initial-cluster' must list 'node-id' (n3, set by "
                 "environment NODE_ID)");
    char *env_raft[] = {"RAFT_ADDR=0.0.0.0:12000", NULL};
    CHECK(strncmp(load_at(NULL, NULL, env_raft),
                  "environment RAFT_ADDR: 'raft-addr' (0.0.0.0:12000) is not "
                  "a loopback address",
                  70) == 0);
    /* The command line over the environment, the environment over the
     * file. */
    static const char *const over[] = {"--grpc-addr", ":6", NULL};
    CHECK_EQ_STR(
        load_at("http-addr :1\n", over, (char *[]){"HTTP_ADDR=:6", NULL}),
        "environment HTTP_ADDR: 'http-addr' (:6) and 'grpc-addr' "
        "(:6, set on the command line) must not use the same port");
    /* Checked alone (cfg_check), a rule has no place to name. */
    struct pz_config c;
    char err[256];
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "heartbeat-interval", "1s", err, sizeof err), 0);
    CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "'election-timeout' (1s) must be at least 3 x "
                      "'heartbeat-interval' (1s)");
    cfg_free(&c);
}

/* A write must fit in one Raft peer frame (64 MiB with its message). */
TEST(pending_output_holds_a_connection)
{
    struct pz_config c;
    char err[512] = "";
    char *ok[] = {"srv", "--max-pending-output", "64mb", NULL};
    CHECK_EQ_INT(cfg_load(&c, 3, ok, NULL, err, sizeof err), 0);
    CHECK_EQ_INT(c.max_pending_output, 64 << 20);
    cfg_free(&c);
    char *small[] = {"srv", "--max-pending-output", "32mb", NULL};
    CHECK_EQ_INT(cfg_load(&c, 3, small, NULL, err, sizeof err), PZ_ECONFIG);
    CHECK_EQ_STR(err, "command line: 'max-pending-output' (32mb) must be at "
                      "least 'conn-hard-limit' (64mb, the default)");
    cfg_free(&c);
}

TEST(value_fits_a_peer_frame)
{
    struct pz_config c;
    char err[512] = "";
    char *ok[] = {"srv", "--max-value-size", "62mb", "--http-max-body",
                  "63mb", "--grpc-max-message", "63mb", NULL};
    CHECK_EQ_INT(cfg_load(&c, 7, ok, NULL, err, sizeof err), 0);
    cfg_free(&c);
    char *big[] = {"srv", "--max-value-size", "64mb", "--http-max-body",
                   "65mb", "--grpc-max-message", "65mb", "--conn-hard-limit",
                   "1gb", NULL};
    CHECK_EQ_INT(cfg_load(&c, 9, big, NULL, err, sizeof err), PZ_ECONFIG);
    CHECK(strstr(err, "must stay within 64mb") != NULL);
    cfg_free(&c);
}

/* A token travels in an Authorization header: printable ASCII without
 * blanks, at most CFG_TOKEN_MAX characters. */
TEST(token_characters)
{
    struct pz_config c;
    char err[512] = "";
    static const char *const bad[] = {"two words", "tab\there", " lead",
                                      "trail ", "caf\xc3\xa9", "del\x7f"};
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "cluster-token", "Ok.-_~!#$%&*+/=?^|0123456789",
                      err, sizeof err),
                 0);
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        CHECK(set1(&c, "cluster-token", bad[i], err, sizeof err) != 0);
        CHECK(strstr(err, "printable ASCII characters without blanks") != NULL);
    }
    char longest[CFG_TOKEN_MAX + 2];
    memset(longest, 'x', sizeof longest);
    longest[CFG_TOKEN_MAX] = '\0';
    CHECK_EQ_INT(set1(&c, "cluster-token", longest, err, sizeof err), 0);
    longest[CFG_TOKEN_MAX] = 'x';
    longest[CFG_TOKEN_MAX + 1] = '\0';
    CHECK(set1(&c, "cluster-token", longest, err, sizeof err) != 0);
    cfg_free(&c);
}

/* No token: the Raft port must be on loopback, unless `none` says the
 * cluster is open on purpose (then everything sees an empty token). */
TEST(open_cluster_needs_loopback)
{
    struct pz_config c;
    char err[512] = "";
    static const char *const loop[] = {"127.0.0.1:1", "127.9.8.7:1",
                                       "[::1]:1", "localhost:1"};
    static const char *const open[] = {":12000", "0.0.0.0:1", "10.0.0.1:1",
                                       "[::]:1", "db.example:1"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(loop); i++) {
        cfg_init(&c);
        CHECK_EQ_INT(set1(&c, "raft-addr", loop[i], err, sizeof err), 0);
        CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
        cfg_free(&c);
    }
    for (size_t i = 0; i < PZ_ARRAY_SIZE(open); i++) {
        cfg_init(&c);
        CHECK_EQ_INT(set1(&c, "raft-addr", open[i], err, sizeof err), 0);
        CHECK_EQ_INT(cfg_check(&c, err, sizeof err), PZ_ECONFIG);
        CHECK(strstr(err, "is not a loopback address and 'cluster-token' is "
                          "not set") != NULL);
        CHECK_EQ_INT(set1(&c, "cluster-token", "s3cret", err, sizeof err), 0);
        CHECK_EQ_INT(cfg_check(&c, err, sizeof err), 0);
        cfg_free(&c);
    }
    /* `none` through cfg_load: allowed anywhere, seen as no token. */
    char *argv[] = {"srv", "--raft-addr", "10.0.0.1:12000", "--cluster-token",
                    "none", NULL};
    CHECK_EQ_INT(cfg_load(&c, 5, argv, NULL, err, sizeof err), 0);
    CHECK_EQ_STR(c.cluster_token, "");
    CHECK(c.cluster_token_none);
    cfg_free(&c);
    char *argv2[] = {"srv", "--raft-addr", "10.0.0.1:12000", NULL};
    CHECK_EQ_INT(cfg_load(&c, 3, argv2, NULL, err, sizeof err), PZ_ECONFIG);
    cfg_free(&c);
    /* mandi opens no Raft port */
    char *argv3[] = {"srv", "--mandi", "--raft-addr", "10.0.0.1:12000", NULL};
    CHECK_EQ_INT(cfg_load(&c, 4, argv3, NULL, err, sizeof err), 0);
    cfg_free(&c);
}

TEST(initial_cluster_good)
{
    struct cfg_peer *p = (struct cfg_peer *)1;
    size_t n = 99;
    char why[256] = "";
    CHECK_EQ_INT(cfg_parse_cluster("", &p, &n, why, sizeof why), 0);
    CHECK(p == NULL);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(cfg_parse_cluster("   ", &p, &n, why, sizeof why), 0);
    CHECK_EQ_INT(n, 0);

    CHECK_EQ_INT(
        cfg_parse_cluster("node1=127.0.0.1:12000", &p, &n, why, sizeof why), 0);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_STR(p[0].name, "node1");
    CHECK_EQ_STR(p[0].addr, "127.0.0.1:12000");
    pz_free(p);

    CHECK_EQ_INT(cfg_parse_cluster(" a=127.0.0.11:12000 , b.2=h:1,"
                                   "c_3=[::1]:12000 ",
                                   &p, &n, why, sizeof why),
                 0);
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_STR(p[0].name, "a");
    CHECK_EQ_STR(p[0].addr, "127.0.0.11:12000");
    CHECK_EQ_STR(p[1].name, "b.2");
    CHECK_EQ_STR(p[1].addr, "h:1");
    CHECK_EQ_STR(p[2].name, "c_3");
    CHECK_EQ_STR(p[2].addr, "[::1]:12000");
    pz_free(p);

    struct pz_config c;
    char err[256];
    cfg_init(&c);
    CHECK_EQ_INT(set1(&c, "initial-cluster", "x=h:1,y=h:2", err, sizeof err),
                 0);
    CHECK_EQ_STR(c.initial_cluster, "x=h:1,y=h:2");
    cfg_free(&c);
}

TEST(initial_cluster_bad)
{
    struct {
        const char *spec;
        const char *why;
    } bad[] = {
        {"a=h:1,", "has an empty entry"},
        {",a=h:1", "has an empty entry"},
        {"a=h:1,,b=h:2", "has an empty entry"},
        {"a", "entry 'a' is not name=host:port"},
        {"a=h:1,b", "entry 'b' is not name=host:port"},
        {"=h:1", "entry '=h:1' has a bad name (1 to 63 characters from A-Z "
                 "a-z 0-9 . _ -)"},
        {"a b=h:1", "entry 'a b=h:1' has a bad name (1 to 63 characters "
                    "from A-Z a-z 0-9 . _ -)"},
        {"a=:12000", "entry 'a=:12000' has a bad address (host:port, port 1 "
                     "to 65535)"},
        {"a=h:0", "entry 'a=h:0' has a bad address (host:port, port 1 to "
                  "65535)"},
        {"a=h", "entry 'a=h' has a bad address (host:port, port 1 to "
                "65535)"},
        {"a=h:1=2", "entry 'a=h:1=2' has a bad address (host:port, port 1 "
                    "to 65535)"},
        {"a=h:1,a=h:2", "has a duplicate name 'a'"},
        {"a=h:1,b=h:1", "has a duplicate address 'h:1'"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        struct cfg_peer *p = (struct cfg_peer *)1;
        size_t n = 99;
        char why[256] = "";
        CHECK_EQ_INT(cfg_parse_cluster(bad[i].spec, &p, &n, why, sizeof why),
                     PZ_EINVAL);
        CHECK_EQ_STR(why, bad[i].why);
        CHECK(p == NULL);
        CHECK_EQ_INT(n, 0);
    }
    char longname[100];
    memset(longname, 'n', 64);
    snprintf(longname + 64, sizeof longname - 64, "=h:1");
    struct cfg_peer *p;
    size_t n;
    char why[256];
    CHECK_EQ_INT(cfg_parse_cluster(longname, &p, &n, why, sizeof why),
                 PZ_EINVAL);

    /* Through a file: the error names file, line and directive. */
    struct pz_config c;
    char err[512];
    CHECK_EQ_INT(
        load_text(&c, "\ninitial-cluster a=h:1,a=h:2\n", err, sizeof err),
        PZ_ECONFIG);
    CHECK_EQ_STR(line1(err), "pyazdb.conf:2: 'initial-cluster' has a "
                             "duplicate name 'a': 'a=h:1,a=h:2'");
    cfg_free(&c);
}

TEST(help_lists_everything)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f != NULL);
    cfg_print_help(f);
    fclose(f);
    for (size_t i = 0; i < cfg_directive_count(); i++) {
        const struct cfg_directive *d = cfg_directive_at(i);
        char want[128];
        snprintf(want, sizeof want, "  --%s <", d->name);
        CHECK(strstr(buf, want) != NULL);
        CHECK(strstr(buf, d->help) != NULL);
    }
    for (size_t i = 0; i < cfg_env_count(); i++)
        CHECK(strstr(buf, cfg_env_at(i)->var) != NULL);
    CHECK(strstr(buf, "--max-clients <int 1..1000000>  (default: 10000)") !=
          NULL);
    CHECK(strstr(buf, "--heartbeat-interval <duration 10ms..10s>  (default: "
                      "100ms)") != NULL);
    CHECK(strstr(buf, "--log-level <debug|info|warning|error>") != NULL);
    CHECK(strstr(buf, "--log-file <string>  (default: \"\")") != NULL);
    CHECK(strstr(buf, "defaults < config file < environment < command "
                      "line") != NULL);
    free(buf);
}

/* ------------------------------------------------------------------------
 * pyazdb.conf and the table agree. The file documents each directive as:
 * a paragraph of comments, optionally "# (mandi too)", "# Default: <v>",
 * then the directive line, active ("name value") or not ("# name value"),
 * under a "#### SECTION ####" banner. */

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    struct pz_buf b;
    pz_buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        pz_buf_append(&b, chunk, n);
    fclose(f);
    pz_buf_append(&b, "", 1);
    *len = b.len - 1;
    return b.data;
}

/* Next line of text at *p into buf (no newline); false at the end. */
static bool next_line(const char **p, const char *end, char *buf, size_t buflen)
{
    if (*p >= end)
        return false;
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    const char *e = nl ? nl : end;
    size_t n = (size_t)(e - *p);
    if (n >= buflen)
        n = buflen - 1;
    memcpy(buf, *p, n);
    buf[n] = '\0';
    *p = nl ? nl + 1 : end;
    return true;
}

TEST(conf_file_matches_table)
{
    size_t len;
    char *text = read_all("pyazdb.conf", &len);
    CHECK(text != NULL);
    size_t nd = cfg_directive_count();
    int documented[96] = {0};
    CHECK(nd <= PZ_ARRAY_SIZE(documented));

    const char *p = text, *end = text + len;
    char line[512], prev[512] = "", section[64] = "";
    bool mandi_marked = false, reload_marked = false;
    int lineno = 0;
    struct pz_config scratch;
    char err[512];
    cfg_init(&scratch);
    while (next_line(&p, end, line, sizeof line)) {
        lineno++;
        if (strncmp(line, "####", 4) == 0) {
            const char *s = line + strspn(line, "# ");
            size_t sl = strcspn(s, " #");
            CHECK(sl > 0 && sl < sizeof section);
            memcpy(section, s, sl);
            section[sl] = '\0';
            continue;
        }
        if (strcmp(line, "# (mandi too)") == 0)
            mandi_marked = true;
        if (strcmp(line, "# (applied on reload)") == 0)
            reload_marked = true;
        if (strncmp(line, "# Default: ", 11) != 0) {
            if (line[0] == '\0')
                mandi_marked = reload_marked = false;
            snprintf(prev, sizeof prev, "%s", line);
            continue;
        }
        /* The paragraph before "# Default:" explains the directive. */
        CHECK(strncmp(prev, "# ", 2) == 0);
        const char *def = line + 11;
        char dline[512];
        CHECK(next_line(&p, end, dline, sizeof dline));
        lineno++;
        const char *dl = strncmp(dline, "# ", 2) == 0 ? dline + 2 : dline;
        char name[64];
        size_t nl = strcspn(dl, " ");
        CHECK(nl > 0 && nl < sizeof name && dl[nl] == ' ');
        memcpy(name, dl, nl);
        name[nl] = '\0';
        const struct cfg_directive *d = cfg_find(name);
        if (d == NULL)
            fprintf(stderr, "    pyazdb.conf:%d: '%s' not in the table\n",
                    lineno, name);
        CHECK(d != NULL);
        CHECK_EQ_STR(name, d->name);
        size_t idx = (size_t)(d - cfg_directive_at(0));
        CHECK_EQ_INT(documented[idx], 0);
        documented[idx] = lineno;
        /* "# Default:" shows the table default ("" for an empty one). */
        CHECK_EQ_STR(d->def[0] ? def : (strcmp(def, "\"\"") ? "x" : ""),
                     d->def);
        CHECK_EQ_STR(section, d->section);
        if (mandi_marked != ((d->flags & CFG_MANDI) != 0))
            fprintf(stderr, "    pyazdb.conf: '%s' (mandi too) mismatch\n",
                    d->name);
        CHECK_EQ_INT(mandi_marked, (d->flags & CFG_MANDI) != 0);
        /* "(applied on reload)" exactly on what a reload applies. */
        if (reload_marked != !(d->flags & CFG_IMMUTABLE))
            fprintf(stderr, "    pyazdb.conf: '%s' (applied on reload) "
                            "mismatch\n", d->name);
        CHECK_EQ_INT(reload_marked, !(d->flags & CFG_IMMUTABLE));
        mandi_marked = reload_marked = false;
        /* A commented-out example must be a valid line too. */
        if (dl != dline) {
            int rc = cfg_load_string(&scratch, dl, strlen(dl), "example", err,
                                     sizeof err);
            if (rc != 0)
                fprintf(stderr, "    %s\n", err);
            CHECK_EQ_INT(rc, 0);
        }
    }
    cfg_free(&scratch);
    for (size_t i = 0; i < nd; i++) {
        if (documented[i] == 0)
            fprintf(stderr, "    '%s' is not documented in pyazdb.conf\n",
                    cfg_directive_at(i)->name);
        CHECK(documented[i] != 0);
    }
    /* The header names every environment variable and the precedence. */
    for (size_t i = 0; i < cfg_env_count(); i++) {
        char want[64];
        snprintf(want, sizeof want, "%s -> %s", cfg_env_at(i)->var,
                 cfg_env_at(i)->directive);
        char *hit = strstr(text, cfg_env_at(i)->var);
        CHECK(hit != NULL);
        /* "VAR<blanks>-> directive" */
        const char *q = hit + strlen(cfg_env_at(i)->var);
        q += strspn(q, " ");
        CHECK(strncmp(q, "-> ", 3) == 0);
        CHECK(strncmp(q + 3, cfg_env_at(i)->directive,
                      strlen(cfg_env_at(i)->directive)) == 0);
    }
    CHECK(strstr(text, "defaults < this file < environment < command line"));
    pz_free(text);

    /* The file loads as is, and makes a self-bootstrapping node. */
    struct pz_config c;
    char *argv[] = {"pyazdb-server", "pyazdb.conf", NULL};
    CHECK_EQ_INT(cfg_load(&c, 2, argv, NULL, err, sizeof err), 0);
    CHECK(c.raft_bootstrap);
    CHECK_EQ_STR(c.raft_data, "./data");
    cfg_free(&c);
}

/* cfg_copy() is deep; cfg_same() sees a change of any one directive. */
TEST(copy_and_same)
{
    struct pz_config a, b;
    char err[512];
    cfg_init(&a);
    CHECK_EQ_INT(cfg_set(&a, "node-id", "n7", "t", 0, err, sizeof err), 0);
    CHECK_EQ_INT(cfg_set(&a, "log-level", "debug", "t", 0, err, sizeof err),
                 0);
    cfg_copy(&b, &a);
    CHECK(b.node_id != a.node_id);
    CHECK_EQ_STR(b.node_id, "n7");
    for (size_t i = 0; i < cfg_directive_count(); i++)
        CHECK(cfg_same(&a, &b, cfg_directive_at(i)));
    /* One directive of each type changed: only it differs. */
    static const char *const changes[][2] = {
        {"node-id", "n8"},          {"http-addr", ":8081"},
        {"raft-bootstrap", "yes"},  {"max-clients", "5"},
        {"max-key-size", "1k"},     {"client-idle-timeout", "1s"},
        {"log-level", "error"},
    };
    for (size_t k = 0; k < PZ_ARRAY_SIZE(changes); k++) {
        struct pz_config c;
        cfg_copy(&c, &a);
        CHECK_EQ_INT(cfg_set(&c, changes[k][0], changes[k][1], "t", 0, err,
                             sizeof err),
                     0);
        for (size_t i = 0; i < cfg_directive_count(); i++) {
            const struct cfg_directive *d = cfg_directive_at(i);
            CHECK_EQ_INT(cfg_same(&a, &c, d),
                         strcmp(d->name, changes[k][0]) != 0);
        }
        cfg_free(&c);
    }
    cfg_free(&a);
    /* b outlives a: its strings are its own */
    CHECK_EQ_STR(b.node_id, "n7");
    cfg_free(&b);
}

/* A reload applies exactly these; every other directive needs a
 * restart. */
TEST(reload_set)
{
    static const char *const live[] = {
        "max-clients", "client-idle-timeout", "client-header-timeout",
        "client-body-timeout", "log-level", "log-file", "tls-cert-file",
        "tls-key-file", "tls-ca-file", "tls-client-auth",
        "peer-tls-cert-file", "peer-tls-key-file", "peer-tls-ca-file",
        "protected-mode", "client-token-file", "mandi-ca-file"};
    for (size_t i = 0; i < cfg_directive_count(); i++) {
        const struct cfg_directive *d = cfg_directive_at(i);
        bool found = false;
        for (size_t k = 0; k < PZ_ARRAY_SIZE(live); k++)
            found = found || strcmp(live[k], d->name) == 0;
        CHECK_EQ_INT(found, !(d->flags & CFG_IMMUTABLE));
    }
}

static const struct test_case config_cases[] = {
    TEST_ENTRY(defaults),
    TEST_ENTRY(table_rows_sane),
    TEST_ENTRY(format_round_trip),
    TEST_ENTRY(parse_bool),
    TEST_ENTRY(parse_int_bounds),
    TEST_ENTRY(parse_size_units),
    TEST_ENTRY(parse_duration_units),
    TEST_ENTRY(parse_enum),
    TEST_ENTRY(parse_address),
    TEST_ENTRY(parse_strings),
    TEST_ENTRY(unknown_directive_set),
    TEST_ENTRY(file_syntax),
    TEST_ENTRY(file_syntax_errors),
    TEST_ENTRY(file_value_errors),
    TEST_ENTRY(file_duplicates),
    TEST_ENTRY(file_unreadable),
    TEST_ENTRY(env_mapping),
    TEST_ENTRY(precedence),
    TEST_ENTRY(command_line),
    TEST_ENTRY(test_config_and_flags),
    TEST_ENTRY(mandi_shorthand),
    TEST_ENTRY(cross_field),
    TEST_ENTRY(cross_field_names_the_place),
    TEST_ENTRY(token_characters),
    TEST_ENTRY(open_cluster_needs_loopback),
    TEST_ENTRY(value_fits_a_peer_frame),
    TEST_ENTRY(pending_output_holds_a_connection),
    TEST_ENTRY(initial_cluster_good),
    TEST_ENTRY(initial_cluster_bad),
    TEST_ENTRY(help_lists_everything),
    TEST_ENTRY(conf_file_matches_table),
    TEST_ENTRY(copy_and_same),
    TEST_ENTRY(reload_set),
    TEST_END,
};

const struct test_suite suite_config = {"config", config_cases};
