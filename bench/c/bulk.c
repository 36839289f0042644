// Baseline: raw write/read of `total` bytes in `part`-byte writes over an AF_UNIX
// socketpair (stream or seqpacket) between two processes. The physical limit of
// this machine for what FdSocket does. Prints one JSON line.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: bulk stream|seqpacket TOTAL PART [RECVBUF]\n");
    return 2;
  }
  int type = strcmp(argv[1], "seqpacket") == 0 ? SOCK_SEQPACKET : SOCK_STREAM;
  long long total = atoll(argv[2]);
  size_t part = (size_t)atoll(argv[3]);
  size_t rbuf = argc > 4 ? (size_t)atoll(argv[4]) : 256 * 1024;
  if (type == SOCK_SEQPACKET && rbuf < part) rbuf = part;
  int sv[2];
  if (socketpair(AF_UNIX, type, 0, sv) < 0) { perror("socketpair"); return 1; }
  // Same socket buffer sizes as the library side under test (BT_SNDBUF, 0 = kernel default).
  const char* sb = getenv("BT_SNDBUF");
  if (sb && atoi(sb) > 0) {
    int v = atoi(sb);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
  }
  int ready[2];
  if (pipe(ready) < 0) { perror("pipe"); return 1; }
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    char* buf = malloc(rbuf);
    long long got = 0;
    while (got < total) {
      ssize_t n = read(sv[1], buf, rbuf);
      if (n <= 0) { perror("read"); _exit(1); }
      got += n;
    }
    char c = 1;
    if (write(ready[1], &c, 1) != 1) _exit(1);
    _exit(0);
  }
  close(sv[1]);
  char* buf = malloc(part);
  memset(buf, 0x5a, part);
  double t0 = now();
  long long sent = 0;
  while (sent < total) {
    size_t want = total - sent < (long long)part ? (size_t)(total - sent) : part;
    size_t off = 0;
    while (off < want) {
      ssize_t n = write(sv[0], buf + off, want - off);
      if (n < 0) { perror("write"); return 1; }
      off += n;
    }
    sent += want;
  }
  char c;
  if (read(ready[0], &c, 1) != 1) { perror("read ready"); return 1; }
  double t1 = now();
  waitpid(pid, NULL, 0);
  // CPU time of each side (user + system), start-up included (negligible next to the transfer).
  struct rusage self, child;
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &child);
  double cs = self.ru_utime.tv_sec + self.ru_utime.tv_usec / 1e6 + self.ru_stime.tv_sec + self.ru_stime.tv_usec / 1e6;
  double cr = child.ru_utime.tv_sec + child.ru_utime.tv_usec / 1e6 + child.ru_stime.tv_sec + child.ru_stime.tv_usec / 1e6;
  printf("{\"bytes\":%lld,\"seconds\":%.6f,\"senderCpu\":%.6f,\"receiverCpu\":%.6f}\n", total, t1 - t0, cs, cr);
  return 0;
}
