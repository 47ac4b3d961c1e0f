/* raft_conf.c - Raft configurations (member sets) and their deterministic
 * encoding as the data of CONF log entries. Pure.
 *
 * A conf keeps its servers sorted by id, so the encoding of the same member
 * set is always the same bytes: every node of a static cluster that
 * bootstraps from the same member list writes an identical entry 1, which
 * the Log Matching Property needs (thesis §3.5).
 *
 * Failure modes: decode rejects truncated or malformed input with
 * PZ_ECORRUPT and leaves the output empty. */
#include <string.h>

#include "pz.h"
#include "raft.h"

#define CONF_VERSION 1         /* servers only */
#define CONF_VERSION_REMOVED 2 /* servers, then removals */
#define CONF_MAX_SERVERS 100000u /* sanity bound for decode */

void raft_conf_init(struct raft_conf *c)
{
    c->servers = NULL;
    c->n = 0;
    c->removed = NULL;
    c->n_removed = 0;
}

void raft_conf_free(struct raft_conf *c)
{
    for (size_t i = 0; i < c->n; i++)
        pz_free(c->servers[i].meta);
    pz_free(c->servers);
    for (size_t i = 0; i < c->n_removed; i++)
        pz_free(c->removed[i].meta);
    pz_free(c->removed);
    raft_conf_init(c);
}

void raft_conf_copy(struct raft_conf *dst, const struct raft_conf *src)
{
    if (dst == src)
        return;
    raft_conf_free(dst);
    if (src->n > 0) {
        dst->servers = pz_malloc(src->n * sizeof *dst->servers);
        for (size_t i = 0; i < src->n; i++) {
            dst->servers[i] = src->servers[i];
            dst->servers[i].meta =
                pz_strdup(src->servers[i].meta ? src->servers[i].meta : "");
        }
        dst->n = src->n;
    }
    if (src->n_removed > 0) {
        dst->removed = pz_malloc(src->n_removed * sizeof *dst->removed);
        for (size_t i = 0; i < src->n_removed; i++) {
            dst->removed[i] = src->removed[i];
            dst->removed[i].meta =
                pz_strdup(src->removed[i].meta ? src->removed[i].meta : "");
        }
        dst->n_removed = src->n_removed;
    }
}

void raft_conf_note_removed(struct raft_conf *c, uint64_t id, uint64_t index,
                            uint64_t term, const char *meta)
{
    /* Records at or above index cannot be true (a damaged entry): they
     * go, so that the order, and the encoding, stay canonical. */
    while (c->n_removed > 0 && c->removed[c->n_removed - 1].index >= index)
        pz_free(c->removed[--c->n_removed].meta);
    size_t drop = c->n_removed;
    for (size_t i = 0; i < c->n_removed; i++)
        if (c->removed[i].id == id)
            drop = i;
    if (drop == c->n_removed && c->n_removed == RAFT_CONF_MAX_REMOVED)
        drop = 0;
    if (drop < c->n_removed) {
        pz_free(c->removed[drop].meta);
        memmove(&c->removed[drop], &c->removed[drop + 1],
                (c->n_removed - drop - 1) * sizeof *c->removed);
        c->n_removed--;
    } else {
        c->removed = pz_realloc(c->removed,
                                (c->n_removed + 1) * sizeof *c->removed);
    }
    c->removed[c->n_removed++] = (struct raft_removed){
        .id = id,
        .index = index,
        .term = term,
        .meta = pz_strdup(meta ? meta : ""),
    };
}

const struct raft_removed *raft_conf_removed(const struct raft_conf *c,
                                             uint64_t id)
{
    for (size_t i = 0; i < c->n_removed; i++)
        if (c->removed[i].id == id)
            return &c->removed[i];
    return NULL;
}

/* Position of id, or where it would be inserted. */
static size_t conf_lower_bound(const struct raft_conf *c, uint64_t id)
{
    size_t lo = 0, hi = c->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->servers[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct raft_server *raft_conf_get(const struct raft_conf *c, uint64_t id)
{
    size_t i = conf_lower_bound(c, id);
    if (i < c->n && c->servers[i].id == id)
        return &c->servers[i];
    return NULL;
}

int raft_conf_add(struct raft_conf *c, uint64_t id, bool voter,
                  const char *meta)
{
    if (id == 0 || raft_conf_get(c, id) != NULL)
        return PZ_EINVAL;
    size_t i = conf_lower_bound(c, id);
    c->servers = pz_realloc(c->servers, (c->n + 1) * sizeof *c->servers);
    memmove(&c->servers[i + 1], &c->servers[i],
            (c->n - i) * sizeof *c->servers);
    c->servers[i].id = id;
    c->servers[i].voter = voter;
    c->servers[i].meta = pz_strdup(meta ? meta : "");
    c->n++;
    return 0;
}

int raft_conf_remove(struct raft_conf *c, uint64_t id)
{
    struct raft_server *s = raft_conf_get(c, id);
    if (s == NULL)
        return PZ_ENOTFOUND;
    size_t i = (size_t)(s - c->servers);
    pz_free(s->meta);
    memmove(&c->servers[i], &c->servers[i + 1],
            (c->n - i - 1) * sizeof *c->servers);
    c->n--;
    if (c->n == 0) {
        pz_free(c->servers);
        c->servers = NULL;
    }
    return 0;
}

size_t raft_conf_voters(const struct raft_conf *c)
{
    size_t v = 0;
    for (size_t i = 0; i < c->n; i++)
        v += c->servers[i].voter;
    return v;
}

void raft_conf_encode(const struct raft_conf *c, uint8_t **buf, size_t *len)
{
    /* Sort a private view by id: callers may have built servers[] by
     * hand in any order. Insertion sort: member sets are small. */
    const struct raft_server **v = pz_malloc((c->n ? c->n : 1) * sizeof *v);
    size_t total = 1 + 4;
    for (size_t i = 0; i < c->n; i++) {
        const struct raft_server *s = &c->servers[i];
        size_t j = i;
        while (j > 0 && v[j - 1]->id > s->id) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = s;
        total += 8 + 1 + 4 + (s->meta ? strlen(s->meta) : 0);
    }
    if (c->n_removed > 0)
        total += 4;
    for (size_t i = 0; i < c->n_removed; i++)
        total += 8 + 8 + 8 + 4 +
                 (c->removed[i].meta ? strlen(c->removed[i].meta) : 0);
    uint8_t *p = pz_malloc(total);
    size_t off = 0;
    p[off++] = c->n_removed > 0 ? CONF_VERSION_REMOVED : CONF_VERSION;
    pz_put_u32(p + off, (uint32_t)c->n);
    off += 4;
    for (size_t i = 0; i < c->n; i++) {
        size_t ml = v[i]->meta ? strlen(v[i]->meta) : 0;
        pz_put_u64(p + off, v[i]->id);
        off += 8;
        p[off++] = v[i]->voter ? 1 : 0;
        pz_put_u32(p + off, (uint32_t)ml);
        off += 4;
        if (ml)
            memcpy(p + off, v[i]->meta, ml);
        off += ml;
    }
    if (c->n_removed > 0) {
        pz_put_u32(p + off, (uint32_t)c->n_removed);
        off += 4;
    }
    for (size_t i = 0; i < c->n_removed; i++) {
        const struct raft_removed *rm = &c->removed[i];
        size_t ml = rm->meta ? strlen(rm->meta) : 0;
        pz_put_u64(p + off, rm->id);
        pz_put_u64(p + off + 8, rm->index);
        pz_put_u64(p + off + 16, rm->term);
        pz_put_u32(p + off + 24, (uint32_t)ml);
        off += 28;
        if (ml)
            memcpy(p + off, rm->meta, ml);
        off += ml;
    }
    pz_assert(off == total);
    pz_free(v);
    *buf = p;
    *len = total;
}

int raft_conf_decode(const uint8_t *buf, size_t len, struct raft_conf *out)
{
    raft_conf_init(out);
    if (buf == NULL || len < 5 ||
        (buf[0] != CONF_VERSION && buf[0] != CONF_VERSION_REMOVED))
        return PZ_ECORRUPT;
    uint32_t n = pz_get_u32(buf + 1);
    size_t off = 5;
    if (n > CONF_MAX_SERVERS || n > (len - off) / 13)
        return PZ_ECORRUPT;
    for (uint32_t i = 0; i < n; i++) {
        if (len - off < 13)
            goto corrupt;
        uint64_t id = pz_get_u64(buf + off);
        uint8_t voter = buf[off + 8];
        uint32_t ml = pz_get_u32(buf + off + 9);
        off += 13;
        if (voter > 1 || ml > len - off || memchr(buf + off, 0, ml))
            goto corrupt;
        char *meta = pz_strndup((const char *)buf + off, ml);
        off += ml;
        int rc = raft_conf_add(out, id, voter == 1, meta);
        pz_free(meta);
        if (rc != 0)
            goto corrupt;
    }
    if (buf[0] == CONF_VERSION_REMOVED) {
        /* Written only with removals, at most the maximum, by increasing
         * index and one per id, so that the encoding stays canonical. */
        if (len - off < 4)
            goto corrupt;
        uint32_t nr = pz_get_u32(buf + off);
        off += 4;
        if (nr == 0 || nr > RAFT_CONF_MAX_REMOVED || nr > (len - off) / 28)
            goto corrupt;
        out->removed = pz_calloc(nr, sizeof *out->removed);
        for (uint32_t i = 0; i < nr; i++) {
            if (len - off < 28)
                goto corrupt;
            struct raft_removed rm = {
                .id = pz_get_u64(buf + off),
                .index = pz_get_u64(buf + off + 8),
                .term = pz_get_u64(buf + off + 16),
            };
            uint32_t ml = pz_get_u32(buf + off + 24);
            off += 28;
            if (rm.id == 0 || rm.index == 0 || rm.index >= RAFT_LIMIT ||
                rm.term >= RAFT_LIMIT || ml > len - off ||
                memchr(buf + off, 0, ml) ||
                (i > 0 && rm.index <= out->removed[i - 1].index) ||
                raft_conf_removed(out, rm.id) != NULL)
                goto corrupt;
            rm.meta = pz_strndup((const char *)buf + off, ml);
            off += ml;
            out->removed[out->n_removed++] = rm;
        }
    }
    if (off != len)
        goto corrupt;
    return 0;
corrupt:
    raft_conf_free(out);
    return PZ_ECORRUPT;
}
