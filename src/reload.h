/* reload.h - SIGHUP: load the configuration again, from the same command
 * line, config file and environment as at start, and apply what can change
 * in a running process.
 *
 * What can change is every directive without CFG_IMMUTABLE (log-level,
 * log-file, max-clients and the client timeouts): the caller's apply
 * callback puts the new values in place, but for log-file, which this
 * module opens again on every reload (so a file moved away by logrotate
 * is created anew), keeping the old one when the new one cannot be
 * opened. Every other directive that differs is logged
 * as needing a restart and keeps its running value. A configuration that
 * does not load (a syntax error, a bad value, a broken cross-field rule)
 * is logged with its file and line and changes nothing.
 *
 * The service manager hears of it by sd_notify: RELOADING=1 when a reload
 * starts, READY=1 with a STATUS line when it is over, whatever the
 * outcome (the process goes on serving either way). */
#ifndef PZ_RELOAD_H
#define PZ_RELOAD_H

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

/* Called after a successful load with the new configuration: put every
 * directive without CFG_IMMUTABLE in place (changed or not: the values
 * that did not change are the running ones). */
typedef void (*reload_apply_cb)(const struct pz_config *next, void *arg);

/* Start from the configuration the process runs with (copied). */
void reload_init(struct reload *r, const struct pz_config *cfg);
void reload_free(struct reload *r);

/* Load and apply, logging each change and what needs a restart. Returns
 * the number of directives changed in place, or PZ_ECONFIG when the
 * configuration does not load (nothing changed). */
int reload_run(struct reload *r, reload_apply_cb apply, void *arg);

#endif
