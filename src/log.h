/* log.h - levelled, timestamped logging to stderr or a file.
 *
 * One line per call: "2026-01-03T10:00:00.123Z node1 I message". The level
 * letter is D, I, W or E. A prefix (the node name, or "mandi") tells apart
 * the lines of several processes sharing a terminal. Logging never fails the
 * caller: a write error is ignored.
 *
 * With pz_log_set_json(true) (log-format json) each line is instead one
 * JSON object: {"time":"2026-01-03T10:00:00.123Z","level":"info",
 * "node":"node1","msg":"message"}; a message holding quotes, control
 * characters or bytes that are not UTF-8 still gives valid JSON
 * (json_put_string). */
#ifndef PZ_LOG_H
#define PZ_LOG_H

#include <stdbool.h>
#include <stdio.h>
#include <time.h>

#include "pz.h"

enum pz_log_level {
    PZ_LOG_DEBUG = 0,
    PZ_LOG_INFO = 1,
    PZ_LOG_WARNING = 2,
    PZ_LOG_ERROR = 3,
};

/* Set the minimum level printed and the line prefix (copied). */
void pz_log_setup(enum pz_log_level level, const char *prefix);
/* Log to this file from now on (appending; created when missing); NULL
 * or "" means stderr. Only a regular file (or /dev/null) is taken: a FIFO
 * or a device is refused at once rather than waited on. Returns 0, a
 * negative errno or PZ_EINVAL (not a regular file: pz_log_strerror),
 * leaving the destination unchanged. */
int pz_log_open(const char *path);
/* What a pz_log_open() failure means, for a message. */
const char *pz_log_strerror(int rv);
void pz_log(enum pz_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void pz_log_close(void);
/* Text lines (the default) or JSON lines from now on. */
void pz_log_set_json(bool json);
/* Pure: append to out the line (with its newline) for msg logged at level
 * at the time sec.ms (UTC, seconds since the epoch) by prefix. */
void pz_log_format(struct pz_buf *out, bool json, time_t sec, int ms,
                   const char *prefix, enum pz_log_level level,
                   const char *msg);

/* Append text[0..n) to b with every byte that is neither printable ASCII,
 * nor one of the control characters in keep (say "\n\t"), nor part of a
 * printable UTF-8 character written \xNN: no escape sequence, C1 control,
 * stray or overlong byte gets through. Text log lines go through it (keep
 * ""). */
void pz_text_escape(struct pz_buf *b, const char *text, size_t n,
                    const char *keep);

#define pz_debug(...) pz_log(PZ_LOG_DEBUG, __VA_ARGS__)
#define pz_info(...) pz_log(PZ_LOG_INFO, __VA_ARGS__)
#define pz_warn(...) pz_log(PZ_LOG_WARNING, __VA_ARGS__)
#define pz_error(...) pz_log(PZ_LOG_ERROR, __VA_ARGS__)

#endif
