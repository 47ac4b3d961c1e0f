/* log.c - see log.h. Reads the wall clock for timestamps: logging is the one
 * impure helper every module may call (it never influences behaviour). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

static enum pz_log_level min_level = PZ_LOG_INFO;
static char prefix[64] = "pyazdb";
static FILE *out; /* NULL means stderr */
static bool json_lines;

void pz_log_set_json(bool json)
{
    json_lines = json;
}

/* Length of the UTF-8 sequence of a printable character at s (n bytes
 * left), 0 if s does not start one: malformed, overlong, a surrogate, past
 * U+10FFFF, a C1 control (U+0080..U+009F, which terminals may obey), or
 * a character that makes the line show other than it reads
 * (pz_cp_disguises_text). */
static size_t utf8_printable(const unsigned char *s, size_t n)
{
    uint32_t cp;
    size_t len = pz_utf8_decode(s, n, &cp);
    if (len == 0 || cp < 0xa0 || pz_cp_disguises_text(cp))
        return 0;
    return len;
}

void pz_text_escape(struct pz_buf *b, const char *text, size_t n,
                    const char *keep)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t run = i;
        while (run < n && ((s[run] >= 0x20 && s[run] < 0x7f) ||
                           (s[run] != 0 && strchr(keep, s[run]) != NULL)))
            run++;
        pz_buf_append(b, s + i, run - i);
        i = run;
        if (i == n)
            break;
        size_t len = s[i] >= 0x80 ? utf8_printable(s + i, n - i) : 0;
        if (len) {
            pz_buf_append(b, s + i, len);
            i += len;
        } else {
            pz_buf_appendf(b, "\\x%02x", s[i]);
            i++;
        }
    }
}

/* msg as one line of text (pz_text_escape): what a client or a peer sent
 * cannot forge a line or drive the terminal of whoever reads the log. */
static void put_text(struct pz_buf *b, const char *msg)
{
    pz_text_escape(b, msg, strlen(msg), "");
}

void pz_log_format(struct pz_buf *b, bool json, time_t sec, int ms,
                   const char *p, enum pz_log_level level, const char *msg)
{
    static const char *const words[] = {"debug", "info", "warning",
                                        "error"};
    struct tm tm;
    gmtime_r(&sec, &tm);
    char ts[48];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", ms);
    if (!json) {
        pz_buf_appendf(b, "%s ", ts);
        put_text(b, p);
        pz_buf_appendf(b, " %c ", "DIWE"[level]);
        put_text(b, msg);
        pz_buf_append(b, "\n", 1);
        return;
    }
    pz_buf_appendf(b, "{\"time\":\"%s\",\"level\":\"%s\",\"node\":", ts,
                   words[level]);
    json_put_string(b, p, strlen(p));
    pz_buf_appendf(b, ",\"msg\":");
    json_put_string(b, msg, strlen(msg));
    pz_buf_appendf(b, "}\n");
}

void pz_log_setup(enum pz_log_level level, const char *p)
{
    min_level = level;
    if (p)
        snprintf(prefix, sizeof prefix, "%s", p);
}

int pz_log_open(const char *path)
{
    if (path == NULL || path[0] == '\0') {
        pz_log_close();
        return 0;
    }
    /* Not fopen: a FIFO at path (left there by mistake, or in place of
     * a file logrotate moved away) would block the open, on a reload the
     * whole process, until something reads it. */
    int fd = pz_open_regular_append(path);
    if (fd < 0)
        return fd;
    FILE *f = fdopen(fd, "a");
    if (f == NULL) {
        int e = -errno;
        close(fd);
        return e;
    }
    setvbuf(f, NULL, _IOLBF, 0);
    pz_log_close();
    out = f;
    return 0;
}

const char *pz_log_strerror(int rv)
{
    return rv == PZ_EINVAL ? "not a regular file" : pz_strerror(rv);
}

void pz_log_close(void)
{
    if (out)
        fclose(out);
    out = NULL;
}

void pz_log(enum pz_log_level level, const char *fmt, ...)
{
    if (level < min_level)
        return;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct pz_buf line;
    pz_buf_init(&line);
    pz_log_format(&line, json_lines, tv.tv_sec, (int)(tv.tv_usec / 1000),
                  prefix, level, msg);
    FILE *f = out ? out : stderr;
    fwrite(line.data, 1, line.len, f);
    fflush(f);
    pz_buf_free(&line);
}
