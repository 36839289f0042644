// A queue of stream items read in the background from an FdSocket, for the
// session's "wait for the next frame of this kind, within this phase's time".
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { pumpFdSocket } from '../stream/channel.js';
import type { StreamItem, StreamReader } from '../stream/reader.js';
import type { FdSocket } from '../transport/fd-socket.js';
import { closeSectionItem } from './util.js';

export class ItemQueue {
  // Taken from #head on, not with shift(): shift() moves every queued item, and a
  // source that sends many small frames queues tens of thousands at once
  // (100 000 one-byte parts stalled the event loop for 17 s).
  #items: StreamItem[] = [];
  #head = 0;
  #waiter: { resolve: (i: StreamItem) => void; reject: (e: Error) => void } | null = null;
  #error: Error | null = null;
  #ended = false;
  readonly done: Promise<void>;

  constructor(sock: FdSocket, reader: StreamReader, onItem?: (item: StreamItem) => void) {
    this.done = pumpFdSocket(sock, reader, (items) => {
      for (const it of items) {
        onItem?.(it);
        if (it.type === 'ping') continue; // answered by the session
        const w = this.#waiter;
        if (w) {
          this.#waiter = null;
          w.resolve(it);
        } else this.#items.push(it);
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

  #wake(err: Error): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.reject(err);
  }

  /** The next item, or the reader's error; rejects with ERR_TIMEOUT after `ms` (0 = no limit). */
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
      if (i >= 0) return held.splice(i, 1)[0] as Extract<StreamItem, { type: T }>;
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
    }
  }

  /** Closes the fds of items nobody took. */
  drain(): void {
    for (const it of this.#takeAll()) closeSectionItem(it);
  }
}
