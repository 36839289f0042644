// fd utilities: closing without throwing, and telling what an fd is.
import { readlinkSync } from 'node:fs';
import { native } from '../native.js';
import { BackendTransferError } from '../errors.js';

/** Closes an fd. Returns false (never throws) when it was not open. */
export function closeFd(fd: number): boolean {
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
 * Closes every fd in the list; errors (an fd not open) are ignored.
 *
 * Fds received together usually have consecutive numbers (the kernel hands out the
 * lowest free ones), so runs of RANGE_MIN or more consecutive listed fds go in one
 * close_range(first, last) each. Only listed fds are ever in such a range, so the
 * effect is exactly that of closing them one by one; it costs one syscall (and one
 * call into the addon) per run instead of per fd. Without close_range (Linux < 5.9)
 * it falls back to close(2).
 */
export function closeFds(fds: Iterable<number>): void {
  const list = Array.isArray(fds) ? (fds as number[]) : [...fds];
  if (list.length < RANGE_MIN || !haveCloseRange) {
    for (const fd of list) closeFd(fd);
    return;
  }
  const sorted = Int32Array.from(list).sort();
  let i = 0;
  while (i < sorted.length) {
    const first = sorted[i]!;
    let j = i + 1;
    let last = first;
    // extend over consecutive numbers; a repeated fd stays inside the run
    while (j < sorted.length && (sorted[j] === last || sorted[j] === last + 1)) last = sorted[j++]!;
    if (last - first + 1 >= RANGE_MIN && closeRange(first, last)) {
      i = j;
      continue;
    }
    for (let k = i; k < j; k++) if (k === i || sorted[k] !== sorted[k - 1]) closeFd(sorted[k]!);
    i = j;
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
    case native.S_IFSOCK: return 'socket';
    case native.S_IFCHR: return 'char';
    case native.S_IFBLK: return 'block';
    case native.S_IFIFO: return 'fifo';
    case native.S_IFREG: return 'file';
    case native.S_IFDIR: return 'directory';
    case native.S_IFLNK: return 'symlink';
    default: return 'none';
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
