// fd utilities: closing without throwing, and telling what an fd is.
import { readFileSync, readlinkSync } from 'node:fs';
import { native } from '../native.js';
import { BackendTransferError } from '../errors.js';

// Closing never blocks the event loop. close(2) itself can block for as long as
// whoever shares the file likes: the last close of a TCP socket with SO_LINGER
// {on, N s} and unsent data waits up to N s (the peer that sent it chose N, or set
// it later on its own copy: the option lives on the shared socket); a tty waits
// for its output to drain; a FUSE or NFS file flushes to its server. So every fd
// is first told apart (fstat, one more syscall for sockets and regular files):
// those whose close cannot block are closed here at once (close_range for runs),
// all others go to the addon's closer thread (native.close_deferred), which closes
// them off the loop and off the libuv threadpool. No socket option is changed.

/** How an fd may be closed. */
type CloseHow = 'now' | 'deferred' | 'not-open';

// misc character devices whose release never waits on anyone: tun/tap, vhost-net
const MISC_MAJOR_ = 10;
const MEM_MAJOR = 1; // /dev/null, /dev/zero, /dev/urandom ...

/**
 * Whether closing `fd` can block: 'now' only for kinds whose last close never
 * waits (AF_UNIX sockets, pipes, anon inodes such as eventfd and pidfd, memfd and
 * other shmem files, tun/tap and vhost-net, /dev/null and friends). Everything
 * else, a TCP socket first of all, is 'deferred'.
 */
function closeHow(fd: number): CloseHow {
  let mode: number;
  try {
    mode = native.fstat_mode(fd);
  } catch {
    return 'not-open';
  }
  return closeHowByMode(fd, mode, null);
}

/**
 * closeHow from an st_mode already known (fstat_modes gives a batch of them in
 * one call, with SO_DOMAIN for sockets as `domain`; null: ask getsockopt).
 */
function closeHowByMode(fd: number, mode: number, domain: number | null): CloseHow {
  switch (mode & native.S_IFMT) {
    case 0: // anon inode: eventfd, pidfd, epoll, timerfd, signalfd
    case native.S_IFIFO:
      return 'now';
    case native.S_IFSOCK:
      if (domain !== null) return domain === native.AF_UNIX ? 'now' : 'deferred';
      try {
        return native.getsockopt(fd, native.SOL_SOCKET, native.SO_DOMAIN) === native.AF_UNIX ? 'now' : 'deferred';
      } catch {
        return 'deferred';
      }
    case native.S_IFCHR: {
      let st;
      try {
        st = native.fstat(fd);
      } catch {
        return 'deferred';
      }
      if (st.rdevMajor === MEM_MAJOR) return 'now';
      if (st.rdevMajor === MISC_MAJOR_ && (st.rdevMinor === 200 || st.rdevMinor === 238)) return 'now';
      return 'deferred';
    }
    case native.S_IFREG:
      // F_GET_SEALS answers for shmem files only (memfd, tmpfs): their close never waits.
      try {
        native.fcntl_get_seals(fd);
        return 'now';
      } catch {
        return 'deferred';
      }
    default:
      return 'deferred';
  }
}

/**
 * Closes an fd without blocking the caller. Returns false (never throws) when it
 * was not open. An fd whose close could block goes to the closer thread: it is
 * closed shortly after, off the loop.
 */
export function closeFd(fd: number): boolean {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) return false;
  const how = closeHow(fd);
  if (how === 'not-open') return false;
  if (how === 'deferred') {
    native.close_deferred([fd]);
    return true;
  }
  try {
    native.close(fd);
    return true;
  } catch {
    return false;
  }
}

/** A run at least this long is closed with one close_range(2) instead of one close(2) per fd. */
const RANGE_MIN = 4;
let haveCloseRange = true;

/**
 * Closes every fd in the list, never blocking the caller; errors (an fd not open,
 * not an fd at all) are ignored. Fds whose close could block (see closeFd) go to
 * the closer thread.
 *
 * Fds received together usually have consecutive numbers (the kernel hands out the
 * lowest free ones), so runs of RANGE_MIN or more consecutive listed fds go in one
 * close_range(first, last) each. Only listed fds are ever in such a range, so the
 * effect is exactly that of closing them one by one; it costs one syscall (and one
 * call into the addon) per run instead of per fd. Without close_range (Linux < 5.9)
 * it falls back to close(2).
 */
export function closeFds(fds: Iterable<number>): void {
  const all = Array.isArray(fds) ? (fds as number[]) : [...fds];
  if (all.length === 0) return;
  // Sorted, so that repeats are neighbours and runs are found in one pass.
  const sorted = new Int32Array(all.length);
  let n = 0;
  for (const fd of all) if (Number.isInteger(fd) && fd >= 0 && fd <= 0x7fffffff) sorted[n++] = fd;
  const list = n === all.length ? sorted.sort() : sorted.subarray(0, n).sort();
  let deferred: number[] | null = null;
  let now = 0; // list[0, now) are the fds to close here, deduplicated, in order
  // Every fd's st_mode (and a socket's domain) in one call into the addon, not one per fd.
  const facts = list.length >= BATCH_MIN ? modesOf(list) : null;
  for (let i = 0; i < list.length; i++) {
    const fd = list[i]!;
    if (i > 0 && fd === list[i - 1]) continue;
    let how: CloseHow;
    if (facts === null) how = closeHow(fd);
    else {
      const mode = facts[2 * i]!;
      const aux = facts[2 * i + 1]!;
      how = mode < 0 ? 'not-open' : closeHowByMode(fd, mode, aux < 0 ? null : aux);
    }
    if (how === 'now') list[now++] = fd;
    else if (how === 'deferred') (deferred ??= []).push(fd);
  }
  if (deferred !== null) native.close_deferred(deferred);
  if (now < RANGE_MIN || !haveCloseRange) {
    for (let i = 0; i < now; i++) closeNow(list[i]!);
    return;
  }
  let i = 0;
  while (i < now) {
    const first = list[i]!;
    let j = i + 1;
    let last = first;
    // extend over consecutive numbers
    while (j < now && list[j] === last + 1) last = list[j++]!;
    if (last - first + 1 >= RANGE_MIN && closeRange(first, last)) {
      i = j;
      continue;
    }
    for (let k = i; k < j; k++) closeNow(list[k]!);
    i = j;
  }
}

/** From this many fds on, closeFds asks their modes in one fstat_modes call. */
const BATCH_MIN = 4;
let modesBuf = new Int32Array(2 * 256);

/** st_mode (or -errno) and, for sockets, SO_DOMAIN (or -errno) of each fd, in one call. */
function modesOf(list: Int32Array): Int32Array {
  if (modesBuf.length < 2 * list.length) modesBuf = new Int32Array(2 * list.length);
  native.fstat_modes(list, modesBuf);
  return modesBuf;
}

function closeNow(fd: number): void {
  try {
    native.close(fd);
  } catch {
    /* not open */
  }
}

function closeRange(first: number, last: number): boolean {
  if (first < 0 || !haveCloseRange) return false;
  try {
    native.close_range(first, last);
    return true;
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOSYS') haveCloseRange = false;
    return false;
  }
}

/** A close-on-exec duplicate of `fd`. */
export function dupFd(fd: number): number {
  try {
    return native.dup(fd);
  } catch (err) {
    throw BackendTransferError.fromSystem(err, `dup of fd ${fd}`);
  }
}

export type FdKind =
  | 'tap'
  | 'tun'
  | 'tun-unattached'
  | 'vhost-net'
  | 'eventfd'
  | 'memfd'
  | 'pidfd'
  | 'unix-stream'
  | 'unix-seqpacket'
  | 'unix-dgram'
  | 'unix-listener'
  | 'socket'
  | 'pipe'
  | 'file'
  | 'directory'
  | 'char-device'
  | 'block-device'
  | 'anon-inode'
  | 'unknown';

export interface FdInfo {
  fd: number;
  kind: FdKind;
  /** st_mode & S_IFMT as a word. */
  fileType: 'socket' | 'char' | 'block' | 'fifo' | 'file' | 'directory' | 'symlink' | 'none';
  rdev: { major: number; minor: number };
  size: number;
  ino: number;
  /** Target of /proc/self/fd/N ("socket:[123]", "anon_inode:[eventfd]", "/memfd:x (deleted)"). */
  link: string;
  /** File status flags (O_NONBLOCK etc.), read only. */
  statusFlags: number;
  closeOnExec: boolean;
  socket?: { domain: number; type: 'stream' | 'seqpacket' | 'dgram' | 'other'; listening: boolean };
  /** For memfds: F_GET_SEALS. */
  seals?: number;
  /** For tun/tap fds attached to an interface: TUNGETIFF. */
  tun?: { name: string; flags: number };
}

// misc character device minors (include/linux/miscdevice.h)
const MISC_MAJOR = 10;
const TUN_MINOR = 200;
const VHOST_NET_MINOR = 238;

function fileTypeOf(type: number): FdInfo['fileType'] {
  switch (type) {
    case native.S_IFSOCK:
      return 'socket';
    case native.S_IFCHR:
      return 'char';
    case native.S_IFBLK:
      return 'block';
    case native.S_IFIFO:
      return 'fifo';
    case native.S_IFREG:
      return 'file';
    case native.S_IFDIR:
      return 'directory';
    case native.S_IFLNK:
      return 'symlink';
    default:
      return 'none';
  }
}

function sockTypeName(t: number): 'stream' | 'seqpacket' | 'dgram' | 'other' {
  if (t === native.SOCK_STREAM) return 'stream';
  if (t === native.SOCK_SEQPACKET) return 'seqpacket';
  if (t === native.SOCK_DGRAM) return 'dgram';
  return 'other';
}

/**
 * Tells what an fd is, from fstat, socket options, TUNGETIFF, F_GET_SEALS and the
 * /proc/self/fd link. Never changes the fd. Enough to tell a TAP, a vhost-net fd,
 * an eventfd, a memfd, a listening socket and a connected socket apart.
 */
export function inspectFd(fd: number): FdInfo {
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    throw BackendTransferError.invalidArgument(`inspectFd: fd must be an integer from 0 to 2147483647, got ${typeof fd === 'number' ? fd : typeof fd}`);
  }
  let st;
  try {
    st = native.fstat(fd);
  } catch (err) {
    throw BackendTransferError.fromSystem(err, `fstat of fd ${fd}`);
  }
  let link = '';
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    /* /proc may be missing; the link is a hint only */
  }
  const info: FdInfo = {
    fd,
    kind: 'unknown',
    fileType: fileTypeOf(st.type),
    rdev: { major: st.rdevMajor, minor: st.rdevMinor },
    size: st.size,
    ino: st.ino,
    link,
    statusFlags: native.fcntl_getfl(fd),
    closeOnExec: (native.fcntl_getfd(fd) & native.FD_CLOEXEC) !== 0,
  };

  switch (info.fileType) {
    case 'socket': {
      const domain = native.getsockopt(fd, native.SOL_SOCKET, native.SO_DOMAIN);
      const type = sockTypeName(native.getsockopt(fd, native.SOL_SOCKET, native.SO_TYPE));
      const listening = native.getsockopt(fd, native.SOL_SOCKET, native.SO_ACCEPTCONN) !== 0;
      info.socket = { domain, type, listening };
      if (domain !== native.AF_UNIX) info.kind = 'socket';
      else if (listening) info.kind = 'unix-listener';
      else if (type === 'stream') info.kind = 'unix-stream';
      else if (type === 'seqpacket') info.kind = 'unix-seqpacket';
      else if (type === 'dgram') info.kind = 'unix-dgram';
      else info.kind = 'socket';
      break;
    }
    case 'char':
      if (st.rdevMajor === MISC_MAJOR && st.rdevMinor === TUN_MINOR) {
        try {
          info.tun = native.tungetiff(fd);
          info.kind = info.tun.flags & native.IFF_TAP ? 'tap' : 'tun';
        } catch {
          info.kind = 'tun-unattached'; // not attached to an interface, or a detached queue
        }
      } else if (st.rdevMajor === MISC_MAJOR && st.rdevMinor === VHOST_NET_MINOR) {
        info.kind = 'vhost-net';
      } else {
        info.kind = 'char-device';
      }
      break;
    case 'fifo':
      info.kind = 'pipe';
      break;
    case 'directory':
      info.kind = 'directory';
      break;
    case 'block':
      info.kind = 'block-device';
      break;
    default:
      if (link.startsWith('anon_inode:[eventfd]')) info.kind = 'eventfd';
      else if (link.startsWith('anon_inode:[pidfd]') || link.startsWith('pidfd:')) info.kind = 'pidfd';
      else if (link.startsWith('/memfd:')) {
        try {
          info.seals = native.fcntl_get_seals(fd);
          info.kind = 'memfd';
        } catch {
          info.kind = 'file';
        }
      } else if (link.startsWith('anon_inode:')) info.kind = 'anon-inode';
      else if (info.fileType === 'file') info.kind = 'file';
  }
  return info;
}

// ---------------------------------------------------------------- one file, two fds

/** How sameFile() tells open files apart: kcmp(KCMP_FILE), or the fallback. */
export type SameFileMethod = 'kcmp' | 'fallback';
// BACKEND_TRANSFER_NO_KCMP=1 uses the fallback as if kcmp were not allowed (to test it,
// or where a seccomp filter kills rather than refuses the syscall).
let kcmpWorks: boolean | undefined = process.env.BACKEND_TRANSFER_NO_KCMP === '1' ? false : undefined;

const KCMP_UNAVAILABLE = new Set(['EPERM', 'EACCES', 'ENOSYS', 'EINVAL']);

/**
 * kcmp(KCMP_FILE) of two fds of this process: <0, 0, >0 as their open file
 * descriptions order (0: the same one). null when kcmp cannot be used here
 * (ENOSYS without CONFIG_KCMP, EPERM under some YAMA/seccomp settings).
 */
function kcmpFiles(a: number, b: number): number | null {
  if (kcmpWorks === false) return null;
  let r: number;
  try {
    r = native.kcmp(process.pid, process.pid, native.KCMP_FILE, a, b);
  } catch (err) {
    const code = (err as { code?: string }).code ?? '';
    if (KCMP_UNAVAILABLE.has(code)) {
      kcmpWorks = false;
      return null;
    }
    throw BackendTransferError.fromSystem(err, `kcmp(KCMP_FILE) of fds ${a} and ${b}`);
  }
  kcmpWorks = true;
  return r === 0 ? 0 : r === 1 ? -1 : 1;
}

/** Which method sameFile()/findSameFile() use on this machine (probed once). */
export function sameFileMethod(): SameFileMethod {
  if (kcmpWorks === undefined) {
    const fd = native.eventfd(0);
    try {
      kcmpFiles(fd, fd);
    } finally {
      native.close(fd);
    }
  }
  return kcmpWorks ? 'kcmp' : 'fallback';
}

/**
 * The fallback identity of an open file where kcmp is not available: exact for
 * sockets (a socket has exactly one open file, so its inode names it) and for
 * eventfds (the eventfd-id of /proc/self/fdinfo); null for every other kind,
 * which is then not compared (two opens of one inode are different files, and
 * nothing but kcmp tells them from one file twice).
 */
function fallbackKey(fd: number): string | null {
  let st;
  try {
    st = native.fstat(fd);
  } catch {
    return null;
  }
  if (st.type === native.S_IFSOCK) return `sock:${st.devMajor}:${st.devMinor}:${st.ino}`;
  if (st.type === 0) {
    try {
      const m = /^eventfd-id:\s*(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      if (m) return `eventfd:${m[1]}`;
    } catch {
      /* no /proc */
    }
  }
  return null;
}

/**
 * Positions [i, j] (i < j) of two fds in `fds` that refer to the same open file
 * description, or null if all are distinct. With kcmp the fds are sorted by
 * kcmp's order (O(n log n) syscalls) and neighbours compared; without it, see
 * fallbackKey (sockets and eventfds only).
 */
export function findSameFile(fds: readonly number[]): [number, number] | null {
  if (fds.length < 2) return null;
  if (kcmpWorks !== false) {
    const idx = fds.map((_, i) => i);
    try {
      idx.sort((i, j) => {
        const r = kcmpFiles(fds[i]!, fds[j]!);
        if (r === null) throw KCMP_GONE;
        return r;
      });
      for (let k = 0; k + 1 < idx.length; k++) {
        if (kcmpFiles(fds[idx[k]!]!, fds[idx[k + 1]!]!) === 0) {
          const [a, b] = [idx[k]!, idx[k + 1]!];
          return a < b ? [a, b] : [b, a];
        }
      }
      return null;
    } catch (err) {
      if (err !== KCMP_GONE) throw err;
    }
  }
  const seen = new Map<string, number>();
  for (let i = 0; i < fds.length; i++) {
    const key = fallbackKey(fds[i]!);
    if (key === null) continue;
    const j = seen.get(key);
    if (j !== undefined) return [j, i];
    seen.set(key, i);
  }
  return null;
}
const KCMP_GONE = new Error('kcmp unavailable');
