/* fuzz.h - helpers shared by the libFuzzer harnesses in tests/fuzz.
 *
 * Each harness is one fuzz_<target>.c defining LLVMFuzzerTestOneInput and
 * linking only the pure modules it drives (see tests/fuzz/Makefile). The
 * helpers here turn the input into structured choices (struct fz, in the
 * spirit of libFuzzer's FuzzedDataProvider: reads past the end yield
 * zeros, so every input is valid), split an input into pieces to feed an
 * incremental parser, and check invariants: FUZZ_CHECK prints what broke
 * and aborts, which libFuzzer reports as a crash and saves the input.
 *
 * Header only, so that every harness stays one file. */
#ifndef PZ_FUZZ_H
#define PZ_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* An invariant of the code under test: a failure is a finding. */
#define FUZZ_CHECK(cond)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "fuzz: invariant failed: %s (%s:%d)\n", #cond,   \
                    __FILE__, __LINE__);                                     \
            abort();                                                         \
        }                                                                    \
    } while (0)

/* The same with a message (printf format) saying what was seen. */
#define FUZZ_CHECKF(cond, ...)                                               \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "fuzz: invariant failed: %s (%s:%d): ", #cond,   \
                    __FILE__, __LINE__);                                     \
            fprintf(stderr, __VA_ARGS__);                                    \
            fputc('\n', stderr);                                             \
            abort();                                                         \
        }                                                                    \
    } while (0)

/* Open findings: a check that fails for a known reason, not fixed yet, is
 * skipped so that it does not stop every run, unless FUZZ_OPEN=1 (as
 * `make fuzz-regress` sets it to replay regressions/<t>/open-*: they must
 * still fail, until the fix lands and the file loses its open- prefix). */
static inline bool fuzz_open(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("FUZZ_OPEN");
        on = v != NULL && strcmp(v, "1") == 0;
    }
    return on;
}

/* --- structured input ----------------------------------------------------- */

struct fz {
    const uint8_t *p; /* next unread byte */
    size_t n;         /* bytes left */
};

static inline void fz_init(struct fz *f, const uint8_t *p, size_t n)
{
    f->p = p;
    f->n = n;
}

static inline size_t fz_left(const struct fz *f)
{
    return f->n;
}

static inline uint8_t fz_u8(struct fz *f)
{
    if (f->n == 0)
        return 0;
    f->n--;
    return *f->p++;
}

static inline bool fz_bool(struct fz *f)
{
    return fz_u8(f) & 1;
}

static inline uint16_t fz_u16(struct fz *f)
{
    uint16_t v = fz_u8(f);
    return (uint16_t)(v | (uint16_t)fz_u8(f) << 8);
}

static inline uint32_t fz_u32(struct fz *f)
{
    uint32_t v = fz_u16(f);
    return v | (uint32_t)fz_u16(f) << 16;
}

static inline uint64_t fz_u64(struct fz *f)
{
    uint64_t v = fz_u32(f);
    return v | (uint64_t)fz_u32(f) << 32;
}

/* A value in [lo, hi] from one byte (two when the range needs them). */
static inline uint64_t fz_range(struct fz *f, uint64_t lo, uint64_t hi)
{
    uint64_t span = hi - lo + 1;
    if (span == 0) /* the whole 64-bit range */
        return fz_u64(f);
    uint64_t v = span <= 256 ? fz_u8(f) : span <= 65536 ? fz_u16(f)
                                                        : fz_u64(f);
    return lo + v % span;
}

/* Up to max bytes, the count from one byte; *len gets it. The bytes stay
 * in the input (never NULL, even when *len is 0). */
static inline const uint8_t *fz_bytes(struct fz *f, size_t max, size_t *len)
{
    size_t want = fz_u8(f);
    if (want > max)
        want %= max + 1;
    if (want > f->n)
        want = f->n;
    const uint8_t *p = f->n ? f->p : (const uint8_t *)"";
    f->p += want;
    f->n -= want;
    *len = want;
    return p;
}

/* The rest of the input. */
static inline const uint8_t *fz_rest(struct fz *f, size_t *len)
{
    const uint8_t *p = f->n ? f->p : (const uint8_t *)"";
    *len = f->n;
    f->p += f->n;
    f->n = 0;
    return p;
}

/* --- splitting ------------------------------------------------------------ */

/* splitmix64, as pz_rand_next (fuzz.h stays free of project headers). */
static inline uint64_t fuzz_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* FNV-1a of the input: seeds the split points, so that one input always
 * splits the same way (a crash replays) while the fuzzer still varies
 * them by mutating the data. */
static inline uint64_t fuzz_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Length of the next piece when feeding n bytes in random pieces: mostly
 * short ones (1 to 8 bytes, where boundaries fall inside tokens), now and
 * then a long one. Always at least 1 and at most n (n > 0). */
static inline size_t fuzz_piece(uint64_t *state, size_t n)
{
    uint64_t r = fuzz_rand(state);
    size_t len = (r & 3) ? 1 + (size_t)((r >> 8) % 8)
                         : 1 + (size_t)((r >> 8) % 256);
    return len < n ? len : n;
}

/* Copy into a fresh heap buffer of exactly len bytes (ASan then catches
 * any read past the end; libFuzzer's own buffer has the same property
 * but pieces of it do not). len 0 gives a 1-byte buffer. */
static inline uint8_t *fuzz_dup(const void *p, size_t len)
{
    uint8_t *b = malloc(len ? len : 1);
    if (b == NULL)
        abort();
    if (len)
        memcpy(b, p, len);
    return b;
}

#endif
