// (Over 450 lines: the public face of FdSocket, every method with its contract;
// about a third is doc comments. The logic is in send-queue.ts, receive-buffer.ts
// and unix-socket.ts.)
//
// FdSocket: a non-blocking AF_UNIX stream or seqpacket socket that carries bytes
// and file descriptors, with backpressure, owned received fds and sequence numbers.
//
// This file is the socket's lifecycle, polling and public face; the two halves
// are apart: send-queue.ts (messages cut into fd-carrying pieces, flushed with
// sendmsg: partial writes and EAGAIN never lose or repeat an fd) and
// receive-buffer.ts (eager reads into chunks whose fds the socket owns until they
// are read; whatever was never read is closed when the socket closes or fails).
import { EventEmitter } from 'node:events';
import { loadNative, native, type PeerCred, type PollerConstructor } from '../native.js';
import type { FdServer, ListenOptions } from './server.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { FdPoller, READABLE, WRITABLE } from './poller.js';
import type { PeerPolicy } from './peer.js';
import { ReceiveBuffer, SEQPACKET_MAX_RECORD } from './receive-buffer.js';
import { SendQueue } from './send-queue.js';
import type { FdSocketStats, ReceivedChunk, SocketType } from './types.js';
import { checkUnixSocket, dial, typeOf, withDefaults } from './unix-socket.js';

export { checkUnixSocket, withDefaults } from './unix-socket.js';

export { SCM_MAX_FD } from './types.js';
export type { SocketType, ReceivedChunk, FdSocketStats } from './types.js';

export interface ConnectOptions extends FdSocketOptions {
  type?: SocketType;
  /** Who we accept as the listening side. Default: a process with our uid. */
  peer?: PeerPolicy;
  /** Give up after this many ms while the listener's backlog is full. Default 10000. */
  timeout?: number;
}

export interface FdSocketOptions {
  /** Size of the receive slabs chunks are cut from. Default 256 KiB. */
  readBufferSize?: number;
  /**
   * Reuse receive memory: a chunk's data is valid only until the next read() or
   * tryRead() call, after which its bytes may be overwritten. Spares the page
   * faults and cache misses of fresh memory on bulk transfers. fds are unaffected.
   * Default false (each chunk's data stays valid as long as it is referenced).
   */
  recycleReadBuffers?: boolean;
  /** Stop reading from the kernel while this many bytes are buffered unread. Default 8 MiB. */
  highWaterMark?: number;
  /** Stop reading from the kernel while this many fds are buffered unread. Default 16384. */
  fdHighWaterMark?: number;
  /**
   * SO_SNDBUF for this socket. Sockets this library creates (pair, connect,
   * accept) default to 1 MiB, which lets a bulk sender and its reader overlap
   * instead of waking each other every ~50 KiB; fromFd() changes nothing unless
   * asked, since a received socket's buffer is shared with its other owners.
   * The kernel caps it at net.core.wmem_max.
   */
  sendBufferSize?: number;
  /** write() returns false once this many bytes are queued. Default 1 MiB. */
  writableHighWaterMark?: number;
  /** seqpacket only: the largest record this side sends. Default 64 KiB. */
  recordSize?: number;
  /** The native poller class (tests may pass their own). */
  poller?: PollerConstructor;
}

export interface ConsumeOptions {
  /**
   * Stream sockets: called before each receive; a non-empty region returned gets
   * the next bytes directly (the chunk is then a view of it), saving a copy when
   * the consumer knows where they belong. Return null for the normal receive buffer.
   */
  target?: () => Uint8Array | null;
}

const RESOLVED: Promise<void> = Promise.resolve();
const EMPTY_FDS: number[] = [];

export class FdSocket extends EventEmitter {
  /** The socket's own fd (owned by this object). */
  readonly fd: number;
  readonly type: SocketType;
  /** SO_PEERCRED of the peer, when it was checked at connect/accept. */
  peer: PeerCred | undefined;

  readonly stats: FdSocketStats = { bytesSent: 0, bytesReceived: 0, fdsSent: 0, fdsReceived: 0, sendmsgCalls: 0, recvmsgCalls: 0 };

  /**
   * Listens on `address`; accept() yields FdSockets whose peers passed the check.
   * (Defined by server.ts, which depends on this file and not the other way round;
   * every entry point of the package loads both.)
   */
  declare static listen: (address: string, options?: ListenOptions) => FdServer;

  readonly #poller: FdPoller;
  readonly #rx: ReceiveBuffer;
  readonly #tx: SendQueue;
  #closed = false;
  #error: BackendTransferError | null = null;
  #endRequested = false;
  #writeShut = false;
  #writableIdle = false;
  #pollErrors = 0;
  /** Set when the peer stopped taking bytes (EPIPE and kin): sends fail, reads go on. */
  #writeError: BackendTransferError | null = null;
  readonly #writableHighWaterMark: number;

  /** Takes ownership of `fd`, an AF_UNIX socket of the given type. Prefer FdSocket.fromFd, which checks. */
  constructor(fd: number, type: SocketType, options: FdSocketOptions = {}) {
    super();
    this.fd = fd;
    this.type = type;
    const readBufferSize = options.readBufferSize ?? 256 * 1024;
    const recordSize = options.recordSize ?? 64 * 1024;
    this.#writableHighWaterMark = options.writableHighWaterMark ?? 1024 * 1024;
    if (!(readBufferSize >= 1024)) throw BackendTransferError.invalidArgument('readBufferSize must be at least 1024');
    if (!(recordSize >= 1 && recordSize <= SEQPACKET_MAX_RECORD)) throw BackendTransferError.invalidArgument(`recordSize must be 1..${SEQPACKET_MAX_RECORD}`);
    const nb = loadNative(); // the binding itself: the hot paths call it without the lazy proxy
    const closed = (): boolean => this.#closed;
    const fail = (e: BackendTransferError): void => this.#fail(e);
    const updatePoll = (): void => this.#updatePoll();
    this.#rx = new ReceiveBuffer({
      fd,
      type,
      readBufferSize,
      recycle: options.recycleReadBuffers ?? false,
      highWaterMark: options.highWaterMark ?? 8 * 1024 * 1024,
      fdHighWaterMark: options.fdHighWaterMark ?? 16384,
      syscalls: nb,
      stats: this.stats,
      hooks: { closed, fail, updatePoll, peerGone: (e) => this.#peerGone(e), ended: () => this.emit('end') },
    });
    this.#tx = new SendQueue({
      fd,
      type,
      recordSize,
      iovMax: nb.IOV_MAX,
      sendmsg: nb.sendmsg.bind(nb),
      stats: this.stats,
      hooks: {
        closed,
        fail,
        updatePoll,
        stopped: () => this.#closed || this.#writeError !== null,
        failWrites: (e) => this.#failWrites(e),
        drained: () => {
          if (this.#endRequested && !this.#writeShut) this.#shutdownWrite();
        },
      },
    });
    if (options.sendBufferSize !== undefined && options.sendBufferSize > 0) {
      try {
        native.setsockopt(fd, native.SOL_SOCKET, native.SO_SNDBUF, options.sendBufferSize);
      } catch {
        /* the kernel default stays: a tuning, not a requirement */
      }
    }
    this.#poller = new FdPoller(fd, (events, err) => this.#onPoll(events, err), options.poller);
    this.#updatePoll();
  }

  // ---------------------------------------------------------------- state

  get closed(): boolean {
    return this.#closed;
  }

  /** The error that failed this socket, if any. */
  get error(): BackendTransferError | null {
    return this.#error;
  }

  /**
   * The error that failed the sending side only (the peer closed or shut down its
   * reading side: ERR_PEER_CLOSED), while what it sent before can still be read.
   */
  get writeError(): BackendTransferError | null {
    return this.#writeError;
  }

  /** True once the peer has shut down its side and every buffered chunk was read. */
  get readableEnded(): boolean {
    return this.#rx.ended;
  }

  /** Bytes received and not yet read. */
  get readableLength(): number {
    return this.#rx.bufferedBytes;
  }

  /** fds received and not yet read (owned by the socket until then). */
  get readableFds(): number {
    return this.#rx.bufferedFds;
  }

  /** Bytes queued and not yet accepted by the kernel. */
  get writableLength(): number {
    return this.#tx.queuedBytes;
  }

  /** Sequence number the next received fd will get. */
  get nextFdSeq(): number {
    return this.#rx.nextFdSeq;
  }

  // ---------------------------------------------------------------- sending

  /**
   * Sends `data` with `fds` attached to its bytes. Resolves once the kernel has
   * accepted every byte; the fds must stay open until then (the kernel duplicates
   * them at sendmsg). `data` must not be modified until then either.
   * More than 253 fds are sent as successive pieces of this message, one batch per
   * piece, so the message needs at least ceil(fds/253) bytes.
   */
  send(data: Uint8Array | readonly Uint8Array[], fds: readonly number[] = EMPTY_FDS): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#writeError) return Promise.reject(this.#writeError);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    if (this.#endRequested) return Promise.reject(BackendTransferError.socketClosed('writable side'));
    try {
      const msg = this.#tx.submit(data, fds, true, this.#failQueued);
      return msg === null ? RESOLVED : msg.promise!;
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * Like send() without a promise per message, for high message rates: queues the
   * message and returns false once `writableLength` reaches the writable high-water
   * mark (then await drain()). Argument errors and a message the kernel refuses at
   * once (a closed fd, ETOOMANYREFS) throw; a failure after queueing fails the socket.
   */
  write(data: Uint8Array | readonly Uint8Array[], fds: readonly number[] = EMPTY_FDS): boolean {
    if (this.#error) throw this.#error;
    if (this.#writeError) throw this.#writeError;
    if (this.#closed || this.#endRequested) throw BackendTransferError.socketClosed(this.#closed ? 'socket' : 'writable side');
    this.#tx.submit(data, fds, false, this.#failQueued);
    // Count each queued piece as at least 256 bytes: a flood of tiny messages costs memory too.
    return this.#tx.queuedBytes + 256 * this.#tx.queuedPieces < this.#writableHighWaterMark;
  }

  /** Resolves when everything queued has been taken by the kernel. */
  drain(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#writeError) return Promise.reject(this.#writeError);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    if (this.#tx.idle) return RESOLVED;
    return this.#tx.waitDrain();
  }

  /** A message queued by write() failed: nobody holds a promise for it, so the socket fails. */
  readonly #failQueued = (err: Error): void => {
    this.#fail(err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, 'send'));
  };

  /** The peer reset the connection: reading ends after what is buffered (see ReceiveBuffer.markPeerGone), sending fails now. */
  #peerGone(err: BackendTransferError): void {
    if (this.#closed) return;
    this.#rx.markPeerGone(err);
    this.#failWrites(err);
    this.#updatePoll();
    this.#rx.settleAfterPeerGone();
  }

  /** The sending side is done for: every queued message and waiter fails with `err`; reading goes on. */
  #failWrites(err: BackendTransferError): void {
    if (this.#writeError || this.#closed) return;
    this.#writeError = err;
    this.#tx.rejectAll(err);
    this.#updatePoll();
  }

  /**
   * Half-closes after everything queued has been sent (shutdown(SHUT_WR)). The peer
   * reads EOF; this side can still read.
   */
  end(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#writeError) return Promise.reject(this.#writeError);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    this.#endRequested = true;
    if (this.#writeShut) return RESOLVED;
    const p = this.#tx.waitEnd();
    if (this.#tx.idle) this.#shutdownWrite();
    return p;
  }

  #shutdownWrite(): void {
    this.#writeShut = true;
    try {
      native.shutdown(this.fd, native.SHUT_WR);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code !== 'ENOTCONN') {
        this.#tx.settleEnd(BackendTransferError.fromSystem(err, `shutdown of fd ${this.fd}`));
        return;
      }
    }
    this.#tx.settleEnd(null);
  }

  // ---------------------------------------------------------------- receiving

  /**
   * The next chunk, or null at EOF. Its fds become the caller's. Rejects with the
   * socket's error (for example ERR_FDS_TRUNCATED) when the socket failed.
   */
  read(): Promise<ReceivedChunk | null> {
    if (this.#rx.consuming) return Promise.reject(BackendTransferError.invalidArgument('read() while consume() is active'));
    const c = this.#rx.tryRead();
    if (c !== undefined) return Promise.resolve(c);
    if (this.#error) return Promise.reject(this.#error);
    if (this.#rx.readError) return Promise.reject(this.#rx.readError);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    return this.#rx.waitRead();
  }

  /** A buffered chunk, null at EOF, or undefined when nothing is buffered now (or the socket failed). */
  tryRead(): ReceivedChunk | null | undefined {
    return this.#rx.tryRead();
  }

  /**
   * Gives a chunk (or the unread tail of one) back, to be read first. Its fds are
   * owned by the socket again.
   */
  unshift(chunk: ReceivedChunk): void {
    this.#rx.unshift(chunk);
  }

  /**
   * Push mode: calls `onChunk` synchronously for every chunk as it arrives (first
   * the ones already buffered), which spares a promise per chunk. The chunk and its
   * fds become the handler's; with recycleReadBuffers its data is valid only during
   * the call. Resolves at EOF; rejects with the socket's error, or with what the
   * handler threw (which also fails the socket). pause()/resume() apply
   * backpressure. read()/tryRead() may not be used meanwhile.
   */
  consume(onChunk: (chunk: ReceivedChunk) => void, options: ConsumeOptions = {}): Promise<void> {
    if (this.#rx.consuming) return Promise.reject(BackendTransferError.invalidArgument('consume() is already active'));
    if (this.#rx.waiting) return Promise.reject(BackendTransferError.invalidArgument('a read() is pending'));
    if (this.#error) return Promise.reject(this.#error);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    return this.#rx.consume(onChunk, options.target ?? null);
  }

  /** Push mode: stop delivering (and reading) until resume(). */
  pause(): void {
    this.#rx.pause();
  }

  resume(): void {
    this.#rx.resume();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ReceivedChunk, void, undefined> {
    for (;;) {
      const c = await this.read();
      if (c === null) return;
      yield c;
    }
  }

  // ---------------------------------------------------------------- polling

  #onPoll(events: number, err?: BackendTransferError): void {
    if (this.#closed) return;
    if (err) {
      // POLLERR: libuv says UV_EBADF and stops polling. The socket knows what really
      // happened (ECONNRESET from a peer that closed with our bytes unread, ...):
      // reading and writing surface it; SO_ERROR when neither is due.
      if (++this.#pollErrors > 3) {
        this.#fail(err);
        return;
      }
      if (this.#rx.wantRead()) this.#rx.readLoop();
      if (!this.#closed && !this.#tx.idle) this.#tx.flush();
      if (this.#closed) return;
      let soError = 0;
      try {
        soError = native.getsockopt(this.fd, native.SOL_SOCKET, native.SO_ERROR);
      } catch {
        soError = 0;
      }
      if (soError !== 0) {
        const peerGone = soError === 104 || soError === 32 || soError === 107; // ECONNRESET, EPIPE, ENOTCONN
        const e = new BackendTransferError(
          peerGone ? ErrorCodes.ERR_PEER_CLOSED : ErrorCodes.ERR_SYSTEM,
          `socket fd ${this.fd} failed (errno ${soError})${peerGone ? ': the peer closed the connection' : ''}`,
          {
            details: { errno: soError },
          },
        );
        if (peerGone) this.#peerGone(e);
        else this.#fail(e);
        return;
      }
      this.#updatePoll();
      return;
    }
    this.#pollErrors = 0;
    if (events & WRITABLE) {
      if (this.#tx.idle) this.#writableIdle = true; // fired with nothing to send: stop asking
      this.#tx.flush();
    }
    if (events & READABLE && !this.#closed) this.#rx.readLoop();
  }

  #updatePoll(): void {
    if (this.#closed) return;
    let ev = 0;
    if (this.#rx.wantRead()) ev |= READABLE;
    // Interest in POLLOUT is dropped lazily, when it fires with nothing queued: a
    // bulk sender that keeps hitting EAGAIN then pays no epoll_ctl per cycle.
    if (!this.#tx.idle || (this.#poller.events & WRITABLE && !this.#writableIdle)) ev |= WRITABLE;
    this.#writableIdle = false;
    this.#poller.set(ev);
  }

  // ---------------------------------------------------------------- lifecycle

  /** Keeps the event loop alive while the socket waits (the default). */
  ref(): this {
    this.#poller.ref();
    return this;
  }

  /** Lets the process exit while the socket only waits. */
  unref(): this {
    this.#poller.unref();
    return this;
  }

  /**
   * Closes the socket now. Unsent messages are rejected with ERR_SOCKET_CLOSED,
   * pending reads too, and every received fd not yet read is closed.
   */
  close(): void {
    this.#teardown(null);
  }

  /** Fails the socket with `err`: like close(), but everything pending gets `err`. */
  destroy(err?: Error): void {
    this.#fail(err ? BackendTransferError.fromSystem(err, 'destroyed') : BackendTransferError.socketClosed());
  }

  #fail(err: BackendTransferError): void {
    if (this.#closed) return;
    this.#error = err;
    this.#teardown(err);
  }

  #teardown(err: BackendTransferError | null): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#poller.close();
    try {
      native.close(this.fd);
    } catch {
      /* already gone */
    }
    // Received fds nobody read: close them, and say so.
    const { unclaimed, firstSeq } = this.#rx.releaseAll();
    const reason = err ?? BackendTransferError.socketClosed();
    this.#tx.rejectAll(reason);
    this.#rx.settleClosed(reason, err); // a local close() ends consume() normally
    if (unclaimed > 0) this.emit('unclaimed-fds', { count: unclaimed, firstSeq });
    this.emit('close', err);
  }

  // ---------------------------------------------------------------- peer

  /** SO_PEERCRED of the peer. */
  peerCredentials(): PeerCred {
    try {
      return native.getpeercred(this.fd);
    } catch (err) {
      throw BackendTransferError.fromSystem(err, `SO_PEERCRED on fd ${this.fd}`);
    }
  }

  /** A pidfd for the peer process (SO_PEERPIDFD), or null where the kernel does not offer it. The caller owns it. */
  peerPidfd(): number | null {
    try {
      return native.getpeerpidfd(this.fd);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'ENOPROTOOPT' || code === 'EINVAL' || code === 'ENODATA') return null;
      throw BackendTransferError.fromSystem(err, `SO_PEERPIDFD on fd ${this.fd}`);
    }
  }

  /** The local address ('' when unnamed; a leading "\0" marks an abstract address). */
  localAddress(): string {
    return native.getsockname(this.fd) ?? '';
  }

  /** The peer's address ('' when unnamed). */
  remoteAddress(): string {
    return native.getpeername(this.fd) ?? '';
  }

  /** Sets SO_SNDBUF / SO_RCVBUF (the kernel doubles and caps the value). */
  setBufferSizes(sizes: { send?: number; receive?: number }): void {
    if (sizes.send !== undefined) native.setsockopt(this.fd, native.SOL_SOCKET, native.SO_SNDBUF, sizes.send);
    if (sizes.receive !== undefined) native.setsockopt(this.fd, native.SOL_SOCKET, native.SO_RCVBUF, sizes.receive);
  }

  // ---------------------------------------------------------------- factories

  /**
   * Connects to a listening AF_UNIX socket (a path, or "\0name" for an abstract
   * address) and checks the listener's credentials against `options.peer`.
   */
  static async connect(address: string, options: ConnectOptions = {}): Promise<FdSocket> {
    const type = options.type ?? 'stream';
    const { fd, cred } = await dial(address, type, options.timeout ?? 10_000, options.peer);
    const sock = new FdSocket(fd, type, withDefaults(options));
    sock.peer = cred;
    return sock;
  }

  /** A connected pair in this process (no peer check: both ends are ours). */
  static pair(type: SocketType = 'stream', options: FdSocketOptions = {}): [FdSocket, FdSocket] {
    let fds: [number, number];
    try {
      fds = native.socketpair(typeOf(type));
    } catch (err) {
      throw BackendTransferError.fromSystem(err, 'socketpair');
    }
    const o = withDefaults(options);
    return [new FdSocket(fds[0], type, o), new FdSocket(fds[1], type, o)];
  }

  /**
   * Wraps an existing connected AF_UNIX socket and takes ownership of it. Checks
   * that it is one (ERR_NOT_UNIX_SOCKET otherwise) and reads its type. File status
   * flags are left alone: every call uses MSG_DONTWAIT, so a blocking fd (one
   * shared with another process, say) stays blocking for its other owners.
   */
  static fromFd(fd: number, options: FdSocketOptions = {}): FdSocket {
    const type = checkUnixSocket(fd);
    return new FdSocket(fd, type, options);
  }
}
