// Poller: an ObjectWrap over uv_poll_t on the loop of this env
// (napi_get_uv_event_loop, never uv_default_loop()), after serialport's poller.cpp.
//   new Poller(fd, (status, events) => {})
//   start(events)  UV_READABLE | UV_WRITABLE | UV_DISCONNECT
//   stop()
//   close()        releases the handle; the fd itself is not closed
//   ref() / unref()
// The object keeps itself alive from construction until close() completes.
#include <uv.h>

#include "errors.h"

namespace bt {

namespace {

class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Poller",
        {InstanceMethod("start", &Poller::Start), InstanceMethod("stop", &Poller::Stop), InstanceMethod("close", &Poller::Close),
         InstanceMethod("ref", &Poller::DoRef), InstanceMethod("unref", &Poller::DoUnref)});
  }

  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info) {
    Napi::Env env = info.Env();
    int fd = FdArg(info, 0);
    if (info.Length() < 2 || !info[1].IsFunction()) ThrowArg(env, "Poller(fd, callback)");
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr)
      ThrowCode(env, "ERR_NATIVE", "no uv loop for this environment");
    int r = uv_poll_init(loop, &handle_, fd);
    if (r < 0) ThrowErrno(env, -r, "uv_poll_init");
    handle_.data = this;
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    env_ = env;
    Ref();  // until OnClose
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (closing_) ThrowCode(info.Env(), "ERR_NATIVE", "poller is closed");
    int events = IntArg(info, 0, UV_READABLE, 0, UV_READABLE | UV_WRITABLE | UV_DISCONNECT | UV_PRIORITIZED, "events");
    int r = uv_poll_start(&handle_, events, &Poller::OnPoll);
    if (r < 0) ThrowErrno(info.Env(), -r, "uv_poll_start");
    return info.Env().Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (!closing_) uv_poll_stop(&handle_);
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (!closing_) {
      closing_ = true;
      uv_poll_stop(&handle_);
      uv_close(reinterpret_cast<uv_handle_t*>(&handle_), &Poller::OnClose);
    }
    return info.Env().Undefined();
  }

  Napi::Value DoRef(const Napi::CallbackInfo& info) {
    if (!closing_) uv_ref(reinterpret_cast<uv_handle_t*>(&handle_));
    return info.Env().Undefined();
  }

  Napi::Value DoUnref(const Napi::CallbackInfo& info) {
    if (!closing_) uv_unref(reinterpret_cast<uv_handle_t*>(&handle_));
    return info.Env().Undefined();
  }

  static void OnPoll(uv_poll_t* h, int status, int events) {
    Poller* self = static_cast<Poller*>(h->data);
    if (self->closing_) return;
    Napi::Env env = self->env_;
    Napi::HandleScope scope(env);
    try {
      self->callback_.MakeCallback(self->Value(), {Napi::Number::New(env, status), Napi::Number::New(env, events)});
    } catch (const Napi::Error& e) {
      // An exception from the JS callback becomes an uncaught exception, as it would in Node's own handles.
      napi_fatal_exception(env, e.Value());
    }
  }

  static void OnClose(uv_handle_t* h) {
    Poller* self = static_cast<Poller*>(h->data);
    Napi::HandleScope scope(self->env_);
    self->callback_.Reset();
    self->Unref();  // the JS object may now be collected, which deletes this
  }

  uv_poll_t handle_;
  Napi::FunctionReference callback_;
  Napi::Env env_ = nullptr;
  bool closing_ = false;
};

}  // namespace

void InitPoller(Napi::Env env, Napi::Object exports) {
  exports.Set("Poller", Poller::Define(env));
  exports.Set("UV_READABLE", Napi::Number::New(env, UV_READABLE));
  exports.Set("UV_WRITABLE", Napi::Number::New(env, UV_WRITABLE));
  exports.Set("UV_DISCONNECT", Napi::Number::New(env, UV_DISCONNECT));
}

}  // namespace bt
