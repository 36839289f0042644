// sendmsg / recvmsg with SCM_RIGHTS. One syscall per call (EINTR is retried).
// EAGAIN is returned as -EAGAIN instead of thrown: it is the common case on a
// non-blocking socket and building an Error per EAGAIN would cost more than the
// syscall. Every other failure throws an errno Error.
#include <sys/socket.h>
#include <sys/uio.h>
#include <climits>
#include <unistd.h>

#include "errors.h"

namespace bt {

namespace {

constexpr int kScmMaxFd = 253;  // SCM_MAX_FD in the kernel, not exported by libc
constexpr int kMaxIov = 1024;   // IOV_MAX on Linux

// Fills fds from an Int32Array or an array of numbers. Returns the count.
int CollectFds(Napi::Env env, Napi::Value v, int* fds) {
  if (v.IsUndefined() || v.IsNull()) return 0;
  if (v.IsTypedArray()) {
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    if (ta.TypedArrayType() != napi_int32_array) ThrowArg(env, "fds must be an Int32Array or an array of integers");
    Napi::Int32Array a = v.As<Napi::Int32Array>();
    size_t n = a.ElementLength();
    if (n > static_cast<size_t>(kScmMaxFd)) ThrowArg(env, "at most 253 fds (SCM_MAX_FD) per sendmsg");
    for (size_t i = 0; i < n; i++) {
      if (a[i] < 0) ThrowArg(env, "fds must be integers in [0, 2^31 - 1]");
      fds[i] = a[i];
    }
    return static_cast<int>(n);
  }
  if (!v.IsArray()) ThrowArg(env, "fds must be an Int32Array or an array of integers");
  Napi::Array a = v.As<Napi::Array>();
  uint32_t n = a.Length();
  if (n > static_cast<uint32_t>(kScmMaxFd)) ThrowArg(env, "at most 253 fds (SCM_MAX_FD) per sendmsg");
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value e = a.Get(i);
    if (!e.IsNumber() || !IsFdValue(e.As<Napi::Number>().DoubleValue())) ThrowArg(env, "fds must be integers in [0, 2^31 - 1]");
    fds[i] = static_cast<int>(e.As<Napi::Number>().DoubleValue());
  }
  return static_cast<int>(n);
}

// sendmsg(fd, data: Uint8Array | Uint8Array[], fds?: Int32Array | number[]): number
// Returns bytes written (possibly fewer than offered), or -EAGAIN.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);

  struct iovec iov[kMaxIov];
  int iovcnt = 0;
  Bytes b;
  if (info.Length() > 1 && GetBytes(info[1], &b)) {
    iov[0].iov_base = b.data;
    iov[0].iov_len = b.length;
    iovcnt = 1;
  } else if (info.Length() > 1 && info[1].IsArray()) {
    Napi::Array arr = info[1].As<Napi::Array>();
    uint32_t n = arr.Length();
    if (n > static_cast<uint32_t>(kMaxIov)) ThrowArg(env, "at most 1024 buffers (IOV_MAX) per sendmsg");
    for (uint32_t i = 0; i < n; i++) {
      if (!GetBytes(arr.Get(i), &b)) ThrowArg(env, "data must be Uint8Arrays");
      iov[iovcnt].iov_base = b.data;
      iov[iovcnt].iov_len = b.length;
      iovcnt++;
    }
  } else {
    ThrowArg(env, "data must be a Uint8Array or an array of Uint8Arrays");
  }

  int fds[kScmMaxFd];
  int nfds = info.Length() > 2 ? CollectFds(env, info[2], fds) : 0;

  alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kScmMaxFd)];
  struct msghdr msg = {};
  msg.msg_iov = iov;
  msg.msg_iovlen = iovcnt;
  if (nfds > 0) {
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }

  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -EAGAIN);
    ThrowErrno(env, errno, "sendmsg");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// recvmsg(fd, buffer, offset, length, meta: Int32Array(2 + 253)): number
// Receives into buffer[offset, offset+length). Always MSG_CMSG_CLOEXEC.
// meta[0] = number of fds received, meta[1] = msg_flags (MSG_CTRUNC, MSG_TRUNC),
// meta[2..] = the fds. Returns the byte count (0 = EOF unless fds came), or -EAGAIN.
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes buf;
  if (info.Length() < 5 || !GetBytes(info[1], &buf)) ThrowArg(env, "recvmsg(fd, buffer, offset, length, meta)");
  uint64_t off = SizeArg(info, 2, "offset");
  uint64_t len = SizeArg(info, 3, "length");
  CheckRange(env, off, len, buf.length);
  if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    ThrowArg(env, "meta must be an Int32Array");
  Napi::Int32Array meta = info[4].As<Napi::Int32Array>();
  if (meta.ElementLength() < static_cast<size_t>(2 + kScmMaxFd)) ThrowArg(env, "meta must hold 2 + 253 entries");

  struct iovec iov;
  iov.iov_base = buf.data + off;
  iov.iov_len = static_cast<size_t>(len);
  alignas(struct cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kScmMaxFd)];
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);

  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -EAGAIN);
    ThrowErrno(env, errno, "recvmsg");
  }

  int32_t* out = meta.Data();
  int nfds = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int count = static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < count; i++) {
      int rfd;
      memcpy(&rfd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (nfds < kScmMaxFd) {
        out[2 + nfds++] = rfd;
      } else {
        close(rfd);  // cannot happen with a control buffer sized for SCM_MAX_FD; never leak
        msg.msg_flags |= MSG_CTRUNC;
      }
    }
  }
  out[0] = nfds;
  out[1] = msg.msg_flags;
  return Napi::Number::New(env, static_cast<double>(n));
}

// recvmmsg(fd, buffer, offset, length, meta, vlen): number
// One recvmmsg(MSG_DONTWAIT | MSG_CMSG_CLOEXEC) receiving up to vlen messages into
// vlen equal slices of buffer[offset, offset+length). On a stream socket a
// recvmsg stops after each fd-carrying skb, so this is how many small fd-carrying
// messages are taken with one syscall. meta: Int32Array; meta[0] = messages
// received, then per message [bytes, msg_flags, nfds, ...fds]. Returns the number
// of messages, or -EAGAIN when none was waiting.
constexpr int kMaxMmsg = 64;

Napi::Value RecvMmsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  Bytes buf;
  if (info.Length() < 6 || !GetBytes(info[1], &buf)) ThrowArg(env, "recvmmsg(fd, buffer, offset, length, meta, vlen)");
  uint64_t off = SizeArg(info, 2, "offset");
  uint64_t len = SizeArg(info, 3, "length");
  int vlen = static_cast<int>(IntegerArg(info, 5, "vlen", 1, kMaxMmsg));
  CheckRange(env, off, len, buf.length);
  if (len < static_cast<uint64_t>(vlen)) ThrowArg(env, "vlen must be at most length");
  if (!info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    ThrowArg(env, "meta must be an Int32Array");
  Napi::Int32Array meta = info[4].As<Napi::Int32Array>();
  size_t cap = meta.ElementLength();
  if (cap < static_cast<size_t>(1 + vlen * (3 + kScmMaxFd))) ThrowArg(env, "meta must hold 1 + vlen * (3 + 253) entries");

  static thread_local struct mmsghdr msgs[kMaxMmsg];
  static thread_local struct iovec iovs[kMaxMmsg];
  alignas(struct cmsghdr) static thread_local char cbufs[kMaxMmsg][CMSG_SPACE(sizeof(int) * kScmMaxFd)];
  size_t slice = static_cast<size_t>(len) / static_cast<size_t>(vlen);
  for (int i = 0; i < vlen; i++) {
    iovs[i].iov_base = buf.data + off + static_cast<size_t>(i) * slice;
    iovs[i].iov_len = slice;
    memset(&msgs[i], 0, sizeof(msgs[i]));
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_control = cbufs[i];
    msgs[i].msg_hdr.msg_controllen = sizeof(cbufs[i]);
  }
  int n;
  do {
    n = recvmmsg(fd, msgs, vlen, MSG_CMSG_CLOEXEC | MSG_DONTWAIT, nullptr);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -EAGAIN);
    ThrowErrno(env, errno, "recvmmsg");
  }
  int32_t* out = meta.Data();
  size_t w = 1;
  for (int i = 0; i < n; i++) {
    struct msghdr* m = &msgs[i].msg_hdr;
    out[w] = static_cast<int32_t>(msgs[i].msg_len);
    size_t flagsAt = w + 1, countAt = w + 2;
    w += 3;
    int nfds = 0;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(m); c != nullptr; c = CMSG_NXTHDR(m, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int count = static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int k = 0; k < count; k++) {
        int rfd;
        memcpy(&rfd, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
        if (nfds < kScmMaxFd) {
          out[w++] = rfd;
          nfds++;
        } else {
          close(rfd);
          m->msg_flags |= MSG_CTRUNC;
        }
      }
    }
    out[flagsAt] = m->msg_flags;
    out[countAt] = nfds;
  }
  out[0] = n;
  return Napi::Number::New(env, n);
}

}  // namespace

void InitFdpass(Napi::Env env, Napi::Object exports) {
  exports.Set("sendmsg", Napi::Function::New(env, SendMsg, "sendmsg"));
  exports.Set("recvmsg", Napi::Function::New(env, RecvMsg, "recvmsg"));
  exports.Set("recvmmsg", Napi::Function::New(env, RecvMmsg, "recvmmsg"));
  exports.Set("RECVMMSG_MAX", Napi::Number::New(env, kMaxMmsg));
  exports.Set("SCM_MAX_FD", Napi::Number::New(env, kScmMaxFd));
  exports.Set("IOV_MAX", Napi::Number::New(env, kMaxIov));
  exports.Set("MSG_CTRUNC", Napi::Number::New(env, MSG_CTRUNC));
  exports.Set("MSG_TRUNC", Napi::Number::New(env, MSG_TRUNC));
  exports.Set("EAGAIN", Napi::Number::New(env, EAGAIN));
}

}  // namespace bt
