/* etcd.h - etcd's v3 gRPC API on PyazDB's gRPC port (etcd 3.4's
 * etcdserverpb: KV in etcd_kv.c, Cluster, Maintenance and Auth in
 * etcd_cluster.c; the pure mappings in etcd_map.c). grpc.c routes each
 * /etcdserverpb.* method to etcd_call with its enum etcd_call.
 *
 * Every answer carries etcd's ResponseHeader with this node's values:
 * cluster_id (PyazDB's cluster id), member_id (its Raft id), revision (the
 * key-value store's) and raft_term. Errors use the gRPC codes and messages
 * of etcd's rpctypes, which etcd clients match on ("etcdserver: no
 * leader", "mvcc: required revision has been compacted", ...).
 *
 * Writes (Put, DeleteRange, Txn) become one kv_encode_txn command through
 * node_propose_sink, on the leader; a follower relays the call to the
 * leader as it does kv.KVService's (grpc_stream_forward). Reads (Range,
 * Compact's check, HashKV) are served where they arrive, linearizable
 * through ReadIndex unless serializable. PyazDB keeps no MVCC history:
 * the only revision a read can name is the current one. */
#ifndef PZ_ETCD_H
#define PZ_ETCD_H

#include <stdbool.h>
#include <stdint.h>

#include "etcd_rpc.pb-c.h"
#include "grpc.h"

enum etcd_call {
    ETCD_RANGE,
    ETCD_PUT,
    ETCD_DELETE_RANGE,
    ETCD_TXN,
    ETCD_COMPACT,
    ETCD_MEMBER_ADD,
    ETCD_MEMBER_REMOVE,
    ETCD_MEMBER_UPDATE,
    ETCD_MEMBER_LIST,
    ETCD_MEMBER_PROMOTE,
    ETCD_ALARM,
    ETCD_STATUS,
    ETCD_DEFRAGMENT,
    ETCD_HASH,
    ETCD_HASHKV,
    ETCD_SNAPSHOT,
    ETCD_MOVE_LEADER,
    ETCD_AUTH_STATUS,
    ETCD_AUTHENTICATE,
    ETCD_AUTH_OTHER,
    ETCD_LEASE_GRANT,
    ETCD_LEASE_REVOKE,
    ETCD_LEASE_TTL,
    ETCD_LEASE_LEASES,
    ETCD_WATCH,           /* bidirectional */
    ETCD_LEASE_KEEPALIVE, /* bidirectional */
};

/* Serve one complete request (or serve it again: a forward that never
 * reached the leader). Ends the stream, now or later (grpc.h). */
void etcd_call(struct gstream *st, int call);

/* Bidirectional calls (ETCD_WATCH, ETCD_LEASE_KEEPALIVE): one request
 * message has arrived (grpc_stream_msg), or the client ended its side
 * (etcd_stream_end). The call ends the stream when it is done. */
void etcd_stream_message(struct gstream *st, int call);
void etcd_stream_end(struct gstream *st, int call);

/* etcd_watch.c: Watch. Setup once the loop runs (grpc_start): the
 * per-stream limit and the progress_notify interval; close at
 * grpc_close. */
void etcd_watch_setup(uv_loop_t *loop, size_t max_per_stream,
                      uint64_t progress_ms);
void etcd_watch_close(void);
/* From the server's cron: cancel the watches whose clients fell behind. */
void etcd_watch_cron(void);
void etcd_watch_message(struct gstream *st);
void etcd_watch_end(struct gstream *st);
/* The pieces of a watch the JSON gateway's watch (etcd_gateway.c) shares:
 * a WatchCreateRequest's options, the events of a revision, why the hub
 * cancelled a watcher, and etcd's wording for a watch refused. */
struct watcher;
struct etcd_watch_opts {
    bool prev_kv, noput, nodel, progress_notify, fragment;
};
void etcd_watch_opts_of(const Etcdserverpb__WatchCreateRequest *c,
                        struct etcd_watch_opts *o);
/* The events w matches among the node's watch history entries [b, e)
 * (one revision, watch_next) that o's filters keep: out->evp[0..n),
 * keys and values borrowed from the history until the loop turns. Free
 * with etcd_events_free. Returns n. */
struct etcd_events {
    Mvccpb__Event **evp;
    size_t n;
    Mvccpb__Event *ev;     /* storage */
    Mvccpb__KeyValue *kvs; /* storage */
};
size_t etcd_watch_events(const struct watcher *w,
                         const struct etcd_watch_opts *o, uint64_t b,
                         uint64_t e, struct etcd_events *out);
void etcd_events_free(struct etcd_events *x);
/* One history event as w and o's filters see it: false when filtered
 * out, else *ev (its kv and prev_kv in kvs, borrowed from the history). */
struct watch_event;
bool etcd_watch_event_of(const struct watcher *w,
                         const struct etcd_watch_opts *o,
                         const struct watch_event *we, Mvccpb__Event *ev,
                         Mvccpb__KeyValue kvs[2]);
/* A watcher the hub cancelled (not WATCH_LIVE): the cancel_reason, and
 * the compact_revision to answer with (0: too slow). */
const char *etcd_watch_cancelled(const struct watcher *w, int64_t *compact);
#define ETCD_WATCH_COMPACTED                                                   \
    "etcdserver: mvcc: required revision has been compacted"
#define ETCD_WATCH_EMPTY "mvcc: watcher range is empty"
/* A key or range_end longer than max-key-size: refused like an empty
 * range, before the watcher (which copies both) is made. */
#define ETCD_WATCH_KEY_TOO_LARGE "etcdserver: request is too large"
#define ETCD_WATCH_TOO_MANY "etcdserver: too many watchers (max-watchers)"
/* A negative start_revision: refused like an empty range (etcd_watch_start
 * says why it is not answered as compacted). */
#define ETCD_WATCH_NEGATIVE_START                                              \
    "etcdserver: start_revision must not be negative (0: the next revision)"

/* etcd_lease.c: Lease calls. */
void etcd_lease_call(struct gstream *st, int call);
void etcd_lease_keepalive_message(struct gstream *st);
void etcd_lease_keepalive_end(struct gstream *st);

/* etcd_kv.c: KV calls. */
void etcd_kv_call(struct gstream *st, int call);
/* etcd_cluster.c: Cluster, Maintenance, Auth calls. */
void etcd_cluster_call(struct gstream *st, int call);

/* Shared by both. */
/* Fill h with this node's values and revision rev, from ns when the caller
 * has one, else from node_ids(). */
void etcd_header(Etcdserverpb__ResponseHeader *h, uint64_t rev,
                 const struct node_status *ns);
/* Pack m and reply with it (OK). */
void etcd_reply(struct gstream *st, const ProtobufCMessage *m);
/* End st after a node error rv (PZ_ENOTLEADER: forward it). */
void etcd_node_error(struct gstream *st, int rv, bool write);
/* Unpack the request as desc, or end st with INVALID_ARGUMENT (NULL).
 * Free with protobuf_c_message_free_unpacked(m, &grpc_pb_allocator). */
ProtobufCMessage *etcd_unpack(struct gstream *st,
                              const ProtobufCMessageDescriptor *desc);

#endif
