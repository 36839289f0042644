// TUN/TAP ioctls on an fd of /dev/net/tun (opened by the caller, e.g. fs.openSync):
// TUNSETIFF, TUNGETIFF, TUNSETQUEUE, vnet header size, offloads, features,
// TUNGETDEVNETNS; and if_nametoindex.
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "errors.h"

namespace bt {

namespace {

Napi::Object IfrToObject(Napi::Env env, const struct ifreq& ifr) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", Napi::String::New(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  o.Set("flags", Napi::Number::New(env, static_cast<uint16_t>(ifr.ifr_flags)));
  return o;
}

// tunsetiff(fd, name, flags): { name, flags }. An empty name lets the kernel pick one.
Napi::Value TunSetIff(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  std::string name = StringArg(info, 1);
  if (name.size() >= IFNAMSIZ) ThrowArg(info.Env(), "interface name longer than 15 bytes");
  struct ifreq ifr = {};
  memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = static_cast<short>(IntArg(info, 2, IFF_TAP | IFF_NO_PI, 0, 65535, "flags"));
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) ThrowErrno(info.Env(), errno, "ioctl(TUNSETIFF)");
  return IfrToObject(info.Env(), ifr);
}

// tungetiff(fd): { name, flags } (flags include IFF_DETACH_QUEUE / IFF_NOFILTER as the kernel reports)
Napi::Value TunGetIff(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct ifreq ifr = {};
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) ThrowErrno(info.Env(), errno, "ioctl(TUNGETIFF)");
  return IfrToObject(info.Env(), ifr);
}

// tunsetqueue(fd, flags): IFF_ATTACH_QUEUE or IFF_DETACH_QUEUE
Napi::Value TunSetQueue(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  struct ifreq ifr = {};
  ifr.ifr_flags = static_cast<short>(IntArg(info, 1, IFF_ATTACH_QUEUE, 0, 65535, "flags"));
  if (ioctl(fd, TUNSETQUEUE, &ifr) < 0) ThrowErrno(info.Env(), errno, "ioctl(TUNSETQUEUE)");
  return info.Env().Undefined();
}

Napi::Value TunGetVnetHdrSz(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int sz = 0;
  if (ioctl(fd, TUNGETVNETHDRSZ, &sz) < 0) ThrowErrno(info.Env(), errno, "ioctl(TUNGETVNETHDRSZ)");
  return Napi::Number::New(info.Env(), sz);
}

Napi::Value TunSetVnetHdrSz(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int sz = IntArg(info, 1, 0, 0, 2147483647.0, "size");
  if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) ThrowErrno(info.Env(), errno, "ioctl(TUNSETVNETHDRSZ)");
  return info.Env().Undefined();
}

// tunsetoffload(fd, flags): TUN_F_CSUM | TUN_F_TSO4 | ...
Napi::Value TunSetOffload(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  unsigned long flags = static_cast<unsigned>(IntArg(info, 1, 0, 0, 2147483647.0, "flags"));
  if (ioctl(fd, TUNSETOFFLOAD, flags) < 0) ThrowErrno(info.Env(), errno, "ioctl(TUNSETOFFLOAD)");
  return info.Env().Undefined();
}

// tungetfeatures(fd): the IFF_* flags this kernel's tun driver supports
Napi::Value TunGetFeatures(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  unsigned int features = 0;
  if (ioctl(fd, TUNGETFEATURES, &features) < 0) ThrowErrno(info.Env(), errno, "ioctl(TUNGETFEATURES)");
  return Napi::Number::New(info.Env(), features);
}

// tungetdevnetns(fd): an fd of the network namespace the device lives in (Linux >= 5.2)
Napi::Value TunGetDevNetns(const Napi::CallbackInfo& info) {
  int fd = FdArg(info, 0);
  int ns = ioctl(fd, TUNGETDEVNETNS);
  if (ns < 0) ThrowErrno(info.Env(), errno, "ioctl(TUNGETDEVNETNS)");
  return Napi::Number::New(info.Env(), ns);
}

// if_nametoindex(name): ifindex in the caller's network namespace, 0 if none
Napi::Value IfNameToIndex(const Napi::CallbackInfo& info) {
  std::string name = StringArg(info, 0);
  unsigned idx = if_nametoindex(name.c_str());
  if (idx == 0 && errno != ENODEV && errno != ENXIO) ThrowErrno(info.Env(), errno, "if_nametoindex");
  return Napi::Number::New(info.Env(), idx);
}

}  // namespace

void InitTap(Napi::Env env, Napi::Object exports) {
  exports.Set("tunsetiff", Napi::Function::New(env, TunSetIff, "tunsetiff"));
  exports.Set("tungetiff", Napi::Function::New(env, TunGetIff, "tungetiff"));
  exports.Set("tunsetqueue", Napi::Function::New(env, TunSetQueue, "tunsetqueue"));
  exports.Set("tungetvnethdrsz", Napi::Function::New(env, TunGetVnetHdrSz, "tungetvnethdrsz"));
  exports.Set("tunsetvnethdrsz", Napi::Function::New(env, TunSetVnetHdrSz, "tunsetvnethdrsz"));
  exports.Set("tunsetoffload", Napi::Function::New(env, TunSetOffload, "tunsetoffload"));
  exports.Set("tungetfeatures", Napi::Function::New(env, TunGetFeatures, "tungetfeatures"));
  exports.Set("tungetdevnetns", Napi::Function::New(env, TunGetDevNetns, "tungetdevnetns"));
  exports.Set("if_nametoindex", Napi::Function::New(env, IfNameToIndex, "if_nametoindex"));

  exports.Set("IFF_TUN", Napi::Number::New(env, IFF_TUN));
  exports.Set("IFF_TAP", Napi::Number::New(env, IFF_TAP));
  exports.Set("IFF_NO_PI", Napi::Number::New(env, IFF_NO_PI));
  exports.Set("IFF_VNET_HDR", Napi::Number::New(env, IFF_VNET_HDR));
  exports.Set("IFF_MULTI_QUEUE", Napi::Number::New(env, IFF_MULTI_QUEUE));
  exports.Set("IFF_ATTACH_QUEUE", Napi::Number::New(env, IFF_ATTACH_QUEUE));
  exports.Set("IFF_DETACH_QUEUE", Napi::Number::New(env, IFF_DETACH_QUEUE));
  exports.Set("IFF_NOFILTER", Napi::Number::New(env, IFF_NOFILTER));
  exports.Set("IFF_PERSIST", Napi::Number::New(env, IFF_PERSIST));
  exports.Set("IFF_TUN_EXCL", Napi::Number::New(env, IFF_TUN_EXCL));
  exports.Set("TUN_F_CSUM", Napi::Number::New(env, TUN_F_CSUM));
  exports.Set("TUN_F_TSO4", Napi::Number::New(env, TUN_F_TSO4));
  exports.Set("TUN_F_TSO6", Napi::Number::New(env, TUN_F_TSO6));
  exports.Set("TUN_F_TSO_ECN", Napi::Number::New(env, TUN_F_TSO_ECN));
  exports.Set("TUN_F_UFO", Napi::Number::New(env, TUN_F_UFO));
}

}  // namespace bt
