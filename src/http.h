/* http.h - the HTTP/1.1 key-value API on a listener (COMPAT.md's node API
 * plus /health and /status). */
#ifndef PZ_HTTP_H
#define PZ_HTTP_H

#include "conn.h"
#include "config.h"

/* Listen on cfg->http_addr. Returns 0 or a negative code, message in err. */
int http_start(struct conn_listener *ls, const struct pz_config *cfg,
               char *err, size_t errlen);
/* Shutdown: close idle connections now, the others after their reply. */
void http_drain(struct conn_listener *ls);

#endif
