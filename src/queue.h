/* queue.h - intrusive circular doubly linked list (libuv and canonical/raft
 * style). Embed a `struct pz_queue` in the element; recover the element with
 * container_of(). An empty queue's head points to itself. Pure. */
#ifndef PZ_QUEUE_H
#define PZ_QUEUE_H

#include <stdbool.h>

struct pz_queue {
    struct pz_queue *next; /* next element, or head */
    struct pz_queue *prev; /* previous element, or head */
};

static inline void pz_queue_init(struct pz_queue *q)
{
    q->next = q;
    q->prev = q;
}
static inline bool pz_queue_empty(const struct pz_queue *q)
{
    return q->next == q;
}
/* Insert e at the tail of head. */
static inline void pz_queue_push(struct pz_queue *head, struct pz_queue *e)
{
    e->prev = head->prev;
    e->next = head;
    head->prev->next = e;
    head->prev = e;
}
/* Unlink e; safe to call twice (e then points to itself). */
static inline void pz_queue_remove(struct pz_queue *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->next = e;
    e->prev = e;
}
static inline struct pz_queue *pz_queue_head(const struct pz_queue *head)
{
    return head->next;
}
#define PZ_QUEUE_FOREACH(e, head)                                            \
    for ((e) = (head)->next; (e) != (head); (e) = (e)->next)

#endif
