// The sending half of an FdSocket: the queue of messages, cut into pieces that
// each carry at most SCM_MAX_FD fds on their own bytes, flushed with sendmsg.
//
// Its fds ride on its own bytes: a batch of at most SCM_MAX_FD (253) fds goes with
// each piece, every piece carries at least one byte, and an fd-carrying sendmsg
// never starts with another message's bytes. Once sendmsg has accepted any byte of
// a piece its fds have gone with it, so a partial write or an EAGAIN never loses or
// repeats an fd.
//
// It makes no syscall but the `sendmsg` it is given (tests pass a fake one), and
// knows nothing of polling or closing: the socket that owns it (hooks) does.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { PEER_GONE_ERRORS, SCM_MAX_FD, type FdSocketStats, type SocketType } from './types.js';

/** Message-level send failures: the connection is fine, only this message cannot go. */
const MESSAGE_LEVEL_SEND_ERRORS = new Set(['EBADF', 'ETOOMANYREFS', 'EMSGSIZE', 'EINVAL']);
const MAX_GATHER_BYTES = 4 * 1024 * 1024;
const NOOP = (): void => {};
const EMPTY_BUF = new Uint8Array(0);

/** The one syscall the queue makes: bytes written, or a negative number for EAGAIN; throws errno errors (.code). */
export type SendmsgFn = (fd: number, data: Uint8Array | readonly Uint8Array[], fds?: readonly number[] | Int32Array) => number;

/**
 * From this many fds on, a batch goes to the addon as an Int32Array: it then reads
 * them in one go, where an array costs one Node-API element lookup per fd (about
 * 13 µs of the sender's 19 µs per message of 253 fds, measured).
 */
const FDS_AS_INT32 = 8;

/** What the owning socket does for the queue. */
export interface SendQueueHooks {
  /** The socket is closed (or being torn down). */
  closed(): boolean;
  /** The sending side has failed (the socket is closed, or the peer is gone). */
  stopped(): boolean;
  /** Fail the whole socket. */
  fail(err: BackendTransferError): void;
  /** The peer is gone (EPIPE and kin): fail the sending side only (which calls rejectAll). */
  failWrites(err: BackendTransferError): void;
  /** Recompute poll interest (POLLOUT while something is queued). */
  updatePoll(): void;
  /** The queue ran empty (drain() waiters resolved): shutdown(SHUT_WR) now if end() asked for it. */
  drained(): void;
}

export interface SendQueueOptions {
  fd: number;
  type: SocketType;
  /** seqpacket only: the largest record this side sends. */
  recordSize: number;
  /** Linux's IOV_MAX (entries in one gather list). */
  iovMax: number;
  sendmsg: SendmsgFn;
  stats: FdSocketStats;
  hooks: SendQueueHooks;
}

export interface PendingMessage {
  opsLeft: number;
  sentBytes: number;
  settled: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
  promise: Promise<void> | null;
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

type Piece = { buf: Uint8Array; off: number; fds: number[] | null };

export function validateFds(fds: readonly number[]): void {
  for (const fd of fds) {
    // The addon's own check, made here too so that nothing is queued: an fd is an
    // integer in [0, 2^31 - 1], never wrapped (2^32 + 21 is not fd 21).
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw BackendTransferError.invalidArgument(`fds must be integers in [0, 2^31 - 1], got ${String(fd)}`);
  }
}

export class SendQueue {
  #ops: SendOp[] = [];
  #opHead = 0;
  #queuedBytes = 0;
  readonly #drainWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  readonly #endWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  readonly #fd: number;
  readonly #type: SocketType;
  readonly #recordSize: number;
  readonly #iovMax: number;
  readonly #sendmsgFn: SendmsgFn;
  readonly #stats: FdSocketStats;
  readonly #hooks: SendQueueHooks;
  /** One sendmsg's fds, handed to the addon as an Int32Array (see FDS_AS_INT32). */
  readonly #fdBuf = new Int32Array(SCM_MAX_FD);

  constructor(o: SendQueueOptions) {
    this.#fd = o.fd;
    this.#type = o.type;
    this.#recordSize = o.recordSize;
    this.#iovMax = o.iovMax;
    this.#sendmsgFn = o.sendmsg;
    this.#stats = o.stats;
    this.#hooks = o.hooks;
  }

  /** Bytes queued and not yet accepted by the kernel. */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** Pieces queued and not yet fully sent. */
  get queuedPieces(): number {
    return this.#ops.length - this.#opHead;
  }

  /** Nothing is queued. */
  get idle(): boolean {
    return this.#opHead === this.#ops.length;
  }

  /** Resolves when the queue is empty; waiters fail with whatever fails the queue. */
  waitDrain(): Promise<void> {
    return new Promise((resolve, reject) => this.#drainWaiters.push({ resolve, reject }));
  }

  /** Resolves once shutdown(SHUT_WR) was done (or rejects with its error). */
  waitEnd(): Promise<void> {
    return new Promise<void>((resolve, reject) => this.#endWaiters.push({ resolve, reject }));
  }

  /** The shutdown happened (err null) or failed: settle end() waiters. */
  settleEnd(err: BackendTransferError | null): void {
    for (const w of this.#endWaiters.splice(0)) {
      if (err) w.reject(err);
      else w.resolve();
    }
  }

  /**
   * Validates and starts one message. Returns null when the kernel took all of it
   * at once, else its pending record (with a promise when `withPromise`). Throws
   * for bad arguments and for a message the kernel refused outright.
   * `onFailQueued` is what a message without a promise does when it fails later.
   */
  submit(data: Uint8Array | readonly Uint8Array[], fds: readonly number[], withPromise: boolean, onFailQueued: (err: Error) => void): PendingMessage | null {
    let buf: Uint8Array;
    if (data instanceof Uint8Array) buf = data;
    else if (Array.isArray(data)) {
      // Gather lists without fds on a stream socket are queued as they are; on a
      // seqpacket socket they are cut into records of gather lists; otherwise joined.
      if (fds.length === 0 && this.#type === 'stream') return this.#submitSegments(data as readonly Uint8Array[], withPromise, onFailQueued);
      if (this.#type === 'seqpacket' && fds.length <= SCM_MAX_FD) return this.#submitRecords(data as readonly Uint8Array[], fds, withPromise, onFailQueued);
      buf = Buffer.concat(data as readonly Uint8Array[]);
    } else throw BackendTransferError.invalidArgument('data must be a Uint8Array or an array of them');
    const nfds = fds.length;
    if (nfds > 0) validateFds(fds);
    const pieces = nfds === 0 ? 0 : Math.ceil(nfds / SCM_MAX_FD);
    if (buf.length < pieces || buf.length === 0) {
      if (buf.length === 0 && nfds === 0) return null;
      throw new BackendTransferError(ErrorCodes.ERR_FDS_NEED_BYTES, `${nfds} fds need ${pieces} piece(s) of at least one byte each, but the message has ${buf.length} byte(s)`, {
        details: { fds: nfds, bytes: buf.length },
      });
    }

    // Fast path: nothing queued, one sendmsg takes all of it.
    if (this.#opHead === this.#ops.length && pieces <= 1 && (this.#type === 'stream' || buf.length <= this.#recordSize)) {
      let n: number;
      try {
        n = this.#sendmsg(buf, nfds ? fds : undefined);
      } catch (err) {
        throw this.#sendFailed(err, true);
      }
      if (n > 0) {
        this.#stats.bytesSent += n;
        this.#stats.fdsSent += nfds;
        if (n === buf.length) return null;
        // The fds have gone with the first byte; queue only the rest of the bytes.
        return this.#enqueue([{ buf, off: n, fds: null }], n, withPromise, onFailQueued);
      }
      return this.#enqueue([{ buf, off: 0, fds: nfds ? fds.slice() : null }], 0, withPromise, onFailQueued);
    }

    const pieceList: Piece[] = [];
    let pos = 0;
    for (let i = 0; i < pieces; i++) {
      const batch = fds.slice(i * SCM_MAX_FD, (i + 1) * SCM_MAX_FD);
      const last = i === pieces - 1;
      let end = last ? buf.length : pos + 1;
      if (this.#type === 'seqpacket') end = Math.min(end, pos + this.#recordSize);
      pieceList.push({ buf: buf.subarray(pos, end), off: 0, fds: batch });
      pos = end;
    }
    while (pos < buf.length) {
      const end = this.#type === 'seqpacket' ? Math.min(buf.length, pos + this.#recordSize) : buf.length;
      pieceList.push({ buf: buf.subarray(pos, end), off: 0, fds: null });
      pos = end;
    }
    return this.#enqueue(pieceList, 0, withPromise, onFailQueued);
  }

  /** seqpacket: the segments as records of at most recordSize bytes, each a gather list; the fds ride on the first. */
  #submitRecords(segments: readonly Uint8Array[], fds: readonly number[], withPromise: boolean, onFailQueued: (err: Error) => void): PendingMessage | null {
    const records: { iov: Uint8Array[]; len: number }[] = [];
    let cur: { iov: Uint8Array[]; len: number } = { iov: [], len: 0 };
    for (const s of segments) {
      if (!(s instanceof Uint8Array)) throw BackendTransferError.invalidArgument('data must be Uint8Arrays');
      for (let pos = 0; pos < s.length;) {
        if (cur.len === this.#recordSize || cur.iov.length === this.#iovMax) {
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
    const msg = this.#newMessage(records.length, 0, withPromise, onFailQueued);
    const wasIdle = this.#opHead === this.#ops.length;
    records.forEach((r, i) => {
      this.#ops.push({ buf: EMPTY_BUF, iov: r.iov, len: r.len, off: 0, fds: i === 0 && fds.length > 0 ? fds.slice() : null, msg });
      this.#queuedBytes += r.len;
    });
    if (wasIdle) this.flush();
    return msg;
  }

  #submitSegments(segments: readonly Uint8Array[], withPromise: boolean, onFailQueued: (err: Error) => void): PendingMessage | null {
    const list: Piece[] = [];
    for (const s of segments) {
      if (!(s instanceof Uint8Array)) throw BackendTransferError.invalidArgument('data must be Uint8Arrays');
      if (s.length > 0) list.push({ buf: s, off: 0, fds: null });
    }
    if (list.length === 0) return null;
    return this.#enqueue(list, 0, withPromise, onFailQueued);
  }

  #enqueue(pieces: Piece[], alreadySent: number, withPromise: boolean, onFailQueued: (err: Error) => void): PendingMessage {
    const msg = this.#newMessage(pieces.length, alreadySent, withPromise, onFailQueued);
    const wasIdle = this.#opHead === this.#ops.length;
    for (const p of pieces) {
      this.#ops.push({ buf: p.buf, iov: null, len: p.buf.length, off: p.off, fds: p.fds, msg });
      this.#queuedBytes += p.buf.length - p.off;
    }
    if (wasIdle) this.flush();
    return msg;
  }

  #newMessage(ops: number, alreadySent: number, withPromise: boolean, onFailQueued: (err: Error) => void): PendingMessage {
    const msg: PendingMessage = { opsLeft: ops, sentBytes: alreadySent, settled: false, resolve: NOOP, reject: onFailQueued, promise: null };
    if (withPromise) {
      msg.promise = new Promise<void>((resolve, reject) => {
        msg.resolve = resolve;
        msg.reject = reject;
      });
    }
    return msg;
  }

  #sendmsg(data: Uint8Array | Uint8Array[], fds: readonly number[] | undefined): number {
    this.#stats.sendmsgCalls++;
    let batch: readonly number[] | Int32Array | undefined = fds;
    if (fds !== undefined && fds.length >= FDS_AS_INT32) {
      // Checked by validateFds already: integers in [0, 2^31 - 1], so exact in an Int32Array.
      const buf = this.#fdBuf;
      buf.set(fds);
      batch = buf.subarray(0, fds.length);
    }
    const n = this.#sendmsgFn(this.#fd, data, batch);
    return n < 0 ? 0 : n; // -EAGAIN: nothing was sent, fds included
  }

  /** Maps a sendmsg failure; `firstBytesOfMessage` says whether only the current message is affected. */
  #sendFailed(err: unknown, firstBytesOfMessage: boolean): BackendTransferError {
    const code = (err as { code?: string }).code ?? '';
    if (code === 'EBADF' && firstBytesOfMessage) {
      return new BackendTransferError(ErrorCodes.ERR_INVALID_ARGUMENT, `sendmsg on fd ${this.#fd}: an fd to send is not open (${(err as Error).message})`, { cause: err });
    }
    const mapped = BackendTransferError.fromSystem(err, `sendmsg on fd ${this.#fd}`);
    if (PEER_GONE_ERRORS.has(code)) this.#hooks.failWrites(mapped);
    else if (!(firstBytesOfMessage && MESSAGE_LEVEL_SEND_ERRORS.has(code))) this.#hooks.fail(mapped);
    return mapped;
  }

  /** Every queued message, end() and drain() fails with `reason`; the queue is emptied. */
  rejectAll(reason: Error): void {
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

  /** Sends what the kernel takes now; on EAGAIN asks for POLLOUT (hooks.updatePoll) and returns. */
  flush(): void {
    const ops = this.#ops;
    while (this.#opHead < ops.length && !this.#hooks.closed()) {
      const op = ops[this.#opHead]!;
      let n: number;
      let gathered = 1;
      try {
        if (op.iov !== null) {
          n = this.#sendmsg(op.iov, op.fds ?? undefined); // one seqpacket record: all or nothing
        } else if (op.fds !== null || this.#type === 'seqpacket') {
          n = this.#sendmsg(op.off ? op.buf.subarray(op.off) : op.buf, op.fds ?? undefined);
        } else {
          let bytes = op.len - op.off;
          const iov: Uint8Array[] = [op.off ? op.buf.subarray(op.off) : op.buf];
          for (let j = this.#opHead + 1; j < ops.length && iov.length < this.#iovMax && bytes < MAX_GATHER_BYTES; j++) {
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
        if (this.#hooks.stopped()) return; // everything queued has failed with it
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
        this.#hooks.updatePoll(); // EAGAIN: wait for POLLOUT
        return;
      }
      if (op.fds !== null) {
        this.#stats.fdsSent += op.fds.length;
        op.fds = null; // they went with the first byte
      }
      this.#stats.bytesSent += n;
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
      this.#hooks.drained();
    } else if (this.#opHead > 4096 && this.#opHead * 2 > ops.length) {
      this.#ops = ops.slice(this.#opHead);
      this.#opHead = 0;
    }
    this.#hooks.updatePoll();
  }
}
