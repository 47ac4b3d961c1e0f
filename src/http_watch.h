/* http_watch.h - GET /watch: watch streams as Server-Sent Events, served
 * by http.c on any node from its applied state (the history and watchers
 * are watch.h's, fed by the node). */
#ifndef PZ_HTTP_WATCH_H
#define PZ_HTTP_WATCH_H

#include "config.h"
#include "httpd.h"

struct watch_stream;

/* Once, after node_init: options, the node's hub, /metrics. */
void http_watch_init(const struct pz_config *cfg);
/* Serve GET /watch on hc (its request): answers it at once (an error) or
 * holds it and streams; *ws is the stream's state (NULL if none), which
 * http.c hands back to the functions below. */
void http_watch_start(struct httpd_conn *hc, struct watch_stream **ws);
/* httpd's on_stream for a watch stream. */
void http_watch_on_stream(struct watch_stream *ws);
/* The request is answered or the connection closes: free *ws. */
void http_watch_free(struct watch_stream **ws);
/* Progress events for idle streams; call every few hundred ms. */
void http_watch_cron(void);
/* Shutdown: end every stream. */
void http_watch_drain(void);
/* At the loop's end: close the idle pass's handle. */
void http_watch_close(void);
/* About the bytes the events of revision [begin, end) that w matches
 * take as JSON (base64 a third more than the bytes, plus the members
 * around them); *whole: every event matched. */
struct watcher;
size_t http_watch_rev_estimate(const struct watcher *w, bool prev_kv,
                               uint64_t begin, uint64_t end, bool *whole);
/* May hc's listener take one more watch stream? Watch streams (GET /watch
 * and the etcd gateway's) are client connections that are never evicted:
 * they take at most half of max-clients, so that they cannot keep every
 * other client out. */
bool http_watch_room(const struct httpd_conn *hc);
#define HTTP_WATCH_NO_ROOM                                                    \
    "Too many watch streams (at most half of max-clients)"

#endif
