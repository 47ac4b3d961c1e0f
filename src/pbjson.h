/* pbjson.h - protobuf messages <-> JSON, driven by protobuf-c's
 * descriptors, in the mapping etcd 3.4's JSON gateway uses (grpc-gateway
 * with golang/protobuf's jsonpb, original field names, defaults omitted).
 * Pure: no I/O, no globals.
 *
 * JSON -> protobuf (pbjson_decode): the document must be one JSON object
 * (or null, or empty: the empty message), read by json.h's strict reader.
 * A member is a field named as in the .proto (`sort_order`) or in its
 * lowerCamelCase JSON name (`sortOrder`); unknown members are ignored, as
 * etcd's gateway ignores them; null leaves a field unset. Values:
 *  - 64- and 32-bit integers: a JSON integer or a string holding one
 *    (`"-12"`), exactly, within the field type's range; no fraction,
 *    exponent, sign on an unsigned field or spaces;
 *  - bool: true or false; enum: a value name or an int32 number;
 *  - string: a JSON string holding valid UTF-8 without NUL;
 *  - bytes: a string in standard base64 with padding (RFC 4648);
 *  - float, double: a number, or "NaN", "Infinity", "-Infinity";
 *  - message: an object; repeated: an array (no null elements).
 * Anything else fails with PZ_EINVAL and a one-line reason naming the
 * field's path (`success[0].request_put.key: not valid base64`). The
 * result is the protobuf wire encoding of the message (each field tagged
 * as protobuf-c unpacks it); nothing else is built.
 *
 * protobuf -> JSON (pbjson_encode): fields in tag order under their .proto
 * names; a field with its default value (0, false, empty, unset message,
 * empty repeated) is left out unless it is the member set of a oneof;
 * 64-bit integers as decimal strings, 32-bit ones as numbers, bytes as
 * standard base64, enums by name (a number when the value has none),
 * float and double as numbers ("NaN", "Infinity", "-Infinity" as strings).
 * Strings are escaped by json_put_string (invalid UTF-8 becomes U+FFFD). */
#ifndef PZ_PBJSON_H
#define PZ_PBJSON_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "pz.h"

/* Decode doc[0..len) as a message of type d, appending its wire encoding
 * to out. Returns 0, or PZ_EINVAL with a reason in err (out then holds
 * garbage to discard). */
int pbjson_decode(const ProtobufCMessageDescriptor *d, const char *doc,
                  size_t len, struct pz_buf *out, char *err, size_t errlen);

/* A stream of JSON objects, as a client-streaming call's body
 * (`{...}{...}`, white space between them allowed): the next one from
 * *off: returns 1 with it at doc[*start, *start + *vlen) and *off past
 * it, 0 at the end (only white space left), PZ_EINVAL when what follows
 * is not an object or does not end. Only the object's extent is found
 * here: pbjson_decode checks it. */
int pbjson_next_object(const char *doc, size_t len, size_t *off,
                       size_t *start, size_t *vlen);

/* Append m as a JSON object (no newline). */
void pbjson_encode(const ProtobufCMessage *m, struct pz_buf *out);

/* Unpack wire[0..len) as d and append it as JSON. Returns 0, or PZ_EINVAL
 * when the bytes are not a valid d. */
int pbjson_encode_wire(const ProtobufCMessageDescriptor *d,
                       const uint8_t *wire, size_t len, struct pz_buf *out);

#endif
