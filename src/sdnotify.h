/* sdnotify.h - tell the service manager how the process is doing, by the
 * datagram protocol of sd_notify(3), written by hand (no libsystemd).
 *
 * When $NOTIFY_SOCKET names a Unix datagram socket ("/path", or "@name"
 * for the abstract namespace), sdnotify() sends it one datagram of
 * newline-separated assignments: "READY=1", "STOPPING=1",
 * "RELOADING=1\nMONOTONIC_USEC=...", "STATUS=...". Without the variable it
 * does nothing: the process was not started by systemd with Type=notify.
 * The variable is left in the environment, so every later message (a
 * reload, the shutdown) reaches the same socket. Never blocks: a full or
 * missing socket loses the message, which is only logged at debug level. */
#ifndef PZ_SDNOTIFY_H
#define PZ_SDNOTIFY_H

/* Send state (e.g. "READY=1") to $NOTIFY_SOCKET. Returns 1 when sent, 0
 * when NOTIFY_SOCKET is unset or empty, or a negative errno (PZ_EINVAL
 * for an address that is neither absolute nor abstract, or too long). */
int sdnotify(const char *state);

/* sdnotify() of "RELOADING=1" with MONOTONIC_USEC, the CLOCK_MONOTONIC
 * time in microseconds that Type=notify-reload expects with it. */
int sdnotify_reloading(void);

#endif
