// Baseline: sendmsg/recvmsg with SCM_RIGHTS over an AF_UNIX socketpair between two
// processes. Modes:
//   pipelined N K [range] : N messages of 1 byte + K fds, sent back to back; the
//                   receiver takes each batch and closes the fds it got, one close(2)
//                   each, or with "range" one close_range(2) per batch when the batch
//                   is a run of consecutive numbers (as closeFds does in the library).
//   pingpong N    : N round trips of 1 byte + 1 fd each way... one fd each way.
// Prints one JSON line.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SCM_MAX_FD 253

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int send_fds(int sock, const int* fds, int n) {
  char byte = 'x';
  struct iovec iov = {&byte, 1};
  char cbuf[CMSG_SPACE(sizeof(int) * SCM_MAX_FD)];
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
  struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * n);
  memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
  return sendmsg(sock, &msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

// Receives one batch, closes its fds, returns how many came (-1 on EOF/error).
static int use_range = 0;

static void close_batch(const int* fds, int n) {
  if (use_range && n > 1) {
    int lo = fds[0], hi = fds[0];
    for (int i = 1; i < n; i++) {
      if (fds[i] < lo) lo = fds[i];
      if (fds[i] > hi) hi = fds[i];
    }
    if (hi - lo + 1 == n && syscall(SYS_close_range, (unsigned)lo, (unsigned)hi, 0u) == 0) return;
  }
  for (int i = 0; i < n; i++) close(fds[i]);
}

static int recv_close(int sock, char* buf, size_t len) {
  char cbuf[CMSG_SPACE(sizeof(int) * SCM_MAX_FD)];
  struct iovec iov = {buf, len};
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);
  ssize_t r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  if (r <= 0) return -1;
  int count = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int* fds = (int*)CMSG_DATA(c);
    close_batch(fds, n);
    count += n;
  }
  return count;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fdpass pipelined N K | pingpong N\n");
    return 2;
  }
  int pingpong = strcmp(argv[1], "pingpong") == 0;
  long n = atol(argv[2]);
  int k = argc > 3 ? atoi(argv[3]) : 1;
  if (k < 1 || k > SCM_MAX_FD) k = 1;
  use_range = argc > 4 && strcmp(argv[4], "range") == 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { perror("socketpair"); return 1; }
  // Same socket buffer sizes as the library side under test (BT_SNDBUF, 0 = kernel default).
  const char* sb = getenv("BT_SNDBUF");
  if (sb && atoi(sb) > 0) {
    int v = atoi(sb);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
  }
  int efd = eventfd(0, EFD_CLOEXEC);
  int fds[SCM_MAX_FD];
  for (int i = 0; i < k; i++) fds[i] = efd;
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    char buf[4096];
    long got = 0;
    long want = pingpong ? n : n * k;
    while (got < want) {
      int r = recv_close(sv[1], buf, pingpong ? 1 : sizeof(buf));
      if (r < 0) { perror("recvmsg"); _exit(1); }
      got += r;
      if (pingpong && send_fds(sv[1], &efd, 1) < 0) _exit(1);
    }
    if (!pingpong) {
      char c = 1;
      if (write(sv[1], &c, 1) != 1) _exit(1);
    }
    _exit(0);
  }
  close(sv[1]);
  char buf[16];
  double t0 = now();
  if (pingpong) {
    for (long i = 0; i < n; i++) {
      if (send_fds(sv[0], &efd, 1) < 0) { perror("sendmsg"); return 1; }
      if (recv_close(sv[0], buf, 1) != 1) { perror("recvmsg"); return 1; }
    }
  } else {
    for (long i = 0; i < n; i++) {
      if (send_fds(sv[0], fds, k) < 0) { perror("sendmsg"); return 1; }
    }
    if (read(sv[0], buf, 1) != 1) { perror("read"); return 1; }
  }
  double t1 = now();
  waitpid(pid, NULL, 0);
  // CPU time of each side (user + system), start-up included (negligible next to the run).
  struct rusage self, child;
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &child);
  double cs = self.ru_utime.tv_sec + self.ru_utime.tv_usec / 1e6 + self.ru_stime.tv_sec + self.ru_stime.tv_usec / 1e6;
  double cr = child.ru_utime.tv_sec + child.ru_utime.tv_usec / 1e6 + child.ru_stime.tv_sec + child.ru_stime.tv_usec / 1e6;
  printf("{\"messages\":%ld,\"fdsPerMessage\":%d,\"fds\":%ld,\"seconds\":%.6f,\"senderCpu\":%.6f,\"receiverCpu\":%.6f}\n", n,
         pingpong ? 1 : k, pingpong ? n : n * k, t1 - t0, cs, cr);
  return 0;
}
