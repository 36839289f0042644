// AF_UNIX sockets: socket / socketpair / bind / listen / accept4 / connect,
// socket options, SO_PEERCRED / SO_PEERPIDFD, names, shutdown, close, close_range, dup.
// Every socket made here is SOCK_NONBLOCK | SOCK_CLOEXEC.
// Addresses are strings; a leading "\0" makes an abstract address.
#include <fcntl.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "errors.h"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace bt {

namespace {

socklen_t MakeAddr(Napi::Env env, const std::string& path, struct sockaddr_un* sa) {
  memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  bool abstract = !path.empty() && path[0] == '\0';
  size_t max = sizeof(sa->sun_path) - (abstract ? 0 : 1);
  if (path.empty()) ThrowArg(env, "empty unix socket address");
  if (path.size() > max) ThrowErrno(env, ENAMETOOLONG, abstract ? "bind/connect (abstract address)" : "bind/connect (path)");
  if (!abstract && path.find('\0') != std::string::npos) ThrowArg(env, "unix socket path contains a NUL byte");
  memcpy(sa->sun_path, path.data(), path.size());
  return static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
}

Napi::Value AddrToValue(Napi::Env env, const struct sockaddr_un* sa, socklen_t len) {
  size_t off = offsetof(struct sockaddr_un, sun_path);
  if (len <= off) return Napi::String::New(env, "");
  size_t n = len - off;
  const char* p = sa->sun_path;
  if (p[0] != '\0') n = strnlen(p, n);  // filesystem path: NUL terminated
  return Napi::String::New(env, p, n);
}

int TypeArg(const Napi::CallbackInfo& info, size_t i) {
  int type = IntArg(info, i, SOCK_STREAM, 0, 2147483647.0, "type");
  if (type != SOCK_STREAM && type != SOCK_SEQPACKET && type != SOCK_DGRAM)
    ThrowArg(info.Env(), "socket type must be SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM");
  return type;
}

// socket(type): fd
Napi::Value Socket(const Napi::CallbackInfo& info) {
  int fd = socket(AF_UNIX, TypeArg(info, 0) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(info.Env(), errno, "socket");
  return Napi::Number::New(info.Env(), fd);
}

// socketpair(type): [fd, fd]
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  int sv[2];
  if (socketpair(AF_UNIX, TypeArg(info, 0) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
    ThrowErrno(info.Env(), errno, "socketpair");
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return a;
}

// bind(fd, address)
Napi::Value Bind(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct sockaddr_un sa;
  socklen_t len = MakeAddr(info.Env(), StringArg(info, 1), &sa);
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&sa), len) < 0) ThrowErrno(info.Env(), errno, "bind");
  return info.Env().Undefined();
}

// listen(fd, backlog)
Napi::Value Listen(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (listen(fd, IntArg(info, 1, SOMAXCONN, 0, 2147483647.0, "backlog")) < 0) ThrowErrno(info.Env(), errno, "listen");
  return info.Env().Undefined();
}

// accept4(fd): new fd, or -EAGAIN
Napi::Value Accept4(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int c;
  do {
    c = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (c < 0 && errno == EINTR);
  if (c < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(info.Env(), -EAGAIN);
    ThrowErrno(info.Env(), errno, "accept4");
  }
  return Napi::Number::New(info.Env(), c);
}

// connect(fd, address): 0, or -EAGAIN (listener backlog full: retry), or -EINPROGRESS
Napi::Value Connect(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct sockaddr_un sa;
  socklen_t len = MakeAddr(info.Env(), StringArg(info, 1), &sa);
  int r;
  do {
    r = connect(fd, reinterpret_cast<struct sockaddr*>(&sa), len);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EINPROGRESS) return Napi::Number::New(info.Env(), -errno);
    ThrowErrno(info.Env(), errno, "connect");
  }
  return Napi::Number::New(info.Env(), 0);
}

// getsockopt(fd, level, name): int
Napi::Value GetSockOpt(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, IntArg(info, 1, SOL_SOCKET, 0, 2147483647.0, "level"), IntArg(info, 2, 0, 0, 2147483647.0, "name"), &v,
                 &len) < 0)
    ThrowErrno(info.Env(), errno, "getsockopt");
  return Napi::Number::New(info.Env(), v);
}

// setsockopt(fd, level, name, value: int | Uint8Array): an int option, or the raw
// bytes of a struct option (SO_LINGER's struct linger is Int32Array [onoff, seconds]).
Napi::Value SetSockOpt(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int level = IntArg(info, 1, SOL_SOCKET, 0, 2147483647.0, "level");
  int name = IntArg(info, 2, 0, 0, 2147483647.0, "name");
  Bytes b;
  int r;
  if (info.Length() > 3 && GetBytes(info[3], &b)) {
    if (b.length > 256) ThrowArg(info.Env(), "option value longer than 256 bytes");
    r = setsockopt(fd, level, name, b.data, static_cast<socklen_t>(b.length));
  } else {
    int v = IntArg(info, 3, 0, -2147483648.0, 2147483647.0, "value");
    r = setsockopt(fd, level, name, &v, sizeof(v));
  }
  if (r < 0) ThrowErrno(info.Env(), errno, "setsockopt");
  return info.Env().Undefined();
}

// getpeercred(fd): { pid, uid, gid }  (SO_PEERCRED)
Napi::Value GetPeerCred(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct ucred cred;
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) ThrowErrno(info.Env(), errno, "getsockopt(SO_PEERCRED)");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("pid", Napi::Number::New(info.Env(), cred.pid));
  o.Set("uid", Napi::Number::New(info.Env(), cred.uid));
  o.Set("gid", Napi::Number::New(info.Env(), cred.gid));
  return o;
}

// getpeerpidfd(fd): pidfd of the peer (SO_PEERPIDFD, Linux >= 6.5). The kernel makes it O_CLOEXEC.
Napi::Value GetPeerPidfd(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int pidfd = -1;
  socklen_t len = sizeof(pidfd);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) ThrowErrno(info.Env(), errno, "getsockopt(SO_PEERPIDFD)");
  return Napi::Number::New(info.Env(), pidfd);
}

// getsockname(fd) / getpeername(fd): address string ("" when unnamed, leading "\0" when abstract)
Napi::Value GetSockName(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct sockaddr_un sa;
  socklen_t len = sizeof(sa);
  if (getsockname(fd, reinterpret_cast<struct sockaddr*>(&sa), &len) < 0) ThrowErrno(info.Env(), errno, "getsockname");
  if (sa.sun_family != AF_UNIX) return info.Env().Null();
  return AddrToValue(info.Env(), &sa, len);
}

Napi::Value GetPeerName(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct sockaddr_un sa;
  socklen_t len = sizeof(sa);
  if (getpeername(fd, reinterpret_cast<struct sockaddr*>(&sa), &len) < 0) ThrowErrno(info.Env(), errno, "getpeername");
  if (sa.sun_family != AF_UNIX) return info.Env().Null();
  return AddrToValue(info.Env(), &sa, len);
}

// shutdown(fd, how)
Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (shutdown(fd, IntArg(info, 1, SHUT_WR, 0, 2, "how")) < 0) ThrowErrno(info.Env(), errno, "shutdown");
  return info.Env().Undefined();
}

// close(fd). EINTR still closes on Linux, so it is not an error.
Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (close(fd) < 0 && errno != EINTR) ThrowErrno(info.Env(), errno, "close");
  return info.Env().Undefined();
}

// close_range(first, last): closes every fd in [first, last] in one syscall (Linux 5.9+;
// ENOSYS before). Fds in the range that are not open are skipped by the kernel.
Napi::Value CloseRange(const Napi::CallbackInfo& info) {
  int first = FdArg(info, 0);
  int last = FdArg(info, 1);
  if (syscall(SYS_close_range, static_cast<unsigned>(first), static_cast<unsigned>(last), 0u) < 0)
    ThrowErrno(info.Env(), errno, "close_range");
  return info.Env().Undefined();
}

// dup(fd): a close-on-exec duplicate (fcntl F_DUPFD_CLOEXEC)
Napi::Value Dup(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int n = fcntl(fd, F_DUPFD_CLOEXEC, IntArg(info, 1, 0, 0, 2147483647.0, "minFd"));
  if (n < 0) ThrowErrno(info.Env(), errno, "fcntl(F_DUPFD_CLOEXEC)");
  return Napi::Number::New(info.Env(), n);
}

// fcntl_getfl(fd): file status flags (read only: this library never sets them on a received fd)
Napi::Value FcntlGetfl(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int v = fcntl(fd, F_GETFL);
  if (v < 0) ThrowErrno(info.Env(), errno, "fcntl(F_GETFL)");
  return Napi::Number::New(info.Env(), v);
}

// fcntl_getfd(fd): descriptor flags (FD_CLOEXEC)
Napi::Value FcntlGetfd(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int v = fcntl(fd, F_GETFD);
  if (v < 0) ThrowErrno(info.Env(), errno, "fcntl(F_GETFD)");
  return Napi::Number::New(info.Env(), v);
}

}  // namespace

void InitUnix(Napi::Env env, Napi::Object exports) {
  exports.Set("socket", Napi::Function::New(env, Socket, "socket"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("bind", Napi::Function::New(env, Bind, "bind"));
  exports.Set("listen", Napi::Function::New(env, Listen, "listen"));
  exports.Set("accept4", Napi::Function::New(env, Accept4, "accept4"));
  exports.Set("connect", Napi::Function::New(env, Connect, "connect"));
  exports.Set("getsockopt", Napi::Function::New(env, GetSockOpt, "getsockopt"));
  exports.Set("setsockopt", Napi::Function::New(env, SetSockOpt, "setsockopt"));
  exports.Set("getpeercred", Napi::Function::New(env, GetPeerCred, "getpeercred"));
  exports.Set("getpeerpidfd", Napi::Function::New(env, GetPeerPidfd, "getpeerpidfd"));
  exports.Set("getsockname", Napi::Function::New(env, GetSockName, "getsockname"));
  exports.Set("getpeername", Napi::Function::New(env, GetPeerName, "getpeername"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("close_range", Napi::Function::New(env, CloseRange, "close_range"));
  exports.Set("dup", Napi::Function::New(env, Dup, "dup"));
  exports.Set("fcntl_getfl", Napi::Function::New(env, FcntlGetfl, "fcntl_getfl"));
  exports.Set("fcntl_getfd", Napi::Function::New(env, FcntlGetfd, "fcntl_getfd"));

  exports.Set("AF_UNIX", Napi::Number::New(env, AF_UNIX));
  exports.Set("SOCK_STREAM", Napi::Number::New(env, SOCK_STREAM));
  exports.Set("SOCK_DGRAM", Napi::Number::New(env, SOCK_DGRAM));
  exports.Set("SOCK_SEQPACKET", Napi::Number::New(env, SOCK_SEQPACKET));
  exports.Set("SOL_SOCKET", Napi::Number::New(env, SOL_SOCKET));
  exports.Set("SO_DOMAIN", Napi::Number::New(env, SO_DOMAIN));
  exports.Set("SO_TYPE", Napi::Number::New(env, SO_TYPE));
  exports.Set("SO_ACCEPTCONN", Napi::Number::New(env, SO_ACCEPTCONN));
  exports.Set("SO_ERROR", Napi::Number::New(env, SO_ERROR));
  exports.Set("SO_SNDBUF", Napi::Number::New(env, SO_SNDBUF));
  exports.Set("SO_RCVBUF", Napi::Number::New(env, SO_RCVBUF));
  exports.Set("SO_PEERPIDFD", Napi::Number::New(env, SO_PEERPIDFD));
  exports.Set("SO_LINGER", Napi::Number::New(env, SO_LINGER));
  exports.Set("SHUT_RD", Napi::Number::New(env, SHUT_RD));
  exports.Set("SHUT_WR", Napi::Number::New(env, SHUT_WR));
  exports.Set("SHUT_RDWR", Napi::Number::New(env, SHUT_RDWR));
  exports.Set("O_NONBLOCK", Napi::Number::New(env, O_NONBLOCK));
  exports.Set("FD_CLOEXEC", Napi::Number::New(env, FD_CLOEXEC));
  exports.Set("EINPROGRESS", Napi::Number::New(env, EINPROGRESS));
}

}  // namespace bt
