/* sdnotify.c - see sdnotify.h. One socket per message: a handful are sent
 * in a process's life (ready, each reload, stopping), so nothing is kept
 * open across forks or reloads. */
#include "sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "pz.h"

int sdnotify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t len = strlen(path);
    /* An abstract address is "@name" in the variable and "\0name" on the
     * wire, with no terminating NUL counted in the address length. */
    if ((path[0] != '/' && path[0] != '@') || len < 2 ||
        len > sizeof sa.sun_path - (path[0] == '/')) {
        pz_debug("NOTIFY_SOCKET '%s' is not an absolute or abstract socket "
                 "address: not notifying",
                 path);
        return PZ_EINVAL;
    }
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';
    socklen_t salen =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                    (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        pz_debug("sd_notify: socket: %s", strerror(e));
        return -e;
    }
    int rv = 1;
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               salen) < 0) {
        rv = -errno;
        pz_debug("sd_notify %s: %s", path, strerror(errno));
    }
    close(fd);
    return rv;
}

int sdnotify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[80];
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL +
                 (unsigned long long)ts.tv_nsec / 1000);
    return sdnotify(msg);
}
