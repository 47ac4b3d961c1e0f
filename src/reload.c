/* reload.c - see reload.h. The load is cfg_load() as at start, on a
 * scratch configuration; only once it succeeds are values compared,
 * logged and applied, so a bad file never leaves a half-applied state. */
#include "reload.h"

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
    int applied = 0, restart = 0, failed = 0;
    char *log_file_before = pz_strdup(r->running.log_file);
    for (size_t i = 0; i < cfg_directive_count(); i++) {
        const struct cfg_directive *d = cfg_directive_at(i);
        if (r->mode_flag && !(d->flags & r->mode_flag))
            continue;
        if (cfg_same(&r->running, &next, d))
            continue;
        char was[256], now[256];
        shown(&r->running, d, was, sizeof was);
        shown(&next, d, now, sizeof now);
        if (strcmp(d->name, "log-file") == 0) {
            /* Said in the old log, then in the new one. */
            pz_info("reload: log-file %s -> %s", was[0] ? was : "(stderr)",
                    now[0] ? now : "(stderr)");
            rv = pz_log_open(next.log_file);
            if (rv < 0) {
                pz_error("reload: cannot open log-file '%s': %s; still "
                         "logging to %s",
                         next.log_file, pz_strerror(rv),
                         was[0] ? was : "stderr");
                failed++;
                continue;
            }
            pz_info("reload: log-file: now logging here (was %s)",
                    was[0] ? was : "stderr");
            pz_free(r->running.log_file);
            r->running.log_file = pz_strdup(next.log_file);
            applied++;
            continue;
        }
        if (d->flags & CFG_IMMUTABLE) {
            pz_warn("reload: %s changed (%s -> %s) but needs a restart; "
                    "still %s",
                    d->name, was, now, was);
            restart++;
            continue;
        }
        pz_info("reload: %s %s -> %s", d->name, was, now);
        char set_err[512];
        char num[64];
        const char *value = num;
        if (d->type == CFG_STRING || d->type == CFG_ADDR) {
            /* As it is, whatever its length (a path may be long). */
            value = *(char *const *)((const char *)&next + d->offset);
            value = value ? value : "";
        } else {
            cfg_format(&next, d, num, sizeof num);
        }
        rv = cfg_set(&r->running, d->name, value, "reload", 0, set_err,
                     sizeof set_err);
        pz_assert(rv == 0); /* cfg_format's text parses back */
        applied++;
    }
    cfg_free(&next);
    /* The same log file: open it again (logrotate). */
    if (r->running.log_file[0] != '\0' &&
        strcmp(r->running.log_file, log_file_before) == 0) {
        rv = pz_log_open(r->running.log_file);
        if (rv < 0)
            pz_error("reload: cannot reopen log-file '%s': %s; still "
                     "logging to the file as it was",
                     r->running.log_file, pz_strerror(rv));
    }
    pz_free(log_file_before);
    apply(&r->running, arg);
    char status[160];
    if (applied == 0 && restart == 0 && failed == 0)
        snprintf(status, sizeof status, "reloaded: nothing changed");
    else
        snprintf(status, sizeof status,
                 "reloaded: %d change%s applied, %d need%s a restart%s",
                 applied, applied == 1 ? "" : "s", restart,
                 restart == 1 ? "s" : "",
                 failed ? ", the new log-file could not be opened" : "");
    pz_info("%s", status);
    char msg[200];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", status);
    sdnotify(msg);
    return applied;
}
