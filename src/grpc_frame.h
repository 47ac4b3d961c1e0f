/* grpc_frame.h - the gRPC-over-HTTP/2 wire rules that need no I/O: message
 * framing (1-byte compressed flag, 4-byte big-endian length, payload),
 * status codes and names, the grpc-timeout header, percent-encoding of
 * grpc-message and the content-type check. Pure: no libuv, no sockets, no
 * clocks; used by the server (grpc.c), the client (grpc_client.c) and the
 * unit tests alike.
 *
 * Happy path: a stream's DATA payloads are fed to grpc_reader_feed() in
 * whatever pieces HTTP/2 delivers them; each time a whole message is in,
 * the reader stops and returns GRPC_READ_MESSAGE; the caller takes the
 * payload from r->msg, calls grpc_reader_next() and feeds the rest.
 * Failure modes: a length prefix over the configured maximum is reported
 * (GRPC_READ_TOO_BIG) as soon as the 5-byte prefix is complete, before any
 * payload byte is buffered; the reader is then dead. A stream that ends
 * with grpc_reader_partial() true was truncated.
 * Memory: the payload buffer grows with the bytes received, to at most
 * twice what arrived (or 64 KiB) and never past the announced length, so
 * r->msg.cap is what a partial message really costs. An empty message
 * leaves r->msg.data NULL. */
#ifndef PZ_GRPC_FRAME_H
#define PZ_GRPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pz.h"

/* Status codes (grpc doc/statuscodes.md). */
enum grpc_status {
    GRPC_OK = 0,
    GRPC_CANCELLED = 1,
    GRPC_UNKNOWN = 2,
    GRPC_INVALID_ARGUMENT = 3,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_NOT_FOUND = 5,
    GRPC_ALREADY_EXISTS = 6,
    GRPC_PERMISSION_DENIED = 7,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_FAILED_PRECONDITION = 9,
    GRPC_ABORTED = 10,
    GRPC_OUT_OF_RANGE = 11,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14,
    GRPC_DATA_LOSS = 15,
    GRPC_UNAUTHENTICATED = 16,
};

/* "OK", "INVALID_ARGUMENT", ...; "UNKNOWN" for a code out of range. */
const char *grpc_status_name(int code);
/* Parse a grpc-status header value (decimal, 0..99). Returns the code, or
 * -1 when the value is not a number in range. Codes above 16 are returned
 * as they are; callers treat them as UNKNOWN. */
int grpc_status_parse(const char *s, size_t len);
/* Status a client reports for an HTTP response without grpc-status (grpc
 * doc/http-grpc-status-mapping.md). */
int grpc_status_from_http(int http_status);

/* --- message framing ------------------------------------------------------ */

#define GRPC_FRAME_HEADER 5 /* flag byte + 4-byte length */

/* Write a message prefix. */
void grpc_frame_header(uint8_t out[GRPC_FRAME_HEADER], bool compressed,
                       uint32_t len);
/* Append prefix and payload (uncompressed) to out. len < 2^32. */
void grpc_frame_append(struct pz_buf *out, const void *msg, size_t len);

enum {
    GRPC_READ_MORE = 0,    /* all input consumed, no whole message yet */
    GRPC_READ_MESSAGE = 1, /* a message is complete: r->msg, r->compressed */
    GRPC_READ_TOO_BIG = 2, /* length prefix r->len over r->max: dead */
};

struct grpc_reader {
    size_t max;                     /* largest payload accepted, bytes */
    uint8_t hdr[GRPC_FRAME_HEADER]; /* prefix being assembled */
    size_t hdr_have;                /* bytes of hdr received */
    bool compressed;                /* flag byte of the current message */
    uint32_t len;                   /* payload length of the current one */
    struct pz_buf msg;              /* payload received so far */
    bool ready;                     /* msg complete, waiting for next() */
    bool dead;                      /* TOO_BIG was returned */
    uint64_t messages;              /* whole messages returned so far */
};

void grpc_reader_init(struct grpc_reader *r, size_t max);
void grpc_reader_free(struct grpc_reader *r);
/* Consume input up to the end of the next message. *used says how many
 * bytes were taken; on GRPC_READ_MESSAGE the rest belongs to later
 * messages: call grpc_reader_next() and feed it again. Feeding a reader
 * that holds a ready message, or a dead one, consumes nothing and returns
 * the same result again. */
int grpc_reader_feed(struct grpc_reader *r, const uint8_t *p, size_t len,
                     size_t *used);
/* Forget the ready message and wait for the next prefix (a buffer that
 * grew past 64 KiB for it is freed). */
void grpc_reader_next(struct grpc_reader *r);
/* True when part of a message (prefix or payload) has arrived but not the
 * whole of it: at the end of the stream this means truncation. */
bool grpc_reader_partial(const struct grpc_reader *r);

/* --- HTTP/2 frame boundaries ---------------------------------------------
 * A server-side scanner of the client's byte stream that only tracks
 * where frames begin and end (the 24-byte client preface, then 9-byte
 * frame headers and their payloads) and whether a header block is open:
 * from a HEADERS or PUSH_PROMISE frame without END_HEADERS to the end of
 * the CONTINUATION frame that carries it (RFC 9113 6.10). Nothing else of
 * HTTP/2 is checked here: nghttp2 parses the same bytes. The server times
 * the preface and header blocks with it, which nghttp2 does not expose. */

#define GRPC_H2_PREFACE_LEN 24 /* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */

struct grpc_h2_scan {
    size_t preface_left;   /* bytes of the client preface still to come */
    uint8_t hdr[9];        /* frame header being assembled */
    size_t hdr_have;       /* bytes of hdr received */
    uint32_t payload_left; /* payload bytes of the current frame to come */
    uint8_t type;          /* current frame's type */
    uint8_t flags;         /* current frame's flags */
    bool in_payload;       /* a frame header is complete, payload due */
    bool in_block;         /* a header block is open */
    uint64_t blocks;       /* header blocks opened so far */
    bool settings_done;    /* the client's first SETTINGS frame is in */
};

void grpc_h2_scan_init(struct grpc_h2_scan *s);
void grpc_h2_scan_feed(struct grpc_h2_scan *s, const uint8_t *p, size_t len);
/* True until the preface and the first SETTINGS frame have arrived. */
bool grpc_h2_scan_in_preface(const struct grpc_h2_scan *s);
/* True while a header block is open: from the moment the header of its
 * HEADERS frame is complete until the frame with END_HEADERS is. */
bool grpc_h2_scan_in_headers(const struct grpc_h2_scan *s);

/* --- headers -------------------------------------------------------------- */

/* Parse a grpc-timeout value: 1 to 8 ASCII digits and a unit (H hours,
 * M minutes, S seconds, m milliseconds, u microseconds, n nanoseconds).
 * Stores the timeout in milliseconds, rounded up (so "1n" is 1 ms and "0m"
 * is 0: already expired). Returns 0 or PZ_EINVAL. */
int grpc_timeout_parse(const char *s, size_t len, uint64_t *ms);
/* Format a timeout in milliseconds as the shortest exact grpc-timeout
 * value with at most 8 digits (coarser units round up). out must hold at
 * least 16 bytes; returns the length written (NUL-terminated). */
size_t grpc_timeout_format(uint64_t ms, char *out, size_t outlen);

/* Percent-encode msg for the grpc-message header: bytes outside 0x20-0x7E
 * and '%' itself become %XX. At most max_out bytes are appended; a message
 * that does not fit is cut at a character boundary (never inside an escape
 * or inside a UTF-8 sequence). */
void grpc_message_encode(struct pz_buf *out, const char *msg, size_t len,
                         size_t max_out);
/* Decode a grpc-message value; malformed escapes are kept as they are. The
 * result is NUL-terminated (not counted in out->len). */
void grpc_message_decode(struct pz_buf *out, const char *s, size_t len);

/* True for application/grpc, application/grpc+<subtype> and
 * application/grpc;<params> (ASCII case-insensitive). */
bool grpc_content_type_ok(const char *v, size_t len);

#endif
