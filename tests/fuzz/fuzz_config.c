/* fuzz_config.c - the configuration parser: config file contents
 * (cfg_load_string, and cfg_load_file through cfg_load), the command line
 * and the environment (cfg_load, cfg_has_flag), one directive's value
 * (cfg_set), initial-cluster (cfg_parse_cluster) and mandi URLs
 * (cfg_url_hostport, pz_split_hostport).
 *
 * Input: parts separated by 0xff bytes: the config file, then argv tokens
 * separated by NUL bytes, then environment entries ("NAME=value")
 * separated by NUL bytes, then a value for the directive picked by the
 * file's length. A token "@" stands for the config file (a memfd path);
 * any other token that does not start with '-' gets the prefix
 * "/nonexistent/", so whatever the parser takes for a file name cannot
 * open a real file.
 *
 * Invariants: errors say where and what (source prefix, '>>>' line for a
 * file line); a loaded configuration formats every directive back to text
 * that sets the same value (cfg_format/cfg_set), and written out as a
 * file (quoted) loads back to the same configuration; parsed cluster
 * members satisfy the node-id and address rules. */
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"

#include "config.h"
#include "pz.h"

#define MAX_TOKENS 32
#define NOFILE "/nonexistent/"

static int memfd = -1;
static char memfd_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    PZ_UNUSED(argc);
    PZ_UNUSED(argv);
    memfd = memfd_create("fuzz-config", MFD_CLOEXEC);
    FUZZ_CHECK(memfd >= 0);
    snprintf(memfd_path, sizeof memfd_path, "/proc/self/fd/%d", memfd);
    return 0;
}

/* Next part of the input up to a 0xff byte (or the end). */
static const uint8_t *part(const uint8_t **p, const uint8_t *end, size_t *len)
{
    const uint8_t *s = *p;
    const uint8_t *e = s < end ? memchr(s, 0xff, (size_t)(end - s)) : NULL;
    if (e == NULL)
        e = end;
    *len = (size_t)(e - s);
    *p = e < end ? e + 1 : end;
    return s;
}

/* NUL-separated strings of a part, copied; returns their count. */
static size_t split(const uint8_t *s, size_t len, char **out, size_t max,
                    bool args)
{
    size_t n = 0;
    const uint8_t *end = s + len;
    while (s < end && n < max) {
        const uint8_t *z = memchr(s, 0, (size_t)(end - s));
        size_t l = z ? (size_t)(z - s) : (size_t)(end - s);
        char *t;
        if (args && l == 1 && s[0] == '@') {
            t = strdup(memfd_path);
        } else if (args && (l == 0 || s[0] != '-')) {
            t = malloc(sizeof NOFILE + l);
            FUZZ_CHECK(t != NULL);
            memcpy(t, NOFILE, sizeof NOFILE - 1);
            memcpy(t + sizeof NOFILE - 1, s, l);
            t[sizeof NOFILE - 1 + l] = '\0';
        } else {
            t = strndup((const char *)s, l);
        }
        FUZZ_CHECK(t != NULL);
        out[n++] = t;
        s += l + 1;
    }
    return n;
}

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
}

/* Every directive of c formats to text that sets the same value. */
static void check_format(const struct pz_config *c)
{
    struct pz_config c2;
    cfg_init(&c2);
    for (size_t i = 0; i < cfg_directive_count(); i++) {
        const struct cfg_directive *d = cfg_directive_at(i);
        char buf[2048], buf2[2048], err[512];
        cfg_format(c, d, buf, sizeof buf);
        int rv = cfg_set(&c2, d->name, buf, "check", 0, err, sizeof err);
        FUZZ_CHECKF(rv == 0, "'%s' formats as '%s', which is refused: %s",
                    d->name, buf, err);
        cfg_format(&c2, d, buf2, sizeof buf2);
        FUZZ_CHECKF(strcmp(buf, buf2) == 0, "'%s': '%s' then '%s'", d->name,
                    buf, buf2);
    }
    cfg_free(&c2);
}

/* c written out as a config file (every value quoted) loads back the
 * same. */
static void check_dump(const struct pz_config *c)
{
    struct pz_buf f;
    pz_buf_init(&f);
    for (size_t i = 0; i < cfg_directive_count(); i++) {
        const struct cfg_directive *d = cfg_directive_at(i);
        char buf[2048];
        cfg_format(c, d, buf, sizeof buf);
        pz_buf_appendf(&f, "%s \"", d->name);
        for (const char *s = buf; *s; s++) {
            if (*s == '"' || *s == '\\')
                pz_buf_append(&f, "\\", 1);
            pz_buf_append(&f, s, 1);
        }
        pz_buf_append(&f, "\"\n", 2);
    }
    struct pz_config c2;
    char err[512];
    cfg_init(&c2);
    int rv = cfg_load_string(&c2, f.data, f.len, "dump", err, sizeof err);
    FUZZ_CHECKF(rv == 0, "dumped configuration refused: %s", err);
    for (size_t i = 0; i < cfg_directive_count(); i++) {
        const struct cfg_directive *d = cfg_directive_at(i);
        char a[2048], b[2048];
        cfg_format(c, d, a, sizeof a);
        cfg_format(&c2, d, b, sizeof b);
        FUZZ_CHECKF(strcmp(a, b) == 0, "'%s': '%s' reloads as '%s'", d->name,
                    a, b);
    }
    cfg_free(&c2);
    pz_buf_free(&f);
}

static void check_err(int rv, const char *err)
{
    FUZZ_CHECK(rv == 0 || rv == PZ_ECONFIG);
    if (rv != 0)
        FUZZ_CHECK(err[0] != '\0' && memchr(err, 0, 512) != NULL);
}

static void check_file(const uint8_t *text, size_t len)
{
    struct pz_config c;
    char err[512] = "";
    cfg_init(&c);
    int rv = cfg_load_string(&c, (const char *)text, len, "pyazdb.conf", err,
                             sizeof err);
    check_err(rv, err);
    if (rv != 0) {
        FUZZ_CHECK(strncmp(err, "pyazdb.conf:", 12) == 0);
        /* The quoted line follows when the message leaves room. */
        FUZZ_CHECK(strlen(err) > 400 || strstr(err, "\n>>> '") != NULL);
    } else {
        check_format(&c);
        check_dump(&c);
        err[0] = '\0';
        rv = cfg_check(&c, err, sizeof err);
        check_err(rv, err);
    }
    cfg_free(&c);
}

static void check_cmdline(const uint8_t *text, size_t tlen,
                          const uint8_t *args, size_t alen,
                          const uint8_t *env, size_t elen)
{
    FUZZ_CHECK(ftruncate(memfd, 0) == 0);
    FUZZ_CHECK(pwrite(memfd, text, tlen, 0) == (ssize_t)tlen);

    char *argv[MAX_TOKENS + 2], *envp[MAX_TOKENS + 1];
    argv[0] = strdup("pyazdb-server");
    size_t argc = 1 + split(args, alen, argv + 1, MAX_TOKENS, true);
    argv[argc] = NULL;
    size_t nenv = split(env, elen, envp, MAX_TOKENS, false);
    envp[nenv] = NULL;

    (void)cfg_has_flag((int)argc, argv, "--help");
    (void)cfg_has_flag((int)argc, argv, "--test-config");

    struct pz_config c;
    char err[512] = "";
    int rv = cfg_load(&c, (int)argc, argv, envp, err, sizeof err);
    check_err(rv, err);
    if (rv == 0) {
        check_format(&c);
        err[0] = '\0';
        FUZZ_CHECK(cfg_check(&c, err, sizeof err) == 0);
    }
    cfg_free(&c);

    /* The environment alone. */
    cfg_init(&c);
    err[0] = '\0';
    rv = cfg_load_env(&c, envp, err, sizeof err);
    check_err(rv, err);
    cfg_free(&c);

    free_strs(argv, argc);
    free_strs(envp, nenv);
}

static void check_values(const char *v, size_t pick)
{
    /* One directive's value, as --name value or a file line gives it. */
    const struct cfg_directive *d =
        cfg_directive_at(pick % cfg_directive_count());
    struct pz_config c;
    char err[512] = "", before[2048], after[2048];
    cfg_init(&c);
    cfg_format(&c, d, before, sizeof before);
    int rv = cfg_set(&c, d->name, v, "fuzz", 0, err, sizeof err);
    check_err(rv, err);
    cfg_format(&c, d, after, sizeof after);
    if (rv != 0)
        FUZZ_CHECK(strcmp(before, after) == 0); /* unchanged */
    else
        check_format(&c);
    cfg_free(&c);
    FUZZ_CHECK(cfg_find(v) == NULL || strcasecmp(cfg_find(v)->name, v) == 0);

    struct cfg_peer *peers = (struct cfg_peer *)1;
    size_t n = 99;
    char why[256] = "";
    rv = cfg_parse_cluster(v, &peers, &n, why, sizeof why);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv != 0) {
        FUZZ_CHECK(peers == NULL && why[0] != '\0');
    } else {
        FUZZ_CHECK((n == 0) == (peers == NULL));
        for (size_t i = 0; i < n; i++) {
            FUZZ_CHECK(peers[i].name[0] != '\0');
            FUZZ_CHECK(strlen(peers[i].name) <= CFG_NAME_MAX);
            FUZZ_CHECK(strlen(peers[i].addr) <= CFG_ADDR_MAX);
            for (size_t k = 0; k < i; k++)
                FUZZ_CHECK(strcmp(peers[i].name, peers[k].name) != 0 &&
                           strcmp(peers[i].addr, peers[k].addr) != 0);
            char host[256];
            int port = 0;
            FUZZ_CHECK(pz_split_hostport(peers[i].addr, host, sizeof host,
                                         &port) == 0);
            FUZZ_CHECK(port >= 1 && port <= 65535);
        }
        pz_free(peers);
    }

    char host[256];
    int port = -1;
    rv = cfg_url_hostport(v, host, sizeof host, &port);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv == 0)
        FUZZ_CHECK(port >= 1 && port <= 65535 && strlen(host) < sizeof host);
    char small[8];
    rv = cfg_url_hostport(v, small, sizeof small, &port);
    FUZZ_CHECK(rv != 0 || strlen(small) < sizeof small);
    rv = pz_split_hostport(v, host, sizeof host, &port);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv == 0)
        FUZZ_CHECK(strlen(host) < sizeof host);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    size_t tlen, alen, elen, vlen;
    const uint8_t *text = part(&p, end, &tlen);
    const uint8_t *args = part(&p, end, &alen);
    const uint8_t *env = part(&p, end, &elen);
    const uint8_t *val = part(&p, end, &vlen);

    /* The file exactly (reads past it are ASan reports). */
    uint8_t *t = fuzz_dup(text, tlen);
    check_file(t, tlen);
    free(t);

    check_cmdline(text, tlen, args, alen, env, elen);

    char *v = strndup((const char *)val, vlen);
    FUZZ_CHECK(v != NULL);
    check_values(v, tlen);
    /* The file's first line as a value too: seeds hold real values. */
    const uint8_t *nl = memchr(text, '\n', tlen);
    char *first = strndup((const char *)text, nl ? (size_t)(nl - text) : tlen);
    const char *sp = strchr(first, ' ');
    check_values(sp ? sp + 1 : first, tlen + 1);
    free(first);
    free(v);
    return 0;
}
