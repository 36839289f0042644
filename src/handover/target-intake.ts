// What the target keeps of the state that arrives, and what a source may make it
// hold: the VMM state (into room made before the freeze, else in parts, or handed
// to onState), each device's state and staged metadata, all checked against the
// HandoverLimits from the declared lengths before a payload is read or copied.
import { releaseMapping } from '../fd/mapping.js';
import { tooLarge } from '../stream/codec.js';
import type { StreamItem } from '../stream/reader.js';
import type { PlannedDevice } from '../stream/wire.js';
import { STATE_DEVICE_ID, type HandoverLimits, type ReceiveHandoverOptions } from './types.js';
import { deviceKey } from './util.js';

/** VMM state up to this size is given room before the freeze (announced in HELLO). */
const MAX_PREALLOCATED_STATE = 256 * 1024 * 1024;
const EMPTY = Buffer.alloc(0);

/** Parts under this size are copied together into shared chunks. */
const SMALL_PART = 64 * 1024;
const CHUNK_MAX = 1024 * 1024;

export const isVmmState = (d: { id: string; instance: number }): boolean => d.id === STATE_DEVICE_ID && d.instance === 0;

/**
 * A state's parts as they arrive, without one object per part: small parts are
 * copied together into chunks (growing up to 1 MiB), large ones are kept as they
 * are (a copy only when the caller does not own them). A source sending millions
 * of tiny frames costs their bytes, not millions of Buffers. joined() gives one
 * part without copying it.
 */
export class Parts {
  #list: Buffer[] = [];
  #chunk: Buffer | null = null;
  #fill = 0;

  /** Whether the part itself is kept (false: it was copied, or empty). */
  add(part: Buffer, owned: boolean): boolean {
    if (part.length === 0) return false;
    if (part.length >= SMALL_PART) {
      this.#seal();
      this.#list.push(owned ? part : Buffer.from(part));
      return owned;
    }
    if (this.#chunk === null || this.#fill + part.length > this.#chunk.length) {
      const grown = Math.min(CHUNK_MAX, Math.max(part.length, 2 * (this.#chunk?.length ?? 128)));
      this.#seal();
      this.#chunk = Buffer.allocUnsafe(grown);
    }
    part.copy(this.#chunk, this.#fill);
    this.#fill += part.length;
    return false;
  }

  #seal(): void {
    if (this.#chunk !== null && this.#fill > 0) this.#list.push(this.#chunk.subarray(0, this.#fill));
    this.#chunk = null;
    this.#fill = 0;
  }

  get empty(): boolean {
    return this.#list.length === 0 && this.#fill === 0;
  }

  /** All parts in one buffer (a single one as it is); the parts are let go. */
  joined(): Buffer {
    this.#seal();
    const list = this.#list;
    this.#list = [];
    return list.length === 1 ? list[0]! : Buffer.concat(list);
  }
}

/**
 * The target's intake: frames are assembled in one reused buffer (the reader's),
 * so what is kept is copied out of it (device state into its own buffer, VMM
 * state into room made before the freeze). onPayload (for the reader) checks each
 * payload's declared length against the limits before it is read; onItem (for the
 * queue) takes each frame's payload out while it is valid.
 */
export class StateIntake {
  readonly #o: ReceiveHandoverOptions;
  readonly #lim: Required<HandoverLimits>;
  /** The VMM state in parts (unless onState takes it, or it fits the room made for it). */
  #parts: Parts | null;
  /** Room for the announced VMM state, filled in stream order. */
  #buf: Buffer | null = null;
  /** VMM state bytes taken. */
  stateBytes = 0;
  /** Frame bodies of sections and stages, and the fds they carried. */
  bytes = 0;
  fds = 0;
  #keptBytes = 0; // all state kept in memory
  readonly #stagedBytes = new Map<string, number>(); // staged metadata kept, per device
  #vmmReserved = 0; // VMM state accounted so far, in stream order: where the next part goes in #buf
  #lateRoom = 0; // an announced VMM state size too large to make room for before the freeze
  readonly #deviceBytes = new Map<PlannedDevice, number>();

  constructor(o: ReceiveHandoverOptions, lim: Required<HandoverLimits>) {
    this.#o = o;
    this.#lim = lim;
    this.#parts = o.onState ? null : new Parts();
  }

  /** From HELLO's announced state size: room for the VMM state, made now (up to 256 MiB) or when it starts to arrive. */
  makeRoom(info: unknown): void {
    const announced = (info as { stateBytes?: unknown } | null)?.stateBytes;
    if (this.#o.onState || typeof announced !== 'number' || !Number.isInteger(announced) || !(announced > 0) || announced > this.#lim.maxStateBytes) return;
    // Written now, so that its pages are there before the source freezes: a
    // large Buffer.alloc() is fresh zero pages, each faulted in on first write,
    // which would happen inside the downtime.
    if (announced <= MAX_PREALLOCATED_STATE) this.#buf = Buffer.allocUnsafe(announced).fill(0);
    // Larger: the room is taken (not written) when the state starts to arrive, so
    // that its parts are not joined at the end (twice their size for a moment).
    else this.#lateRoom = announced;
  }

  /** For the reader: a payload's declared length checked against the limits; the room a VMM-state memfd part is read into. */
  readonly onPayload = (d: PlannedDevice, length: number, inMemfd: boolean): Buffer | undefined => {
    const lim = this.#lim;
    if (isVmmState(d)) {
      if (this.#o.onState) {
        if (length > lim.maxStateBytes) throw tooLarge('VMM state part', length, lim.maxStateBytes);
        return undefined;
      }
      if (this.#keptBytes + length > lim.maxStateBytes) throw tooLarge('VMM state', this.#keptBytes + length, lim.maxStateBytes);
      this.#keptBytes += length;
      if (this.#vmmReserved === 0 && this.#buf === null && this.#lateRoom > 0) this.#buf = Buffer.allocUnsafe(this.#lateRoom);
      const at = this.#vmmReserved;
      this.#vmmReserved += length;
      // A memfd part that fits the room made before the freeze is read straight into it.
      return inMemfd && this.#buf && at + length <= this.#buf.length ? this.#buf.subarray(at, at + length) : undefined;
    }
    const mine = (this.#deviceBytes.get(d) ?? 0) + length;
    if (mine > lim.maxDeviceStateBytes) throw tooLarge(`state of device ${d.id}`, mine, lim.maxDeviceStateBytes);
    if (this.#keptBytes + length > lim.maxStateBytes) throw tooLarge('state', this.#keptBytes + length, lim.maxStateBytes);
    this.#deviceBytes.set(d, mine);
    this.#keptBytes += length;
    return undefined;
  };

  /** For the queue: each frame as it is read, its payload taken out of the reader's reused buffer. */
  readonly onItem = (it: StreamItem): void => {
    const lim = this.#lim;
    if (it.type === 'stage') {
      // Its metadata is kept past the reader's reused buffer: within the same
      // limits as a device's state (a re-stage replaces what it staged before).
      const key = deviceKey(it.device);
      const before = this.#stagedBytes.get(key) ?? 0;
      if (it.payload.length > lim.maxDeviceStateBytes) throw tooLarge(`staged metadata of device ${it.device.id}`, it.payload.length, lim.maxDeviceStateBytes);
      if (this.#keptBytes - before + it.payload.length > lim.maxStateBytes) throw tooLarge('state', this.#keptBytes - before + it.payload.length, lim.maxStateBytes);
      this.#keptBytes += it.payload.length - before;
      this.#stagedBytes.set(key, it.payload.length);
      this.bytes += it.bodyLength;
      this.fds += it.attachments.length;
      it.payload = Buffer.from(it.payload);
      return;
    }
    if (it.type !== 'section') return;
    this.bytes += it.bodyLength;
    this.fds += it.attachments.length;
    // The reader reuses its buffer for inline payloads: take them out now, while
    // they are valid. A payload read out of a memfd is a buffer of its own (or
    // already in place in #buf), a mapped one a mapping of its own: it is
    // kept as it is, never copied again. onState gets a mapped part for the
    // call only (like an inline one): it is unmapped when onState returns.
    if (isVmmState(it.device)) {
      const n = it.payload.length; // before a mapping is released (then its length is 0)
      const buf = this.#buf;
      if (this.#o.onState) {
        try {
          this.#o.onState(it.payload);
        } finally {
          if (it.payloadMapped) releaseMapping(it.payload);
        }
      } else if (buf && this.stateBytes + it.payload.length <= buf.length) {
        const inPlace = it.payload.buffer === buf.buffer && it.payload.byteOffset === buf.byteOffset + this.stateBytes;
        if (!inPlace) it.payload.copy(buf, this.stateBytes);
        if (it.payloadMapped) releaseMapping(it.payload);
      } else {
        if (buf) {
          // More than announced: go on in parts.
          this.#parts!.add(buf.subarray(0, this.stateBytes), true);
          this.#buf = null;
        }
        const kept = this.#parts!.add(it.payload, it.payloadInMemfd);
        if (it.payloadMapped && !kept) releaseMapping(it.payload);
      }
      this.stateBytes += n;
      it.payload = EMPTY;
    } else if (!it.payloadInMemfd) it.payload = Buffer.from(it.payload);
  };

  /** The VMM state (unless onState took it). */
  state(): Buffer | null {
    return this.#buf ? this.#buf.subarray(0, this.stateBytes) : this.#parts ? this.#parts.joined() : null;
  }

  /** The session ended: its parts are let go. */
  release(): void {
    this.#parts = null;
  }
}
