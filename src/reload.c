/* reload.c - see reload.h. The load is cfg_load() as at start, on a
 * scratch configuration; only once it succeeds are values compared,
 * logged and applied, so a bad file never leaves a half-applied state. */
#include "reload.h"

#include <signal.h>
#include <string.h>

#include "log.h"
#include "sdnotify.h"

extern char **environ;

static int saved_argc;      /* main's argc; 0 before reload_set_args */
static char **saved_argv;   /* main's argv (borrowed) */

void reload_set_args(int argc, char **argv)
{
    saved_argc = argc;
    saved_argv = argv;
}

void reload_init(struct reload *r, const struct pz_config *cfg)
{
    cfg_copy(&r->running, cfg);
    r->mode_flag = cfg->mode == CFG_MODE_MANDI ? CFG_MANDI : 0;
}

void reload_free(struct reload *r)
{
    cfg_free(&r->running);
}

/* A one-line form of a cfg_load() message (it quotes the file line on a
 * second line). */
static void one_line(char *s)
{
    for (; *s; s++)
        if (*s == '\n')
            *s = ' ';
}

/* The value of d in c for the log; a secret is not shown. */
static void shown(const struct pz_config *c, const struct cfg_directive *d,
                  char *buf, size_t len)
{
    if (strcmp(d->name, "cluster-token") == 0)
        snprintf(buf, len, "(secret)");
    else
        cfg_format(c, d, buf, len);
}

/* The RELOAD_* group of directive name, 0 for one that an apply callback
 * always puts in place. */
static unsigned group_of(const char *name)
{
    if (strcmp(name, "client-token-file") == 0)
        return RELOAD_TOKENS;
    if (strncmp(name, "peer-tls-", 9) == 0)
        return RELOAD_PEER_TLS;
    if (strncmp(name, "tls-", 4) == 0 || strcmp(name, "mandi-ca-file") == 0)
        return RELOAD_TLS;
    return 0;
}

/* Set directive d of dst to its value in src (both loaded configurations:
 * cfg_format's text parses back). */
static void set_from(struct pz_config *dst, const struct pz_config *src,
                     const struct cfg_directive *d)
{
    char set_err[512];
    char num[64];
    const char *value = num;
    if (d->type == CFG_STRING || d->type == CFG_ADDR) {
        /* As it is, whatever its length (a path may be long). */
        value = *(char *const *)((const char *)src + d->offset);
        value = value ? value : "";
    } else {
        cfg_format(src, d, num, sizeof num);
    }
    int rv = cfg_set(dst, d->name, value, "reload", 0, set_err, sizeof set_err);
    pz_assert(rv == 0);
}

/* Open the log file again, or at its new path. Returns 0, or -1 when it
 * could not be opened (logged; the log stays where it was). */
static int reopen_log(const char *was, const char *now)
{
    if (strcmp(was, now) != 0) {
        /* Said in the old log, then in the new one. */
        pz_info("reload: log-file %s -> %s", was[0] ? was : "(stderr)",
                now[0] ? now : "(stderr)");
        int rv = pz_log_open(now);
        if (rv < 0) {
            pz_error("reload: cannot open log-file '%s': %s; still "
                     "logging to %s",
                     now, pz_log_strerror(rv), was[0] ? was : "stderr");
            return -1;
        }
        pz_info("reload: log-file: now logging here (was %s)",
                was[0] ? was : "stderr");
        return 0;
    }
    /* The same log file: open it again (logrotate). */
    if (now[0] == '\0')
        return 0;
    int rv = pz_log_open(now);
    if (rv < 0) {
        pz_error("reload: cannot reopen log-file '%s': %s; still "
                 "logging to the file as it was",
                 now, pz_log_strerror(rv));
        return -1;
    }
    return 0;
}

int reload_run(struct reload *r, reload_apply_cb apply, void *arg)
{
    char err[4096];
    struct pz_config next;
    sdnotify_reloading();
    pz_info("reload: reading the configuration again");
    char *no_argv[] = {"pyazdb-server", NULL};
    int rv = cfg_load(&next, saved_argv ? saved_argc : 1,
                      saved_argv ? saved_argv : no_argv, environ, err,
                      sizeof err);
    if (rv < 0) {
        one_line(err);
        pz_error("reload failed, keeping the running configuration: %s",
                 err);
        cfg_free(&next);
        char status[sizeof err + 80];
        snprintf(status, sizeof status,
                 "READY=1\nSTATUS=reload failed, running configuration "
                 "kept: %s",
                 err);
        sdnotify(status);
        return PZ_ECONFIG;
    }
    /* The log level first, to the more verbose of the two, so that the
     * lines below show at either level; apply() sets the new one. */
    if (next.log_level < r->running.log_level)
        pz_log_setup((enum pz_log_level)next.log_level, NULL);
    /* cand: the running configuration with every change that may be
     * applied; it becomes the running one once apply() said which of
     * them did not take. */
    struct pz_config cand;
    cfg_copy(&cand, &r->running);
    size_t n = cfg_directive_count();
    bool *changed = pz_calloc(n, sizeof *changed);
    int applied = 0, restart = 0, failed = 0;
    unsigned changed_groups = 0;
    const char *log_failed = NULL;
    for (size_t i = 0; i < n; i++) {
        const struct cfg_directive *d = cfg_directive_at(i);
        if (r->mode_flag && !(d->flags & r->mode_flag))
            continue;
        if (cfg_same(&r->running, &next, d))
            continue;
        char was[256], now[256];
        shown(&r->running, d, was, sizeof was);
        shown(&next, d, now, sizeof now);
        if (strcmp(d->name, "log-file") == 0)
            continue; /* below */
        if (d->flags & CFG_IMMUTABLE) {
            pz_warn("reload: %s changed (%s -> %s) but needs a restart; "
                    "still %s",
                    d->name, was, now, was);
            restart++;
            continue;
        }
        pz_info("reload: %s %s -> %s", d->name, was, now);
        set_from(&cand, &next, d);
        changed[i] = true;
        changed_groups |= group_of(d->name);
    }
    bool new_log = strcmp(r->running.log_file, next.log_file) != 0;
    if (reopen_log(r->running.log_file, next.log_file) < 0) {
        failed++;
        log_failed = new_log ? "the new log-file could not be opened"
                             : "the log-file could not be reopened";
    } else if (new_log) {
        pz_free(cand.log_file);
        cand.log_file = pz_strdup(next.log_file);
        applied++;
    }
    cfg_free(&next);
    struct reload_refused no = apply(&cand, arg);
    /* A refused change keeps its running value. */
    for (size_t i = 0; i < n; i++) {
        if (!changed[i])
            continue;
        const struct cfg_directive *d = cfg_directive_at(i);
        unsigned g = group_of(d->name);
        if (g & no.failed) {
            failed++;
            set_from(&cand, &r->running, d);
        } else if (g & no.restart) {
            restart++;
            set_from(&cand, &r->running, d);
        } else {
            applied++;
        }
    }
    /* Files read again under the same names that did not load. */
    failed += __builtin_popcount(no.failed & ~changed_groups);
    pz_free(changed);
    cfg_free(&r->running);
    r->running = cand;
    char status[320];
    int len = snprintf(status, sizeof status, "reloaded: ");
    if (applied == 0 && restart == 0 && failed == 0) {
        snprintf(status + len, sizeof status - len, "nothing changed");
    } else {
        len +=
            snprintf(status + len, sizeof status - len, "%d change%s applied, ",
                     applied, applied == 1 ? "" : "s");
        if (failed) {
            len += snprintf(status + len, sizeof status - len, "%d failed (",
                            failed);
            const char *sep = "";
            static const struct {
                unsigned group;
                const char *what;
            } kept[] = {
                {RELOAD_TLS, "old TLS material kept"},
                {RELOAD_PEER_TLS, "old peer TLS material kept"},
                {RELOAD_TOKENS, "old client tokens kept"},
            };
            if (log_failed) {
                len += snprintf(status + len, sizeof status - len, "%s",
                                log_failed);
                sep = "; ";
            }
            for (size_t k = 0; k < sizeof kept / sizeof kept[0]; k++) {
                if (!(no.failed & kept[k].group))
                    continue;
                len += snprintf(status + len, sizeof status - len, "%s%s", sep,
                                kept[k].what);
                sep = "; ";
            }
            len += snprintf(status + len, sizeof status - len, "), ");
        }
        snprintf(status + len, sizeof status - len, "%d need%s a restart",
                 restart, restart == 1 ? "s" : "");
    }
    pz_info("%s", status);
    char msg[sizeof status + 40];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", status);
    sdnotify(msg);
    return applied;
}

static void on_hup_soon(uv_timer_t *t)
{
    struct reload_hup *h = t->data;
    unsigned hups = h->hups;
    h->hups = 0;
    h->run(hups);
}

static void on_hup(uv_signal_t *sig, int signum)
{
    PZ_UNUSED(signum);
    struct reload_hup *h = sig->data;
    if (h->hups++ == 0)
        uv_timer_start(&h->soon, on_hup_soon, 0, 0);
}

void reload_hup_init(struct reload_hup *h, uv_loop_t *loop,
                     void (*run)(unsigned hups))
{
    h->hups = 0;
    h->run = run;
    uv_signal_init(loop, &h->sig);
    uv_timer_init(loop, &h->soon);
    h->sig.data = h;
    h->soon.data = h;
    uv_signal_start(&h->sig, on_hup, SIGHUP);
}

void reload_hup_close(struct reload_hup *h)
{
    uv_close((uv_handle_t *)&h->sig, NULL);
    uv_close((uv_handle_t *)&h->soon, NULL);
}

void reload_hup_log(unsigned hups)
{
    if (hups == 1)
        pz_info("received SIGHUP");
    else
        pz_info("received SIGHUP (%u signals: one reload)", hups);
}
