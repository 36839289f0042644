// What the socket, its send queue, its receive buffer and the server share.

export type SocketType = 'stream' | 'seqpacket';

/**
 * The kernel's limit on fds in one SCM_RIGHTS message (SCM_MAX_FD in
 * include/net/scm.h, 253 since Linux 2.6.38). A constant here so that importing
 * the transport loads no addon; test/fd-socket-units.test.ts checks it against native.SCM_MAX_FD.
 */
export const SCM_MAX_FD = 253;

/** One recvmsg worth of input. */
export interface ReceivedChunk {
  /** The bytes. A view into a receive slab: copy it if you keep a small piece of it for long. */
  readonly data: Buffer;
  /** fds that arrived with these bytes, in order. Owned by the caller once read() returned the chunk. */
  readonly fds: number[];
  /** Sequence number of fds[0]: how many fds this socket had received before it. */
  readonly fdSeq: number;
  /** Stream offset of data[0]: how many bytes this socket had received before it. */
  readonly offset: number;
}

export interface FdSocketStats {
  bytesSent: number;
  bytesReceived: number;
  fdsSent: number;
  fdsReceived: number;
  sendmsgCalls: number;
  recvmsgCalls: number;
}

/**
 * Errors that mean the peer went away (closed, reset, or shut its side). On a send
 * they fail the sending side only; on a receive they end the reading side after
 * what was queued. Either way, what the peer sent before it went can still be
 * read (a refusal and its reason, say).
 */
export const PEER_GONE_ERRORS = new Set(['EPIPE', 'ECONNRESET', 'ENOTCONN']);

/** An AF_UNIX address as people write it ("@name" for an abstract one). */
export function printable(address: string): string {
  return address.startsWith('\0') ? `@${address.slice(1)}` : address;
}
