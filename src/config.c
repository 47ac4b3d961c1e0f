/* config.c - the directive table and the one parser behind every source of
 * configuration (defaults, config file, environment, command line).
 *
 * Owns: the static table directives[] (one row per directive; adding a
 * directive means adding a field to struct pz_config, one row here and its
 * documentation in pyazdb.conf, which a unit test enforces), the value
 * parsers of each type, the config-file tokenizer, the argv grammar and
 * the cross-field rules.
 *
 * Happy path: cfg_load() fills the defaults by parsing each row's default
 * string, applies the file, the environment and the command line through
 * cfg_set(), then runs cfg_check().
 *
 * Failure modes: any bad input stops loading at the first error with
 * PZ_ECONFIG and a message naming its source (file:line, "environment VAR"
 * or "command line"), a broken cross-field rule included: cfg_load()
 * remembers where each directive was set; the caller prints it and exits. A
 * default that does not parse is a bug in the table and trips an assertion in
 * cfg_init().
 *
 * Pure except cfg_load_file() (reads one file) and cfg_print_help(). */
#include "config.h"
#include "raft_codec.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KB INT64_C(1024)
#define MB (1024 * KB)
#define GB (1024 * MB)
#define TB (1024 * GB)
#define MS_PER_S INT64_C(1000)
#define MS_PER_MIN (60 * MS_PER_S)
#define MS_PER_DAY (24 * 60 * MS_PER_MIN)

/* Room a request needs around its key and value (JSON or protobuf). */
#define FRAMING_SLACK KB
/* A config file larger than this is refused rather than read. */
#define FILE_MAX (16 * MB)

static const char *const mode_words[] = {"server", "mandi", NULL};
static const char *const log_level_words[] = {"debug", "info", "warning",
                                              "error", NULL};
static const char *const log_format_words[] = {"text", "json", NULL};
/* The order of enum tls_client_auth (tls.h). */
static const char *const client_auth_words[] = {"none", "optional",
                                                "require", NULL};

static int check_node_id(const char *v, char *why, size_t whylen);
static int check_nonempty(const char *v, char *why, size_t whylen);
static int check_cluster(const char *v, char *why, size_t whylen);
static int check_mandi_url(const char *v, char *why, size_t whylen);
static int check_token(const char *v, char *why, size_t whylen);

/* clang-format off */
/* offsetof() of a field, refusing to compile when the field's C type does
 * not match what the directive type stores. */
#define FIELD(f, T)                                                          \
    (offsetof(struct pz_config, f) +                                         \
     0 * sizeof(char[_Generic(((struct pz_config *)0)->f, T: 1,              \
                              default: -1)]))

/* One builder per type keeps each row on a few lines. */
#define D_STRING(sec, name, f, def, fl, chk, help)                           \
    {name, CFG_STRING, FIELD(f, char *), def, 0, 0, fl, NULL, chk, sec, help}
#define D_ADDR(sec, name, f, def, fl, help)                                  \
    {name, CFG_ADDR, FIELD(f, char *), def, 0, 0, fl, NULL, NULL, sec, help}
#define D_BOOL(sec, name, f, def, fl, help)                                  \
    {name, CFG_BOOL, FIELD(f, bool), def, 0, 1, fl, NULL, NULL, sec, help}
#define D_ENUM(sec, name, f, def, words, fl, help)                           \
    {name, CFG_ENUM, FIELD(f, int), def, 0, 0, fl, words, NULL, sec, help}
#define D_INT(sec, name, f, def, lo, hi, fl, help)                           \
    {name, CFG_INT, FIELD(f, int64_t), def, lo, hi, fl, NULL, NULL, sec, help}
#define D_SIZE(sec, name, f, def, lo, hi, fl, help)                          \
    {name, CFG_SIZE, FIELD(f, int64_t), def, lo, hi, fl, NULL, NULL, sec,    \
     help}
#define D_DURATION(sec, name, f, def, lo, hi, fl, help)                      \
    {name, CFG_DURATION, FIELD(f, int64_t), def, lo, hi, fl, NULL, NULL,     \
     sec, help}

/* clang-format on */

#define IMM CFG_IMMUTABLE
#define MANDI CFG_MANDI

/* The table. Rows are grouped by pyazdb.conf section, in file order. */
static const struct cfg_directive directives[] = {
    D_ENUM("GENERAL", "mode", mode, "server", mode_words, IMM | MANDI,
           "run as a database node (server) or the discovery service "
           "(mandi)"),
    D_STRING("GENERAL", "node-id", node_id, "node1", IMM, check_node_id,
             "this node's unique name in the cluster"),

    D_ADDR("NETWORK", "http-addr", http_addr, ":8080", IMM,
           "listen address of the HTTP API"),
    D_ADDR("NETWORK", "grpc-addr", grpc_addr, ":9090", IMM,
           "listen address of the gRPC API"),
    D_STRING("NETWORK", "mandi-addr", mandi_addr, "http://127.0.0.1:7000",
             IMM | MANDI, check_mandi_url,
             "URL of mandi (none: no discovery); in mandi mode, its "
             "listen address"),
    D_DURATION("NETWORK", "mandi-interval", mandi_interval_ms, "2s", 50,
               60 * MS_PER_MIN, IMM,
               "how often the leader publishes itself in mandi and reads "
               "join requests, and a node that is not a member posts its "
               "join request"),
    D_STRING("NETWORK", "cluster-token", cluster_token, "", IMM | MANDI,
             check_token,
             "shared secret of the cluster; empty = no check (loopback "
             "raft-addr only), none = no check anywhere"),

    D_ADDR("RAFT", "raft-addr", raft_addr, "127.0.0.1:12000", IMM,
           "address peers reach this node's Raft transport on"),
    D_BOOL("RAFT", "raft-bind-source", raft_bind_source, "no", IMM,
           "dial peers from raft-addr's host, so that firewall rules can "
           "tell nodes apart"),
    D_STRING("RAFT", "raft-data", raft_data, "./data", IMM, check_nonempty,
             "directory holding the Raft log and state"),
    D_BOOL("RAFT", "raft-bootstrap", raft_bootstrap, "no", IMM,
           "start a one-node cluster when there is no state yet"),
    D_STRING("RAFT", "initial-cluster", initial_cluster, "", IMM, check_cluster,
             "initial members name=host:port,...; empty means none"),
    D_DURATION("RAFT", "heartbeat-interval", heartbeat_interval_ms, "100ms", 10,
               10 * MS_PER_S, IMM, "how often the leader sends heartbeats"),
    D_DURATION("RAFT", "election-timeout", election_timeout_ms, "1000ms", 30,
               60 * MS_PER_S, IMM,
               "silence after which a follower stands for election"),
    D_BOOL("RAFT", "raft-read-lease", raft_read_lease, "yes", IMM,
           "the leader confirms linearizable reads by the lease of its "
           "last heartbeat round (clocks that run at about the same rate) "
           "instead of one round per read"),
    D_INT("RAFT", "raft-snapshot-entries", raft_snapshot_entries, "65536", 1,
          1000000000, IMM, "take a snapshot after this many new entries"),
    D_INT("RAFT", "raft-trailing-entries", raft_trailing_entries, "10240", 0,
          1000000000, IMM, "log entries kept behind a snapshot"),
    D_SIZE("RAFT", "raft-snapshot-bytes", raft_snapshot_bytes, "256mb", KB, TB,
           IMM,
           "take a snapshot after new entries of this many bytes (or of the "
           "last snapshot's size, if larger) at the latest"),
    D_SIZE("RAFT", "raft-trailing-bytes", raft_trailing_bytes, "64mb", 0, TB,
           IMM, "most bytes of log entries kept behind a snapshot"),
    D_SIZE("RAFT", "raft-max-uncommitted", raft_max_uncommitted, "64mb",
           64 * KB, 64 * GB, IMM,
           "the leader refuses writes while those it has not committed and "
           "applied yet hold this many bytes (one is always taken)"),
    D_SIZE("RAFT", "raft-snapshot-max-size", raft_snapshot_max_size, "0", 0, TB,
           IMM,
           "largest snapshot accepted from the leader; 0 = 4 x own data, at "
           "least 4gb"),
    D_SIZE("RAFT", "quota-backend-bytes", quota_backend_bytes, "0", 0, TB, IMM,
           "most bytes of data stored (keys, values and 96 per key); past "
           "it only deletes are accepted (NOSPACE alarm); 0 = no quota"),
    D_INT("RAFT", "txn-max-range-keys", txn_max_range_keys, "100000", 1,
          1000000, IMM,
          "most keys the range reads of one transaction may visit"),
    D_INT("RAFT", "snapshot-max-streams", snapshot_max_streams, "2", 1, 64, IMM,
          "most snapshots sent to clients at once (backups, etcd "
          "Snapshot)"),
    D_DURATION("RAFT", "snapshot-stall-timeout", snapshot_stall_timeout_ms,
               "30s", 1 * MS_PER_S, MS_PER_DAY, IMM,
               "cancel a snapshot sent to a client that took nothing for "
               "this long"),
    D_DURATION("RAFT", "snapshot-backup-interval", snapshot_backup_interval_ms,
               "5s", 0, MS_PER_DAY, IMM,
               "a backup that needs a new snapshot waits until this long "
               "after the last one started for backups"),
    D_DURATION("RAFT", "request-timeout", request_timeout_ms, "5s", 100,
               10 * 60 * MS_PER_S, IMM,
               "how long a request waits for the cluster before failing"),

    D_INT("LIMITS", "max-clients", max_clients, "10000", 1, 1000000, MANDI,
          "most open client connections per listener"),
    D_DURATION("LIMITS", "client-idle-timeout", client_idle_timeout_ms, "300s",
               0, MS_PER_DAY, MANDI,
               "close a client silent this long; 0 = never"),
    D_DURATION("LIMITS", "client-header-timeout", client_header_timeout_ms,
               "10s", 100, MS_PER_DAY, MANDI,
               "time from the first byte of a request to the end of its "
               "headers"),
    D_DURATION("LIMITS", "client-body-timeout", client_body_timeout_ms, "60s",
               100, MS_PER_DAY, MANDI,
               "time from the end of a request's headers to the end of its "
               "body"),
    D_SIZE("LIMITS", "max-key-size", max_key_size, "64kb", 1, MB, IMM,
           "largest key accepted"),
    D_SIZE("LIMITS", "max-value-size", max_value_size, "1mb", 0, 512 * MB, IMM,
           "largest value accepted"),
    D_SIZE("LIMITS", "http-max-body", http_max_body, "4mb", KB, GB, IMM | MANDI,
           "largest HTTP request body (413 beyond)"),
    D_SIZE("LIMITS", "http-max-header-size", http_max_header_size, "16kb", KB,
           MB, IMM | MANDI, "largest HTTP request line plus headers, in bytes"),
    D_INT("LIMITS", "http-max-headers", http_max_headers, "100", 1, 10000,
          IMM | MANDI, "most header fields in one HTTP request"),
    D_SIZE("LIMITS", "conn-high-water", conn_high_water, "1mb", KB, GB,
           IMM | MANDI, "output queued per connection before its reads pause"),
    D_SIZE("LIMITS", "conn-hard-limit", conn_hard_limit, "64mb", KB, 16 * GB,
           IMM | MANDI, "output queued per connection that closes it"),
    D_SIZE("LIMITS", "grpc-max-message", grpc_max_message, "4mb", KB, GB, IMM,
           "largest gRPC message (RESOURCE_EXHAUSTED beyond)"),
    D_DURATION("LIMITS", "lease-max-ttl", lease_max_ttl_ms, "2592000s",
               MS_PER_S, INT64_C(315360000) * MS_PER_S, IMM,
               "longest TTL a lease may be granted (whole seconds)"),
    D_INT("LIMITS", "lease-max-count", lease_max_count, "10000", 1, 1048576,
          IMM, "most leases the cluster holds at once"),
    D_SIZE("LIMITS", "max-partial-input", max_partial_input, "256mb", KB,
           64 * GB, IMM | MANDI,
           "partly received requests held at once, all clients together"),
    D_SIZE("LIMITS", "max-pending-output", max_pending_output, "256mb", KB,
           64 * GB, IMM | MANDI,
           "answers waiting for clients held at once, all clients together"),
    D_INT("LIMITS", "watch-history-events", watch_history_events, "10000", 1,
          100000000, IMM, "most events the watch history keeps"),
    D_SIZE("LIMITS", "watch-history-bytes", watch_history_bytes, "64mb", KB,
           64 * GB, IMM, "most bytes the watch history keeps"),
    D_SIZE("LIMITS", "watch-max-buffer", watch_max_buffer, "4mb", KB, 16 * GB,
           IMM,
           "history bytes a watcher may fall behind before it is "
           "cancelled as slow"),
    D_INT("LIMITS", "max-watchers", max_watchers, "10000", 0, 1000000, IMM,
          "most watch streams open at once on this node"),
    D_DURATION("LIMITS", "watch-progress-interval", watch_progress_interval_ms,
               "10s", 10, MS_PER_DAY, IMM,
               "a watch stream that sent nothing this long gets a progress "
               "event"),
    D_SIZE("LIMITS", "watch-output-budget", watch_output_budget, "64mb",
           64 * KB, 16 * GB, IMM,
           "output all watch streams together may have waiting "
           "for their clients (each at least 4kb)"),
    D_INT("LIMITS", "etcd-watch-max-per-stream", etcd_watch_max_per_stream,
          "1000", 1, 1000000, IMM,
          "most watches one etcd Watch stream (gRPC) may hold"),

    D_DURATION("MANDI", "mandi-leader-ttl", mandi_leader_ttl_ms, "10s", 10,
               MS_PER_DAY, IMM | MANDI,
               "mandi forgets the leader this long after its last update"),
    D_DURATION("MANDI", "mandi-join-ttl", mandi_join_ttl_ms, "30s", 10,
               MS_PER_DAY, IMM | MANDI,
               "mandi forgets a join request this long after it was posted"),
    D_DURATION("MANDI", "mandi-sweep-interval", mandi_sweep_interval_ms, "5s",
               10, MS_PER_DAY, IMM | MANDI,
               "how often mandi drops expired entries"),
    D_INT("MANDI", "mandi-max-join-requests", mandi_max_join_requests, "1024",
          1, 1000000, IMM | MANDI, "most join requests mandi holds at once"),

    D_STRING("TLS", "tls-cert-file", tls_cert_file, "", MANDI, NULL,
             "PEM certificate chain of the HTTP and gRPC listeners; empty = "
             "plain text"),
    D_STRING("TLS", "tls-key-file", tls_key_file, "", MANDI, NULL,
             "PEM private key of tls-cert-file"),
    D_STRING("TLS", "tls-ca-file", tls_ca_file, "", MANDI, NULL,
             "PEM CAs that client certificates must chain to"),
    D_ENUM("TLS", "tls-client-auth", tls_client_auth, "none", client_auth_words,
           MANDI,
           "client certificates: none, optional (verified when sent) or "
           "require"),
    D_STRING("TLS", "peer-tls-cert-file", peer_tls_cert_file, "", 0, NULL,
             "PEM certificate of this node for the Raft transport (mutual "
             "TLS); it must name node-id as a DNS subjectAltName"),
    D_STRING("TLS", "peer-tls-key-file", peer_tls_key_file, "", 0, NULL,
             "PEM private key of peer-tls-cert-file"),
    D_STRING("TLS", "peer-tls-ca-file", peer_tls_ca_file, "", 0, NULL,
             "PEM CA of the cluster: peers' certificates must chain to it"),
    D_STRING("TLS", "client-token-file", client_token_file, "", 0, NULL,
             "bearer tokens of the data API, one per line (NAME ro|rw "
             "TOKEN [PREFIX ...]); empty = no tokens asked"),
    D_STRING("TLS", "mandi-ca-file", mandi_ca_file, "", 0, NULL,
             "PEM CAs that an https mandi-addr's certificate must chain "
             "to; empty = tls-ca-file, else the system's CAs"),
    D_BOOL("TLS", "protected-mode", protected_mode, "yes", 0,
           "without tls-cert-file, serve HTTP and gRPC clients from "
           "loopback only"),

    D_ENUM("LOGGING", "log-level", log_level, "info", log_level_words, MANDI,
           "least severe level logged"),
    D_ENUM("LOGGING", "log-format", log_format, "text", log_format_words,
           IMM | MANDI,
           "text: one line per event; json: one JSON object per line (time, "
           "level, node, msg)"),
    D_STRING("LOGGING", "log-file", log_file, "", MANDI, NULL,
             "append the log to this file (reopened on reload); empty = "
             "stderr"),
};

#define N_DIRECTIVES PZ_ARRAY_SIZE(directives)

static const struct cfg_env env_map[] = {
    {"NODE_ID", "node-id"},       {"RAFT_ADDR", "raft-addr"},
    {"RAFT_DATA", "raft-data"},   {"RAFT_LEADER", "raft-bootstrap"},
    {"GRPC_ADDR", "grpc-addr"},   {"HTTP_ADDR", "http-addr"},
    {"MANDI_ADDR", "mandi-addr"},
};

/* ------------------------------------------------------------------------
 * Messages */

static void fmt_err(char *err, size_t errlen, const char *source, int line,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* "source:line: message" (or "source: message" when line <= 0, or just
 * the message when source is NULL). */
static void vfmt_err(char *err, size_t errlen, const char *source, int line,
                     const char *fmt, va_list ap)
{
    if (errlen == 0)
        return;
    int n;
    if (source == NULL)
        n = 0;
    else if (line > 0)
        n = snprintf(err, errlen, "%s:%d: ", source, line);
    else
        n = snprintf(err, errlen, "%s: ", source);
    if (n < 0)
        n = 0;
    if ((size_t)n >= errlen)
        return;
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
}

static void fmt_err(char *err, size_t errlen, const char *source, int line,
                    const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfmt_err(err, errlen, source, line, fmt, ap);
    va_end(ap);
}

static const char source_cmdline[] = "command line";

/* Where one directive got its value, kept by cfg_load() so that a broken
 * cross-field rule names the place to fix, as a bad value does. */
enum where_kind {
    WHERE_DEFAULT = 0, /* not set: the table default */
    WHERE_FILE,        /* a line of the config file */
    WHERE_ENV,         /* an environment variable */
    WHERE_CMDLINE,     /* a command-line flag */
};

struct where {
    enum where_kind kind;
    const char *name; /* WHERE_FILE: the path; WHERE_ENV: the variable */
    int line;         /* WHERE_FILE: the line number */
};

/* The source and line that fmt_err() takes for w, so that messages start
 * as those of cfg_set() do: the path with *line, "environment NODE_ID"
 * (written into buf) or "command line"; NULL for a default. */
static const char *where_source(const struct where *w, char *buf, size_t len,
                                int *line)
{
    *line = w->kind == WHERE_FILE ? w->line : 0;
    switch (w->kind) {
    case WHERE_DEFAULT:
        break;
    case WHERE_FILE:
        return w->name;
    case WHERE_ENV:
        snprintf(buf, len, "environment %s", w->name);
        return buf;
    case WHERE_CMDLINE:
        return source_cmdline;
    }
    return NULL;
}

/* Add a second line quoting the offending file line. */
static void append_line(char *err, size_t errlen, const char *line, size_t len)
{
    size_t used = strnlen(err, errlen);
    if (used + 1 >= errlen)
        return;
    int ilen = len > 200 ? 200 : (int)len;
    snprintf(err + used, errlen - used, "\n>>> '%.*s%s'", ilen, line,
             len > 200 ? "..." : "");
}

/* ------------------------------------------------------------------------
 * Formatting numbers back to text */

static void fmt_size(int64_t v, char *buf, size_t len)
{
    if (v != 0 && v % TB == 0)
        snprintf(buf, len, "%" PRId64 "tb", v / TB);
    else if (v != 0 && v % GB == 0)
        snprintf(buf, len, "%" PRId64 "gb", v / GB);
    else if (v != 0 && v % MB == 0)
        snprintf(buf, len, "%" PRId64 "mb", v / MB);
    else if (v != 0 && v % KB == 0)
        snprintf(buf, len, "%" PRId64 "kb", v / KB);
    else
        snprintf(buf, len, "%" PRId64, v);
}

static void fmt_duration(int64_t v, char *buf, size_t len)
{
    if (v == 0)
        snprintf(buf, len, "0");
    else if (v % MS_PER_S == 0)
        snprintf(buf, len, "%" PRId64 "s", v / MS_PER_S);
    else
        snprintf(buf, len, "%" PRId64 "ms", v);
}

static void fmt_number(enum cfg_type t, int64_t v, char *buf, size_t len)
{
    if (t == CFG_SIZE)
        fmt_size(v, buf, len);
    else if (t == CFG_DURATION)
        fmt_duration(v, buf, len);
    else
        snprintf(buf, len, "%" PRId64, v);
}

/* ------------------------------------------------------------------------
 * Value parsers. Each returns 0, or -1 with a phrase in why that completes
 * "'<name>' ...". */

union cfg_value {
    char *s;   /* CFG_STRING, CFG_ADDR (borrowed from the input) */
    bool b;    /* CFG_BOOL */
    int64_t i; /* CFG_INT, CFG_SIZE, CFG_DURATION */
    int e;     /* CFG_ENUM */
};

/* Unsigned decimal digits at *p (at least one), advancing *p. Returns 0,
 * -1 when there is no digit, -2 on overflow of int64_t. */
static int parse_digits(const char **p, int64_t *out)
{
    const char *s = *p;
    int64_t v = 0;
    if (!isdigit((unsigned char)*s))
        return -1;
    for (; isdigit((unsigned char)*s); s++) {
        int d = *s - '0';
        if (v > (INT64_MAX - d) / 10)
            return -2;
        v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return 0;
}

struct unit {
    const char *suffix; /* lower case */
    int64_t mult;       /* value of one unit */
};

static const struct unit size_units[] = {
    {"", 1},   {"b", 1},   {"k", KB}, {"kb", KB}, {"m", MB}, {"mb", MB},
    {"g", GB}, {"gb", GB}, {"t", TB}, {"tb", TB}, {NULL, 0},
};

static const struct unit duration_units[] = {
    {"", 1}, {"ms", 1}, {"s", MS_PER_S}, {"m", MS_PER_MIN}, {NULL, 0},
};

/* Number with an optional unit. Returns 0, -1 malformed, -2 too large. */
static int parse_with_unit(const char *s, const struct unit *units,
                           int64_t *out)
{
    const char *p = s;
    int64_t v;
    int rc = parse_digits(&p, &v);
    if (rc < 0)
        return rc;
    for (const struct unit *u = units; u->suffix; u++) {
        if (strcasecmp(p, u->suffix) != 0)
            continue;
        if (v > INT64_MAX / u->mult)
            return -2;
        *out = v * u->mult;
        return 0;
    }
    return -1;
}

static int parse_int(const char *s, int64_t *out)
{
    const char *p = s;
    bool neg = *p == '-';
    if (neg)
        p++;
    int64_t v;
    int rc = parse_digits(&p, &v);
    if (rc < 0)
        return rc;
    if (*p != '\0')
        return -1;
    *out = neg ? -v : v;
    return 0;
}

static bool is_wildcard_host(const char *h)
{
    return h[0] == '\0' || strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0;
}

/* host:port, [v6]:port or :port (when !need_host); port 1..65535 in plain
 * digits; no blanks or control characters; an unbracketed host holds no
 * colon. On success host and port are filled as pz_split_hostport() does
 * (host "0.0.0.0" for ":port"). */
static bool valid_addr(const char *s, bool need_host, char *host,
                       size_t hostlen, int *port)
{
    size_t len = strlen(s);
    if (len == 0 || len > CFG_ADDR_MAX)
        return false;
    for (const char *p = s; *p; p++)
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p))
            return false;
    const char *colon = strrchr(s, ':');
    if (colon == NULL)
        return false;
    size_t hl = (size_t)(colon - s);
    if (hl > 0 && s[0] == '[') {
        if (hl < 3 || s[hl - 1] != ']')
            return false;
        if (memchr(s + 1, '[', hl - 1) || memchr(s + 1, ']', hl - 2))
            return false;
    } else if (memchr(s, ':', hl) || memchr(s, '[', hl) || memchr(s, ']', hl)) {
        return false;
    }
    if (need_host && hl == 0)
        return false;
    const char *ps = colon + 1;
    size_t pl = strlen(ps);
    if (pl == 0 || pl > 5 || strspn(ps, "0123456789") != pl)
        return false;
    if (pz_split_hostport(s, host, hostlen, port) != 0)
        return false;
    return *port >= 1 && *port <= 65535;
}

static int parse_value(const struct cfg_directive *d, const char *v,
                       union cfg_value *out, char *why, size_t whylen)
{
    char lo[32], hi[32];
    int rc;
    switch (d->type) {
    case CFG_STRING:
        out->s = (char *)v;
        break;
    case CFG_ADDR: {
        char host[256];
        int port;
        if (!valid_addr(v, false, host, sizeof host, &port)) {
            snprintf(why, whylen,
                     "must be host:port or :port with a port "
                     "from 1 to 65535");
            return -1;
        }
        out->s = (char *)v;
        break;
    }
    case CFG_BOOL:
        if (strcasecmp(v, "yes") == 0 || strcasecmp(v, "true") == 0 ||
            strcmp(v, "1") == 0) {
            out->b = true;
        } else if (strcasecmp(v, "no") == 0 || strcasecmp(v, "false") == 0 ||
                   strcmp(v, "0") == 0) {
            out->b = false;
        } else {
            snprintf(why, whylen, "must be yes or no");
            return -1;
        }
        break;
    case CFG_ENUM: {
        int i;
        for (i = 0; d->words[i]; i++)
            if (strcasecmp(v, d->words[i]) == 0)
                break;
        if (d->words[i] == NULL) {
            size_t n = (size_t)snprintf(why, whylen, "must be one of");
            for (int j = 0; d->words[j] && n < whylen; j++)
                n += (size_t)snprintf(why + n, whylen - n, "%s %s",
                                      j ? "," : "", d->words[j]);
            return -1;
        }
        out->e = i;
        break;
    }
    case CFG_INT:
    case CFG_SIZE:
    case CFG_DURATION:
        if (d->type == CFG_INT)
            rc = parse_int(v, &out->i);
        else
            rc = parse_with_unit(
                v, d->type == CFG_SIZE ? size_units : duration_units, &out->i);
        if (rc == -1) {
            snprintf(why, whylen, "%s",
                     d->type == CFG_INT    ? "must be an integer"
                     : d->type == CFG_SIZE ? "must be a size: a number of "
                                             "bytes with an optional unit "
                                             "b, kb, mb, gb or tb"
                                           : "must be a duration: a number "
                                             "of milliseconds with an "
                                             "optional unit ms, s or m");
            return -1;
        }
        if (rc == -2 || out->i < d->min || out->i > d->max) {
            fmt_number(d->type, d->min, lo, sizeof lo);
            fmt_number(d->type, d->max, hi, sizeof hi);
            snprintf(why, whylen, "must be between %s and %s", lo, hi);
            return -1;
        }
        break;
    }
    if (d->check != NULL && d->check(v, why, whylen) != 0)
        return -1;
    return 0;
}

/* ------------------------------------------------------------------------
 * Validators */

static bool valid_name(const char *s, size_t len)
{
    if (len == 0 || len > CFG_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '.' && ch != '_' && ch != '-')
            return false;
    }
    return true;
}

static int check_node_id(const char *v, char *why, size_t whylen)
{
    if (valid_name(v, strlen(v)))
        return 0;
    snprintf(why, whylen, "must be 1 to %d characters from A-Z a-z 0-9 . _ -",
             CFG_NAME_MAX);
    return -1;
}

static int check_nonempty(const char *v, char *why, size_t whylen)
{
    if (v[0] != '\0')
        return 0;
    snprintf(why, whylen, "must not be empty");
    return -1;
}

static int check_cluster(const char *v, char *why, size_t whylen)
{
    struct cfg_peer *peers;
    size_t n;
    if (cfg_parse_cluster(v, &peers, &n, why, whylen) != 0)
        return -1;
    pz_free(peers);
    return 0;
}

static int check_mandi_url(const char *v, char *why, size_t whylen)
{
    char host[256];
    int port;
    if (strcmp(v, "none") == 0 || cfg_url_hostport(v, host, sizeof host,
                                                   &port) == 0)
        return 0;
    snprintf(why, whylen,
             "must be a URL http://host:port or https://host:port, or none");
    return -1;
}

/* A token travels in an HTTP header: printable ASCII, no blanks. */
static int check_token(const char *v, char *why, size_t whylen)
{
    size_t n = strlen(v);
    bool ok = n <= CFG_TOKEN_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = v[i] > ' ' && v[i] < 0x7f;
    if (ok)
        return 0;
    snprintf(why, whylen,
             "must be at most %d printable ASCII characters without blanks",
             CFG_TOKEN_MAX);
    return -1;
}

bool cfg_url_is_https(const char *url)
{
    return strncasecmp(url, "https://", 8) == 0;
}

int cfg_url_hostport(const char *url, char *host, size_t hostlen, int *port)
{
    static const char scheme[] = "http://";
    const char *a;
    if (strncasecmp(url, scheme, sizeof scheme - 1) == 0)
        a = url + sizeof scheme - 1;
    else if (cfg_url_is_https(url))
        a = url + 8;
    else
        return PZ_EINVAL;
    size_t alen = strcspn(a, "/");
    if (a[alen] == '/' && a[alen + 1] != '\0')
        return PZ_EINVAL; /* a path: we append our own */
    if (alen == 0 || alen > CFG_ADDR_MAX)
        return PZ_EINVAL;
    char addr[CFG_ADDR_MAX + 1];
    memcpy(addr, a, alen);
    addr[alen] = '\0';
    char h[256];
    if (!valid_addr(addr, true, h, sizeof h, port))
        return PZ_EINVAL;
    if (strlen(h) >= hostlen)
        return PZ_EINVAL;
    strcpy(host, h);
    return 0;
}

static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

int cfg_parse_cluster(const char *spec, struct cfg_peer **peers, size_t *npeers,
                      char *why, size_t whylen)
{
    *peers = NULL;
    *npeers = 0;
    const char *p = spec;
    while (is_blank(*p))
        p++;
    if (*p == '\0')
        return 0;
    size_t cap = 1;
    for (const char *q = spec; *q; q++)
        cap += *q == ',';
    struct cfg_peer *out = pz_calloc(cap, sizeof *out);
    size_t n = 0;
    p = spec;
    for (;;) {
        const char *e = p + strcspn(p, ",");
        const char *next = *e == ',' ? e + 1 : NULL;
        while (p < e && is_blank(*p))
            p++;
        while (e > p && is_blank(e[-1]))
            e--;
        size_t len = (size_t)(e - p);
        int ilen = len > 100 ? 100 : (int)len;
        if (len == 0) {
            snprintf(why, whylen, "has an empty entry");
            goto err_after_alloc;
        }
        const char *eq = memchr(p, '=', len);
        if (eq == NULL) {
            snprintf(why, whylen, "entry '%.*s' is not name=host:port", ilen,
                     p);
            goto err_after_alloc;
        }
        size_t nl = (size_t)(eq - p), al = (size_t)(e - eq - 1);
        if (!valid_name(p, nl)) {
            snprintf(why, whylen,
                     "entry '%.*s' has a bad name (1 to %d characters from "
                     "A-Z a-z 0-9 . _ -)",
                     ilen, p, CFG_NAME_MAX);
            goto err_after_alloc;
        }
        char host[256];
        int port;
        if (al <= CFG_ADDR_MAX) {
            memcpy(out[n].addr, eq + 1, al);
            out[n].addr[al] = '\0';
        }
        if (al > CFG_ADDR_MAX ||
            !valid_addr(out[n].addr, true, host, sizeof host, &port)) {
            snprintf(why, whylen,
                     "entry '%.*s' has a bad address (host:port, port 1 to "
                     "65535)",
                     ilen, p);
            goto err_after_alloc;
        }
        memcpy(out[n].name, p, nl);
        out[n].name[nl] = '\0';
        for (size_t i = 0; i < n; i++) {
            if (strcmp(out[i].name, out[n].name) == 0) {
                snprintf(why, whylen, "has a duplicate name '%s'", out[n].name);
                goto err_after_alloc;
            }
            if (strcmp(out[i].addr, out[n].addr) == 0) {
                snprintf(why, whylen, "has a duplicate address '%s'",
                         out[n].addr);
                goto err_after_alloc;
            }
        }
        n++;
        if (next == NULL)
            break;
        p = next;
    }
    *peers = out;
    *npeers = n;
    return 0;

err_after_alloc:
    pz_free(out);
    return PZ_EINVAL;
}

/* ------------------------------------------------------------------------
 * The table */

size_t cfg_directive_count(void)
{
    return N_DIRECTIVES;
}

const struct cfg_directive *cfg_directive_at(size_t i)
{
    return i < N_DIRECTIVES ? &directives[i] : NULL;
}

const struct cfg_directive *cfg_find(const char *name)
{
    for (size_t i = 0; i < N_DIRECTIVES; i++)
        if (strcasecmp(directives[i].name, name) == 0)
            return &directives[i];
    return NULL;
}

const char *cfg_type_name(enum cfg_type type)
{
    switch (type) {
    case CFG_STRING:
        return "string";
    case CFG_BOOL:
        return "bool";
    case CFG_INT:
        return "int";
    case CFG_SIZE:
        return "size";
    case CFG_DURATION:
        return "duration";
    case CFG_ENUM:
        return "enum";
    case CFG_ADDR:
        return "address";
    }
    return "?";
}

size_t cfg_env_count(void)
{
    return PZ_ARRAY_SIZE(env_map);
}

const struct cfg_env *cfg_env_at(size_t i)
{
    return i < PZ_ARRAY_SIZE(env_map) ? &env_map[i] : NULL;
}

static void *field(struct pz_config *c, const struct cfg_directive *d)
{
    return (char *)c + d->offset;
}

static const void *cfield(const struct pz_config *c,
                          const struct cfg_directive *d)
{
    return (const char *)c + d->offset;
}

static void store(struct pz_config *c, const struct cfg_directive *d,
                  const union cfg_value *v)
{
    void *f = field(c, d);
    switch (d->type) {
    case CFG_STRING:
    case CFG_ADDR: {
        char **s = f;
        pz_free(*s);
        *s = pz_strdup(v->s);
        break;
    }
    case CFG_BOOL:
        *(bool *)f = v->b;
        break;
    case CFG_ENUM:
        *(int *)f = v->e;
        break;
    case CFG_INT:
    case CFG_SIZE:
    case CFG_DURATION:
        *(int64_t *)f = v->i;
        break;
    }
}

void cfg_init(struct pz_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        char why[256];
        union cfg_value v;
        int rc =
            parse_value(&directives[i], directives[i].def, &v, why, sizeof why);
        pz_assert(rc == 0);
        store(c, &directives[i], &v);
    }
}

void cfg_free(struct pz_config *c)
{
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        if (directives[i].type != CFG_STRING && directives[i].type != CFG_ADDR)
            continue;
        char **s = field(c, &directives[i]);
        pz_free(*s);
        *s = NULL;
    }
}

void cfg_copy(struct pz_config *dst, const struct pz_config *src)
{
    *dst = *src;
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        if (directives[i].type != CFG_STRING && directives[i].type != CFG_ADDR)
            continue;
        char **s = field(dst, &directives[i]);
        *s = pz_strdup(*s ? *s : "");
    }
}

bool cfg_same(const struct pz_config *a, const struct pz_config *b,
              const struct cfg_directive *d)
{
    const void *fa = cfield(a, d), *fb = cfield(b, d);
    switch (d->type) {
    case CFG_STRING:
    case CFG_ADDR: {
        const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
        return strcmp(sa ? sa : "", sb ? sb : "") == 0;
    }
    case CFG_BOOL:
        return *(const bool *)fa == *(const bool *)fb;
    case CFG_ENUM:
        return *(const int *)fa == *(const int *)fb;
    case CFG_INT:
    case CFG_SIZE:
    case CFG_DURATION:
        return *(const int64_t *)fa == *(const int64_t *)fb;
    }
    return false;
}

void cfg_format(const struct pz_config *c, const struct cfg_directive *d,
                char *buf, size_t len)
{
    const void *f = cfield(c, d);
    switch (d->type) {
    case CFG_STRING:
    case CFG_ADDR: {
        const char *s = *(char *const *)f;
        snprintf(buf, len, "%s", s ? s : "");
        break;
    }
    case CFG_BOOL:
        snprintf(buf, len, "%s", *(const bool *)f ? "yes" : "no");
        break;
    case CFG_ENUM:
        snprintf(buf, len, "%s", d->words[*(const int *)f]);
        break;
    case CFG_INT:
    case CFG_SIZE:
    case CFG_DURATION:
        fmt_number(d->type, *(const int64_t *)f, buf, len);
        break;
    }
}

int cfg_set(struct pz_config *c, const char *name, const char *value,
            const char *source, int line, char *err, size_t errlen)
{
    const struct cfg_directive *d = cfg_find(name);
    if (d == NULL) {
        fmt_err(err, errlen, source, line, "unknown directive '%s'", name);
        return PZ_ECONFIG;
    }
    char why[256];
    union cfg_value v;
    if (parse_value(d, value, &v, why, sizeof why) != 0) {
        fmt_err(err, errlen, source, line, "'%s' %s: '%s'", d->name, why,
                value);
        return PZ_ECONFIG;
    }
    store(c, d, &v);
    return 0;
}

/* ------------------------------------------------------------------------
 * Config files */

/* The value after the name: quoted or bare, then nothing but blanks.
 * Returns a new string, or NULL with *why set. */
static char *parse_file_value(const char *p, const char *e, const char **why)
{
    char *v = pz_malloc((size_t)(e - p) + 1), *w = v;
    if (*p == '"') {
        for (p++;; p++) {
            if (p == e) {
                *why = "unterminated quoted value";
                goto err_after_alloc;
            }
            if (*p == '"')
                break;
            if (*p == '\\') {
                if (++p == e) {
                    *why = "unterminated quoted value";
                    goto err_after_alloc;
                }
                if (*p != '"' && *p != '\\') {
                    *why = "unknown escape in quoted value (only \\\" and "
                           "\\\\ are allowed)";
                    goto err_after_alloc;
                }
            }
            *w++ = *p;
        }
        p++; /* the closing quote */
    } else {
        for (; p < e && !is_blank(*p); p++) {
            if (*p == '"') {
                *why = "unexpected quote inside a value";
                goto err_after_alloc;
            }
            *w++ = *p;
        }
    }
    *w = '\0';
    while (p < e && is_blank(*p))
        p++;
    if (p != e) {
        *why = "unexpected text after the value (quote a value that holds "
               "blanks)";
        goto err_after_alloc;
    }
    return v;

err_after_alloc:
    pz_free(v);
    return NULL;
}

/* One line (without its newline). seen[] holds the line each directive was
 * set on in this file, 0 if not yet. */
static int load_line(struct pz_config *c, const char *line, size_t len,
                     const char *source, int lineno, int *seen, char *err,
                     size_t errlen)
{
    const char *p = line, *e = line + len;
    if (memchr(line, '\0', len) != NULL) {
        fmt_err(err, errlen, source, lineno, "NUL byte in the line");
        return PZ_ECONFIG;
    }
    while (p < e && is_blank(*p))
        p++;
    if (p == e || *p == '#')
        return 0;
    const char *ns = p;
    while (p < e && !is_blank(*p))
        p++;
    char *name = pz_strndup(ns, (size_t)(p - ns));
    int rc = PZ_ECONFIG;
    const struct cfg_directive *d = cfg_find(name);
    if (d == NULL) {
        fmt_err(err, errlen, source, lineno, "unknown directive '%s'", name);
        goto out;
    }
    size_t idx = (size_t)(d - directives);
    if (seen[idx] != 0) {
        fmt_err(err, errlen, source, lineno,
                "duplicate directive '%s' (first set on line %d)", d->name,
                seen[idx]);
        goto out;
    }
    while (p < e && is_blank(*p))
        p++;
    if (p == e) {
        fmt_err(err, errlen, source, lineno, "missing value for '%s'", d->name);
        goto out;
    }
    const char *why = NULL;
    char *value = parse_file_value(p, e, &why);
    if (value == NULL) {
        fmt_err(err, errlen, source, lineno, "%s for '%s'", why, d->name);
        goto out;
    }
    rc = cfg_set(c, d->name, value, source, lineno, err, errlen);
    pz_free(value);
    if (rc == 0)
        seen[idx] = lineno;

out:
    pz_free(name);
    return rc;
}

/* Errors of one file reported at once: a user fixes them in one go. */
#define CFG_MAX_ERRORS 5

/* cfg_load_string(), leaving in seen[] (N_DIRECTIVES entries, zeroed by the
 * caller) the line each directive was set on, 0 for none. */
static int load_text(struct pz_config *c, const char *text, size_t len,
                     const char *source, int *seen, char *err, size_t errlen)
{
    const char *p = text, *end = text + len;
    int lineno = 0, first_rc = 0, nerr = 0;
    char one[512];
    if (errlen > 0)
        err[0] = '\0';
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        size_t ll = (size_t)(e - p);
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        lineno++;
        one[0] = '\0';
        int rc = load_line(c, p, ll, source, lineno, seen, one, sizeof one);
        if (rc != 0) {
            /* Go on: the other lines are checked too, and the first
             * CFG_MAX_ERRORS errors reported, one per line. */
            if (first_rc == 0)
                first_rc = rc;
            if (nerr < CFG_MAX_ERRORS && errlen > 0) {
                append_line(one, sizeof one, p, ll);
                size_t used = strnlen(err, errlen);
                snprintf(err + used, errlen - used, "%s%s",
                         nerr ? "\n" : "", one);
            }
            nerr++;
        }
        p = nl ? nl + 1 : end;
    }
    if (nerr > CFG_MAX_ERRORS && errlen > 0) {
        size_t used = strnlen(err, errlen);
        snprintf(err + used, errlen - used, "\n(%d more errors)",
                 nerr - CFG_MAX_ERRORS);
    }
    return first_rc;
}

int cfg_load_string(struct pz_config *c, const char *text, size_t len,
                    const char *source, char *err, size_t errlen)
{
    int seen[N_DIRECTIVES] = {0};
    return load_text(c, text, len, source, seen, err, errlen);
}

/* cfg_load_file(), with seen[] as load_text() leaves it. */
static int load_file(struct pz_config *c, const char *path, int *seen,
                     char *err, size_t errlen)
{
    /* Only a regular file: a FIFO would block the start, or the loop on
     * SIGHUP, until something writes to it. */
    const char *why;
    FILE *f = pz_fopen_regular(path, &why);
    if (f == NULL) {
        fmt_err(err, errlen, path, 0, "cannot open: %s", why);
        return PZ_ECONFIG;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    int rc = 0;
    for (;;) {
        pz_buf_reserve(&b, 65536);
        size_t n = fread(b.data + b.len, 1, b.cap - b.len, f);
        b.len += n;
        if ((int64_t)b.len > FILE_MAX) {
            fmt_err(err, errlen, path, 0, "file larger than 16mb");
            rc = PZ_ECONFIG;
            break;
        }
        if (n == 0) {
            if (ferror(f)) {
                fmt_err(err, errlen, path, 0, "cannot read: %s",
                        strerror(errno));
                rc = PZ_ECONFIG;
            }
            break;
        }
    }
    fclose(f);
    if (rc == 0)
        rc = load_text(c, b.data ? b.data : "", b.len, path, seen, err, errlen);
    pz_buf_free(&b);
    return rc;
}

int cfg_load_file(struct pz_config *c, const char *path, char *err,
                  size_t errlen)
{
    int seen[N_DIRECTIVES] = {0};
    return load_file(c, path, seen, err, errlen);
}

/* ------------------------------------------------------------------------
 * Environment */

static const char *env_lookup(char **envp, const char *var)
{
    size_t vl = strlen(var);
    for (char **e = envp; *e; e++)
        if (strncmp(*e, var, vl) == 0 && (*e)[vl] == '=')
            return *e + vl + 1;
    return NULL;
}

/* cfg_load_env(), recording in where[] (when not NULL) the variables that
 * set a directive. */
static int load_env(struct pz_config *c, char **envp, struct where *where,
                    char *err, size_t errlen)
{
    if (envp == NULL)
        return 0;
    for (size_t i = 0; i < PZ_ARRAY_SIZE(env_map); i++) {
        const char *v = env_lookup(envp, env_map[i].var);
        if (v == NULL || v[0] == '\0')
            continue;
        struct where w = {WHERE_ENV, env_map[i].var, 0};
        char buf[64];
        int line;
        const char *source = where_source(&w, buf, sizeof buf, &line);
        int rc = cfg_set(c, env_map[i].directive, v, source, line, err, errlen);
        if (rc != 0)
            return rc;
        if (where != NULL)
            where[cfg_find(env_map[i].directive) - directives] = w;
    }
    return 0;
}

int cfg_load_env(struct pz_config *c, char **envp, char *err, size_t errlen)
{
    return load_env(c, envp, NULL, err, errlen);
}

/* ------------------------------------------------------------------------
 * Command line */

enum arg_kind {
    ARG_FILE,        /* a config file path */
    ARG_FLAG,        /* --help, --version and their short forms */
    ARG_TEST_CONFIG, /* --test-config FILE */
    ARG_DIRECTIVE,   /* --name value, --name=value, --mandi */
};

struct arg {
    enum arg_kind kind;
    const char *opt;               /* the option token */
    size_t optlen;                 /* its length without "=value" */
    const struct cfg_directive *d; /* ARG_DIRECTIVE */
    const char *value;             /* FILE path or directive value */
};

/* Classify argv[*i] and consume it (and its value), advancing *i. Returns
 * 0, or PZ_ECONFIG with a message (*i then skips just the bad token). */
static int next_arg(int argc, char **argv, int *i, struct arg *a, char *err,
                    size_t errlen)
{
    const char *s = argv[(*i)++];
    memset(a, 0, sizeof *a);
    a->opt = s;
    a->optlen = strlen(s);
    if (strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0 ||
        strcmp(s, "--version") == 0 || strcmp(s, "-v") == 0) {
        a->kind = ARG_FLAG;
        return 0;
    }
    if (strcmp(s, "--mandi") == 0) {
        a->kind = ARG_DIRECTIVE;
        a->d = cfg_find("mode");
        a->value = "mandi";
        return 0;
    }
    if (s[0] != '-') {
        a->kind = ARG_FILE;
        a->value = s;
        return 0;
    }
    if (s[1] != '-' || s[2] == '\0') {
        fmt_err(err, errlen, source_cmdline, 0, "unknown option '%s'", s);
        return PZ_ECONFIG;
    }
    const char *eq = strchr(s, '=');
    a->optlen = eq ? (size_t)(eq - s) : strlen(s);
    char *name = pz_strndup(s + 2, a->optlen - 2);
    bool test_config = strcmp(name, "test-config") == 0;
    a->d = test_config ? NULL : cfg_find(name);
    if (!test_config && a->d == NULL) {
        fmt_err(err, errlen, source_cmdline, 0, "unknown directive '%s'", name);
        pz_free(name);
        return PZ_ECONFIG;
    }
    pz_free(name);
    a->kind = test_config ? ARG_TEST_CONFIG : ARG_DIRECTIVE;
    if (eq != NULL) {
        a->value = eq + 1;
    } else if (*i < argc) {
        a->value = argv[(*i)++];
    } else {
        fmt_err(err, errlen, source_cmdline, 0, "missing value for '%s'", s);
        return PZ_ECONFIG;
    }
    return 0;
}

bool cfg_has_flag(int argc, char **argv, const char *flag)
{
    char err[8];
    size_t fl = strlen(flag);
    for (int i = 1; i < argc;) {
        struct arg a;
        if (next_arg(argc, argv, &i, &a, err, sizeof err) != 0)
            continue;
        if (a.kind != ARG_FILE && a.optlen == fl &&
            strncmp(a.opt, flag, fl) == 0)
            return true;
    }
    return false;
}

static int check_rules(const struct pz_config *c, const struct where *where,
                       char *err, size_t errlen);

int cfg_load(struct pz_config *c, int argc, char **argv, char **envp, char *err,
             size_t errlen)
{
    cfg_init(c);
    struct arg *args = pz_calloc(argc > 0 ? (size_t)argc : 1, sizeof *args);
    size_t nargs = 0;
    bool seen[N_DIRECTIVES] = {false};
    int lines[N_DIRECTIVES] = {0};
    struct where where[N_DIRECTIVES];
    memset(where, 0, sizeof where); /* WHERE_DEFAULT */
    const char *path = NULL;
    int rc = 0;

    /* The grammar first, so a typo on the command line is reported before
     * the file is read. */
    for (int i = 1; i < argc;) {
        struct arg a;
        rc = next_arg(argc, argv, &i, &a, err, errlen);
        if (rc != 0)
            goto out;
        if (a.kind == ARG_FILE || a.kind == ARG_TEST_CONFIG) {
            if (path != NULL) {
                fmt_err(err, errlen, source_cmdline, 0,
                        "more than one config file: '%s' and '%s'", path,
                        a.value);
                rc = PZ_ECONFIG;
                goto out;
            }
            path = a.value;
        } else if (a.kind == ARG_DIRECTIVE) {
            size_t idx = (size_t)(a.d - directives);
            if (seen[idx]) {
                fmt_err(err, errlen, source_cmdline, 0,
                        "duplicate directive '%s'", a.d->name);
                rc = PZ_ECONFIG;
                goto out;
            }
            seen[idx] = true;
            args[nargs++] = a;
        }
    }

    if (path != NULL && (rc = load_file(c, path, lines, err, errlen)) != 0)
        goto out;
    for (size_t i = 0; i < N_DIRECTIVES; i++)
        if (lines[i] > 0)
            where[i] = (struct where){WHERE_FILE, path, lines[i]};
    if ((rc = load_env(c, envp, where, err, errlen)) != 0)
        goto out;
    for (size_t k = 0; k < nargs; k++) {
        rc = cfg_set(c, args[k].d->name, args[k].value, source_cmdline, 0, err,
                     errlen);
        if (rc != 0)
            goto out;
        where[args[k].d - directives] = (struct where){WHERE_CMDLINE, NULL, 0};
    }
    if (strcmp(c->cluster_token, "none") == 0) {
        /* No token, on purpose: everything else sees "". */
        pz_free(c->cluster_token);
        c->cluster_token = pz_strdup("");
        c->cluster_token_none = true;
    }
    rc = check_rules(c, where, err, errlen);

out:
    pz_free(args);
    return rc;
}

/* ------------------------------------------------------------------------
 * Cross-field rules
 *
 * A broken rule involves several directives. Its message starts with the
 * place of the one blamed: the first of the rule's list that was set, so
 * that a value left at its default is not blamed when another was set.
 * Each other value shown says where it came from: "(500ms, set at
 * pyazdb.conf:2)", "(:8080, set by environment HTTP_ADDR)", "(2s, set on
 * the command line)" or "(100ms, the default)". Through cfg_check() the
 * places are unknown and the message is the rule alone. */

struct rules {
    const struct pz_config *c;
    const struct where *where; /* per directive; NULL: places unknown */
    const struct where *at;    /* the place the message starts with */
    char *err;
    size_t errlen;
};

/* Room for a value with its place: an address, a path and a line (a path
 * longer than this is cut; the message's own prefix is not). */
#define VAL_MAX 1024

static const struct where *where_of(const struct rules *r, const char *name)
{
    const struct cfg_directive *d = cfg_find(name);
    pz_assert(d != NULL);
    return r->where != NULL ? &r->where[d - directives] : NULL;
}

/* Blame the first of the named directives (a NULL-terminated list) that
 * was set; none when all hold their defaults. */
static void blame(struct rules *r, ...) __attribute__((sentinel));

static void blame(struct rules *r, ...)
{
    va_list ap;
    va_start(ap, r);
    r->at = NULL;
    const char *name;
    while (r->where != NULL && (name = va_arg(ap, const char *)) != NULL) {
        const struct where *w = where_of(r, name);
        if (w->kind != WHERE_DEFAULT) {
            r->at = w;
            break;
        }
    }
    va_end(ap);
}

/* The value of directive name for a message, followed by its place unless
 * the message starts with it. Returns buf. */
static const char *val(const struct rules *r, const char *name, char *buf,
                       size_t len)
{
    char v[CFG_ADDR_MAX + 32];
    cfg_format(r->c, cfg_find(name), v, sizeof v);
    const struct where *w = where_of(r, name);
    if (w == NULL || w == r->at) {
        snprintf(buf, len, "%s", v);
        return buf;
    }
    switch (w->kind) {
    case WHERE_DEFAULT:
        snprintf(buf, len, "%s, the default", v);
        break;
    case WHERE_FILE:
        snprintf(buf, len, "%s, set at %s:%d", v, w->name, w->line);
        break;
    case WHERE_ENV:
        snprintf(buf, len, "%s, set by environment %s", v, w->name);
        break;
    case WHERE_CMDLINE:
        snprintf(buf, len, "%s, set on the %s", v, source_cmdline);
        break;
    }
    return buf;
}

static int fail(const struct rules *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The message of a broken rule, at the place blame() chose. */
static int fail(const struct rules *r, const char *fmt, ...)
{
    char buf[64];
    int line = 0;
    const char *source =
        r->at != NULL ? where_source(r->at, buf, sizeof buf, &line) : NULL;
    va_list ap;
    va_start(ap, fmt);
    vfmt_err(r->err, r->errlen, source, line, fmt, ap);
    va_end(ap);
    return PZ_ECONFIG;
}

static int check_port_clash(struct rules *r)
{
    const struct pz_config *c = r->c;
    const char *names[] = {"raft-addr", "http-addr", "grpc-addr"};
    const char *vals[] = {c->raft_addr, c->http_addr, c->grpc_addr};
    char host[3][256];
    int port[3];
    for (int i = 0; i < 3; i++)
        if (pz_split_hostport(vals[i], host[i], sizeof host[i], &port[i]))
            port[i] = -1 - i; /* cannot happen: validated on set */
    for (int i = 0; i < 3; i++) {
        for (int j = i + 1; j < 3; j++) {
            if (port[i] != port[j])
                continue;
            if (strcmp(host[i], host[j]) != 0 && !is_wildcard_host(host[i]) &&
                !is_wildcard_host(host[j]))
                continue;
            char a[VAL_MAX], b[VAL_MAX];
            blame(r, names[i], names[j], NULL);
            return fail(r, "'%s' (%s) and '%s' (%s) must not use the same port",
                        names[i], val(r, names[i], a, sizeof a), names[j],
                        val(r, names[j], b, sizeof b));
        }
    }
    return 0;
}

bool cfg_host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcasecmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false; /* "" (every interface), a name, any other address */
}

/* No token on a Raft port others can reach: anyone who reaches it could
 * take part in the cluster. Loopback only, unless `cluster-token none`. */
static int check_open_cluster(struct rules *r)
{
    const struct pz_config *c = r->c;
    char host[256];
    int port;
    if (c->cluster_token[0] != '\0' || c->cluster_token_none ||
        pz_split_hostport(c->raft_addr, host, sizeof host, &port) != 0 ||
        cfg_host_is_loopback(host))
        return 0;
    char a[VAL_MAX];
    blame(r, "raft-addr", "cluster-token", NULL);
    return fail(r,
                "'raft-addr' (%s) is not a loopback address and "
                "'cluster-token' is not set: anyone who can reach it could "
                "take part in the cluster. Set the same 'cluster-token' on "
                "every node and mandi (peer mutual TLS, when set, "
                "authenticates nodes besides), or 'cluster-token none' to "
                "run without one",
                val(r, "raft-addr", a, sizeof a));
}

/* The field of directive what >= key + value + slack. */
static int check_room(struct rules *r, const char *what, int64_t have)
{
    const struct pz_config *c = r->c;
    int64_t need = c->max_key_size + c->max_value_size + FRAMING_SLACK;
    if (have >= need)
        return 0;
    char h[VAL_MAX], k[VAL_MAX], v[VAL_MAX];
    blame(r, what, "max-value-size", "max-key-size", NULL);
    return fail(r,
                "'%s' (%s) must be at least 'max-key-size' (%s) + "
                "'max-value-size' (%s) + 1kb",
                what, val(r, what, h, sizeof h),
                val(r, "max-key-size", k, sizeof k),
                val(r, "max-value-size", v, sizeof v));
}

/* The TLS files come in sets. A file named is blamed before one left
 * empty. */
static int check_tls(struct rules *r)
{
    const struct pz_config *c = r->c;
    bool cert = c->tls_cert_file[0], key = c->tls_key_file[0];
    if (cert != key) {
        blame(r, cert ? "tls-cert-file" : "tls-key-file",
              cert ? "tls-key-file" : "tls-cert-file", NULL);
        return fail(r, "'tls-cert-file' and 'tls-key-file' must be set "
                       "together");
    }
    if (c->tls_client_auth != 0 && (!cert || !c->tls_ca_file[0])) {
        blame(r, "tls-client-auth", NULL);
        return fail(r,
                    "'tls-client-auth' %s needs 'tls-cert-file', "
                    "'tls-key-file' and 'tls-ca-file' (the CA client "
                    "certificates chain to)",
                    client_auth_words[c->tls_client_auth]);
    }
    if (c->mode == CFG_MODE_MANDI && cfg_url_is_https(c->mandi_addr) &&
        !cert) {
        blame(r, "mandi-addr", "mode", NULL);
        return fail(r, "an https 'mandi-addr' needs 'tls-cert-file' and "
                       "'tls-key-file' in mandi mode");
    }
    const char *peer[] = {"peer-tls-cert-file", "peer-tls-key-file",
                          "peer-tls-ca-file"};
    const char *files[] = {c->peer_tls_cert_file, c->peer_tls_key_file,
                           c->peer_tls_ca_file};
    const char *named[3];
    int n = 0;
    for (int i = 0; i < 3; i++)
        if (files[i][0] != '\0')
            named[n++] = peer[i];
    if (n != 0 && n != 3) {
        blame(r, named[0], n > 1 ? named[1] : NULL, NULL);
        return fail(r, "'peer-tls-cert-file', 'peer-tls-key-file' and "
                       "'peer-tls-ca-file' must be set together (mutual "
                       "TLS)");
    }
    return 0;
}

static int check_rules(const struct pz_config *c, const struct where *where,
                       char *err, size_t errlen)
{
    struct rules r = {c, where, NULL, err, errlen};
    char a[VAL_MAX], b[VAL_MAX];
    if (check_tls(&r) != 0)
        return PZ_ECONFIG;
    if (c->election_timeout_ms < 3 * c->heartbeat_interval_ms) {
        blame(&r, "election-timeout", "heartbeat-interval", NULL);
        return fail(&r,
                    "'election-timeout' (%s) must be at least 3 x "
                    "'heartbeat-interval' (%s)",
                    val(&r, "election-timeout", a, sizeof a),
                    val(&r, "heartbeat-interval", b, sizeof b));
    }
    if (check_room(&r, "http-max-body", c->http_max_body) != 0)
        return PZ_ECONFIG;
    if (check_room(&r, "grpc-max-message", c->grpc_max_message) != 0)
        return PZ_ECONFIG;
    if (c->conn_hard_limit <= c->conn_high_water) {
        blame(&r, "conn-hard-limit", "conn-high-water", NULL);
        return fail(&r,
                    "'conn-hard-limit' (%s) must be greater than "
                    "'conn-high-water' (%s)",
                    val(&r, "conn-hard-limit", a, sizeof a),
                    val(&r, "conn-high-water", b, sizeof b));
    }
    if (c->conn_hard_limit < c->max_value_size + FRAMING_SLACK) {
        blame(&r, "conn-hard-limit", "max-value-size", NULL);
        return fail(&r,
                    "'conn-hard-limit' (%s) must be at least "
                    "'max-value-size' (%s) + 1kb",
                    val(&r, "conn-hard-limit", a, sizeof a),
                    val(&r, "max-value-size", b, sizeof b));
    }
    if (c->max_key_size + c->max_value_size + MB > (int64_t)RAFT_FRAME_MAX) {
        /* One entry must fit in a peer frame, with the message around it.
         * The value is the larger part, so it is blamed first. */
        blame(&r, "max-value-size", "max-key-size", NULL);
        return fail(&r,
                    "'max-key-size' (%s) + 'max-value-size' (%s) must stay "
                    "within 64mb: a write must fit in one Raft peer frame",
                    val(&r, "max-key-size", a, sizeof a),
                    val(&r, "max-value-size", b, sizeof b));
    }
    if (c->max_pending_output < c->conn_hard_limit) {
        blame(&r, "max-pending-output", "conn-hard-limit", NULL);
        return fail(&r,
                    "'max-pending-output' (%s) must be at least "
                    "'conn-hard-limit' (%s)",
                    val(&r, "max-pending-output", a, sizeof a),
                    val(&r, "conn-hard-limit", b, sizeof b));
    }
    if (c->mode != CFG_MODE_SERVER)
        return 0;
    if (c->max_partial_input < c->http_max_body ||
        c->max_partial_input < c->grpc_max_message) {
        const char *big = c->http_max_body >= c->grpc_max_message
                              ? "http-max-body"
                              : "grpc-max-message";
        blame(&r, "max-partial-input", big, NULL);
        return fail(&r, "'max-partial-input' (%s) must be at least '%s' (%s)",
                    val(&r, "max-partial-input", a, sizeof a), big,
                    val(&r, big, b, sizeof b));
    }
    if (check_port_clash(&r) != 0)
        return PZ_ECONFIG;
    if (check_open_cluster(&r) != 0)
        return PZ_ECONFIG;
    struct cfg_peer *peers;
    size_t n;
    char why[256];
    blame(&r, "initial-cluster", "node-id", NULL);
    if (cfg_parse_cluster(c->initial_cluster, &peers, &n, why, sizeof why))
        return fail(&r, "'initial-cluster' %s", why);
    bool found = n == 0;
    for (size_t i = 0; i < n; i++)
        found = found || strcmp(peers[i].name, c->node_id) == 0;
    pz_free(peers);
    if (!found)
        return fail(&r, "'initial-cluster' must list 'node-id' (%s)",
                    val(&r, "node-id", a, sizeof a));
    return 0;
}

int cfg_check(const struct pz_config *c, char *err, size_t errlen)
{
    return check_rules(c, NULL, err, errlen);
}

/* ------------------------------------------------------------------------
 * Help */

void cfg_print_help(FILE *out)
{
    fprintf(out, "Usage: pyazdb-server [FILE] [--directive value ...]\n"
                 "       pyazdb-server --mandi [FILE] [--directive value ...]\n"
                 "       pyazdb-server --test-config FILE [--directive value "
                 "...]\n"
                 "       pyazdb-server --restore BACKUP [FILE] [--directive "
                 "value ...]\n"
                 "       pyazdb-server --help | --version\n"
                 "\n"
                 "FILE is a config file (see pyazdb.conf). Each directive can "
                 "also be given\n"
                 "as --name value or --name=value; --mandi is --mode mandi.\n"
                 "Precedence: defaults < config file < environment < command "
                 "line.\n"
                 "SIGINT or SIGTERM stops the server gracefully; SIGHUP "
                 "reads the\nconfiguration again and applies the directives "
                 "marked [reload].\n"
                 "\nEnvironment:\n");
    for (size_t i = 0; i < PZ_ARRAY_SIZE(env_map); i++)
        fprintf(out, "  %-12s -> %s\n", env_map[i].var, env_map[i].directive);
    const char *section = "";
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        const struct cfg_directive *d = &directives[i];
        if (strcmp(d->section, section) != 0) {
            section = d->section;
            fprintf(out, "\n%s:\n", section);
        }
        char kind[160];
        if (d->type == CFG_ENUM) {
            size_t n = 0;
            kind[0] = '\0';
            for (int j = 0; d->words[j] && n < sizeof kind; j++)
                n += (size_t)snprintf(kind + n, sizeof kind - n, "%s%s",
                                      j ? "|" : "", d->words[j]);
        } else if (d->type == CFG_INT || d->type == CFG_SIZE ||
                   d->type == CFG_DURATION) {
            char lo[32], hi[32];
            fmt_number(d->type, d->min, lo, sizeof lo);
            fmt_number(d->type, d->max, hi, sizeof hi);
            snprintf(kind, sizeof kind, "%s %s..%s", cfg_type_name(d->type), lo,
                     hi);
        } else {
            snprintf(kind, sizeof kind, "%s", cfg_type_name(d->type));
        }
        fprintf(out, "  --%s <%s>  (default: %s%s%s)%s%s\n      %s\n",
                d->name, kind, d->def[0] ? "" : "\"", d->def,
                d->def[0] ? "" : "\"",
                (d->flags & CFG_MANDI) ? "  [mandi too]" : "",
                (d->flags & CFG_IMMUTABLE) ? "" : "  [reload]", d->help);
    }
}
