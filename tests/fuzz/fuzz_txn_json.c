/* fuzz_txn_json.c - the JSON bodies that become transactions: POST /txn,
 * and /set and POST /delete with conditions or a prefix, as
 * http_api_decode() reads them from a client, and what the node then
 * applies.
 *
 * Input: byte 0 picks the path (/txn, /set, /delete), the rest is the
 * body, decoded with small limits (key 64, value 256 bytes) so that the
 * 413 paths are reached.
 *
 * Invariants: a request is refused with a 4xx and a one-line reason, or
 * becomes a command that kv_decode accepts as a transaction (the kind
 * the path allows); its comparisons and operations respect the limits and
 * re-encode to the same bytes; applied to a small table it succeeds, and
 * the table's digest still matches a full recomputation. */
#include "fuzz.h"

#include "http_parse.h"
#include "kv.h"
#include "pz.h"

static const struct http_api_limits lim = {64, 256};

static void check_txn(const struct http_op *op, struct kv *kv)
{
    struct kv_cmd c;
    FUZZ_CHECK(kv_decode((const uint8_t *)op->cmd.data, op->cmd.len, &c) ==
               0);
    FUZZ_CHECK(c.op == KV_OP_TXN);
    FUZZ_CHECK(c.ncmp <= KV_TXN_MAX && c.nsucc <= KV_TXN_MAX &&
               c.nfail <= KV_TXN_MAX);
    struct kv_cmp *cm = calloc(c.ncmp + 1, sizeof *cm);
    struct kv_op *s = calloc(c.nsucc + 1, sizeof *s);
    struct kv_op *f = calloc(c.nfail + 1, sizeof *f);
    kv_txn_items(&c, cm, s, f);
    for (size_t i = 0; i < c.ncmp; i++)
        FUZZ_CHECK(cm[i].klen > 0 && cm[i].klen <= lim.max_key &&
                   cm[i].vlen <= lim.max_value);
    for (size_t i = 0; i < c.nsucc + c.nfail; i++) {
        const struct kv_op *o = i < c.nsucc ? &s[i] : &f[i - c.nsucc];
        FUZZ_CHECK(o->klen <= lim.max_key);
        if (o->type == KV_TOP_PUT)
            FUZZ_CHECK(o->vlen <= lim.max_value);
        if (o->type == KV_TOP_RANGE)
            FUZZ_CHECK(o->limit >= 1 && o->limit <= HTTP_RANGE_LIMIT_MAX);
    }
    struct pz_buf enc;
    pz_buf_init(&enc);
    FUZZ_CHECK(kv_encode_txn(&enc, cm, c.ncmp, s, c.nsucc, f, c.nfail) == 0);
    FUZZ_CHECK(enc.len == op->cmd.len &&
               memcmp(enc.data, op->cmd.data, enc.len) == 0);
    pz_buf_free(&enc);
    free(cm);
    free(s);
    free(f);
    struct kv_result res;
    FUZZ_CHECK(kv_apply(kv, (const uint8_t *)op->cmd.data, op->cmd.len,
                        &res) == 0);
    FUZZ_CHECK(res.revision == kv_revision(kv));
    FUZZ_CHECK(kv_digest(kv) == kv_digest_compute(kv));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const paths[] = {"/txn", "/set", "/delete"};
    if (size == 0)
        return 0;
    struct http_req req;
    memset(&req, 0, sizeof req);
    req.method = HTTP_POST;
    const char *path = paths[data[0] % 3];
    pz_buf_init(&req.url);
    pz_buf_init(&req.body);
    pz_buf_append(&req.url, path, strlen(path));
    pz_buf_append(&req.body, data + 1, size - 1);
    struct http_op op;
    http_api_decode(&req, &lim, &op);
    if (op.kind == HTTP_OP_ERROR) {
        FUZZ_CHECK(op.status >= 400 && op.status <= 499);
        FUZZ_CHECK(op.reason && op.reason[0] && !strchr(op.reason, '\n'));
    } else if (op.kind == HTTP_OP_TXN) {
        FUZZ_CHECK(data[0] % 3 == 0 ? op.txn_kind == HTTP_TXN_JSON
                                    : op.txn_kind != HTTP_TXN_JSON);
        struct kv *kv = kv_new_seeded(7);
        for (int i = 0; i < 8; i++) {
            char k[2] = {(char)('a' + i), 0};
            kv_set(kv, k, 1, "v", 1);
        }
        check_txn(&op, kv);
        kv_free(kv);
    } else {
        FUZZ_CHECK(op.kind == (data[0] % 3 == 1 ? HTTP_OP_SET : HTTP_OP_DEL));
    }
    http_op_free(&op);
    pz_buf_free(&req.url);
    pz_buf_free(&req.body);
    return 0;
}
