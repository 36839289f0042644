// What every backend kind's source and target have in common: identity, version,
// the per-device opt-in, release-once, and the target's opener for state-only moves.
import { closeFds } from '../fd/index.js';
import { decodeState } from './common.js';
import type { Arrival, BackendKind, Captured, SourceDevice, TargetDevice } from './types.js';

export interface SourceOptionsBase {
  id: string;
  instance?: number;
  /** Version of the device state format. Default 1. */
  version?: number;
  /** Per-device opt-in. Default false: the backend stays with the source. */
  transfer?: boolean;
  /** The handover fails if the target refuses this device. Default false. */
  required?: boolean;
  /** release() closes the fds (default true). */
  closeOnRelease?: boolean;
}

export abstract class SourceBase<O extends SourceOptionsBase> implements SourceDevice {
  abstract readonly kind: BackendKind;
  readonly id: string;
  readonly instance: number;
  readonly version: number;
  readonly transfer: boolean;
  readonly required: boolean;
  protected readonly o: O;
  #released = false;
  #unplugged = false;

  constructor(o: O) {
    this.o = o;
    this.id = o.id;
    this.instance = o.instance ?? 0;
    this.version = o.version ?? 1;
    this.transfer = o.transfer ?? false;
    this.required = o.required ?? false;
  }

  /** Every fd of this backend, in attachment order; release() closes these. */
  protected abstract fds(): number[];
  abstract check(): void;
  abstract capture(withFds: boolean): Captured;

  fdCount(): number {
    return this.fds().length;
  }

  /** The device went away (hot-unplug): a handover that staged it drops it at the freeze. */
  unplug(): void {
    this.#unplugged = true;
  }

  get unplugged(): boolean {
    return this.#unplugged;
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (this.o.closeOnRelease ?? true) closeFds(this.fds());
  }
}

export interface TargetOptionsBase<M, B> {
  id: string;
  instance?: number;
  minVersion?: number;
  maxVersion?: number;
  /** Take the backend's fds (the per-device opt-in on the target). Default true. */
  acceptFds?: boolean;
  /** Opens (or reconnects) the backend when its fds did not come: given the metadata the source sent, if any. */
  open?: (meta: M | null) => B | Promise<B>;
}

export abstract class TargetBase<M, B> implements TargetDevice<B> {
  abstract readonly kind: BackendKind;
  readonly id: string;
  readonly instance: number;
  readonly minVersion: number;
  readonly maxVersion: number;
  readonly acceptFds: boolean;
  readonly open?: (state: Buffer | null) => B | Promise<B>;

  /** `metaOf` turns a section's state into what the opener gets (default: its JSON metadata). */
  constructor(o: TargetOptionsBase<M, B>, metaOf: (state: Buffer) => M = (state) => decodeState(o.id, state).meta as unknown as M) {
    this.id = o.id;
    this.instance = o.instance ?? 0;
    this.minVersion = o.minVersion ?? 1;
    this.maxVersion = o.maxVersion ?? 1;
    this.acceptFds = o.acceptFds ?? true;
    if (o.open) {
      const opener = o.open;
      this.open = (state) => opener(state ? metaOf(state) : null);
    }
  }

  abstract verify(arrival: Arrival): void;
  abstract adopt(arrival: Arrival): B;
}
