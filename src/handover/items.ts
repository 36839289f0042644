// A queue of stream items read in the background from an FdSocket, for the
// session's "wait for the next frame of this kind, within this phase's time".
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { pumpFdSocket } from '../stream/channel.js';
import type { StreamItem, StreamReader } from '../stream/reader.js';
import type { FdSocket } from '../transport/fd-socket.js';
import { PING_FRAME_BYTES, closeSectionItem } from './util.js';

/**
 * PINGs are answered one at a time: while a PONG is still on its way out, the
 * next PING is dropped. More than this many dropped in a row (a peer that does
 * not read its PONGs, or sends PINGs faster than they can be answered) and the
 * peer is refused (ERR_PEER_FLOOD): PONGs never queue up in memory.
 */
export const MAX_UNANSWERED_PINGS = 64;
/**
 * Frames other than sections waiting to be taken by the session. A session takes
 * a handful (ACKs, COMMIT, EOF); more queued means a peer that sends what nobody
 * asked for (ERR_PEER_FLOOD). Sections are bounded by the plan instead.
 */
export const MAX_QUEUED_ITEMS = 64;

export interface ItemQueueOptions {
  /** Answers a PING (writes the PONG). Without it PINGs are dropped (and counted). */
  pong?: (token: bigint) => Promise<void>;
  /** Called once when the peer is refused for flooding (besides failing next()). */
  onFlood?: (err: BackendTransferError) => void;
  /** Called with the bytes of each PING taken and each PONG sent (not progress). */
  onNoise?: (bytes: number) => void;
  /**
   * Frames the session expects many of at once (ACK(STAGED): one per staged
   * device), which the caller bounds itself: not counted against MAX_QUEUED_ITEMS
   * while this says true.
   */
  expected?: (item: StreamItem) => boolean;
}

function flood(what: string): BackendTransferError {
  return new BackendTransferError(ErrorCodes.ERR_PEER_FLOOD, `the peer floods this side: ${what}`, { details: { limit: what } });
}

export class ItemQueue {
  // Taken from #head on, not with shift(): shift() moves every queued item, and a
  // source that sends many small frames queues tens of thousands at once
  // (100 000 one-byte parts stalled the event loop for 17 s).
  #items: StreamItem[] = [];
  #head = 0;
  #queuedOther = 0;
  /** Items queued without counting (ItemQueueOptions.expected). */
  readonly #uncounted = new WeakSet<StreamItem>();
  #pongBusy = false;
  #dropped = 0;
  /** Stop answering PINGs (they are dropped and counted). */
  quiet = false;
  #waiter: { resolve: (i: StreamItem) => void; reject: (e: Error) => void } | null = null;
  #error: Error | null = null;
  #ended = false;
  readonly done: Promise<void>;

  constructor(sock: FdSocket, reader: StreamReader, onItem?: (item: StreamItem) => void, options: ItemQueueOptions = {}) {
    const refuse = (err: BackendTransferError): never => {
      options.onFlood?.(err);
      throw err;
    };
    this.done = pumpFdSocket(sock, reader, (items) => {
      for (let i = 0; i < items.length; i++) {
        const it = items[i]!;
        try {
          onItem?.(it);
          if (it.type === 'ping') {
            this.#ping(it.ping.token, options, refuse);
            continue;
          }
        } catch (err) {
          // This item and the rest of the batch are nobody's: close their fds.
          for (let j = i; j < items.length; j++) closeSectionItem(items[j]!);
          throw err;
        }
        const w = this.#waiter;
        if (w) {
          this.#waiter = null;
          w.resolve(it);
        } else {
          if (options.expected?.(it)) this.#uncounted.add(it);
          else if (this.#counted(it) && ++this.#queuedOther > MAX_QUEUED_ITEMS) {
            for (let j = i; j < items.length; j++) closeSectionItem(items[j]!);
            refuse(flood(`more than ${MAX_QUEUED_ITEMS} frames (${it.type}) sent ahead of being asked for`));
          }
          this.#items.push(it);
        }
      }
    }).then(
      () => {
        this.#ended = true;
        this.#wake(new BackendTransferError(ErrorCodes.ERR_PEER_CLOSED, 'the peer ended the stream'));
      },
      (err: unknown) => {
        this.#error = err instanceof Error ? err : new Error(String(err));
        this.#wake(this.#error);
      },
    );
    this.done.catch(() => undefined);
  }

  /** Counted against MAX_QUEUED_ITEMS: not a section or a stage (bounded by the plan), not expected. */
  #counted(it: StreamItem): boolean {
    return it.type !== 'section' && it.type !== 'stage' && !this.#uncounted.has(it);
  }

  #wake(err: Error): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.reject(err);
  }

  /** The next item, or the reader's error; rejects with ERR_TIMEOUT after `ms` (0 = no limit). */
  #ping(token: bigint, o: ItemQueueOptions, refuse: (e: BackendTransferError) => never): void {
    o.onNoise?.(PING_FRAME_BYTES);
    if (this.#pongBusy || this.quiet || !o.pong) {
      if (++this.#dropped > MAX_UNANSWERED_PINGS)
        refuse(flood(`more than ${MAX_UNANSWERED_PINGS} PINGs in a row that could not be answered (it does not read the PONGs, or pings faster than they go out)`));
      return;
    }
    this.#dropped = 0;
    this.#pongBusy = true;
    o.pong(token).then(
      () => {
        this.#pongBusy = false;
        o.onNoise?.(PING_FRAME_BYTES);
      },
      () => undefined, // the writer failed: the session hears of it elsewhere; no more PONGs
    );
  }

  /** Items read and not yet taken: next() returns the first of them at once. */
  get ready(): number {
    return this.#items.length - this.#head;
  }

  next(ms: number, what: string): Promise<StreamItem> {
    const it = this.#take();
    if (it) return Promise.resolve(it);
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended) return Promise.reject(new BackendTransferError(ErrorCodes.ERR_PEER_CLOSED, `the peer ended the stream while this side waited for ${what}`));
    return new Promise<StreamItem>((resolve, reject) => {
      const timer =
        ms > 0
          ? setTimeout(() => {
              this.#waiter = null;
              reject(BackendTransferError.timeout(`waiting for ${what}`, ms));
            }, ms)
          : null;
      this.#waiter = {
        resolve: (i) => {
          if (timer) clearTimeout(timer);
          resolve(i);
        },
        reject: (e) => {
          if (timer) clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  #take(): StreamItem | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const it = this.#items[this.#head]!;
    this.#items[this.#head++] = undefined as unknown as StreamItem; // let it go
    if (this.#counted(it)) this.#queuedOther--;
    if (this.#head === this.#items.length) {
      this.#items = [];
      this.#head = 0;
    } else if (this.#head >= 4096 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return it;
  }

  /** Every queued item, in order; the queue is then empty. */
  #takeAll(): StreamItem[] {
    const all = this.#items.slice(this.#head);
    this.#items = [];
    this.#head = 0;
    return all;
  }

  /**
   * The first queued item of `type` (a NACK, an ABORT), or the next to arrive
   * within `ms`; null if none comes. Used when a send failed because the peer
   * went away: its last word may still be on its way in. Items passed over stay
   * queued, in order.
   */
  async find<T extends StreamItem['type']>(type: T, ms: number): Promise<Extract<StreamItem, { type: T }> | null> {
    // Set the queued items aside, so that next() waits for new ones only.
    const held = this.#takeAll();
    try {
      const i = held.findIndex((x) => x.type === type);
      if (i >= 0) {
        const hit = held.splice(i, 1)[0]!;
        if (this.#counted(hit)) this.#queuedOther--;
        return hit as Extract<StreamItem, { type: T }>;
      }
      const deadline = Date.now() + ms;
      for (let left = ms; left > 0; left = deadline - Date.now()) {
        let it: StreamItem;
        try {
          it = await this.next(left, `a ${type}`);
        } catch {
          return null; // the time is up, or the stream ended or failed
        }
        if (it.type === type) return it as Extract<StreamItem, { type: T }>;
        held.push(it);
      }
      return null;
    } finally {
      this.#items = held.concat(this.#takeAll());
      this.#queuedOther = 0;
      for (let i = this.#head; i < this.#items.length; i++) if (this.#counted(this.#items[i]!)) this.#queuedOther++;
    }
  }

  /** Closes the fds of items nobody took. */
  drain(): void {
    this.#queuedOther = 0;
    for (const it of this.#takeAll()) closeSectionItem(it);
  }
}
