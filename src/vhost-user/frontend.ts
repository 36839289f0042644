// (Over 450 lines: one class, the request/reply state machine of a session; its
// codec is already apart in protocol.ts and the rest does not split cleanly.)
//
// A minimal vhost-user front-end (the side QEMU plays): the message codec of
// QEMU's docs/interop/vhost-user.rst and a client over an FdSocket that sends
// requests and reads their replies from the byte stream.
//
// Wire format: a 12-byte header — u32 request, u32 flags (bits 0-1 version = 1,
// bit 2 REPLY, bit 3 NEED_REPLY), u32 payload size — then the payload. Numbers
// are in the host's byte order; fds ride on the message as SCM_RIGHTS.
//
// The session is strictly request/reply: one request at a time (calls are queued),
// and only the requests the spec lists (GET_*) or those sent with NEED_REPLY get a
// reply. Replies are read from the stream however the kernel splits or merges
// them. A reply that does not fit (not a reply, another request, wrong version or
// size) or that does not come in time leaves the session out of step, so the
// front-end then closes the connection (as the spec says a front-end does) and
// every later call fails with that first error.
//
// Handover: a process that received an already-connected socket continues the same
// session with VhostUserFrontend.fromFd / fromSocket (pass it the negotiated
// `session` so it knows, e.g., whether REPLY_ACK is on). The sending side calls
// detach() once idle: it gets a duplicate of the connection's fd and its own
// reader stops, so no reply meant for the new owner is consumed here.
import { BackendTransferError, ErrorCodes, type ErrorDetails } from '../errors.js';
import { closeFds, dupFd } from '../fd/index.js';
import { FdSocket, type ConnectOptions, type FdSocketOptions, type ReceivedChunk } from '../transport/fd-socket.js';
import {
  ALWAYS_REPLIED,
  VHOST_USER_FLAG_NEED_REPLY,
  VHOST_USER_FLAG_REPLY,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_FDS,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
  VHOST_USER_VRING_INDEX_MASK,
  VHOST_USER_VRING_NOFD_MASK,
  VIRTIO_BLK_CONFIG_SIZE,
  VhostUserErrorCodes,
  VhostUserProtocolFeatureBit,
  VhostUserRequest,
  checkU32,
  decodeConfig,
  decodeHeader,
  decodeU64,
  decodeVirtioBlkConfig,
  encodeConfig,
  encodeMessage,
  encodeU64,
  hasFeature,
  requestName,
  type VhostUserConfigPayload,
  type VhostUserErrorCode,
  type VirtioBlkConfig,
} from './protocol.js';

// ---------------------------------------------------------------- client

/** What was negotiated on a connection: enough for another process to continue it. */
export interface VhostUserSession {
  /** The features acknowledged with SET_FEATURES, if it was sent. */
  features?: bigint;
  /** The protocol features acknowledged with SET_PROTOCOL_FEATURES, if it was sent. */
  protocolFeatures?: bigint;
  /** SET_OWNER was sent. */
  owner?: boolean;
}

export interface VhostUserFrontendOptions {
  /** ms to wait for each request (its send and its reply). Default 5000. */
  timeout?: number;
  /** Largest reply payload accepted; a larger size is a protocol error. Default 4096. */
  maxReplyPayload?: number;
  /** State negotiated earlier on this connection, by this or another process. */
  session?: VhostUserSession;
  /**
   * Ask for a REPLY_ACK on requests that have no reply of their own, so that they
   * complete only once the back-end has processed them. 'auto' (default): when
   * REPLY_ACK is among the acknowledged protocol features.
   */
  ack?: 'auto' | 'never';
}

export interface VhostUserConnectOptions extends VhostUserFrontendOptions {
  /** Options of the underlying FdSocket.connect (peer policy, connect timeout ...). */
  socket?: ConnectOptions;
}

export interface VhostUserRequestOptions {
  /** fds sent with the request (SCM_RIGHTS). They must stay open until the call settles. */
  fds?: readonly number[];
  /**
   * Set NEED_REPLY and wait for the reply (a u64 ack for requests without a reply
   * of their own). Default: true for requests that always get a reply, false otherwise.
   */
  needReply?: boolean;
  /** Overrides the front-end's timeout for this request. */
  timeout?: number;
}

export interface VhostUserReply {
  request: number;
  flags: number;
  payload: Buffer;
  /** fds that came with the reply. Owned by the caller: close them. */
  fds: number[];
}

function vuError<C extends VhostUserErrorCode>(code: C, message: string, details: ErrorDetails<C> = {}, cause?: unknown): BackendTransferError<C> {
  return new BackendTransferError(code, message, cause === undefined ? { details } : { details, cause });
}

/** Maps a transport failure while talking to the back-end. */
function transportError(err: unknown, what: string): BackendTransferError {
  const e = BackendTransferError.fromSystem(err, what);
  if (e.code === ErrorCodes.ERR_PEER_CLOSED || e.code === ErrorCodes.ERR_SOCKET_CLOSED) {
    return vuError(VhostUserErrorCodes.ERR_VHOST_USER_CLOSED, `${what}: the connection to the back-end is gone (${e.message})`, { transportCode: e.code }, e);
  }
  return e;
}

interface Deadline {
  at: number;
  ms: number;
  what: string;
}

export class VhostUserFrontend {
  readonly #sock: FdSocket;
  readonly #timeout: number;
  readonly #maxReply: number;
  readonly #ack: 'auto' | 'never';
  #session: VhostUserSession;
  #queue: Promise<unknown> = Promise.resolve();
  #inFlight = 0;
  #failure: BackendTransferError | null = null;
  #closed = false;
  #detached = false;

  private constructor(sock: FdSocket, options: VhostUserFrontendOptions) {
    if (sock.type !== 'stream') throw BackendTransferError.invalidArgument('vhost-user runs over a stream socket');
    const timeout = options.timeout ?? 5000;
    const maxReply = options.maxReplyPayload ?? 4096;
    if (!(Number.isFinite(timeout) && timeout > 0)) throw BackendTransferError.invalidArgument(`timeout must be a positive number of ms, got ${String(timeout)}`);
    if (!(Number.isInteger(maxReply) && maxReply >= 8)) throw BackendTransferError.invalidArgument(`maxReplyPayload must be an integer >= 8, got ${String(maxReply)}`);
    this.#sock = sock;
    this.#timeout = timeout;
    this.#maxReply = maxReply;
    this.#ack = options.ack ?? 'auto';
    this.#session = { ...options.session };
  }

  /** Connects to a back-end listening on `path` (a "\0name" is abstract). */
  static async connect(path: string, options: VhostUserConnectOptions = {}): Promise<VhostUserFrontend> {
    const sock = await FdSocket.connect(path, { ...options.socket, type: 'stream' });
    try {
      return new VhostUserFrontend(sock, options);
    } catch (err) {
      sock.close();
      throw err;
    }
  }

  /**
   * Continues a session on an already-connected socket (one received from another
   * process, say). Takes ownership of `sock`. Nothing is sent: the connection is
   * not reset, the back-end sees the same session go on.
   */
  static fromSocket(sock: FdSocket, options: VhostUserFrontendOptions = {}): VhostUserFrontend {
    return new VhostUserFrontend(sock, options);
  }

  /**
   * fromSocket(FdSocket.fromFd(fd)). Takes ownership of `fd` on success; throws
   * ERR_NOT_UNIX_SOCKET (fd left to the caller) when it is not an AF_UNIX socket.
   * The fd's file status flags (O_NONBLOCK) are left as they are.
   */
  static fromFd(fd: number, options: VhostUserFrontendOptions & { socket?: FdSocketOptions } = {}): VhostUserFrontend {
    const sock = FdSocket.fromFd(fd, options.socket);
    try {
      return new VhostUserFrontend(sock, options);
    } catch (err) {
      sock.close();
      throw err;
    }
  }

  /** The connection's fd (owned by this front-end). */
  get fd(): number {
    return this.#sock.fd;
  }

  /** The underlying socket, for inspection (credentials, addresses). Do not read from it. */
  get socket(): FdSocket {
    return this.#sock;
  }

  /** What has been negotiated on this connection so far (a copy). */
  get session(): VhostUserSession {
    return { ...this.#session };
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The error that ended the session, if one did. */
  get failure(): BackendTransferError | null {
    return this.#failure;
  }

  // ------------------------------------------------------------ typed requests

  /** GET_FEATURES: the back-end's feature bits. */
  async getFeatures(): Promise<bigint> {
    return this.#u64Request(VhostUserRequest.GET_FEATURES);
  }

  /** SET_FEATURES: acknowledges `features` (include VHOST_USER_F_PROTOCOL_FEATURES to keep protocol features). */
  async setFeatures(features: bigint): Promise<void> {
    await this.#noReplyRequest(VhostUserRequest.SET_FEATURES, encodeU64(features));
    this.#session.features = features;
  }

  /** SET_OWNER: marks this connection as the owner of the session. */
  async setOwner(): Promise<void> {
    await this.#noReplyRequest(VhostUserRequest.SET_OWNER);
    this.#session.owner = true;
  }

  /** GET_PROTOCOL_FEATURES (legal when GET_FEATURES has VHOST_USER_F_PROTOCOL_FEATURES). */
  async getProtocolFeatures(): Promise<bigint> {
    return this.#u64Request(VhostUserRequest.GET_PROTOCOL_FEATURES);
  }

  /** SET_PROTOCOL_FEATURES. From then on, with REPLY_ACK among them, requests without a reply are acknowledged. */
  async setProtocolFeatures(features: bigint): Promise<void> {
    await this.#noReplyRequest(VhostUserRequest.SET_PROTOCOL_FEATURES, encodeU64(features));
    this.#session.protocolFeatures = features;
  }

  /** GET_QUEUE_NUM: how many queues the back-end supports (needs protocol feature MQ). */
  async getQueueNum(): Promise<number> {
    const n = await this.#u64Request(VhostUserRequest.GET_QUEUE_NUM);
    if (n > 0xffffn) throw this.#protocolFailure(`GET_QUEUE_NUM answered ${n}, more queues than a vring index can name`, { value: n.toString() });
    return Number(n);
  }

  /**
   * GET_CONFIG: `size` bytes of the device's config space at `offset` (needs
   * protocol feature CONFIG). An empty reply is the back-end's refusal:
   * ERR_VHOST_USER_REJECTED. Note that QEMU's libvhost-user back-ends ignore the
   * offset and always answer from the start of the config space.
   */
  async getConfig(offset: number, size: number, flags = 0): Promise<Buffer> {
    const reply = await this.#request(VhostUserRequest.GET_CONFIG, encodeConfig(offset, size, flags), [], true, undefined);
    const r = reply!;
    closeFds(r.fds);
    if (r.payload.length === 0) {
      throw vuError(VhostUserErrorCodes.ERR_VHOST_USER_REJECTED, `the back-end refused GET_CONFIG of ${size} bytes at offset ${offset} (empty reply)`, {
        request: 'GET_CONFIG',
        offset,
        size,
      });
    }
    let cfg: VhostUserConfigPayload;
    try {
      cfg = decodeConfig(r.payload);
    } catch (err) {
      throw this.#protocolFailure(`GET_CONFIG reply: ${(err as Error).message}`, { request: 'GET_CONFIG' });
    }
    if (cfg.size !== size) throw this.#protocolFailure(`GET_CONFIG asked for ${size} bytes, the reply has ${cfg.size}`, { request: 'GET_CONFIG', size, got: cfg.size });
    return cfg.data;
  }

  /** GET_CONFIG of a virtio-blk device, decoded. */
  async getBlkConfig(size = VIRTIO_BLK_CONFIG_SIZE): Promise<VirtioBlkConfig> {
    return decodeVirtioBlkConfig(await this.getConfig(0, size));
  }

  /** SET_VRING_CALL: the eventfd the back-end signals when it used buffers of ring `index` (null: no fd, poll). */
  setVringCall(index: number, fd: number | null): Promise<void> {
    return this.#vringFd(VhostUserRequest.SET_VRING_CALL, index, fd);
  }

  /** SET_VRING_KICK: the eventfd the front-end kicks ring `index` with (null: the back-end polls). Starts the ring. */
  setVringKick(index: number, fd: number | null): Promise<void> {
    return this.#vringFd(VhostUserRequest.SET_VRING_KICK, index, fd);
  }

  /** SET_VRING_ERR: the eventfd the back-end signals errors of ring `index` on. */
  setVringErr(index: number, fd: number | null): Promise<void> {
    return this.#vringFd(VhostUserRequest.SET_VRING_ERR, index, fd);
  }

  // ------------------------------------------------------------ generic

  /**
   * Sends one request and, when it expects one (see `options.needReply`), reads its
   * reply. Resolves with the reply (whose fds are the caller's), or null when
   * there is none to wait for (then it resolves once the kernel took the bytes).
   * A REPLY_ACK is returned as it is (u64 payload): the caller judges it.
   */
  request(code: number, payload: Uint8Array = new Uint8Array(0), options: VhostUserRequestOptions = {}): Promise<VhostUserReply | null> {
    const needReply = options.needReply ?? ALWAYS_REPLIED.has(code);
    if (!needReply && ALWAYS_REPLIED.has(code)) {
      // Its reply would be taken for the answer to the next request.
      return Promise.reject(BackendTransferError.invalidArgument(`${requestName(code)} always gets a reply: needReply cannot be false`));
    }
    return this.#request(code, payload, options.fds ?? [], needReply, options.timeout);
  }

  // ------------------------------------------------------------ lifetime

  /**
   * Gives the connection up for another owner without disturbing it: returns a
   * duplicate of its fd (the caller owns it, e.g. to send it over an FdSocket and
   * close it) and closes this front-end's socket. Throws ERR_VHOST_USER_BUSY while
   * a request is in flight or received bytes are unread, since those would be lost
   * to the next owner; the connection is then left as it was.
   */
  detach(): number {
    if (this.#failure) throw this.#failure;
    if (this.#closed) throw vuError(VhostUserErrorCodes.ERR_VHOST_USER_CLOSED, 'detach(): this front-end is closed');
    if (this.#inFlight > 0 || this.#sock.readableLength > 0 || this.#sock.readableFds > 0) {
      throw vuError(VhostUserErrorCodes.ERR_VHOST_USER_BUSY, 'detach() while the session is not idle: a request is in flight or received bytes are unread', {
        inFlight: this.#inFlight,
        unreadBytes: this.#sock.readableLength,
        unreadFds: this.#sock.readableFds,
      });
    }
    const fd = dupFd(this.#sock.fd);
    this.#detached = true;
    this.#closed = true;
    this.#sock.close();
    return fd;
  }

  /** Closes the connection (this process's copy of it). Pending requests fail with ERR_VHOST_USER_CLOSED. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#sock.close();
  }

  // ------------------------------------------------------------ internals

  async #u64Request(code: number): Promise<bigint> {
    const r = (await this.#request(code, new Uint8Array(0), [], true, undefined))!;
    closeFds(r.fds);
    if (r.payload.length !== 8)
      throw this.#protocolFailure(`the reply to ${requestName(code)} should carry a u64 (8 bytes), it has ${r.payload.length}`, { request: requestName(code), size: r.payload.length });
    return decodeU64(r.payload);
  }

  /** A request without a reply of its own: acknowledged when REPLY_ACK is on (and not turned off). */
  async #noReplyRequest(code: number, payload: Uint8Array = new Uint8Array(0), fds: readonly number[] = []): Promise<void> {
    const ack = this.#ack === 'auto' && hasFeature(this.#session.protocolFeatures ?? 0n, VhostUserProtocolFeatureBit.REPLY_ACK);
    const r = await this.#request(code, payload, fds, ack, undefined);
    if (r === null) return;
    closeFds(r.fds);
    if (r.payload.length !== 8) throw this.#protocolFailure(`the REPLY_ACK of ${requestName(code)} should be a u64 (8 bytes), it has ${r.payload.length}`, { request: requestName(code) });
    const status = decodeU64(r.payload);
    if (status !== 0n) {
      throw vuError(VhostUserErrorCodes.ERR_VHOST_USER_REJECTED, `the back-end failed ${requestName(code)} (REPLY_ACK status ${status})`, {
        request: requestName(code),
        status: status.toString(),
      });
    }
  }

  #vringFd(code: number, index: number, fd: number | null): Promise<void> {
    if (!Number.isInteger(index) || index < 0 || index > VHOST_USER_VRING_INDEX_MASK) return Promise.reject(BackendTransferError.invalidArgument(`vring index must be 0..255, got ${String(index)}`));
    const value = BigInt(index) | (fd === null ? BigInt(VHOST_USER_VRING_NOFD_MASK) : 0n);
    return this.#noReplyRequest(code, encodeU64(value), fd === null ? [] : [fd]);
  }

  #request(code: number, payload: Uint8Array, fds: readonly number[], needReply: boolean, timeout: number | undefined): Promise<VhostUserReply | null> {
    try {
      checkU32('request', code);
      if (!(payload instanceof Uint8Array)) throw BackendTransferError.invalidArgument('payload must be a Uint8Array');
      if (fds.length > VHOST_USER_MAX_FDS) throw BackendTransferError.invalidArgument(`a vhost-user message carries at most ${VHOST_USER_MAX_FDS} fds, got ${fds.length}`);
      for (const fd of fds) if (!Number.isInteger(fd) || fd < 0) throw BackendTransferError.invalidArgument(`fds must be non-negative integers, got ${String(fd)}`);
      if (timeout !== undefined && !(Number.isFinite(timeout) && timeout > 0)) throw BackendTransferError.invalidArgument(`timeout must be a positive number of ms, got ${String(timeout)}`);
    } catch (err) {
      return Promise.reject(err);
    }
    this.#inFlight++;
    const run = async (): Promise<VhostUserReply | null> => {
      try {
        return await this.#exchange(code, payload, fds, needReply, timeout ?? this.#timeout);
      } finally {
        this.#inFlight--;
      }
    };
    // One request at a time; a failed one does not stop the queue (later ones see #failure).
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => undefined);
    return p;
  }

  #checkUsable(what: string): void {
    if (this.#failure) throw this.#failure;
    if (this.#closed) {
      throw vuError(VhostUserErrorCodes.ERR_VHOST_USER_CLOSED, `${what}: this front-end was ${this.#detached ? 'detached (the connection belongs to another owner now)' : 'closed'}`);
    }
  }

  async #exchange(code: number, payload: Uint8Array, fds: readonly number[], needReply: boolean, ms: number): Promise<VhostUserReply | null> {
    const name = requestName(code);
    this.#checkUsable(name);
    const deadline: Deadline = { at: Date.now() + ms, ms, what: name };
    // Nothing may be waiting before a request: the back-end only ever answers.
    const stale = this.#sock.tryRead();
    if (stale === null) throw this.#fail(vuError(VhostUserErrorCodes.ERR_VHOST_USER_CLOSED, `${name}: the back-end closed the connection`, { request: name }));
    if (stale !== undefined) {
      closeFds(stale.fds);
      throw this.#fail(
        vuError(VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL, `${name}: the back-end sent ${stale.data.length} byte(s) nobody asked for`, {
          request: name,
          bytes: stale.data.length,
          fds: stale.fds.length,
        }),
      );
    }
    const flags = VHOST_USER_VERSION | (needReply && !ALWAYS_REPLIED.has(code) ? VHOST_USER_FLAG_NEED_REPLY : 0);
    const msg = encodeMessage(code, flags, payload);
    try {
      await this.#withDeadline(this.#sock.send(msg, fds), deadline, 'send');
    } catch (err) {
      throw this.#fail(err instanceof BackendTransferError && err.code === VhostUserErrorCodes.ERR_VHOST_USER_TIMEOUT ? err : transportError(err, `sending ${name}`));
    }
    if (!needReply) return null;
    return this.#readReply(code, deadline);
  }

  async #readReply(code: number, deadline: Deadline): Promise<VhostUserReply> {
    const name = requestName(code);
    const fds: number[] = [];
    try {
      const head = await this.#readExact(VHOST_USER_HEADER_SIZE, fds, deadline, `the reply to ${name}`);
      const h = decodeHeader(head);
      const details = { request: name, replyRequest: h.request, replyFlags: h.flags, replySize: h.size };
      if ((h.flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION) {
        throw vuError(
          VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL,
          `waiting for the reply to ${name}: header has version ${h.flags & VHOST_USER_VERSION_MASK}, not ${VHOST_USER_VERSION} (not a vhost-user back-end?)`,
          details,
        );
      }
      if ((h.flags & VHOST_USER_FLAG_REPLY) === 0) {
        throw vuError(
          VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL,
          `waiting for the reply to ${name}: got a message without the REPLY flag (${requestName(h.request)}, flags 0x${h.flags.toString(16)})`,
          details,
        );
      }
      if (h.request !== code) {
        throw vuError(VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL, `waiting for the reply to ${name}: got a reply to ${requestName(h.request)}`, details);
      }
      if (h.size > this.#maxReply) {
        throw vuError(VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL, `the reply to ${name} announces ${h.size} payload bytes, over the limit of ${this.#maxReply}`, details);
      }
      const body = h.size === 0 ? Buffer.alloc(0) : await this.#readExact(h.size, fds, deadline, `the reply to ${name}`);
      return { request: h.request, flags: h.flags, payload: body, fds };
    } catch (err) {
      closeFds(fds);
      throw this.#fail(err);
    }
  }

  /**
   * Exactly `n` bytes from the stream. The fds of a chunk belong to the message that
   * holds the chunk's last byte (a unix recvmsg stops right after the skb whose fds
   * it took), so a chunk that runs past `n` goes back to the socket with its fds.
   */
  async #readExact(n: number, fds: number[], deadline: Deadline, what: string): Promise<Buffer> {
    const out = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const c = await this.#nextChunk(deadline);
      if (c === null) {
        throw vuError(VhostUserErrorCodes.ERR_VHOST_USER_CLOSED, `the back-end closed the connection after ${got} of ${n} bytes of ${what}${got === 0 ? '' : ' (mid-message)'}`, {
          request: deadline.what,
          received: got,
          expected: n,
        });
      }
      const want = n - got;
      if (c.data.length <= want) {
        out.set(c.data, got);
        got += c.data.length;
        fds.push(...c.fds);
      } else {
        out.set(c.data.subarray(0, want), got);
        got += want;
        this.#sock.unshift({ data: c.data.subarray(want), fds: c.fds, fdSeq: c.fdSeq, offset: c.offset + want });
      }
    }
    return out;
  }

  /** The next chunk, null at EOF; ERR_VHOST_USER_TIMEOUT at the deadline. */
  #nextChunk(deadline: Deadline): Promise<ReceivedChunk | null> {
    const now = this.#sock.tryRead();
    if (now !== undefined) return Promise.resolve(now);
    return this.#withDeadline(this.#sock.read(), deadline, 'reply').catch((err: unknown) => {
      throw err instanceof BackendTransferError && err.code === VhostUserErrorCodes.ERR_VHOST_USER_TIMEOUT ? err : transportError(err, `waiting for the reply to ${deadline.what}`);
    });
  }

  /** `p`, or ERR_VHOST_USER_TIMEOUT at the deadline. A chunk that arrives too late has its fds closed. */
  #withDeadline<T>(p: Promise<T>, deadline: Deadline, phase: 'send' | 'reply'): Promise<T> {
    const left = deadline.at - Date.now();
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(
        () => {
          settled = true;
          reject(
            vuError(
              VhostUserErrorCodes.ERR_VHOST_USER_TIMEOUT,
              phase === 'send' ? `${deadline.what}: the back-end did not take the request within ${deadline.ms} ms` : `${deadline.what}: no complete reply within ${deadline.ms} ms`,
              { request: deadline.what, ms: deadline.ms },
            ),
          );
        },
        Math.max(0, left),
      );
      p.then(
        (v) => {
          clearTimeout(timer);
          if (settled) {
            const fdsOf = (v as { fds?: unknown } | null)?.fds;
            if (Array.isArray(fdsOf)) closeFds(fdsOf as number[]);
            return;
          }
          settled = true;
          resolve(v);
        },
        (err: unknown) => {
          clearTimeout(timer);
          if (settled) return; // the socket was closed after the timeout: expected
          settled = true;
          reject(err);
        },
      );
    });
  }

  #protocolFailure(message: string, details: ErrorDetails<'ERR_VHOST_USER_PROTOCOL'>): BackendTransferError {
    return this.#fail(vuError(VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL, message, details));
  }

  /**
   * The session is out of step (or gone): remember the first error, close the
   * connection, and hand the error back for throwing. Argument errors and a local
   * close pass through without failing the session.
   */
  #fail(err: unknown): BackendTransferError {
    const e = err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, 'vhost-user');
    if (e.code === ErrorCodes.ERR_INVALID_ARGUMENT) return e;
    if (this.#closed) {
      // Closed or detached locally while this request waited.
      if (this.#failure) return this.#failure;
      return e.code === VhostUserErrorCodes.ERR_VHOST_USER_CLOSED
        ? vuError(
            VhostUserErrorCodes.ERR_VHOST_USER_CLOSED,
            `${typeof e.details?.request === 'string' ? e.details.request : 'request'}: this front-end was ${this.#detached ? 'detached' : 'closed'} while it waited`,
            { request: e.details?.request as string | undefined },
            e,
          )
        : e;
    }
    if (!this.#failure) this.#failure = e;
    this.#closed = true;
    this.#sock.close();
    return this.#failure;
  }
}
