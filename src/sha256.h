/* sha256.h - SHA-256 (FIPS 180-4), incremental. Pure. Used where a format
 * we speak asks for it (the digest etcd clients expect at the end of a
 * Maintenance.Snapshot stream). */
#ifndef PZ_SHA256_H
#define PZ_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_SIZE 32

struct sha256 {
    uint32_t h[8];
    uint64_t len;    /* bytes hashed so far */
    uint8_t buf[64]; /* partial block */
    size_t nbuf;
};

void sha256_init(struct sha256 *s);
void sha256_update(struct sha256 *s, const void *data, size_t len);
void sha256_final(struct sha256 *s, uint8_t out[SHA256_SIZE]);

#endif
