/* failpoint.h - named crash points for fault tests.
 *
 * A failpoint is a call pz_failpoint("name") placed where a crash matters
 * (between writing a file and renaming it, between renaming and truncating
 * the log, ...). In production the environment variable PYAZDB_FAILPOINT is
 * unset and the call only reads the environment. When it names this point,
 * the process logs one line and stops there:
 *
 *   PYAZDB_FAILPOINT=name        _exit(PZ_FAILPOINT_EXIT): no atexit
 *                                handlers, no stdio flush, no cleanup, as
 *                                close to a crash as a test can ask for
 *   PYAZDB_FAILPOINT=name:stop   raise(SIGSTOP): the process freezes there so
 *                                a test can look at the files and then kill
 *                                it (SIGKILL) at a known point
 *   PYAZDB_FAILPOINT=name:sleep=MS  the calling thread sleeps MS
 *                                milliseconds (0 to 600000), logging
 *                                nothing, then goes on: a slow step (a
 *                                large snapshot's load) on demand
 *
 * Points defined so far: snapshot-mid-write, snapshot-before-rename,
 * snapshot-after-rename, install-mid (snapshot.c); before-log-truncate,
 * after-log-truncate, install-received, install-applied, restore-created,
 * restore-hard-state, restore-compacted, restore-clearing
 * (node_snapshot.c); install-stored (node.c); install-loading (node_io_uv.c,
 * on the thread pool, before a received file is checked and loaded).
 *
 * Safe to call in a child between fork() and _exit() (it allocates
 * nothing; the log line goes through pz_log). */
#ifndef PZ_FAILPOINT_H
#define PZ_FAILPOINT_H

#include <stdbool.h>

#define PZ_FAILPOINT_ENV "PYAZDB_FAILPOINT" /* environment variable */
#define PZ_FAILPOINT_EXIT 99                /* exit status at a failpoint */

/* Stop the process as described above if PYAZDB_FAILPOINT names `name`;
 * otherwise return. */
void pz_failpoint(const char *name);

/* True if PYAZDB_FAILPOINT names `name` (with or without a mode). */
bool pz_failpoint_armed(const char *name);

#endif
