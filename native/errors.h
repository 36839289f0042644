// errno -> Error { code: 'EAGAIN', errno: -11, syscall: 'sendmsg' }, the way Node's
// own errnoException shapes system errors. Native code reports; TypeScript decides.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace bt {

inline Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  const char* name = strerrorname_np(err);
  const char* desc = strerrordesc_np(err);
  std::string code = name ? name : ("E" + std::to_string(err));
  std::string msg = code + ": " + (desc ? desc : "unknown error") + ", " + syscall;
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  e.Set("errno", Napi::Number::New(env, -err));  // negative, as in Node's fs/net errors
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

[[noreturn]] inline void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  throw ErrnoError(env, err, syscall);
}

// An argument error with a stable code (not an errno).
[[noreturn]] inline void ThrowArg(Napi::Env env, const char* code, const std::string& msg) {
  Napi::Error e = Napi::TypeError::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

inline int FdArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber())
    ThrowArg(info.Env(), "ERR_INVALID_ARG_TYPE", "argument " + std::to_string(i) + " must be an fd (integer)");
  int fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) ThrowArg(info.Env(), "ERR_INVALID_ARG_VALUE", "fd must be >= 0");
  return fd;
}

inline int IntArg(const Napi::CallbackInfo& info, size_t i, int dflt) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return dflt;
  if (!info[i].IsNumber())
    ThrowArg(info.Env(), "ERR_INVALID_ARG_TYPE", "argument " + std::to_string(i) + " must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

inline std::string StringArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString())
    ThrowArg(info.Env(), "ERR_INVALID_ARG_TYPE", "argument " + std::to_string(i) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

// Byte view of a TypedArray/Buffer argument.
struct Bytes {
  uint8_t* data;
  size_t length;
};

inline bool GetBytes(Napi::Value v, Bytes* out) {
  if (!v.IsTypedArray()) return false;
  napi_typedarray_type type;
  size_t length;
  void* data;
  napi_value ab;
  size_t byte_offset;
  if (napi_get_typedarray_info(v.Env(), v, &type, &length, &data, &ab, &byte_offset) != napi_ok) return false;
  size_t elem = 1;
  switch (type) {
    case napi_int8_array: case napi_uint8_array: case napi_uint8_clamped_array: elem = 1; break;
    case napi_int16_array: case napi_uint16_array: elem = 2; break;
    case napi_int32_array: case napi_uint32_array: case napi_float32_array: elem = 4; break;
    default: elem = 8; break;
  }
  out->data = static_cast<uint8_t*>(data);
  out->length = length * elem;
  return true;
}

// Registration helpers: each source file adds its exports.
void InitFdpass(Napi::Env env, Napi::Object exports);
void InitUnix(Napi::Env env, Napi::Object exports);
void InitFdinfo(Napi::Env env, Napi::Object exports);
void InitTap(Napi::Env env, Napi::Object exports);
void InitPoller(Napi::Env env, Napi::Object exports);

}  // namespace bt
