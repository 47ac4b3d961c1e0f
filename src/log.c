/* log.c - see log.h. Reads the wall clock for timestamps: logging is the one
 * impure helper every module may call (it never influences behaviour). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static enum pz_log_level min_level = PZ_LOG_INFO;
static char prefix[64] = "pyazdb";
static FILE *out; /* NULL means stderr */

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
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    FILE *f = out ? out : stderr;
    fprintf(f, "%s.%03dZ %s %c %s\n", ts, (int)(tv.tv_usec / 1000), prefix,
            "DIWE"[level], msg);
    fflush(f);
}
