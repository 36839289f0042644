// Generic backends: named fds with user metadata, for whatever else a VMM holds
// (a memfd of guest RAM, pidfds, eventfds). The target may declare what kind each
// named fd must be.
import { closeFds, type FdKind } from '../fd/index.js';
import type { AttachmentKind } from '../stream/wire.js';
import type { OutgoingAttachment } from '../stream/writer.js';
import { byName, decodeState, encodeState, expectFd, invalid, verifyError, stateOf } from './common.js';
import type { Arrival, Captured, SourceDevice, TargetDevice } from './types.js';

export interface GenericFd {
  name: string;
  fd: number;
  /** The attachment kind (checked by the stream reader). Default 'generic'. */
  kind?: AttachmentKind;
  meta?: Record<string, unknown>;
}

export interface GenericSourceOptions {
  id: string;
  instance?: number;
  version?: number;
  transfer?: boolean;
  required?: boolean;
  fds: GenericFd[];
  /** User metadata, travels as JSON. */
  metadata?: Record<string, unknown>;
  /** Opaque state (large state streams in parts). */
  state?: Uint8Array | (() => Uint8Array);
  closeOnRelease?: boolean;
}

export class GenericSource implements SourceDevice {
  readonly kind = 'generic' as const;
  readonly id: string;
  readonly instance: number;
  readonly version: number;
  readonly transfer: boolean;
  readonly required: boolean;
  readonly #o: GenericSourceOptions;
  #released = false;

  constructor(o: GenericSourceOptions) {
    this.#o = o;
    this.id = o.id;
    this.instance = o.instance ?? 0;
    this.version = o.version ?? 1;
    this.transfer = o.transfer ?? false;
    this.required = o.required ?? false;
  }

  fdCount(): number {
    return this.#o.fds.length;
  }

  check(): void {
    const names = new Set<string>();
    for (const f of this.#o.fds) {
      if (names.has(f.name)) throw invalid(this.id, `fd name ${f.name} appears twice`);
      names.add(f.name);
    }
  }

  capture(withFds: boolean): Captured {
    this.check();
    const attachments: OutgoingAttachment[] = withFds ? this.#o.fds.map((f) => ({ kind: f.kind ?? 'generic', name: f.name, meta: f.meta ?? null, fd: f.fd })) : [];
    return { attachments, state: encodeState({ metadata: this.#o.metadata ?? {}, names: this.#o.fds.map((f) => f.name) }, stateOf(this.#o.state)) };
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    if (this.#o.closeOnRelease ?? true) closeFds(this.#o.fds.map((f) => f.fd));
  }
}

export class GenericBackend {
  #closed = false;
  constructor(
    readonly fds: Map<string, number>,
    readonly metadata: Record<string, unknown>,
    readonly state: Buffer,
  ) {}
  fd(name: string): number {
    const fd = this.fds.get(name);
    if (fd === undefined) throw invalid('generic', `no fd named ${name}`);
    return fd;
  }
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFds([...this.fds.values()]);
  }
}

export interface GenericTargetOptions {
  id: string;
  instance?: number;
  minVersion?: number;
  maxVersion?: number;
  acceptFds?: boolean;
  /** What each named fd must be, as inspectFd tells (optional per name). */
  expect?: Record<string, FdKind | FdKind[]>;
  open?: (metadata: Record<string, unknown> | null) => GenericBackend | Promise<GenericBackend>;
}

export class GenericTarget implements TargetDevice<GenericBackend> {
  readonly kind = 'generic' as const;
  readonly id: string;
  readonly instance: number;
  readonly minVersion: number;
  readonly maxVersion: number;
  readonly acceptFds: boolean;
  readonly #expect: Record<string, FdKind | FdKind[]>;
  readonly open?: (state: Buffer | null) => GenericBackend | Promise<GenericBackend>;

  constructor(o: GenericTargetOptions) {
    this.id = o.id;
    this.instance = o.instance ?? 0;
    this.minVersion = o.minVersion ?? 1;
    this.maxVersion = o.maxVersion ?? 1;
    this.acceptFds = o.acceptFds ?? true;
    this.#expect = o.expect ?? {};
    if (o.open) {
      const opener = o.open;
      this.open = (state) => opener(state ? ((decodeState(this.id, state).meta.metadata as Record<string, unknown>) ?? {}) : null);
    }
  }

  verify(arrival: Arrival): void {
    const { meta } = decodeState(this.id, arrival.state);
    const names = Array.isArray(meta.names) ? (meta.names as string[]) : [];
    const atts = byName(arrival);
    for (const n of names) if (!atts.has(n)) throw verifyError(this.id, `fd ${n} is missing`);
    if (atts.size !== names.length) throw verifyError(this.id, `${atts.size} fds arrived, the source declared ${names.length}`);
    for (const [name, kinds] of Object.entries(this.#expect)) {
      const a = atts.get(name);
      if (!a) throw verifyError(this.id, `fd ${name} is missing`);
      expectFd(this.id, a, Array.isArray(kinds) ? kinds : [kinds]);
    }
  }

  adopt(arrival: Arrival): GenericBackend {
    const { meta, blob } = decodeState(this.id, arrival.state);
    return new GenericBackend(new Map(arrival.attachments.map((a) => [a.name, a.fd])), (meta.metadata as Record<string, unknown>) ?? {}, blob);
  }
}
