/* http.h - the node's HTTP/1.1 key-value API on a listener (COMPAT.md's
 * node API plus /health, /status, /cluster and the admin endpoints), on
 * httpd.h's request loop. */
#ifndef PZ_HTTP_H
#define PZ_HTTP_H

#include "config.h"
#include "httpd.h"
#include "kv.h"

/* Listen on cfg->http_addr. cfg is borrowed for as long as the server
 * runs (limits, the cluster token); started is conn_now() when the server
 * started (/status reports the uptime from it). Returns 0 or a negative
 * code, message in err. */
int http_start(struct httpd *srv, const struct pz_config *cfg,
               uint64_t started, char *err, size_t errlen);
/* Shutdown: stop accepting, close idle connections now, the others after
 * their reply, and keep none alive from now on. Safe when http_start()
 * did not run or failed. */
void http_drain(struct httpd *srv);
/* Append v as /range writes a key: {"key" or "key_b64", "value" or
 * "value_b64" (when v->value), create_revision, mod_revision, version,
 * lease}. */
void http_put_kv(struct pz_buf *b, const struct kv_view *v);

#endif
