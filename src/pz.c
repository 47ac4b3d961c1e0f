/* pz.c - allocation with an abort-on-OOM policy and a fault injector, the
 * cache of small blocks, the growable buffer, hashing, small parsing
 * helpers and the escaping of untrusted bytes for logs, the token
 * comparison, the PRNG seed and the rate limit of log lines. Pure, but for
 * pz_seed(). */
#include "pz.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

/* AddressSanitizer (gcc says so with __SANITIZE_ADDRESS__, clang with
 * __has_feature): the fifo and the cache poison what is not handed out. */
#if defined(__SANITIZE_ADDRESS__)
#define PZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PZ_ASAN 1
#endif
#endif
#ifdef PZ_ASAN
#include <sanitizer/asan_interface.h>
#define FIFO_REDZONE 16 /* poisoned after each buffer */
#else
#define ASAN_POISON_MEMORY_REGION(a, n) ((void)(a), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(a, n) ((void)(a), (void)(n))
#define FIFO_REDZONE 0
#endif

static long fail_countdown; /* 0: off; N: the Nth allocation fails */

void pz_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "pyazdb: assertion failed: %s (%s:%d)\n", expr, file,
            line);
    abort();
}

void pz_alloc_fail_at(long n)
{
    fail_countdown = n;
}

static bool should_fail(void)
{
    if (fail_countdown <= 0)
        return false;
    return --fail_countdown == 0;
}

static __attribute__((noreturn)) void oom(size_t n)
{
    fprintf(stderr, "pyazdb: out of memory allocating %zu bytes\n", n);
    abort();
}

void *pz_malloc_try(size_t n)
{
    if (should_fail())
        return NULL;
    return malloc(n ? n : 1);
}

void *pz_malloc(size_t n)
{
    void *p = should_fail() ? NULL : malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *pz_calloc(size_t n, size_t size)
{
    void *p = should_fail() ? NULL : calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom(n * size);
    return p;
}

void *pz_realloc(void *p, size_t n)
{
    void *q = should_fail() ? NULL : realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

void *pz_memdup(const void *p, size_t n)
{
    void *q = pz_malloc(n + 1);
    if (n)
        memcpy(q, p, n);
    ((char *)q)[n] = '\0';
    return q;
}

char *pz_strndup(const char *s, size_t n)
{
    return pz_memdup(s, n);
}

char *pz_strdup(const char *s)
{
    return pz_strndup(s, strlen(s));
}

void pz_free(void *p)
{
    free(p);
}

/* --- the small-block cache --------------------------------------------- */

/* Under AddressSanitizer a cached block is poisoned until it is handed
 * out again, so a use after pz_cache_free is still caught. */
#define CACHE_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define CACHE_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)

#define CACHE_MIN_SHIFT 6 /* 64 bytes */
#define CACHE_CLASSES 7   /* 64 .. 4096 */
#define CACHE_BIG 0xff    /* class of a block too large to cache */

/* 16 bytes, so the block after it keeps malloc's alignment. */
union cache_hdr {
    struct {
        union cache_hdr *next; /* in its free list */
        unsigned cls;          /* size class, or CACHE_BIG */
    } h;
    _Alignas(16) unsigned char size[16];
};
_Static_assert(sizeof(union cache_hdr) == 16, "cache header size");

static __thread union cache_hdr *cache_free[CACHE_CLASSES];
static __thread size_t cache_count[CACHE_CLASSES];

static unsigned cache_class(size_t n)
{
    if (n > ((size_t)1 << (CACHE_MIN_SHIFT + CACHE_CLASSES - 1)))
        return CACHE_BIG;
    unsigned c = 0;
    while (((size_t)1 << (CACHE_MIN_SHIFT + c)) < n)
        c++;
    return c;
}

static size_t cache_usable(unsigned cls)
{
    return (size_t)1 << (CACHE_MIN_SHIFT + cls);
}

void *pz_cache_alloc(size_t n)
{
    unsigned cls = cache_class(n);
    union cache_hdr *h;
    if (cls != CACHE_BIG && cache_free[cls]) {
        h = cache_free[cls];
        cache_free[cls] = h->h.next;
        cache_count[cls]--;
        CACHE_UNPOISON(h + 1, cache_usable(cls));
    } else {
        pz_assert(n <= SIZE_MAX - sizeof *h);
        h = pz_malloc(sizeof *h + (cls == CACHE_BIG ? n : cache_usable(cls)));
        h->h.cls = cls;
    }
    return h + 1;
}

void *pz_cache_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        oom(SIZE_MAX);
    void *p = pz_cache_alloc(n * size);
    memset(p, 0, n * size);
    return p;
}

void pz_cache_free(void *p)
{
    if (p == NULL)
        return;
    union cache_hdr *h = (union cache_hdr *)p - 1;
    unsigned cls = h->h.cls;
    pz_assert(cls == CACHE_BIG || cls < CACHE_CLASSES);
    if (cls == CACHE_BIG ||
        (cache_count[cls] + 1) * cache_usable(cls) > PZ_CACHE_CLASS_BYTES) {
        pz_free(h);
        return;
    }
    h->h.next = cache_free[cls];
    cache_free[cls] = h;
    cache_count[cls]++;
    CACHE_POISON(h + 1, cache_usable(cls));
}

void *pz_cache_realloc(void *p, size_t n)
{
    if (p == NULL)
        return pz_cache_alloc(n);
    union cache_hdr *h = (union cache_hdr *)p - 1;
    size_t have = h->h.cls == CACHE_BIG ? SIZE_MAX : cache_usable(h->h.cls);
    if (h->h.cls != CACHE_BIG && n <= have)
        return p;
    if (h->h.cls == CACHE_BIG && cache_class(n) == CACHE_BIG) {
        pz_assert(n <= SIZE_MAX - sizeof *h);
        h = pz_realloc(h, sizeof *h + n);
        return h + 1;
    }
    /* Between classes, or from a big block down to a class: copy. The
     * old block's size is unknown for a big one, but it is larger than
     * any class, so n bytes of it are there. */
    void *q = pz_cache_alloc(n);
    memcpy(q, p, h->h.cls == CACHE_BIG ? n : PZ_MIN(have, n));
    pz_cache_free(p);
    return q;
}

void pz_cache_trim(void)
{
    for (unsigned c = 0; c < CACHE_CLASSES; c++) {
        while (cache_free[c]) {
            union cache_hdr *h = cache_free[c];
            cache_free[c] = h->h.next;
            CACHE_UNPOISON(h + 1, cache_usable(c));
            pz_free(h);
        }
        cache_count[c] = 0;
    }
}

/* --- fifo memory ---------------------------------------------------------- */

#define FIFO_CHUNK ((size_t)1 << 20)
#define FIFO_BIG ((size_t)64 << 10) /* larger buffers: from malloc */

enum { FIFO_FREED = 0x5a0, FIFO_IN_CHUNK, FIFO_MALLOC };

struct fifo_chunk {
    size_t live; /* buffers not yet freed */
    size_t used; /* bytes cut from the chunk, this header included */
    bool open;   /* still its fifo's chunk: rewound, not unmapped, when empty */
};
#define FIFO_CHUNK_HDR ((sizeof(struct fifo_chunk) + 15) & ~(size_t)15)

struct fifo_hdr { /* before each buffer; 16 bytes keep buffers aligned */
    uint32_t off;  /* FIFO_IN_CHUNK: from the chunk's start */
    uint32_t kind; /* FIFO_* */
    uint64_t size; /* the buffer's bytes */
};

static size_t fifo_mapped_bytes;

/* NULL when the kernel refuses (out of memory, or of mappings:
 * vm.max_map_count): the caller falls back to malloc. */
static void *fifo_map(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* Not in a forked child (the snapshot writer walks the table, never
     * the log or the watch history): pages a fork shares are write-
     * protected in the parent until each is written again, one page
     * fault apiece, and the log's chunks are the ones it writes most.
     * Without it (an old kernel) only that cost comes back. */
    (void)madvise(p, len, MADV_DONTFORK);
    __atomic_add_fetch(&fifo_mapped_bytes, len, __ATOMIC_RELAXED);
    return p;
}

static void fifo_unmap(void *p, size_t len)
{
    /* AddressSanitizer keeps poisoning past munmap: a later mapping at
     * the same address would start poisoned. */
    ASAN_UNPOISON_MEMORY_REGION(p, len);
    if (munmap(p, len) == 0) /* else still mapped, and still counted */
        __atomic_sub_fetch(&fifo_mapped_bytes, len, __ATOMIC_RELAXED);
}

/* Chunks whose buffers are all freed, kept mapped for the next chunk a
 * fifo needs: under a steady load the Raft log and the watch history free
 * a chunk about as often as they start one, and a fresh mapping costs a
 * page fault (and the zeroing of a page) for every 4 KiB written into it,
 * some 20% of a follower's CPU time before chunks were kept. At most
 * FIFO_SPARES are kept (their pages stay resident and count in
 * pz_fifo_mapped); pz_fifo_trim unmaps them. Slots are swapped
 * atomically: a buffer may be freed on another thread than its fifo's. */
#define FIFO_SPARES 2
static struct fifo_chunk *fifo_spare[FIFO_SPARES];

static struct fifo_chunk *spare_take(void)
{
    for (size_t i = 0; i < FIFO_SPARES; i++) {
        if (__atomic_load_n(&fifo_spare[i], __ATOMIC_RELAXED) == NULL)
            continue;
        struct fifo_chunk *c =
            __atomic_exchange_n(&fifo_spare[i], NULL, __ATOMIC_ACQ_REL);
        if (c != NULL)
            return c;
    }
    return NULL;
}

/* A chunk with no live buffer: kept as a spare if a slot is free, else
 * unmapped. */
static void chunk_release(struct fifo_chunk *c)
{
    ASAN_POISON_MEMORY_REGION(c, FIFO_CHUNK);
    for (size_t i = 0; i < FIFO_SPARES; i++) {
        struct fifo_chunk *none = NULL;
        if (__atomic_compare_exchange_n(&fifo_spare[i], &none, c, false,
                                        __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            return;
    }
    fifo_unmap(c, FIFO_CHUNK);
}

void pz_fifo_trim(void)
{
    for (size_t i = 0; i < FIFO_SPARES; i++) {
        struct fifo_chunk *c =
            __atomic_exchange_n(&fifo_spare[i], NULL, __ATOMIC_ACQ_REL);
        if (c != NULL)
            fifo_unmap(c, FIFO_CHUNK);
    }
}

/* ---- Warming the heap (pz.h) ---- */

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older headers lack it */
#endif
/* Blocks under malloc's default mmap threshold (128 KiB), so that they
 * come from the heap, end to end, and coalesce when freed. pz_warm_begin
 * checks that they did: glibc reports WARM_BLOCK + 8 usable bytes for a
 * heap block of that size (a lower threshold, which maps blocks, another
 * allocator or valgrind's report another size, and turn warming off). */
#define WARM_BLOCK ((size_t)60 << 10)
#define WARM_CHUNK (WARM_BLOCK + 16) /* from one block to the next */
#define WARM_STEP ((size_t)1 << 20)  /* mapped in per call */
#define WARM_AHEAD ((size_t)64 << 20) /* ahead of the load, at most */
#define WARM_PROBE 4096 /* pz_warm_allow's look at where malloc carves */

size_t pz_warm_min = PZ_WARM_MIN;
static uint64_t warm_started;

uint64_t pz_warm_count(void)
{
    return __atomic_load_n(&warm_started, __ATOMIC_RELAXED);
}

#if defined(__GLIBC__) && !defined(PZ_ASAN)
#define WARM_ON 1
#else
#define WARM_ON 0
#endif

bool pz_warm_built(void)
{
    return WARM_ON;
}

#if WARM_ON
static size_t page_size(void)
{
    long pg = sysconf(_SC_PAGESIZE);
    return pg > 0 ? (size_t)pg : 4096;
}

/* The run the load allocates from now (the one holding its last hint,
 * unless mapped WARM_AHEAD past the hint or to its end), else the first
 * not mapped to its end; w->nruns when every run is. */
static size_t warm_next(struct pz_warm *w, size_t page)
{
    uintptr_t h = __atomic_load_n(&w->hint, __ATOMIC_RELAXED);
    for (size_t i = 0; h && i < w->nruns; i++) {
        char *lo = w->runs[2 * i], *end = w->runs[2 * i + 1];
        if (h < (uintptr_t)lo || h >= (uintptr_t)end)
            continue;
        char *hp = (char *)(h & ~(uintptr_t)(page - 1));
        if (w->at[i] < hp)
            w->at[i] = hp; /* the load is past these: not worth it now */
        if (w->at[i] < end && w->at[i] < hp + WARM_AHEAD)
            return i;
        break;
    }
    for (size_t i = 0; i < w->nruns; i++)
        if (w->at[i] < (char *)w->runs[2 * i + 1])
            return i;
    return w->nruns;
}

/* Maps the runs in, 1 MiB at a time, no more than WARM_AHEAD past what
 * the load said it used (pz_warm_allow), then reads a byte of each page
 * of that MiB: where the hypervisor keeps shadow page tables (as on the
 * virtual machine we measured), the first access to a page the kernel
 * mapped in still exits to the hypervisor, and reading it here takes that
 * cost off the load too (10M keys: 4.7-5.7 s to load with the pages
 * mapped in, 2.7-3.5 s with them read as well). The load may be writing
 * the same byte at that moment. In C11 terms that is a data race (which
 * ThreadSanitizer would report); the read is volatile and its value
 * unused, and on the hardware (x86-64, arm64) it sees the old value or
 * the new one, nothing else. The run it maps first is the one the load
 * is in (warm_next): malloc does not hand the runs out in the order they
 * were carved (it takes the smallest free piece that fits: in a thread
 * arena, one of several nearly equal 64 MiB heaps), and a thread that
 * mapped them in order mapped the wrong one about as often as not. */
static void *warm_main(void *arg)
{
    struct pz_warm *w = arg;
    size_t page = page_size(), done = 0, i;
    while (!__atomic_load_n(&w->stop, __ATOMIC_RELAXED)) {
        if ((i = warm_next(w, page)) == w->nruns) {
            __atomic_store_n(&w->finished, 1, __ATOMIC_RELAXED);
            break;
        }
        char *p = w->at[i];
        size_t n = PZ_MIN((size_t)((char *)w->runs[2 * i + 1] - p), WARM_STEP);
        if (done + n > __atomic_load_n(&w->allowed, __ATOMIC_RELAXED)) {
            struct timespec ts = {0, 500 * 1000};
            nanosleep(&ts, NULL); /* the load is 64 MiB behind */
            continue;
        }
        if (madvise(p, n, MADV_POPULATE_WRITE) != 0) {
            /* EINVAL: a kernel without it. The load faults. */
            __atomic_store_n(&w->err, errno, __ATOMIC_RELAXED);
            return NULL;
        }
        for (size_t off = 0; off < n; off += page)
            (void)*(volatile const char *)(p + off);
        w->at[i] = p + n;
        done += n;
        __atomic_store_n(&w->mapped, done, __ATOMIC_RELAXED);
    }
    return NULL;
}
#endif

void pz_warm_begin(struct pz_warm *w, size_t bytes)
{
    memset(w, 0, sizeof *w);
#if WARM_ON
    if (bytes < pz_warm_min)
        return;
    size_t n = bytes / WARM_BLOCK + 1;
    void **b = malloc(n * sizeof *b);
    void **runs = malloc(2 * n * sizeof *runs);
    void **fences = malloc(n * sizeof *fences);
    size_t got = 0;
    bool heap = true;
    while (b && runs && fences && got < n &&
           (b[got] = malloc(WARM_BLOCK)) != NULL) {
        if (malloc_usable_size(b[got++]) != WARM_BLOCK + 8) {
            heap = false;
            break;
        }
    }
    /* Runs of blocks that lie end to end. The last block of each stays
     * allocated until pz_warm_end (its fence), and the pages before it are
     * the run's to map in. malloc gives memory back to the system only
     * from the top of a heap (the main arena's, by sbrk; a thread arena's
     * heaps, by shrinking or unmapping the last one), and a free block
     * below a block in use is never part of that top: the run's pages stay
     * mapped, in any arena, whatever else the process frees meanwhile
     * (malloc_trim may empty them with MADV_DONTNEED: still mapped). */
    for (size_t i = 0, first = 0; heap && i < got; i++) {
        if (i + 1 < got && (uintptr_t)b[i + 1] == (uintptr_t)b[i] + WARM_CHUNK)
            continue;
        if (i > first) { /* blocks first..i, i the fence */
            uintptr_t mask = (uintptr_t)page_size() - 1;
            uintptr_t lo = ((uintptr_t)b[first] + mask) & ~mask;
            uintptr_t hi = (uintptr_t)b[i] & ~mask;
            fences[w->nfences++] = b[i];
            b[i] = NULL;
            if (hi > lo) {
                runs[2 * w->nruns] = (void *)lo;
                runs[2 * w->nruns + 1] = (void *)hi;
                w->nruns++;
            }
        }
        first = i + 1;
    }
    for (size_t i = 0; i < got; i++)
        free(b[i]);
    free(b);
    w->fences = fences;
    w->runs = runs;
    w->at = heap && w->nruns ? malloc(w->nruns * sizeof *w->at) : NULL;
    if (w->at == NULL) {
        pz_warm_end(w);
        return;
    }
    for (size_t i = 0; i < w->nruns; i++)
        w->at[i] = w->runs[2 * i];
    w->allowed = WARM_AHEAD;
    /* No signal for the thread: the process's handlers run elsewhere. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    w->started = pthread_create(&w->th, NULL, warm_main, w) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (w->started)
        __atomic_add_fetch(&warm_started, 1, __ATOMIC_RELAXED);
#else
    PZ_UNUSED(bytes);
#endif
}

void pz_warm_allow(struct pz_warm *w, size_t used)
{
    if (!w->started)
        return;
    __atomic_store_n(&w->allowed, used + WARM_AHEAD, __ATOMIC_RELAXED);
#if WARM_ON
    /* Where malloc carves the load's blocks from now: a block above its
     * per-thread caches and small bins comes from the smallest free
     * piece that fits, the one the load is cutting, at its front; freed,
     * it joins that piece again. */
    void *p = malloc(WARM_PROBE);
    if (p != NULL) {
        __atomic_store_n(&w->hint, (uintptr_t)p, __ATOMIC_RELAXED);
        free(p);
    }
#endif
}

void pz_warm_end(struct pz_warm *w)
{
    bool was = w->started;
    if (w->started) {
        __atomic_store_n(&w->stop, 1, __ATOMIC_RELAXED);
        pthread_join(w->th, NULL);
        w->started = false;
    }
    for (size_t i = 0; i < w->nfences; i++)
        free(w->fences[i]);
    free(w->fences);
    w->fences = NULL;
    w->nfences = 0;
    free(w->runs);
    w->runs = NULL;
    w->nruns = 0;
    free(w->at);
    w->at = NULL;
#ifdef __GLIBC__
    /* What the load left of the warmed runs joined the top with the
     * fences; malloc gives the top back only past its trim threshold,
     * which grows to 64 MiB after large blocks were freed. Only on the
     * main thread: malloc_trim walks every arena, the event loop's too,
     * holding each one's lock (14 to 25 ms with 1M to 2M keys in it), and
     * a load on the thread pool runs while the loop serves. There, what
     * the load left (64 MiB at most) stays in the thread's arena for its
     * next use. */
    if (was && gettid() == getpid())
        malloc_trim(0);
#else
    PZ_UNUSED(was);
#endif
}

static void chunk_close(struct fifo_chunk *c)
{
    c->open = false;
    if (c->live == 0)
        chunk_release(c);
}

void *pz_fifo_alloc(struct pz_fifo *f, size_t n)
{
    struct fifo_hdr *h = NULL;
    size_t need = sizeof *h + ((n + 15) & ~(size_t)15) + FIFO_REDZONE;
    if (f != NULL && need <= FIFO_BIG) {
        struct fifo_chunk *c = f->cur;
        if (c == NULL || c->used + need > FIFO_CHUNK) {
            if (c != NULL)
                chunk_close(c);
            c = spare_take();
            if (c != NULL)
                ASAN_UNPOISON_MEMORY_REGION(c, FIFO_CHUNK_HDR);
            else
                c = fifo_map(FIFO_CHUNK);
            f->cur = c;
            if (c != NULL) {
                c->live = 0;
                c->used = FIFO_CHUNK_HDR;
                c->open = true;
                ASAN_POISON_MEMORY_REGION((char *)c + FIFO_CHUNK_HDR,
                                          FIFO_CHUNK - FIFO_CHUNK_HDR);
            }
        }
        if (c != NULL) {
            h = (struct fifo_hdr *)((char *)c + c->used);
            ASAN_UNPOISON_MEMORY_REGION(h, sizeof *h + n);
            h->off = (uint32_t)c->used;
            h->kind = FIFO_IN_CHUNK;
            h->size = n;
            c->used += need;
            c->live++;
            return h + 1;
        }
    }
    /* Long-lived, large (holes as large as these are filled again), or
     * no mapping to be had. */
    h = pz_malloc(sizeof *h + n);
    h->kind = FIFO_MALLOC;
    h->size = n;
    return h + 1;
}

void pz_fifo_free(void *p)
{
    if (p == NULL)
        return;
    struct fifo_hdr *h = (struct fifo_hdr *)p - 1;
    switch (h->kind) {
    case FIFO_MALLOC:
        h->kind = FIFO_FREED;
        free(h);
        return;
    case FIFO_IN_CHUNK:
        break;
    default:
        pz_assert(!"pz_fifo_free: not a live fifo buffer");
    }
    struct fifo_chunk *c = (struct fifo_chunk *)((char *)h - h->off);
    pz_assert(c->live > 0);
    h->kind = FIFO_FREED;
    ASAN_POISON_MEMORY_REGION(h, sizeof *h + h->size);
    if (--c->live > 0)
        return;
    if (c->open)
        c->used = FIFO_CHUNK_HDR; /* all freed: cut from the start again */
    else
        chunk_release(c);
}

void pz_fifo_close(struct pz_fifo *f)
{
    if (f->cur != NULL)
        chunk_close(f->cur);
    f->cur = NULL;
}

size_t pz_fifo_mapped(void)
{
    return __atomic_load_n(&fifo_mapped_bytes, __ATOMIC_RELAXED);
}

const char *pz_strerror(int code)
{
    switch (code) {
    case 0:
        return "ok";
#define PZ_ERR_CASE(name, c, msg)                                            \
    case name:                                                               \
        return msg;
        PZ_ERRORS(PZ_ERR_CASE)
#undef PZ_ERR_CASE
    default:
        return code < 0 ? strerror(-code) : "unknown error";
    }
}

void pz_buf_init(struct pz_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void pz_buf_free(struct pz_buf *b)
{
    pz_free(b->data);
    pz_buf_init(b);
}

void pz_buf_grow(struct pz_buf *b, size_t extra)
{
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = pz_realloc(b->data, cap);
    b->cap = cap;
    b->data[b->len] = '\0'; /* a first allocation is a string at once */
}

void pz_buf_appendf(struct pz_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    pz_assert(n >= 0);
    pz_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void pz_buf_consume(struct pz_buf *b, size_t n)
{
    pz_assert(n <= b->len);
    if (n == b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void pz_buf_reset(struct pz_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void pz_buf_trim(struct pz_buf *b, size_t keep)
{
    if (b->cap > keep)
        pz_buf_free(b);
    else
        pz_buf_reset(b);
}

int pz_split_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL)
        return PZ_EINVAL;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') { /* [::1]:80 */
        h++;
        hl -= 2;
    }
    if (hl >= hostlen)
        return PZ_EINVAL;
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno || p < 0 || p > 65535)
        return PZ_EINVAL;
    if (hl == 0) {
        snprintf(host, hostlen, "0.0.0.0");
    } else {
        memcpy(host, h, hl);
        host[hl] = '\0';
    }
    *port = (int)p;
    return 0;
}

char *pz_escape(char *dst, size_t dstlen, const void *src, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = src;
    size_t o = 0, cut = 0, cap;
    pz_assert(dstlen >= 4);
    cap = dstlen - 1; /* characters, without the NUL */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = s[i];
        char e[4];
        size_t el = 2;
        e[0] = '\\';
        switch (ch) {
        case '\\':
        case '"':
            e[1] = (char)ch;
            break;
        case '\n':
            e[1] = 'n';
            break;
        case '\r':
            e[1] = 'r';
            break;
        case '\t':
            e[1] = 't';
            break;
        default:
            if (ch >= 0x20 && ch < 0x7f) {
                e[0] = (char)ch;
                el = 1;
            } else {
                e[1] = 'x';
                e[2] = hex[ch >> 4];
                e[3] = hex[ch & 15];
                el = 4;
            }
        }
        if (o + el > cap) {
            /* Cut at the last boundary that leaves room for "...". */
            memcpy(dst + cut, "...", 3);
            dst[cut + 3] = '\0';
            return dst;
        }
        memcpy(dst + o, e, el);
        o += el;
        if (o + 3 <= cap)
            cut = o;
    }
    dst[o] = '\0';
    return dst;
}

static inline uint64_t mix(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* n bytes (fewer than 8: the tail) as a little-endian number. */
static inline uint64_t read_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* 8 bytes as a little-endian number, in one load (a byte loop cost some
 * 30 instructions a word, which made hashing most of a snapshot load's
 * work): the same value on any host. */
static inline uint64_t read_le8(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

uint64_t pz_hash(const void *data, size_t n, uint64_t seed)
{
    const uint8_t *p = data;
    const uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull;
    uint64_t h = seed ^ mix(seed ^ k0, k1) ^ n;
    while (n >= 8) {
        h = mix(h ^ read_le8(p), k1);
        p += 8;
        n -= 8;
    }
    if (n)
        h = mix(h ^ read_le(p, n), k0);
    return mix(h, h ^ k1);
}

bool pz_token_equal(const char *want, size_t wlen, const char *got,
                    size_t glen)
{
    pz_assert(wlen > 0);
    /* One pass over the presented token: every byte is compared, with
     * the expected token repeated where it is shorter; the lengths go
     * into the result, not into the control flow. */
    volatile unsigned char diff = (unsigned char)(wlen != glen);
    size_t j = 0;
    for (size_t i = 0; i < glen; i++) {
        diff |= (unsigned char)((unsigned char)got[i] ^
                                (unsigned char)want[j]);
        j++;
        j &= (size_t)0 - (size_t)(j < wlen); /* j = j < wlen ? j : 0 */
    }
    return diff == 0;
}

size_t pz_utf8_decode(const void *s, size_t n, uint32_t *cp)
{
    static const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000}; /* by len */
    const unsigned char *u = s;
    unsigned char c = u[0];
    if (c < 0x80) {
        if (cp)
            *cp = c;
        return 1;
    }
    size_t len = c < 0xc0 ? 0 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : c < 0xf8 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    uint32_t v = c & (0x7fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((u[i] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (u[i] & 0x3f);
    }
    if (v < least[len] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    if (cp)
        *cp = v;
    return len;
}

bool pz_utf8_valid(const void *s, size_t n)
{
    const unsigned char *u = s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++; /* ASCII, the common case, without the call */
            continue;
        }
        size_t len = pz_utf8_decode(u + i, n - i, NULL);
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

bool pz_cp_disguises_text(uint32_t cp)
{
    return cp == 0x061c || cp == 0x200e || cp == 0x200f || cp == 0x2028 ||
           cp == 0x2029 || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

/* A regular file, or /dev/null (which reads as empty). */
static bool regular_or_null(const struct stat *st)
{
    return S_ISREG(st->st_mode) ||
           (S_ISCHR(st->st_mode) && st->st_rdev == makedev(1, 3));
}

int pz_fsync_path(const char *path, bool dir)
{
    int fd = open(path, (dir ? O_DIRECTORY : 0) | O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* pz_open_regular with the open flags given (O_RDONLY, or O_WRONLY with
 * O_APPEND and O_CREAT: a file made here gets mode 0666 less the umask,
 * as fopen would give it). */
static int open_regular(const char *path, int flags)
{
    /* Looked at before it is opened, so that a device or a FIFO is not
     * even opened (opening a terminal or a watchdog acts on it, opening a
     * FIFO wakes its writer); checked again once open, in case it was
     * swapped meanwhile. */
    struct stat st;
    if (stat(path, &st) == 0 && !regular_or_null(&st))
        return PZ_EINVAL;
    int fd = open(path, flags | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0666);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (fstat(fd, &st) < 0)
        rc = -errno;
    else if (!regular_or_null(&st))
        rc = PZ_EINVAL;
    else if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
        rc = -errno;
    if (rc) {
        close(fd);
        return rc;
    }
    return fd;
}

int pz_open_regular(const char *path)
{
    return open_regular(path, O_RDONLY);
}

int pz_open_regular_append(const char *path)
{
    return open_regular(path, O_WRONLY | O_APPEND | O_CREAT);
}

FILE *pz_fopen_regular(const char *path, const char **why)
{
    int fd = pz_open_regular(path);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "rb");
    if (f == NULL) {
        int e = fd < 0 ? fd : -errno;
        if (fd >= 0)
            close(fd);
        *why = e == PZ_EINVAL ? "not a regular file" : strerror(-e);
    }
    return f;
}

uint64_t pz_seed(void)
{
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed)
        return seed;
    /* No entropy yet (early boot) or no getrandom: the clocks, mixed so
     * that processes started together still differ in every bit. */
    struct timespec mono, wall;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &wall);
    uint64_t a = (uint64_t)mono.tv_sec * 1000000000u + (uint64_t)mono.tv_nsec;
    uint64_t b = (uint64_t)wall.tv_sec * 1000000000u + (uint64_t)wall.tv_nsec;
    seed = a ^ (b << 1);
    return pz_rand_next(&seed);
}

bool pz_ratelimit(struct pz_ratelimit *l, uint64_t now, uint64_t window_ms,
                  unsigned burst, unsigned *dropped)
{
    *dropped = 0;
    if (now < l->start || now - l->start >= window_ms) {
        l->start = now;
        l->used = 0;
    }
    if (l->used >= burst) {
        l->dropped++;
        return false;
    }
    l->used++;
    *dropped = l->dropped;
    l->dropped = 0;
    return true;
}

/* --- CRC-32C --------------------------------------------------------------- */

static uint32_t crc32c_table[8][256];
static bool crc32c_ready;

static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc32c_table[t][i] = (crc32c_table[t - 1][i] >> 8) ^
                                 crc32c_table[0][crc32c_table[t - 1][i] & 0xff];
    crc32c_ready = true;
}

uint32_t pz_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    if (!crc32c_ready)
        crc32c_init();
    const uint8_t *p = data;
    uint32_t c = ~crc;
    while (len >= 8) { /* slicing by 8 */
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                           (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        c = crc32c_table[7][lo & 0xff] ^ crc32c_table[6][(lo >> 8) & 0xff] ^
            crc32c_table[5][(lo >> 16) & 0xff] ^ crc32c_table[4][lo >> 24] ^
            crc32c_table[3][p[4]] ^ crc32c_table[2][p[5]] ^
            crc32c_table[1][p[6]] ^ crc32c_table[0][p[7]];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = (c >> 8) ^ crc32c_table[0][(c ^ *p++) & 0xff];
    return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc32c_hw(uint32_t crc, const uint8_t *p, size_t len)
{
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t pz_crc32c(uint32_t crc, const void *data, size_t len)
{
#if defined(__x86_64__)
    static int hw = -1;
    if (hw < 0)
        hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    if (hw)
        return crc32c_hw(crc, data, len);
#endif
    return pz_crc32c_sw(crc, data, len);
}
