/* etcd_gateway.h - etcd 3.4's v3 JSON gateway on the HTTP port: POST
 * /v3/... with a JSON body mirroring the protobuf request, answered with
 * the protobuf response as JSON (pbjson.h), as etcd's grpc-gateway does.
 * http.c hands every request whose path begins with /v3/ to it. */
#ifndef PZ_ETCD_GATEWAY_H
#define PZ_ETCD_GATEWAY_H

#include <stdbool.h>

#include "config.h"
#include "httpd.h"

struct etcd_gw;

/* Once, from http_start: options (cfg borrowed while the server runs). */
void etcd_gw_init(const struct pz_config *cfg);
/* Is req for the gateway (its path begins with /v3/)? */
bool etcd_gw_match(const struct http_req *req);
/* Serve hc's request: answered at once (an error) or held; *gw is the
 * request's state (NULL if none), handed back to the functions below. */
void etcd_gw_start(struct httpd_conn *hc, struct etcd_gw **gw);
/* httpd's on_stream for a gateway watch. */
void etcd_gw_on_stream(struct etcd_gw *gw);
/* The request is answered or the connection closes: cancel what is in
 * flight and free *gw. */
void etcd_gw_free(struct etcd_gw **gw);
/* Shutdown: end every watch stream, close the loopback gRPC client. */
void etcd_gw_drain(void);
/* From the server's cron: cancel the watch streams whose clients fell
 * behind. */
void etcd_gw_cron(void);
/* Watch streams open. */
size_t etcd_gw_streams(void);
/* The loop is stopping: close the gateway's handle. */
void etcd_gw_close(void);

#endif
