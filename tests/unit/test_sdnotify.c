/* test_sdnotify.c - the sd_notify datagrams, received on a Unix datagram
 * socket the test owns (a path, then an abstract name), and the addresses
 * that are refused. */
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "pz.h"
#include "sdnotify.h"
#include "test.h"

/* A bound datagram socket; name starting with '@' is abstract. */
static int bind_dgram(const char *name)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t len = strlen(name);
    memcpy(sa.sun_path, name, len);
    if (name[0] == '@')
        sa.sun_path[0] = '\0';
    socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                               (name[0] == '/'));
    if (bind(fd, (struct sockaddr *)&sa, sl) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The next datagram on fd, NUL-terminated, or "" when none is waiting. */
static void recv_one(int fd, char *buf, size_t len)
{
    ssize_t n = recv(fd, buf, len - 1, MSG_DONTWAIT);
    buf[n > 0 ? n : 0] = '\0';
}

TEST(unset_does_nothing)
{
    unsetenv("NOTIFY_SOCKET");
    CHECK_EQ_INT(sdnotify("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    CHECK_EQ_INT(sdnotify("READY=1"), 0);
    unsetenv("NOTIFY_SOCKET");
}

TEST(path_socket)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/pz-notify-test-%d.sock", (int)getpid());
    unlink(path);
    int fd = bind_dgram(path);
    CHECK(fd >= 0);
    setenv("NOTIFY_SOCKET", path, 1);
    char buf[256];
    CHECK_EQ_INT(sdnotify("READY=1\nSTATUS=up"), 1);
    recv_one(fd, buf, sizeof buf);
    CHECK_EQ_STR(buf, "READY=1\nSTATUS=up");
    CHECK_EQ_INT(sdnotify_reloading(), 1);
    recv_one(fd, buf, sizeof buf);
    CHECK(strncmp(buf, "RELOADING=1\nMONOTONIC_USEC=", 27) == 0);
    CHECK(strtoull(buf + 27, NULL, 10) > 0);
    CHECK_EQ_INT(sdnotify("STOPPING=1"), 1);
    recv_one(fd, buf, sizeof buf);
    CHECK_EQ_STR(buf, "STOPPING=1");
    /* the variable stays for later messages */
    CHECK(getenv("NOTIFY_SOCKET") != NULL);
    close(fd);
    unlink(path);
    /* nobody listening any more: an error, nothing else */
    CHECK(sdnotify("READY=1") < 0);
    unsetenv("NOTIFY_SOCKET");
}

TEST(abstract_socket)
{
    char name[64];
    snprintf(name, sizeof name, "@pz-notify-test-%d", (int)getpid());
    int fd = bind_dgram(name);
    CHECK(fd >= 0);
    setenv("NOTIFY_SOCKET", name, 1);
    char buf[256];
    CHECK_EQ_INT(sdnotify("READY=1"), 1);
    recv_one(fd, buf, sizeof buf);
    CHECK_EQ_STR(buf, "READY=1");
    close(fd);
    unsetenv("NOTIFY_SOCKET");
}

TEST(bad_addresses)
{
    char longpath[200];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    const char *bad[] = {"relative/path", "@", "/", longpath};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        setenv("NOTIFY_SOCKET", bad[i], 1);
        CHECK_EQ_INT(sdnotify("READY=1"), PZ_EINVAL);
    }
    unsetenv("NOTIFY_SOCKET");
}

static const struct test_case sdnotify_cases[] = {
    TEST_ENTRY(unset_does_nothing),
    TEST_ENTRY(path_socket),
    TEST_ENTRY(abstract_socket),
    TEST_ENTRY(bad_addresses),
    TEST_END,
};

const struct test_suite suite_sdnotify = {"sdnotify", sdnotify_cases};
