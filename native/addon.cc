// Module init: every native export, named after the syscall it wraps, plus the
// constants the TypeScript layer needs. No policy lives here.
#include "errors.h"

namespace bt {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFdpass(env, exports);
  InitUnix(env, exports);
  InitFdinfo(env, exports);
  InitTap(env, exports);
  InitPoller(env, exports);
  InitCloser(env, exports);
  InitMmap(env, exports);
  return exports;
}

}  // namespace bt

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return bt::Init(env, exports); }

NODE_API_MODULE(backend_transfer, InitModule)
