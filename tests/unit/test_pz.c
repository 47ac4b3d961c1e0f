/* test_pz.c - allocation fault injector, the small-block cache, buffers,
 * host:port parsing, the token comparison, the PRNG seed, the rate limit
 * of log lines. */
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pz.h"
#include "queue.h"
#include "test.h"

/* pz_utf8_decode, which every module reading UTF-8 goes through, in
 * blocks of their exact size (a read past the end shows under ASan). */
static size_t utf8_len(const char *s, size_t n, uint32_t *cp)
{
    void *q = test_exact_copy(s, n);
    size_t len = pz_utf8_decode(q, n, cp);
    pz_free(q);
    return len;
}

static bool utf8_ok(const char *s, size_t n)
{
    void *q = test_exact_copy(s, n);
    bool ok = pz_utf8_valid(q, n);
    pz_free(q);
    return ok;
}

TEST(utf8_decode)
{
    /* The first and last code points of each length, and around the
     * surrogates. */
    static const struct {
        const char *s;
        uint32_t cp;
    } ok[] = {
        {"\x00", 0},
        {"\x7f", 0x7f},
        {"\xc2\x80", 0x80},
        {"\xdf\xbf", 0x7ff},
        {"\xe0\xa0\x80", 0x800},
        {"\xed\x9f\xbf", 0xd7ff},
        {"\xee\x80\x80", 0xe000},
        {"\xef\xbf\xbf", 0xffff},
        {"\xf0\x90\x80\x80", 0x10000},
        {"\xf4\x8f\xbf\xbf", 0x10ffff},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(ok); i++) {
        size_t n = i == 0 ? 1 : strlen(ok[i].s);
        uint32_t cp = 0xdead;
        CHECK_EQ_INT(utf8_len(ok[i].s, n, &cp), n);
        CHECK_EQ_INT(cp, ok[i].cp);
        /* Only the first character is read; cp may be NULL. */
        char two[8];
        memcpy(two, ok[i].s, n);
        two[n] = 'z';
        CHECK_EQ_INT(utf8_len(two, n + 1, NULL), n);
        /* Cut anywhere, it is not a character. */
        for (size_t k = 1; k < n; k++)
            CHECK_EQ_INT(utf8_len(ok[i].s, k, &cp), 0);
    }
    /* Each would decode to a valid code point if its first byte were
     * taken for the lead it resembles: a continuation byte (0x9F as
     * 0xDF), 0xF8 to 0xFF as 4-byte leads (0xF8: U+10000). */
    static const char *const bad[] = {
        "\x80",
        "\xbf",
        "\x9f\xbf",
        "\xbf\xbf", /* a continuation byte first */
        "\xc0\xaf",
        "\xc1\xbf",         /* overlong: U+002F, U+007F */
        "\xe0\x9f\xbf",     /* overlong U+07FF */
        "\xf0\x8f\xbf\xbf", /* overlong U+FFFF */
        "\xed\xa0\x80",
        "\xed\xbf\xbf",     /* surrogates U+D800, U+DFFF */
        "\xf4\x90\x80\x80", /* U+110000 */
        "\xf5\x80\x80\x80",
        "\xf7\xbf\xbf\xbf", /* past it */
        "\xf8\x90\x80\x80",
        "\xf9\x80\x80\x80",
        "\xfc\x80\x80\x80", /* 5- and 6-byte forms */
        "\xf8\x88\x80\x80\x80",
        "\xfe",
        "\xff",
        "\xc3\x28",
        "\xe2\x82\x28", /* no continuation where due */
        "\xf0\x9f\x98\xc3",
        "\xc3\xc3",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        uint32_t cp = 0xdead;
        CHECK_EQ_INT(utf8_len(bad[i], strlen(bad[i]), &cp), 0);
        CHECK_EQ_INT(cp, 0xdead); /* left alone */
        CHECK(!utf8_ok(bad[i], strlen(bad[i])));
    }
    CHECK(utf8_ok("abc\xc3\xa9\xf0\x9f\x98\x80", 9));
    CHECK(utf8_ok("\xe2\x82\xac\xc3\xa9z\xf4\x8f\xbf\xbf", 10));
    CHECK(utf8_ok("a\0b", 3));
    CHECK(utf8_ok("", 0));
    CHECK(!utf8_ok("ab\xc3", 3)); /* cut at the end */
    CHECK(!utf8_ok("ab\xe2\x82", 4));
    CHECK(!utf8_ok("\xc3\xa9\xa9", 3)); /* a continuation too many */
}

TEST(buf_append_consume)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "hello ", 6);
    pz_buf_appendf(&b, "%s %d", "world", 42);
    CHECK_EQ_STR(b.data, "hello world 42");
    pz_buf_consume(&b, 6);
    CHECK_EQ_STR(b.data, "world 42");
    CHECK_EQ_INT(b.len, 8);
    for (int i = 0; i < 1000; i++)
        pz_buf_append(&b, "x", 1);
    CHECK_EQ_INT(b.len, 1008);
    pz_buf_free(&b);
}

/* A trimmed buffer is empty; it keeps its memory up to keep, no more. */
TEST(buf_trim)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "small", 5);
    size_t cap = b.cap;
    pz_buf_trim(&b, 4096);
    CHECK_EQ_INT(b.len, 0);
    CHECK_EQ_STR(b.data, "");
    CHECK_EQ_INT(b.cap, cap); /* kept: under keep */
    for (int i = 0; i < 10000; i++)
        pz_buf_append(&b, "x", 1);
    pz_buf_trim(&b, 4096);
    CHECK_EQ_INT(b.len, 0);
    CHECK(b.data == NULL && b.cap == 0); /* let go: past keep */
    pz_buf_append(&b, "again", 5);
    CHECK_EQ_STR(b.data, "again");
    pz_buf_free(&b);
}

TEST(alloc_fail_at)
{
    pz_alloc_fail_at(2);
    void *a = pz_malloc_try(10);
    void *b = pz_malloc_try(10);
    void *c = pz_malloc_try(10);
    CHECK(a != NULL);
    CHECK(b == NULL);
    CHECK(c != NULL);
    free(a);
    free(c);
}

TEST(split_hostport)
{
    char host[64];
    int port;
    CHECK_EQ_INT(pz_split_hostport("127.0.0.1:8080", host, sizeof host, &port),
                 0);
    CHECK_EQ_STR(host, "127.0.0.1");
    CHECK_EQ_INT(port, 8080);
    CHECK_EQ_INT(pz_split_hostport(":9090", host, sizeof host, &port), 0);
    CHECK_EQ_STR(host, "0.0.0.0");
    CHECK_EQ_INT(port, 9090);
    CHECK_EQ_INT(pz_split_hostport("[::1]:7000", host, sizeof host, &port), 0);
    CHECK_EQ_STR(host, "::1");
    CHECK(pz_split_hostport("nocolon", host, sizeof host, &port) < 0);
    CHECK(pz_split_hostport("h:99999", host, sizeof host, &port) < 0);
    CHECK(pz_split_hostport("h:", host, sizeof host, &port) < 0);
    CHECK(pz_split_hostport("h:12x", host, sizeof host, &port) < 0);
}

TEST(queue_ops)
{
    struct item {
        int v;
        struct pz_queue q;
    } items[3] = {{1, {0}}, {2, {0}}, {3, {0}}};
    struct pz_queue head, *e;
    pz_queue_init(&head);
    CHECK(pz_queue_empty(&head));
    for (int i = 0; i < 3; i++)
        pz_queue_push(&head, &items[i].q);
    pz_queue_remove(&items[1].q);
    pz_queue_remove(&items[1].q); /* twice is harmless */
    int sum = 0, n = 0;
    PZ_QUEUE_FOREACH(e, &head)
    {
        sum += container_of(e, struct item, q)->v;
        n++;
    }
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(sum, 4);
}

TEST(hash_spreads)
{
    CHECK(pz_hash("a", 1, 0) != pz_hash("b", 1, 0));
    CHECK(pz_hash("a", 1, 0) != pz_hash("a", 1, 1));
    CHECK(pz_hash("abcdefghij", 10, 7) == pz_hash("abcdefghij", 10, 7));
}

/* The table digest compares nodes (and versions) by pz_hash: its values
 * are fixed, whatever the alignment of the data. */
TEST(hash_values_fixed)
{
    uint8_t b[101];
    for (int i = 0; i < 100; i++)
        b[i + 1] = (uint8_t)i;
    CHECK(pz_hash("", 0, 0) == 0x42afb86098ec3a1full);
    CHECK(pz_hash("a", 1, 1) == 0x8875e0b35b0d9603ull);
    CHECK(pz_hash("abcdefgh", 8, 7) == 0x01e75fcb299078b6ull);
    CHECK(pz_hash("0123456789abcdefghijklmnopq", 27, 0x5eed) ==
          0x96d12a0b4a243f87ull);
    CHECK(pz_hash(b + 1, 100, 42) == 0xd4207738be7663dbull);
}

TEST(strerror_codes)
{
    CHECK_EQ_STR(pz_strerror(0), "ok");
    CHECK_EQ_STR(pz_strerror(PZ_ENOLEADER), "no leader known");
    CHECK(pz_strerror(-2) != NULL);
}

static bool tok_eq(const char *want, const char *got)
{
    return pz_token_equal(want, strlen(want), got, strlen(got));
}

TEST(token_equal)
{
    CHECK(tok_eq("s3cret", "s3cret"));
    CHECK(tok_eq("x", "x"));
    CHECK(!tok_eq("s3cret", ""));
    CHECK(!tok_eq("s3cret", "s3cre"));
    CHECK(!tok_eq("s3cret", "s3cret2"));
    CHECK(!tok_eq("s3cret", "S3cret"));
    CHECK(!tok_eq("s3cret", "s3creT"));
    /* The expected token repeated is not it (the comparison wraps). */
    CHECK(!tok_eq("ab", "abab"));
    CHECK(!tok_eq("abab", "ab"));
    /* Lengths are explicit: bytes past them do not count, a NUL does. */
    CHECK(pz_token_equal("abc", 3, "abcdef", 3));
    CHECK(!pz_token_equal("abc", 3, "ab\0", 3));
}

TEST(seed_differs)
{
    /* 64 random bits twice alike, or all zero: the source is broken. */
    uint64_t a = pz_seed(), b = pz_seed();
    CHECK(a != b);
    CHECK(a != 0 && b != 0);
}

TEST(ratelimit)
{
    struct pz_ratelimit l = {0};
    unsigned dropped = 99;
    /* 3 lines per 1000 ms; the rest are counted and reported with the
     * next line let through. */
    for (int i = 0; i < 3; i++) {
        CHECK(pz_ratelimit(&l, 5000 + (uint64_t)i, 1000, 3, &dropped));
        CHECK_EQ_INT(dropped, 0);
    }
    for (int i = 0; i < 10; i++) {
        CHECK(!pz_ratelimit(&l, 5500, 1000, 3, &dropped));
        CHECK_EQ_INT(dropped, 0);
    }
    CHECK_EQ_INT(l.dropped, 10);
    CHECK(pz_ratelimit(&l, 6000, 1000, 3, &dropped));
    CHECK_EQ_INT(dropped, 10);
    CHECK(pz_ratelimit(&l, 6001, 1000, 3, &dropped));
    CHECK_EQ_INT(dropped, 0);
    /* A clock that goes back starts a new window. */
    CHECK(pz_ratelimit(&l, 10, 1000, 3, &dropped));
    CHECK_EQ_INT(l.used, 1);
}

TEST(crc32c)
{
    /* The check value of the CRC-32C catalogue entry. */
    CHECK_EQ_INT(pz_crc32c(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ_INT(pz_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ_INT(pz_crc32c(0, "", 0), 0);
    /* Both versions agree at every length and alignment, and in pieces. */
    uint8_t buf[300];
    uint64_t st = 7;
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)pz_rand_next(&st);
    for (size_t off = 0; off < 8; off++) {
        for (size_t n = 0; n + off <= sizeof buf; n += 1 + n / 16) {
            uint32_t a = pz_crc32c(0, buf + off, n);
            CHECK_EQ_INT(a, pz_crc32c_sw(0, buf + off, n));
            size_t cut = n / 3;
            CHECK_EQ_INT(pz_crc32c(pz_crc32c(0, buf + off, cut), buf + off + cut,
                                   n - cut),
                         a);
        }
    }
    /* Every single-bit error changes it. */
    uint32_t whole = pz_crc32c(0, buf, 64);
    for (size_t bit = 0; bit < 64 * 8; bit++) {
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        CHECK(pz_crc32c(0, buf, 64) != whole);
        buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
}

TEST(cache_reuse)
{
    pz_cache_trim();
    /* A freed block comes back for a request of its class. */
    uint8_t *a = pz_cache_alloc(100);
    memset(a, 0xab, 100);
    pz_cache_free(a);
    uint8_t *b = pz_cache_alloc(128);
    CHECK(b == a);
    /* ... and a calloc from the cache is zeroed all the same. */
    memset(b, 0xcd, 128);
    pz_cache_free(b);
    uint8_t *c = pz_cache_calloc(4, 25);
    CHECK(c == a);
    for (size_t i = 0; i < 100; i++)
        CHECK_EQ_INT(c[i], 0);
    /* Another class does not take it. */
    uint8_t *d = pz_cache_alloc(300);
    CHECK(d != c);
    pz_cache_free(c);
    pz_cache_free(d);
    pz_cache_free(NULL);
    /* Blocks larger than the classes go to malloc, and come back. */
    uint8_t *big = pz_cache_alloc(100000);
    memset(big, 1, 100000);
    pz_cache_free(big);
    pz_cache_trim();
}

TEST(cache_realloc)
{
    /* Growing within a class, to another class, past the classes and back
     * keeps the bytes. */
    size_t sizes[] = {1, 60, 64, 65, 500, 4096, 4097, 70000, 3000, 10};
    uint8_t *p = pz_cache_realloc(NULL, 1);
    p[0] = 7;
    size_t have = 1;
    for (size_t i = 1; i < PZ_ARRAY_SIZE(sizes); i++) {
        size_t n = sizes[i];
        p = pz_cache_realloc(p, n);
        for (size_t j = 0; j < PZ_MIN(have, n); j++)
            CHECK_EQ_INT(p[j], (uint8_t)(j * 7 + 7));
        for (size_t j = 0; j < n; j++)
            p[j] = (uint8_t)(j * 7 + 7);
        have = n;
    }
    pz_cache_free(p);
    pz_cache_trim();
}

TEST(cache_bounded)
{
    /* Free more blocks than a class keeps: only PZ_CACHE_CLASS_BYTES of
     * them stay, the others go back to malloc. Counted with the fault
     * injector, which only allocations that reach malloc advance. */
    size_t keep = PZ_CACHE_CLASS_BYTES / 64, n = keep + 50;
    pz_cache_trim();
    void **v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = pz_cache_alloc(64);
    for (size_t i = 0; i < n; i++)
        pz_cache_free(v[i]);
    pz_alloc_fail_at(3);
    for (size_t i = 0; i < keep; i++)
        v[i] = pz_cache_alloc(50); /* all from the cache */
    v[keep] = pz_cache_alloc(64);  /* the cache is empty: malloc (1st) */
    void *x = pz_malloc_try(1);    /* 2nd */
    void *y = pz_malloc_try(1);    /* 3rd: fails */
    CHECK(x != NULL);
    CHECK(y == NULL);
    pz_alloc_fail_at(0);
    free(x);
    for (size_t i = 0; i <= keep; i++)
        pz_cache_free(v[i]);
    free(v);
    pz_cache_trim();
}

/* Buffers freed oldest first leave nothing mapped once the fifo is
 * closed; a chunk whose buffers are all freed is unmapped (or rewound
 * while it is the fifo's), and a buffer outlives its fifo. */
TEST(fifo_memory_is_returned)
{
    pz_fifo_trim();
    size_t base = pz_fifo_mapped();
    struct pz_fifo f = {0};
    enum { N = 20000 };
    static uint8_t *bufs[N];
    for (size_t i = 0; i < N; i++) {
        size_t n = 1 + (i * 7919) % 700;
        bufs[i] = pz_fifo_alloc(&f, n);
        CHECK(((uintptr_t)bufs[i] & 15) == 0);
        memset(bufs[i], (int)(i & 0xff), n);
    }
    /* about 8 MB of buffers: several chunks */
    CHECK(pz_fifo_mapped() - base > (size_t)4 << 20);
    for (size_t i = 0; i < N; i++) {
        size_t n = 1 + (i * 7919) % 700;
        CHECK_EQ_INT(bufs[i][n - 1], (int)(i & 0xff));
    }
    /* the oldest half goes: the chunks holding only those are unmapped */
    size_t full = pz_fifo_mapped();
    for (size_t i = 0; i < N / 2; i++)
        pz_fifo_free(bufs[i]);
    pz_fifo_trim(); /* the spares they left */
    CHECK(pz_fifo_mapped() < full - ((size_t)2 << 20));
    /* a big buffer comes from malloc: no chunk for it */
    size_t before = pz_fifo_mapped();
    uint8_t *big = pz_fifo_alloc(&f, 300000);
    big[299999] = 7;
    CHECK_EQ_INT(pz_fifo_mapped(), before);
    pz_fifo_free(big);
    /* closed with buffers live: they stay valid until freed */
    pz_fifo_close(&f);
    CHECK(pz_fifo_mapped() > base);
    for (size_t i = N / 2; i < N; i++)
        pz_fifo_free(bufs[i]);
    pz_fifo_trim();
    CHECK_EQ_INT(pz_fifo_mapped(), base);
}

/* Under a steady load (buffers freed oldest first as fast as others are
 * allocated) an emptied chunk is the next one started, not unmapped and a
 * fresh one mapped, whose every page would fault and be zeroed: a buffer
 * cut from it still holds the bytes written there before. */
TEST(fifo_emptied_chunks_are_reused)
{
    pz_fifo_trim();
    size_t base = pz_fifo_mapped();
    struct pz_fifo f = {0};
    enum { LIVE = 3000, SIZE = 496, ROUNDS = 20000 };
    static uint8_t *ring[LIVE];
    size_t peak = 0;
    int stale = 0, fresh = 0;
    for (size_t i = 0; i < ROUNDS; i++) {
        uint8_t **slot = &ring[i % LIVE];
        pz_fifo_free(*slot); /* the oldest */
        *slot = pz_fifo_alloc(&f, SIZE);
        if ((*slot)[SIZE - 1] == 0xab)
            stale++;
        else
            fresh++;
        memset(*slot, 0xab, SIZE);
        peak = PZ_MAX(peak, pz_fifo_mapped() - base);
    }
    /* 10 MB went through 1.5 MB live: the chunks holding them, the one
     * being filled and a spare */
    CHECK(peak <= (size_t)4 << 20);
    /* past the first three chunks, every buffer is cut from one used before */
    CHECK(stale > ROUNDS / 2);
    CHECK(fresh <= 4 * ((1 << 20) / (SIZE + 16)));
    for (size_t i = 0; i < LIVE; i++)
        pz_fifo_free(ring[i]);
    pz_fifo_close(&f);
    CHECK(pz_fifo_mapped() - base <= (size_t)2 << 20); /* the spares */
    pz_fifo_trim();
    CHECK_EQ_INT(pz_fifo_mapped(), base);
}

static long minor_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

/* A fork (the snapshot writer's) does not share fifo chunks: writing into
 * buffers that were written before the fork takes no page fault in the
 * parent while the child lives (a shared page would be write-protected
 * and fault once per page). */
TEST(fifo_chunks_not_shared_with_fork)
{
    struct pz_fifo f = {0};
    enum { N = 200, SIZE = 4080 }; /* a page each, with the header */
    static uint8_t *bufs[N];
    for (size_t i = 0; i < N; i++) {
        bufs[i] = pz_fifo_alloc(&f, SIZE);
        memset(bufs[i], 1, SIZE);
    }
    int go[2];
    CHECK(pipe(go) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        char c;
        close(go[1]);
        ssize_t n = read(go[0], &c, 1); /* until the parent is done */
        _exit(n == 0 ? 0 : 1);
    }
    CHECK(pid > 0);
    close(go[0]);
    long before = minor_faults();
    for (size_t i = 0; i < N; i++)
        memset(bufs[i], 2, SIZE);
    long faults = minor_faults() - before;
    close(go[1]);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(faults < N / 4);
    for (size_t i = 0; i < N; i++)
        pz_fifo_free(bufs[i]);
    pz_fifo_close(&f);
}

static long thread_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return ru.ru_minflt;
}

/* Waits (10 s at most) until the warm thread mapped in `want` bytes or
 * stopped on an error; returns what it mapped. */
static size_t warm_wait(struct pz_warm *w, size_t want)
{
    for (int i = 0; i < 10000; i++) {
        if (__atomic_load_n(&w->mapped, __ATOMIC_RELAXED) >= want ||
            __atomic_load_n(&w->err, __ATOMIC_RELAXED) != 0)
            break;
        usleep(1000);
    }
    return __atomic_load_n(&w->mapped, __ATOMIC_RELAXED);
}

/* A warmed heap: the blocks a load allocates next come from the pages the
 * thread mapped in (no page fault to write them), the thread keeps within
 * 64 MiB of what the load says it used, and what the load left unused
 * goes back to the system at the end. */
TEST(warm_maps_the_load_in_ahead)
{
    enum { MB = 1 << 20, WARM = 96 * MB, BLK = 176, N = 40 * MB / 192 };
    static struct pz_warm w; /* the thread writes to it until joined */
    static char *b[N];
    memset(b, 0, sizeof b); /* its pages are not the load's faults */
    pz_warm_min = MB;
    uint64_t count = pz_warm_count();
    pz_warm_begin(&w, MB - 1); /* under the minimum: nothing */
    CHECK(!w.started && w.nfences == 0);
    pz_warm_end(&w);
    if (!pz_warm_built()) {
        pz_warm_begin(&w, WARM);
        CHECK(!w.started && w.nfences == 0 && pz_warm_count() == count);
        pz_warm_end(&w);
        return;
    }
    /* A trim threshold as glibc raises it after large blocks were freed
     * (the server frees 1 MiB values): the rest goes back all the same. */
    CHECK_EQ_INT(mallopt(M_TRIM_THRESHOLD, 128 * MB), 1);
    size_t heap0 = mallinfo2().arena;
    pz_warm_begin(&w, WARM);
    CHECK(w.started && w.nruns >= 1 && pz_warm_count() == count + 1);
    size_t want = (uintptr_t)w.runs[1] - (uintptr_t)w.runs[0];
    CHECK(want >= WARM - MB);
    /* Nothing used yet: it stops 64 MiB in, and goes on when allowed. */
    size_t got = warm_wait(&w, 64 * MB);
    if (w.err == EINVAL) { /* a kernel before 5.14: the load faults */
        fprintf(stderr, "    no MADV_POPULATE_WRITE: nothing mapped in\n");
        pz_warm_end(&w);
        CHECK(mallinfo2().arena < heap0 + 2 * (size_t)MB);
        return;
    }
    CHECK_EQ_INT(w.err, 0);
    usleep(20000);
    got = __atomic_load_n(&w.mapped, __ATOMIC_RELAXED);
    CHECK(got >= 63 * (size_t)MB && got <= 64 * (size_t)MB);
    pz_warm_allow(&w, 40 * MB);
    CHECK(warm_wait(&w, want) >= want);
    long before = thread_faults();
    for (size_t i = 0; i < N; i++) {
        b[i] = malloc(BLK); /* 192 bytes apiece in the heap */
        CHECK(b[i] != NULL);
        memset(b[i], (int)i, BLK);
    }
    long faults = thread_faults() - before;
    size_t inside = 0;
    for (size_t i = 0; i < N; i++)
        inside += (uintptr_t)b[i] >= (uintptr_t)w.runs[0] - 4096 &&
                  (uintptr_t)b[i] < (uintptr_t)w.runs[1];
    fprintf(stderr, "    %zu of %d blocks in the warmed run, %ld faults\n",
            inside, N, faults);
    CHECK(inside > N - N / 100);
    CHECK(faults < 40 * MB / 4096 / 20); /* of 10,240 pages written */
    pz_warm_end(&w);
    CHECK(w.fences == NULL && w.nfences == 0 && !w.started);
    /* 40 MiB in use, the rest of the 96 given back */
    CHECK(mallinfo2().arena < heap0 + 42 * (size_t)MB);
    for (size_t i = 0; i < N; i++)
        CHECK((unsigned char)b[i][BLK - 1] == (unsigned char)i);
    CHECK_EQ_INT(mallopt(M_TRIM_THRESHOLD, 128 * 1024), 1);
    for (size_t i = 0; i < N; i++)
        free(b[i]);
    CHECK(mallinfo2().arena < heap0 + 2 * (size_t)MB);
}

/* On a thread of its own (a snapshot received from the leader loads on
 * the thread pool), malloc serves the thread from an arena of 64 MiB
 * heaps: 160 MiB warmed there is several runs, each ending at its fence,
 * and malloc hands them out in an order of its own. A load that goes as
 * a real one does (telling pz_warm_allow what it used every 4096 blocks,
 * here waiting for the thread to map what it may meanwhile) writes its
 * blocks in the runs, into pages already mapped in. */
static void warm_on_a_thread_body(void)
{
    enum { MB = 1 << 20, WARM = 160 * MB, BLK = 176, N = 140 * MB / 192 };
    static struct pz_warm w;
    static char *b[N];
    memset(b, 0, sizeof b);
    pz_warm_begin(&w, WARM);
    CHECK(w.started);
    CHECK(w.nruns >= 2);
    size_t want = 0;
    for (size_t i = 0; i < w.nruns; i++)
        want += (uintptr_t)w.runs[2 * i + 1] - (uintptr_t)w.runs[2 * i];
    CHECK(want >= WARM - 4 * (size_t)MB);
    size_t used = 0;
    long before = thread_faults();
    for (size_t i = 0; i < N; i++) {
        if (i % 4096 == 0) {
            pz_warm_allow(&w, used);
            size_t last = SIZE_MAX;
            for (int k = 0; k < 2000; k++) { /* 2 s at most */
                size_t m = __atomic_load_n(&w.mapped, __ATOMIC_RELAXED);
                if (m + MB > used + 64 * (size_t)MB ||
                    __atomic_load_n(&w.finished, __ATOMIC_RELAXED) ||
                    __atomic_load_n(&w.err, __ATOMIC_RELAXED) != 0 ||
                    (k % 50 == 49 && m == last))
                    break;
                if (k % 50 == 49)
                    last = m;
                usleep(1000);
            }
        }
        b[i] = malloc(BLK);
        CHECK(b[i] != NULL);
        memset(b[i], (int)i, BLK);
        used += BLK + 16;
    }
    long faults = thread_faults() - before;
    int err = __atomic_load_n(&w.err, __ATOMIC_RELAXED);
    if (err == EINVAL) {
        fprintf(stderr, "    no MADV_POPULATE_WRITE: nothing mapped in\n");
        pz_warm_end(&w);
        return;
    }
    CHECK_EQ_INT(err, 0);
    size_t inside = 0;
    for (size_t i = 0; i < N; i++)
        for (size_t r = 0; r < w.nruns; r++)
            if ((uintptr_t)b[i] >= (uintptr_t)w.runs[2 * r] - 4096 &&
                (uintptr_t)b[i] < (uintptr_t)w.runs[2 * r + 1]) {
                inside++;
                break;
            }
    fprintf(stderr, "    %zu runs; %zu of %d blocks in them, %ld faults\n",
            w.nruns, inside, N, faults);
    CHECK(inside > N - N / 50);
    CHECK(faults < 140 * MB / 4096 / 20); /* of 35,840 pages written */
    pz_warm_end(&w);
    CHECK(w.fences == NULL && !w.started);
    for (size_t i = 0; i < N; i++)
        CHECK((unsigned char)b[i][BLK - 1] == (unsigned char)i);
    for (size_t i = 0; i < N; i++)
        free(b[i]);
}

static void *warm_on_a_thread_main(void *arg)
{
    PZ_UNUSED(arg);
    warm_on_a_thread_body();
    return NULL;
}

TEST(warm_on_a_thread_maps_its_arena_in)
{
    if (!pz_warm_built())
        return; /* warm_maps_the_load_in_ahead: it does nothing */
    pz_warm_min = 1 << 20;
    pthread_t th;
    CHECK_EQ_INT(pthread_create(&th, NULL, warm_on_a_thread_main, NULL), 0);
    pthread_join(th, NULL);
    pz_warm_min = PZ_WARM_MIN;
}

TEST(fifo_current_chunk_is_reused_when_emptied)
{
    pz_fifo_trim();
    size_t base = pz_fifo_mapped();
    struct pz_fifo f = {0};
    for (int round = 0; round < 1000; round++) {
        void *a = pz_fifo_alloc(&f, 4000);
        void *b = pz_fifo_alloc(&f, 100);
        pz_fifo_free(b);
        pz_fifo_free(a);
    }
    /* 4 MB allocated in all, one chunk ever mapped */
    CHECK_EQ_INT(pz_fifo_mapped() - base, 1 << 20);
    /* out of order, and a long-lived (malloc'd) buffer */
    void *x = pz_fifo_alloc(&f, 10), *y = pz_fifo_alloc(&f, 10);
    void *m = pz_fifo_alloc(NULL, 50);
    memset(m, 1, 50);
    pz_fifo_free(x);
    pz_fifo_free(m);
    pz_fifo_close(&f);
    CHECK_EQ_INT(pz_fifo_mapped() - base, 1 << 20); /* y holds it */
    pz_fifo_free(y);
    pz_fifo_trim(); /* y's chunk was kept as a spare */
    CHECK_EQ_INT(pz_fifo_mapped(), base);
}

/* Memory mapped where a chunk was, once the chunk is gone, is clean
 * (under AddressSanitizer, the chunk's poisoning must not outlive it). */
TEST(fifo_chunks_leave_no_poison)
{
    pz_fifo_trim();
    size_t base = pz_fifo_mapped(), page = 4096;
    int mapped_again = 0;
    for (int i = 0; i < 20; i++) {
        struct pz_fifo f = {0};
        uint8_t *a = pz_fifo_alloc(&f, 100), *b = pz_fifo_alloc(&f, 200);
        memset(a, 1, 100);
        memset(b, 2, 200);
        pz_fifo_free(a);
        pz_fifo_close(&f);
        CHECK_EQ_INT(b[199], 2);
        uintptr_t at = (uintptr_t)b & ~(uintptr_t)(page - 1);
        pz_fifo_free(b); /* the chunk goes, a spare */
        pz_fifo_trim();    /* then unmapped */
        CHECK_EQ_INT(pz_fifo_mapped(), base);
        uint8_t *p = mmap((void *)at, page, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                          -1, 0);
        if (p == MAP_FAILED)
            continue; /* the address went to someone else */
        CHECK(p == (uint8_t *)at);
        memset(p, 3, page); /* a poisoned byte here would be reported */
        CHECK_EQ_INT(p[page - 1], 3);
        munmap(p, page);
        mapped_again++;
    }
    CHECK(mapped_again > 0);
}

static const struct test_case cases[] = {
    TEST_ENTRY(buf_append_consume),
    TEST_ENTRY(buf_trim),
    TEST_ENTRY(alloc_fail_at),
    TEST_ENTRY(split_hostport),
    TEST_ENTRY(queue_ops),
    TEST_ENTRY(hash_spreads),
    TEST_ENTRY(hash_values_fixed),
    TEST_ENTRY(strerror_codes),
    TEST_ENTRY(token_equal),
    TEST_ENTRY(seed_differs),
    TEST_ENTRY(ratelimit),
    TEST_ENTRY(crc32c),
    TEST_ENTRY(cache_reuse),
    TEST_ENTRY(cache_realloc),
    TEST_ENTRY(utf8_decode),
    TEST_ENTRY(cache_bounded),
    TEST_ENTRY(fifo_memory_is_returned),
    TEST_ENTRY(fifo_emptied_chunks_are_reused),
    TEST_ENTRY(fifo_chunks_not_shared_with_fork),
    TEST_ENTRY(fifo_current_chunk_is_reused_when_emptied),
    TEST_ENTRY(fifo_chunks_leave_no_poison),
    TEST_ENTRY(warm_maps_the_load_in_ahead),
    TEST_ENTRY(warm_on_a_thread_maps_its_arena_in),
    TEST_END};
const struct test_suite suite_pz = {"pz", cases};

