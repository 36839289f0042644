// The addon, loaded lazily (on first use) the way serialport/bindings-cpp does it (node-gyp-build picks a
// prebuild from prebuilds/ or the local build/), with a typed interface that
// everything above is written against.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface PollerInstance {
  start(events: number): void;
  stop(): void;
  close(): void;
  ref(): void;
  unref(): void;
}

export interface PollerConstructor {
  new (fd: number, callback: (status: number, events: number) => void): PollerInstance;
}

export interface NativeStat {
  mode: number;
  type: number;
  rdevMajor: number;
  rdevMinor: number;
  devMajor: number;
  devMinor: number;
  ino: number;
  size: number;
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export interface IfReq {
  name: string;
  flags: number;
}

/**
 * Every export makes one syscall (EINTR retried) and throws errno errors with
 * .code/.errno/.syscall. Every integer argument is checked first: fds are integers
 * in [0, 2^31 - 1], offsets and lengths safe integers inside their buffer, flags
 * and options integers in their C type's range. A bad value (a fraction, NaN,
 * Infinity, a negative or too large number, 2^32 + n) throws a TypeError with
 * .code ERR_INVALID_ARGUMENT before any syscall; nothing is ever wrapped or truncated.
 *
 * Names (each the string native/*.cc exports, listed here in the same groups): a
 * call is named by its C name in lower case: the syscall or libc function
 * (socketpair, accept4, memfd_create, close_range, if_nametoindex), the ioctl
 * request (tunsetiff = TUNSETIFF), fcntl_<command> (fcntl_getfl = F_GETFL,
 * fcntl_get_seals = F_GET_SEALS), get<option> for a getsockopt of one option
 * (getpeercred = SO_PEERCRED, getpeerpidfd = SO_PEERPIDFD, like getpeername).
 * One exception, kept for compatibility (this is the 'backend-transfer/native'
 * subpath): dup is fcntl(F_DUPFD_CLOEXEC). What is not one syscall is snake_case
 * for what it does (fstat_mode(s), close_deferred, closer_stats, mmap_memfd,
 * munmap_buffer, mapping_stats); constants keep their C names; Poller is a class.
 */
export interface NativeBinding {
  // fdpass.cc
  /** Returns bytes written, or -EAGAIN. At most SCM_MAX_FD fds and IOV_MAX buffers. */
  sendmsg(fd: number, data: Uint8Array | readonly Uint8Array[], fds?: Int32Array | readonly number[]): number;
  /** meta: Int32Array(2 + SCM_MAX_FD): [nfds, msg_flags, ...fds]. Returns bytes, or -EAGAIN. */
  recvmsg(fd: number, buffer: Uint8Array, offset: number, length: number, meta: Int32Array): number;
  /**
   * One recvmmsg into vlen equal slices of buffer[offset, offset+length).
   * meta: [count, then per message: bytes, msg_flags, nfds, ...fds]. Returns count, or -EAGAIN.
   */
  recvmmsg(fd: number, buffer: Uint8Array, offset: number, length: number, meta: Int32Array, vlen: number): number;
  readonly RECVMMSG_MAX: number;
  readonly SCM_MAX_FD: number;
  readonly IOV_MAX: number;
  readonly MSG_CTRUNC: number;
  readonly MSG_TRUNC: number;
  readonly EAGAIN: number;

  // unix.cc
  socket(type: number): number;
  socketpair(type: number): [number, number];
  bind(fd: number, address: string): void;
  listen(fd: number, backlog?: number): void;
  /** Returns the new fd, or -EAGAIN. */
  accept4(fd: number): number;
  /** Returns 0, -EAGAIN (backlog full) or -EINPROGRESS. */
  connect(fd: number, address: string): number;
  getsockopt(fd: number, level: number, name: number): number;
  /** value: an int option, or the raw bytes of a struct option (SO_LINGER: Int32Array [onoff, seconds]). */
  setsockopt(fd: number, level: number, name: number, value: number | Uint8Array | Int32Array): void;
  getpeercred(fd: number): PeerCred;
  getpeerpidfd(fd: number): number;
  getsockname(fd: number): string | null;
  getpeername(fd: number): string | null;
  shutdown(fd: number, how: number): void;
  close(fd: number): void;
  /** close_range(first, last, 0): every fd in [first, last], in one syscall. */
  close_range(first: number, last: number): void;
  /** fcntl(F_DUPFD_CLOEXEC) */
  dup(fd: number, minFd?: number): number;
  fcntl_getfl(fd: number): number;
  fcntl_getfd(fd: number): number;
  readonly AF_UNIX: number;
  readonly SOCK_STREAM: number;
  readonly SOCK_DGRAM: number;
  readonly SOCK_SEQPACKET: number;
  readonly SOL_SOCKET: number;
  readonly SO_DOMAIN: number;
  readonly SO_TYPE: number;
  readonly SO_ACCEPTCONN: number;
  readonly SO_ERROR: number;
  readonly SO_SNDBUF: number;
  readonly SO_RCVBUF: number;
  readonly SO_PEERPIDFD: number;
  readonly SO_LINGER: number;
  readonly SHUT_RD: number;
  readonly SHUT_WR: number;
  readonly SHUT_RDWR: number;
  readonly O_NONBLOCK: number;
  readonly FD_CLOEXEC: number;
  readonly EINPROGRESS: number;

  // fdinfo.cc
  fstat(fd: number): NativeStat;
  /** The same fstat(2), returning st_mode only (cheap: no object). */
  fstat_mode(fd: number): number;
  /** For each fd: out[2i] = st_mode or -errno (fstat), out[2i+1] = SO_DOMAIN of a socket (or -errno), else 0. One call for a batch. */
  fstat_modes(fds: Int32Array, out: Int32Array): void;
  eventfd(initval: number, flags?: number): number;
  memfd_create(name: string, flags?: number): number;
  fcntl_add_seals(fd: number, seals: number): void;
  fcntl_get_seals(fd: number): number;
  pipe2(flags?: number): [number, number];
  pidfd_open(pid: number): number;
  /** kcmp(2): 0 equal, 1 less, 2 greater, 3 unordered. KCMP_EPOLL_TFD is not supported. */
  kcmp(pid1: number, pid2: number, type: number, idx1: number, idx2: number): number;
  readonly KCMP_FILE: number;
  readonly S_IFMT: number;
  readonly S_IFSOCK: number;
  readonly S_IFCHR: number;
  readonly S_IFREG: number;
  readonly S_IFIFO: number;
  readonly S_IFDIR: number;
  readonly S_IFBLK: number;
  readonly S_IFLNK: number;
  readonly EFD_NONBLOCK: number;
  readonly EFD_SEMAPHORE: number;
  readonly F_SEAL_SEAL: number;
  readonly F_SEAL_SHRINK: number;
  readonly F_SEAL_GROW: number;
  readonly F_SEAL_WRITE: number;
  readonly F_SEAL_FUTURE_WRITE?: number;

  // tap.cc
  tunsetiff(fd: number, name: string, flags: number): IfReq;
  tungetiff(fd: number): IfReq;
  tunsetqueue(fd: number, flags: number): void;
  tungetvnethdrsz(fd: number): number;
  tunsetvnethdrsz(fd: number, size: number): void;
  tunsetoffload(fd: number, flags: number): void;
  tungetfeatures(fd: number): number;
  tungetdevnetns(fd: number): number;
  if_nametoindex(name: string): number;
  readonly IFF_TUN: number;
  readonly IFF_TAP: number;
  readonly IFF_NO_PI: number;
  readonly IFF_VNET_HDR: number;
  readonly IFF_MULTI_QUEUE: number;
  readonly IFF_ATTACH_QUEUE: number;
  readonly IFF_DETACH_QUEUE: number;
  readonly IFF_NOFILTER: number;
  readonly IFF_PERSIST: number;
  readonly IFF_TUN_EXCL: number;
  readonly TUN_F_CSUM: number;
  readonly TUN_F_TSO4: number;
  readonly TUN_F_TSO6: number;
  readonly TUN_F_TSO_ECN: number;
  readonly TUN_F_UFO: number;

  // closer.cc
  /**
   * Queues fds for close(2) on a dedicated closer thread (not the libuv threadpool),
   * so that a close that blocks (SO_LINGER, a tty draining, a FUSE flush) never
   * blocks the caller. The fds are the closer's from then on.
   */
  close_deferred(fds: Int32Array | readonly number[]): void;
  closer_stats(): { queued: number; busy: number; threads: number; closed: number };

  // mmap.cc
  /**
   * mmap(NULL, length, PROT_READ|PROT_WRITE, MAP_PRIVATE, fd, 0) as a Buffer (writes are copy on write) over the mapping,
   * unmapped when collected or by munmap_buffer. length >= 1. The caller checks
   * that the file cannot shrink first (mapSealedMemfd does).
   */
  mmap_memfd(fd: number, length: number): Buffer;
  /** Detaches the Buffer's ArrayBuffer (every view sees length 0) and unmaps it: true; false when released already. */
  munmap_buffer(buf: Uint8Array): boolean;
  /** Mappings made by mmap_memfd and not yet unmapped. */
  mapping_stats(): { mappings: number; bytes: number };

  // poller.cc
  Poller: PollerConstructor;
  readonly UV_READABLE: number;
  readonly UV_WRITABLE: number;
  readonly UV_DISCONNECT: number;
}

const require = createRequire(import.meta.url);
const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;

/**
 * BACKEND_TRANSFER_NATIVE=/path/to/backend_transfer.node loads that build of the
 * addon instead (the sanitizer run builds one with ASan and UBSan elsewhere).
 */
const override = process.env.BACKEND_TRANSFER_NATIVE;

let binding: NativeBinding | null = null;

/**
 * The addon, loaded on first use (not at import): code that only reads a recorded
 * stream (`backend-transfer inspect`, the stream decoder) runs where the addon is
 * missing or not built. Throws when it cannot be loaded, saying how to build it.
 */
export function loadNative(): NativeBinding {
  if (binding) return binding;
  if (override) return (binding = require(override) as NativeBinding);
  try {
    binding = nodeGypBuild(fileURLToPath(new URL('..', import.meta.url))) as NativeBinding;
  } catch (err) {
    // No prebuild matches (prebuilds/ has linux-x64 and linux-arm64, glibc) and
    // nothing was compiled: npm 11 skips a dependency's install script until the
    // project approves it, and without a compiler it fails.
    throw new Error(
      `backend-transfer: no native addon for ${process.platform}-${process.arch} (${(err as Error).message.split('\n')[0]}). ` +
        'Compile it from source (needs g++, make, python3): npm install-scripts approve backend-transfer && npm rebuild backend-transfer',
      { cause: err },
    );
  }
  return binding;
}

/** The addon's exports; the first property read loads it (see loadNative). */
export const native: NativeBinding = new Proxy({} as NativeBinding, {
  get: (_t, p) => Reflect.get(loadNative(), p) as unknown,
  has: (_t, p) => Reflect.has(loadNative(), p),
  ownKeys: () => Reflect.ownKeys(loadNative()),
  getOwnPropertyDescriptor: (_t, p) => {
    const d = Reflect.getOwnPropertyDescriptor(loadNative(), p);
    if (d) d.configurable = true;
    return d;
  },
});
