import { randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { existsSync } from 'node:fs';
import { FdPoller, READABLE } from '../transport/poller.js';
import { closeFd, closeFds } from '../fd/index.js';
import type { StreamItem } from '../stream/reader.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import type { HandoverEvent } from './types.js';

export function closeSectionItem(it: StreamItem): void {
  if (it.type !== 'section') return;
  closeFds(it.attachments.map((a) => a.fd));
  if (it.payloadFd !== undefined) closeFd(it.payloadFd);
}

export function randomProbe(): Buffer {
  return randomBytes(16);
}

export const now = (): number => performance.now();

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

/**
 * Whether the process behind `pidfd` has exited, waiting up to `ms` for it (a
 * pidfd polls readable once its process is gone). Without a pidfd: whether
 * /proc/<pid> is gone (racy only if the pid was reused in the meantime).
 */
export function processGone(pidfd: number | null, pid: number | null, ms: number): Promise<boolean> {
  if (pidfd === null || pidfd < 0) {
    if (pid === null) return Promise.resolve(false);
    return new Promise((resolve) => {
      const deadline = Date.now() + ms;
      const check = () => {
        if (!existsSync(`/proc/${pid}`)) return resolve(true);
        if (Date.now() >= deadline) return resolve(false);
        setTimeout(check, 10);
      };
      check();
    });
  }
  return new Promise((resolve) => {
    let done = false;
    const finish = (v: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      poller.close();
      resolve(v);
    };
    const poller = new FdPoller(pidfd, (_ev, err) => finish(!err));
    const timer = setTimeout(() => finish(false), ms);
    poller.set(READABLE);
  });
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

  elapsed(): number {
    return now() - this.t0;
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
  return String(r);
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
