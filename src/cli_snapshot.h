/* cli_snapshot.h - `pyazdb-cli snapshot save FILE`: download a backup from
 * a node's GET /admin/snapshot into a file, safely.
 *
 * Happy path: connect to the node's HTTP address, send the request (with
 * the cluster token when one is given), write the body to FILE.part as it
 * arrives, fsync it, check the whole file as a snapshot (format, lengths,
 * end marker, CRC-64: snapshot_verify), rename it to FILE and fsync the
 * directory. So FILE is either absent (or its old self) or a complete,
 * verified snapshot.
 *
 * FILE.part is created exclusively (O_EXCL, O_NOFOLLOW): when it exists
 * already, a link included, the save is refused and it is left alone.
 *
 * Failure modes, each one line in err, FILE.part removed: the node cannot
 * be reached; it answers anything but 200 (its status and first line);
 * the connection ends before Content-Length bytes; nothing arrives for
 * timeout_ms (connecting, the node taking the snapshot, any read); once
 * the response has begun, a timeout_ms brings less than 64 KiB (a drip
 * that would never end); the body is announced or grows past 1 TiB; the
 * file fails the snapshot checks; a write, fsync or rename fails.
 *
 * Blocking, for the CLI only: plain sockets and llhttp, no loop. */
#ifndef PZ_CLI_SNAPSHOT_H
#define PZ_CLI_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "snapshot.h"

struct tls_slot;

/* Download from addr ("host:port") into file, over HTTPS when tls is on
 * (NULL: plain text). token may be NULL or "".
 * On success fills *meta (free with snapshot_meta_free) and returns 0;
 * otherwise a negative code with a message in err. */
int cli_snapshot_save(const char *addr, const char *token,
                      const struct tls_slot *tls, const char *file,
                      uint64_t timeout_ms, struct snapshot_meta *meta,
                      char *err, size_t errlen);

#endif
