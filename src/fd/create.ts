// New fds: socketpairs, eventfds, memfds (and sealing a memfd). Errors are the
// addon's (errno, .code/.syscall); the caller owns what is returned.
import { native } from '../native.js';

/** socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC): two connected stream sockets. */
export function streamSocketPair(): [number, number] {
  return native.socketpair(native.SOCK_STREAM);
}

/** eventfd(2), close-on-exec, counter 0; non-blocking with `nonBlocking`. */
export function createEventfd(options: { nonBlocking?: boolean } = {}): number {
  return options.nonBlocking ? native.eventfd(0, native.EFD_NONBLOCK) : native.eventfd(0);
}

/** memfd_create(2), close-on-exec and sealable: an empty memfd named `name`. */
export function createMemfd(name: string): number {
  return native.memfd_create(name);
}

/** Seals a memfd against every change (F_SEAL_SHRINK, GROW, WRITE) and against new seals (F_SEAL_SEAL). */
export function sealMemfd(fd: number): void {
  native.fcntl_add_seals(fd, native.F_SEAL_SHRINK | native.F_SEAL_GROW | native.F_SEAL_WRITE | native.F_SEAL_SEAL);
}
