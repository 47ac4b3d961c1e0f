/* raft_codec.h - the wire format of the Raft peer protocol: encoding and
 * decoding between plain C structs (struct raft_msg from raft.h, the
 * handshake structs below) and length-prefixed protobuf frames
 * (proto/raft.proto), plus an incremental frame parser.
 *
 * A frame is a 4-byte big-endian body length followed by the body, one
 * pyazdb.raft.Frame message holding a Handshake, a HandshakeReply or a
 * RaftMessage. On a link whose handshake agreed on checksums
 * (frame_crc), each frame after the handshake is followed by a 4-byte
 * big-endian CRC-32C of its length prefix and body (RAFT_FRAME_CRC):
 * raft_codec_seal() appends it, a parser with `crc` set checks it. TCP's
 * 16-bit checksum lets corrupted segments through on a bad NIC or path;
 * this one makes such a frame close the link instead of reaching Raft.
 *
 * Happy path: the sender calls raft_codec_encode_*() to append a whole
 * frame to a pz_buf; the receiver feeds bytes as they arrive to
 * raft_frame_parser_feed(), which hands back one complete body at a time,
 * and raft_codec_decode() turns the body into C structs.
 * Failure modes: a length over the parser's maximum is PZ_ETOOBIG (the
 * stream cannot be resynchronised: close it); a body that is not valid
 * protobuf is PZ_ECORRUPT; valid protobuf that breaks the protocol rules
 * (no body, unknown message or entry type) is PZ_EPROTO. Nothing aborts on
 * peer input.
 *
 * Pure: no I/O, no libuv. Memory through pz_malloc. */
#ifndef RAFT_CODEC_H
#define RAFT_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pz.h"
#include "raft.h"

#define RAFT_PROTO_VERSION 1 /* the one version spoken and accepted */
#define RAFT_FRAME_HDR 4     /* bytes of the length prefix */
#define RAFT_FRAME_CRC 4     /* bytes of the checksum after a frame */
/* Largest body accepted by default: room for a 64 MiB payload (a future
 * snapshot chunk or a large entry) plus the message around it. */
#define RAFT_FRAME_MAX (64u * 1024 * 1024 + 1024 * 1024)

/* Handshake status codes; the numbers are HandshakeReply.Status. */
enum raft_hs_status {
    RAFT_HS_UNSPECIFIED = 0,        /* never sent; a reply without status */
    RAFT_HS_OK = 1,                 /* accepted */
    RAFT_HS_BAD_VERSION = 2,        /* unknown protocol version */
    RAFT_HS_CLUSTER_MISMATCH = 3,   /* another cluster's id */
    RAFT_HS_DUPLICATE_ID = 4,       /* sender id equals the acceptor's own */
    RAFT_HS_BAD_TOKEN = 5,          /* cluster token differs */
    RAFT_HS_WRONG_NODE = 6,         /* target id is not the acceptor's id */
    RAFT_HS_BAD_HANDSHAKE = 7,      /* sender id 0 or similar */
    RAFT_HS_NOT_MEMBER = 8,         /* reserved: not sent by this version */
    RAFT_HS_REMOVED = 9,            /* dialer removed (conf_index) */
    RAFT_HS_OTHER_INCARNATION = 10, /* dialer's id is a member with another
                                       data dir */
};

/* Short text for a status ("cluster id mismatch"); never NULL. */
const char *raft_hs_status_str(uint32_t status);

struct raft_handshake {
    uint32_t version;    /* RAFT_PROTO_VERSION */
    uint64_t cluster_id; /* dialer's cluster */
    uint64_t node_id;    /* dialer's id */
    uint64_t target_id;  /* id the dialer expects to reach, 0: any */
    const char *name;    /* dialer's name (NULL: "") */
    const char *token;   /* cluster token (NULL: "") */
    const char *http_addr; /* dialer's HTTP API address (NULL: "") */
    const char *grpc_addr; /* dialer's gRPC API address (NULL: "") */
    const char *raft_addr; /* dialer's Raft listen address (NULL: "") */
    uint64_t incarnation;  /* dialer's data dir */
    uint64_t member_since; /* conf entry it is a member from (0: none) */
    bool frame_crc;        /* dialer can send frame checksums */
};

struct raft_handshake_reply {
    uint32_t status;     /* enum raft_hs_status */
    uint32_t version;    /* acceptor's protocol version */
    uint64_t node_id;    /* acceptor's id (OK only) */
    const char *name;    /* acceptor's name (OK only; NULL: "") */
    const char *http_addr; /* acceptor's HTTP API address (NULL: "") */
    const char *grpc_addr; /* acceptor's gRPC API address (NULL: "") */
    uint64_t conf_index; /* REMOVED: index of the configuration entry */
    uint64_t conf_term;  /* REMOVED: its term */
    uint64_t incarnation; /* acceptor's data dir (OK only) */
    uint64_t member_since; /* acceptor's, as in the handshake (OK only) */
    bool frame_crc;        /* OK: the dialer's frames carry a checksum */
};

/* --- encoding --------------------------------------------------------- */

/* Each appends one whole frame (length prefix and body) to out. Nothing of
 * the input is kept. Return 0, or PZ_ETOOBIG when the body would exceed
 * max (out unchanged). */
int raft_codec_encode_handshake(struct pz_buf *out,
                                const struct raft_handshake *h, size_t max);
int raft_codec_encode_reply(struct pz_buf *out,
                            const struct raft_handshake_reply *r, size_t max);
/* A piece of a snapshot file (InstallSnapshot streaming). */
struct raft_snap_chunk {
    uint64_t term;       /* sender's current term (it leads in it) */
    uint64_t snap_index; /* snapshot's last index */
    uint64_t snap_term;  /* and term */
    uint64_t offset;     /* position of data in the file */
    uint64_t total;      /* file size */
    const uint8_t *data; /* bytes (borrowed) */
    size_t len;          /* their number */
};
int raft_codec_encode_chunk(struct pz_buf *out,
                            const struct raft_snap_chunk *c, size_t max);
int raft_codec_encode_msg(struct pz_buf *out, const struct raft_msg *m,
                          size_t max);
/* Appends the checksum of the frame that starts at out->data + start and
 * runs to the end of out (RAFT_FRAME_CRC bytes). */
void raft_codec_seal(struct pz_buf *out, size_t start);

/* --- decoding ----------------------------------------------------------- */

enum raft_frame_kind {
    RAFT_FRAME_HANDSHAKE = 1, /* d.hs is valid */
    RAFT_FRAME_REPLY = 2,     /* d.reply is valid */
    RAFT_FRAME_MESSAGE = 3,   /* d.msg is valid */
    RAFT_FRAME_CHUNK = 4,     /* d.chunk is valid */
};

/* A decoded frame. Entries point into memory owned by this struct, valid
 * until raft_decoded_free(); strings, entry payloads, snap_data and chunk
 * data point into this struct or into the body that was decoded: valid
 * while both are (keep the body until raft_decoded_free(), and copy what
 * must outlive it). */
struct raft_decoded {
    int kind;                          /* enum raft_frame_kind */
    struct raft_handshake hs;          /* RAFT_FRAME_HANDSHAKE */
    struct raft_handshake_reply reply; /* RAFT_FRAME_REPLY */
    struct raft_msg msg;               /* RAFT_FRAME_MESSAGE */
    struct raft_snap_chunk chunk;      /* RAFT_FRAME_CHUNK */
    void *pb;                          /* private: the unpacked protobuf */
};

/* Decodes one frame body (without its length prefix). The memory a decode
 * may take is bounded by what the frame can carry: its bytes twice over
 * plus RAFT_DECODE_SLACK, room for the entry structures of the largest
 * batch a leader sends (RAFT_MAX_BYTES_PER_MSG over RAFT_ENTRY_OVERHEAD
 * entries). A frame packed with empty entries is refused before it makes
 * the decoder allocate much more than itself.
 * Returns 0 (free d with raft_decoded_free), PZ_ECORRUPT (not protobuf),
 * PZ_EPROTO (no body, message type outside
 * RAFT_MSG_APPEND..RAFT_MSG_TYPE_MAX-1, entry type other than
 * NORMAL/CONF/NOOP, a chunk past its total), PZ_ETOOBIG (over the decode
 * limit), PZ_ENOMEM (allocation failed). On error d holds nothing to free
 * (raft_decoded_free is still harmless).
 * RaftMessage and SnapshotChunk frames are decoded by hand without
 * copying payloads; a few encodings protobuf-c would accept by
 * truncating or merging are PZ_ECORRUPT here (raft_codec.c lists them). */
#define RAFT_DECODE_SLACK (8u * 1024 * 1024)
int raft_codec_decode(const uint8_t *body, size_t len, struct raft_decoded *d);
/* The same through protobuf-c's generic unpacker, payloads copied: what
 * raft_codec_decode uses for handshakes, and the reference the tests
 * compare it against. */
int raft_codec_decode_pb(const uint8_t *body, size_t len,
                         struct raft_decoded *d);
void raft_decoded_free(struct raft_decoded *d);

/* --- incremental frame parser ------------------------------------------ */

struct raft_frame_parser {
    size_t max;                  /* largest body accepted */
    bool crc;                    /* frames carry a checksum: set it between
                                    frames (after the handshake) */
    uint8_t hdr[RAFT_FRAME_HDR]; /* length prefix received so far */
    size_t hdr_len;              /* bytes of hdr filled */
    size_t body_len; /* announced body length (valid once hdr full) */
    uint8_t *buf;    /* body assembled across feeds (pz_malloc) */
    size_t have;     /* body bytes in buf */
    size_t cap;      /* bytes allocated for buf */
};

enum {
    RAFT_FRAME_NEED_MORE = 0, /* all input consumed, no frame complete */
    RAFT_FRAME_DONE = 1,      /* one frame complete */
};

void raft_frame_parser_init(struct raft_frame_parser *p, size_t max);
void raft_frame_parser_free(struct raft_frame_parser *p);

/* Consumes input up to the end of at most one frame (its checksum
 * included when p->crc): *used says how many bytes of data were taken.
 * Returns RAFT_FRAME_DONE with *body and *body_len set to the complete
 * body (pointing into data when it arrived in one piece, else into the
 * parser's buffer; valid until the next call), RAFT_FRAME_NEED_MORE when
 * data ran out first (then *used == len), PZ_ETOOBIG when the announced
 * length exceeds max (p->body_len holds it), or PZ_ECORRUPT when the
 * checksum does not match; after either error the stream is unusable.
 * Bodies are never buffered beyond what arrived, so a bare length prefix
 * does not allocate its length. */
int raft_frame_parser_feed(struct raft_frame_parser *p, const uint8_t *data,
                           size_t len, size_t *used, const uint8_t **body,
                           size_t *body_len);

#endif
