/* turns.c - streams that take turns writing in the loop's idle phase
 * (turns.h). */
#include "turns.h"

#include "pz.h"

static void on_idle(uv_idle_t *h)
{
    struct turns *t = h->data;
    t->left = t->per_turn;
    while (t->left > 0 && !pz_queue_empty(&t->ready)) {
        struct turn_item *it =
            container_of(pz_queue_head(&t->ready), struct turn_item, q);
        pz_queue_remove(&it->q);
        it->ready = false;
        it->starved = false;
        t->run(it); /* may free it, or mark it again */
    }
    t->left = SIZE_MAX;
    if (pz_queue_empty(&t->ready))
        uv_idle_stop(h);
}

void turns_init(struct turns *t, uv_loop_t *loop, size_t per_turn,
                void (*run)(struct turn_item *it))
{
    t->per_turn = per_turn;
    t->run = run;
    if (t->inited)
        return;
    pz_queue_init(&t->ready);
    uv_idle_init(loop, &t->idle);
    t->idle.data = t;
    /* The pass alone keeps no loop alive. */
    uv_unref((uv_handle_t *)&t->idle);
    t->left = SIZE_MAX;
    t->inited = true;
}

void turns_close(struct turns *t)
{
    if (!t->inited)
        return;
    t->inited = false;
    uv_close((uv_handle_t *)&t->idle, NULL);
}

void turns_mark(struct turns *t, struct turn_item *it)
{
    if (it->ready || !t->inited)
        return;
    it->ready = true;
    pz_queue_push(&t->ready, &it->q);
    uv_idle_start(&t->idle, on_idle);
}

void turns_starve(struct turns *t, struct turn_item *it)
{
    turns_mark(t, it);
    it->starved = true;
}

void turns_forget(struct turn_item *it)
{
    if (it->ready)
        pz_queue_remove(&it->q);
    it->ready = false;
}

void turns_spend(struct turns *t, size_t n)
{
    if (t->left != SIZE_MAX)
        t->left -= PZ_MIN(n, t->left);
}
