/* main.c - command line and mode selection.
 *
 *   pyazdb-server [pyazdb.conf] [--directive value ...]
 *   pyazdb-server --mandi [...]            discovery mode
 *   pyazdb-server --test-config FILE       check a config file and exit
 *   pyazdb-server --help | --version
 *
 * Configuration errors exit with status 1 and a message naming the file and
 * line (or the environment variable or flag) at fault. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "mandi.h"
#include "pz.h"
#include "reload.h"
#include "server.h"

extern char **environ;

static void usage(FILE *out)
{
    fprintf(out,
            "PyazDB %s - a Raft key-value database\n\n", PZ_VERSION);
    cfg_print_help(out);
}

int main(int argc, char **argv)
{
    struct pz_config cfg;
    char err[1024];

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
    rv = pz_log_open(cfg.log_file);
    if (rv < 0) {
        fprintf(stderr, "pyazdb-server: cannot open log-file '%s': %s\n",
                cfg.log_file, pz_strerror(rv));
        cfg_free(&cfg);
        return 1;
    }
    if (cfg.mode == CFG_MODE_MANDI) {
        rv = mandi_run(&cfg);
    } else {
        rv = server_run(&cfg);
    }
    pz_log_close();
    cfg_free(&cfg);
    return rv;
}
