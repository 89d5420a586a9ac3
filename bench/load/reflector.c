/* Bare UDP DNS reflector: the ceiling for a cache-hit path on one core.
 *
 * Receives datagrams in batches (recvmmsg), sets QR=1 in each (byte 2 of the
 * DNS header, bit 0x80) and sends them back to their sources in one batch
 * (sendmmsg). Single thread, no parsing, no validation: only what any UDP DNS
 * responder must do per packet (two syscall slots per batch, copy in, copy
 * out). Loopback only: refuses to bind anything but 127.0.0.1 / ::1.
 *
 * usage: reflector ADDR PORT [SPIN_NS [RCVBUF]]
 *        (ADDR = 127.0.0.1 or ::1; runs until SIGTERM)
 * SPIN_NS (default 0) burns that much CPU per datagram before answering it,
 * and RCVBUF (default 4 MiB) sets SO_RCVBUF: the model of a server with a
 * forwarder's per-query cost and no upstream, which bench/load/overload_cpu.py
 * puts under the same CPU quota and flood as dotproxy (the floor of that rig).
 * Built by bench/load/run.sh with: cc -O2 -o reflector reflector.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXPKT 4096

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: %s 127.0.0.1|::1 PORT [SPIN_NS [RCVBUF]]\n", argv[0]);
        return 2;
    }
    const long long spin_ns = argc > 3 ? atoll(argv[3]) : 0;
    const int rcvbuf = argc > 4 ? atoi(argv[4]) : 4 << 20;
    if (spin_ns < 0 || spin_ns > 1000000000LL || rcvbuf <= 0) {
        fprintf(stderr, "bad SPIN_NS or RCVBUF\n");
        return 2;
    }
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof(ss));
    int port = atoi(argv[2]);
    if (port <= 0 || port > 65535) { fprintf(stderr, "bad port\n"); return 2; }
    if (strcmp(argv[1], "127.0.0.1") == 0) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((unsigned short)port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sslen = sizeof(*a);
    } else if (strcmp(argv[1], "::1") == 0) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((unsigned short)port);
        a->sin6_addr = in6addr_loopback;
        sslen = sizeof(*a);
    } else {
        fprintf(stderr, "loopback addresses only (127.0.0.1 or ::1)\n");
        return 2;
    }
    int fd = socket(ss.ss_family, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int buf = 4 << 20;  /* same as dotproxy's default --udp-buffer */
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0) { perror("bind"); return 1; }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;  /* no SA_RESTART: recvmmsg returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    static unsigned char bufs[BATCH][MAXPKT];
    static struct sockaddr_storage addrs[BATCH];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    unsigned long long reflected = 0;

    while (!stop) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = MAXPKT;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_name = &addrs[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        /* Block for the first datagram, then take whatever else is queued. */
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("recvmmsg");
            return 1;
        }
        int out = 0;
        for (int i = 0; i < n; i++) {
            unsigned len = msgs[i].msg_len;
            if (len < 12 || (bufs[i][2] & 0x80)) continue;  /* not a query: drop */
            if (spin_ns > 0) {
                const long long until = now_ns() + spin_ns;
                while (now_ns() < until) {
                }
            }
            bufs[i][2] |= 0x80;                            /* QR = 1 */
            iov[i].iov_len = len;
            if (out != i) {
                msgs[out].msg_hdr = msgs[i].msg_hdr;
            }
            msgs[out].msg_hdr.msg_iov = &iov[i];
            out++;
        }
        int sent = 0;
        while (sent < out) {
            int r = sendmmsg(fd, msgs + sent, (unsigned)(out - sent), 0);
            if (r < 0) {
                if (errno == EINTR && !stop) continue;
                break; /* drop the rest of this batch, like a full socket would */
            }
            sent += r;
        }
        reflected += (unsigned long long)sent;
    }
    fprintf(stderr, "reflector: %llu datagrams reflected\n", reflected);
    close(fd);
    return 0;
}
