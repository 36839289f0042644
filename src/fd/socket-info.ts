// What a socket is connected to, asked of the kernel.
import { native } from '../native.js';

/**
 * getpeername(2) of a socket: the AF_UNIX address it is connected to ("" when
 * the peer is unnamed, such as one end of a socketpair; "\0name" abstract), null
 * for another address family. Throws the addon's errno error (ENOTCONN when not
 * connected, ENOTSOCK when not a socket).
 */
export function peerName(fd: number): string | null {
  return native.getpeername(fd);
}
