// Generic backends: named fds with user metadata, for whatever else a VMM holds
// (a memfd of guest RAM, pidfds, eventfds). The target may declare what kind each
// named fd must be.
import { closeFds, type FdKind } from '../fd/index.js';
import type { AttachmentKind } from '../stream/wire.js';
import type { OutgoingAttachment } from '../stream/writer.js';
import { byName, decodeState, encodeState, expectFd, invalid, verifyError, stateOf } from './common.js';
import type { Arrival, Captured } from './types.js';
import { SourceBase, TargetBase, type SourceOptionsBase, type TargetOptionsBase } from './base.js';
import { num, type Json } from './json.js';
import type { BackendKindEntry } from './types.js';
import { createEventfd } from '../fd/create.js';

export interface GenericFd {
  name: string;
  fd: number;
  /**
   * What the fd is declared as on the wire, checked by the target's stream reader.
   * For an eventfd, a memfd, a TAP queue or a vhost-net fd the FdKind's own name
   * ('eventfd', 'memfd', 'tap', 'vhost-net': an FdAttachmentKind);
   * `attachmentKindOf(inspectFd(fd).kind)` gives it for any fd. Default 'generic' (any fd).
   */
  kind?: AttachmentKind;
  meta?: Record<string, unknown>;
}

export interface GenericSourceOptions extends SourceOptionsBase {
  fds: GenericFd[];
  /** User metadata, travels as JSON. */
  metadata?: Record<string, unknown>;
  /** Opaque state (large state streams in parts). */
  state?: Uint8Array | (() => Uint8Array);
}

export class GenericSource extends SourceBase<GenericSourceOptions> {
  readonly kind = 'generic' as const;

  protected fds(): number[] {
    return this.o.fds.map((f) => f.fd);
  }

  check(): void {
    const names = new Set<string>();
    for (const f of this.o.fds) {
      if (names.has(f.name)) throw invalid(this.id, `fd name ${f.name} appears twice`);
      names.add(f.name);
    }
  }

  capture(withFds: boolean): Captured {
    this.check();
    const attachments: OutgoingAttachment[] = withFds ? this.o.fds.map((f) => ({ kind: f.kind ?? 'generic', name: f.name, meta: f.meta ?? null, fd: f.fd })) : [];
    return { attachments, state: encodeState({ metadata: this.o.metadata ?? {}, names: this.o.fds.map((f) => f.name) }, stateOf(this.o.state)) };
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

export interface GenericTargetOptions extends TargetOptionsBase<Record<string, unknown>, GenericBackend> {
  /** What each named fd must be, as inspectFd tells (optional per name). */
  expect?: Record<string, FdKind | FdKind[]>;
}

export class GenericTarget extends TargetBase<Record<string, unknown>, GenericBackend> {
  readonly kind = 'generic' as const;
  readonly #expect: Record<string, FdKind | FdKind[]>;

  constructor(o: GenericTargetOptions) {
    super(o, (state) => (decodeState(o.id, state).meta.metadata as Record<string, unknown>) ?? {});
    this.#expect = o.expect ?? {};
  }

  verify(arrival: Arrival): void {
    const { meta } = decodeState(this.id, arrival.state, arrival.jsonLimits);
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
    const { meta, blob } = decodeState(this.id, arrival.state, arrival.jsonLimits);
    return new GenericBackend(new Map(arrival.attachments.map((a) => [a.name, a.fd])), (meta.metadata as Record<string, unknown>) ?? {}, blob);
  }
}

/** The generic kind's registry entry. */
export const genericKind: BackendKindEntry<'generic', GenericBackend> = {
  kind: 'generic',
  Source: GenericSource,
  Target: GenericTarget,
  sourceFromJson: (d: Json, common, state) => {
    const fds = (d.fds as Json[] | undefined) ?? [];
    return new GenericSource({
      ...common,
      fds: fds.map((f) => ({ name: String(f.name), fd: num(f, 'fd'), kind: (f.kind as AttachmentKind | undefined) ?? 'generic', meta: f.meta as Json | undefined })),
      metadata: d.metadata as Json | undefined,
      state,
    });
  },
  targetFromJson: (d, common) => new GenericTarget({ ...common, expect: d.expect as Record<string, never> | undefined }),
  describe: (b) => ({ fds: [...b.fds].map(([name, fd]) => ({ name, fd })), meta: b.metadata }),
  warmUp: (own) => {
    const e = createEventfd();
    own.push(e);
    return {
      source: new GenericSource({ id: 'warm-generic', transfer: true, required: true, fds: [{ name: 'e', fd: e, kind: 'eventfd' }], closeOnRelease: false }),
      target: new GenericTarget({ id: 'warm-generic' }),
    };
  },
};
