// Private mappings of a memfd payload: one mmap(2) per call, returned as a
// Buffer over the mapping. MAP_PRIVATE: a write through the Buffer lands in a
// page of this process's own (copy on write), never in the sender's pages. The
// pages are mapped PROT_READ|PROT_WRITE, not PROT_READ alone: JavaScript cannot
// make a Buffer read-only, and a store into a PROT_READ page would be SIGSEGV, a
// crash of the whole process; a private writable mapping of a write-sealed memfd
// is allowed (F_SEAL_WRITE refuses shared writable ones). The mapping is unmapped by release (which first
// detaches the Buffer's ArrayBuffer, so every view of it has length 0 from then
// on: no JavaScript can reach the unmapped pages) or, failing that, when the
// Buffer is collected. The caller checks the memfd's seals and size first (a
// memfd that can shrink under a mapping turns reads past its new end into
// SIGBUS): see src/fd/mapping.ts. A failing Node-API call throws code
// ERR_NATIVE (ErrorCodes.ERR_NATIVE in src/errors.ts, README's table).
#include <sys/mman.h>

#include <cstdint>
#include <unordered_map>

#include "errors.h"

namespace bt {

namespace {

struct Mapping {
  void* addr;
  size_t length;
  bool unmapped;
};

// Live mappings by address, for release. Touched only on the JS thread (release
// runs there; Node runs external buffers' finalizers there too).
std::unordered_map<void*, Mapping*>& Live() {
  static auto* m = new std::unordered_map<void*, Mapping*>();
  return *m;
}

uint64_t g_mapped_bytes = 0;
uint64_t g_mappings = 0;

// The mapped bytes are told to V8 as external memory, so that mappings nobody
// releases still make the collector run (and their finalizers unmap them).
void Unmap(napi_env env, Mapping* m) {
  if (m->unmapped) return;
  munmap(m->addr, m->length);
  int64_t ignored;
  napi_adjust_external_memory(env, -static_cast<int64_t>(m->length), &ignored);
  m->unmapped = true;
  Live().erase(m->addr);
  g_mapped_bytes -= m->length;
  g_mappings--;
}

void Finalize(napi_env env, void*, void* hint) {
  Mapping* m = static_cast<Mapping*>(hint);
  Unmap(env, m);
  delete m;
}

// mmap_memfd(fd, length) -> Buffer of `length` bytes, PROT_READ|PROT_WRITE, MAP_PRIVATE, offset 0.
Napi::Value MmapMemfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  uint64_t length = static_cast<uint64_t>(IntegerArg(info, 1, "length", 1, kMaxSafeInteger));
  if (length > SIZE_MAX) ThrowArg(env, "length does not fit this machine's address space");
  void* addr = mmap(nullptr, static_cast<size_t>(length), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (addr == MAP_FAILED) ThrowErrno(env, errno, "mmap");
  Mapping* m = new Mapping{addr, static_cast<size_t>(length), false};
  napi_value buf;
  napi_status st = napi_create_external_buffer(env, m->length, addr, Finalize, m, &buf);
  if (st != napi_ok) {
    munmap(addr, m->length);
    delete m;
    ThrowCode(env, "ERR_NATIVE", "napi_create_external_buffer failed");
  }
  Live()[addr] = m;
  g_mapped_bytes += m->length;
  g_mappings++;
  int64_t ignored;
  napi_adjust_external_memory(env, static_cast<int64_t>(m->length), &ignored);
  return Napi::Value(env, buf);
}

// munmap_buffer(buffer) -> true if it was a live mapping of this addon (now
// detached and unmapped), false if it was released already (its ArrayBuffer is
// detached). Anything else is ERR_INVALID_ARGUMENT.
Napi::Value MunmapBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray()) ThrowArg(env, "buffer (argument 0) must be a Buffer from mmap_memfd");
  napi_value ab;
  if (napi_get_typedarray_info(env, info[0], nullptr, nullptr, nullptr, &ab, nullptr) != napi_ok)
    ThrowArg(env, "buffer (argument 0) must be a Buffer from mmap_memfd");
  bool detached = false;
  if (napi_is_detached_arraybuffer(env, ab, &detached) != napi_ok)
    ThrowCode(env, "ERR_NATIVE", "napi_is_detached_arraybuffer failed");
  if (detached) return Napi::Boolean::New(env, false);
  void* data = nullptr;
  size_t ab_length = 0;
  if (napi_get_arraybuffer_info(env, ab, &data, &ab_length) != napi_ok)
    ThrowCode(env, "ERR_NATIVE", "napi_get_arraybuffer_info failed");
  auto it = Live().find(data);
  if (it == Live().end() || it->second->length != ab_length)
    ThrowArg(env, "buffer (argument 0) is not a mapping made by mmap_memfd");
  // Detach first: from here on no view of it can reach the pages.
  if (napi_detach_arraybuffer(env, ab) != napi_ok) ThrowCode(env, "ERR_NATIVE", "napi_detach_arraybuffer failed");
  Unmap(env, it->second);  // the Mapping itself is freed by the finalizer
  return Napi::Boolean::New(env, true);
}

// mapping_stats() -> { mappings, bytes }: what is mapped now (tests, leak checks).
Napi::Value MappingStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("mappings", Napi::Number::New(env, static_cast<double>(g_mappings)));
  o.Set("bytes", Napi::Number::New(env, static_cast<double>(g_mapped_bytes)));
  return o;
}

}  // namespace

void InitMmap(Napi::Env env, Napi::Object exports) {
  exports.Set("mmap_memfd", Napi::Function::New(env, MmapMemfd, "mmap_memfd"));
  exports.Set("munmap_buffer", Napi::Function::New(env, MunmapBuffer, "munmap_buffer"));
  exports.Set("mapping_stats", Napi::Function::New(env, MappingStats, "mapping_stats"));
}

}  // namespace bt
