/* failpoint.c - see failpoint.h. Reads the environment on every call: the
 * points sit on rare paths (snapshots, log truncation), never per request.
 * Failure modes: none; an unset or unrelated PYAZDB_FAILPOINT is a no-op. */
#include "failpoint.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* 1: the variable names this point, 2: with ":stop", 0: neither. */
static int match(const char *name)
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
    return 0;
}

bool pz_failpoint_armed(const char *name)
{
    return match(name) != 0;
}

void pz_failpoint(const char *name)
{
    int m = match(name);
    if (m == 0)
        return;
    if (m == 2) {
        pz_warn("failpoint %s: stopping (pid %ld)", name, (long)getpid());
        raise(SIGSTOP);
        return;
    }
    pz_warn("failpoint %s: exiting with status %d", name, PZ_FAILPOINT_EXIT);
    _exit(PZ_FAILPOINT_EXIT);
}
