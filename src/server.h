/* server.h - the process in server mode: the loop, its listeners, signals
 * and the per-turn hook that drives the node and flushes connections. */
#ifndef PZ_SERVER_H
#define PZ_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"

/* Run until SIGINT/SIGTERM; returns the process exit code. */
int server_run(const struct pz_config *cfg);
/* Milliseconds since the server started. */
uint64_t server_uptime_ms(void);
/* True once a shutdown signal arrived: protocols finish the request in
 * flight and close instead of waiting for the next one. */
bool server_shutting_down(void);
uv_loop_t *server_loop(void);
/* Shut down as on SIGTERM, logging why. */
void server_stop(const char *why);
const struct pz_config *server_config(void);

#endif
