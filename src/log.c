/* log.c - see log.h. Reads the wall clock for timestamps: logging is the one
 * impure helper every module may call (it never influences behaviour). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "json.h"

static enum pz_log_level min_level = PZ_LOG_INFO;
static char prefix[64] = "pyazdb";
static FILE *out; /* NULL means stderr */
static bool json_lines;

void pz_log_set_json(bool json)
{
    json_lines = json;
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
        pz_buf_appendf(b, "%s %s %c %s\n", ts, p, "DIWE"[level], msg);
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
    FILE *f = fopen(path, "a");
    if (f == NULL)
        return -errno;
    setvbuf(f, NULL, _IOLBF, 0);
    pz_log_close();
    out = f;
    return 0;
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
