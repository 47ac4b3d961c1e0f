/* http.h - the node's HTTP/1.1 key-value API on a listener (COMPAT.md's
 * node API plus /health, /status, /cluster and the admin endpoints), on
 * httpd.h's request loop. */
#ifndef PZ_HTTP_H
#define PZ_HTTP_H

#include "config.h"
#include "httpd.h"

/* Listen on cfg->http_addr. Returns 0 or a negative code, message in err. */
int http_start(struct httpd *srv, const struct pz_config *cfg, char *err,
               size_t errlen);
/* Shutdown: stop accepting, close idle connections now, the others after
 * their reply. Safe when http_start() did not run or failed. */
void http_drain(struct httpd *srv);

#endif
