// A thin TypeScript face over the native uv_poll_t wrapper. The native class is a
// constructor parameter (serialport's lib/poller.ts does the same), so tests can
// drive FdSocket without the addon's poller.
import { native, type PollerConstructor, type PollerInstance } from '../native.js';
import { BackendTransferError } from '../errors.js';

// libuv's uv_poll_event values (UV_READABLE = 1, UV_WRITABLE = 2, fixed by its ABI),
// not read from the addon so that importing this file loads nothing; test/fd-socket-units.test.ts
// checks them against native.UV_READABLE / UV_WRITABLE.
export const READABLE = 1;
export const WRITABLE = 2;

export type PollHandler = (events: number, error?: BackendTransferError) => void;

export class FdPoller {
  #handle: PollerInstance | null;
  #events = 0;

  constructor(fd: number, onEvent: PollHandler, Poller: PollerConstructor = native.Poller) {
    this.#handle = new Poller(fd, (status, events) => {
      if (status < 0) {
        // libuv stops the handle when it reports an error (POLLERR arrives as UV_EBADF).
        this.#events = 0;
        onEvent(0, BackendTransferError.fromSystem(Object.assign(new Error(`poll failed (${status})`), { errno: status, syscall: 'uv_poll' }), `poll on fd ${fd}`));
        return;
      }
      onEvent(events);
    });
  }

  /** The events currently polled for. */
  get events(): number {
    return this.#events;
  }

  /** Polls for exactly `events` (0 stops polling). Cheap when nothing changes. */
  set(events: number): void {
    if (!this.#handle || events === this.#events) return;
    this.#events = events;
    if (events === 0) this.#handle.stop();
    else this.#handle.start(events);
  }

  ref(): void {
    this.#handle?.ref();
  }

  unref(): void {
    this.#handle?.unref();
  }

  /** Stops polling and releases the handle. Must be called before the fd is closed. */
  close(): void {
    if (!this.#handle) return;
    this.#handle.close();
    this.#handle = null;
    this.#events = 0;
  }
}
