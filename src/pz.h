/* pz.h - helpers shared by every module: allocation, assertions, small
 * utilities. Pure: no I/O, no libuv (pz_seed() aside, which asks the
 * kernel for random bytes, and pz_warm, which maps pages in on a thread of
 * its own).
 *
 * All allocation goes through pz_malloc() and friends. Out of memory aborts
 * the process (as Redis's zmalloc does): a database that cannot allocate has
 * no safe way to carry on. Tests may make the Nth allocation fail through
 * pz_alloc_fail_at() to exercise error paths of code that reports ENOMEM
 * instead (pz_malloc_try). */
#ifndef PZ_H
#define PZ_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

#define PZ_VERSION "0.1.0"

#ifndef container_of
#define container_of(ptr, type, member)                                      \
    ((type *)((char *)(ptr) - offsetof(type, member)))
#endif

#define PZ_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define PZ_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PZ_MAX(a, b) ((a) > (b) ? (a) : (b))
#define PZ_UNUSED(x) ((void)(x))

/* Assertions stay on in release builds (Redis serverAssert): a broken
 * invariant in a database must stop it, not corrupt data quietly. */
#define pz_assert(e)                                                         \
    ((e) ? (void)0 : pz_assert_fail(#e, __FILE__, __LINE__))
__attribute__((noreturn)) void pz_assert_fail(const char *expr,
                                              const char *file, int line);

/* Abort on OOM. */
void *pz_malloc(size_t n);
void *pz_calloc(size_t n, size_t size);
void *pz_realloc(void *p, size_t n);
char *pz_strdup(const char *s);
char *pz_strndup(const char *s, size_t n);
void *pz_memdup(const void *p, size_t n);
void pz_free(void *p);

/* May return NULL: for callers that turn OOM into an error reply. Counts
 * toward the fault injector like the others. */
void *pz_malloc_try(size_t n);

/* Memory for buffers freed in about the order they were allocated: the
 * Raft log's payloads, which compaction frees oldest first, and the watch
 * history's events. They are cut from 1 MiB chunks mapped for the purpose
 * and unmapped once every buffer in them is freed, so that a long load
 * leaves no holes in the heap between the keys that stay (malloc could
 * not return those pages, nor fill holes too small for a key). A buffer
 * over 64 KiB comes from malloc (a hole that large is filled again), and
 * so does one for fifo NULL, for long-lived buffers that would pin a
 * chunk, or when the kernel refuses a mapping. One thread per fifo; a
 * buffer may outlive its fifo (pz_fifo_close). Out of memory aborts, as in
 * pz_malloc. A chunk emptied after its fifo moved on stays mapped as one
 * of two spares, the next chunk any fifo starts (no page faults to fill
 * it again); pz_fifo_trim unmaps the spares. Chunks are not inherited by
 * a forked child (MADV_DONTFORK): a child must not touch fifo buffers. */
struct pz_fifo {
    void *cur; /* the chunk buffers are cut from (NULL: none yet) */
};
void *pz_fifo_alloc(struct pz_fifo *f, size_t n);
void pz_fifo_free(void *p);
/* The fifo takes no more buffers; its chunk goes once they are freed. */
void pz_fifo_close(struct pz_fifo *f);
/* Bytes mapped for all fifos' chunks of this process, spares included. */
size_t pz_fifo_mapped(void);
/* Unmaps the spare chunks. */
void pz_fifo_trim(void);

/* Warming the heap before a bulk load (a snapshot into a new table). The
 * load allocates about `bytes` in small blocks, and each new page costs a
 * page fault on its first write: 13 to 16 us apiece on the virtual machine
 * we measured, two thirds of loading 10M keys into a fresh process.
 * pz_warm_begin carves that much from malloc's heap (the calling thread's
 * arena) and frees it again in one piece (several if the heap had holes,
 * or if it spans several of a thread arena's 64 MiB heaps), which malloc
 * then hands out to the load front to back (one block past each piece
 * stays allocated, so that no heap shrinks under the load), and starts a
 * thread that maps those pages in with MADV_POPULATE_WRITE (cheaper per
 * page than a fault, and on the other core) and reads a byte of each
 * (pz.c says why, and why that read is harmless). It writes nothing: what
 * the load wrote stays. The thread keeps at most 64 MiB ahead of what the
 * load says it has used (pz_warm_allow), so that a load that stops early,
 * or a file whose header overstates its keys, does not make it map in
 * more than that for nothing. pz_warm_end stops and joins the thread and
 * gives back what the load left unused. On any thread (a snapshot
 * received from the leader loads on the thread pool), only below glibc's
 * malloc (the sizes it reports for the blocks tell), not under
 * AddressSanitizer (whose allocator sets freed blocks aside) and not under
 * pz_warm_min bytes (PZ_WARM_MIN; tests lower it): otherwise it does
 * nothing. On a kernel without MADV_POPULATE_WRITE (before Linux 5.14) the
 * thread stops at once (err EINVAL) and the load faults its own pages. */
#define PZ_WARM_MIN ((size_t)64 << 20)
extern size_t pz_warm_min;
struct pz_warm {
    void **fences; /* the block kept past each run */
    size_t nfences;
    void **runs;    /* start and end of each run of pages to map in */
    size_t nruns;
    char **at;      /* how far the thread mapped each run in */
    uintptr_t hint; /* where the load allocated lately (atomic) */
    size_t mapped;  /* bytes the thread has mapped in so far (atomic) */
    size_t allowed; /* bytes it may map in (atomic) */
    int err;        /* errno of the madvise that stopped it (atomic) */
    int stop;       /* set by pz_warm_end (atomic) */
    int finished;   /* every run mapped in (or passed by the load; atomic) */
    bool started;   /* the thread runs */
    pthread_t th;
};
void pz_warm_begin(struct pz_warm *w, size_t bytes);
/* The load has used about `used` bytes of the estimate so far. */
void pz_warm_allow(struct pz_warm *w, size_t used);
void pz_warm_end(struct pz_warm *w);
/* Warm threads started in this process (for tests). */
uint64_t pz_warm_count(void);
/* Whether this build warms at all (glibc, no AddressSanitizer). */
bool pz_warm_built(void);

/* Fault injection for tests: the Nth allocation from now (1-based) fails;
 * 0 disables. pz_malloc() aborts on it, pz_malloc_try() returns NULL. */
void pz_alloc_fail_at(long n);

/* A cache of freed small blocks in size classes (64 bytes to 4 KiB), for
 * objects made and dropped on every request (nghttp2's streams and frames,
 * gRPC stream state): most allocations then cost a list pop instead of a
 * trip through malloc. A block carries a 16-byte header naming its class;
 * larger blocks go to pz_malloc directly. Each thread has its own lists,
 * each bounded (PZ_CACHE_CLASS_BYTES), so the cache holds at most a few
 * MiB whatever the load. Blocks from pz_cache_alloc go back through
 * pz_cache_free (never pz_free) and may be freed on any thread. Refills
 * count toward the fault injector. */
#define PZ_CACHE_CLASS_BYTES (256 * 1024)
void *pz_cache_alloc(size_t n);
void *pz_cache_calloc(size_t n, size_t size);
void *pz_cache_realloc(void *p, size_t n);
void pz_cache_free(void *p);
/* Give every cached block of this thread back to malloc. */
void pz_cache_trim(void);

/* Growable byte buffer. */
struct pz_buf {
    char *data; /* NULL until the first append */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
};
void pz_buf_init(struct pz_buf *b);
void pz_buf_free(struct pz_buf *b);
/* pz_buf_reserve's slow path: allocate room for extra more bytes. */
void pz_buf_grow(struct pz_buf *b, size_t extra);
/* Room for extra more bytes (and the NUL kept after them). Inline, as
 * pz_buf_append: most calls find the room there, on every request. */
static inline void pz_buf_reserve(struct pz_buf *b, size_t extra)
{
    if (b->len + extra + 1 > b->cap)
        pz_buf_grow(b, extra);
}
/* Append n bytes; the buffer stays NUL-terminated. */
static inline void pz_buf_append(struct pz_buf *b, const void *p, size_t n)
{
    pz_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}
void pz_buf_appendf(struct pz_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes. */
void pz_buf_consume(struct pz_buf *b, size_t n);
void pz_buf_reset(struct pz_buf *b);
/* Empty b, and let its memory go if it grew past keep: a buffer reused
 * for the next message keeps no more than keep of the largest one. */
void pz_buf_trim(struct pz_buf *b, size_t keep);

/* Big-endian and varint helpers used by codecs. */
static inline void pz_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint32_t pz_get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline void pz_put_u64(uint8_t *p, uint64_t v)
{
    pz_put_u32(p, (uint32_t)(v >> 32));
    pz_put_u32(p + 4, (uint32_t)v);
}
static inline uint64_t pz_get_u64(const uint8_t *p)
{
    return ((uint64_t)pz_get_u32(p) << 32) | pz_get_u32(p + 4);
}

/* Parse "host:port" or ":port" (host defaults to 0.0.0.0... see cfg). Writes
 * host into buf (NUL-terminated) and the port. Returns 0 or PZ_EINVAL. */
int pz_split_hostport(const char *s, char *host, size_t hostlen, int *port);

/* Untrusted bytes (ids, addresses, keys, anything a peer or client sent)
 * made safe for a log line: s[0..n) rendered as printable ASCII into dst,
 * always NUL-terminated. Bytes 0x20-0x7e stay as they are, except '\\' and
 * '"', which become \\ and \"; newline, carriage return and tab become \n,
 * \r and \t; every other byte (other controls, DEL, each byte of a UTF-8
 * sequence) becomes \xHH. So a value cannot end a log line early, start a
 * forged one, or send escape sequences to a terminal, and the escaping can
 * be undone by a reader. When the result does not fit in dstlen - 1
 * characters it is cut at a whole escape and ends with "...". dstlen must
 * be at least 4; s may be NULL when n is 0. Returns dst, so a call can be a
 * printf argument:
 *     char e[PZ_ESCAPED_MAX];
 *     pz_warn("refused %s", pz_escape(e, sizeof e, id, strlen(id)));
 * Pure: no allocation. */
#define PZ_ESCAPED_MAX 128 /* a dst size that keeps one value short */
char *pz_escape(char *dst, size_t dstlen, const void *s, size_t n);

/* Does the presented token got[0..glen) equal the expected one
 * want[0..wlen)? For bearer tokens and the cluster token. The time taken
 * depends on glen only, never on the content of either token nor on where
 * they differ, so an attacker learns nothing by timing its guesses (the
 * length of its own guess it knows already). want must not be empty. */
bool pz_token_equal(const char *want, size_t wlen, const char *got,
                    size_t glen);

/* A seed for a PRNG (pz_rand_next, a hash table): 8 bytes from the
 * kernel's random source (getrandom), or, when that fails, the monotonic
 * and wall clocks mixed. One of the helpers here that ask the system
 * for something (pz_open_regular and pz_open_regular_append the
 * others): every module seeds through it. */
uint64_t pz_seed(void);

/* The length (1 to 4) of the valid UTF-8 sequence at s[0..n), n > 0, and
 * its code point in *cp (when cp is not NULL); 0, *cp left alone, when s
 * does not begin one: a stray continuation byte, a sequence cut short, an
 * overlong form, a surrogate (U+D800..U+DFFF) or a code point past U+10FFFF.
 * Every module that reads UTF-8 decodes through it. */
size_t pz_utf8_decode(const void *s, size_t n, uint32_t *cp);

/* Is s[0..n) valid UTF-8 (pz_utf8_decode)? NUL bytes are valid. */
bool pz_utf8_valid(const void *s, size_t n);

/* Is code point cp one that makes a line of text show other than it
 * reads: a line or paragraph separator (U+2028, U+2029: a line break to
 * some viewers) or a bidirectional control (U+061C, U+200E, U+200F,
 * U+202A..U+202E, U+2066..U+2069), which shows the rest of the line
 * reordered? Log lines escape such characters, and mandi's answers may
 * not hold them. */
bool pz_cp_disguises_text(uint32_t cp);

/* Open path for reading, as a regular file only: the open is made with
 * O_NONBLOCK, so that a FIFO (which blocks an open until a writer comes)
 * or a device named like a file the process reads at start or on reload
 * fails at once instead of hanging the process; anything but a regular
 * file (after symbolic links, which are followed) is then refused, except
 * /dev/null (an empty file: `--test-config /dev/null`), and the
 * descriptor made blocking again. Returns the descriptor (O_CLOEXEC),
 * -errno when the open or fstat fails, or PZ_EINVAL when path is not a
 * regular file (callers say "not a regular file"). */
int pz_open_regular(const char *path);

/* pz_open_regular for appending (a log file): created when missing (mode
 * 0666 less the umask), and, like it, never blocking on a FIFO (whose
 * open for writing waits for a reader) and refusing anything but a
 * regular file or /dev/null with PZ_EINVAL. */
int pz_open_regular_append(const char *path);

/* fsync of the directory (or, with dir false, of the file) at path:
 * what makes a file's creation, rename or removal in a directory
 * durable. 0 or -errno. */
int pz_fsync_path(const char *path, bool dir);

/* pz_open_regular as a stdio stream ("rb"), or NULL with *why saying why
 * ("not a regular file", or the system's reason). */
FILE *pz_fopen_regular(const char *path, const char **why);

/* A rate limit for log lines that the network can trigger (a client, a
 * peer, or a broken server can make a line happen as often as it likes):
 * at most `burst` lines per `window_ms`. pz_ratelimit() says whether a
 * line may be written at now (ms); on true, *dropped is the number of
 * lines held back before this one (say so in, or before, the line) and
 * the count restarts; on false, *dropped is 0 and this line is counted.
 * A clock that goes back starts a new window. A zeroed struct is ready
 * for use. Pure. */
struct pz_ratelimit {
    uint64_t start;   /* ms: when the current window began */
    unsigned used;    /* lines let through in it */
    unsigned dropped; /* lines held back since the last one let through */
};
bool pz_ratelimit(struct pz_ratelimit *l, uint64_t now, uint64_t window_ms,
                  unsigned burst, unsigned *dropped);

/* 64-bit hash (SipHash-1-3 style keyed hash is overkill here: we use
 * a seeded wyhash-like mix; seed fixed per table). */
uint64_t pz_hash(const void *p, size_t n, uint64_t seed);

/* CRC-32C (Castagnoli, reflected, as iSCSI and ext4 use it) of len bytes,
 * continuing from crc (0 to start): pz_crc32c(pz_crc32c(0, a), b) is the
 * CRC of a followed by b. It detects every error of up to 3 bits in
 * messages up to 2^31 bits and every burst up to 32 bits. Uses the SSE4.2
 * instruction when the CPU has it, a table otherwise; both agree. */
uint32_t pz_crc32c(uint32_t crc, const void *data, size_t len);
/* The table version alone (for tests that compare the two). */
uint32_t pz_crc32c_sw(uint32_t crc, const void *data, size_t len);

/* splitmix64 PRNG: deterministic, seedable. */
static inline uint64_t pz_rand_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#endif
