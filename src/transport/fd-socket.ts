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

/**
 * The kernel's limit on fds in one SCM_RIGHTS message (SCM_MAX_FD in
 * include/net/scm.h, 253 since Linux 2.6.38). A constant here so that importing
 * this file loads nothing; test/fd-socket-units.test.ts checks it against native.SCM_MAX_FD.
 */
export const SCM_MAX_FD = 253;

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
  promise: Promise<void> | null;
}

interface Slab {
  buf: Buffer;
  pos: number;
  /** Chunks cut from this slab that are buffered or lent to the reader. */
  live: number;
}

interface SendOp {
  buf: Uint8Array;
  /** seqpacket: one record sent from a gather list (no copy); `buf` is then unused. */
  iov: Uint8Array[] | null;
  /** Bytes of this op (buf.length, or the iov's total). */
  len: number;
  off: number;
  fds: number[] | null;
  msg: PendingMessage;
}

const RESOLVED: Promise<void> = Promise.resolve();
const NOOP = (): void => {};
const EMPTY_FDS: number[] = [];
const EMPTY_BUF = new Uint8Array(0);
const MAX_GATHER_BYTES = 4 * 1024 * 1024;
const READS_PER_TICK = 256;
/** recvmmsg batches: this many messages per syscall, each given this many bytes. */
const BATCH_VLEN = 32;
const BATCH_SLICE = 2048;
const SEQPACKET_MAX_RECORD = 256 * 1024;

/** Message-level send failures: the connection is fine, only this message cannot go. */
const MESSAGE_LEVEL_SEND_ERRORS = new Set(['EBADF', 'ETOOMANYREFS', 'EMSGSIZE', 'EINVAL']);
/**
 * Errors that mean the peer went away (closed, reset, or shut its side). On a send
 * they fail the sending side only; on a receive they end the reading side after
 * what was queued. Either way, what the peer sent before it went can still be
 * read (a refusal and its reason, say).
 */
const PEER_GONE_ERRORS = new Set(['EPIPE', 'ECONNRESET', 'ENOTCONN']);

function typeOf(t: SocketType): number {
  return t === 'seqpacket' ? native.SOCK_SEQPACKET : native.SOCK_STREAM;
}

function validateFds(fds: readonly number[]): void {
  for (const fd of fds) {
    // The addon's own check, made here too so that nothing is queued: an fd is an
    // integer in [0, 2^31 - 1], never wrapped (2^32 + 21 is not fd 21).
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw BackendTransferError.invalidArgument(`fds must be integers in [0, 2^31 - 1], got ${String(fd)}`);
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
  #chunkSlabs: (Slab | null)[] = [];
  #chunkHead = 0;
  #bufferedBytes = 0;
  #bufferedFds = 0;
  #eof = false;
  #readWaiters: { resolve: (c: ReceivedChunk | null) => void; reject: (e: Error) => void }[] = [];
  #consumer: ((chunk: ReceivedChunk) => void) | null = null;
  #target: (() => Uint8Array | null) | null = null;
  #consumeDone: { resolve: () => void; reject: (e: Error) => void } | null = null;
  #paused = false;
  #slab: Slab;
  #slabSize: number;
  readonly #recycle: boolean;
  /** Slabs of chunks handed to the reader since its last read call (recycle mode). */
  #lent: Slab[] = [];
  #pool: Buffer[] = [];
  #minSpace: number;
  readonly #meta = new Int32Array(2 + SCM_MAX_FD);
  #batchMeta: Int32Array | null = null;
  #batchRecv = false;
  #rxOffset = 0;
  #rxFdSeq = 0;
  readonly #highWaterMark: number;
  readonly #fdHighWaterMark: number;

  // send side
  #ops: SendOp[] = [];
  #opHead = 0;
  #queuedBytes = 0;
  #endRequested = false;
  #writableIdle = false;
  #pollErrors = 0;
  #drainWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  readonly #writableHighWaterMark: number;
  #endWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  #writeShut = false;
  /** Set when the peer stopped taking bytes (EPIPE and kin): sends fail, reads go on. */
  #writeError: BackendTransferError | null = null;
  /** Set when the connection was reset (ECONNRESET): what was received is still read, then this. */
  #readError: BackendTransferError | null = null;
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
    this.#writableHighWaterMark = options.writableHighWaterMark ?? 1024 * 1024;
    if (!(readBufferSize >= 1024)) throw BackendTransferError.invalidArgument('readBufferSize must be at least 1024');
    if (!(this.#recordSize >= 1 && this.#recordSize <= SEQPACKET_MAX_RECORD))
      throw BackendTransferError.invalidArgument(`recordSize must be 1..${SEQPACKET_MAX_RECORD}`);
    // A seqpacket record must fit whole in the space offered to recvmsg, or the kernel truncates it.
    this.#minSpace = type === 'seqpacket' ? SEQPACKET_MAX_RECORD : Math.min(16 * 1024, readBufferSize);
    this.#slabSize = Math.max(readBufferSize, this.#minSpace * 2);
    this.#recycle = options.recycleReadBuffers ?? false;
    this.#slab = { buf: Buffer.allocUnsafe(this.#slabSize), pos: 0, live: 0 };
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
    return this.#eof && this.#readError === null && this.#chunkHead === this.#chunks.length;
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
    if (this.#writeError) return Promise.reject(this.#writeError);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    if (this.#endRequested) return Promise.reject(BackendTransferError.socketClosed('writable side'));
    try {
      const msg = this.#submit(data, fds, true);
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
    this.#submit(data, fds, false);
    // Count each queued piece as at least 256 bytes: a flood of tiny messages costs memory too.
    return this.#queuedBytes + 256 * (this.#ops.length - this.#opHead) < this.#writableHighWaterMark;
  }

  /** Resolves when everything queued has been taken by the kernel. */
  drain(): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#writeError) return Promise.reject(this.#writeError);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    if (this.#opHead === this.#ops.length) return RESOLVED;
    return new Promise((resolve, reject) => this.#drainWaiters.push({ resolve, reject }));
  }

  /**
   * Validates and starts one message. Returns null when the kernel took all of it
   * at once, else its pending record (with a promise when `withPromise`). Throws
   * for bad arguments and for a message the kernel refused outright.
   */
  #submit(data: Uint8Array | readonly Uint8Array[], fds: readonly number[], withPromise: boolean): PendingMessage | null {
    let buf: Uint8Array;
    if (data instanceof Uint8Array) buf = data;
    else if (Array.isArray(data)) {
      // Gather lists without fds on a stream socket are queued as they are; on a
      // seqpacket socket they are cut into records of gather lists; otherwise joined.
      if (fds.length === 0 && this.type === 'stream') return this.#submitSegments(data as readonly Uint8Array[], withPromise);
      if (this.type === 'seqpacket' && fds.length <= SCM_MAX_FD) return this.#submitRecords(data as readonly Uint8Array[], fds, withPromise);
      buf = Buffer.concat(data as readonly Uint8Array[]);
    } else throw BackendTransferError.invalidArgument('data must be a Uint8Array or an array of them');
    const nfds = fds.length;
    if (nfds > 0) validateFds(fds);
    const pieces = nfds === 0 ? 0 : Math.ceil(nfds / SCM_MAX_FD);
    if (buf.length < pieces || buf.length === 0) {
      if (buf.length === 0 && nfds === 0) return null;
      throw new BackendTransferError(
        ErrorCodes.ERR_FDS_NEED_BYTES,
        `${nfds} fds need ${pieces} piece(s) of at least one byte each, but the message has ${buf.length} byte(s)`,
        { details: { fds: nfds, bytes: buf.length } },
      );
    }

    // Fast path: nothing queued, one sendmsg takes all of it.
    if (this.#opHead === this.#ops.length && pieces <= 1 && (this.type === 'stream' || buf.length <= this.#recordSize)) {
      let n: number;
      try {
        n = this.#sendmsg(buf, nfds ? fds : undefined);
      } catch (err) {
        throw this.#sendFailed(err, true);
      }
      if (n > 0) {
        this.stats.bytesSent += n;
        this.stats.fdsSent += nfds;
        if (n === buf.length) return null;
        // The fds have gone with the first byte; queue only the rest of the bytes.
        return this.#enqueue([{ buf, off: n, fds: null }], n, withPromise);
      }
      return this.#enqueue([{ buf, off: 0, fds: nfds ? fds.slice() : null }], 0, withPromise);
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
    return this.#enqueue(pieceList, 0, withPromise);
  }

  /** seqpacket: the segments as records of at most recordSize bytes, each a gather list; the fds ride on the first. */
  #submitRecords(segments: readonly Uint8Array[], fds: readonly number[], withPromise: boolean): PendingMessage | null {
    const records: { iov: Uint8Array[]; len: number }[] = [];
    let cur: { iov: Uint8Array[]; len: number } = { iov: [], len: 0 };
    for (const s of segments) {
      if (!(s instanceof Uint8Array)) throw BackendTransferError.invalidArgument('data must be Uint8Arrays');
      for (let pos = 0; pos < s.length; ) {
        if (cur.len === this.#recordSize || cur.iov.length === native.IOV_MAX) {
          records.push(cur);
          cur = { iov: [], len: 0 };
        }
        const take = Math.min(s.length - pos, this.#recordSize - cur.len);
        cur.iov.push(pos === 0 && take === s.length ? s : s.subarray(pos, pos + take));
        cur.len += take;
        pos += take;
      }
    }
    if (cur.len > 0) records.push(cur);
    if (records.length === 0) {
      if (fds.length === 0) return null;
      throw new BackendTransferError(ErrorCodes.ERR_FDS_NEED_BYTES, `${fds.length} fds need at least one byte to ride on, but the message has none`, {
        details: { fds: fds.length, bytes: 0 },
      });
    }
    if (fds.length > 0) validateFds(fds);
    const msg = this.#newMessage(records.length, 0, withPromise);
    const wasIdle = this.#opHead === this.#ops.length;
    records.forEach((r, i) => {
      this.#ops.push({ buf: EMPTY_BUF, iov: r.iov, len: r.len, off: 0, fds: i === 0 && fds.length > 0 ? fds.slice() : null, msg });
      this.#queuedBytes += r.len;
    });
    if (wasIdle) this.#flush();
    return msg;
  }

  #submitSegments(segments: readonly Uint8Array[], withPromise: boolean): PendingMessage | null {
    const list: { buf: Uint8Array; off: number; fds: number[] | null }[] = [];
    for (const s of segments) {
      if (!(s instanceof Uint8Array)) throw BackendTransferError.invalidArgument('data must be Uint8Arrays');
      if (s.length > 0) list.push({ buf: s, off: 0, fds: null });
    }
    if (list.length === 0) return null;
    return this.#enqueue(list, 0, withPromise);
  }

  #enqueue(pieces: { buf: Uint8Array; off: number; fds: number[] | null }[], alreadySent: number, withPromise: boolean): PendingMessage {
    const msg = this.#newMessage(pieces.length, alreadySent, withPromise);
    const wasIdle = this.#opHead === this.#ops.length;
    for (const p of pieces) {
      this.#ops.push({ buf: p.buf, iov: null, len: p.buf.length, off: p.off, fds: p.fds, msg });
      this.#queuedBytes += p.buf.length - p.off;
    }
    if (wasIdle) this.#flush();
    return msg;
  }

  #newMessage(ops: number, alreadySent: number, withPromise: boolean): PendingMessage {
    const msg: PendingMessage = { opsLeft: ops, sentBytes: alreadySent, settled: false, resolve: NOOP, reject: this.#failQueued, promise: null };
    if (withPromise) {
      msg.promise = new Promise<void>((resolve, reject) => {
        msg.resolve = resolve;
        msg.reject = reject;
      });
    }
    return msg;
  }

  /** A message queued by write() failed: nobody holds a promise for it, so the socket fails. */
  readonly #failQueued = (err: Error): void => {
    this.#fail(err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, 'send'));
  };

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
    if (PEER_GONE_ERRORS.has(code)) this.#failWrites(mapped);
    else if (!(firstBytesOfMessage && MESSAGE_LEVEL_SEND_ERRORS.has(code))) this.#fail(mapped);
    return mapped;
  }

  /** A receive failed: a reset connection ends the reading side (after what is buffered); anything else fails the socket. */
  #recvFailed(e: unknown, syscall: string): void {
    const mapped = BackendTransferError.fromSystem(e, `${syscall} on fd ${this.fd}`);
    if (PEER_GONE_ERRORS.has((e as { code?: string }).code ?? '')) this.#peerGone(mapped);
    else this.#fail(mapped);
  }

  /**
   * The peer reset the connection. The kernel hands out what it had queued before
   * the reset, then the error once: so reading ends here, the chunks already
   * received are still read (fds included), and then `err` is what read() rejects
   * with and consume() ends with. Sending fails with it at once.
   */
  #peerGone(err: BackendTransferError): void {
    if (this.#closed) return;
    if (!this.#eof) {
      this.#readError = err;
      this.#eof = true;
      this.#batchRecv = false;
    }
    this.#failWrites(err);
    this.#updatePoll();
    this.#wake();
    if (this.#consumer && !this.#paused && this.#chunkHead === this.#chunks.length) this.#finishConsume(this.#readError);
  }

  /** The sending side is done for: every queued message and waiter fails with `err`; reading goes on. */
  #failWrites(err: BackendTransferError): void {
    if (this.#writeError || this.#closed) return;
    this.#writeError = err;
    this.#rejectSends(err);
    this.#updatePoll();
  }

  /** Every queued message, end() and drain() fails with `reason`; the queue is emptied. */
  #rejectSends(reason: Error): void {
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
    for (const w of this.#drainWaiters.splice(0)) w.reject(reason);
  }

  #flush(): void {
    const ops = this.#ops;
    while (this.#opHead < ops.length && !this.#closed) {
      const op = ops[this.#opHead]!;
      let n: number;
      let gathered = 1;
      try {
        if (op.iov !== null) {
          n = this.#sendmsg(op.iov, op.fds ?? undefined); // one seqpacket record: all or nothing
        } else if (op.fds !== null || this.type === 'seqpacket') {
          n = this.#sendmsg(op.off ? op.buf.subarray(op.off) : op.buf, op.fds ?? undefined);
        } else {
          let bytes = op.len - op.off;
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
        if (this.#closed || this.#writeError) return; // everything queued has failed with it
        // Only this message failed: drop its ops and go on with the next one.
        const msg = op.msg;
        while (this.#opHead < ops.length && ops[this.#opHead]!.msg === msg) {
          const o = ops[this.#opHead++]!;
          this.#queuedBytes -= o.len - o.off;
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
        const left = cur.len - cur.off;
        const take = Math.min(left, n);
        cur.off += take;
        cur.msg.sentBytes += take;
        n -= take;
        if (cur.off === cur.len) {
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
      for (const w of this.#drainWaiters.splice(0)) w.resolve();
      if (this.#endRequested && !this.#writeShut) this.#shutdownWrite();
    } else if (this.#opHead > 4096 && this.#opHead * 2 > ops.length) {
      this.#ops = ops.slice(this.#opHead);
      this.#opHead = 0;
    }
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
    if (this.#consumer) return Promise.reject(BackendTransferError.invalidArgument('read() while consume() is active'));
    const c = this.tryRead();
    if (c !== undefined) return Promise.resolve(c);
    if (this.#error) return Promise.reject(this.#error);
    if (this.#readError) return Promise.reject(this.#readError);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    return new Promise((resolve, reject) => {
      this.#readWaiters.push({ resolve, reject });
    });
  }

  /** A buffered chunk, null at EOF, or undefined when nothing is buffered now (or the socket failed). */
  tryRead(): ReceivedChunk | null | undefined {
    if (this.#recycle) this.#releaseLent();
    if (this.#chunkHead < this.#chunks.length) {
      const c = this.#chunks[this.#chunkHead]!;
      const slab = this.#chunkSlabs[this.#chunkHead];
      if (slab) this.#lent.push(slab);
      this.#chunks[this.#chunkHead] = undefined as unknown as ReceivedChunk;
      this.#chunkSlabs[this.#chunkHead++] = null;
      if (this.#chunkHead === this.#chunks.length) {
        this.#chunks = [];
        this.#chunkSlabs = [];
        this.#chunkHead = 0;
      } else if (this.#chunkHead > 1024 && this.#chunkHead * 2 > this.#chunks.length) {
        this.#chunks = this.#chunks.slice(this.#chunkHead);
        this.#chunkSlabs = this.#chunkSlabs.slice(this.#chunkHead);
        this.#chunkHead = 0;
      }
      const wasFull = this.#bufferedBytes >= this.#highWaterMark || this.#bufferedFds >= this.#fdHighWaterMark;
      this.#bufferedBytes -= c.data.length;
      this.#bufferedFds -= c.fds.length;
      if (wasFull) this.#updatePoll();
      return c;
    }
    if (this.#error || this.#closed || this.#readError) return undefined;
    if (this.#eof) return null;
    return undefined;
  }

  /** The reader called again: the chunks it was lent are done with, their memory may be reused. */
  #releaseLent(): void {
    const lent = this.#lent;
    if (lent.length === 0) return;
    for (let i = 0; i < lent.length; i++) {
      const s = lent[i]!;
      if (--s.live === 0 && s !== this.#slab && this.#pool.length < 4) this.#pool.push(s.buf);
    }
    lent.length = 0;
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
    // In recycle mode the bytes may live in a slab about to be reused: keep a copy.
    if (this.#recycle) chunk = { ...chunk, data: Buffer.from(chunk.data) };
    if (this.#chunkHead > 0) {
      this.#chunks[--this.#chunkHead] = chunk;
      this.#chunkSlabs[this.#chunkHead] = null;
    } else {
      this.#chunks.unshift(chunk);
      this.#chunkSlabs.unshift(null);
    }
    this.#bufferedBytes += chunk.data.length;
    this.#bufferedFds += chunk.fds.length;
    this.#updatePoll();
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
    if (this.#consumer) return Promise.reject(BackendTransferError.invalidArgument('consume() is already active'));
    if (this.#readWaiters.length > 0) return Promise.reject(BackendTransferError.invalidArgument('a read() is pending'));
    if (this.#error) return Promise.reject(this.#error);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed());
    return new Promise<void>((resolve, reject) => {
      this.#consumer = onChunk;
      this.#consumeDone = { resolve, reject };
      this.#target = this.type === 'stream' ? (options.target ?? null) : null;
      this.#afterDelivery();
    });
  }

  /** Delivers what is buffered, finishes at EOF, and polls for more otherwise. */
  #afterDelivery(): void {
    this.#deliverBuffered();
    if (this.#consumer !== null && !this.#paused && this.#eof && this.#chunkHead === this.#chunks.length) this.#finishConsume(this.#readError);
    else this.#updatePoll();
  }

  /** Push mode: stop delivering (and reading) until resume(). */
  pause(): void {
    this.#paused = true;
    this.#updatePoll();
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#afterDelivery();
  }

  #deliverBuffered(): void {
    while (this.#consumer && !this.#paused && !this.#closed) {
      const c = this.tryRead();
      if (!c) return;
      if (!this.#deliver(c)) return;
    }
  }

  /** Hands one chunk to the consumer; false when the handler threw (the socket is failed then). */
  #deliver(c: ReceivedChunk): boolean {
    try {
      this.#consumer!(c);
      return true;
    } catch (err) {
      this.#fail(err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, 'chunk handler'));
      return false;
    }
  }

  #finishConsume(err: BackendTransferError | null): void {
    const done = this.#consumeDone;
    this.#consumer = null;
    this.#target = null;
    this.#consumeDone = null;
    if (!done) return;
    if (err) done.reject(err);
    else done.resolve();
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
      // POLLERR: libuv says UV_EBADF and stops polling. The socket knows what really
      // happened (ECONNRESET from a peer that closed with our bytes unread, ...):
      // reading and writing surface it; SO_ERROR when neither is due.
      if (++this.#pollErrors > 3) {
        this.#fail(err);
        return;
      }
      if (this.#wantRead()) this.#readLoop();
      if (!this.#closed && this.#opHead < this.#ops.length) this.#flush();
      if (this.#closed) return;
      let soError = 0;
      try {
        soError = native.getsockopt(this.fd, native.SOL_SOCKET, native.SO_ERROR);
      } catch {
        soError = 0;
      }
      if (soError !== 0) {
        const peerGone = soError === 104 || soError === 32 || soError === 107; // ECONNRESET, EPIPE, ENOTCONN
        const e = new BackendTransferError(peerGone ? ErrorCodes.ERR_PEER_CLOSED : ErrorCodes.ERR_SYSTEM, `socket fd ${this.fd} failed (errno ${soError})${peerGone ? ': the peer closed the connection' : ''}`, {
          details: { errno: soError },
        });
        if (peerGone) this.#peerGone(e);
        else this.#fail(e);
        return;
      }
      this.#updatePoll();
      return;
    }
    this.#pollErrors = 0;
    if (events & WRITABLE) {
      if (this.#opHead === this.#ops.length) this.#writableIdle = true; // fired with nothing to send: stop asking
      this.#flush();
    }
    if (events & READABLE && !this.#closed) this.#readLoop();
  }

  #readLoop(): void {
    const meta = this.#meta;
    for (let i = 0; i < READS_PER_TICK; i++) {
      if (this.#closed || this.#eof || !this.#wantRead()) break;
      let slab = this.#slab;
      if (this.#recycle && slab.live === 0) slab.pos = 0; // nothing refers to it: start over
      const need = this.#batchRecv ? BATCH_SLICE * BATCH_VLEN : this.#minSpace;
      if (this.#slabSize - slab.pos < need) {
        slab = this.#slab = { buf: (this.#recycle && this.#pool.pop()) || Buffer.allocUnsafe(this.#slabSize), pos: 0, live: 0 };
      }
      // Push mode with a target: the consumer knows where the next bytes belong
      // (say, the rest of a frame body) and they go straight there, one copy less.
      if (this.#target !== null && !this.#paused) {
        const region = this.#target();
        if (region !== null && region.length > 0) {
          let n: number;
          try {
            this.stats.recvmsgCalls++;
            n = native.recvmsg(this.fd, region, 0, region.length, meta);
          } catch (e) {
            this.#recvFailed(e, 'recvmsg');
            return;
          }
          if (n < 0) break;
          const buf = Buffer.isBuffer(region) ? region : Buffer.from(region.buffer, region.byteOffset, region.length);
          if (!this.#ingest(null, buf, 0, n, meta, 2, meta[0]!, meta[1]!, region.length)) return;
          continue;
        }
      }
      if (this.#batchRecv) {
        if (!this.#recvBatch(slab)) break;
        continue;
      }
      let n: number;
      try {
        this.stats.recvmsgCalls++;
        n = native.recvmsg(this.fd, slab.buf, slab.pos, this.#slabSize - slab.pos, meta);
      } catch (e) {
        this.#recvFailed(e, 'recvmsg');
        return;
      }
      if (n < 0) break; // EAGAIN
      const nfds = meta[0]!;
      // Small fd-carrying messages come one per recvmsg (the kernel stops after each
      // one); take the next ones with recvmmsg, many per syscall.
      if (nfds > 0 && n <= BATCH_SLICE && this.type === 'stream') this.#batchRecv = true;
      if (!this.#ingest(slab, slab.buf, slab.pos, n, meta, 2, nfds, meta[1]!, this.#slabSize - slab.pos)) return;
      slab.pos += n;
    }
    this.#updatePoll();
  }

  /** One recvmmsg; false on EAGAIN or when the socket stopped. */
  #recvBatch(slab: Slab): boolean {
    const bm = (this.#batchMeta ??= new Int32Array(1 + BATCH_VLEN * (3 + SCM_MAX_FD)));
    let count: number;
    try {
      this.stats.recvmsgCalls++;
      count = native.recvmmsg(this.fd, slab.buf, slab.pos, BATCH_SLICE * BATCH_VLEN, bm, BATCH_VLEN);
    } catch (e) {
      this.#recvFailed(e, 'recvmmsg');
      return false;
    }
    if (count < 0) return false; // EAGAIN
    let at = 1;
    const base = slab.pos;
    for (let m = 0; m < count; m++) {
      const n = bm[at]!;
      const flags = bm[at + 1]!;
      const nfds = bm[at + 2]!;
      // Bulk data or data without fds: back to one recvmsg per call, with the whole buffer.
      if (n === BATCH_SLICE || nfds === 0) this.#batchRecv = false;
      if (!this.#ingest(slab, slab.buf, base + m * BATCH_SLICE, n, bm, at + 3, nfds, flags, BATCH_SLICE)) return false;
      at += 3 + nfds;
    }
    slab.pos = base + count * BATCH_SLICE;
    return true;
  }

  /**
   * Turns n bytes at slab.buf[at] and nfds fds at meta[fdsAt] into a chunk and hands
   * it on (consumer, waiting reader, or the buffer). false when reading must stop
   * (EOF, truncation, a failing consumer).
   */
  #ingest(slab: Slab | null, buf: Buffer, at: number, n: number, meta: Int32Array, fdsAt: number, nfds: number, flags: number, space: number): boolean {
    let fds = EMPTY_FDS;
    if (nfds > 0) {
      fds = new Array<number>(nfds);
      for (let k = 0; k < nfds; k++) fds[k] = meta[fdsAt + k]!;
    }
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
      return false;
    }
    if (flags & native.MSG_TRUNC) {
      closeFds(fds);
      this.#fail(
        new BackendTransferError(ErrorCodes.ERR_RECORD_TRUNCATED, `recvmsg on fd ${this.fd}: a record larger than ${space} bytes was truncated (MSG_TRUNC)`),
      );
      return false;
    }
    if (n === 0 && nfds === 0) {
      this.#eof = true;
      this.#batchRecv = false;
      this.#updatePoll();
      this.#wake();
      if (this.#consumer && !this.#paused) this.#finishConsume(null);
      this.emit('end');
      return false;
    }
    const chunk: ReceivedChunk = { data: buf.subarray(at, at + n), fds, fdSeq: this.#rxFdSeq, offset: this.#rxOffset };
    this.#rxOffset += n;
    this.#rxFdSeq += nfds;
    this.stats.bytesReceived += n;
    this.stats.fdsReceived += nfds;
    if (this.#consumer && !this.#paused) {
      // Push mode: the handler has it now; with recycling the memory is free again on return.
      return this.#deliver(chunk);
    }
    if (this.#recycle && slab) slab.live++;
    const w = this.#readWaiters.shift();
    if (w) {
      if (this.#recycle && slab) {
        this.#releaseLent();
        this.#lent.push(slab);
      }
      w.resolve(chunk);
    } else {
      this.#chunks.push(chunk);
      this.#chunkSlabs.push(this.#recycle ? slab : null);
      this.#bufferedBytes += n;
      this.#bufferedFds += nfds;
    }
    return true;
  }

  #wake(): void {
    while (this.#readWaiters.length > 0) {
      const c = this.tryRead();
      if (c === undefined) {
        if (this.#readError) for (const w of this.#readWaiters.splice(0)) w.reject(this.#readError);
        break;
      }
      this.#readWaiters.shift()!.resolve(c);
    }
  }

  #wantRead(): boolean {
    if (this.#paused) return false;
    return !this.#eof && !this.#closed && this.#bufferedBytes < this.#highWaterMark && this.#bufferedFds < this.#fdHighWaterMark;
  }

  #updatePoll(): void {
    if (this.#closed) return;
    let ev = 0;
    if (this.#wantRead()) ev |= READABLE;
    // Interest in POLLOUT is dropped lazily, when it fires with nothing queued: a
    // bulk sender that keeps hitting EAGAIN then pays no epoll_ctl per cycle.
    if (this.#opHead < this.#ops.length || (this.#poller.events & WRITABLE && !this.#writableIdle)) ev |= WRITABLE;
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
    let unclaimed = 0;
    let firstSeq = -1;
    for (let i = this.#chunkHead; i < this.#chunks.length; i++) {
      const c = this.#chunks[i]!;
      if (c.fds.length && firstSeq < 0) firstSeq = c.fdSeq;
      unclaimed += c.fds.length;
      closeFds(c.fds);
    }
    this.#chunks = [];
    this.#chunkSlabs = [];
    this.#chunkHead = 0;
    this.#bufferedBytes = 0;
    this.#lent = [];
    this.#pool = [];
    this.#bufferedFds = 0;
    const reason = err ?? BackendTransferError.socketClosed();
    this.#rejectSends(reason);
    for (const w of this.#readWaiters.splice(0)) w.reject(reason);
    this.#finishConsume(err); // a local close() ends consume() normally
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
    const sock = new FdSocket(fd, type, withDefaults(options));
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

/** Options for sockets this library creates itself. */
export function withDefaults(options: FdSocketOptions): FdSocketOptions {
  return options.sendBufferSize === undefined ? { ...options, sendBufferSize: DEFAULT_SEND_BUFFER } : options;
}

const DEFAULT_SEND_BUFFER = 1024 * 1024;

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
