/* main.c - command line and mode selection.
 *
 *   pyazdb-server [pyazdb.conf] [--directive value ...]
 *   pyazdb-server --mandi [...]            discovery mode
 *   pyazdb-server --test-config FILE       check a config file and exit
 *   pyazdb-server --restore BACKUP [...]   seed an empty data dir from a
 *                                          backup, then serve
 *   pyazdb-server --help | --version
 *
 * A SIGHUP before the loop takes it over (a reload) is ignored (see main).
 * Configuration errors exit with status 1 and a message naming the file
 * and line (or the environment variable or flag) at fault. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "mandi.h"
#include "node.h"
#include "pz.h"
#include "stats.h"
#include "reload.h"
#include "server.h"

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out,
            "PyazDB %s - a Raft key-value database\n\n", PZ_VERSION);
    cfg_print_help(out);
}

/* Take "--restore FILE" (or --restore=FILE) out of argv: it is not a
 * directive. Returns the new argc; NULL in *file when absent, "" when its
 * value is missing. */
static int take_restore(int argc, char **argv, const char **file)
{
    *file = NULL;
    int out = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--restore") == 0) {
            *file = i + 1 < argc ? argv[++i] : "";
        } else if (strncmp(argv[i], "--restore=", 10) == 0) {
            *file = argv[i] + 10;
        } else {
            argv[out++] = argv[i];
        }
    }
    argv[out] = NULL;
    return out;
}

int main(int argc, char **argv)
{
    struct pz_config cfg;
    char err[4096];
    const char *restore;

    /* SIGHUP's default action ends the process: until server_run or
     * mandi_run hands it to the loop (a reload), a SIGHUP (logrotate, a
     * reload sent while the unit starts) is ignored rather than killing a
     * start that reads its configuration fresh anyway. */
    signal(SIGHUP, SIG_IGN);
    argc = take_restore(argc, argv, &restore);
    if (restore && restore[0] == '\0') {
        fprintf(stderr, "pyazdb-server: --restore needs a snapshot file\n");
        return 1;
    }

    if (cfg_has_flag(argc, argv, "--help") || cfg_has_flag(argc, argv, "-h")) {
        usage(stdout);
        return 0;
    }
    if (cfg_has_flag(argc, argv, "--version") ||
        cfg_has_flag(argc, argv, "-v")) {
        printf("pyazdb-server %s\n", PZ_VERSION);
        return 0;
    }
    bool test_only = cfg_has_flag(argc, argv, "--test-config");
    int rv = cfg_load(&cfg, argc, argv, environ, err, sizeof err);
    if (rv < 0) {
        fprintf(stderr, "pyazdb-server: configuration error:\n%s\n", err);
        cfg_free(&cfg);
        return 1;
    }
    if (test_only) {
        printf("configuration ok\n");
        cfg_free(&cfg);
        return 0;
    }
    reload_set_args(argc, argv); /* SIGHUP loads the same sources again */
    pz_log_setup((enum pz_log_level)cfg.log_level,
                 cfg.mode == CFG_MODE_MANDI ? "mandi" : cfg.node_id);
    pz_log_set_json(cfg.log_format == 1);
    rv = pz_log_open(cfg.log_file);
    if (rv < 0) {
        fprintf(stderr, "pyazdb-server: cannot open log-file '%s': %s\n",
                cfg.log_file, pz_log_strerror(rv));
        cfg_free(&cfg);
        return 1;
    }
    stats_init((double)time(NULL));
    if (cfg.mode == CFG_MODE_MANDI) {
        rv = mandi_run(&cfg);
    } else if (restore &&
               node_restore_backup(&cfg, restore, err, sizeof err) < 0) {
        fprintf(stderr, "pyazdb-server: cannot restore %s: %s\n", restore,
                err);
        rv = 1;
    } else {
        rv = server_run(&cfg);
    }
    stats_close();
    pz_log_close();
    cfg_free(&cfg);
    return rv;
}
