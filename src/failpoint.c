/* failpoint.c - see failpoint.h. Reads the environment on every call: the
 * points sit on rare paths (snapshots, log truncation), never per request.
 * Failure modes: none; an unset or unrelated PYAZDB_FAILPOINT is a no-op. */
#include "failpoint.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define SLEEP_MS_MAX 600000 /* ten minutes */

/* 1: the variable names this point, 2: with ":stop", 3: with ":sleep=MS"
 * (*ms set), 0: none of these. */
static int match(const char *name, long *ms)
{
    const char *v = getenv(PZ_FAILPOINT_ENV);
    if (v == NULL || name == NULL)
        return 0;
    size_t n = strlen(name);
    if (strncmp(v, name, n) != 0)
        return 0;
    if (v[n] == '\0')
        return 1;
    if (strcmp(v + n, ":stop") == 0)
        return 2;
    if (strncmp(v + n, ":sleep=", 7) == 0) {
        char *end;
        long x = strtol(v + n + 7, &end, 10);
        if (end != v + n + 7 && *end == '\0' && x >= 0 && x <= SLEEP_MS_MAX) {
            *ms = x;
            return 3;
        }
    }
    return 0;
}

bool pz_failpoint_armed(const char *name)
{
    long ms;
    return match(name, &ms) != 0;
}

void pz_failpoint(const char *name)
{
    long ms = 0;
    int m = match(name, &ms);
    if (m == 0)
        return;
    if (m == 3) {
        /* Silent: the point may be on a worker thread, and the log's
         * stream is the loop's. */
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        return;
    }
    if (m == 2) {
        pz_warn("failpoint %s: stopping (pid %ld)", name, (long)getpid());
        raise(SIGSTOP);
        return;
    }
    pz_warn("failpoint %s: exiting with status %d", name, PZ_FAILPOINT_EXIT);
    _exit(PZ_FAILPOINT_EXIT);
}
