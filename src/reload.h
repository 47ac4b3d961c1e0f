/* reload.h - SIGHUP: load the configuration again, from the same command
 * line, config file and environment as at start, and apply what can change
 * in a running process.
 *
 * What can change is every directive without CFG_IMMUTABLE (log-level,
 * log-file, max-clients, the client timeouts, the TLS and token files):
 * the caller's apply callback puts the new values in place and says which
 * it could not (files that do not load, TLS or tokens turned on or off),
 * but for log-file, which this module opens again on every reload (so a
 * file moved away by logrotate is created anew), keeping the old one when
 * the new one cannot be opened. A change not put in place is counted as
 * failed or as needing a restart, never as applied, and the running copy
 * keeps the old value. Every other directive that differs is logged
 * as needing a restart and keeps its running value. A configuration that
 * does not load (a syntax error, a bad value, a broken cross-field rule)
 * is logged with its file and line and changes nothing.
 *
 * The service manager hears of it by sd_notify: RELOADING=1 when a reload
 * starts, READY=1 with a STATUS line when it is over, whatever the
 * outcome (the process goes on serving either way). */
#ifndef PZ_RELOAD_H
#define PZ_RELOAD_H

#include <uv.h>

#include "config.h"

/* The command line cfg_load() read at start, kept (borrowed: main's argv
 * lives as long as the process) for every reload. Called once, by main. */
void reload_set_args(int argc, char **argv);

struct reload {
    struct pz_config running; /* the values in effect (owned) */
    unsigned mode_flag;       /* CFG_MANDI in mandi mode, else 0: in mandi
                                 mode, directives without CFG_MANDI are not
                                 read and their changes are ignored */
};

/* The directives an apply callback may be unable to put in place, by
 * group: each group's files are read together. */
enum {
    RELOAD_TLS = 1u << 0,      /* tls-cert-file, tls-key-file, tls-ca-file,
                                  tls-client-auth, mandi-ca-file */
    RELOAD_PEER_TLS = 1u << 1, /* peer-tls-cert-file, -key-file, -ca-file */
    RELOAD_TOKENS = 1u << 2,   /* client-token-file */
};

/* What an apply callback could not do, as masks of RELOAD_* groups (each
 * already logged): failed, the files did not load and the material in
 * force stays; restart, the feature was turned on or off, which needs a
 * restart. */
struct reload_refused {
    unsigned failed;
    unsigned restart;
};

/* Called after a successful load with the new configuration: put every
 * directive without CFG_IMMUTABLE in place (changed or not: the values
 * that did not change are the running ones), reading the TLS and token
 * files again. Returns the groups it could not put in place; their
 * changed directives keep their running values, so that a later reload
 * tries them again. */
typedef struct reload_refused (*reload_apply_cb)(const struct pz_config *next,
                                                 void *arg);

/* Start from the configuration the process runs with (copied). */
void reload_init(struct reload *r, const struct pz_config *cfg);
void reload_free(struct reload *r);

/* Load and apply, logging each change, what failed and what needs a
 * restart, then one summary line ("reloaded: 1 change applied, 1 failed
 * (old TLS material kept), 0 need a restart"), also the STATUS= told to
 * the service manager. Returns the number of directives changed in place,
 * or PZ_ECONFIG when the configuration does not load (nothing changed). */
int reload_run(struct reload *r, reload_apply_cb apply, void *arg);

/* SIGHUP, coalesced. libuv calls a signal's handler once for each signal
 * that came; the reload runs from a zero timer, once those queued
 * meanwhile have all been seen: one reload for a burst (logrotate and a
 * configuration manager at once, `systemctl reload` twice), not one
 * each. */
struct reload_hup {
    uv_signal_t sig;
    uv_timer_t soon;
    unsigned hups;              /* SIGHUPs since the last run */
    void (*run)(unsigned hups); /* the reload they ask for (hups >= 1) */
};

/* Listen for SIGHUP on loop: run once a burst. */
void reload_hup_init(struct reload_hup *h, uv_loop_t *loop,
                     void (*run)(unsigned hups));
/* Close both handles (the loop then holds nothing of h). */
void reload_hup_close(struct reload_hup *h);
/* The reload's first line: "received SIGHUP", or with the count of a
 * burst. */
void reload_hup_log(unsigned hups);

#endif
