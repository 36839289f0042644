// (Over 450 lines: two tables meant to be read side by side -- every error code
// with its meaning, and the details each code carries (ErrorDetailsMap) -- plus
// the one error class over them.)
//
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

// ---- typed details: what `.details` holds for each code

/**
 * Fields that the handover and the QEMU attach helpers add to the error that ends
 * them, whatever its code: sendHandover adds `phase`, `commitSent` and (after
 * COMMIT) `targetGone`; receiveHandover adds `phase` and `committed`; the attach
 * helpers of src/qmp add `cleanup` (what they undid in QEMU).
 */
export type ErrorContextDetails = {
  /** The handover phase the error happened in ('handshake', 'freeze', 'stage', 'switch-over' ...). */
  phase?: string;
  /** sendHandover: whether COMMIT had been sent. */
  commitSent?: boolean;
  /** sendHandover after COMMIT: whether the target's process died holding the connection. */
  targetGone?: boolean;
  /** receiveHandover: whether COMMIT had been received. */
  committed?: boolean;
  /** The QEMU attach helpers (src/qmp/backends.ts): what the cleanup after the failure did. */
  cleanup?: CleanupReport;
};

/** What the cleanup of a failed QEMU attach (src/qmp/backends.ts) did, on the error's details.cleanup. */
export interface CleanupReport {
  /** fd names closed in QEMU with closefd. */
  closed: string[];
  /** fd names QEMU no longer had (the failed command had taken, and closed, them). */
  alreadyGone: string[];
  /** Objects removed again (netdev_del / chardev-remove). */
  removed: string[];
  /** Cleanup steps that failed (a closed connection, say), with why. */
  failed: { step: string; error: string }[];
}

/** The details of a code that carries none of its own (only the context fields, if any). */
export type NoOwnDetails = Record<never, never>;

/**
 * The fields of `.details` per code: one entry for every code of ErrorCode (codes
 * without fields of their own map to NoOwnDetails). Field names and meanings are
 * part of the API, like the codes. Optional fields are those only some throw
 * sites set. Read them through isBackendTransferError(err, code), which narrows
 * `err.details` to ErrorDetails<code>.
 */
export interface ErrorDetailsMap {
  /** `command`, `fd`: a QMP command whose fd could not be sent. */
  ERR_INVALID_ARGUMENT: { command?: string; fd?: number | undefined };
  ERR_SOCKET_CLOSED: NoOwnDetails;
  /** `errno`: SO_ERROR of the socket, when the loss was found that way. */
  ERR_PEER_CLOSED: { errno?: number };
  /** `fdSeq`: the fd sequence number of the batch; `arrived`: fds that did arrive; `offset`: its stream byte offset. */
  ERR_FDS_TRUNCATED: { fdSeq: number; arrived: number; offset: number };
  ERR_RECORD_TRUNCATED: NoOwnDetails;
  ERR_TOO_MANY_REFS: NoOwnDetails;
  ERR_FD_LIMIT: NoOwnDetails;
  /** The refused peer's credentials (SO_PEERCRED). */
  ERR_PEER_REJECTED: { pid: number; uid: number; gid: number };
  /** `domain`: the socket's address family, when it is a socket. */
  ERR_NOT_UNIX_SOCKET: { domain?: number };
  /** `fds` batches for `bytes` bytes. */
  ERR_FDS_NEED_BYTES: { fds: number; bytes: number };
  ERR_CONNECT_FAILED: NoOwnDetails;
  ERR_ADDRESS_IN_USE: NoOwnDetails;
  /** `ms`: the time limit that passed. */
  ERR_TIMEOUT: { ms: number };
  ERR_MESSAGE_INCOMPLETE: NoOwnDetails;
  ERR_MESSAGE_INVALID: NoOwnDetails;
  /** `offset`: where the stream ended. */
  ERR_STREAM_TRUNCATED: { offset?: number };
  ERR_STREAM_BAD_MAGIC: NoOwnDetails;
  /** From negotiation: `peer` and `ours` ([min, max]); from a PLAN: its `version` and HELLO's `minVersion`..`maxVersion`. */
  ERR_STREAM_VERSION: { peer?: [number, number]; ours?: [number, number]; version?: number; minVersion?: number; maxVersion?: number };
  ERR_STREAM_UNKNOWN_FRAME: NoOwnDetails;
  /** `what` is `value`, over `limit`. */
  ERR_STREAM_TOO_LARGE: { what: string; value: number; limit: number };
  /** `where` ('header' or 'body', at `offset`): `stored` and `computed` CRC; a memfd payload's mismatch has its `length` instead. */
  ERR_STREAM_CRC: { where?: 'header' | 'body'; offset?: number; stored?: number; computed?: number; length?: number };
  /**
   * A frame's fds: `declared`, `arrived` (`late`: arrived past the frame, `frameEnd`, `chunkEnd`);
   * a device's: `id`, `planned`, `seen`; at END_OF_STATE: `unstaged` device ids.
   */
  ERR_STREAM_FD_MISSING: {
    declared?: number;
    arrived?: number;
    late?: number;
    frameEnd?: number;
    chunkEnd?: number;
    id?: string;
    planned?: number;
    seen?: number;
    unstaged?: string[];
  };
  /** A frame's: `declared`, `extra`; a device's: `id`, `planned`, `seen`. */
  ERR_STREAM_FD_EXTRA: { declared?: number; extra?: number; id?: string; planned?: number; seen?: number };
  /** `declared`: the frame's first fd sequence number; `reader`: where the reader's fd queue is. */
  ERR_STREAM_FD_SEQUENCE: { declared: number; reader: number };
  /** An attachment `name` `declared` one kind, the fd is `actual`; or the memfd `fd` / payload of `length` bytes is not a memfd. */
  ERR_STREAM_FD_KIND: { name?: string; declared?: string; actual?: string; fd?: number; length?: number };
  /** The section's device (`idstr`, `instanceId`). */
  ERR_STREAM_NOT_NEGOTIATED: { idstr?: string; instanceId?: number };
  ERR_STREAM_DUPLICATE_SECTION: NoOwnDetails;
  /** `plan` and `expected` when a PLAN differs from the negotiated layout; `length` for a memfd payload. */
  ERR_STREAM_PROTOCOL: { plan?: unknown; expected?: unknown; length?: number };
  /** The memfd (`fd`, its `seals`) or the payload's `length`. */
  ERR_STREAM_MEMFD_UNSEALED: { fd?: number; seals?: number; length?: number };
  /** The memfd's `size` and the declared `length`. */
  ERR_STREAM_MEMFD_SIZE: { fd?: number; size?: number; length: number };
  /** The section's device `idstr` and `version`, and the device's window `minVersion`..`maxVersion`. */
  ERR_DEVICE_VERSION_TOO_NEW: { idstr?: string; version: number; minVersion: number; maxVersion: number };
  /** As ERR_DEVICE_VERSION_TOO_NEW. */
  ERR_DEVICE_VERSION_TOO_OLD: { idstr?: string; version: number; minVersion: number; maxVersion: number };
  ERR_CHANNEL_CANNOT_PASS_FDS: NoOwnDetails;
  /** `totalFds` planned, the target's `fdBudget`, the `reserve` kept free. */
  ERR_FD_BUDGET: { totalFds: number; fdBudget: number; reserve: number };
  /** The refused device `id`, the target's `reason` ('version-too-new' ...) and its window. */
  ERR_DEVICE_REFUSED: { id: string; reason: string | undefined; minVersion: number; maxVersion: number };
  ERR_STREAM_WRITER_FAILED: NoOwnDetails;
  /**
   * The `device`; as it applies, the `attachment`, the metadata `key`, the fd kinds
   * `expected` and the `actual` one, or the two fds that are one open file (`sameFile`).
   */
  ERR_BACKEND_VERIFY: { device: string; attachment?: string; key?: string; expected?: string[]; actual?: string; sameFile?: { device: string; name: string }[] };
  /** The device `id`; `layers`: the protocol layers that keep it here ('TLS', 'telnet', 'websocket'). */
  ERR_BACKEND_NOT_MOVABLE: { id: string; layers?: string[] };
  /** The `device`, its `attachment` and `fd`; the `declared` kind and the `actual` one. */
  ERR_BACKEND_INVALID: { device?: string; attachment?: string; fd?: number; declared?: string; actual?: string };
  /** The target's NACK: its `code` (a string from the peer, not necessarily an ErrorCode) and `reason`. */
  ERR_HANDOVER_REFUSED: { phase: string; code: string; reason: string };
  /** The source's ABORT (`code`, `reason`), or the caller's abort (`reason` when it gave one). */
  ERR_HANDOVER_ABORTED: { phase: string; code?: string; reason?: string };
  ERR_COMMIT_UNCERTAIN: { phase: string; commitSent: true; targetGone: false };
  /** `probe`: what the fd probe found ('missing'). */
  ERR_CHANNEL_DROPS_FDS: { probe: string };
  /** No progress for `ms` in `phase`. */
  ERR_HANDOVER_STALLED: { phase: string; ms: number };
  /** `limit`: which bound the peer ran into. */
  ERR_PEER_FLOOD: { limit: string };
  /** `cause`: the code of the write's failure. */
  ERR_COMMIT_NOT_SENT: { cause: ErrorCode };
  /** `errno`: SO_ERROR of the socket, when the error was found that way. */
  ERR_SYSTEM: { errno?: number };
  /** A Node-API call inside the addon failed (not an errno). */
  ERR_NATIVE: NoOwnDetails;
  /** The QMP error `class`, QEMU's `desc`, the `command` and its `id`. */
  ERR_QMP_ERROR: { class: string; desc: string; command: string; id: string };
  /** `ms`; a command's `command`, `id`, and whether it was `sent`; or the awaited `event`. */
  ERR_QMP_TIMEOUT: { ms: number; command?: string; id?: string; sent?: boolean; event?: string };
  ERR_QMP_NOT_QMP: NoOwnDetails;
  /** The `command` that got no reply, its `id`, whether it was `sent`. */
  ERR_QMP_CLOSED: { command?: string; id?: string; sent?: boolean };
  ERR_QMP_PROTOCOL: NoOwnDetails;
  /** The object's `id`; what reading it back `found` (and the `expected` queue count for a netdev). */
  ERR_QMP_VERIFY_FAILED: { id: string; expected?: number; found: unknown };
  /** The `request` and, as they apply, the reply's header (`replyRequest`, `replyFlags`, `replySize`), sizes and counts. */
  ERR_VHOST_USER_PROTOCOL: {
    request?: string;
    replyRequest?: number;
    replyFlags?: number;
    replySize?: number;
    size?: number;
    got?: number;
    value?: string;
    bytes?: number;
    fds?: number;
  };
  /** The `request` and the `ms` it had. */
  ERR_VHOST_USER_TIMEOUT: { request: string; ms: number };
  /** The `request`; mid-message the bytes `received` of `expected`; the transport's `transportCode`. */
  ERR_VHOST_USER_CLOSED: { request?: string; received?: number; expected?: number; transportCode?: ErrorCode };
  /** The `request`; its REPLY_ACK `status` (a u64 in decimal), or the GET_CONFIG `offset` and `size`. */
  ERR_VHOST_USER_REJECTED: { request: string; status?: string; offset?: number; size?: number };
  /** Requests `inFlight`, received bytes and fds still unread. */
  ERR_VHOST_USER_BUSY: { inFlight: number; unreadBytes: number; unreadFds: number };
}

/** Whether C is exactly one code (not a union of several, not never). */
type IsOneCode<C, All = C> = [C] extends [never] ? false : C extends unknown ? ([All] extends [C] ? true : false) : never;

/**
 * What `.details` holds for code C: its own fields (ErrorDetailsMap) and the
 * context fields the handover and attach helpers add. For a union of codes (an
 * error not narrowed to one code), a plain record. (A new code needs its entry in
 * ErrorDetailsMap: test/error-details.test.ts fails `npm run typecheck` without it.)
 */
export type ErrorDetails<C extends ErrorCode = ErrorCode> =
  IsOneCode<C> extends true ? (C extends keyof ErrorDetailsMap ? ErrorDetailsMap[C] : NoOwnDetails) & ErrorContextDetails : Record<string, unknown>;

export interface BackendTransferErrorOptions<C extends ErrorCode = ErrorCode> {
  cause?: unknown;
  details?: ErrorDetails<C>;
}

/**
 * A library error. `BackendTransferError<C>` is one of code C, whose `.details`
 * has that code's type (ErrorDetails<C>); plain `BackendTransferError` is one of
 * any code, as `instanceof` gives it. isBackendTransferError(err, code) narrows.
 */
export class BackendTransferError<C extends ErrorCode = ErrorCode> extends Error {
  readonly code: C;
  /** errno of the underlying system error (negative, as in Node), when there is one. */
  readonly errno?: number;
  /** The syscall that failed, when there is one. */
  readonly syscall?: string;
  /** Extra structured facts (counts, names, the phase it happened in) for callers and logs: ErrorDetails<C>. */
  details?: ErrorDetails<C>;

  constructor(code: C, message: string, options: BackendTransferErrorOptions<C> = {}) {
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

  /**
   * The ordinary instanceof test; declared only so that TypeScript narrows
   * `err instanceof BackendTransferError` to an error of any code (ErrorCode),
   * not to BackendTransferError<any>.
   */
  static override [Symbol.hasInstance](value: unknown): value is BackendTransferError {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }

  static invalidArgument(message: string): BackendTransferError<'ERR_INVALID_ARGUMENT'> {
    return new BackendTransferError(ErrorCodes.ERR_INVALID_ARGUMENT, message);
  }

  static socketClosed(what = 'socket'): BackendTransferError<'ERR_SOCKET_CLOSED'> {
    return new BackendTransferError(ErrorCodes.ERR_SOCKET_CLOSED, `${what} is closed`);
  }

  static timeout(what: string, ms: number): BackendTransferError<'ERR_TIMEOUT'> {
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

/**
 * Whether `err` is a BackendTransferError (of `code`, when given). With a code it
 * narrows `err.details` to that code's fields:
 * `if (isBackendTransferError(e, 'ERR_HANDOVER_REFUSED')) e.details?.code`.
 */
export function isBackendTransferError<C extends ErrorCode>(err: unknown, code: C): err is BackendTransferError<C>;
export function isBackendTransferError(err: unknown, code?: ErrorCode): err is BackendTransferError;
export function isBackendTransferError(err: unknown, code?: ErrorCode): err is BackendTransferError {
  return err instanceof BackendTransferError && (code === undefined || err.code === code);
}
