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

[[noreturn]] inline void ThrowErrno(Napi::Env env, int err, const char* syscall) { throw ErrnoError(env, err, syscall); }

// An argument error with a stable code (not an errno). Every argument error the
// addon throws has code ERR_INVALID_ARGUMENT (the library's own code for it), so
// that callers need to know one code only; the message says which argument.
[[noreturn]] inline void ThrowArg(Napi::Env env, const std::string& msg) {
  Napi::Error e = Napi::TypeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARGUMENT"));
  throw e;
}

// An error with a stable code that is not about an argument.
[[noreturn]] inline void ThrowCode(Napi::Env env, const char* code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

constexpr double kMaxSafeInteger = 9007199254740991.0;  // 2^53 - 1

// The number in argument i, which must be an integer in [min, max]: never wrapped,
// truncated or clamped. NaN, Infinity, fractions, values out of range and
// non-numbers are ERR_INVALID_ARGUMENT.
inline double IntegerArg(const Napi::CallbackInfo& info, size_t i, const char* what, double min, double max) {
  if (info.Length() <= i || !info[i].IsNumber())
    ThrowArg(info.Env(), std::string(what) + " (argument " + std::to_string(i) + ") must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || d != static_cast<double>(static_cast<int64_t>(d)))
    ThrowArg(info.Env(), std::string(what) + " (argument " + std::to_string(i) + ") must be an integer in [" +
                             std::to_string(static_cast<int64_t>(min)) + ", " + std::to_string(static_cast<int64_t>(max)) + "]");
  return d;
}

// An fd: an integer in [0, 2^31 - 1].
inline bool IsFdValue(double d) { return d >= 0 && d <= 2147483647.0 && d == static_cast<double>(static_cast<int64_t>(d)); }

inline int FdArg(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<int>(IntegerArg(info, i, "fd", 0, 2147483647.0));
}

// An int argument in [min, max] (default int32 range); `dflt` when undefined or null.
inline int IntArg(const Napi::CallbackInfo& info, size_t i, int dflt, double min = -2147483648.0, double max = 2147483647.0,
                  const char* what = "value") {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return dflt;
  return static_cast<int>(IntegerArg(info, i, what, min, max));
}

// A byte offset or length: a safe integer >= 0.
inline uint64_t SizeArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  return static_cast<uint64_t>(IntegerArg(info, i, what, 0, kMaxSafeInteger));
}

// [off, off + len) within a buffer of `size` bytes, without overflow.
inline void CheckRange(Napi::Env env, uint64_t off, uint64_t len, size_t size) {
  if (off > size || len > size - off) ThrowArg(env, "offset/length outside the buffer");
}

inline std::string StringArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsString()) ThrowArg(info.Env(), "argument " + std::to_string(i) + " must be a string");
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
    case napi_int8_array:
    case napi_uint8_array:
    case napi_uint8_clamped_array:
      elem = 1;
      break;
    case napi_int16_array:
    case napi_uint16_array:
      elem = 2;
      break;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      elem = 4;
      break;
    default:
      elem = 8;
      break;
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
void InitCloser(Napi::Env env, Napi::Object exports);
void InitMmap(Napi::Env env, Napi::Object exports);

}  // namespace bt
