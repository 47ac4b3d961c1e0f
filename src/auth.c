/* auth.c - see auth.h. */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "etcd.h"
#include "etcd_map.h"
#include "grpc_pb.h"
#include "kv.h"
#include "log.h"
#include "pz.h"
#include "tokens.h"

#define TXN_DEPTH_MAX 8 /* nested etcd transactions checked */

static struct token_set *in_force; /* NULL: tokens off */
static char *cluster_token;        /* cluster-token (copied), "" none */

bool auth_on(void)
{
    return in_force != NULL;
}

void auth_free(void)
{
    tokens_free(in_force);
    in_force = NULL;
    pz_free(cluster_token);
    cluster_token = NULL;
}

/* Read path into a new set; on failure "PATH:LINE: why" in err. */
static int load_file(const char *path, struct token_set **out, char *err,
                     size_t errlen)
{
    /* Only a regular file: a FIFO would block the start, or the loop on
     * SIGHUP, until something writes to it. */
    const char *oerr;
    FILE *f = pz_fopen_regular(path, &oerr);
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, oerr);
        return PZ_ECONFIG;
    }
    char *buf = pz_malloc(TOKENS_FILE_MAX + 1);
    size_t n = fread(buf, 1, TOKENS_FILE_MAX + 1, f);
    bool rerr = ferror(f);
    fclose(f);
    if (rerr) {
        snprintf(err, errlen, "%s: cannot read", path);
        pz_free(buf);
        return PZ_ECONFIG;
    }
    size_t line = 0;
    char why[200];
    int rv = tokens_parse(buf, n, out, &line, why, sizeof why);
    pz_free(buf);
    if (rv < 0) {
        if (line)
            snprintf(err, errlen, "%s:%zu: %s", path, line, why);
        else
            snprintf(err, errlen, "%s: %s", path, why);
        return PZ_ECONFIG;
    }
    return 0;
}

int auth_load(const struct pz_config *c, bool reload, char *err,
              size_t errlen)
{
    const char *path = c->client_token_file;
    if (!reload) {
        pz_free(cluster_token);
        cluster_token = pz_strdup(c->cluster_token ? c->cluster_token : "");
    }
    bool want = path && path[0];
    if (reload && want != auth_on()) {
        pz_warn("reload: client tokens turned %s: needs a restart; still %s",
                want ? "on" : "off", auth_on() ? "on" : "off");
        if (!want)
            return 0;
        /* turning on waits for a restart too: protected mode and every
         * listener decided at start */
        return 0;
    }
    if (!want)
        return 0;
    struct token_set *s = NULL;
    char e[512];
    if (load_file(path, &s, e, sizeof e) < 0) {
        if (reload) {
            pz_error("reload: client-token-file %s; the tokens in force stay",
                     e);
            return PZ_ECONFIG;
        }
        snprintf(err, errlen, "client-token-file %s", e);
        return PZ_ECONFIG;
    }
    tokens_free(in_force);
    in_force = s;
    if (reload)
        pz_info("reload: client-token-file %s: %zu tokens", path, s->n);
    else
        pz_info("client tokens: %zu from %s", s->n, path);
    return 0;
}

/* --- deciding ------------------------------------------------------------ */

/* The token of the file that cred (NULL: none) is, or a refusal. */
static int who(const char *cred, const struct token **t, char *why,
               size_t whylen)
{
    *t = NULL;
    if (cred == NULL) {
        snprintf(why, whylen,
                 "Missing bearer token (Authorization: Bearer <token>)");
        return AUTH_UNAUTHENTICATED;
    }
    *t = tokens_find(in_force, cred, strlen(cred));
    if (*t == NULL) {
        snprintf(why, whylen, "Unknown bearer token");
        return AUTH_UNAUTHENTICATED;
    }
    return AUTH_OK;
}

static int deny(char *why, size_t whylen, const struct token *t,
                const char *what)
{
    snprintf(why, whylen, "Token '%s' %s", t->name, what);
    return AUTH_DENIED;
}

/* A check of one access: write or read, of key or of [key, end). */
static int need(const struct token *t, bool write, char *why, size_t whylen)
{
    if (write && !(t->rights & TOKEN_WRITE))
        return deny(why, whylen, t, "is read-only");
    return AUTH_OK;
}

static int need_key(const struct token *t, const uint8_t *k, size_t klen,
                    char *why, size_t whylen)
{
    if (!token_key_ok(t, k, klen))
        return deny(why, whylen, t, "may not touch this key (outside its "
                                    "prefixes)");
    return AUTH_OK;
}

static int need_range(const struct token *t, const uint8_t *from,
                      size_t flen, const uint8_t *to, size_t tlen,
                      bool to_end, char *why, size_t whylen)
{
    if (!token_range_ok(t, from, flen, to, tlen, to_end))
        return deny(why, whylen, t, "may not touch this range (outside its "
                                    "prefixes)");
    return AUTH_OK;
}

/* Admin: the cluster token, or an rw token without prefixes. Without a
 * token file, only the cluster token (when set) is asked for. */
static int admin(const char *cred, char *why, size_t whylen)
{
    bool ct = cluster_token && cluster_token[0];
    if (cred && ct &&
        pz_token_equal(cluster_token, strlen(cluster_token), cred,
                       strlen(cred)))
        return AUTH_OK;
    if (!auth_on()) {
        if (!ct)
            return AUTH_OK;
        snprintf(why, whylen, "Unauthorized");
        return AUTH_UNAUTHENTICATED;
    }
    const struct token *t;
    int rv = who(cred, &t, why, whylen);
    if (rv != AUTH_OK)
        return rv;
    if (!(t->rights & TOKEN_WRITE) || token_restricted(t))
        return deny(why, whylen, t,
                    "may not do this: it needs an rw token without prefixes");
    return AUTH_OK;
}

const char *auth_cluster_token(void)
{
    return cluster_token ? cluster_token : "";
}

bool auth_user_ok(const char *name, const char *cred)
{
    const struct token *t =
        cred && auth_on() ? tokens_find(in_force, cred, strlen(cred)) : NULL;
    return t && strcmp(t->name, name) == 0;
}

/* Every operation of the encoded command cmd (a transaction, or a plain
 * write) against t. */
static int check_cmd(const struct token *t, const struct pz_buf *cmd,
                     char *why, size_t whylen)
{
    struct kv_cmd c;
    if (kv_decode((const uint8_t *)cmd->data, cmd->len, &c) < 0)
        return deny(why, whylen, t, "sent a request that does not decode");
    int rv;
    switch (c.op) {
    case KV_OP_SET:
    case KV_OP_SETL:
    case KV_OP_DEL:
        if ((rv = need(t, true, why, whylen)) != AUTH_OK)
            return rv;
        return need_key(t, c.key, c.klen, why, whylen);
    case KV_OP_TXN:
        break;
    default:
        return deny(why, whylen, t, "may not do this");
    }
    size_t nops = c.nsucc + c.nfail;
    struct kv_cmp *cmps = pz_calloc(c.ncmp ? c.ncmp : 1, sizeof *cmps);
    struct kv_op *ops = pz_calloc(nops ? nops : 1, sizeof *ops);
    kv_txn_items(&c, cmps, ops, ops + c.nsucc);
    rv = AUTH_OK;
    for (size_t i = 0; i < c.ncmp && rv == AUTH_OK; i++)
        rv = need_key(t, cmps[i].key, cmps[i].klen, why, whylen);
    for (size_t i = 0; i < nops && rv == AUTH_OK; i++) {
        const struct kv_op *o = &ops[i];
        bool write = o->type == KV_TOP_PUT || o->type == KV_TOP_DEL ||
                     o->type == KV_TOP_DELRANGE;
        rv = need(t, write, why, whylen);
        if (rv != AUTH_OK)
            break;
        if (o->type == KV_TOP_DELRANGE || o->type == KV_TOP_RANGE)
            rv = need_range(t, o->key, o->klen, o->value, o->vlen,
                            (o->flags & KV_RANGE_TO_END) != 0, why, whylen);
        else
            rv = need_key(t, o->key, o->klen, why, whylen);
    }
    pz_free(cmps);
    pz_free(ops);
    return rv;
}

/* GET /watch: the range asked (key, prefix or from/to), as http_watch.c
 * reads it. A request it would refuse is refused here too. */
static int check_watch(const struct token *t, const struct http_req *req,
                       char *why, size_t whylen)
{
    if (!token_restricted(t))
        return AUTH_OK;
    const char *u = req->url.data ? req->url.data : "";
    size_t ul = req->url.len;
    char *key = NULL, *pre = NULL, *from = NULL, *to = NULL;
    size_t klen = 0, plen = 0, flen = 0, tlen = 0;
    int hk = http_query_get(u, ul, "key", &key, &klen);
    int hp = http_query_get(u, ul, "prefix", &pre, &plen);
    int hf = http_query_get(u, ul, "from", &from, &flen);
    int ht = http_query_get(u, ul, "to", &to, &tlen);
    int rv;
    if (hk < 0 || hp < 0 || hf < 0 || ht < 0 || hk + hp + hf != 1 ||
        (ht && !hf)) {
        rv = deny(why, whylen, t, "may not watch this (no single range)");
    } else if (hk) {
        rv = need_key(t, (uint8_t *)key, klen, why, whylen);
    } else if (hp) {
        uint8_t *end = pz_malloc(plen + 1);
        long el = kv_prefix_end(pre, plen, end);
        rv = need_range(t, (uint8_t *)pre, plen, end, el < 0 ? 0 : (size_t)el,
                        el < 0, why, whylen);
        pz_free(end);
    } else {
        rv = need_range(t, (uint8_t *)from, flen, (uint8_t *)to, tlen, !ht,
                        why, whylen);
    }
    pz_free(key);
    pz_free(pre);
    pz_free(from);
    pz_free(to);
    return rv;
}

/* The request's bearer credential as a string in buf (NULL: none; one
 * too long for any token counts as an unknown one, ""). */
static const char *bearer(const struct http_req *req, char buf[TOKEN_MAX + 1])
{
    const char *h = http_req_header(req, "authorization");
    size_t n = h ? strlen(h) : 0;
    if (h == NULL || !http_bearer_value(&h, &n))
        return NULL;
    if (n > TOKEN_MAX)
        return "";
    memcpy(buf, h, n);
    buf[n] = '\0';
    return buf;
}

bool auth_http_sees_all(const struct http_req *req)
{
    if (!auth_on())
        return true;
    char buf[TOKEN_MAX + 1];
    const char *cred = bearer(req, buf);
    if (cred == NULL)
        return false;
    if (cluster_token && cluster_token[0] &&
        pz_token_equal(cluster_token, strlen(cluster_token), cred,
                       strlen(cred)))
        return true;
    const struct token *t = tokens_find(in_force, cred, strlen(cred));
    return t != NULL && !token_restricted(t);
}

int auth_http(const struct http_req *req, const struct http_op *op,
              char *why, size_t whylen)
{
    char buf[TOKEN_MAX + 1];
    const char *cred = bearer(req, buf);
    switch (op->kind) {
    case HTTP_OP_ERROR:
    case HTTP_OP_HEALTH:
    case HTTP_OP_STATUS:
    case HTTP_OP_CLUSTER:
    case HTTP_OP_METRICS:
        return AUTH_OK;
    case HTTP_OP_REMOVE:
    case HTTP_OP_TRANSFER:
    case HTTP_OP_SNAPSHOT:
    case HTTP_OP_BACKUP:
        return admin(cred, why, whylen);
    default:
        break;
    }
    if (!auth_on())
        return AUTH_OK;
    const struct token *t;
    int rv = who(cred, &t, why, whylen);
    if (rv != AUTH_OK)
        return rv;
    const uint8_t *k = (const uint8_t *)op->key;
    switch (op->kind) {
    case HTTP_OP_GET:
        return need_key(t, k, op->klen, why, whylen);
    case HTTP_OP_SET:
    case HTTP_OP_DEL:
        if ((rv = need(t, true, why, whylen)) != AUTH_OK)
            return rv;
        return need_key(t, k, op->klen, why, whylen);
    case HTTP_OP_RANGE:
        return need_range(t, k, op->klen, (const uint8_t *)op->end, op->elen,
                          op->to_end, why, whylen);
    case HTTP_OP_TXN:
        return check_cmd(t, &op->cmd, why, whylen);
    case HTTP_OP_WATCH:
        return check_watch(t, req, why, whylen);
    case HTTP_OP_LEASE_GRANT:
    case HTTP_OP_LEASE_KEEPALIVE:
        return need(t, true, why, whylen);
    case HTTP_OP_LEASE_GET:
        if (!op->keys_only)
            return need(t, true, why, whylen);
        /* its keys may lie anywhere */
        __attribute__((fallthrough));
    case HTTP_OP_LEASE_REVOKE:
    case HTTP_OP_LEASE_LIST:
        if (!(t->rights & TOKEN_WRITE) || token_restricted(t))
            return deny(why, whylen, t,
                        "may not do this: it needs an rw token without "
                        "prefixes (a lease may hold any key)");
        return AUTH_OK;
    default:
        return deny(why, whylen, t, "may not do this");
    }
}

int auth_grpc_key(const char *cred, bool write, const uint8_t *key,
                  size_t klen, char *why, size_t whylen)
{
    if (!auth_on())
        return AUTH_OK;
    const struct token *t;
    int rv = who(cred, &t, why, whylen);
    if (rv == AUTH_OK)
        rv = need(t, write, why, whylen);
    if (rv == AUTH_OK)
        rv = need_key(t, key, klen, why, whylen);
    return rv;
}

/* An etcd key range (key, range_end) against t. */
static int etcd_range(const struct token *t, const ProtobufCBinaryData *key,
                      const ProtobufCBinaryData *end, char *why,
                      size_t whylen)
{
    struct etcd_range r;
    if (etcd_range_decode(key->data, key->len, end->data, end->len, &r) < 0) {
        if (!token_restricted(t))
            return AUTH_OK; /* the call refuses it: key is not provided */
        return deny(why, whylen, t, "may not touch this key (outside its "
                                    "prefixes)");
    }
    if (r.single || r.empty)
        return need_key(t, r.key, r.klen, why, whylen);
    return need_range(t, r.key, r.klen, r.end, r.elen, r.to_end, why,
                      whylen);
}

static int etcd_txn(const struct token *t, const Etcdserverpb__TxnRequest *q,
                    int depth, char *why, size_t whylen);

static int etcd_ops(const struct token *t, Etcdserverpb__RequestOp **ops,
                    size_t n, int depth, char *why, size_t whylen)
{
    int rv = AUTH_OK;
    for (size_t i = 0; i < n && rv == AUTH_OK; i++) {
        const Etcdserverpb__RequestOp *o = ops[i];
        switch (o->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
            rv = etcd_range(t, &o->request_range->key,
                            &o->request_range->range_end, why, whylen);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
            rv = need(t, true, why, whylen);
            if (rv == AUTH_OK)
                rv = need_key(t, o->request_put->key.data,
                              o->request_put->key.len, why, whylen);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
            rv = need(t, true, why, whylen);
            if (rv == AUTH_OK)
                rv = etcd_range(t, &o->request_delete_range->key,
                                &o->request_delete_range->range_end, why,
                                whylen);
            break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
            rv = etcd_txn(t, o->request_txn, depth + 1, why, whylen);
            break;
        default:
            break; /* no operation: the call refuses it */
        }
    }
    return rv;
}

static int etcd_txn(const struct token *t, const Etcdserverpb__TxnRequest *q,
                    int depth, char *why, size_t whylen)
{
    if (depth > TXN_DEPTH_MAX)
        return deny(why, whylen, t, "sent transactions nested too deep");
    int rv = AUTH_OK;
    for (size_t i = 0; i < q->n_compare && rv == AUTH_OK; i++)
        rv = etcd_range(t, &q->compare[i]->key, &q->compare[i]->range_end,
                        why, whylen);
    if (rv == AUTH_OK)
        rv = etcd_ops(t, q->success, q->n_success, depth, why, whylen);
    if (rv == AUTH_OK)
        rv = etcd_ops(t, q->failure, q->n_failure, depth, why, whylen);
    return rv;
}

int auth_grpc_etcd(const char *cred, int call, const uint8_t *msg,
                   size_t len, char *why, size_t whylen)
{
    return auth_grpc_etcd_unpacked(cred, call, msg, len, why, whylen, NULL,
                                   NULL);
}

/* The request a KV call's check reads, or NULL. */
static const ProtobufCMessageDescriptor *kv_request(int call)
{
    switch (call) {
    case ETCD_RANGE:
        return &etcdserverpb__range_request__descriptor;
    case ETCD_PUT:
        return &etcdserverpb__put_request__descriptor;
    case ETCD_DELETE_RANGE:
        return &etcdserverpb__delete_range_request__descriptor;
    case ETCD_TXN:
        return &etcdserverpb__txn_request__descriptor;
    default:
        return NULL;
    }
}

int auth_grpc_etcd_unpacked(const char *cred, int call, const uint8_t *msg,
                            size_t len, char *why, size_t whylen,
                            ProtobufCMessage **unpacked, size_t *bytes)
{
    size_t held = 0;
    if (unpacked)
        *unpacked = NULL;
    if (bytes)
        *bytes = 0;
    switch (call) {
    case ETCD_COMPACT:
    case ETCD_MEMBER_ADD:
    case ETCD_MEMBER_UPDATE:
    case ETCD_ALARM:
    case ETCD_DEFRAGMENT:
        if (!auth_on())
            return AUTH_OK; /* as before tokens: see the README */
        return admin(cred, why, whylen);
    case ETCD_MEMBER_REMOVE:
    case ETCD_MEMBER_PROMOTE:
    case ETCD_SNAPSHOT:
    case ETCD_MOVE_LEADER: {
        /* As their HTTP routes: the cluster token, with or without a
         * token file (etcdctl sends it with --user root:TOKEN). */
        int rv = admin(cred, why, whylen);
        if (rv != AUTH_OK && !auth_on())
            snprintf(why, whylen,
                     "etcdserver: invalid auth token: this call needs the "
                     "cluster-token (etcdctl --user root:TOKEN, or metadata "
                     "authorization: Bearer TOKEN)");
        return rv;
    }
    case ETCD_LEASE_GRANT:
    case ETCD_LEASE_REVOKE:
    case ETCD_LEASE_TTL:
    case ETCD_LEASE_LEASES:
    case ETCD_LEASE_KEEPALIVE:
    case ETCD_WATCH:
        /* A lease may hold any key, and a watch is not checked against
         * prefixes: an rw token without prefixes, with client tokens. */
        if (!auth_on())
            return AUTH_OK;
        return admin(cred, why, whylen);
    case ETCD_AUTHENTICATE:
        return AUTH_OK; /* how etcdctl --user gets its token */
    default:
        break;
    }
    if (!auth_on())
        return AUTH_OK;
    const struct token *t;
    int rv = who(cred, &t, why, whylen);
    if (rv != AUTH_OK)
        return rv;
    const ProtobufCMessageDescriptor *desc = kv_request(call);
    if (desc) {
        ProtobufCAllocator counting = grpc_pb_counting(&held);
        ProtobufCAllocator *a = &counting;
        ProtobufCMessage *m = protobuf_c_message_unpack(desc, a, len, msg);
        if (m == NULL)
            return AUTH_OK; /* the call refuses it: INVALID_ARGUMENT */
        if (call == ETCD_RANGE) {
            const Etcdserverpb__RangeRequest *q = (const void *)m;
            rv = etcd_range(t, &q->key, &q->range_end, why, whylen);
        } else if (call == ETCD_PUT) {
            const Etcdserverpb__PutRequest *q = (const void *)m;
            rv = need(t, true, why, whylen);
            if (rv == AUTH_OK)
                rv = need_key(t, q->key.data, q->key.len, why, whylen);
        } else if (call == ETCD_DELETE_RANGE) {
            const Etcdserverpb__DeleteRangeRequest *q = (const void *)m;
            rv = need(t, true, why, whylen);
            if (rv == AUTH_OK)
                rv = etcd_range(t, &q->key, &q->range_end, why, whylen);
        } else {
            rv = etcd_txn(t, (const Etcdserverpb__TxnRequest *)m, 0, why,
                          whylen);
        }
        if (unpacked && rv == AUTH_OK) {
            *unpacked = m;
            if (bytes)
                *bytes = held;
        } else
            protobuf_c_message_free_unpacked(m, a);
        return rv;
    }
    switch (call) {
    case ETCD_HASH:
    case ETCD_HASHKV:
        if (token_restricted(t))
            return deny(why, whylen, t,
                        "may not do this: a hash covers every key");
        return AUTH_OK;
    default:
        return AUTH_OK; /* MemberList, Status, AuthStatus: any token */
    }
}
