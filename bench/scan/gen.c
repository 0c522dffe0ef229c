/* Load for bench/scan.sh: NPROC sleeping processes, the first NNETNS of them each in a network
 * namespace of its own, and NUNOWNED TCP sockets held by no process (sent over SCM_RIGHTS to a
 * unix socket nobody reads, then closed), whose inodes are written to UNOWNED_FILE.
 * Children are forked from this small static process (tiny page tables, ~100 KB of kernel memory
 * each) with only /dev/null as stdio, and die with it (PR_SET_PDEATHSIG). Prints "ready" on
 * stdout when everything is in place, then waits for SIGTERM.
 * usage: gen NPROC NNETNS NUNOWNED UNOWNED_FILE */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void send_fd(int over, int fd) {
    char byte = 0;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    char ctl[CMSG_SPACE(sizeof(int))];
    memset(ctl, 0, sizeof ctl);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                         .msg_controllen = sizeof ctl};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    if (sendmsg(over, &msg, 0) != 1) die("sendmsg");
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s NPROC NNETNS NUNOWNED UNOWNED_FILE\n", argv[0]);
        return 2;
    }
    long nproc = atol(argv[1]), nnetns = atol(argv[2]), nunowned = atol(argv[3]);
    pid_t parent = getpid();
    int null = open("/dev/null", O_RDWR);
    if (null < 0) die("/dev/null");
    for (long i = 0; i < nproc; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "fork stopped at %ld processes: %s\n", i, strerror(errno));
            return 1;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(0);
            dup2(null, 0);
            dup2(null, 1);
            dup2(null, 2);
            close(null);
            if (i < nnetns && unshare(CLONE_NEWNET) != 0) _exit(3);
            for (;;) pause();
        }
    }
    /* Unowned sockets: connected pairs on loopback; the client end goes in flight, the
     * accepted end stays here (owned). */
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4096) ||
        getsockname(l, (struct sockaddr *)&a, &alen))
        die("listener");
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, pair)) die("socketpair");
    int big = 1 << 24;
    setsockopt(pair[0], SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof big);
    setsockopt(pair[1], SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    FILE *out = fopen(argv[4], "w");
    if (!out) die(argv[4]);
    for (long i = 0; i < nunowned; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) die("connect");
        if (accept(l, NULL, NULL) < 0) die("accept");
        struct stat st;
        if (fstat(c, &st)) die("fstat");
        send_fd(pair[0], c);
        close(c);
        fprintf(out, "%lu\n", (unsigned long)st.st_ino);
    }
    fclose(out);
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
