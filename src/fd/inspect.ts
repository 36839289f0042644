// Telling what an fd is: fstat, socket options, TUNGETIFF, F_GET_SEALS and the /proc/self/fd link.
import { readlinkSync } from 'node:fs';
import { native } from '../native.js';
import { BackendTransferError } from '../errors.js';
import { MISC_MAJOR, TUN_MINOR, VHOST_NET_MINOR, type FdKind } from './kind.js';

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

function socketOf(fd: number): NonNullable<FdInfo['socket']> {
  const domain = native.getsockopt(fd, native.SOL_SOCKET, native.SO_DOMAIN);
  const type = sockTypeName(native.getsockopt(fd, native.SOL_SOCKET, native.SO_TYPE));
  const listening = native.getsockopt(fd, native.SOL_SOCKET, native.SO_ACCEPTCONN) !== 0;
  return { domain, type, listening };
}

function socketKind(s: NonNullable<FdInfo['socket']>): FdKind {
  if (s.domain !== native.AF_UNIX) return 'socket';
  if (s.listening) return 'unix-listener';
  if (s.type === 'stream') return 'unix-stream';
  if (s.type === 'seqpacket') return 'unix-seqpacket';
  if (s.type === 'dgram') return 'unix-dgram';
  return 'socket';
}

/** The kind of an fd that is not a socket or a character device: by file type, else by its /proc/self/fd link. */
function otherKind(fd: number, fileType: FdInfo['fileType'], link: string): { kind: FdKind; seals?: number } {
  if (fileType === 'fifo') return { kind: 'pipe' };
  if (fileType === 'directory') return { kind: 'directory' };
  if (fileType === 'block') return { kind: 'block-device' };
  if (link.startsWith('anon_inode:[eventfd]')) return { kind: 'eventfd' };
  if (link.startsWith('anon_inode:[pidfd]') || link.startsWith('pidfd:')) return { kind: 'pidfd' };
  if (link.startsWith('/memfd:')) {
    try {
      return { kind: 'memfd', seals: native.fcntl_get_seals(fd) };
    } catch {
      return { kind: 'file' };
    }
  }
  if (link.startsWith('anon_inode:')) return { kind: 'anon-inode' };
  return { kind: fileType === 'file' ? 'file' : 'unknown' };
}

function procLink(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return ''; // /proc may be missing; the link is a hint only
  }
}

/** What kindMatches() needs to know of an fd: a part of FdInfo. */
export type FdKindInfo = Pick<FdInfo, 'fd' | 'kind' | 'fileType' | 'link' | 'socket'>;

/**
 * The kind of an fd as inspectFd() tells it, for checking many fds (every fd a
 * handover sends or receives): the same classification with only the syscalls
 * the kind needs. One fstat_mode, then for a socket its three options, for a
 * character device inspectFd() itself (TAP, vhost-net), for anything else the
 * /proc/self/fd link (and for a memfd its seals); no status flags, no
 * close-on-exec flag, no full stat. `link` is '' where it was not read.
 */
export function fdKindOf(fd: number): FdKindInfo {
  let mode: number;
  try {
    mode = native.fstat_mode(fd);
  } catch (err) {
    throw BackendTransferError.fromSystem(err, `fstat of fd ${fd}`);
  }
  const fileType = fileTypeOf(mode & native.S_IFMT);
  if (fileType === 'socket') {
    const socket = socketOf(fd);
    return { fd, kind: socketKind(socket), fileType, link: '', socket };
  }
  if (fileType === 'char') return inspectFd(fd);
  const link = fileType === 'fifo' || fileType === 'directory' || fileType === 'block' ? '' : procLink(fd);
  return { fd, kind: otherKind(fd, fileType, link).kind, fileType, link };
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
  const link = procLink(fd);
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
    case 'socket':
      info.socket = socketOf(fd);
      info.kind = socketKind(info.socket);
      break;
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
    default: {
      const other = otherKind(fd, info.fileType, link);
      info.kind = other.kind;
      if (other.seals !== undefined) info.seals = other.seals;
    }
  }
  return info;
}
