import { randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { FdPoller, READABLE } from '../transport/poller.js';
import { closeFd, closeFds } from '../fd/index.js';
import { dupOrNull } from '../fd/dup.js';
import { disconnectEvent, pidfdOf } from '../fd/handover-io.js';
import type { FdSocket } from '../transport/fd-socket.js';
import { HEADER_SIZE, TRAILER_SIZE } from '../stream/wire.js';
import type { StreamItem } from '../stream/reader.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import type { HandoverEvent } from './types.js';

export function closeSectionItem(it: StreamItem): void {
  if (it.type === 'stage') closeFds(it.attachments.map((a) => a.fd));
  if (it.type !== 'section') return;
  closeFds(it.attachments.map((a) => a.fd));
  if (it.payloadFd !== undefined) closeFd(it.payloadFd);
}

export function randomProbe(): Buffer {
  return randomBytes(16);
}

export const now = (): number => performance.now();

/** A device's key in maps: its id and instance (an id never holds a NUL). */
export const deviceKey = (d: { id: string; instance: number }): string => `${d.id}\0${d.instance}`;

/** `list` by deviceKey, the first of each key kept: lookups by device without a search per device. */
export function byDevice<T extends { id: string; instance: number }>(list: readonly T[]): Map<string, T> {
  const m = new Map<string, T>();
  for (const x of list) if (!m.has(deviceKey(x))) m.set(deviceKey(x), x);
  return m;
}

let gcFn: (() => void) | null | undefined;

/**
 * A full, synchronous garbage collection, run by the session as its handshake
 * starts so that V8 is unlikely to need a major one inside the downtime. Uses
 * global.gc when the process runs with --expose-gc, else exposes gc() in one new
 * context (the flag is set, and cleared again at once). Returns false where
 * neither works.
 */
export function collectGarbage(): boolean {
  if (gcFn === undefined) {
    const g = (globalThis as { gc?: unknown }).gc;
    if (typeof g === 'function') gcFn = g as () => void;
    else {
      try {
        setFlagsFromString('--expose-gc');
        const f = runInNewContext('gc') as unknown;
        gcFn = typeof f === 'function' ? (f as () => void) : null;
      } catch {
        gcFn = null;
      } finally {
        setFlagsFromString('--no-expose-gc');
      }
    }
  }
  if (!gcFn) return false;
  gcFn();
  return true;
}

/** Phase bookkeeping of one side: time spent per phase, and a `phase` event on each change. */
export class PhaseClock<P extends string> {
  readonly t0 = now();
  readonly spent: Record<string, number> = {};
  #phase: P;
  #since = this.t0;
  readonly #onEvent: ((e: HandoverEvent) => void) | undefined;

  constructor(first: P, onEvent: ((e: HandoverEvent) => void) | undefined) {
    this.#phase = first;
    this.#onEvent = onEvent;
    onEvent?.({ type: 'phase', phase: first as never, atMs: 0 });
  }

  get phase(): P {
    return this.#phase;
  }

  enter(p: P): void {
    const t = now();
    this.spent[this.#phase] = (this.spent[this.#phase] ?? 0) + (t - this.#since);
    this.#phase = p;
    this.#since = t;
    this.#onEvent?.({ type: 'phase', phase: p as never, atMs: t - this.t0 });
  }

  /**
   * The time from the start to the last phase change: the sum of `spent`. The
   * last phase ('done') is not timed, so work after entering it (building the
   * result, a caller's `open`) does not count into the total either.
   */
  total(): number {
    return this.#since - this.t0;
  }
}

/**
 * The caller's abort reason as text, or null for none (an abort() without a
 * reason gives a DOMException AbortError, which says nothing more).
 */
export function abortReason(signal: AbortSignal | undefined): string | null {
  const r: unknown = signal?.reason;
  if (r === undefined || r === null) return null;
  if (r instanceof Error) return r.name === 'AbortError' && (r as { code?: unknown }).code === 20 ? null : r.message || r.name;
  if (typeof r === 'string' || typeof r === 'number' || typeof r === 'boolean' || typeof r === 'bigint' || typeof r === 'symbol') return String(r);
  // An object: its own toString's text if it has one, else its JSON (not "[object Object]").
  const own = (r as { toString?: unknown }).toString;
  if (typeof own === 'function' && own !== Object.prototype.toString) return String(own.call(r));
  try {
    return JSON.stringify(r) ?? Object.prototype.toString.call(r);
  } catch {
    return Object.prototype.toString.call(r);
  }
}

export function abortedError(phase: string, signal?: AbortSignal): BackendTransferError {
  const reason = abortReason(signal);
  return new BackendTransferError(ErrorCodes.ERR_HANDOVER_ABORTED, `handover aborted by the caller in phase ${phase}${reason === null ? '' : `: ${reason}`}`, {
    details: { phase, ...(reason === null ? {} : { reason }) },
  });
}

/**
 * `p`, or a rejection when `ms` pass first (ERR_TIMEOUT; 0 = no limit) or the
 * caller's signal aborts while `abortable()` (before the commit).
 */
export function limited<T>(p: Promise<T>, ms: number, what: string, c: { phase: () => string; signal?: AbortSignal; abortable: () => boolean }): Promise<T> {
  if (!ms && !c.signal) return p;
  if (c.signal?.aborted && c.abortable()) {
    // Already aborted: its event has fired, so a listener would never hear it.
    p.catch(() => undefined);
    return Promise.reject(abortedError(c.phase(), c.signal));
  }
  return new Promise<T>((resolve, reject) => {
    const timer = ms ? setTimeout(() => reject(BackendTransferError.timeout(`${what} (phase ${c.phase()})`, ms)), ms) : null;
    const onAbort = () => {
      if (c.abortable()) reject(abortedError(c.phase(), c.signal));
    };
    c.signal?.addEventListener('abort', onAbort, { once: true });
    const settle = () => {
      if (timer) clearTimeout(timer);
      c.signal?.removeEventListener('abort', onAbort);
    };
    p.then(
      (v) => {
        settle();
        resolve(v);
      },
      (e: unknown) => {
        settle();
        reject(e);
      },
    );
  });
}

/** Bytes of one PING or PONG frame (header, 16-byte body, trailer). They are not progress. */
export const PING_FRAME_BYTES = HEADER_SIZE + 16 + TRAILER_SIZE;

/**
 * What bounds a session after the freeze besides the per-phase timeouts: the
 * stall watch (no stream bytes moved either way, PINGs and PONGs aside, for
 * `ms` while this side waits on the peer) and a failure raised outside any await
 * (a flooding peer). guard(p) is `p`, or that failure.
 */
export class SessionGuard {
  readonly #sock: FdSocket;
  readonly #phase: () => string;
  readonly #failure: Promise<never>;
  #reject!: (e: Error) => void;
  #error: BackendTransferError | null = null;
  #timer: ReturnType<typeof setInterval> | null = null;
  #ms = 0;
  #last = 0;
  #at = 0;
  #waiting = 0;
  /** Bytes moved that are not progress (PING and PONG frames). */
  noise = 0;

  constructor(sock: FdSocket, phase: () => string) {
    this.#sock = sock;
    this.#phase = phase;
    this.#failure = new Promise<never>((_, reject) => {
      this.#reject = reject;
    });
    this.#failure.catch(() => undefined);
  }

  get error(): BackendTransferError | null {
    return this.#error;
  }

  /** Fails when no progress was made for `ms` while something is guarded (0: no stall bound). */
  watchStall(ms: number): void {
    this.#ms = ms > 0 ? ms : 0;
    if (!this.#ms || this.#timer) return;
    this.#last = this.#progress();
    this.#at = now();
    this.#timer = setInterval(() => this.#check(), Math.max(20, Math.min(1000, Math.floor(this.#ms / 4))));
    this.#timer.unref?.();
  }

  #progress(): number {
    const s = this.#sock.stats;
    return s.bytesSent + s.bytesReceived - this.noise;
  }

  #check(): void {
    const p = this.#progress();
    const t = now();
    if (p !== this.#last || this.#waiting === 0) {
      this.#last = p;
      this.#at = t;
      return;
    }
    if (t - this.#at >= this.#ms) {
      const phase = this.#phase();
      this.fail(
        new BackendTransferError(ErrorCodes.ERR_HANDOVER_STALLED, `no progress for ${this.#ms} ms in phase ${phase}: the peer stopped reading or sending (timeouts.stall)`, {
          details: { phase, ms: this.#ms },
        }),
      );
    }
  }

  /** Fails every guarded wait, now and later, with `err` (the first one counts). */
  fail(err: BackendTransferError): void {
    if (this.#error) return;
    this.#error = err;
    this.stop();
    this.#reject(err);
  }

  /**
   * `p`, or this guard's failure, whichever comes first. The stall clock runs only
   * while something is guarded with `stall` (waits for the peer's local work, such
   * as its verify and adopt, pass false: their own timeouts bound them).
   */
  guard<T>(p: Promise<T>, stall = true): Promise<T> {
    if (this.#error) {
      p.catch(() => undefined);
      return Promise.reject(this.#error);
    }
    if (!stall) return Promise.race([p, this.#failure]);
    if (this.#waiting++ === 0) {
      // Local work before this wait is not the peer's stall.
      this.#last = this.#progress();
      this.#at = now();
    }
    const done = () => {
      this.#waiting--;
    };
    p.then(done, done);
    return Promise.race([p, this.#failure]);
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}

/** How close (ms) the peer's death and the connection's hangup must be for "it died holding the connection". */
const HOLDER_GRACE_MS = 250;

/**
 * "Is the peer gone, and did it hold the connection?" The pid behind SO_PEERCRED
 * and SO_PEERPIDFD is the process that called connect() or listen(), which need
 * not be the one that holds the connection now (a fork, an fd passed on). A
 * process that dies closes its fds before its pidfd turns readable, so when it
 * was the last holder the connection hangs up at (nearly) the same moment. This
 * watches both: the verdict is true only when the process died and the
 * connection hung up within HOLDER_GRACE_MS of each other. A process that died
 * while the connection stayed open (someone else holds it), a connection that
 * hung up long before the death, a peer already gone when the session began, or
 * no pidfd at all: false. Where the holder cannot be known, the answer is no.
 */
export class PeerWatch {
  #pidfd: number | null = null;
  #dup: number | null = null;
  #pidPoller: FdPoller | null = null;
  #hupPoller: FdPoller | null = null;
  #diedAt: number | null = null;
  #hupAt: number | null = null;
  #waiters: (() => void)[] = [];
  #closed = false;

  constructor(sock: FdSocket, pid: number | null) {
    let pidfd: number | null = null;
    try {
      pidfd = sock.peerPidfd();
    } catch {
      pidfd = null; // the peer may already be gone (ESRCH): then it cannot be known
    }
    if (pidfd === null && pid !== null && pid > 0) pidfd = pidfdOf(pid);
    if (pidfd === null) return;
    this.#pidfd = pidfd;
    this.#dup = dupOrNull(sock.fd);
    if (this.#dup === null) return;
    this.#pidPoller = new FdPoller(pidfd, () => {
      this.#pidPoller?.set(0);
      this.#diedAt ??= now();
      this.#notify();
    });
    this.#pidPoller.set(READABLE);
    this.#pidPoller.unref();
    this.#hupPoller = new FdPoller(this.#dup, () => {
      this.#hupPoller?.set(0);
      this.#hupAt ??= now();
      this.#notify();
    });
    this.#hupPoller.set(disconnectEvent());
    this.#hupPoller.unref();
  }

  #notify(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Whether the peer died holding the connection: waits up to `ms` for its death. */
  async holderGone(ms: number): Promise<boolean> {
    if (this.#pidfd === null || this.#dup === null || this.#closed) return false;
    const deadline = now() + ms;
    for (;;) {
      const d = this.#diedAt;
      const h = this.#hupAt;
      if (d !== null && h !== null) return Math.abs(d - h) <= HOLDER_GRACE_MS;
      if (d !== null && now() - d > HOLDER_GRACE_MS) return false; // died, the connection stays open
      if (h !== null && d === null && now() - h > HOLDER_GRACE_MS) return false; // hung up, nobody died with it
      const left = Math.min(deadline, (d ?? h ?? deadline) + HOLDER_GRACE_MS + 1) - now();
      if (now() >= deadline && d === null) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.max(1, left));
        function done(): void {
          clearTimeout(t);
          resolve();
        }
        this.#waiters.push(done);
      });
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#pidPoller?.close();
    this.#hupPoller?.close();
    if (this.#pidfd !== null) closeFd(this.#pidfd);
    if (this.#dup !== null) closeFd(this.#dup);
    this.#notify();
  }
}
