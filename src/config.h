/* config.h - the PyazDB configuration: one table of directives, one parser.
 *
 * Every setting is a directive in one static table in config.c (name, type,
 * field offset, default, bounds, flags, validator, help). The same code
 * parses a directive's value wherever it comes from: the table default, a
 * config file line, an environment variable of the original program, or a
 * `--name value` command-line flag. Nothing here is global: every function
 * works on the struct pz_config it is given, so tests load many.
 *
 * Precedence, lowest to highest:
 *     defaults < config file < environment < command line
 *
 * Command line accepted by cfg_load() (argv[0] is skipped):
 *     FILE                  the config file (at most one; optional)
 *     --name value          set directive `name` (as in the file, unquoted)
 *     --name=value          the same
 *     --mandi               shorthand for `--mode mandi`
 *     --test-config FILE    names the config file like FILE does; the caller
 *                           (main.c) decides to exit after loading
 *     --help, -h, --version, -v
 *                           skipped: the caller handles them
 * A directive given twice on the command line is an error (`--mandi` counts
 * as `--mode`); so is a directive twice in the file. The environment and the
 * command line may override the file, as the precedence says.
 *
 * Environment (of the original Go program), each mapped onto a directive:
 *     NODE_ID -> node-id        RAFT_ADDR -> raft-addr
 *     RAFT_DATA -> raft-data    RAFT_LEADER -> raft-bootstrap (true/false)
 *     GRPC_ADDR -> grpc-addr    HTTP_ADDR -> http-addr
 *     MANDI_ADDR -> mandi-addr
 * A variable that is unset or empty is ignored.
 *
 * Config file syntax: one `name value` per line, separated by blanks; blank
 * lines and lines whose first non-blank character is `#` are ignored. A
 * value may be double-quoted to hold blanks or be empty (`log-file ""`);
 * inside quotes `\"` and `\\` are the only escapes. Anything after the value
 * is an error.
 *
 * Errors: every function that can fail returns 0 or PZ_ECONFIG and writes
 * one message into err (always NUL-terminated, truncated to errlen). The
 * message starts with its source:
 *     pyazdb.conf:12: unknown directive 'foo'
 *     pyazdb.conf:7: 'max-clients' must be between 1 and 1000000: '0'
 *     command line: missing value for '--node-id'
 *     environment NODE_ID: 'node-id' must be 1 to 63 characters ...: 'a b'
 * Errors from a file line add a second line quoting it, as Redis does:
 *     >>> 'max-clients 0'
 * Cross-field errors name the directives involved. From cfg_load() they
 * start with the source of the one blamed (one that was set rather than
 * one left at its default) and say where each other value shown came
 * from, on one line:
 *     pyazdb.conf:3: 'election-timeout' (1s) must be at least 3 x
 *         'heartbeat-interval' (500ms, set at pyazdb.conf:2)
 * with "set by environment HTTP_ADDR", "set on the command line" or "the
 * default" in place of "set at FILE:LINE". cfg_check() alone knows no
 * sources and gives the rule without them.
 *
 * Pure apart from cfg_load_file() (reads one file) and cfg_print_help()
 * (writes to the stream it is given). */
#ifndef PZ_CONFIG_H
#define PZ_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pz.h"

/* Values of pz_config.mode. */
enum cfg_mode {
    CFG_MODE_SERVER = 0, /* a database node */
    CFG_MODE_MANDI = 1,  /* the discovery service */
};

/* Values of pz_config.log_level: the same numbers as enum pz_log_level in
 * log.h (debug 0, info 1, warning 2, error 3). */
enum cfg_log_level {
    CFG_LOG_DEBUG = 0,
    CFG_LOG_INFO = 1,
    CFG_LOG_WARNING = 2,
    CFG_LOG_ERROR = 3,
};

#define CFG_NAME_MAX 63  /* longest node-id / initial-cluster name */
#define CFG_ADDR_MAX 300 /* longest host:port accepted */
#define CFG_TOKEN_MAX 256 /* longest cluster-token */

/* One field per directive. Strings are owned (pz_strdup) and never NULL
 * after cfg_init(); cfg_free() releases them. Addresses are kept as given
 * ("host:port" or ":port") and are known to pass pz_split_hostport() with
 * a port in 1..65535. Durations are in milliseconds, sizes in bytes. */
struct pz_config {
    /* GENERAL */
    int mode;      /* mode: enum cfg_mode */
    char *node_id; /* node-id: this node's name in the cluster */
    /* NETWORK */
    char *http_addr;  /* http-addr: HTTP API listen address */
    char *grpc_addr;  /* grpc-addr: gRPC API listen address */
    char *mandi_addr; /* mandi-addr: URL http://host:port of mandi */
    int64_t mandi_interval_ms; /* mandi-interval */
    char *cluster_token; /* cluster-token: shared secret, "" = none (the
                            value `none` is turned into "" by cfg_load,
                            setting cluster_token_none) */
    bool cluster_token_none; /* cluster-token was `none`: open on purpose */
    /* RAFT */
    char *raft_addr;               /* raft-addr: peer listen address */
    char *raft_data;               /* raft-data: data directory */
    bool raft_bootstrap;           /* raft-bootstrap: one-node cluster */
    bool raft_read_lease;          /* raft-read-lease: reads confirmed
                                      by the leader's lease */
    bool raft_bind_source;         /* raft-bind-source: dial peers from
                                      raft-addr's host */
    char *initial_cluster;         /* initial-cluster: "" or n=h:p,... */
    int64_t heartbeat_interval_ms; /* heartbeat-interval */
    int64_t election_timeout_ms;   /* election-timeout */
    int64_t request_timeout_ms;    /* request-timeout */
    int64_t raft_snapshot_entries; /* raft-snapshot-entries */
    int64_t raft_trailing_entries; /* raft-trailing-entries */
    int64_t raft_snapshot_bytes;   /* raft-snapshot-bytes */
    int64_t raft_trailing_bytes;   /* raft-trailing-bytes */
    int64_t raft_max_uncommitted;  /* raft-max-uncommitted */
    int64_t raft_snapshot_max_size; /* raft-snapshot-max-size: 0 = auto */
    int64_t quota_backend_bytes;    /* quota-backend-bytes: 0 = none */
    int64_t txn_max_range_keys;     /* txn-max-range-keys */
    int64_t snapshot_max_streams;   /* snapshot-max-streams */
    int64_t snapshot_stall_timeout_ms; /* snapshot-stall-timeout */
    int64_t snapshot_backup_interval_ms; /* snapshot-backup-interval */
    /* LIMITS */
    int64_t max_clients;            /* max-clients: per listener */
    int64_t client_idle_timeout_ms; /* client-idle-timeout: 0 = never */
    int64_t client_header_timeout_ms; /* client-header-timeout */
    int64_t client_body_timeout_ms;   /* client-body-timeout */
    int64_t max_key_size;           /* max-key-size: bytes */
    int64_t max_value_size;         /* max-value-size: bytes */
    int64_t http_max_body;          /* http-max-body: bytes */
    int64_t http_max_header_size;   /* http-max-header-size: bytes */
    int64_t http_max_headers;       /* http-max-headers: count */
    int64_t conn_high_water;        /* conn-high-water: bytes */
    int64_t conn_hard_limit;        /* conn-hard-limit: bytes */
    int64_t grpc_max_message;       /* grpc-max-message: bytes */
    int64_t lease_max_ttl_ms;       /* lease-max-ttl */
    int64_t lease_max_count;        /* lease-max-count */
    int64_t max_partial_input;      /* max-partial-input: bytes, all
                                       client connections together */
    int64_t max_pending_output;     /* max-pending-output: bytes of
                                       answers waiting for all clients */
    int64_t watch_history_events;   /* watch-history-events */
    int64_t watch_history_bytes;    /* watch-history-bytes */
    int64_t watch_max_buffer;       /* watch-max-buffer: bytes */
    int64_t max_watchers;           /* max-watchers */
    int64_t watch_output_budget;    /* watch-output-budget: bytes */
    int64_t watch_progress_interval_ms; /* watch-progress-interval */
    int64_t etcd_watch_max_per_stream;  /* etcd-watch-max-per-stream */
    /* MANDI */
    int64_t mandi_leader_ttl_ms;     /* mandi-leader-ttl */
    int64_t mandi_join_ttl_ms;       /* mandi-join-ttl */
    int64_t mandi_sweep_interval_ms; /* mandi-sweep-interval */
    int64_t mandi_max_join_requests; /* mandi-max-join-requests */
    /* TLS (tls.h); "" = plain text */
    char *tls_cert_file;      /* tls-cert-file: HTTP and gRPC listeners */
    char *tls_key_file;       /* tls-key-file */
    char *tls_ca_file;        /* tls-ca-file: CAs of client certificates */
    int tls_client_auth;      /* tls-client-auth: enum tls_client_auth */
    char *peer_tls_cert_file; /* peer-tls-cert-file: Raft transport, both
                                 ways */
    char *peer_tls_key_file;  /* peer-tls-key-file */
    char *peer_tls_ca_file;   /* peer-tls-ca-file: the cluster CA */
    char *client_token_file;  /* client-token-file: "" = no tokens */
    char *mandi_ca_file;      /* mandi-ca-file: CAs of an https mandi */
    bool protected_mode;      /* protected-mode: without TLS, serve
                                 loopback clients only */
    /* LOGGING */
    int log_level;  /* log-level: enum cfg_log_level */
    char *log_file; /* log-file: "" = stderr */
    int log_format; /* log-format: 0 text, 1 json */
};

/* Types of directives, and the C type of the field each one fills. */
enum cfg_type {
    CFG_STRING,   /* char * (owned) */
    CFG_BOOL,     /* bool: yes/no, true/false, 1/0 */
    CFG_INT,      /* int64_t, bounded */
    CFG_SIZE,     /* int64_t bytes: N, Nb, Nk(b), Nm(b), Ng(b); 1k = 1024 */
    CFG_DURATION, /* int64_t milliseconds: N (ms), Nms, Ns, Nm */
    CFG_ENUM,     /* int: index into words */
    CFG_ADDR,     /* char * (owned): host:port or :port, port 1..65535 */
};

/* Directive flags. */
#define CFG_IMMUTABLE (1u << 0) /* a reload (SIGHUP) does not apply it:
                                   it needs a restart */
#define CFG_MANDI (1u << 1)     /* also read in mandi mode */

/* One row of the table. Read-only for callers. */
struct cfg_directive {
    const char *name;         /* e.g. "max-clients" */
    enum cfg_type type;       /* how the value parses */
    size_t offset;            /* offsetof(struct pz_config, field) */
    const char *def;          /* default, parsed like any value */
    int64_t min, max;         /* bounds for INT, SIZE, DURATION */
    unsigned flags;           /* CFG_IMMUTABLE | CFG_MANDI */
    const char *const *words; /* CFG_ENUM: NULL-terminated choices */
    /* Optional extra check of a raw value, after the type's own parsing
     * (for CFG_STRING it is the whole check). Returns 0, or -1 after
     * writing into why a phrase completing "'<name>' ...", such as
     * "must not be empty". */
    int (*check)(const char *value, char *why, size_t whylen);
    const char *section; /* pyazdb.conf section, e.g. "LIMITS" */
    const char *help;    /* one line */
};

/* An environment variable mapped onto a directive. */
struct cfg_env {
    const char *var;       /* e.g. "NODE_ID" */
    const char *directive; /* e.g. "node-id" */
};

/* One member of initial-cluster. */
struct cfg_peer {
    char name[CFG_NAME_MAX + 1]; /* node name, like node-id */
    char addr[CFG_ADDR_MAX + 1]; /* its raft-addr, host:port */
};

/* Fill c with the table defaults. c must not hold strings (fresh, or after
 * cfg_free). Cannot fail (defaults are asserted valid). */
void cfg_init(struct pz_config *c);

/* Release the strings of c; c may be cfg_init()ed again afterwards. */
void cfg_free(struct pz_config *c);

/* Everything at startup: cfg_init(c), then the config file named on the
 * command line (if any), then the environment (envp: "NAME=value" strings,
 * NULL-terminated; NULL means none), then the command-line directives,
 * then cfg_check(). See the top of this file for the argv forms. Returns 0
 * or PZ_ECONFIG with the message in err. Whatever it returns, c holds
 * strings afterwards: call cfg_free(c). */
int cfg_load(struct pz_config *c, int argc, char **argv, char **envp, char *err,
             size_t errlen);

/* Apply the directives of one config file on top of c (no cfg_check). The
 * path is the source in messages. Unreadable file, syntax error, unknown or
 * duplicate directive, bad value: PZ_ECONFIG. Directives before the failing
 * line stay applied. */
int cfg_load_file(struct pz_config *c, const char *path, char *err,
                  size_t errlen);

/* The same for text already in memory (len bytes, may lack a final
 * newline); source names it in messages. */
int cfg_load_string(struct pz_config *c, const char *text, size_t len,
                    const char *source, char *err, size_t errlen);

/* Apply the mapped environment variables found in envp (see above). */
int cfg_load_env(struct pz_config *c, char **envp, char *err, size_t errlen);

/* Set one directive from its text value (as it would appear unquoted in a
 * file). source and line only build the message prefix: "source:line: "
 * when line > 0, "source: " otherwise. On error c is unchanged. Does not
 * look at CFG_IMMUTABLE (runtime changes are the caller's business) and
 * does not run cross-field checks. */
int cfg_set(struct pz_config *c, const char *name, const char *value,
            const char *source, int line, char *err, size_t errlen);

/* Cross-field rules, run once everything is loaded:
 *  - election-timeout >= 3 x heartbeat-interval;
 *  - http-max-body and grpc-max-message >= max-key-size + max-value-size
 *    + 1kb, so a request carrying the largest key and value fits with room
 *    for its framing (JSON {"key":..,"value":..}, or protobuf tags);
 *  - conn-hard-limit > conn-high-water, and conn-hard-limit >=
 *    max-value-size + 1kb so a reply carrying the largest value fits;
 *  - in server mode, max-partial-input >= http-max-body and
 *    grpc-max-message, so that one request of the largest size fits;
 *  - raft-addr, http-addr and grpc-addr do not share a port on the same
 *    (or a wildcard) host;
 *  - in server mode, a non-empty initial-cluster lists node-id;
 *  - tls-cert-file and tls-key-file are set together, and tls-client-auth
 *    other than none needs them and tls-ca-file; the three peer-tls-
 *    files are set together or not at all.
 * Returns 0 or PZ_ECONFIG with a message naming both directives (and no
 * source: cfg_load() runs the same rules with the sources it read). */
int cfg_check(const struct pz_config *c, char *err, size_t errlen);

/* The table, for help, docs and tests. cfg_directive_at(i) for
 * i < cfg_directive_count(); cfg_find() by name (case-insensitive), NULL
 * when unknown. */
size_t cfg_directive_count(void);
const struct cfg_directive *cfg_directive_at(size_t i);
const struct cfg_directive *cfg_find(const char *name);
const char *cfg_type_name(enum cfg_type type);

/* The environment mapping, in the same way. */
size_t cfg_env_count(void);
const struct cfg_env *cfg_env_at(size_t i);

/* Current value of d in c as text that parses back to the same value
 * ("64kb", "300s", "yes", "info", strings as they are). */
void cfg_format(const struct pz_config *c, const struct cfg_directive *d,
                char *buf, size_t len);

/* A deep copy of src into dst (which must not hold strings): the same
 * values, strings duplicated; cfg_free(dst) releases them. */
void cfg_copy(struct pz_config *dst, const struct pz_config *src);

/* True when a and b hold the same value for directive d (the strings
 * compared by content). cluster-token `none` and "" compare equal, as
 * cfg_load stores both as "". */
bool cfg_same(const struct pz_config *a, const struct pz_config *b,
              const struct cfg_directive *d);

/* Usage, precedence, the environment mapping and every directive with its
 * type, bounds or choices, default and help. Used by --help. */
void cfg_print_help(FILE *out);

/* True when argv (same grammar as cfg_load) holds the option flag, e.g.
 * "--help" or "--test-config"; a directive's value never counts. */
bool cfg_has_flag(int argc, char **argv, const char *flag);
/* True for 127.0.0.0/8, ::1 and "localhost"; false for "" (every
 * interface), other names and addresses. */
bool cfg_host_is_loopback(const char *host);

/* Parse an initial-cluster value "name=host:port,name=host:port" (blanks
 * around entries allowed). Names follow the node-id rule and are unique;
 * addresses need a host and a port in 1..65535 and are unique. An empty
 * spec gives *peers = NULL, *npeers = 0. On success the caller owns *peers
 * (pz_free). Returns 0, or PZ_EINVAL with a phrase in why (e.g. "has a
 * duplicate name 'node1'") and *peers = NULL. */
int cfg_parse_cluster(const char *spec, struct cfg_peer **peers, size_t *npeers,
                      char *why, size_t whylen);

/* Split a mandi URL "http://host:port" (an optional trailing "/") into host
 * and port, as pz_split_hostport() does. Returns 0 or PZ_EINVAL. Nodes use
 * it to reach mandi; in mandi mode it is also the listen address. */
int cfg_url_hostport(const char *url, char *host, size_t hostlen, int *port);
/* Is url an https:// URL (mandi over TLS)? cfg_url_hostport takes both. */
bool cfg_url_is_https(const char *url);

#endif
