/* pbjson.c - protobuf messages <-> JSON as etcd's gateway maps them
 * (pbjson.h). */
#include "pbjson.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc_pb.h"
#include "http_parse.h"

#define NAME_MAX_LEN 128 /* longer member names match no field */
#define PATH_MAX_LEN 200 /* field path kept for error messages */

/* --- JSON -> wire ----------------------------------------------------------
 */

struct dec {
    char *err;
    size_t errlen;
    char path[PATH_MAX_LEN]; /* field being read, for errors */
};

static int fail(struct dec *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int fail(struct dec *d, const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (d->path[0])
        snprintf(d->err, d->errlen, "%s: %s", d->path, why);
    else
        snprintf(d->err, d->errlen, "%s", why);
    return PZ_EINVAL;
}

/* The lowerCamelCase JSON name protoc derives from a field name. */
static void camel(const char *name, char *out, size_t cap)
{
    size_t n = 0;
    bool up = false;
    for (; *name && n + 1 < cap; name++) {
        if (*name == '_') {
            up = true;
            continue;
        }
        char c = *name;
        if (up && c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        up = false;
        out[n++] = c;
    }
    out[n] = 0;
}

static const ProtobufCFieldDescriptor *
find_field(const ProtobufCMessageDescriptor *md, const struct json_val *name)
{
    struct pz_buf nb;
    pz_buf_init(&nb);
    json_str(name, &nb);
    const ProtobufCFieldDescriptor *found = NULL;
    if (nb.len < NAME_MAX_LEN && memchr(nb.data ? nb.data : "", 0, nb.len) ==
                                     NULL) {
        char cn[NAME_MAX_LEN];
        for (unsigned i = 0; i < md->n_fields && !found; i++) {
            const ProtobufCFieldDescriptor *f = &md->fields[i];
            if (strlen(f->name) == nb.len &&
                memcmp(f->name, nb.data, nb.len) == 0) {
                found = f;
                break;
            }
            camel(f->name, cn, sizeof cn);
            if (strlen(cn) == nb.len && memcmp(cn, nb.data, nb.len) == 0)
                found = f;
        }
    }
    pz_buf_free(&nb);
    return found;
}

/* An integer's text: "-?[0-9]+", into *neg and *mag (exact, <= 2^64-1).
 * Returns 0, 1 when it is over 2^64-1, or PZ_EINVAL. */
static int int_text(const char *s, size_t n, bool *neg, uint64_t *mag)
{
    *neg = false;
    if (n && s[0] == '-') {
        *neg = true;
        s++, n--;
    }
    if (n == 0)
        return PZ_EINVAL;
    uint64_t x = 0;
    bool overflow = false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return PZ_EINVAL;
        unsigned dg = (unsigned)(s[i] - '0');
        if (x > (UINT64_MAX - dg) / 10)
            overflow = true;
        else
            x = x * 10 + dg;
    }
    *mag = overflow ? UINT64_MAX : x;
    return overflow ? 1 : 0;
}

/* Read an integer field value (number or string) into a signed or
 * unsigned 64-bit value within [lo, hi] (signed) or [0, uhi]. */
static int read_int(struct dec *d, const struct json_val *v, bool is_signed,
                    int64_t lo, int64_t hi, uint64_t uhi, uint64_t *out)
{
    bool neg;
    uint64_t mag;
    int rv;
    if (v->type == JSON_NUMBER) {
        rv = int_text(v->s, v->len, &neg, &mag);
    } else if (v->type == JSON_STRING) {
        struct pz_buf t;
        pz_buf_init(&t);
        json_str(v, &t);
        rv = int_text(t.data ? t.data : "", t.len, &neg, &mag);
        pz_buf_free(&t);
    } else {
        return fail(d, "not an integer");
    }
    if (rv < 0)
        return fail(d, "not an integer");
    if (rv > 0)
        return fail(d, "integer out of range");
    if (!is_signed) {
        if (neg && mag != 0)
            return fail(d, "negative value for an unsigned field");
        if (mag > uhi)
            return fail(d, "integer out of range");
        *out = mag;
        return 0;
    }
    if (neg) {
        if (mag > (uint64_t)(-(lo + 1)) + 1)
            return fail(d, "integer out of range");
        *out = mag == 0 ? 0 : (uint64_t)(-(int64_t)(mag - 1) - 1);
    } else {
        if (mag > (uint64_t)hi)
            return fail(d, "integer out of range");
        *out = mag;
    }
    return 0;
}

static int read_double(struct dec *d, const struct json_val *v, double *out)
{
    if (v->type == JSON_STRING) {
        if (json_str_is(v, "NaN", 3))
            *out = NAN;
        else if (json_str_is(v, "Infinity", 8))
            *out = INFINITY;
        else if (json_str_is(v, "-Infinity", 9))
            *out = -INFINITY;
        else
            return fail(d, "not a number");
        return 0;
    }
    if (v->type != JSON_NUMBER || v->len > 64)
        return fail(d, "not a number");
    char t[65];
    memcpy(t, v->s, v->len);
    t[v->len] = 0;
    *out = strtod(t, NULL);
    if (isinf(*out))
        return fail(d, "number out of range");
    return 0;
}

static int decode_message(struct dec *d, const ProtobufCMessageDescriptor *md,
                          const struct json_val *obj, struct pz_buf *out);

/* One value of field f (an element, for a repeated field) to out. */
static int decode_value(struct dec *d, const ProtobufCFieldDescriptor *f,
                        const struct json_val *v, struct pz_buf *out)
{
    uint64_t u = 0;
    double x = 0;
    int rv;
    if (v->type == JSON_NULL)
        return fail(d, "null is not allowed here");
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if ((rv = read_int(d, v, true, INT32_MIN, INT32_MAX, 0, &u)) < 0)
            return rv;
        if (f->type == PROTOBUF_C_TYPE_SFIXED32) {
            grpc_pb_put_fixed(out, f->id, GRPC_PB_I32,
                              (uint32_t)(int32_t)(int64_t)u);
        } else if (f->type == PROTOBUF_C_TYPE_SINT32) {
            int32_t s = (int32_t)(int64_t)u;
            grpc_pb_put_varint(out, f->id,
                               ((uint32_t)s << 1) ^ (uint32_t)(s >> 31));
        } else {
            grpc_pb_put_varint(out, f->id,
                               u); /* sign-extended, as protobuf writes it */
        }
        return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        if ((rv = read_int(d, v, true, INT64_MIN, INT64_MAX, 0, &u)) < 0)
            return rv;
        if (f->type == PROTOBUF_C_TYPE_SFIXED64) {
            grpc_pb_put_fixed(out, f->id, GRPC_PB_I64, u);
        } else if (f->type == PROTOBUF_C_TYPE_SINT64) {
            int64_t s = (int64_t)u;
            grpc_pb_put_varint(out, f->id, (u << 1) ^ (uint64_t)(s >> 63));
        } else {
            grpc_pb_put_varint(out, f->id, u);
        }
        return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if ((rv = read_int(d, v, false, 0, 0, UINT32_MAX, &u)) < 0)
            return rv;
        if (f->type == PROTOBUF_C_TYPE_FIXED32) {
            grpc_pb_put_fixed(out, f->id, GRPC_PB_I32, u);
        } else {
            grpc_pb_put_varint(out, f->id, u);
        }
        return 0;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if ((rv = read_int(d, v, false, 0, 0, UINT64_MAX, &u)) < 0)
            return rv;
        if (f->type == PROTOBUF_C_TYPE_FIXED64) {
            grpc_pb_put_fixed(out, f->id, GRPC_PB_I64, u);
        } else {
            grpc_pb_put_varint(out, f->id, u);
        }
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        if (v->type != JSON_TRUE && v->type != JSON_FALSE)
            return fail(d, "not true or false");
        grpc_pb_put_varint(out, f->id, v->type == JSON_TRUE);
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        if ((rv = read_double(d, v, &x)) < 0)
            return rv;
        if (f->type == PROTOBUF_C_TYPE_FLOAT) {
            float fl = (float)x;
            uint32_t bits;
            if (isinf(fl) && !isinf(x))
                return fail(d, "number out of range");
            memcpy(&bits, &fl, 4);
            grpc_pb_put_fixed(out, f->id, GRPC_PB_I32, bits);
        } else {
            uint64_t bits;
            memcpy(&bits, &x, 8);
            grpc_pb_put_fixed(out, f->id, GRPC_PB_I64, bits);
        }
        return 0;
    case PROTOBUF_C_TYPE_ENUM: {
        const ProtobufCEnumDescriptor *ed = f->descriptor;
        if (v->type == JSON_NUMBER) {
            if ((rv = read_int(d, v, true, INT32_MIN, INT32_MAX, 0, &u)) < 0)
                return rv;
        } else if (v->type == JSON_STRING) {
            unsigned i;
            for (i = 0; i < ed->n_values; i++)
                if (json_str_is(v, ed->values[i].name,
                                strlen(ed->values[i].name)))
                    break;
            if (i == ed->n_values)
                return fail(d, "unknown value for enum %s", ed->name);
            u = (uint64_t)(int64_t)ed->values[i].value;
        } else {
            return fail(d, "not an enum value name or number");
        }
        grpc_pb_put_varint(out, f->id, u);
        return 0;
    }
    case PROTOBUF_C_TYPE_STRING: {
        if (v->type != JSON_STRING)
            return fail(d, "not a string");
        struct pz_buf s;
        pz_buf_init(&s);
        json_str(v, &s);
        const char *p = s.data ? s.data : "";
        if (memchr(p, 0, s.len) || !pz_utf8_valid(p, s.len)) {
            pz_buf_free(&s);
            return fail(d, "string is not valid UTF-8 without NUL");
        }
        grpc_pb_put_bytes(out, f->id, p, s.len);
        pz_buf_free(&s);
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        if (v->type != JSON_STRING)
            return fail(d, "not a base64 string");
        struct pz_buf s, raw;
        pz_buf_init(&s);
        pz_buf_init(&raw);
        json_str(v, &s);
        rv = http_b64_decode(&raw, s.data ? s.data : "", s.len);
        pz_buf_free(&s);
        if (rv == 0)
            grpc_pb_put_bytes(out, f->id, raw.data ? raw.data : "", raw.len);
        pz_buf_free(&raw);
        if (rv < 0)
            return fail(d, "not valid base64 (standard alphabet, padded)");
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        if (v->type != JSON_OBJECT)
            return fail(d, "not an object");
        struct pz_buf sub;
        pz_buf_init(&sub);
        rv = decode_message(d, f->descriptor, v, &sub);
        if (rv == 0)
            grpc_pb_put_bytes(out, f->id, sub.data ? sub.data : "", sub.len);
        pz_buf_free(&sub);
        return rv;
    }
    }
    return fail(d, "unsupported field type");
}

static int decode_message(struct dec *d, const ProtobufCMessageDescriptor *md,
                          const struct json_val *obj, struct pz_buf *out)
{
    struct json_iter it;
    struct json_val name, v;
    size_t plen = strlen(d->path);
    json_iter_init(&it, obj);
    while (json_iter_next(&it, &name, &v)) {
        const ProtobufCFieldDescriptor *f = find_field(md, &name);
        if (f == NULL || v.type == JSON_NULL)
            continue; /* unknown members are ignored, as etcd does */
        snprintf(d->path + plen, sizeof d->path - plen, "%s%s",
                 plen ? "." : "", f->name);
        int rv;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            if (v.type != JSON_ARRAY)
                return fail(d, "not an array");
            struct json_iter ai;
            struct json_val e;
            size_t flen = strlen(d->path), i = 0;
            json_iter_init(&ai, &v);
            while (json_iter_next(&ai, NULL, &e)) {
                snprintf(d->path + flen, sizeof d->path - flen, "[%zu]", i++);
                if ((rv = decode_value(d, f, &e, out)) < 0)
                    return rv;
            }
        } else if ((rv = decode_value(d, f, &v, out)) < 0) {
            return rv;
        }
        d->path[plen] = 0;
    }
    return 0;
}

int pbjson_decode(const ProtobufCMessageDescriptor *md, const char *doc,
                  size_t len, struct pz_buf *out, char *err, size_t errlen)
{
    struct dec d = {.err = err, .errlen = errlen};
    struct json_val root;
    size_t i = 0;
    while (i < len && (doc[i] == ' ' || doc[i] == '\t' || doc[i] == '\n' ||
                       doc[i] == '\r'))
        i++;
    if (i == len)
        return 0; /* no body: the empty message */
    if (json_parse(doc, len, &root) < 0)
        return fail(&d, "the body is not valid JSON");
    if (root.type == JSON_NULL)
        return 0;
    if (root.type != JSON_OBJECT)
        return fail(&d, "the body is not a JSON object");
    return decode_message(&d, md, &root, out);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int pbjson_next_object(const char *doc, size_t len, size_t *off,
                       size_t *start, size_t *vlen)
{
    size_t i = *off;
    while (i < len && is_space(doc[i]))
        i++;
    if (i == len) {
        *off = len;
        return 0;
    }
    if (doc[i] != '{')
        return PZ_EINVAL;
    char open[JSON_MAX_DEPTH]; /* the brackets open, innermost last */
    size_t depth = 0, b = i;
    bool in_str = false;
    for (; i < len; i++) {
        char c = doc[i];
        if (in_str) {
            if (c == '\\')
                i++; /* the escaped byte */
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            if (depth == JSON_MAX_DEPTH)
                return PZ_EINVAL; /* json_parse would refuse it too */
            open[depth++] = c;
        } else if (c == '}' || c == ']') {
            if (open[depth - 1] != (c == '}' ? '{' : '['))
                return PZ_EINVAL; /* a bracket that closes another */
            if (--depth == 0) {
                *start = b;
                *vlen = i + 1 - b;
                *off = i + 1;
                return 1;
            }
        }
    }
    return PZ_EINVAL;
}

/* --- message -> JSON -------------------------------------------------------
 */

static void put_name(struct pz_buf *b, bool *first, const char *name)
{
    if (!*first)
        pz_buf_append(b, ",", 1);
    *first = false;
    json_put_string(b, name, strlen(name));
    pz_buf_append(b, ":", 1);
}

static void put_double(struct pz_buf *b, double x)
{
    if (isnan(x))
        pz_buf_appendf(b, "\"NaN\"");
    else if (isinf(x))
        pz_buf_appendf(b, x > 0 ? "\"Infinity\"" : "\"-Infinity\"");
    else
        pz_buf_appendf(b, "%.17g", x);
}

/* One value of f stored at p. */
static void encode_value(struct pz_buf *b, const ProtobufCFieldDescriptor *f,
                         const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        pz_buf_appendf(b, "%d", (int)*(const int32_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        pz_buf_appendf(b, "%u", (unsigned)*(const uint32_t *)p);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        pz_buf_appendf(b, "\"%lld\"", (long long)*(const int64_t *)p);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        pz_buf_appendf(b, "\"%llu\"",
                       (unsigned long long)*(const uint64_t *)p);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        pz_buf_appendf(b, "%s",
                       *(const protobuf_c_boolean *)p ? "true" : "false");
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        put_double(b, *(const float *)p);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        put_double(b, *(const double *)p);
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        int32_t v = *(const int32_t *)p;
        const ProtobufCEnumValue *ev =
            protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        if (ev)
            json_put_string(b, ev->name, strlen(ev->name));
        else
            pz_buf_appendf(b, "%d", (int)v);
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        json_put_string(b, s ? s : "", s ? strlen(s) : 0);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bd = p;
        pz_buf_append(b, "\"", 1);
        http_b64_encode(b, bd->data, bd->len);
        pz_buf_append(b, "\"", 1);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(ProtobufCMessage *const *)p;
        if (m)
            pbjson_encode(m, b);
        else
            pz_buf_append(b, "{}", 2);
        break;
    }
    }
}

static size_t value_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    default:
        return 4;
    }
}

/* Does the value at p equal the field's default (proto3: zero/empty)? */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return s == NULL || s[0] == 0;
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(ProtobufCMessage *const *)p == NULL;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p == 0 && !signbit(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p == 0 && !signbit(*(const double *)p);
    default: {
        static const uint8_t zero[8];
        return memcmp(p, zero, value_size(f)) == 0;
    }
    }
}

void pbjson_encode(const ProtobufCMessage *m, struct pz_buf *b)
{
    const ProtobufCMessageDescriptor *md = m->descriptor;
    const char *base = (const char *)m;
    bool first = true;
    pz_buf_append(b, "{", 1);
    for (unsigned i = 0; i < md->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &md->fields[i];
        const void *p = base + f->offset;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            const char *arr = *(char *const *)p;
            if (n == 0 || arr == NULL)
                continue;
            put_name(b, &first, f->name);
            pz_buf_append(b, "[", 1);
            for (size_t j = 0; j < n; j++) {
                if (j)
                    pz_buf_append(b, ",", 1);
                encode_value(b, f, arr + j * value_size(f));
            }
            pz_buf_append(b, "]", 1);
            continue;
        }
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which = *(const uint32_t *)(base + f->quantifier_offset);
            if (which != f->id)
                continue;
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
                   f->quantifier_offset &&
                   f->type != PROTOBUF_C_TYPE_STRING &&
                   f->type != PROTOBUF_C_TYPE_MESSAGE) {
            if (!*(const protobuf_c_boolean *)(base + f->quantifier_offset))
                continue;
        } else if (f->label != PROTOBUF_C_LABEL_REQUIRED &&
                   is_default(f, p)) {
            continue;
        }
        put_name(b, &first, f->name);
        encode_value(b, f, p);
    }
    pz_buf_append(b, "}", 1);
}

int pbjson_encode_wire(const ProtobufCMessageDescriptor *md,
                       const uint8_t *wire, size_t len, struct pz_buf *out)
{
    ProtobufCMessage *m = protobuf_c_message_unpack(md, NULL, len, wire);
    if (m == NULL)
        return PZ_EINVAL;
    pbjson_encode(m, out);
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}
