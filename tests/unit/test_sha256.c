/* test_sha256.c - FIPS 180-4 example vectors, and one-shot against
 * byte-by-byte updates across block boundaries. */
#include <stdio.h>
#include <string.h>

#include "sha256.h"
#include "test.h"

static void hex(const uint8_t *d, char *out)
{
    for (int i = 0; i < SHA256_SIZE; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void digest(const void *p, size_t n, char *out)
{
    struct sha256 s;
    uint8_t d[SHA256_SIZE];
    sha256_init(&s);
    sha256_update(&s, p, n);
    sha256_final(&s, d);
    hex(d, out);
}

TEST(vectors)
{
    char h[65];
    digest("", 0, h);
    CHECK_EQ_STR(
        h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    digest("abc", 3, h);
    CHECK_EQ_STR(
        h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two =
        "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    digest(two, strlen(two), h);
    CHECK_EQ_STR(
        h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    static char million[1000000];
    memset(million, 'a', sizeof million);
    digest(million, sizeof million, h);
    CHECK_EQ_STR(
        h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(incremental)
{
    uint8_t data[300];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7);
    for (size_t n = 0; n <= sizeof data; n += 13) {
        char one[65], many[65];
        digest(data, n, one);
        struct sha256 s;
        uint8_t d[SHA256_SIZE];
        sha256_init(&s);
        for (size_t i = 0; i < n; i++)
            sha256_update(&s, data + i, 1);
        sha256_final(&s, d);
        hex(d, many);
        CHECK_EQ_STR(one, many);
    }
}

static const struct test_case cases[] = {
    TEST_ENTRY(vectors),
    TEST_ENTRY(incremental),
    TEST_END,
};

const struct test_suite suite_sha256 = {"sha256", cases};
