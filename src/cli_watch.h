/* cli_watch.h - pyazdb-cli watch: follow GET /watch (Server-Sent Events)
 * on the nodes given, resuming on another node when a stream breaks. */
#ifndef PZ_CLI_WATCH_H
#define PZ_CLI_WATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "json.h"
#include "pz.h"

struct tls_slot;

/* watch KEY | watch --prefix P, [--rev N] [--prev]: print events until
 * interrupted. addrs: HTTP addresses ("host:port") tried in turn; token
 * for the Authorization header (NULL: none); tls: HTTPS when on (NULL:
 * plain text); json: one JSON document per
 * event. Returns the exit status (only on an error: 1 bad use or no node,
 * 3 history compacted). */
int cli_watch(int nargs, char **args, const char *const *addrs, size_t naddrs,
              const char *token, const struct tls_slot *tls, bool json);

/* (cli.c) A JSON string member of an answer, or its "<name>_b64" form,
 * decoded into out (reset first). False when absent or bad. */
bool cli_json_bytes(const struct json_val *obj, const char *name,
                    struct pz_buf *out);

#endif
