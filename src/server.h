/* server.h - the process in server mode: the loop, its listeners, signals
 * and the per-turn hook that drives the node and flushes connections.
 * Nothing calls back into it but for server_stop(): the modules it runs
 * get what they need (the configuration, the start time) at start, and
 * hear of a shutdown through their drain functions. */
#ifndef PZ_SERVER_H
#define PZ_SERVER_H

#include "config.h"

/* Run until SIGINT/SIGTERM; returns the process exit code. */
int server_run(const struct pz_config *cfg);
/* Shut down as on SIGTERM, logging why. */
void server_stop(const char *why);

#endif
