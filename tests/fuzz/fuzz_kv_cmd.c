/* fuzz_kv_cmd.c - the key-value command codec and the table, as a node
 * applies the payloads of committed log entries (they come from the
 * leader, over the peer link, or from the disk).
 *
 * Input: a sequence of commands, each a 2-byte little-endian length then
 * that many bytes, decoded by kv_decode and applied by kv_apply to one
 * table, with a second table kept in step through the encoders.
 *
 * Invariants: kv_apply accepts exactly what kv_decode accepts, and leaves
 * the table unchanged when it refuses; a decoded command re-encodes to
 * bytes that decode to the same command (a transaction, version 2, to the
 * very same bytes: its encoding is canonical); after every command both
 * tables hold the same keys, bytes, revision and digest (kv_digest against
 * a full recomputation), a key set reads back its value, and the ordered
 * index holds every key once, in order; kv_txn_read takes exactly the
 * read-only transactions and changes nothing. */
#include "fuzz.h"

#include "kv.h"
#include "pz.h"

/* Walks the ordered index, checking that keys strictly increase. */
struct order {
    uint8_t *last; /* previous key (pz_malloc) */
    size_t llen;   /* its length */
    size_t n;      /* keys seen */
};

static int order_visit(void *arg, const struct kv_view *v)
{
    struct order *o = arg;
    if (o->n) {
        size_t m = o->llen < v->klen ? o->llen : v->klen;
        int c = m ? memcmp(o->last, v->key, m) : 0;
        FUZZ_CHECK(c < 0 || (c == 0 && o->llen < v->klen));
    }
    pz_free(o->last);
    o->last = pz_memdup(v->klen ? (const void *)v->key : "", v->klen);
    o->llen = v->klen;
    o->n++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f;
    fz_init(&f, data, size);
    struct kv *a = kv_new_seeded(1), *b = kv_new_seeded(2);
    struct pz_buf enc;
    pz_buf_init(&enc);
    while (fz_left(&f) > 0) {
        size_t len = fz_u16(&f);
        if (len > fz_left(&f))
            len = fz_left(&f);
        uint8_t *cmd = fuzz_dup(f.p, len);
        f.p += len;
        f.n -= len;
        struct kv_cmd c;
        int drc = kv_decode(cmd, len, &c);
        size_t keys = kv_count(a), bytes = kv_bytes(a);
        uint64_t dig = kv_digest(a);
        struct kv_result res;
        /* A read-only transaction run without the log (kv_txn_read)
         * changes nothing, and nothing else is taken for one. */
        bool ro = kv_txn_readonly(cmd, len);
        int rrc = kv_txn_read(a, cmd, len, 1000, &res, NULL);
        FUZZ_CHECKF(ro ? rrc == 0 : rrc != 0, "readonly %d, read %d", ro, rrc);
        FUZZ_CHECK(!ro || drc == 0);
        FUZZ_CHECK(kv_count(a) == keys && kv_bytes(a) == bytes &&
                   kv_digest(a) == dig);
        (void)kv_txn_check(a, cmd, len, 1000);
        int arc = kv_apply(a, cmd, len, &res);
        FUZZ_CHECKF(arc == drc, "decode %d, apply %d", drc, arc);
        if (drc != 0) {
            FUZZ_CHECK(kv_count(a) == keys && kv_bytes(a) == bytes &&
                       kv_digest(a) == dig);
            free(cmd);
            continue;
        }
        FUZZ_CHECK(res.op == c.op);
        FUZZ_CHECK(res.revision == kv_revision(a));
        if (c.op == KV_OP_TXN) {
            struct kv_cmp *cmps = calloc(c.ncmp + 1, sizeof *cmps);
            struct kv_op *s = calloc(c.nsucc + 1, sizeof *s);
            struct kv_op *fl = calloc(c.nfail + 1, sizeof *fl);
            kv_txn_items(&c, cmps, s, fl);
            pz_buf_reset(&enc);
            FUZZ_CHECK(kv_encode_txn(&enc, cmps, c.ncmp, s, c.nsucc, fl,
                                     c.nfail) == 0);
            FUZZ_CHECK(enc.len == len && memcmp(enc.data, cmd, len) == 0);
            free(cmps);
            free(s);
            free(fl);
            FUZZ_CHECK(kv_apply(b, (const uint8_t *)enc.data, enc.len, NULL) ==
                       0);
        } else {
            pz_buf_reset(&enc);
            int erc;
            switch (c.op) {
            case KV_OP_SET:
                erc = kv_encode_set(&enc, c.key, c.klen, c.value, c.vlen);
                break;
            case KV_OP_DEL:
                erc = kv_encode_del(&enc, c.key, c.klen);
                break;
            case KV_OP_SETL:
                erc = kv_encode_set_lease(&enc, c.key, c.klen, c.value, c.vlen,
                                          c.lease);
                break;
            case KV_OP_GRANT:
                erc = kv_encode_lease_grant(&enc, c.lease, c.ttl);
                break;
            case KV_OP_REVOKE:
                erc = kv_encode_lease_revoke(&enc, c.lease);
                break;
            default:
                erc = -1;
                FUZZ_CHECKF(0, "unknown op %d", c.op);
            }
            FUZZ_CHECK(erc == 0);
            struct kv_cmd c2;
            FUZZ_CHECK(kv_decode((const uint8_t *)enc.data, enc.len, &c2) == 0);
            /* a set with lease 0 is written as a plain set */
            int want = c.op == KV_OP_SETL && c.lease == 0 ? KV_OP_SET : c.op;
            FUZZ_CHECK(c2.op == want && c2.klen == c.klen && c2.vlen == c.vlen &&
                       c2.lease == c.lease && c2.ttl == c.ttl);
            FUZZ_CHECK(c.klen == 0 || memcmp(c2.key, c.key, c.klen) == 0);
            FUZZ_CHECK(c.vlen == 0 || memcmp(c2.value, c.value, c.vlen) == 0);
            struct kv_result rb;
            FUZZ_CHECK(kv_apply(b, (const uint8_t *)enc.data, enc.len, &rb) ==
                       0);
            FUZZ_CHECK(rb.status == res.status);
            if ((c.op == KV_OP_SET || c.op == KV_OP_SETL) &&
                res.status == KV_OK) {
                const uint8_t *v;
                size_t vlen;
                FUZZ_CHECK(kv_get(a, c.key, c.klen, &v, &vlen));
                FUZZ_CHECK(vlen == c.vlen &&
                           (vlen == 0 || memcmp(v, c.value, vlen) == 0));
            }
        }
        FUZZ_CHECK(kv_count(a) == kv_count(b) && kv_bytes(a) == kv_bytes(b));
        FUZZ_CHECK(kv_revision(a) == kv_revision(b));
        struct order o = {0};
        FUZZ_CHECK(kv_foreach_view(a, order_visit, &o) == 0);
        FUZZ_CHECK(o.n == kv_count(a));
        pz_free(o.last);
        FUZZ_CHECK(kv_digest(a) == kv_digest(b));
        FUZZ_CHECK(kv_digest(a) == kv_digest_compute(a));
        free(cmd);
    }
    pz_buf_free(&enc);
    kv_free(a);
    kv_free(b);
    return 0;
}
