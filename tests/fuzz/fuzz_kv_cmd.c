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
 * bytes that decode to the same command; after every command both tables
 * hold the same keys, bytes and digest (kv_digest against a full
 * recomputation), and a key set reads back its value. */
#include "fuzz.h"

#include "kv.h"
#include "pz.h"

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
        int arc = kv_apply(a, cmd, len, &res);
        FUZZ_CHECKF(arc == drc, "decode %d, apply %d", drc, arc);
        if (drc != 0) {
            FUZZ_CHECK(kv_count(a) == keys && kv_bytes(a) == bytes &&
                       kv_digest(a) == dig);
            free(cmd);
            continue;
        }
        FUZZ_CHECK(c.op == KV_OP_SET || c.op == KV_OP_DEL);
        FUZZ_CHECK(res.op == c.op);
        pz_buf_reset(&enc);
        int erc = c.op == KV_OP_SET
                      ? kv_encode_set(&enc, c.key, c.klen, c.value, c.vlen)
                      : kv_encode_del(&enc, c.key, c.klen);
        FUZZ_CHECK(erc == 0);
        struct kv_cmd c2;
        FUZZ_CHECK(kv_decode((const uint8_t *)enc.data, enc.len, &c2) == 0);
        FUZZ_CHECK(c2.op == c.op && c2.klen == c.klen && c2.vlen == c.vlen);
        FUZZ_CHECK(c.klen == 0 || memcmp(c2.key, c.key, c.klen) == 0);
        FUZZ_CHECK(c.vlen == 0 || memcmp(c2.value, c.value, c.vlen) == 0);
        FUZZ_CHECK(kv_apply(b, (const uint8_t *)enc.data, enc.len, NULL) ==
                   0);
        if (c.op == KV_OP_SET) {
            const uint8_t *v;
            size_t vlen;
            FUZZ_CHECK(kv_get(a, c.key, c.klen, &v, &vlen));
            FUZZ_CHECK(vlen == c.vlen &&
                       (vlen == 0 || memcmp(v, c.value, vlen) == 0));
        }
        FUZZ_CHECK(kv_count(a) == kv_count(b) && kv_bytes(a) == kv_bytes(b));
        FUZZ_CHECK(kv_digest(a) == kv_digest(b));
        FUZZ_CHECK(kv_digest(a) == kv_digest_compute(a));
        free(cmd);
    }
    pz_buf_free(&enc);
    kv_free(a);
    kv_free(b);
    return 0;
}
