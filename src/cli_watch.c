/* cli_watch.c - pyazdb-cli watch (cli_watch.h).
 *
 * Happy path: GET /watch?key=K (or prefix=P) on the first address, with
 * start_revision when --rev is given -> 200 text/event-stream -> each SSE
 * event is parsed as it arrives: `created` says where the stream starts,
 * an event with an id is one revision's events (printed, one line each),
 * `progress` says every event up to its revision was sent.
 *
 * Resuming: the last revision known complete (last) is kept: the newest
 * revision printed, a progress revision, or the start minus one. No
 * revision above KV_REVISION_MAX is taken, from --rev or from a node (an
 * event with one is a bad event), so last + 1 never wraps around to 0 and
 * last never reaches NO_REV, whatever a node sends. When a
 * stream breaks (the node died or stopped, the connection was lost, the
 * node cancelled the watch as slow, or nothing arrived for IDLE_MS) the
 * next address is asked with start_revision = last + 1 and
 * serializable=true (the history there is what counts): no event is
 * missed and none printed twice, since revisions are the same on every
 * node. A 410 (history compacted past last + 1) from every address in a
 * row ends the command with status 3 (another node may still hold the
 * revision); addresses that fail are tried in turn with a pause doubling
 * from 50 ms to 1 s after each round.
 *
 * Output: "[REV] PUT KEY = VALUE" or "[REV] DELETE KEY" per event (keys
 * and values as bytes), or with -o json one line per event:
 * {"revision":R,"type":...,"kv":{...}} (kv as /watch sends it). */
#include "cli_watch.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cli_conn.h"
#include "http_parse.h"
#include "json.h"
#include "kv.h"
#include "pz.h"

#define HEAD_MAX (64 * 1024)     /* status line and headers */
#define ERR_BODY_MAX (64 * 1024) /* an error answer's body */
#define EVENT_MAX (512u << 20)   /* one SSE event */
#define IDLE_MS 45000            /* silence that means a dead stream */
#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS 1000
#define NO_REV UINT64_MAX

struct wstate {
    const char *key;   /* key or prefix */
    bool prefix;       /* key is a prefix */
    bool prev;         /* --prev */
    bool json;         /* -o json */
    const char *token; /* or NULL */
    const struct tls_slot *tls; /* HTTPS when on, or NULL */
    uint64_t floor;    /* --rev: never resume before it (0: none) */
    uint64_t last;     /* newest revision complete, NO_REV: unknown */
    bool compacted;    /* 410 */
    uint64_t compact_rev;
};

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000),
                          .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void print_bytes(struct pz_buf *b)
{
    fwrite(b->data ? b->data : "", 1, b->len, stdout);
}

static bool get_u64(const struct json_val *obj, const char *name, uint64_t *out)
{
    struct json_val v;
    return json_get(obj, name, &v) && json_u64(&v, out) == 0;
}

/* A revision a node sent, within what a table takes (KV_REVISION_MAX). */
static bool get_rev(const struct json_val *obj, const char *name, uint64_t *out)
{
    return get_u64(obj, name, out) && *out <= KV_REVISION_MAX;
}

/* One revision's events (data of an SSE event with an id). False: the
 * document is not what /watch sends (a revision above KV_REVISION_MAX
 * included). */
static bool print_revision(struct wstate *st, const char *data, size_t len)
{
    struct json_val root, evs, ev, kv, t;
    uint64_t rev;
    if (json_parse(data, len, &root) < 0 || !get_rev(&root, "revision", &rev) ||
        !json_get(&root, "events", &evs) || evs.type != JSON_ARRAY)
        return false;
    if (st->last != NO_REV && rev <= st->last)
        return true; /* seen already (cannot happen with one history) */
    struct pz_buf k, v;
    pz_buf_init(&k);
    pz_buf_init(&v);
    struct json_iter it;
    json_iter_init(&it, &evs);
    while (json_iter_next(&it, NULL, &ev)) {
        if (!json_get(&ev, "type", &t) || t.type != JSON_STRING ||
            !json_get(&ev, "kv", &kv) || kv.type != JSON_OBJECT)
            continue;
        bool put = json_str_is(&t, "put", 3);
        if (st->json) {
            /* {"revision":R, then the event's own members */
            printf("{\"revision\":%llu,%.*s\n", (unsigned long long)rev,
                   (int)ev.len - 1, ev.s + 1);
            continue;
        }
        cli_json_bytes(&kv, "key", &k);
        printf("[%llu] %s ", (unsigned long long)rev, put ? "PUT" : "DELETE");
        print_bytes(&k);
        if (put) {
            cli_json_bytes(&kv, "value", &v);
            fputs(" = ", stdout);
            print_bytes(&v);
        }
        fputc('\n', stdout);
    }
    pz_buf_free(&k);
    pz_buf_free(&v);
    fflush(stdout);
    st->last = rev;
    return true;
}

/* One SSE event. Returns 0 to go on, -1 to end this stream (resume).
 * A revision out of range ends it as a bad event: a start of at most
 * KV_REVISION_MAX + 1 (the one after a table at its highest revision), a
 * progress revision of at most KV_REVISION_MAX. */
static int dispatch(struct wstate *st, const char *event, const char *data,
                    size_t dlen, bool has_id)
{
    struct json_val root;
    uint64_t r;
    if (strcmp(event, "created") == 0) {
        if (json_parse(data, dlen, &root) == 0 &&
            get_u64(&root, "start_revision", &r)) {
            if (r > KV_REVISION_MAX + 1)
                goto bad;
            if (r > 0 && st->last == NO_REV)
                st->last = r - 1;
        }
        return 0;
    }
    if (strcmp(event, "progress") == 0) {
        if (json_parse(data, dlen, &root) == 0 &&
            get_u64(&root, "revision", &r)) {
            if (r > KV_REVISION_MAX)
                goto bad;
            if (st->last == NO_REV || r > st->last)
                st->last = r;
        }
        return 0;
    }
    if (strcmp(event, "cancelled") == 0) {
        fprintf(stderr,
                "pyazdb-cli: watch: the node cancelled the watch: "
                "%.*s\n",
                (int)dlen, data);
        return -1;
    }
    if (event[0] == '\0' && has_id && !print_revision(st, data, dlen))
        goto bad;
    return 0;
bad:
    fprintf(stderr, "pyazdb-cli: watch: bad event from the node\n");
    return -1;
}

/* Follow one stream until it breaks. Returns 1 if it was established
 * (200), 0 if the node could not serve it, -1 to stop for good (400,
 * 410: st->compacted). */
static int follow(struct wstate *st, const char *addr, char *err, size_t errlen)
{
    struct cli_conn c;
    if (cli_conn_open(&c, addr, st->tls, IDLE_MS, err, errlen) < 0)
        return 0;
    struct pz_buf req, in;
    pz_buf_init(&req);
    pz_buf_init(&in);
    pz_buf_appendf(&req, "GET /watch?%s=", st->prefix ? "prefix" : "key");
    http_pct_encode(&req, st->key, strlen(st->key));
    uint64_t start = st->last == NO_REV ? st->floor : st->last + 1;
    if (st->floor > start)
        start = st->floor;
    if (start > 0)
        pz_buf_appendf(&req, "&start_revision=%llu", (unsigned long long)start);
    if (st->last != NO_REV)
        pz_buf_appendf(&req, "&serializable=true");
    if (st->prev)
        pz_buf_appendf(&req, "&prev_kv=true");
    pz_buf_appendf(&req,
                   " HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                   "User-Agent: pyazdb-cli/" PZ_VERSION "\r\n",
                   addr);
    if (st->token && st->token[0])
        pz_buf_appendf(&req, "Authorization: Bearer %s\r\n", st->token);
    pz_buf_append(&req, "\r\n", 2);
    int ret = 0;
    char why[256];
    if (cli_conn_send(&c, req.data, req.len, &in, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", addr, why);
        goto out;
    }
    /* The head. */
    char *end = NULL;
    while ((end = in.data ? memmem(in.data, in.len, "\r\n\r\n", 4) : NULL) ==
           NULL) {
        ssize_t n = 0;
        if (in.len > HEAD_MAX ||
            (n = cli_conn_read(&c, &in, why, sizeof why)) <= 0) {
            snprintf(err, errlen, "%s: no answer%s%s", addr, n < 0 ? ": " : "",
                     n < 0 ? why : "");
            goto out;
        }
    }
    int status = 0;
    if (sscanf(in.data, "HTTP/1.%*d %d", &status) != 1) {
        snprintf(err, errlen, "%s: bad HTTP answer", addr);
        goto out;
    }
    size_t clen = ERR_BODY_MAX;
    *end = '\0';
    const char *cl = strcasestr(in.data, "\r\ncontent-length:");
    if (cl)
        clen = PZ_MIN((size_t)strtoull(cl + 17, NULL, 10), clen);
    pz_buf_consume(&in, (size_t)(end + 4 - in.data));
    if (status != 200) {
        /* Bodies of errors are short: Content-Length, or until close. */
        while (in.len < clen && cli_conn_read(&c, &in, why, sizeof why) > 0)
            ;
        pz_buf_append(&in, "", 1);
        struct json_val root;
        uint64_t cr;
        if (status == 410 && json_parse(in.data, in.len - 1, &root) == 0 &&
            get_u64(&root, "compact_revision", &cr)) {
            st->compacted = true;
            st->compact_rev = cr;
            ret = -1;
        } else if (status == 400) {
            snprintf(err, errlen, "%s: HTTP 400: %.*s", addr,
                     (int)strcspn(in.data, "\n"), in.data);
            ret = -1;
        } else {
            snprintf(err, errlen, "%s: HTTP %d: %.*s", addr, status,
                     (int)strcspn(in.data, "\n"), in.data);
        }
        goto out;
    }
    ret = 1;
    /* The events: lines of "field: value", an empty line ends one. */
    struct pz_buf data;
    pz_buf_init(&data);
    char event[32] = "";
    bool has_id = false;
    size_t pos = 0;
    for (;;) {
        char *nl =
            in.len > pos ? memchr(in.data + pos, '\n', in.len - pos) : NULL;
        if (nl == NULL) {
            pz_buf_consume(&in, pos);
            pos = 0;
            if (in.len > EVENT_MAX) {
                snprintf(err, errlen, "%s: event too large", addr);
                break;
            }
            ssize_t n = cli_conn_read(&c, &in, why, sizeof why);
            if (n <= 0) {
                snprintf(err, errlen, "%s: %s%s", addr,
                         n == 0 ? "stream ended" : "stream broken or idle: ",
                         n == 0 ? "" : why);
                break;
            }
            continue;
        }
        char *line = in.data + pos;
        size_t ll = (size_t)(nl - line);
        pos += ll + 1;
        if (ll && line[ll - 1] == '\r')
            ll--;
        if (ll == 0) {
            int d = dispatch(st, event, data.data ? data.data : "", data.len,
                             has_id);
            pz_buf_reset(&data);
            event[0] = '\0';
            has_id = false;
            if (d < 0) {
                snprintf(err, errlen, "%s: watch cancelled", addr);
                break;
            }
            continue;
        }
        if (line[0] == ':')
            continue; /* a comment */
        const char *colon = memchr(line, ':', ll);
        size_t fl = colon ? (size_t)(colon - line) : ll;
        const char *val = line + fl + (fl < ll ? 1 : 0);
        size_t vl = ll - (size_t)(val - line);
        if (vl && val[0] == ' ') {
            val++;
            vl--;
        }
        if (fl == 4 && memcmp(line, "data", 4) == 0) {
            if (data.len + 1 + vl > EVENT_MAX) {
                /* data lines without the empty line that ends an event */
                snprintf(err, errlen, "%s: event too large", addr);
                break;
            }
            if (data.len)
                pz_buf_append(&data, "\n", 1);
            pz_buf_append(&data, val, vl);
        } else if (fl == 5 && memcmp(line, "event", 5) == 0) {
            snprintf(event, sizeof event, "%.*s", (int)PZ_MIN(vl, 31), val);
        } else if (fl == 2 && memcmp(line, "id", 2) == 0) {
            has_id = true;
        }
    }
    pz_buf_free(&data);
out:
    cli_conn_close(&c);
    pz_buf_free(&req);
    pz_buf_free(&in);
    return ret;
}

int cli_watch(int nargs, char **args, const char *const *addrs, size_t naddrs,
              const char *token, const struct tls_slot *tls, bool json)
{
    static const char use[] =
        "usage: watch KEY | watch --prefix PREFIX [--rev N] [--prev]";
    struct wstate st = {
        .token = token, .tls = tls, .json = json, .last = NO_REV};
    for (int k = 0; k < nargs; k++) {
        if (strcmp(args[k], "--prefix") == 0 && k + 1 < nargs && !st.key) {
            st.key = args[++k];
            st.prefix = true;
        } else if (strcmp(args[k], "--rev") == 0 && k + 1 < nargs) {
            char *e;
            const char *a = args[++k];
            errno = 0;
            st.floor = strtoull(a, &e, 10);
            if (*e || a[0] < '0' || a[0] > '9' || errno || st.floor == 0 ||
                st.floor > KV_REVISION_MAX) {
                /* a revision past the highest a node takes: none would
                 * ever come, and last + 1 could wrap around */
                fprintf(stderr,
                        "pyazdb-cli: bad --rev '%s' (a revision from 1 to "
                        "%llu)\n%s\n",
                        a, (unsigned long long)KV_REVISION_MAX, use);
                return 1;
            }
        } else if (strcmp(args[k], "--prev") == 0) {
            st.prev = true;
        } else if (st.key == NULL && args[k][0] != '-') {
            st.key = args[k];
        } else {
            fprintf(stderr, "pyazdb-cli: %s\n", use);
            return 1;
        }
    }
    if (st.key == NULL || (!st.prefix && st.key[0] == '\0') || naddrs == 0) {
        fprintf(stderr, "pyazdb-cli: %s\n", use);
        return 1;
    }
    char err[512] = "";
    uint64_t backoff = BACKOFF_FIRST_MS;
    size_t i = 0, failed = 0, gone = 0;
    for (;;) {
        const char *addr = addrs[i % naddrs];
        int r = follow(&st, addr, err, sizeof err);
        if (r < 0 && st.compacted && ++gone < naddrs) {
            /* Another node may still hold it (a longer history, or one
             * that loaded no snapshot since). */
            st.compacted = false;
            snprintf(err, sizeof err,
                     "%s: history compacted (oldest available there: %llu)",
                     addr, (unsigned long long)st.compact_rev);
            r = 0;
        } else if (r > 0) {
            gone = 0;
        }
        if (r < 0) {
            if (st.compacted) {
                fprintf(stderr,
                        "pyazdb-cli: watch: history compacted: revision "
                        "%llu is gone on every node (oldest available: "
                        "%llu); events were missed\n",
                        (unsigned long long)(st.last == NO_REV ? st.floor
                                                               : st.last + 1),
                        (unsigned long long)st.compact_rev);
                return 3;
            }
            fprintf(stderr, "pyazdb-cli: watch: %s\n", err);
            return 1;
        }
        if (r > 0) {
            failed = 0;
            backoff = BACKOFF_FIRST_MS;
        } else {
            failed++;
        }
        i++;
        if (st.last != NO_REV)
            fprintf(stderr,
                    "pyazdb-cli: watch: %s; resuming at revision %llu on "
                    "%s\n",
                    err, (unsigned long long)(st.last + 1), addrs[i % naddrs]);
        else
            fprintf(stderr, "pyazdb-cli: watch: %s; trying %s\n", err,
                    addrs[i % naddrs]);
        if (failed > 0 && failed % naddrs == 0) {
            sleep_ms(backoff);
            backoff = PZ_MIN(backoff * 2, BACKOFF_MAX_MS);
        }
    }
}
