// FdSocket: a non-blocking AF_UNIX stream or seqpacket socket that carries bytes
// and file descriptors, with backpressure, owned received fds and sequence numbers.
//
// Sending: send(data, fds) queues one message. Its fds ride on its own bytes: a
// batch of at most SCM_MAX_FD (253) fds goes with each piece, every piece carries
// at least one byte, and an fd-carrying sendmsg never starts with another
// message's bytes. Once sendmsg has accepted any byte of a piece its fds have gone
// with it, so a partial write or an EAGAIN never loses or repeats an fd.
//
// Receiving: the socket reads eagerly (up to a high-water mark) so that fds are
// owned by this process as soon as they arrive. Each recvmsg becomes one chunk:
// its bytes, the fds that came with them, the sequence number of its first fd and
// its byte offset. fds belong to the socket until read() hands their chunk out;
// whatever was never read is closed when the socket closes or fails.
import { EventEmitter } from 'node:events';
import { native, type PeerCred, type PollerConstructor } from '../native.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFds } from '../fd/index.js';
import { FdPoller, READABLE, WRITABLE } from './poller.js';
import { checkPeer, type PeerPolicy } from './peer.js';
import { FdServer, printable, type ListenOptions } from './server.js';

export type SocketType = 'stream' | 'seqpacket';

export const SCM_MAX_FD = native.SCM_MAX_FD;

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
  /** Stop reading from the kernel while this many bytes are buffered unread. Default 8 MiB. */
  highWaterMark?: number;
  /** Stop reading from the kernel while this many fds are buffered unread. Default 16384. */
  fdHighWaterMark?: number;
  /** seqpacket only: the largest record this side sends. Default 64 KiB. */
  recordSize?: number;
  /** The native poller class (tests may pass their own). */
  poller?: PollerConstructor;
}

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

interface PendingMessage {
  opsLeft: number;
  sentBytes: number;
  settled: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface SendOp {
  buf: Uint8Array;
  off: number;
  fds: number[] | null;
  msg: PendingMessage;
}

const RESOLVED: Promise<void> = Promise.resolve();
const EMPTY_FDS: number[] = [];
const MAX_GATHER_BYTES = 4 * 1024 * 1024;
const READS_PER_TICK = 64;
const SEQPACKET_MAX_RECORD = 256 * 1024;

/** Message-level send failures: the connection is fine, only this message cannot go. */
const MESSAGE_LEVEL_SEND_ERRORS = new Set(['EBADF', 'ETOOMANYREFS', 'EMSGSIZE', 'EINVAL']);

function typeOf(t: SocketType): number {
  return t === 'seqpacket' ? native.SOCK_SEQPACKET : native.SOCK_STREAM;
}

function validateFds(fds: readonly number[]): void {
  for (const fd of fds) {
    if (!Number.isInteger(fd) || fd < 0) throw BackendTransferError.invalidArgument(`fds must be non-negative integers, got ${String(fd)}`);
  }
}

export class FdSocket extends EventEmitter {
  /** The socket's own fd (owned by this object). */
  readonly fd: number;
  readonly type: SocketType;
  /** SO_PEERCRED of the peer, when it was checked at connect/accept. */
  peer: PeerCred | undefined;

  readonly stats: FdSocketStats = { bytesSent: 0, bytesReceived: 0, fdsSent: 0, fdsReceived: 0, sendmsgCalls: 0, recvmsgCalls: 0 };

  #poller: FdPoller;
  #closed = false;
  #error: BackendTransferError | null = null;

  // receive side
  #chunks: ReceivedChunk[] = [];
  #chunkHead = 0;
  #bufferedBytes = 0;
  #bufferedFds = 0;
  #eof = false;
  #readWaiters: { resolve: (c: ReceivedChunk | null) => void; reject: (e: Error) => void }[] = [];
  #slab: Buffer;
  #slabPos = 0;
  #slabSize: number;
  #minSpace: number;
  readonly #meta = new Int32Array(2 + SCM_MAX_FD);
  #rxOffset = 0;
  #rxFdSeq = 0;
  readonly #highWaterMark: number;
  readonly #fdHighWaterMark: number;

  // send side
  #ops: SendOp[] = [];
  #opHead = 0;
  #queuedBytes = 0;
  #endRequested = false;
  #endWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  #writeShut = false;
  readonly #recordSize: number;

  /** Takes ownership of `fd`, an AF_UNIX socket of the given type. Prefer FdSocket.fromFd, which checks. */
  constructor(fd: number, type: SocketType, options: FdSocketOptions = {}) {
    super();
    this.fd = fd;
    this.type = type;
    const readBufferSize = options.readBufferSize ?? 256 * 1024;
    this.#highWaterMark = options.highWaterMark ?? 8 * 1024 * 1024;
    this.#fdHighWaterMark = options.fdHighWaterMark ?? 16384;
    this.#recordSize = options.recordSize ?? 64 * 1024;
    if (!(readBufferSize >= 1024)) throw BackendTransferError.invalidArgument('readBufferSize must be at least 1024');
    if (!(this.#recordSize >= 1 && this.#recordSize <= SEQPACKET_MAX_RECORD))
      throw BackendTransferError.invalidArgument(`recordSize must be 1..${SEQPACKET_MAX_RECORD}`);
    // A seqpacket record must fit whole in the space offered to recvmsg, or the kernel truncates it.
    this.#minSpace = type === 'seqpacket' ? SEQPACKET_MAX_RECORD : Math.min(16 * 1024, readBufferSize);
    this.#slabSize = Math.max(readBufferSize, this.#minSpace * 2);
    this.#slab = Buffer.allocUnsafe(this.#slabSize);
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

  /** True once the peer has shut down its side and every buffered chunk was read. */
  get readableEnded(): boolean {
    return this.#eof && this.#chunkHead === this.#chunks.length;
  }

  /** Bytes received and not yet read. */
  get readableLength(): number {
    return this.#bufferedBytes;
  }

  /** fds received and not yet read (owned by the socket until then). */
  get readableFds(): number {
    return this.#bufferedFds;
  }

  /** Bytes queued and not yet accepted by the kernel. */
  get writableLength(): number {
    return this.#queuedBytes;
  }

  /** Sequence number the next received fd will get. */
  get nextFdSeq(): number {
    return this.#rxFdSeq;
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
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    if (this.#endRequested) return Promise.reject(BackendTransferError.socketClosed('writable side'));
    let buf: Uint8Array;
    if (data instanceof Uint8Array) buf = data;
    else if (Array.isArray(data)) {
      // Gather lists without fds on a stream socket are queued as they are; otherwise join them.
      if (fds.length === 0 && this.type === 'stream') return this.#sendSegments(data as readonly Uint8Array[]);
      buf = Buffer.concat(data as readonly Uint8Array[]);
    } else return Promise.reject(BackendTransferError.invalidArgument('data must be a Uint8Array or an array of them'));
    if (fds.length > 0) {
      try {
        validateFds(fds);
      } catch (err) {
        return Promise.reject(err);
      }
    }
    const pieces = Math.ceil(fds.length / SCM_MAX_FD);
    if (buf.length < Math.max(1, pieces)) {
      if (buf.length === 0 && fds.length === 0) return RESOLVED;
      return Promise.reject(
        new BackendTransferError(
          ErrorCodes.ERR_FDS_NEED_BYTES,
          `${fds.length} fds need ${pieces} piece(s) of at least one byte each, but the message has ${buf.length} byte(s)`,
          { details: { fds: fds.length, bytes: buf.length } },
        ),
      );
    }

    // Fast path: nothing queued, one sendmsg takes all of it.
    if (this.#opHead === this.#ops.length && pieces <= 1 && (this.type === 'stream' || buf.length <= this.#recordSize)) {
      let n: number;
      try {
        n = this.#sendmsg(buf, fds.length ? fds : undefined);
      } catch (err) {
        return Promise.reject(this.#sendFailed(err, true));
      }
      if (n > 0) {
        this.stats.bytesSent += n;
        this.stats.fdsSent += fds.length;
        if (n === buf.length) return RESOLVED;
        // The fds have gone with the first byte; queue only the rest of the bytes.
        return this.#enqueue([{ buf, off: n, fds: null }], n);
      }
      return this.#enqueue([{ buf, off: 0, fds: fds.length ? fds.slice() : null }], 0);
    }

    const pieceList: { buf: Uint8Array; off: number; fds: number[] | null }[] = [];
    let pos = 0;
    for (let i = 0; i < pieces; i++) {
      const batch = fds.slice(i * SCM_MAX_FD, (i + 1) * SCM_MAX_FD);
      const last = i === pieces - 1;
      let end = last ? buf.length : pos + 1;
      if (this.type === 'seqpacket') end = Math.min(end, pos + this.#recordSize);
      pieceList.push({ buf: buf.subarray(pos, end), off: 0, fds: batch });
      pos = end;
    }
    while (pos < buf.length) {
      const end = this.type === 'seqpacket' ? Math.min(buf.length, pos + this.#recordSize) : buf.length;
      pieceList.push({ buf: buf.subarray(pos, end), off: 0, fds: null });
      pos = end;
    }
    return this.#enqueue(pieceList, 0);
  }

  #sendSegments(segments: readonly Uint8Array[]): Promise<void> {
    const list: { buf: Uint8Array; off: number; fds: number[] | null }[] = [];
    for (const s of segments) {
      if (!(s instanceof Uint8Array)) return Promise.reject(BackendTransferError.invalidArgument('data must be Uint8Arrays'));
      if (s.length > 0) list.push({ buf: s, off: 0, fds: null });
    }
    if (list.length === 0) return RESOLVED;
    return this.#enqueue(list, 0);
  }

  #enqueue(pieces: { buf: Uint8Array; off: number; fds: number[] | null }[], alreadySent: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const msg: PendingMessage = { opsLeft: pieces.length, sentBytes: alreadySent, settled: false, resolve, reject };
      const wasIdle = this.#opHead === this.#ops.length;
      for (const p of pieces) {
        this.#ops.push({ buf: p.buf, off: p.off, fds: p.fds, msg });
        this.#queuedBytes += p.buf.length - p.off;
      }
      if (wasIdle) this.#flush();
    });
  }

  #sendmsg(data: Uint8Array | Uint8Array[], fds: readonly number[] | undefined): number {
    this.stats.sendmsgCalls++;
    const n = native.sendmsg(this.fd, data, fds);
    return n < 0 ? 0 : n; // -EAGAIN: nothing was sent, fds included
  }

  /** Maps a sendmsg failure; `messageLevel` says whether only the current message is affected. */
  #sendFailed(err: unknown, firstBytesOfMessage: boolean): BackendTransferError {
    const code = (err as { code?: string }).code ?? '';
    if (code === 'EBADF' && firstBytesOfMessage) {
      return new BackendTransferError(ErrorCodes.ERR_INVALID_ARGUMENT, `sendmsg on fd ${this.fd}: an fd to send is not open (${(err as Error).message})`, { cause: err });
    }
    const mapped = BackendTransferError.fromSystem(err, `sendmsg on fd ${this.fd}`);
    if (!(firstBytesOfMessage && MESSAGE_LEVEL_SEND_ERRORS.has(code))) this.#fail(mapped);
    return mapped;
  }

  #flush(): void {
    const ops = this.#ops;
    while (this.#opHead < ops.length && !this.#closed) {
      const op = ops[this.#opHead]!;
      let n: number;
      let gathered = 1;
      try {
        if (op.fds !== null || this.type === 'seqpacket') {
          n = this.#sendmsg(op.off ? op.buf.subarray(op.off) : op.buf, op.fds ?? undefined);
        } else {
          let bytes = op.buf.length - op.off;
          const iov: Uint8Array[] = [op.off ? op.buf.subarray(op.off) : op.buf];
          for (let j = this.#opHead + 1; j < ops.length && iov.length < native.IOV_MAX && bytes < MAX_GATHER_BYTES; j++) {
            const next = ops[j]!;
            if (next.fds !== null) break;
            iov.push(next.buf);
            bytes += next.buf.length;
          }
          gathered = iov.length;
          n = this.#sendmsg(gathered === 1 ? iov[0]! : iov, undefined);
        }
      } catch (err) {
        const first = op.msg.sentBytes === 0 && gathered === 1;
        const mapped = this.#sendFailed(err, first);
        if (this.#closed) return;
        // Only this message failed: drop its ops and go on with the next one.
        const msg = op.msg;
        while (this.#opHead < ops.length && ops[this.#opHead]!.msg === msg) {
          const o = ops[this.#opHead++]!;
          this.#queuedBytes -= o.buf.length - o.off;
        }
        msg.settled = true;
        msg.reject(mapped);
        continue;
      }
      if (n === 0) {
        this.#updatePoll(); // EAGAIN: wait for POLLOUT
        return;
      }
      if (op.fds !== null) {
        this.stats.fdsSent += op.fds.length;
        op.fds = null; // they went with the first byte
      }
      this.stats.bytesSent += n;
      this.#queuedBytes -= n;
      // Advance across ops by n bytes.
      while (n > 0) {
        const cur = ops[this.#opHead]!;
        const left = cur.buf.length - cur.off;
        const take = Math.min(left, n);
        cur.off += take;
        cur.msg.sentBytes += take;
        n -= take;
        if (cur.off === cur.buf.length) {
          this.#opHead++;
          if (--cur.msg.opsLeft === 0 && !cur.msg.settled) {
            cur.msg.settled = true;
            cur.msg.resolve();
          }
        }
      }
    }
    if (this.#opHead === ops.length) {
      this.#ops = [];
      this.#opHead = 0;
      if (this.#endRequested && !this.#writeShut) this.#shutdownWrite();
    }
    this.#updatePoll();
  }

  /**
   * Half-closes after everything queued has been sent (shutdown(SHUT_WR)). The peer
   * reads EOF; this side can still read.
   */
  end(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    this.#endRequested = true;
    if (this.#writeShut) return RESOLVED;
    return new Promise<void>((resolve, reject) => {
      this.#endWaiters.push({ resolve, reject });
      if (this.#opHead === this.#ops.length) this.#shutdownWrite();
    });
  }

  #shutdownWrite(): void {
    this.#writeShut = true;
    try {
      native.shutdown(this.fd, native.SHUT_WR);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code !== 'ENOTCONN') {
        const mapped = BackendTransferError.fromSystem(err, `shutdown of fd ${this.fd}`);
        for (const w of this.#endWaiters.splice(0)) w.reject(mapped);
        return;
      }
    }
    for (const w of this.#endWaiters.splice(0)) w.resolve();
  }

  // ---------------------------------------------------------------- receiving

  /**
   * The next chunk, or null at EOF. Its fds become the caller's. Rejects with the
   * socket's error (for example ERR_FDS_TRUNCATED) when the socket failed.
   */
  read(): Promise<ReceivedChunk | null> {
    const c = this.tryRead();
    if (c !== undefined) return Promise.resolve(c);
    if (this.#error) return Promise.reject(this.#error);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    return new Promise((resolve, reject) => {
      this.#readWaiters.push({ resolve, reject });
    });
  }

  /** A buffered chunk, null at EOF, or undefined when nothing is buffered now (or the socket failed). */
  tryRead(): ReceivedChunk | null | undefined {
    if (this.#chunkHead < this.#chunks.length) {
      const c = this.#chunks[this.#chunkHead]!;
      this.#chunks[this.#chunkHead++] = undefined as unknown as ReceivedChunk;
      if (this.#chunkHead === this.#chunks.length) {
        this.#chunks = [];
        this.#chunkHead = 0;
      } else if (this.#chunkHead > 1024 && this.#chunkHead * 2 > this.#chunks.length) {
        this.#chunks = this.#chunks.slice(this.#chunkHead);
        this.#chunkHead = 0;
      }
      const wasFull = this.#bufferedBytes >= this.#highWaterMark || this.#bufferedFds >= this.#fdHighWaterMark;
      this.#bufferedBytes -= c.data.length;
      this.#bufferedFds -= c.fds.length;
      if (wasFull) this.#updatePoll();
      return c;
    }
    if (this.#error || this.#closed) return undefined;
    if (this.#eof) return null;
    return undefined;
  }

  /**
   * Gives a chunk (or the unread tail of one) back, to be read first. Its fds are
   * owned by the socket again.
   */
  unshift(chunk: ReceivedChunk): void {
    if (this.#closed) {
      closeFds(chunk.fds);
      return;
    }
    if (chunk.data.length === 0 && chunk.fds.length === 0) return;
    if (this.#chunkHead > 0) this.#chunks[--this.#chunkHead] = chunk;
    else this.#chunks.unshift(chunk);
    this.#bufferedBytes += chunk.data.length;
    this.#bufferedFds += chunk.fds.length;
    this.#updatePoll();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ReceivedChunk, void, undefined> {
    for (;;) {
      const c = await this.read();
      if (c === null) return;
      yield c;
    }
  }

  #onPoll(events: number, err?: BackendTransferError): void {
    if (this.#closed) return;
    if (err) {
      this.#fail(err);
      return;
    }
    if (events & WRITABLE) this.#flush();
    if (events & READABLE && !this.#closed) this.#readLoop();
  }

  #readLoop(): void {
    const meta = this.#meta;
    for (let i = 0; i < READS_PER_TICK; i++) {
      if (this.#closed || this.#eof || !this.#wantRead()) break;
      if (this.#slabSize - this.#slabPos < this.#minSpace) {
        this.#slab = Buffer.allocUnsafe(this.#slabSize);
        this.#slabPos = 0;
      }
      let n: number;
      try {
        this.stats.recvmsgCalls++;
        n = native.recvmsg(this.fd, this.#slab, this.#slabPos, this.#slabSize - this.#slabPos, meta);
      } catch (e) {
        this.#fail(BackendTransferError.fromSystem(e, `recvmsg on fd ${this.fd}`));
        return;
      }
      if (n < 0) break; // EAGAIN
      const nfds = meta[0]!;
      const flags = meta[1]!;
      const fds = nfds === 0 ? EMPTY_FDS : Array.from(meta.subarray(2, 2 + nfds));
      if (flags & native.MSG_CTRUNC) {
        closeFds(fds);
        this.#fail(
          new BackendTransferError(
            ErrorCodes.ERR_FDS_TRUNCATED,
            `recvmsg on fd ${this.fd}: the kernel dropped fds (MSG_CTRUNC) after ${this.#rxFdSeq + nfds} fds; ` +
              `likely this process's RLIMIT_NOFILE is exhausted (${nfds} fds of the batch arrived and were closed)`,
            { details: { fdSeq: this.#rxFdSeq, arrived: nfds, offset: this.#rxOffset } },
          ),
        );
        return;
      }
      if (flags & native.MSG_TRUNC) {
        closeFds(fds);
        this.#fail(
          new BackendTransferError(
            ErrorCodes.ERR_RECORD_TRUNCATED,
            `recvmsg on fd ${this.fd}: a record larger than ${this.#slabSize - this.#slabPos} bytes was truncated (MSG_TRUNC)`,
          ),
        );
        return;
      }
      if (n === 0 && nfds === 0) {
        this.#eof = true;
        this.#updatePoll();
        this.#wake();
        this.emit('end');
        return;
      }
      const chunk: ReceivedChunk = { data: this.#slab.subarray(this.#slabPos, this.#slabPos + n), fds, fdSeq: this.#rxFdSeq, offset: this.#rxOffset };
      this.#slabPos += n;
      this.#rxOffset += n;
      this.#rxFdSeq += nfds;
      this.stats.bytesReceived += n;
      this.stats.fdsReceived += nfds;
      const w = this.#readWaiters.shift();
      if (w) {
        w.resolve(chunk);
      } else {
        this.#chunks.push(chunk);
        this.#bufferedBytes += n;
        this.#bufferedFds += nfds;
      }
    }
    this.#updatePoll();
  }

  #wake(): void {
    while (this.#readWaiters.length > 0) {
      const c = this.tryRead();
      if (c === undefined) break;
      this.#readWaiters.shift()!.resolve(c);
    }
  }

  #wantRead(): boolean {
    return !this.#eof && !this.#closed && this.#bufferedBytes < this.#highWaterMark && this.#bufferedFds < this.#fdHighWaterMark;
  }

  #updatePoll(): void {
    if (this.#closed) return;
    let ev = 0;
    if (this.#wantRead()) ev |= READABLE;
    if (this.#opHead < this.#ops.length) ev |= WRITABLE;
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
    let unclaimed = 0;
    let firstSeq = -1;
    for (let i = this.#chunkHead; i < this.#chunks.length; i++) {
      const c = this.#chunks[i]!;
      if (c.fds.length && firstSeq < 0) firstSeq = c.fdSeq;
      unclaimed += c.fds.length;
      closeFds(c.fds);
    }
    this.#chunks = [];
    this.#chunkHead = 0;
    this.#bufferedBytes = 0;
    this.#bufferedFds = 0;
    const reason = err ?? BackendTransferError.socketClosed();
    for (let i = this.#opHead; i < this.#ops.length; i++) {
      const m = this.#ops[i]!.msg;
      if (!m.settled) {
        m.settled = true;
        m.reject(reason);
      }
    }
    this.#ops = [];
    this.#opHead = 0;
    this.#queuedBytes = 0;
    for (const w of this.#endWaiters.splice(0)) w.reject(reason);
    for (const w of this.#readWaiters.splice(0)) w.reject(reason);
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
    const timeout = options.timeout ?? 10_000;
    let fd: number;
    try {
      fd = native.socket(typeOf(type));
    } catch (err) {
      throw BackendTransferError.fromSystem(err, 'socket');
    }
    let cred: PeerCred;
    try {
      const deadline = Date.now() + timeout;
      for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
        let r: number;
        try {
          r = native.connect(fd, address);
        } catch (err) {
          const code = (err as { code?: string }).code;
          if (code === 'EISCONN') break;
          if (code === 'EMFILE' || code === 'ENFILE') throw BackendTransferError.fromSystem(err, `connect to ${printable(address)}`);
          throw new BackendTransferError(ErrorCodes.ERR_CONNECT_FAILED, `connect to ${printable(address)}: ${(err as Error).message}`, { cause: err });
        }
        if (r === 0) break;
        // -EAGAIN: the listener's backlog is full (or -EINPROGRESS): try again shortly.
        if (Date.now() >= deadline) throw BackendTransferError.timeout(`connect to ${printable(address)}`, timeout);
        await new Promise((res) => setTimeout(res, delay));
      }
      cred = native.getpeercred(fd);
      checkPeer(cred, options.peer, `connect to ${printable(address)}`);
    } catch (err) {
      closeFds([fd]);
      throw BackendTransferError.fromSystem(err, `connect to ${printable(address)}`);
    }
    const sock = new FdSocket(fd, type, options);
    sock.peer = cred;
    return sock;
  }

  /** Listens on `address`; accept() yields FdSockets whose peers passed the check. */
  static listen(address: string, options: ListenOptions = {}): FdServer {
    return FdServer.listen(address, options);
  }

  /** A connected pair in this process (no peer check: both ends are ours). */
  static pair(type: SocketType = 'stream', options: FdSocketOptions = {}): [FdSocket, FdSocket] {
    let fds: [number, number];
    try {
      fds = native.socketpair(typeOf(type));
    } catch (err) {
      throw BackendTransferError.fromSystem(err, 'socketpair');
    }
    return [new FdSocket(fds[0], type, options), new FdSocket(fds[1], type, options)];
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

/** Throws ERR_NOT_UNIX_SOCKET unless fd is a connected AF_UNIX stream or seqpacket socket; returns its type. */
export function checkUnixSocket(fd: number): SocketType {
  let st;
  try {
    st = native.fstat(fd);
  } catch (err) {
    throw BackendTransferError.fromSystem(err, `fstat of fd ${fd}`);
  }
  if (st.type !== native.S_IFSOCK) {
    throw new BackendTransferError(ErrorCodes.ERR_NOT_UNIX_SOCKET, `fd ${fd} is not a socket, so it cannot carry fds (SCM_RIGHTS needs AF_UNIX)`);
  }
  const domain = native.getsockopt(fd, native.SOL_SOCKET, native.SO_DOMAIN);
  if (domain !== native.AF_UNIX) {
    throw new BackendTransferError(
      ErrorCodes.ERR_NOT_UNIX_SOCKET,
      `fd ${fd} is a socket of address family ${domain}, not AF_UNIX, so it cannot carry fds`,
      { details: { domain } },
    );
  }
  const t = native.getsockopt(fd, native.SOL_SOCKET, native.SO_TYPE);
  if (t === native.SOCK_STREAM) return 'stream';
  if (t === native.SOCK_SEQPACKET) return 'seqpacket';
  throw new BackendTransferError(ErrorCodes.ERR_NOT_UNIX_SOCKET, `fd ${fd} is an AF_UNIX socket of type ${t}; only stream and seqpacket are supported`);
}
