// C floor of the staged switch-over (issue 14): what the downtime costs when the
// backends are already staged and only the mutable state must move. Two processes
// on an AF_UNIX stream socketpair; per run the source writes a freeze message (24
// bytes), DEVBYTES of per-device state and STATEBYTES of VMM state (prepared before
// the timer starts), and reads a 1-byte ACK; the target reads the freeze message and
// exactly DEVBYTES + STATEBYTES into a buffer it wrote before, then writes the ACK.
// The downtime of a run: from before the freeze message is written until the ACK
// is read. No CRC, no framing beyond that: the floor.
//   switchover RUNS DEVBYTES STATEBYTES  -> {"medianMs":…,"minMs":…,"runs":…}
// SO_SNDBUF is BT_SNDBUF (default 4 MiB), as the library's source sets it.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_all(int fd, char* p, size_t n) {
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: switchover RUNS DEVBYTES STATEBYTES\n");
    return 2;
  }
  int runs = atoi(argv[1]);
  size_t dev = (size_t)atoll(argv[2]), state = (size_t)atoll(argv[3]);
  size_t total = 24 + dev + state;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 1;
  const char* e = getenv("BT_SNDBUF");
  int sndbuf = e ? atoi(e) : 4 << 20;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    char* in = malloc(total);
    memset(in, 0, total); // written before: no page faults inside the window
    for (int r = 0; r < runs; r++) {
      if (read_all(sv[1], in, total) != 0) _exit(1);
      char ack = 'A';
      if (write_all(sv[1], &ack, 1) != 0) _exit(1);
    }
    _exit(0);
  }
  close(sv[1]);
  char* out = malloc(total);
  for (size_t i = 0; i < total; i++) out[i] = (char)(i * 7);
  double* t = malloc(sizeof(double) * runs);
  for (int r = 0; r < runs; r++) {
    usleep(20000);
    double t0 = now();
    if (write_all(sv[0], out, total) != 0) return 1;
    char ack;
    if (read_all(sv[0], &ack, 1) != 0) return 1;
    t[r] = (now() - t0) * 1000;
  }
  close(sv[0]);
  waitpid(pid, NULL, 0);
  qsort(t, runs, sizeof(double), cmp);
  printf("{\"medianMs\":%.4f,\"minMs\":%.4f,\"maxMs\":%.4f,\"runs\":%d,\"bytes\":%zu}\n", t[runs / 2], t[0], t[runs - 1], runs, total);
  return 0;
}
