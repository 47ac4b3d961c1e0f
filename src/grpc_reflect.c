/* grpc_reflect.c - see grpc_reflect.h. Pure.
 *
 * The descriptors are walked with the wire-format reader of grpc_pb.h
 * rather than a generated descriptor.proto binding: only names matter here
 * (FileDescriptorProto name = 1, package = 2, dependency = 3,
 * message_type = 4, enum_type = 5, service = 6; DescriptorProto name = 1,
 * nested_type = 3, enum_type = 4; ServiceDescriptorProto name = 1,
 * method = 2; Method/EnumDescriptorProto name = 1). */
#include "grpc_reflect.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/reflection/v1/reflection.pb-c.h"
#include "grpc_frame.h"
#include "grpc_pb.h"

struct index_ctx {
    struct grpc_reflect *r; /* being built */
    size_t cap_symbols;     /* allocated entries of r->symbols */
};

/* The first field `num` of type LEN in a message, or an empty span. */
static int find_string(const uint8_t *p, size_t len, uint32_t num,
                       const uint8_t **s, size_t *slen)
{
    const uint8_t *end = p + len;
    struct grpc_pb_field f;
    int rv;
    *s = (const uint8_t *)"";
    *slen = 0;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        if (f.num == num && f.wire == GRPC_PB_LEN) {
            *s = f.data;
            *slen = f.len;
            return 0;
        }
    }
    return rv < 0 ? PZ_EINVAL : 0;
}

static char *join(const char *prefix, const uint8_t *name, size_t nlen)
{
    size_t pl = strlen(prefix);
    char *s = pz_malloc(pl + 1 + nlen + 1);
    size_t o = 0;
    if (pl) {
        memcpy(s, prefix, pl);
        s[pl] = '.';
        o = pl + 1;
    }
    memcpy(s + o, name, nlen);
    s[o + nlen] = '\0';
    return s;
}

static void add_symbol(struct index_ctx *x, char *name, size_t file, int kind)
{
    struct grpc_reflect *r = x->r;
    if (r->n_symbols == x->cap_symbols) {
        x->cap_symbols = x->cap_symbols ? 2 * x->cap_symbols : 64;
        r->symbols =
            pz_realloc(r->symbols, x->cap_symbols * sizeof *r->symbols);
    }
    r->symbols[r->n_symbols++] =
        (struct grpc_reflect_symbol){.name = name, .file = file, .kind = kind};
}

/* A named child (message, enum, service, method): add it, return its full
 * name through *full (owned by the index). */
static int add_named(struct index_ctx *x, const uint8_t *p, size_t len,
                     const char *prefix, size_t file, int kind,
                     const char **full)
{
    const uint8_t *name;
    size_t nlen;
    if (find_string(p, len, 1, &name, &nlen) < 0 || nlen == 0 ||
        memchr(name, '\0', nlen) != NULL)
        return PZ_EINVAL;
    char *s = join(prefix, name, nlen);
    add_symbol(x, s, file, kind);
    *full = s;
    return 0;
}

static int walk_message(struct index_ctx *x, const uint8_t *p, size_t len,
                        const char *prefix, size_t file, int depth)
{
    const char *full;
    if (depth > 32 ||
        add_named(x, p, len, prefix, file, GRPC_REFLECT_MESSAGE, &full) < 0)
        return PZ_EINVAL;
    const uint8_t *end = p + len;
    struct grpc_pb_field f;
    int rv;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        if (f.wire != GRPC_PB_LEN)
            continue;
        if (f.num == 3)
            rv = walk_message(x, f.data, f.len, full, file, depth + 1);
        else if (f.num == 4)
            rv = add_named(x, f.data, f.len, full, file, GRPC_REFLECT_ENUM,
                           &(const char *){NULL});
        if (rv < 0)
            return rv;
    }
    return rv;
}

static int walk_service(struct index_ctx *x, const uint8_t *p, size_t len,
                        const char *prefix, size_t file)
{
    const char *full;
    if (add_named(x, p, len, prefix, file, GRPC_REFLECT_SERVICE, &full) < 0)
        return PZ_EINVAL;
    const uint8_t *end = p + len;
    struct grpc_pb_field f;
    int rv;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        if (f.num == 2 && f.wire == GRPC_PB_LEN &&
            add_named(x, f.data, f.len, full, file, GRPC_REFLECT_METHOD,
                      &(const char *){NULL}) < 0)
            return PZ_EINVAL;
    }
    return rv;
}

/* Index one FileDescriptorProto. Dependencies are recorded by name in
 * dep_names and resolved once every file is known. */
static int walk_file(struct index_ctx *x, size_t file, struct pz_buf *deps)
{
    struct grpc_reflect_file *fd = &x->r->files[file];
    const uint8_t *name, *pkg;
    size_t nlen, plen;
    if (find_string(fd->data, fd->len, 1, &name, &nlen) < 0 || nlen == 0 ||
        find_string(fd->data, fd->len, 2, &pkg, &plen) < 0 ||
        memchr(name, '\0', nlen) || memchr(pkg, '\0', plen))
        return PZ_EINVAL;
    fd->name = pz_strndup((const char *)name, nlen);
    char *package = pz_strndup((const char *)pkg, plen);
    const uint8_t *p = fd->data, *end = fd->data + fd->len;
    struct grpc_pb_field f;
    int rv;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        if (f.wire != GRPC_PB_LEN)
            continue;
        switch (f.num) {
        case 3: { /* dependency: remember (file, name) */
            size_t rec[3] = {file, (size_t)(f.data - fd->data), f.len};
            pz_buf_append(deps, rec, sizeof rec);
            break;
        }
        case 4:
            rv = walk_message(x, f.data, f.len, package, file, 0);
            break;
        case 5:
            rv = add_named(x, f.data, f.len, package, file, GRPC_REFLECT_ENUM,
                           &(const char *){NULL});
            break;
        case 6:
            rv = walk_service(x, f.data, f.len, package, file);
            break;
        }
        if (rv < 0)
            break;
    }
    pz_free(package);
    return rv < 0 ? PZ_EINVAL : 0;
}

static int cmp_symbol(const void *a, const void *b)
{
    const struct grpc_reflect_symbol *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static int resolve_deps(struct grpc_reflect *r, const struct pz_buf *deps)
{
    const size_t *rec = (const size_t *)deps->data;
    size_t n = deps->len / (3 * sizeof(size_t));
    for (size_t i = 0; i < n; i++, rec += 3) {
        struct grpc_reflect_file *fd = &r->files[rec[0]];
        const char *dname = (const char *)fd->data + rec[1];
        size_t dlen = rec[2];
        for (size_t k = 0; k < r->n_files; k++) {
            if (strlen(r->files[k].name) == dlen &&
                memcmp(r->files[k].name, dname, dlen) == 0) {
                fd->deps =
                    pz_realloc(fd->deps, (fd->n_deps + 1) * sizeof *fd->deps);
                fd->deps[fd->n_deps++] = k;
                break;
            }
        }
        /* A dependency missing from the set is left out: the client will
         * ask for it by name and get NOT_FOUND. */
    }
    return 0;
}

int grpc_reflect_init(struct grpc_reflect *r, const uint8_t *set, size_t len)
{
    struct index_ctx x = {.r = r};
    struct pz_buf deps;
    const uint8_t *p = set, *end = set + len;
    struct grpc_pb_field f;
    int rv;
    memset(r, 0, sizeof *r);
    pz_buf_init(&deps);
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        if (f.num != 1 || f.wire != GRPC_PB_LEN)
            continue;
        r->files = pz_realloc(r->files, (r->n_files + 1) * sizeof *r->files);
        r->files[r->n_files] =
            (struct grpc_reflect_file){.data = f.data, .len = f.len};
        r->n_files++;
        if (walk_file(&x, r->n_files - 1, &deps) < 0) {
            rv = PZ_EINVAL;
            break;
        }
    }
    if (rv == 0)
        rv = resolve_deps(r, &deps);
    pz_buf_free(&deps);
    if (rv < 0) {
        grpc_reflect_free(r);
        return PZ_EINVAL;
    }
    if (r->n_symbols)
        qsort(r->symbols, r->n_symbols, sizeof *r->symbols, cmp_symbol);
    return 0;
}

void grpc_reflect_free(struct grpc_reflect *r)
{
    for (size_t i = 0; i < r->n_files; i++) {
        pz_free(r->files[i].name);
        pz_free(r->files[i].deps);
    }
    for (size_t i = 0; i < r->n_symbols; i++)
        pz_free(r->symbols[i].name);
    pz_free(r->files);
    pz_free(r->symbols);
    memset(r, 0, sizeof *r);
}

const struct grpc_reflect_symbol *
grpc_reflect_find(const struct grpc_reflect *r, const char *name)
{
    struct grpc_reflect_symbol key = {.name = (char *)name};
    if (r->n_symbols == 0)
        return NULL;
    return bsearch(&key, r->symbols, r->n_symbols, sizeof *r->symbols,
                   cmp_symbol);
}

static const struct grpc_reflect_file *find_file(const struct grpc_reflect *r,
                                                 const char *name)
{
    for (size_t i = 0; i < r->n_files; i++)
        if (strcmp(r->files[i].name, name) == 0)
            return &r->files[i];
    return NULL;
}

/* --- answering ------------------------------------------------------------ */

typedef Grpc__Reflection__V1__ServerReflectionRequest refl_req;
typedef Grpc__Reflection__V1__ServerReflectionResponse refl_resp;

/* The generated names are long: the oneof cases, shortened. */
#define REQ_CASE(x)                                                            \
    GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##x
#define RESP_CASE(x)                                                           \
    GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##x

/* The file at index `file` followed by every file it depends on,
 * transitively, each once. */
static void answer_files(const struct grpc_reflect *r, size_t file,
                         refl_resp *resp,
                         Grpc__Reflection__V1__FileDescriptorResponse *fdr)
{
    size_t *order = pz_malloc(r->n_files * sizeof *order);
    bool *seen = pz_calloc(r->n_files, sizeof *seen);
    size_t n = 0;
    order[n++] = file;
    seen[file] = true;
    for (size_t i = 0; i < n; i++) {
        const struct grpc_reflect_file *fd = &r->files[order[i]];
        for (size_t k = 0; k < fd->n_deps; k++) {
            if (!seen[fd->deps[k]]) {
                seen[fd->deps[k]] = true;
                order[n++] = fd->deps[k];
            }
        }
    }
    fdr->n_file_descriptor_proto = n;
    fdr->file_descriptor_proto =
        pz_malloc(n * sizeof *fdr->file_descriptor_proto);
    for (size_t i = 0; i < n; i++) {
        fdr->file_descriptor_proto[i].data = (uint8_t *)r->files[order[i]].data;
        fdr->file_descriptor_proto[i].len = r->files[order[i]].len;
    }
    pz_free(order);
    pz_free(seen);
    resp->message_response_case = RESP_CASE(FILE_DESCRIPTOR_RESPONSE);
    resp->file_descriptor_response = fdr;
}

static void answer_error(refl_resp *resp,
                         Grpc__Reflection__V1__ErrorResponse *er, int code,
                         char *msg)
{
    er->error_code = code;
    er->error_message = msg;
    resp->message_response_case = RESP_CASE(ERROR_RESPONSE);
    resp->error_response = er;
}

int grpc_reflect_answer(const struct grpc_reflect *r, const uint8_t *req,
                        size_t len, struct pz_buf *out)
{
    refl_req *q = grpc__reflection__v1__server_reflection_request__unpack(
        &grpc_pb_allocator, len, req);
    if (q == NULL)
        return PZ_EINVAL;
    refl_resp resp = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse fdr =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse er =
        GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse lsr =
        GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse enr =
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    Grpc__Reflection__V1__ServiceResponse *svcs = NULL;
    char errmsg[300];
    const struct grpc_reflect_file *fd;
    const struct grpc_reflect_symbol *sym;

    resp.valid_host = q->host;
    /* The request is echoed with its known fields only: unknown ones (a
     * field number 0, say) would make an answer no parser accepts. That
     * holds for the one nested message too. They are put back before the
     * request is freed. */
    Grpc__Reflection__V1__ExtensionRequest *ext =
        q->message_request_case == REQ_CASE(FILE_CONTAINING_EXTENSION)
            ? q->file_containing_extension
            : NULL;
    size_t n_unknown = q->base.n_unknown_fields;
    size_t n_unknown_ext = ext ? ext->base.n_unknown_fields : 0;
    q->base.n_unknown_fields = 0;
    if (ext)
        ext->base.n_unknown_fields = 0;
    resp.original_request = q;
    switch (q->message_request_case) {
    case REQ_CASE(FILE_BY_FILENAME):
        fd = find_file(r, q->file_by_filename);
        if (fd) {
            answer_files(r, (size_t)(fd - r->files), &resp, &fdr);
        } else {
            snprintf(errmsg, sizeof errmsg, "file not found: %.200s",
                     q->file_by_filename);
            answer_error(&resp, &er, GRPC_NOT_FOUND, errmsg);
        }
        break;
    case REQ_CASE(FILE_CONTAINING_SYMBOL):
        sym = grpc_reflect_find(r, q->file_containing_symbol);
        if (sym) {
            answer_files(r, sym->file, &resp, &fdr);
        } else {
            snprintf(errmsg, sizeof errmsg, "symbol not found: %.200s",
                     q->file_containing_symbol);
            answer_error(&resp, &er, GRPC_NOT_FOUND, errmsg);
        }
        break;
    case REQ_CASE(FILE_CONTAINING_EXTENSION):
        snprintf(errmsg, sizeof errmsg, "extension not found: %.200s(%d)",
                 q->file_containing_extension
                     ? q->file_containing_extension->containing_type
                     : "",
                 q->file_containing_extension
                     ? (int)q->file_containing_extension->extension_number
                     : 0);
        answer_error(&resp, &er, GRPC_NOT_FOUND, errmsg);
        break;
    case REQ_CASE(ALL_EXTENSION_NUMBERS_OF_TYPE):
        sym = grpc_reflect_find(r, q->all_extension_numbers_of_type);
        if (sym && sym->kind == GRPC_REFLECT_MESSAGE) {
            enr.base_type_name = q->all_extension_numbers_of_type;
            resp.message_response_case =
                RESP_CASE(ALL_EXTENSION_NUMBERS_RESPONSE);
            resp.all_extension_numbers_response = &enr;
        } else {
            snprintf(errmsg, sizeof errmsg, "type not found: %.200s",
                     q->all_extension_numbers_of_type);
            answer_error(&resp, &er, GRPC_NOT_FOUND, errmsg);
        }
        break;
    case REQ_CASE(LIST_SERVICES): {
        size_t n = 0;
        for (size_t i = 0; i < r->n_symbols; i++)
            n += r->symbols[i].kind == GRPC_REFLECT_SERVICE;
        svcs = pz_malloc((n ? n : 1) * sizeof *svcs);
        lsr.service = pz_malloc((n ? n : 1) * sizeof *lsr.service);
        for (size_t i = 0; i < r->n_symbols; i++) {
            if (r->symbols[i].kind != GRPC_REFLECT_SERVICE)
                continue;
            Grpc__Reflection__V1__ServiceResponse init =
                GRPC__REFLECTION__V1__SERVICE_RESPONSE__INIT;
            svcs[lsr.n_service] = init;
            svcs[lsr.n_service].name = r->symbols[i].name;
            lsr.service[lsr.n_service] = &svcs[lsr.n_service];
            lsr.n_service++;
        }
        resp.message_response_case = RESP_CASE(LIST_SERVICES_RESPONSE);
        resp.list_services_response = &lsr;
        break;
    }
    default:
        answer_error(&resp, &er, GRPC_INVALID_ARGUMENT,
                     "empty reflection request");
        break;
    }
    size_t n =
        grpc__reflection__v1__server_reflection_response__get_packed_size(
            &resp);
    pz_buf_reserve(out, n);
    grpc__reflection__v1__server_reflection_response__pack(
        &resp, (uint8_t *)out->data + out->len);
    out->len += n;
    pz_free(fdr.file_descriptor_proto);
    pz_free(lsr.service);
    pz_free(svcs);
    q->base.n_unknown_fields = n_unknown;
    if (ext)
        ext->base.n_unknown_fields = n_unknown_ext;
    grpc__reflection__v1__server_reflection_request__free_unpacked(
        q, &grpc_pb_allocator);
    return 0;
}
