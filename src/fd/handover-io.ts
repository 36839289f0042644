// The few syscalls the handover session makes itself (src/handover/ does not
// import the addon, see docs/architecture.md): the send buffer's size, a pidfd
// for a peer's pid, and the poll event of a hangup (for "did the
// peer die holding the connection?"). Each is one call of the addon, its errors as
// the addon throws them. (What identifies a staged fd is fd/identity.ts.)
import { native } from '../native.js';

/** SO_SNDBUF of a socket as the kernel reports it (Linux: twice what was set, its bookkeeping overhead). */
export function sendBufferSize(fd: number): number {
  return native.getsockopt(fd, native.SOL_SOCKET, native.SO_SNDBUF);
}

/** pidfd_open(pid): a pidfd the caller owns, or null where it cannot be had (the process is gone, no pidfd_open). */
export function pidfdOf(pid: number): number | null {
  try {
    return native.pidfd_open(pid);
  } catch {
    return null;
  }
}

/** The poll event of a hangup (libuv's UV_DISCONNECT), for FdPoller.set(). */
export function disconnectEvent(): number {
  return native.UV_DISCONNECT;
}
