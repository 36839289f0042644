// One error class with stable .code values, after hypercore's lib/errors.js: static
// factories, the code in both the message and the property. System errors keep
// their errno/syscall and travel as .cause.

export const ErrorCodes = {
  /** An argument is of the wrong type or out of range. */
  ERR_INVALID_ARGUMENT: 'ERR_INVALID_ARGUMENT',
  /** The operation needs an open socket and this one is closed. */
  ERR_SOCKET_CLOSED: 'ERR_SOCKET_CLOSED',
  /** The peer went away (EPIPE, ECONNRESET, or EOF where more was due). */
  ERR_PEER_CLOSED: 'ERR_PEER_CLOSED',
  /** MSG_CTRUNC: the kernel dropped fds (small control buffer, receiver's RLIMIT_NOFILE, an LSM). */
  ERR_FDS_TRUNCATED: 'ERR_FDS_TRUNCATED',
  /** MSG_TRUNC on a seqpacket socket: a record was larger than the receive buffer. */
  ERR_RECORD_TRUNCATED: 'ERR_RECORD_TRUNCATED',
  /** ETOOMANYREFS: the sender has more fds in flight than its RLIMIT_NOFILE allows. */
  ERR_TOO_MANY_REFS: 'ERR_TOO_MANY_REFS',
  /** EMFILE / ENFILE: no fd slot left in this process or the system. */
  ERR_FD_LIMIT: 'ERR_FD_LIMIT',
  /** The peer's credentials (SO_PEERCRED) are not allowed by the peer policy. */
  ERR_PEER_REJECTED: 'ERR_PEER_REJECTED',
  /** The channel is not an AF_UNIX socket, so it cannot carry fds. */
  ERR_NOT_UNIX_SOCKET: 'ERR_NOT_UNIX_SOCKET',
  /** A send carries more fd batches than it has bytes: each piece needs at least one byte. */
  ERR_FDS_NEED_BYTES: 'ERR_FDS_NEED_BYTES',
  /** connect() failed (ENOENT, ECONNREFUSED, EACCES ...). */
  ERR_CONNECT_FAILED: 'ERR_CONNECT_FAILED',
  /** The address is already bound (EADDRINUSE). */
  ERR_ADDRESS_IN_USE: 'ERR_ADDRESS_IN_USE',
  /** An operation did not finish within its time limit. */
  ERR_TIMEOUT: 'ERR_TIMEOUT',
  /** A framed message ended early: the peer closed mid-message. */
  ERR_MESSAGE_INCOMPLETE: 'ERR_MESSAGE_INCOMPLETE',
  /** A framed message is malformed (bad header, wrong fd count, over the size limit). */
  ERR_MESSAGE_INVALID: 'ERR_MESSAGE_INVALID',
  // ---- the migration stream (docs/stream-format.md)
  /** The channel ended mid-frame or before EOF. */
  ERR_STREAM_TRUNCATED: 'ERR_STREAM_TRUNCATED',
  /** The first 8 bytes are not the stream magic. */
  ERR_STREAM_BAD_MAGIC: 'ERR_STREAM_BAD_MAGIC',
  /** No stream format version in common. */
  ERR_STREAM_VERSION: 'ERR_STREAM_VERSION',
  /** An unknown frame type. */
  ERR_STREAM_UNKNOWN_FRAME: 'ERR_STREAM_UNKNOWN_FRAME',
  /** A length or count over its limit. */
  ERR_STREAM_TOO_LARGE: 'ERR_STREAM_TOO_LARGE',
  /** A header, body or memfd-payload CRC does not match. */
  ERR_STREAM_CRC: 'ERR_STREAM_CRC',
  /** A frame's fds did not all arrive. */
  ERR_STREAM_FD_MISSING: 'ERR_STREAM_FD_MISSING',
  /** An fd arrived that no frame declared. */
  ERR_STREAM_FD_EXTRA: 'ERR_STREAM_FD_EXTRA',
  /** A frame's first fd sequence number is not where the reader's fd queue is. */
  ERR_STREAM_FD_SEQUENCE: 'ERR_STREAM_FD_SEQUENCE',
  /** An fd is not of the kind its attachment declares. */
  ERR_STREAM_FD_KIND: 'ERR_STREAM_FD_KIND',
  /** A section for a device that was not negotiated. */
  ERR_STREAM_NOT_NEGOTIATED: 'ERR_STREAM_NOT_NEGOTIATED',
  /** A second section with the same id, or a second section of one device. */
  ERR_STREAM_DUPLICATE_SECTION: 'ERR_STREAM_DUPLICATE_SECTION',
  /** A frame out of order or a malformed body. */
  ERR_STREAM_PROTOCOL: 'ERR_STREAM_PROTOCOL',
  /** A payload memfd without F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE. */
  ERR_STREAM_MEMFD_UNSEALED: 'ERR_STREAM_MEMFD_UNSEALED',
  /** A payload memfd whose size is not the declared payload length. */
  ERR_STREAM_MEMFD_SIZE: 'ERR_STREAM_MEMFD_SIZE',
  /** A section's version is above the device's window. */
  ERR_DEVICE_VERSION_TOO_NEW: 'ERR_DEVICE_VERSION_TOO_NEW',
  /** A section's version is below the device's window. */
  ERR_DEVICE_VERSION_TOO_OLD: 'ERR_DEVICE_VERSION_TOO_OLD',
  /** fds were to be attached on a channel that cannot carry them; nothing was written. */
  ERR_CHANNEL_CANNOT_PASS_FDS: 'ERR_CHANNEL_CANNOT_PASS_FDS',
  /** The planned fds do not fit the target's fd budget. */
  ERR_FD_BUDGET: 'ERR_FD_BUDGET',
  /** A required device was refused by the target. */
  ERR_DEVICE_REFUSED: 'ERR_DEVICE_REFUSED',
  /** The writer failed earlier; every later write reports that first error. */
  ERR_STREAM_WRITER_FAILED: 'ERR_STREAM_WRITER_FAILED',
  // ---- backends
  /** A received fd is not what its metadata says (wrong kind, other TAP, other flags, wrong size...). */
  ERR_BACKEND_VERIFY: 'ERR_BACKEND_VERIFY',
  /** This backend may never move (TLS/telnet/websocket chardev, a socket marked never to move). */
  ERR_BACKEND_NOT_MOVABLE: 'ERR_BACKEND_NOT_MOVABLE',
  /** A backend described wrongly on the source (no fds, unknown role ...). */
  ERR_BACKEND_INVALID: 'ERR_BACKEND_INVALID',
  // ---- the handover session
  /** The target refused or failed (a NACK); .details has its code and reason. */
  ERR_HANDOVER_REFUSED: 'ERR_HANDOVER_REFUSED',
  /** The source aborted the handover (an ABORT frame, or a local abort). */
  ERR_HANDOVER_ABORTED: 'ERR_HANDOVER_ABORTED',
  /**
   * COMMIT was sent but the target neither confirmed it nor died: it may own the
   * backends. The source kept its copies and did not thaw.
   */
  ERR_COMMIT_UNCERTAIN: 'ERR_COMMIT_UNCERTAIN',
  /** fds were to move but they do not survive the way to the target (a relay drops SCM_RIGHTS). */
  ERR_CHANNEL_DROPS_FDS: 'ERR_CHANNEL_DROPS_FDS',
  /**
   * No progress for `timeouts.stall` ms after the freeze (no stream bytes moved
   * either way): the peer stopped reading or stopped sending. The source thaws.
   */
  ERR_HANDOVER_STALLED: 'ERR_HANDOVER_STALLED',
  /**
   * The peer sends frames faster than they can be answered or taken (PINGs whose
   * PONGs it does not read, frames nobody asked for): refused, so that it cannot
   * grow this process's memory.
   */
  ERR_PEER_FLOOD: 'ERR_PEER_FLOOD',
  /**
   * COMMIT could not be written whole (the target closed or shut its reading side:
   * EPIPE, or the write stalled and was dropped): the target cannot have seen it.
   * The source thawed and keeps its backends.
   */
  ERR_COMMIT_NOT_SENT: 'ERR_COMMIT_NOT_SENT',
  /** Any other system error; .cause has the errno error. */
  ERR_SYSTEM: 'ERR_SYSTEM',
  /**
   * A Node-API call inside the addon failed (not an errno: making the Buffer of a
   * mapping, detaching it; out of memory, say). The addon throws it with this code.
   */
  ERR_NATIVE: 'ERR_NATIVE',
} as const;

// The QMP client's and the vhost-user front-end's codes live here too (their
// modules re-export them), so that ErrorCode is one closed union of every code.

/** Codes of the QMP client and the QEMU attach helpers (src/qmp, docs/qmp.md). */
export const QmpErrorCodes = {
  /**
   * QEMU answered a command with an error. `.details.class` is the QMP error
   * class ('GenericError', 'CommandNotFound', 'DeviceNotFound', 'DeviceNotActive',
   * 'KVMMissingCap'), `.details.desc` QEMU's text, `.details.command` the command.
   */
  ERR_QMP_ERROR: 'ERR_QMP_ERROR',
  /** No greeting, or no reply to a command, within its time limit. */
  ERR_QMP_TIMEOUT: 'ERR_QMP_TIMEOUT',
  /** The peer does not speak QMP: its first bytes are not a QMP greeting (an HMP monitor, a QGA socket that talked, anything else). */
  ERR_QMP_NOT_QMP: 'ERR_QMP_NOT_QMP',
  /** The connection ended (QEMU exited or closed it, or we closed the client) before the reply came; or a command was issued after that. */
  ERR_QMP_CLOSED: 'ERR_QMP_CLOSED',
  /** The peer broke the protocol after the greeting (malformed JSON, a message over the size limit). The connection is closed. */
  ERR_QMP_PROTOCOL: 'ERR_QMP_PROTOCOL',
  /** QEMU accepted netdev_add / chardev-add, but reading it back (info network, query-chardev) does not show what was asked; it was removed again. */
  ERR_QMP_VERIFY_FAILED: 'ERR_QMP_VERIFY_FAILED',
} as const;

/** Codes of the vhost-user front-end (src/vhost-user, docs/vhost-user.md). */
export const VhostUserErrorCodes = {
  /** The peer broke the protocol: not a reply, a reply to another request, bad version or size, unsolicited bytes. */
  ERR_VHOST_USER_PROTOCOL: 'ERR_VHOST_USER_PROTOCOL',
  /** No (complete) reply within the time limit. */
  ERR_VHOST_USER_TIMEOUT: 'ERR_VHOST_USER_TIMEOUT',
  /** The connection is gone: the back-end closed it (EOF, EPIPE, ECONNRESET), or this front-end was closed or detached. */
  ERR_VHOST_USER_CLOSED: 'ERR_VHOST_USER_CLOSED',
  /** The back-end answered and said no: a non-zero REPLY_ACK, or an empty GET_CONFIG reply. The session goes on. */
  ERR_VHOST_USER_REJECTED: 'ERR_VHOST_USER_REJECTED',
  /** detach() while a request is in flight or received bytes are still unread. */
  ERR_VHOST_USER_BUSY: 'ERR_VHOST_USER_BUSY',
} as const;

export type QmpErrorCode = (typeof QmpErrorCodes)[keyof typeof QmpErrorCodes];
export type VhostUserErrorCode = (typeof VhostUserErrorCodes)[keyof typeof VhostUserErrorCodes];

/** Every code a BackendTransferError can carry: a closed union, so that a typo does not compile. */
export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes] | QmpErrorCode | VhostUserErrorCode;

/** Whether a string (say, a code a peer sent in a NACK) is one of ours. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && (Object.hasOwn(ErrorCodes, code) || Object.hasOwn(QmpErrorCodes, code) || Object.hasOwn(VhostUserErrorCodes, code));
}

export interface SystemErrorLike extends Error {
  code?: string;
  errno?: number;
  syscall?: string;
}

export class BackendTransferError extends Error {
  readonly code: ErrorCode;
  /** errno of the underlying system error (negative, as in Node), when there is one. */
  readonly errno?: number;
  /** The syscall that failed, when there is one. */
  readonly syscall?: string;
  /** Extra structured facts (counts, names, the phase it happened in) for callers and logs. */
  details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(`${code}: ${withoutCode(message, code)}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BackendTransferError';
    this.code = code;
    const cause = options.cause as SystemErrorLike | undefined;
    if (cause && typeof cause === 'object') {
      if (typeof cause.errno === 'number') this.errno = cause.errno;
      if (typeof cause.syscall === 'string') this.syscall = cause.syscall;
    }
    if (options.details) this.details = options.details;
  }

  static invalidArgument(message: string): BackendTransferError {
    return new BackendTransferError(ErrorCodes.ERR_INVALID_ARGUMENT, message);
  }

  static socketClosed(what = 'socket'): BackendTransferError {
    return new BackendTransferError(ErrorCodes.ERR_SOCKET_CLOSED, `${what} is closed`);
  }

  static timeout(what: string, ms: number): BackendTransferError {
    return new BackendTransferError(ErrorCodes.ERR_TIMEOUT, `${what} did not finish within ${ms} ms`, { details: { ms } });
  }

  /**
   * Maps a system error from the addon to a library error with a stable code.
   * `context` says what we were doing ("sendmsg on fd 12").
   */
  static fromSystem(err: unknown, context: string): BackendTransferError {
    if (err instanceof BackendTransferError) return err;
    const e = err as SystemErrorLike;
    const sys = typeof e?.code === 'string' ? e.code : undefined;
    const text = e?.message ?? String(err);
    switch (sys) {
      case 'ERR_INVALID_ARGUMENT': // the addon's argument checks
        return new BackendTransferError(ErrorCodes.ERR_INVALID_ARGUMENT, `${context}: ${text}`, { cause: err });
      case 'ERR_NATIVE': // a Node-API call inside the addon failed
        return new BackendTransferError(ErrorCodes.ERR_NATIVE, `${context}: ${text}`, { cause: err });
      case 'EPIPE':
      case 'ECONNRESET':
      case 'ENOTCONN':
        return new BackendTransferError(ErrorCodes.ERR_PEER_CLOSED, `${context}: peer closed the connection (${text})`, { cause: err });
      case 'ETOOMANYREFS':
        return new BackendTransferError(ErrorCodes.ERR_TOO_MANY_REFS, `${context}: too many fds in flight for this user; the sender's RLIMIT_NOFILE bounds fds queued but not yet received (${text})`, {
          cause: err,
        });
      case 'EMFILE':
      case 'ENFILE':
        return new BackendTransferError(ErrorCodes.ERR_FD_LIMIT, `${context}: out of file descriptors (${sys === 'EMFILE' ? 'RLIMIT_NOFILE of this process' : 'system-wide limit'}) (${text})`, {
          cause: err,
        });
      case 'EADDRINUSE':
        return new BackendTransferError(ErrorCodes.ERR_ADDRESS_IN_USE, `${context}: address already in use (${text})`, { cause: err });
      case 'ENOTSOCK':
        return new BackendTransferError(ErrorCodes.ERR_NOT_UNIX_SOCKET, `${context}: not a socket (${text})`, { cause: err });
      default:
        return new BackendTransferError(ErrorCodes.ERR_SYSTEM, `${context}: ${text}`, { cause: err });
    }
  }
}

/**
 * `text` without the leading `CODE: ` that an error message carries (its own code,
 * or `code` when given): for putting one error's message inside another's without
 * the code twice (`ERR_X: ERR_X: ...`), and for reasons that travel in NACK and
 * ABORT frames, whose code travels beside them.
 */
export function withoutCode(text: string, code?: string): string {
  let t = text;
  for (;;) {
    const m = /^(ERR_[A-Z0-9_]+): /.exec(t);
    if (!m || (code !== undefined && m[1] !== code)) return t;
    t = t.slice(m[0].length);
  }
}

export function isBackendTransferError(err: unknown, code?: ErrorCode): err is BackendTransferError {
  return err instanceof BackendTransferError && (code === undefined || err.code === code);
}
