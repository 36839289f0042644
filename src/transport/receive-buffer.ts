// (Over 450 lines: pull, push and the kernel reads share one state -- the chunk
// queue, the slabs, the high-water marks -- and split apart they would each need
// all of it.)
//
// The receiving half of an FdSocket: reads eagerly (up to a high-water mark) so
// that fds are owned by this process as soon as they arrive, and hands chunks out
// by pull (tryRead / waitRead) or push (consume).
//
// Each recvmsg becomes one chunk: its bytes, the fds that came with them, the
// sequence number of its first fd and its byte offset. fds belong to the buffer
// until a chunk is handed out; whatever was never read is closed by releaseAll()
// when the socket closes or fails.
//
// It makes no syscall but the `recvmsg` / `recvmmsg` it is given (tests pass fake
// ones), and knows nothing of polling or closing: the socket that owns it (hooks) does.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFds } from '../fd/index.js';
import { PEER_GONE_ERRORS, SCM_MAX_FD, type FdSocketStats, type ReceivedChunk, type SocketType } from './types.js';

const EMPTY_FDS: number[] = [];
const READS_PER_TICK = 256;
/** recvmmsg batches: this many messages per syscall, each given this many bytes. */
const BATCH_VLEN = 32;
const BATCH_SLICE = 2048;
export const SEQPACKET_MAX_RECORD = 256 * 1024;

/** The receive syscalls, as the addon has them: bytes (or a count), or a negative number for EAGAIN; errno errors throw (.code). */
export interface RecvSyscalls {
  /** meta: Int32Array(2 + SCM_MAX_FD): [nfds, msg_flags, ...fds]. */
  recvmsg(fd: number, buffer: Uint8Array, offset: number, length: number, meta: Int32Array): number;
  /** meta: [count, then per message: bytes, msg_flags, nfds, ...fds]. */
  recvmmsg(fd: number, buffer: Uint8Array, offset: number, length: number, meta: Int32Array, vlen: number): number;
  readonly MSG_CTRUNC: number;
  readonly MSG_TRUNC: number;
}

/** What the owning socket does for the buffer. */
export interface ReceiveBufferHooks {
  /** The socket is closed (or being torn down). */
  closed(): boolean;
  /** Fail the whole socket. */
  fail(err: BackendTransferError): void;
  /** The peer reset the connection (ECONNRESET and kin on a receive). */
  peerGone(err: BackendTransferError): void;
  /** Recompute poll interest (POLLIN while wantRead()). */
  updatePoll(): void;
  /** EOF was read (the socket emits 'end'). */
  ended(): void;
}

export interface ReceiveBufferOptions {
  fd: number;
  type: SocketType;
  /** Size of the receive slabs (at least 1024). */
  readBufferSize: number;
  recycle: boolean;
  highWaterMark: number;
  fdHighWaterMark: number;
  syscalls: RecvSyscalls;
  stats: FdSocketStats;
  hooks: ReceiveBufferHooks;
}

export interface Slab {
  buf: Buffer;
  pos: number;
  /** Chunks cut from this slab that are buffered or lent to the reader. */
  live: number;
}

type Waiter<T> = { resolve: (v: T) => void; reject: (e: Error) => void };

export class ReceiveBuffer {
  #chunks: ReceivedChunk[] = [];
  #chunkSlabs: (Slab | null)[] = [];
  #chunkHead = 0;
  #bufferedBytes = 0;
  #bufferedFds = 0;
  #eof = false;
  /** Set when the connection was reset (ECONNRESET): what was received is still read, then this. */
  #readError: BackendTransferError | null = null;
  #readWaiters: Waiter<ReceivedChunk | null>[] = [];
  #consumer: ((chunk: ReceivedChunk) => void) | null = null;
  #target: (() => Uint8Array | null) | null = null;
  #consumeDone: Waiter<void> | null = null;
  #paused = false;
  #slab: Slab;
  readonly #slabSize: number;
  readonly #recycle: boolean;
  /** Slabs of chunks handed to the reader since its last read call (recycle mode). */
  #lent: Slab[] = [];
  #pool: Buffer[] = [];
  readonly #minSpace: number;
  readonly #meta = new Int32Array(2 + SCM_MAX_FD);
  #batchMeta: Int32Array | null = null;
  #batchRecv = false;
  #rxOffset = 0;
  #rxFdSeq = 0;
  /**
   * The last read filled the consumer's target region (a large frame body just
   * ended): the next bytes start a new frame, whose head is parsed from the slab
   * and whose body, if large, goes to the next target. So that read asks for
   * minSpace bytes only, not the whole slab: reading 256 KiB there copied the first
   * quarter of every 1 MiB body out of the slab again.
   */
  #afterTarget = false;
  readonly #highWaterMark: number;
  readonly #fdHighWaterMark: number;
  readonly #fd: number;
  readonly #type: SocketType;
  readonly #sys: RecvSyscalls;
  readonly #stats: FdSocketStats;
  readonly #hooks: ReceiveBufferHooks;

  constructor(o: ReceiveBufferOptions) {
    this.#fd = o.fd;
    this.#type = o.type;
    this.#highWaterMark = o.highWaterMark;
    this.#fdHighWaterMark = o.fdHighWaterMark;
    // A seqpacket record must fit whole in the space offered to recvmsg, or the kernel truncates it.
    this.#minSpace = o.type === 'seqpacket' ? SEQPACKET_MAX_RECORD : Math.min(16 * 1024, o.readBufferSize);
    this.#slabSize = Math.max(o.readBufferSize, this.#minSpace * 2);
    this.#recycle = o.recycle;
    this.#slab = { buf: Buffer.allocUnsafe(this.#slabSize), pos: 0, live: 0 };
    this.#sys = o.syscalls;
    this.#stats = o.stats;
    this.#hooks = o.hooks;
  }

  // ---------------------------------------------------------------- state

  get eof(): boolean {
    return this.#eof;
  }

  get readError(): BackendTransferError | null {
    return this.#readError;
  }

  /** EOF was read, without a reset, and every buffered chunk was handed out. */
  get ended(): boolean {
    return this.#eof && this.#readError === null && this.#chunkHead === this.#chunks.length;
  }

  get bufferedBytes(): number {
    return this.#bufferedBytes;
  }

  get bufferedFds(): number {
    return this.#bufferedFds;
  }

  get nextFdSeq(): number {
    return this.#rxFdSeq;
  }

  /** consume() is active. */
  get consuming(): boolean {
    return this.#consumer !== null;
  }

  /** A read() waits. */
  get waiting(): boolean {
    return this.#readWaiters.length > 0;
  }

  /** Reading from the kernel is wanted now (not paused, not at EOF, below both high-water marks). */
  wantRead(): boolean {
    if (this.#paused) return false;
    return !this.#eof && !this.#hooks.closed() && this.#bufferedBytes < this.#highWaterMark && this.#bufferedFds < this.#fdHighWaterMark;
  }

  // ---------------------------------------------------------------- pull

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
      if (wasFull) this.#hooks.updatePoll();
      return c;
    }
    if (this.#hooks.closed() || this.#readError) return undefined;
    if (this.#eof) return null;
    return undefined;
  }

  /** The next chunk (or null at EOF) once it arrives. */
  waitRead(): Promise<ReceivedChunk | null> {
    return new Promise((resolve, reject) => {
      this.#readWaiters.push({ resolve, reject });
    });
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

  /** Gives a chunk (or the unread tail of one) back, to be read first. Its fds are owned by the buffer again. */
  unshift(chunk: ReceivedChunk): void {
    if (this.#hooks.closed()) {
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
    this.#hooks.updatePoll();
  }

  /** Resolves waiting readers with what is buffered (or EOF), or rejects them with the reset that ended reading. */
  wake(): void {
    while (this.#readWaiters.length > 0) {
      const c = this.tryRead();
      if (c === undefined) {
        if (this.#readError) for (const w of this.#readWaiters.splice(0)) w.reject(this.#readError);
        break;
      }
      this.#readWaiters.shift()!.resolve(c);
    }
  }

  // ---------------------------------------------------------------- push

  /** Starts push mode (the socket checked that no read waits and none is active). */
  consume(onChunk: (chunk: ReceivedChunk) => void, target: (() => Uint8Array | null) | null): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#consumer = onChunk;
      this.#consumeDone = { resolve, reject };
      this.#target = this.#type === 'stream' ? target : null;
      this.#afterDelivery();
    });
  }

  /** Delivers what is buffered, finishes at EOF, and polls for more otherwise. */
  #afterDelivery(): void {
    this.#deliverBuffered();
    if (this.#consumer !== null && !this.#paused && this.#eof && this.#chunkHead === this.#chunks.length) this.#finishConsume(this.#readError);
    else this.#hooks.updatePoll();
  }

  pause(): void {
    this.#paused = true;
    this.#hooks.updatePoll();
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#afterDelivery();
  }

  #deliverBuffered(): void {
    while (this.#consumer && !this.#paused && !this.#hooks.closed()) {
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
      this.#hooks.fail(err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, 'chunk handler'));
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

  // ---------------------------------------------------------------- ending

  /**
   * The peer reset the connection. The kernel hands out what it had queued before
   * the reset, then the error once: so reading ends here, the chunks already
   * received are still read (fds included), and then `err` is what read() rejects
   * with and consume() ends with. (The socket fails its sending side in between,
   * then calls settleAfterPeerGone.)
   */
  markPeerGone(err: BackendTransferError): void {
    if (!this.#eof) {
      this.#readError = err;
      this.#eof = true;
      this.#batchRecv = false;
    }
  }

  settleAfterPeerGone(): void {
    this.wake();
    if (this.#consumer && !this.#paused && this.#chunkHead === this.#chunks.length) this.#finishConsume(this.#readError);
  }

  /** The socket closed: closes every fd nobody read and drops the buffers. Returns how many fds that was. */
  releaseAll(): { unclaimed: number; firstSeq: number } {
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
    return { unclaimed, firstSeq };
  }

  /** After releaseAll: pending reads fail with `reason`; consume() ends with `err` (normally for a local close). */
  settleClosed(reason: Error, err: BackendTransferError | null): void {
    for (const w of this.#readWaiters.splice(0)) w.reject(reason);
    this.#finishConsume(err);
  }

  // ---------------------------------------------------------------- reading from the kernel

  #recvFailed(e: unknown, syscall: string): void {
    const mapped = BackendTransferError.fromSystem(e, `${syscall} on fd ${this.#fd}`);
    if (PEER_GONE_ERRORS.has((e as { code?: string }).code ?? '')) this.#hooks.peerGone(mapped);
    else this.#hooks.fail(mapped);
  }

  /** Reads what the kernel has (at most READS_PER_TICK calls), then updates poll interest. */
  readLoop(): void {
    const meta = this.#meta;
    for (let i = 0; i < READS_PER_TICK; i++) {
      if (this.#hooks.closed() || this.#eof || !this.wantRead()) break;
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
            this.#stats.recvmsgCalls++;
            n = this.#sys.recvmsg(this.#fd, region, 0, region.length, meta);
          } catch (e) {
            this.#recvFailed(e, 'recvmsg');
            return;
          }
          if (n < 0) break;
          this.#afterTarget = n === region.length;
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
      const space = this.#slabSize - slab.pos;
      const ask = this.#afterTarget ? Math.min(space, this.#minSpace) : space;
      this.#afterTarget = false;
      try {
        this.#stats.recvmsgCalls++;
        n = this.#sys.recvmsg(this.#fd, slab.buf, slab.pos, ask, meta);
      } catch (e) {
        this.#recvFailed(e, 'recvmsg');
        return;
      }
      if (n < 0) break; // EAGAIN
      const nfds = meta[0]!;
      // Small fd-carrying messages come one per recvmsg (the kernel stops after each
      // one); take the next ones with recvmmsg, many per syscall.
      if (nfds > 0 && n <= BATCH_SLICE && this.#type === 'stream') this.#batchRecv = true;
      if (!this.#ingest(slab, slab.buf, slab.pos, n, meta, 2, nfds, meta[1]!, this.#slabSize - slab.pos)) return;
      slab.pos += n;
    }
    this.#hooks.updatePoll();
  }

  /** One recvmmsg; false on EAGAIN or when the socket stopped. */
  #recvBatch(slab: Slab): boolean {
    const bm = (this.#batchMeta ??= new Int32Array(1 + BATCH_VLEN * (3 + SCM_MAX_FD)));
    let count: number;
    try {
      this.#stats.recvmsgCalls++;
      count = this.#sys.recvmmsg(this.#fd, slab.buf, slab.pos, BATCH_SLICE * BATCH_VLEN, bm, BATCH_VLEN);
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
    if (flags & this.#sys.MSG_CTRUNC) {
      closeFds(fds);
      this.#hooks.fail(
        new BackendTransferError(
          ErrorCodes.ERR_FDS_TRUNCATED,
          `recvmsg on fd ${this.#fd}: the kernel dropped fds (MSG_CTRUNC) after ${this.#rxFdSeq + nfds} fds; ` +
            `likely this process's RLIMIT_NOFILE is exhausted (${nfds} fds of the batch arrived and were closed)`,
          { details: { fdSeq: this.#rxFdSeq, arrived: nfds, offset: this.#rxOffset } },
        ),
      );
      return false;
    }
    if (flags & this.#sys.MSG_TRUNC) {
      closeFds(fds);
      this.#hooks.fail(new BackendTransferError(ErrorCodes.ERR_RECORD_TRUNCATED, `recvmsg on fd ${this.#fd}: a record larger than ${space} bytes was truncated (MSG_TRUNC)`));
      return false;
    }
    if (n === 0 && nfds === 0) {
      this.#eof = true;
      this.#batchRecv = false;
      this.#hooks.updatePoll();
      this.wake();
      if (this.#consumer && !this.#paused) this.#finishConsume(null);
      this.#hooks.ended();
      return false;
    }
    const chunk: ReceivedChunk = { data: buf.subarray(at, at + n), fds, fdSeq: this.#rxFdSeq, offset: this.#rxOffset };
    this.#rxOffset += n;
    this.#rxFdSeq += nfds;
    this.#stats.bytesReceived += n;
    this.#stats.fdsReceived += nfds;
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
}
