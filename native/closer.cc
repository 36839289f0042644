// An off-loop closer: close(2) on a dedicated thread of this addon, never on the
// event loop and never on the libuv threadpool (which a peer could fill).
//
// close() of an fd can block for as long as its peer likes: the last close of a
// TCP socket with SO_LINGER {on, N s} and unsent data waits up to N seconds; a
// tty waits for its output to drain; a FUSE or NFS file flushes to its server.
// Fds whose close might block are handed here (close_deferred); the calling
// thread only queues their numbers. Each closer thread makes one close(2) per fd.
//
// While one close blocks, the next fds are not held up: when every closer thread
// is busy, another is started, up to kMaxThreads. Threads stay for the life of
// the process (no exit-time destructors: the state is never freed, so a thread
// blocked in close() at exit is harmless; the kernel does not linger for an
// exiting process).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <vector>

#include "errors.h"

namespace bt {

namespace {

constexpr int kMaxThreads = 8;

struct CloserState {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int> queue;
  int threads = 0;
  int idle = 0;
  int busy = 0;  // fds taken off the queue whose close() has not returned
  uint64_t closed = 0;
};

CloserState* State() {
  static CloserState* s = new CloserState();  // never freed: see above
  return s;
}

void* CloserMain(void*) {
  CloserState* s = State();
  std::unique_lock<std::mutex> lock(s->mu);
  for (;;) {
    s->idle++;
    s->cv.wait(lock, [s] { return !s->queue.empty(); });
    s->idle--;
    int fd = s->queue.front();
    s->queue.pop_front();
    s->busy++;
    lock.unlock();
    close(fd);  // EINTR still closes on Linux; EBADF means it was not open: nothing to do
    lock.lock();
    s->busy--;
    s->closed++;
  }
  return nullptr;
}

// Starts one more closer thread. Called with s->mu held. false if none could start.
bool StartThread(CloserState* s) {
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return false;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  // No signal is ever meant for this thread: block them all in it.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  int r = pthread_create(&t, &attr, CloserMain, nullptr);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
  if (r != 0) return false;
  s->threads++;
  return true;
}

// close_deferred(fds: Int32Array | number[]): queues the fds for a closer thread.
// Every fd is checked first ([0, 2^31 - 1]); on a bad one nothing is queued. The
// fds belong to the closer from now on: the caller must not use them again.
Napi::Value CloseDeferred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<int> fds;
  if (info.Length() < 1) ThrowArg(env, "close_deferred(fds)");
  if (info[0].IsTypedArray()) {
    Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
    if (ta.TypedArrayType() != napi_int32_array) ThrowArg(env, "fds must be an Int32Array or an array of integers");
    Napi::Int32Array a = info[0].As<Napi::Int32Array>();
    fds.reserve(a.ElementLength());
    for (size_t i = 0; i < a.ElementLength(); i++) {
      if (a[i] < 0) ThrowArg(env, "fds must be integers in [0, 2^31 - 1]");
      fds.push_back(a[i]);
    }
  } else if (info[0].IsArray()) {
    Napi::Array a = info[0].As<Napi::Array>();
    uint32_t n = a.Length();
    fds.reserve(n);
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value e = a.Get(i);
      if (!e.IsNumber() || !IsFdValue(e.As<Napi::Number>().DoubleValue())) ThrowArg(env, "fds must be integers in [0, 2^31 - 1]");
      fds.push_back(static_cast<int>(e.As<Napi::Number>().DoubleValue()));
    }
  } else {
    ThrowArg(env, "fds must be an Int32Array or an array of integers");
  }
  if (fds.empty()) return env.Undefined();
  CloserState* s = State();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    for (int fd : fds) s->queue.push_back(fd);
    // One idle thread per queued fd would be ideal; at least make sure one is free.
    if (s->idle < static_cast<int>(s->queue.size()) && s->threads < kMaxThreads) {
      if (!StartThread(s) && s->threads == 0) {
        // No thread at all (EAGAIN from pthread_create): close here rather than leak.
        for (int fd : fds) {
          s->queue.pop_back();
          close(fd);
        }
        return env.Undefined();
      }
    }
  }
  s->cv.notify_all();
  return env.Undefined();
}

// closer_stats(): { queued, busy, threads, closed } (for tests and diagnostics)
Napi::Value CloserStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  CloserState* s = State();
  std::lock_guard<std::mutex> lock(s->mu);
  Napi::Object o = Napi::Object::New(env);
  o.Set("queued", Napi::Number::New(env, static_cast<double>(s->queue.size())));
  o.Set("busy", Napi::Number::New(env, s->busy));
  o.Set("threads", Napi::Number::New(env, s->threads));
  o.Set("closed", Napi::Number::New(env, static_cast<double>(s->closed)));
  return o;
}

}  // namespace

void InitCloser(Napi::Env env, Napi::Object exports) {
  exports.Set("close_deferred", Napi::Function::New(env, CloseDeferred, "close_deferred"));
  exports.Set("closer_stats", Napi::Function::New(env, CloserStats, "closer_stats"));
}

}  // namespace bt
