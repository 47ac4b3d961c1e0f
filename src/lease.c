/* lease.c - the leader's lease deadlines (lease.h). Pure.
 *
 * A sorted array of records: lookups by binary search, inserts and
 * removals move the tail (leases are few: lease-max-count), the expiry
 * scan walks all of them once per tick. */
#include "lease.h"

#include <string.h>

#include "pz.h"

void lease_tracker_init(struct lease_tracker *t)
{
    memset(t, 0, sizeof *t);
}

void lease_tracker_free(struct lease_tracker *t)
{
    pz_free(t->v);
    memset(t, 0, sizeof *t);
}

void lease_tracker_clear(struct lease_tracker *t)
{
    lease_tracker_free(t);
}

static size_t pos_of(const struct lease_tracker *t, uint64_t id)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->v[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct lease_dl *find(const struct lease_tracker *t, uint64_t id)
{
    size_t i = pos_of(t, id);
    return i < t->n && t->v[i].id == id ? &t->v[i] : NULL;
}

void lease_track(struct lease_tracker *t, uint64_t id, uint64_t ttl_s,
                 uint64_t now)
{
    struct lease_dl *d = find(t, id);
    if (d == NULL) {
        size_t i = pos_of(t, id);
        if (t->n == t->cap) {
            t->cap = t->cap ? t->cap * 2 : 16;
            t->v = pz_realloc(t->v, t->cap * sizeof(*t->v));
        }
        memmove(t->v + i + 1, t->v + i, (t->n - i) * sizeof(*t->v));
        t->n++;
        d = &t->v[i];
        d->id = id;
    }
    d->ttl_ms = ttl_s * 1000;
    d->deadline = now + d->ttl_ms;
    d->revoke_at = 0;
}

void lease_untrack(struct lease_tracker *t, uint64_t id)
{
    size_t i = pos_of(t, id);
    if (i >= t->n || t->v[i].id != id)
        return;
    memmove(t->v + i, t->v + i + 1, (t->n - i - 1) * sizeof(*t->v));
    t->n--;
    if (t->n == 0)
        lease_tracker_free(t);
}

enum lease_ka lease_keepalive(struct lease_tracker *t, uint64_t id,
                              uint64_t now)
{
    struct lease_dl *d = find(t, id);
    if (d == NULL)
        return LEASE_KA_UNTRACKED;
    /* A revoke proposed (or about to be, at the next scan) applies whatever
     * we answer now; even after lease_retry it is proposed again. */
    if (d->revoke_at || now >= d->deadline)
        return LEASE_KA_EXPIRED;
    if (now + d->ttl_ms > d->deadline)
        d->deadline = now + d->ttl_ms; /* never shorten */
    return LEASE_KA_RENEWED;
}

void lease_reset_all(struct lease_tracker *t, uint64_t now)
{
    for (size_t i = 0; i < t->n; i++) {
        t->v[i].deadline = now + t->v[i].ttl_ms;
        t->v[i].revoke_at = 0;
    }
}

bool lease_remaining(const struct lease_tracker *t, uint64_t id, uint64_t now,
                     uint64_t *ms)
{
    const struct lease_dl *d = find(t, id);
    if (d == NULL)
        return false;
    *ms = d->deadline > now ? d->deadline - now : 0;
    return true;
}

size_t lease_expired(struct lease_tracker *t, uint64_t now, uint64_t *ids,
                     size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n && n < max; i++) {
        struct lease_dl *d = &t->v[i];
        if (now < d->deadline)
            continue;
        if (d->revoke_at && now < d->revoke_at + LEASE_RETRY_MS)
            continue;
        d->revoke_at = now ? now : 1;
        ids[n++] = d->id;
    }
    return n;
}

void lease_retry(struct lease_tracker *t, uint64_t id)
{
    struct lease_dl *d = find(t, id);
    if (d)
        d->revoke_at = 0;
}
