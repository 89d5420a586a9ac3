// udp_flood: an open-loop DNS query generator for the overload cases, cheap
// enough that one core offers several times what one shard serves (dnsperf
// on a shared core cannot: it is a closed loop with per-query bookkeeping).
//
//   udp_flood --to 127.0.0.1:PORT --rate QPS --seconds S [--sources N]
//             [--source-base 127.0.1.1] [--source-stride 1]
//             [--suffix wild.example.test] [--tag T]
//
// N sockets, each bound to its own source address (source-base, +stride, ...),
// send unique names (q<seq>-<tag>.<suffix>, type A) at QPS in total, paced
// every millisecond, and read the answers in between. After S seconds it
// waits one more second for late answers and prints one line:
//   sent=… answered=… noerror=… servfail=… other=… mean_ms=… p50_ms=… p99_ms=…
// Loopback only: the target and the sources must be in 127.0.0.0/8.

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { kMaxSources = 64, kBatch = 64, kBucketUs = 50, kBuckets = 40000 };  // 2 s

static uint64_t NowUs(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

static void Die(const char* what) {
  fprintf(stderr, "udp_flood: %s: %s\n", what, strerror(errno));
  exit(2);
}

static int Loopback(struct in_addr a) { return (ntohl(a.s_addr) >> 24) == 127; }

// Query wire for name `label`.`suffix`, type A, class IN.
static size_t BuildQuery(uint8_t* out, uint16_t id, const char* label, const char* suffix) {
  memset(out, 0, 12);
  out[0] = (uint8_t)(id >> 8);
  out[1] = (uint8_t)id;
  out[2] = 0x01;  // RD
  out[5] = 1;     // QDCOUNT
  size_t n = 12;
  char name[256];
  snprintf(name, sizeof(name), "%s.%s", label, suffix);
  for (char* part = strtok(name, "."); part != NULL; part = strtok(NULL, ".")) {
    const size_t len = strlen(part);
    out[n++] = (uint8_t)len;
    memcpy(out + n, part, len);
    n += len;
  }
  out[n++] = 0;
  out[n++] = 0;
  out[n++] = 1;  // A
  out[n++] = 0;
  out[n++] = 1;  // IN
  return n;
}

int main(int argc, char** argv) {
  const char* to = NULL;
  const char* source_base = "127.0.1.1";
  const char* suffix = "wild.example.test";
  const char* tag = "f";
  double rate = 0, seconds = 0;
  int sources = 16;
  uint32_t stride = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--to")) to = argv[i + 1];
    else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--sources")) sources = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--source-base")) source_base = argv[i + 1];
    else if (!strcmp(argv[i], "--source-stride")) stride = (uint32_t)atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--suffix")) suffix = argv[i + 1];
    else if (!strcmp(argv[i], "--tag")) tag = argv[i + 1];
    else {
      fprintf(stderr, "udp_flood: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (to == NULL || rate <= 0 || seconds <= 0 || seconds > 60 || sources < 1 ||
      sources > kMaxSources) {
    fprintf(stderr, "usage: udp_flood --to IP:PORT --rate QPS --seconds S (<= 60) [--sources 1..64]\n");
    return 2;
  }
  char host[64];
  snprintf(host, sizeof(host), "%s", to);
  char* colon = strrchr(host, ':');
  if (colon == NULL) return 2;
  *colon = 0;
  struct sockaddr_in target = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
  struct in_addr base;
  if (inet_pton(AF_INET, host, &target.sin_addr) != 1 || inet_pton(AF_INET, source_base, &base) != 1 ||
      !Loopback(target.sin_addr) || !Loopback(base)) {
    fprintf(stderr, "udp_flood: target and sources must be IPv4 loopback\n");
    return 2;
  }

  int fds[kMaxSources];
  struct pollfd polls[kMaxSources];
  for (int s = 0; s < sources; ++s) {
    fds[s] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fds[s] < 0) Die("socket");
    const int buffer = 4 << 20;
    setsockopt(fds[s], SOL_SOCKET, SO_RCVBUF, &buffer, sizeof(buffer));
    struct sockaddr_in from = {.sin_family = AF_INET};
    from.sin_addr.s_addr = htonl(ntohl(base.s_addr) + (uint32_t)s * stride);
    if (!Loopback(from.sin_addr)) return 2;
    if (bind(fds[s], (struct sockaddr*)&from, sizeof(from)) != 0) Die("bind");
    if (connect(fds[s], (struct sockaddr*)&target, sizeof(target)) != 0) Die("connect");
    polls[s] = (struct pollfd){.fd = fds[s], .events = POLLIN};
  }

  static uint64_t sent_at[kMaxSources][65536];
  static uint32_t histogram[kBuckets + 1];
  static uint8_t wires[kBatch][300];
  static uint8_t answers[kBatch][600];
  struct mmsghdr messages[kBatch];
  struct iovec iovs[kBatch];
  uint16_t next_id[kMaxSources] = {0};
  uint64_t sent = 0, answered = 0, noerror = 0, servfail = 0, other = 0, latency_sum_us = 0;
  uint64_t seq = 0;
  const uint64_t start = NowUs();
  const uint64_t send_until = start + (uint64_t)(seconds * 1e6);
  const uint64_t read_until = send_until + 1000000;
  int turn = 0;
  for (;;) {
    const uint64_t now = NowUs();
    if (now >= read_until) break;
    if (now < send_until) {
      // Due by now at `rate`, in batches on sockets taken in turn.
      const uint64_t due = (uint64_t)((double)(now - start) * rate / 1e6);
      while (sent < due) {
        const int s = turn;
        turn = (turn + 1) % sources;
        int batch = (int)(due - sent < kBatch ? due - sent : kBatch);
        for (int i = 0; i < batch; ++i) {
          char label[48];
          snprintf(label, sizeof(label), "q%llu-%s", (unsigned long long)seq++, tag);
          const uint16_t id = next_id[s]++;
          iovs[i] = (struct iovec){wires[i], BuildQuery(wires[i], id, label, suffix)};
          messages[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iovs[i], .msg_iovlen = 1}};
          sent_at[s][id] = now;
        }
        const int n = sendmmsg(fds[s], messages, (unsigned)batch, 0);
        // A full socket buffer or a refusal drops what was not taken: the
        // offer stays open-loop, as a flood's would.
        sent += (uint64_t)batch;
        if (n < 0 && errno != EAGAIN && errno != ECONNREFUSED) Die("sendmmsg");
      }
    }
    poll(polls, (nfds_t)sources, 1);
    for (int s = 0; s < sources; ++s) {
      for (;;) {
        for (int i = 0; i < kBatch; ++i) {
          iovs[i] = (struct iovec){answers[i], sizeof(answers[i])};
          messages[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iovs[i], .msg_iovlen = 1}};
        }
        const int n = recvmmsg(fds[s], messages, kBatch, MSG_DONTWAIT, NULL);
        if (n <= 0) break;
        const uint64_t at = NowUs();
        for (int i = 0; i < n; ++i) {
          if (messages[i].msg_len < 12) continue;
          const uint8_t* a = answers[i];
          const uint16_t id = (uint16_t)(a[0] << 8 | a[1]);
          const int rcode = a[3] & 0x0f;
          ++answered;
          if (rcode == 0) ++noerror;
          else if (rcode == 2) ++servfail;
          else ++other;
          const uint64_t us = at - sent_at[s][id];
          latency_sum_us += us;
          const uint64_t bucket = us / kBucketUs;
          ++histogram[bucket < kBuckets ? bucket : kBuckets];
        }
        if (n < kBatch) break;
      }
    }
  }
  double p50 = 0, p99 = 0;
  uint64_t seen = 0;
  for (int b = 0; b <= kBuckets && answered > 0; ++b) {
    seen += histogram[b];
    if (p50 == 0 && seen * 2 >= answered) p50 = (b + 0.5) * kBucketUs / 1000.0;
    if (seen * 100 >= answered * 99) {
      p99 = (b + 0.5) * kBucketUs / 1000.0;
      break;
    }
  }
  printf("sent=%llu answered=%llu noerror=%llu servfail=%llu other=%llu mean_ms=%.3f p50_ms=%.3f p99_ms=%.3f\n",
         (unsigned long long)sent, (unsigned long long)answered, (unsigned long long)noerror,
         (unsigned long long)servfail, (unsigned long long)other,
         answered ? (double)latency_sum_us / (double)answered / 1000.0 : 0.0, p50, p99);
  return 0;
}
