/* turns.h - streams that take turns writing in the loop's idle phase.
 *
 * One event can owe output to many streams: a commit that every watch
 * matches, say, with a revision of megabytes. Written from inside that
 * event, it would hold the loop for as long as all of it takes to encode.
 * Instead each stream is marked ready (turns_mark) and an idle pass, once
 * a loop turn, runs the ready streams in order of marking until they
 * have written `per_turn` bytes in all; each says what it wrote with
 * turns_spend. A stream stopped by that budget rather than by its client
 * marks itself again with turns_starve; `starved` tells a slow-client
 * check that the wait is not the client's doing. Outside the pass
 * turns_left is SIZE_MAX: what a stream writes then (a client draining
 * its connection, say) is bounded by the stream's own limits alone. */
#ifndef PZ_TURNS_H
#define PZ_TURNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "queue.h"

struct turn_item {
    struct pz_queue q; /* in the ready queue, while ready */
    bool ready;        /* marked, not yet run */
    bool starved;      /* marked again for want of the pass's budget */
};

struct turns {
    struct pz_queue ready; /* marked items, oldest first */
    uv_idle_t idle;        /* the pass; runs while items are ready */
    size_t per_turn;       /* bytes the pass may write a loop turn */
    size_t left;           /* ... still, or SIZE_MAX outside the pass */
    void (*run)(struct turn_item *it); /* writes for it; may free it */
    bool inited;
};

/* Idempotent apart from per_turn and run, which it sets each time. */
void turns_init(struct turns *t, uv_loop_t *loop, size_t per_turn,
                void (*run)(struct turn_item *it));
/* Closes the idle handle (at shutdown); turns_init starts over. */
void turns_close(struct turns *t);
/* it has something to write: run in the next pass (once). */
void turns_mark(struct turns *t, struct turn_item *it);
/* it stopped for want of the pass's budget: run in the next pass. */
void turns_starve(struct turns *t, struct turn_item *it);
/* Before it is freed: out of the ready queue. */
void turns_forget(struct turn_item *it);
/* n bytes were written in the pass (nothing outside it). */
void turns_spend(struct turns *t, size_t n);

static inline void turn_item_init(struct turn_item *it)
{
    pz_queue_init(&it->q);
    it->ready = false;
    it->starved = false;
}

static inline bool turns_in_pass(const struct turns *t)
{
    return t->left != SIZE_MAX;
}

/* Bytes the pass may still write, SIZE_MAX outside it. */
static inline size_t turns_left(const struct turns *t)
{
    return t->left;
}

#endif
