// Telling what an fd is: fstat, socket options, TUNGETIFF, F_GET_SEALS and the /proc/self/fd link.
import { readlinkSync } from 'node:fs';
import { native } from '../native.js';
import { BackendTransferError } from '../errors.js';
import type { FdKind } from './kind.js';

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
