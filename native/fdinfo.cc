// What kind of fd is this: fstat (type, rdev, size). Socket options are read with
// getsockopt (unix.cc); /proc/self/fd links are read from TypeScript.
// Also the fd factories the backends and tests use: eventfd, memfd_create + seals,
// pipe2, pidfd_open.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <linux/kcmp.h>
#include <unistd.h>

#include "errors.h"

namespace bt {

namespace {

// fstat(fd): { mode, type, rdevMajor, rdevMinor, devMajor, devMinor, ino, size }
Napi::Value Fstat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  struct stat st;
  if (fstat(fd, &st) < 0) ThrowErrno(env, errno, "fstat");
  Napi::Object o = Napi::Object::New(env);
  o.Set("mode", Napi::Number::New(env, st.st_mode));
  o.Set("type", Napi::Number::New(env, st.st_mode & S_IFMT));
  o.Set("rdevMajor", Napi::Number::New(env, major(st.st_rdev)));
  o.Set("rdevMinor", Napi::Number::New(env, minor(st.st_rdev)));
  o.Set("devMajor", Napi::Number::New(env, major(st.st_dev)));
  o.Set("devMinor", Napi::Number::New(env, minor(st.st_dev)));
  o.Set("ino", Napi::Number::New(env, static_cast<double>(st.st_ino)));
  o.Set("size", Napi::Number::New(env, static_cast<double>(st.st_size)));
  return o;
}

// fstat_mode(fd): st_mode alone (the same fstat, without building an object: the
// close path asks it of every fd it closes).
Napi::Value FstatMode(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct stat st;
  if (fstat(fd, &st) < 0) ThrowErrno(info.Env(), errno, "fstat");
  return Napi::Number::New(info.Env(), st.st_mode);
}

// fstat_modes(fds: Int32Array, out: Int32Array): for a batch of fds (the close
// path's), one call into the addon instead of one per fd. out[2i] = st_mode of
// fds[i], or -errno when fstat failed; out[2i+1] = SO_DOMAIN for a socket (or
// -errno), else 0. One fstat per fd, plus one getsockopt per socket; nothing is
// decided here. out must hold 2 * fds.length entries; every fd is checked first.
Napi::Value FstatModes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsTypedArray() ||
      info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
      info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    ThrowArg(env, "fstat_modes(fds: Int32Array, out: Int32Array)");
  Napi::Int32Array fds = info[0].As<Napi::Int32Array>();
  Napi::Int32Array out = info[1].As<Napi::Int32Array>();
  size_t n = fds.ElementLength();
  if (out.ElementLength() / 2 < n) ThrowArg(env, "out (argument 1) must hold 2 entries per fd");
  for (size_t i = 0; i < n; i++)
    if (fds[i] < 0) ThrowArg(env, "fds must be integers in [0, 2^31 - 1]");
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    int32_t aux = 0;
    int32_t mode;
    if (fstat(fds[i], &st) < 0)
      mode = -errno;
    else {
      mode = static_cast<int32_t>(st.st_mode);
      if (S_ISSOCK(st.st_mode)) {
        int domain = 0;
        socklen_t len = sizeof(domain);
        aux = getsockopt(fds[i], SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 ? -errno : domain;
      }
    }
    out[2 * i] = mode;
    out[2 * i + 1] = aux;
  }
  return env.Undefined();
}

// eventfd(initval, flags): fd. EFD_CLOEXEC is always added.
Napi::Value EventFd(const Napi::CallbackInfo& info) {
  double initval = info.Length() > 0 && !info[0].IsUndefined() ? IntegerArg(info, 0, "initval", 0, 4294967295.0) : 0;
  int fd = eventfd(static_cast<unsigned>(initval), IntArg(info, 1, 0, 0, 2147483647.0, "flags") | EFD_CLOEXEC);
  if (fd < 0) ThrowErrno(info.Env(), errno, "eventfd");
  return Napi::Number::New(info.Env(), fd);
}

// memfd_create(name, flags): fd. MFD_CLOEXEC | MFD_ALLOW_SEALING are always added.
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = StringArg(info, 0);
  int fd = memfd_create(name.c_str(),
                        static_cast<unsigned>(IntArg(info, 1, 0, 0, 2147483647.0, "flags")) | MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) ThrowErrno(info.Env(), errno, "memfd_create");
  return Napi::Number::New(info.Env(), fd);
}

// fcntl_add_seals(fd, seals)
Napi::Value FcntlAddSeals(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  if (fcntl(fd, F_ADD_SEALS, IntArg(info, 1, 0, 0, 2147483647.0, "seals")) < 0)
    ThrowErrno(info.Env(), errno, "fcntl(F_ADD_SEALS)");
  return info.Env().Undefined();
}

// fcntl_get_seals(fd): seals (EINVAL when the file does not support sealing)
Napi::Value FcntlGetSeals(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int v = fcntl(fd, F_GET_SEALS);
  if (v < 0) ThrowErrno(info.Env(), errno, "fcntl(F_GET_SEALS)");
  return Napi::Number::New(info.Env(), v);
}

// pipe2(flags): [readFd, writeFd]. O_CLOEXEC is always added.
Napi::Value Pipe2(const Napi::CallbackInfo& info) {
  int fds[2];
  if (pipe2(fds, IntArg(info, 0, 0, 0, 2147483647.0, "flags") | O_CLOEXEC) < 0) ThrowErrno(info.Env(), errno, "pipe2");
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), fds[0]));
  a.Set(1u, Napi::Number::New(info.Env(), fds[1]));
  return a;
}

// pidfd_open(pid): fd (always close-on-exec)
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  int pid = static_cast<int>(IntegerArg(info, 0, "pid", 1, 2147483647.0));
  long fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) ThrowErrno(info.Env(), errno, "pidfd_open");
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

// kcmp(pid1, pid2, type, idx1, idx2): 0 equal, 1 less, 2 greater, 3 not equal but
// unordered (kcmp(2)). Only the types whose idx are plain integers (KCMP_FILE,
// KCMP_VM, KCMP_FILES, KCMP_FS, KCMP_SIGHAND, KCMP_IO, KCMP_SYSVSEM); not
// KCMP_EPOLL_TFD, whose idx2 is a pointer. EPERM where ptrace access is denied
// (YAMA), ENOSYS without CONFIG_KCMP.
Napi::Value Kcmp(const Napi::CallbackInfo& info) {
  int pid1 = static_cast<int>(IntegerArg(info, 0, "pid1", 1, 2147483647.0));
  int pid2 = static_cast<int>(IntegerArg(info, 1, "pid2", 1, 2147483647.0));
  int type = static_cast<int>(IntegerArg(info, 2, "type", 0, KCMP_TYPES - 1));
  if (type == KCMP_EPOLL_TFD) ThrowArg(info.Env(), "KCMP_EPOLL_TFD is not supported");
  double idx1 = IntegerArg(info, 3, "idx1", 0, 2147483647.0);
  double idx2 = IntegerArg(info, 4, "idx2", 0, 2147483647.0);
  long r = syscall(SYS_kcmp, pid1, pid2, type, static_cast<unsigned long>(idx1), static_cast<unsigned long>(idx2));
  if (r < 0) ThrowErrno(info.Env(), errno, "kcmp");
  return Napi::Number::New(info.Env(), static_cast<double>(r));
}

}  // namespace

void InitFdinfo(Napi::Env env, Napi::Object exports) {
  exports.Set("fstat", Napi::Function::New(env, Fstat, "fstat"));
  exports.Set("fstat_mode", Napi::Function::New(env, FstatMode, "fstat_mode"));
  exports.Set("fstat_modes", Napi::Function::New(env, FstatModes, "fstat_modes"));
  exports.Set("eventfd", Napi::Function::New(env, EventFd, "eventfd"));
  exports.Set("memfd_create", Napi::Function::New(env, MemfdCreate, "memfd_create"));
  exports.Set("fcntl_add_seals", Napi::Function::New(env, FcntlAddSeals, "fcntl_add_seals"));
  exports.Set("fcntl_get_seals", Napi::Function::New(env, FcntlGetSeals, "fcntl_get_seals"));
  exports.Set("pipe2", Napi::Function::New(env, Pipe2, "pipe2"));
  exports.Set("pidfd_open", Napi::Function::New(env, PidfdOpen, "pidfd_open"));
  exports.Set("kcmp", Napi::Function::New(env, Kcmp, "kcmp"));
  exports.Set("KCMP_FILE", Napi::Number::New(env, KCMP_FILE));

  exports.Set("S_IFMT", Napi::Number::New(env, S_IFMT));
  exports.Set("S_IFSOCK", Napi::Number::New(env, S_IFSOCK));
  exports.Set("S_IFCHR", Napi::Number::New(env, S_IFCHR));
  exports.Set("S_IFREG", Napi::Number::New(env, S_IFREG));
  exports.Set("S_IFIFO", Napi::Number::New(env, S_IFIFO));
  exports.Set("S_IFDIR", Napi::Number::New(env, S_IFDIR));
  exports.Set("S_IFBLK", Napi::Number::New(env, S_IFBLK));
  exports.Set("S_IFLNK", Napi::Number::New(env, S_IFLNK));
  exports.Set("EFD_NONBLOCK", Napi::Number::New(env, EFD_NONBLOCK));
  exports.Set("EFD_SEMAPHORE", Napi::Number::New(env, EFD_SEMAPHORE));
  exports.Set("F_SEAL_SEAL", Napi::Number::New(env, F_SEAL_SEAL));
  exports.Set("F_SEAL_SHRINK", Napi::Number::New(env, F_SEAL_SHRINK));
  exports.Set("F_SEAL_GROW", Napi::Number::New(env, F_SEAL_GROW));
  exports.Set("F_SEAL_WRITE", Napi::Number::New(env, F_SEAL_WRITE));
#ifdef F_SEAL_FUTURE_WRITE
  exports.Set("F_SEAL_FUTURE_WRITE", Napi::Number::New(env, F_SEAL_FUTURE_WRITE));
#endif
}

}  // namespace bt
