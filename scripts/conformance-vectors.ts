// Writes the conformance vectors of docs/vectors/: valid and invalid streams
// (main stream and return path) as binary files, each with a JSON file saying how
// to read it and what must come out (the decoded frames, or an error code and the
// offset of the frame that raises it). Every byte is laid out by hand here from
// the tables of docs/stream-format.md, not by the library's encoder, and the
// expected decode comes from the same hand-written description, so the vectors
// check the code against the document.
//
//   node --import tsx scripts/conformance-vectors.ts           # (re)write docs/vectors/
//   node --import tsx scripts/conformance-vectors.ts --check   # exit 1 if docs/vectors/ is not up to date
//
// test/conformance-vectors.test.ts runs the --check and replays every vector.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';

const OUT = fileURLToPath(new URL('../docs/vectors/', import.meta.url));

// ---------------------------------------------------------------- field layout

const u8 = (v: number) => Buffer.from([v]);
const u16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
};
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};
const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b;
};
const str = (s: string) => Buffer.concat([u16(Buffer.byteLength(s)), Buffer.from(s)]);
const blob = (b: Buffer) => Buffer.concat([u32(b.length), b]);
const json = (v: Record<string, unknown> | null) => blob(v === null ? Buffer.alloc(0) : Buffer.from(JSON.stringify(v)));
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const MAGIC = Buffer.from([0x89, 0x42, 0x54, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a]);
const T = {
  HELLO: 0x01,
  WELCOME: 0x02,
  PLAN: 0x03,
  SECTION_START: 0x10,
  SECTION_PART: 0x11,
  SECTION_END: 0x12,
  SECTION_FULL: 0x13,
  STAGE: 0x14,
  FREEZE: 0x15,
  END_OF_STATE: 0x20,
  ACK: 0x30,
  NACK: 0x31,
  PING: 0x32,
  PONG: 0x33,
  COMMIT: 0x40,
  ABORT: 0x41,
  EOF: 0x7f,
} as const;
const NAMES = Object.fromEntries(Object.entries(T).map(([k, v]) => [v, k])) as Record<number, string>;
const FDS = 1;
const MEMFD_PAYLOAD = 2;
const BODY_CRC = 4;
const STAGED = 8;
const KIND = { tap: 1, 'vhost-net': 2, 'vhost-user': 3, eventfd: 4, memfd: 5, 'chardev-socket': 6, listener: 7, generic: 8 } as const;
type AttKind = keyof typeof KIND;

// ---------------------------------------------------------------- bodies (bytes + expected decode)

interface Body {
  bytes: Buffer;
  decoded: Record<string, unknown>;
}

interface OfferIn {
  kind: string;
  id: string;
  instance?: number;
  version?: number;
  fdCount?: number;
  flags?: number;
}

function hello(o: { min?: number; max?: number; features: number; canPassFds: number; fdBudget?: number; probe?: Buffer | null; offers: OfferIn[]; info?: Record<string, unknown> | null }): Body {
  const offers = o.offers.map((x) => ({ kind: x.kind, id: x.id, instance: x.instance ?? 0, version: x.version ?? 1, fdCount: x.fdCount ?? 0, flags: x.flags ?? 0 }));
  const bytes = Buffer.concat([
    u16(o.min ?? 1),
    u16(o.max ?? 1),
    u32(o.features),
    u8(o.canPassFds),
    u8(0),
    u32(o.fdBudget ?? 0xffffffff),
    blob(o.probe ?? Buffer.alloc(0)),
    u32(offers.length),
    ...offers.flatMap((x) => [str(x.kind), str(x.id), u32(x.instance), u32(x.version), u32(x.fdCount), u8(x.flags)]),
    json(o.info ?? null),
  ]);
  return {
    bytes,
    decoded: {
      minVersion: o.min ?? 1,
      maxVersion: o.max ?? 1,
      features: o.features,
      canPassFds: o.canPassFds,
      fdBudget: o.fdBudget ?? 0xffffffff,
      probe: o.probe ? o.probe.toString('hex') : null,
      offers,
      info: o.info ?? null,
    },
  };
}

interface AnswerIn {
  id: string;
  instance?: number;
  decision: number;
  reason?: number;
  minVersion?: number;
  maxVersion?: number;
}

function welcome(o: { version?: number; features: number; canPassFds: number; fdBudget?: number; answers: AnswerIn[]; info?: Record<string, unknown> | null }): Body {
  const answers = o.answers.map((a) => ({ id: a.id, instance: a.instance ?? 0, decision: a.decision, reason: a.reason ?? 0, minVersion: a.minVersion ?? 1, maxVersion: a.maxVersion ?? 1 }));
  const bytes = Buffer.concat([
    u16(o.version ?? 1),
    u32(o.features),
    u8(o.canPassFds),
    u8(0),
    u32(o.fdBudget ?? 100000),
    u32(answers.length),
    ...answers.flatMap((a) => [str(a.id), u32(a.instance), u8(a.decision), u8(a.reason), u32(a.minVersion), u32(a.maxVersion)]),
    json(o.info ?? null),
  ]);
  return { bytes, decoded: { version: o.version ?? 1, features: o.features, canPassFds: o.canPassFds, fdBudget: o.fdBudget ?? 100000, answers, info: o.info ?? null } };
}

interface PlannedIn {
  kind: string;
  id: string;
  instance?: number;
  version?: number;
  withFds?: number;
  fdCount?: number;
}

function plan(o: { version?: number; features: number; totalFds?: number; devices: PlannedIn[] }): Body {
  const devices = o.devices.map((d) => ({ kind: d.kind, id: d.id, instance: d.instance ?? 0, version: d.version ?? 1, withFds: d.withFds ?? 0, fdCount: d.fdCount ?? 0 }));
  const totalFds = o.totalFds ?? devices.reduce((n, d) => n + d.fdCount, 0);
  const bytes = Buffer.concat([
    u16(o.version ?? 1),
    u32(o.features),
    u32(totalFds),
    u32(devices.length),
    ...devices.flatMap((d) => [str(d.kind), str(d.id), u32(d.instance), u32(d.version), u8(d.withFds), u32(d.fdCount)]),
  ]);
  return { bytes, decoded: { version: o.version ?? 1, features: o.features, totalFds, devices } };
}

interface AttIn {
  kind: AttKind;
  role?: number;
  name: string;
  meta?: Record<string, unknown> | null;
}

function section(type: number, o: { sectionId: number; instanceId?: number; versionId?: number; idstr?: string; atts?: AttIn[]; payload?: Buffer; memfd?: { length: number; crc: number } }): Body {
  const opens = type === T.SECTION_START || type === T.SECTION_FULL;
  const atts = (o.atts ?? []).map((a) => ({ kind: a.kind, role: a.role ?? 0, name: a.name, meta: a.meta ?? null }));
  const payload = o.payload ?? Buffer.alloc(0);
  const bytes = Buffer.concat([
    u32(o.sectionId),
    ...(opens ? [u32(o.instanceId ?? 0), u32(o.versionId ?? 1), str(o.idstr ?? '')] : []),
    u16(atts.length),
    ...atts.flatMap((a) => [u8(KIND[a.kind]), u8(a.role), str(a.name), json(a.meta)]),
    ...(o.memfd ? [u32(o.memfd.length), u32(o.memfd.crc)] : [u32(payload.length), payload]),
  ]);
  const decoded: Record<string, unknown> = { sectionId: o.sectionId };
  if (opens) Object.assign(decoded, { instanceId: o.instanceId ?? 0, versionId: o.versionId ?? 1, idstr: o.idstr ?? '' });
  Object.assign(decoded, { attachments: atts });
  if (o.memfd) Object.assign(decoded, { payloadLength: o.memfd.length, payloadCrc: o.memfd.crc });
  else Object.assign(decoded, { payloadLength: payload.length, payloadSha256: sha256(payload) });
  return { bytes, decoded };
}

/** A STAGE body: laid out as a SECTION_FULL body. */
const stage = (o: { sectionId: number; idstr: string; atts: AttIn[]; payload: Buffer }): Body => section(T.SECTION_FULL, o);
const freeze = (dropped: { id: string; instance?: number; reason: string }[]): Body => ({
  bytes: Buffer.concat([u32(dropped.length), ...dropped.flatMap((d) => [str(d.id), u32(d.instance ?? 0), str(d.reason)])]),
  decoded: { dropped: dropped.map((d) => ({ id: d.id, instance: d.instance ?? 0, reason: d.reason })) },
});

const endOfState = (sectionCount: number, totalFds: number, payloadBytes: number): Body => ({
  bytes: Buffer.concat([u32(sectionCount), u32(totalFds), u64(BigInt(payloadBytes))]),
  decoded: { sectionCount, totalFds, payloadBytes: String(payloadBytes) },
});
const ack = (stage: number, detail = '', sectionId = 0xffffffff): Body => ({ bytes: Buffer.concat([u8(stage), u32(sectionId), str(detail)]), decoded: { stage, sectionId, detail } });
const nack = (code: string, reason: string, sectionId = 0xffffffff): Body => ({ bytes: Buffer.concat([str(code), str(reason), u32(sectionId)]), decoded: { code, reason, sectionId } });
const ping = (token: bigint, timeNs: bigint): Body => ({ bytes: Buffer.concat([u64(token), u64(timeNs)]), decoded: { token: String(token), timeNs: String(timeNs) } });
const abort = (code: string, reason: string): Body => ({ bytes: Buffer.concat([str(code), str(reason)]), decoded: { code, reason } });
const empty = (): Body => ({ bytes: Buffer.alloc(0), decoded: {} });

// ---------------------------------------------------------------- streams

/** An fd that rides on the stream: what a replaying harness must create. */
type FdDesc = { kind: 'memfd'; content: string; sealed: boolean; note: string } | { kind: 'eventfd'; value: number; note: string };

interface Batch {
  /** The bytes [start, end) arrive in one chunk (one recvmsg) together with these fds (by seq). */
  start: number;
  end: number;
  fds: number[];
}

interface FrameOpts {
  flags?: number;
  fds?: FdDesc[];
  /** Override the header's fdCount / firstFdSeq (defaults: the fds given, the running count or 0). */
  fdCount?: number;
  firstFdSeq?: number;
  /** Send the fds, but claim none in the header (for FD_EXTRA), or claim them but send none. */
  sendFds?: boolean;
  bodyCrc?: 'real' | 'zero' | 'wrong';
  reserved?: number;
  headerCrc?: 'real' | 'wrong';
  /** Bytes appended to the body (bodyLength covers them). */
  trailing?: Buffer;
  /** Override bodyLength (the bytes are as given). */
  bodyLength?: number;
  /** The frame is not in the expected decode (an invalid vector's failing frame). */
  expectFrame?: boolean;
}

class StreamBuilder {
  parts: Buffer[] = [];
  length = 0;
  frames: Record<string, unknown>[] = [];
  /** The fds delivered, with their sequence numbers. */
  fds: (FdDesc & { seq: number })[] = [];
  batches: Batch[] = [];
  /** The sender's fd numbering: every fd sent, delivered or not. */
  seq = 0;
  count = 0;
  /** Features settled (BODY_CRC decides the bodyCrc of non-handshake frames). */
  crcOn = true;
  lastFrameOffset = 0;

  constructor(magic: Buffer | null = MAGIC) {
    if (magic) this.push(magic);
  }
  push(b: Buffer): void {
    this.parts.push(b);
    this.length += b.length;
  }
  frame(type: number, body: Body, o: FrameOpts = {}): this {
    const bodyBytes = o.trailing ? Buffer.concat([body.bytes, o.trailing]) : body.bytes;
    const fds = o.fds ?? [];
    const firstSeq = this.seq;
    const send = o.sendFds ?? true;
    const fdCount = o.fdCount ?? fds.length;
    const firstFdSeq = o.firstFdSeq ?? (fdCount > 0 ? firstSeq : 0);
    const head = Buffer.alloc(20);
    head[0] = type;
    head[1] = o.flags ?? 0;
    head.writeUInt16LE(o.reserved ?? 0, 2);
    head.writeUInt32LE(o.bodyLength ?? bodyBytes.length, 4);
    head.writeUInt32LE(fdCount, 8);
    head.writeUInt32LE(firstFdSeq, 12);
    const hcrc = crc32(head.subarray(0, 16));
    head.writeUInt32LE(o.headerCrc === 'wrong' ? (hcrc ^ 0xdeadbeef) >>> 0 : hcrc, 16);
    const handshake = type === T.HELLO || type === T.WELCOME || type === T.PLAN;
    const real = crc32(bodyBytes);
    const mode = o.bodyCrc ?? (handshake || this.crcOn ? 'real' : 'zero');
    const trailer = u32(mode === 'real' ? real : mode === 'zero' ? 0 : (real ^ 0x1) >>> 0);
    // The head: the magic (for the first frame) and the header; fds ride on it.
    const frameStart = this.length;
    const headStart = this.count === 0 ? 0 : frameStart;
    this.count++;
    this.push(head);
    this.push(bodyBytes);
    this.push(trailer);
    if (fds.length > 0 && send) {
      const seqs = fds.map((_, i) => firstSeq + i);
      const nb = Math.ceil(seqs.length / 253);
      for (let i = 0; i < nb; i++) {
        const last = i === nb - 1;
        this.batches.push({ start: headStart + i, end: last ? this.length : headStart + i + 1, fds: seqs.slice(i * 253, (i + 1) * 253) });
      }
      this.fds.push(...fds.map((f, i) => ({ ...f, seq: firstSeq + i })));
    }
    // Sent fds count in the numbering even when they are lost on the way.
    this.seq += fds.length;
    this.lastFrameOffset = frameStart;
    if (o.expectFrame !== false) {
      this.frames.push({ offset: frameStart, type: NAMES[type] ?? `0x${type.toString(16)}`, flags: o.flags ?? 0, fdCount, firstFdSeq, body: body.decoded });
    }
    return this;
  }
  /** fds that ride on the given frame bytes without being declared (for FD_EXTRA): [start, end) of the last frame. */
  strayFds(fds: FdDesc[]): this {
    const seqs = fds.map((_, i) => this.seq + i);
    this.batches.push({ start: this.lastFrameOffset, end: this.length, fds: seqs });
    this.fds.push(...fds.map((f, i) => ({ ...f, seq: seqs[i]! })));
    this.seq += fds.length;
    return this;
  }
  raw(b: Buffer): this {
    this.push(b);
    return this;
  }
  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

// ---------------------------------------------------------------- the vectors

type Expect = { ok: true; frames: Record<string, unknown>[] } | { ok: false; code: string; offset: number; frames: Record<string, unknown>[] };

interface Vector {
  name: string;
  description: string;
  direction: 'main' | 'return';
  /** How to read it: 'inspect' a recorded main stream (PLAN authoritative); 'target' a live main stream after sending `welcome`; 'source' a return path. */
  reader: 'inspect' | 'target' | 'source';
  welcome?: Record<string, unknown>;
  stream: StreamBuilder;
  /** With the fds replayed as described. */
  expect: Expect;
  /** From the bytes alone (a file: no fds, no fd checks), as `backend-transfer inspect` reads it. Defaults to `expect`. */
  expectWithoutFds?: Expect;
}

const vectors: Vector[] = [];
const ok = (s: StreamBuilder): Expect => ({ ok: true, frames: s.frames });
/** The error comes with the frame that starts at `offset` (the magic: 0; the end of the bytes for a truncation). */
const err = (s: StreamBuilder, code: string, offset: number): Expect => ({ ok: false, code, offset, frames: s.frames.filter((f) => (f.offset as number) < offset) });

const regs = Buffer.from('regs!');
const stateOffer: OfferIn = { kind: 'state', id: 'vmm-state', version: 1, flags: 2 };
const statePlanned: PlannedIn = { kind: 'state', id: 'vmm-state', version: 1 };
const PROBE = Buffer.from('0123456789abcdef');
const probeFd = (): FdDesc => ({ kind: 'memfd', content: PROBE.toString('hex'), sealed: true, note: "HELLO's probe: a sealed memfd holding the 16 probe bytes" });
const genericJson = (names: string[], blobBytes?: Buffer) => {
  const j = Buffer.from(JSON.stringify({ metadata: { vm: 'a' }, names }));
  return blobBytes ? Buffer.concat([j, Buffer.from([0]), blobBytes]) : j;
};

/** A recorded stream's start: HELLO and PLAN for the given devices, state-only. */
function recorded(devices: { kind: string; id: string; version?: number }[], features = BODY_CRC, more: { helloMin?: number; helloMax?: number } = {}): StreamBuilder {
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ min: more.helloMin, max: more.helloMax, features, canPassFds: 0, offers: devices.map((d) => ({ ...d, flags: 2 })) }));
  s.frame(T.PLAN, plan({ features, devices }));
  s.crcOn = (features & BODY_CRC) !== 0;
  return s;
}

// ---- valid main streams

{
  const s = recorded([{ kind: 'state', id: 'vmm-state' }]);
  const state = Buffer.alloc(10000);
  for (let i = 0; i < state.length; i++) state[i] = (i * 7) & 0xff;
  s.frame(T.SECTION_START, section(T.SECTION_START, { sectionId: 1, idstr: 'vmm-state', payload: state.subarray(0, 4096) }));
  s.frame(T.SECTION_PART, section(T.SECTION_PART, { sectionId: 1, payload: state.subarray(4096, 8192) }));
  s.frame(T.SECTION_END, section(T.SECTION_END, { sectionId: 1, payload: state.subarray(8192) }));
  s.frame(T.END_OF_STATE, endOfState(1, 0, state.length));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-recorded-parts',
    description: 'A recorded state-only stream: VMM state in SECTION_START/PART/END. sectionCount counts sections (1), not section frames (3).',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}

{
  const s = recorded([{ kind: 'state', id: 'cpu0' }], 0);
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', payload: regs }));
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-no-body-crc',
    description: 'BODY_CRC off: HELLO and PLAN still carry their real body CRC; the other frames carry 0.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}

{
  const s = recorded([{ kind: 'state', id: 'cpu0' }], BODY_CRC, { helloMin: 1, helloMax: 3 });
  s.frame(T.PING, ping(7n, 123456789n));
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 9, idstr: 'cpu0', payload: regs }));
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-version-window-and-ping',
    description: "HELLO offers versions 1..3 (a version 1 reader picks 1); a PING between frames; section ids are the writer's choice (9).",
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}

/** A live handover's main stream: probe, a generic device with a memfd and an eventfd, and VMM state. */
function liveHandover(o: { firstFdSeqOnSection?: number; sectionKind?: AttKind; noProbeFd?: boolean; strayOnPlan?: boolean; dropSectionFds?: boolean; planDiffers?: boolean } = {}): {
  s: StreamBuilder;
  welcome: Body;
  failAt?: number;
} {
  const features = FDS | BODY_CRC;
  const s = new StreamBuilder();
  s.frame(
    T.HELLO,
    hello({
      features,
      canPassFds: 1,
      fdBudget: 1000,
      probe: PROBE,
      offers: [{ kind: 'generic', id: 'gen0', fdCount: 2, flags: 1 | 2 }, stateOffer],
      info: { pid: 1234, program: 'backend-transfer', stateBytes: 5 },
    }),
    { fds: [probeFd()], sendFds: !o.noProbeFd },
  );
  const w = welcome({
    features,
    canPassFds: 1,
    fdBudget: 1000,
    answers: [
      { id: 'gen0', decision: 2 },
      { id: 'vmm-state', decision: 1 },
    ],
    info: { pid: 5678, probe: 'ok' },
  });
  s.frame(T.PLAN, plan({ features, devices: [{ kind: 'generic', id: 'gen0', withFds: 1, fdCount: o.planDiffers ? 1 : 2 }, statePlanned], totalFds: o.planDiffers ? 1 : 2 }));
  if (o.strayOnPlan) s.strayFds([{ kind: 'eventfd', value: 3, note: 'an fd on the PLAN frame, which declares none' }]);
  const sectionAt = s.length;
  s.frame(
    T.SECTION_FULL,
    section(T.SECTION_FULL, {
      sectionId: 1,
      idstr: 'gen0',
      atts: [
        { kind: 'memfd', name: 'ram', meta: null },
        { kind: o.sectionKind ?? 'eventfd', name: 'irq', meta: { queue: 0 } },
      ],
      payload: genericJson(['ram', 'irq'], Buffer.from('blob')),
    }),
    {
      fds: [
        { kind: 'memfd', content: Buffer.from('guest ram').toString('hex'), sealed: false, note: "device fd 'ram'" },
        { kind: 'eventfd', value: 0, note: "device fd 'irq'" },
      ],
      firstFdSeq: o.firstFdSeqOnSection,
      sendFds: !o.dropSectionFds,
    },
  );
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 2, idstr: 'vmm-state', payload: regs }));
  s.frame(T.END_OF_STATE, endOfState(2, 2, genericJson(['ram', 'irq'], Buffer.from('blob')).length + 5));
  s.frame(T.COMMIT, empty()); // after the target's ACK(ADOPTED) on the return path
  s.frame(T.EOF, empty());
  return { s, welcome: w, failAt: sectionAt };
}

{
  const { s, welcome: w } = liveHandover();
  vectors.push({
    name: 'valid-live-handover',
    description:
      "A live handover's main stream, read by a target that sent `welcome`: HELLO with its probe fd (#0, on the first magic byte), PLAN (firstFdSeq 0 on frames without fds), a generic device's section with a memfd and an eventfd (#1 and #2, firstFdSeq 1), the VMM state, END_OF_STATE (totalFds 2: the probe is not a device fd).",
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: ok(s),
  });
}

{
  const { s, welcome: w } = liveHandover({ noProbeFd: true });
  // Without the probe fd, the section's fds are the first to arrive, but the numbering still counts the probe.
  vectors.push({
    name: 'valid-probe-dropped',
    description:
      'The probe fd did not arrive (a relay dropped SCM_RIGHTS on HELLO only, as a test): not an error. The numbering counts the probe all the same, so the section still says firstFdSeq 1.',
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: ok(s),
  });
}

{
  const features = FDS | MEMFD_PAYLOAD | BODY_CRC;
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features, canPassFds: 1, probe: PROBE, offers: [stateOffer] }), { fds: [probeFd()] });
  s.frame(T.PLAN, plan({ features, devices: [statePlanned] }));
  const state = Buffer.from('state that travels in a sealed memfd');
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'vmm-state', atts: [{ kind: 'memfd', role: 1, name: 'payload' }], memfd: { length: state.length, crc: crc32(state) } }), {
    flags: 1,
    fds: [{ kind: 'memfd', content: state.toString('hex'), sealed: true, note: 'payload memfd (role 1), sealed' }],
  });
  s.frame(T.END_OF_STATE, endOfState(1, 0, state.length));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-memfd-payload',
    description:
      'MEMFD_PAYLOAD: the VMM state, planned without fds (withFds 0, totalFds 0), travels in a sealed payload memfd (fd #1, after the probe). PLAN and END_OF_STATE totalFds leave the payload memfd out; payloadBytes counts it.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}

{
  const features = FDS | BODY_CRC;
  const s = new StreamBuilder();
  const n = 300;
  s.frame(T.HELLO, hello({ features, canPassFds: 1, offers: [{ kind: 'generic', id: 'many', fdCount: n, flags: 1 }] }));
  s.frame(T.PLAN, plan({ features, devices: [{ kind: 'generic', id: 'many', withFds: 1, fdCount: n }] }));
  const names = Array.from({ length: n }, (_, i) => `e${i}`);
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'many', atts: names.map((name) => ({ kind: 'eventfd' as const, name })), payload: genericJson(names) }), {
    fds: names.map((name, i) => ({ kind: 'eventfd' as const, value: i, note: name })),
  });
  s.frame(T.END_OF_STATE, endOfState(1, n, genericJson(names).length));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-300-fds',
    description: 'One frame with 300 fds: two SCM_RIGHTS batches, 253 on the first header byte and 47 on the rest of the frame.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}

// ---- invalid main streams

{
  const s = new StreamBuilder(Buffer.from('89425444_0d0a1a0a'.replace('_', ''), 'hex'));
  vectors.push({ name: 'bad-magic', description: 'The first 8 bytes are not the magic.', direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_BAD_MAGIC', 0) });
}

function recordedThen(name: string, description: string, code: string, bad: (s: StreamBuilder) => void, features = BODY_CRC): void {
  const s = recorded([{ kind: 'state', id: 'cpu0' }], features);
  bad(s);
  const at = s.lastFrameOffset; // the failing frame is the last one
  vectors.push({ name, description, direction: 'main', reader: 'inspect', stream: s, expect: err(s, code, at) });
}

const fullCpu0 = () => section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', payload: regs });

recordedThen('bad-header-crc', 'A section header whose headerCrc is wrong.', 'ERR_STREAM_CRC', (s) => s.frame(T.SECTION_FULL, fullCpu0(), { headerCrc: 'wrong', expectFrame: false }));
recordedThen('bad-reserved-bits', "A header's reserved field is not 0 (its CRC is right).", 'ERR_STREAM_PROTOCOL', (s) => s.frame(T.SECTION_FULL, fullCpu0(), { reserved: 1, expectFrame: false }));
recordedThen('bad-unknown-frame', 'A frame of type 0x50 (its header CRC is right).', 'ERR_STREAM_UNKNOWN_FRAME', (s) => s.frame(0x50, empty(), { expectFrame: false }));
recordedThen('bad-unknown-flag', 'A section frame with flags bit 1 set.', 'ERR_STREAM_PROTOCOL', (s) => s.frame(T.SECTION_FULL, fullCpu0(), { flags: 2, expectFrame: false }));
recordedThen('bad-flag-on-control-frame', 'END_OF_STATE with PAYLOAD_IN_MEMFD set (only section frames have flags).', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5), { flags: 1, expectFrame: false });
});
recordedThen('bad-body-too-large', 'A header announcing a 64 MiB + 1 body (over the default limit), checked before anything is allocated.', 'ERR_STREAM_TOO_LARGE', (s) =>
  s.frame(T.SECTION_FULL, fullCpu0(), { bodyLength: 64 * 1024 * 1024 + 1, expectFrame: false }),
);
recordedThen('bad-body-crc', 'A section whose bodyCrc is wrong (BODY_CRC on).', 'ERR_STREAM_CRC', (s) => s.frame(T.SECTION_FULL, fullCpu0(), { bodyCrc: 'wrong', expectFrame: false }));
recordedThen('bad-trailing-body-bytes', 'END_OF_STATE with 1 byte after its last field (bodyLength 17).', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5), { trailing: Buffer.from([0]), expectFrame: false });
});
recordedThen('bad-eos-section-count', 'END_OF_STATE counts 3 "sections" for one section in 3 frames (it must count sections, not frames).', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_START, section(T.SECTION_START, { sectionId: 1, idstr: 'cpu0', payload: Buffer.from('a') }));
  s.frame(T.SECTION_PART, section(T.SECTION_PART, { sectionId: 1, payload: Buffer.from('b') }));
  s.frame(T.SECTION_END, section(T.SECTION_END, { sectionId: 1, payload: Buffer.from('c') }));
  s.frame(T.END_OF_STATE, endOfState(3, 0, 3), { expectFrame: false });
});
recordedThen('bad-eos-payload-bytes', 'END_OF_STATE says 6 payload bytes, the sections carried 5.', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 6), { expectFrame: false });
});
recordedThen('bad-eos-missing-section', 'END_OF_STATE before the planned device had its section.', 'ERR_STREAM_PROTOCOL', (s) => s.frame(T.END_OF_STATE, endOfState(0, 0, 0), { expectFrame: false }));
recordedThen('bad-not-negotiated', 'A section for a device that is not in PLAN.', 'ERR_STREAM_NOT_NEGOTIATED', (s) =>
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu1', payload: regs }), { expectFrame: false }),
);
recordedThen('bad-duplicate-section', 'A second section for the same device.', 'ERR_STREAM_DUPLICATE_SECTION', (s) => {
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 2, idstr: 'cpu0', payload: regs }), { expectFrame: false });
});
recordedThen('bad-device-version', 'A section of version 2 for a device planned at version 1 (a recorded stream: the window is the planned version).', 'ERR_DEVICE_VERSION_TOO_NEW', (s) =>
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', versionId: 2, payload: regs }), { expectFrame: false }),
);
{
  const devices = [
    { kind: 'state', id: 'cpu0' },
    { kind: 'state', id: 'cpu1' },
  ];
  const s = recorded(devices);
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 2, idstr: 'cpu1', payload: Buffer.from('second') }));
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', payload: regs }));
  s.frame(T.END_OF_STATE, endOfState(2, 0, 11));
  s.frame(T.EOF, empty());
  vectors.push({ name: 'valid-sections-any-order', description: 'Sections need not follow PLAN order: cpu1 before cpu0.', direction: 'main', reader: 'inspect', stream: s, expect: ok(s) });
  const d = recorded(devices);
  d.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', payload: regs }));
  d.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu1', payload: regs }), { expectFrame: false });
  vectors.push({
    name: 'bad-duplicate-section-id',
    description: 'Two devices, one sectionId.',
    direction: 'main',
    reader: 'inspect',
    stream: d,
    expect: err(d, 'ERR_STREAM_DUPLICATE_SECTION', d.lastFrameOffset),
  });
}
recordedThen('bad-part-without-start', 'SECTION_PART with no section open.', 'ERR_STREAM_PROTOCOL', (s) =>
  s.frame(T.SECTION_PART, section(T.SECTION_PART, { sectionId: 1, payload: regs }), { expectFrame: false }),
);
recordedThen('bad-interleaved', 'A ping is fine inside a section, END_OF_STATE is not.', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_START, section(T.SECTION_START, { sectionId: 1, idstr: 'cpu0', payload: Buffer.from('a') }));
  s.frame(T.PING, ping(1n, 2n));
  s.frame(T.END_OF_STATE, endOfState(1, 0, 1), { expectFrame: false });
});
recordedThen('bad-fds-on-state-only-device', 'A device fd (role 0) on a section of a device planned without fds.', 'ERR_STREAM_FD_EXTRA', (s) =>
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', atts: [{ kind: 'eventfd', name: 'irq' }], payload: regs }), {
    fds: [{ kind: 'eventfd', value: 0, note: 'a device fd the plan does not allow' }],
    expectFrame: false,
  }),
);
recordedThen('bad-payload-length', 'A section whose payloadLength (6) is not the bytes left in its body (5).', 'ERR_STREAM_PROTOCOL', (s) => {
  const b = fullCpu0();
  b.bytes.writeUInt32LE(6, b.bytes.length - 9);
  s.frame(T.SECTION_FULL, b, { expectFrame: false });
});
recordedThen('bad-memfd-without-feature', 'PAYLOAD_IN_MEMFD without the negotiated MEMFD_PAYLOAD feature.', 'ERR_STREAM_PROTOCOL', (s) =>
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', atts: [{ kind: 'memfd', role: 1, name: 'payload' }], memfd: { length: 5, crc: crc32(regs) } }), {
    flags: 1,
    fds: [{ kind: 'memfd', content: regs.toString('hex'), sealed: true, note: 'payload memfd' }],
    expectFrame: false,
  }),
);

{
  const s = recorded([{ kind: 'state', id: 'cpu0' }], BODY_CRC);
  s.frame(T.SECTION_FULL, fullCpu0());
  const full = s.bytes();
  const cut = new StreamBuilder(null).raw(full.subarray(0, full.length - 3));
  cut.frames = s.frames.slice(0, -1);
  vectors.push({
    name: 'bad-truncated-mid-frame',
    description: 'The bytes end 3 bytes before the end of a section frame.',
    direction: 'main',
    reader: 'inspect',
    stream: cut,
    expect: err(cut, 'ERR_STREAM_TRUNCATED', cut.length),
  });
}
{
  const s = recorded([{ kind: 'state', id: 'cpu0' }], BODY_CRC);
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5));
  vectors.push({ name: 'bad-no-eof', description: 'Every frame is whole, but no EOF frame came.', direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_TRUNCATED', s.length) });
}
{
  const s = recorded([{ kind: 'state', id: 'cpu0' }], BODY_CRC);
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5));
  s.frame(T.EOF, empty());
  const at = s.length;
  s.raw(Buffer.from([0]));
  vectors.push({ name: 'bad-bytes-after-eof', description: 'A byte after the EOF frame.', direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_PROTOCOL', at) });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ min: 2, max: 3, features: BODY_CRC, canPassFds: 0, offers: [] }), { expectFrame: false });
  vectors.push({ name: 'bad-version', description: 'HELLO offers stream versions 2..3 only.', direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_VERSION', 8) });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: 0, canPassFds: 0, offers: [] }), { bodyCrc: 'zero', expectFrame: false });
  vectors.push({
    name: 'bad-hello-crc-zero',
    description: 'HELLO with bodyCrc 0 although BODY_CRC is not offered: HELLO always carries its real CRC.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_CRC', 8),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: BODY_CRC, canPassFds: 0, offers: [] }));
  const at = s.length;
  s.frame(T.SECTION_FULL, fullCpu0(), { expectFrame: false });
  vectors.push({ name: 'bad-section-before-plan', description: 'A section frame before PLAN.', direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_PROTOCOL', at) });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: BODY_CRC, canPassFds: 0, offers: [stateOffer] }));
  const at = s.length;
  s.frame(T.PLAN, plan({ features: BODY_CRC, devices: [{ ...statePlanned }], totalFds: 1 }), { expectFrame: false });
  vectors.push({
    name: 'bad-plan-total',
    description: "PLAN's totalFds (1) is not the sum of its devices' fdCount (0).",
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', at),
  });
}

{
  const s = recorded([{ kind: 'state', id: 'cpu0' }]);
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5), { firstFdSeq: 5 });
  s.frame(T.ABORT, abort('ERR_TIMEOUT', 'the target took too long'));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-firstfdseq-ignored-and-abort',
    description: 'A frame without fds whose firstFdSeq is 5: a reader ignores the field when fdCount is 0 (writers put 0). Then the source gives up: ABORT, EOF.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: BODY_CRC, canPassFds: 0, offers: [{ kind: 'state', id: 'x'.repeat(4097) }] }), { expectFrame: false });
  vectors.push({ name: 'bad-string-too-long', description: 'An offer id of 4097 bytes (str limit 4096).', direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_TOO_LARGE', 8) });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: BODY_CRC, canPassFds: 0, offers: [], info: { pad: 'p'.repeat(65536) } }), { expectFrame: false });
  vectors.push({ name: 'bad-info-too-large', description: "HELLO's info JSON over 64 KiB.", direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_TOO_LARGE', 8) });
}
{
  const s = new StreamBuilder();
  const b = hello({ features: BODY_CRC, canPassFds: 0, offers: [] });
  b.bytes.writeUInt32LE(1000, 16); // offerCount: 1000 offers cannot fit in the 4 bytes left
  s.frame(T.HELLO, b, { expectFrame: false });
  vectors.push({
    name: 'bad-count-does-not-fit',
    description: 'HELLO says 1000 offers, its body has room for none (at least 17 bytes each).',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', 8),
  });
}
{
  // HELLO laid out field by field, with info = the JSON array [1].
  const t = new StreamBuilder();
  const body = Buffer.concat([u16(1), u16(1), u32(BODY_CRC), u8(0), u8(0), u32(0xffffffff), blob(Buffer.alloc(0)), u32(0), blob(Buffer.from('[1]'))]);
  t.frame(T.HELLO, { bytes: body, decoded: {} }, { expectFrame: false });
  vectors.push({
    name: 'bad-json-not-object',
    description: "HELLO's info is the JSON array [1], not an object.",
    direction: 'main',
    reader: 'inspect',
    stream: t,
    expect: err(t, 'ERR_STREAM_PROTOCOL', 8),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: BODY_CRC | FDS, canPassFds: 1, probe: PROBE, offers: [] }), { fdCount: 0, sendFds: false, expectFrame: false });
  vectors.push({ name: 'bad-probe-without-fd', description: 'HELLO has a probe but declares fdCount 0.', direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_PROTOCOL', 8) });
}
recordedThen('bad-fds-on-end-of-state', 'END_OF_STATE declares an fd (only section frames and HELLO carry fds).', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5), { fdCount: 1, firstFdSeq: 0, expectFrame: false });
});
recordedThen('bad-fdcount-over-limit', 'A section header declaring 4097 fds (limit 4096 per frame).', 'ERR_STREAM_TOO_LARGE', (s) =>
  s.frame(T.SECTION_FULL, fullCpu0(), { fdCount: 4097, firstFdSeq: 0, expectFrame: false }),
);
recordedThen('bad-attachment-kind', 'An attachment of kind 9 (unknown).', 'ERR_STREAM_PROTOCOL', (s) => {
  const b = section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', atts: [{ kind: 'generic', name: 'x' }], payload: regs });
  b.bytes[4 + 4 + 4 + 2 + 4 + 2] = 9; // the attachment's kind byte
  s.frame(T.SECTION_FULL, b, { fds: [{ kind: 'eventfd', value: 0, note: 'an fd of an attachment of unknown kind' }], expectFrame: false });
});
recordedThen('bad-device-version-old', 'A section of version 0 for a device planned at version 1.', 'ERR_DEVICE_VERSION_TOO_OLD', (s) =>
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'cpu0', versionId: 0, payload: regs }), { expectFrame: false }),
);
{
  const features = FDS | MEMFD_PAYLOAD | BODY_CRC;
  for (const [name, description, code, content, crc] of [
    ['bad-memfd-size', 'A sealed payload memfd of 7 bytes for a payloadLength of 8.', 'ERR_STREAM_MEMFD_SIZE', Buffer.from('7 bytes'), crc32(Buffer.from('8 bytes!'))],
    ['bad-memfd-crc', 'A sealed payload memfd whose content does not match payloadCrc.', 'ERR_STREAM_CRC', Buffer.from('8 bytes!'), crc32(Buffer.from('8 bytes?'))],
  ] as const) {
    const s = new StreamBuilder();
    s.frame(T.HELLO, hello({ features, canPassFds: 1, offers: [stateOffer] }));
    s.frame(T.PLAN, plan({ features, devices: [statePlanned] }));
    const at = s.length;
    s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'vmm-state', atts: [{ kind: 'memfd', role: 1, name: 'payload' }], memfd: { length: 8, crc } }), {
      flags: 1,
      fds: [{ kind: 'memfd', content: content.toString('hex'), sealed: true, note: 'payload memfd' }],
    });
    s.frame(T.END_OF_STATE, endOfState(1, 0, 8));
    s.frame(T.EOF, empty());
    vectors.push({ name, description, direction: 'main', reader: 'inspect', stream: s, expect: err(s, code, at), expectWithoutFds: ok(s) });
  }
}

// Live streams whose fault is in the fds (the bytes alone are fine, or fail later).
{
  const { s, welcome: w, failAt } = liveHandover({ firstFdSeqOnSection: 0 });
  vectors.push({
    name: 'bad-fd-sequence',
    description: "The section's firstFdSeq is 0, but the probe was fd #0: its fds are #1 and #2. (A file has no fds: the bytes alone are fine.)",
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: err(s, 'ERR_STREAM_FD_SEQUENCE', failAt!),
    expectWithoutFds: ok(s),
  });
}
{
  const { s, welcome: w, failAt } = liveHandover({ dropSectionFds: true });
  vectors.push({
    name: 'bad-fd-missing',
    description: 'The section declares 2 fds, none arrived with its bytes.',
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: err(s, 'ERR_STREAM_FD_MISSING', failAt!),
    expectWithoutFds: ok(s),
  });
}
{
  const { s, welcome: w } = liveHandover({ strayOnPlan: true });
  const planAt = (s.frames[1] as { offset: number }).offset;
  vectors.push({
    name: 'bad-fd-extra',
    description: 'An fd arrives with the bytes of PLAN, which declares none.',
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: err(s, 'ERR_STREAM_FD_EXTRA', planAt),
    expectWithoutFds: ok(s),
  });
}
{
  const { s, welcome: w, failAt } = liveHandover({ sectionKind: 'memfd' });
  vectors.push({
    name: 'bad-fd-kind',
    description: "The attachment 'irq' says memfd, the fd is an eventfd.",
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: err(s, 'ERR_STREAM_FD_KIND', failAt!),
    expectWithoutFds: ok(s),
  });
}
{
  const { s, welcome: w } = liveHandover({ planDiffers: true });
  const planAt = (s.frames[1] as { offset: number }).offset;
  vectors.push({
    name: 'bad-plan-differs',
    description: 'PLAN gives gen0 1 fd, but HELLO (2 fds, WANTS_FDS) and WELCOME (WITH_FDS) make it 2. A recorded stream trusts its PLAN, so the bytes alone fail only at the section.',
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', planAt),
    expectWithoutFds: err(s, 'ERR_STREAM_FD_EXTRA', (s.frames[2] as { offset: number }).offset),
  });
}
{
  const features = FDS | MEMFD_PAYLOAD | BODY_CRC;
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features, canPassFds: 1, offers: [stateOffer] }));
  s.frame(T.PLAN, plan({ features, devices: [statePlanned] }));
  const at = s.length;
  const state = Buffer.from('unsealed');
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'vmm-state', atts: [{ kind: 'memfd', role: 1, name: 'payload' }], memfd: { length: state.length, crc: crc32(state) } }), {
    flags: 1,
    fds: [{ kind: 'memfd', content: state.toString('hex'), sealed: false, note: 'payload memfd WITHOUT seals' }],
  });
  s.frame(T.END_OF_STATE, endOfState(1, 0, state.length));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'bad-memfd-unsealed',
    description: 'A payload memfd without F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_MEMFD_UNSEALED', at),
    expectWithoutFds: ok(s),
  });
}

// ---- return paths

const welcomeCpu = () => welcome({ features: BODY_CRC, canPassFds: 1, fdBudget: 1000, answers: [{ id: 'cpu0', decision: 1, minVersion: 1, maxVersion: 2 }], info: { pid: 5678, probe: 'none' } });
{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcomeCpu());
  s.frame(T.PING, ping(42n, 1000n));
  s.frame(T.ACK, ack(1, '1 section(s), 0 fd(s)'));
  s.frame(T.ACK, ack(2));
  s.frame(T.ACK, ack(3));
  s.frame(T.ACK, ack(4));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-return-commit',
    description: 'A target that commits: WELCOME, a PING, ACK LOADED, VERIFIED, ADOPTED, COMMITTED, EOF.',
    direction: 'return',
    reader: 'source',
    stream: s,
    expect: ok(s),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcomeCpu());
  s.frame(T.ACK, ack(1));
  s.frame(T.NACK, nack('ERR_BACKEND_VERIFY', 'device cpu0: fd irq is missing'));
  s.frame(T.EOF, empty());
  vectors.push({ name: 'valid-return-nack', description: 'A target that fails verification: NACK after ACK(LOADED), then EOF.', direction: 'return', reader: 'source', stream: s, expect: ok(s) });
}
{
  const s = new StreamBuilder();
  s.frame(T.NACK, nack('ERR_STREAM_VERSION', 'no stream version in common: the peer speaks 2..3, this side 1..1'));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-return-refusal',
    description: 'A target refusing the HELLO: MAGIC NACK EOF in place of WELCOME (a 0.1.0 source reads this as ERR_STREAM_PROTOCOL).',
    direction: 'return',
    reader: 'source',
    stream: s,
    expect: ok(s),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.NACK, nack('ERR_STREAM_VERSION', 'no'));
  const at = s.length;
  s.frame(T.WELCOME, welcomeCpu(), { expectFrame: false });
  vectors.push({
    name: 'bad-return-welcome-after-refusal',
    description: 'WELCOME after a NACK that took its place: only EOF may follow.',
    direction: 'return',
    reader: 'source',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', at),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.ACK, ack(1), { expectFrame: false });
  vectors.push({ name: 'bad-return-ack-first', description: 'ACK before WELCOME.', direction: 'return', reader: 'source', stream: s, expect: err(s, 'ERR_STREAM_PROTOCOL', 8) });
}
{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcome({ version: 2, features: BODY_CRC, canPassFds: 0, answers: [] }), { expectFrame: false });
  vectors.push({ name: 'bad-return-version', description: 'WELCOME chooses stream version 2.', direction: 'return', reader: 'source', stream: s, expect: err(s, 'ERR_STREAM_VERSION', 8) });
}
{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcomeCpu());
  const at = s.length;
  s.frame(T.ACK, ack(5), { expectFrame: false });
  vectors.push({
    name: 'bad-return-ack-stage',
    description: 'ACK with stage 5 (STAGED) although WELCOME has no STAGED feature.',
    direction: 'return',
    reader: 'source',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', at),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcomeCpu());
  const at = s.length;
  s.frame(T.ACK, ack(1), { bodyCrc: 'zero', expectFrame: false });
  vectors.push({
    name: 'bad-return-body-crc',
    description: "An ACK with bodyCrc 0 although WELCOME's features have BODY_CRC.",
    direction: 'return',
    reader: 'source',
    stream: s,
    expect: err(s, 'ERR_STREAM_CRC', at),
  });
}

{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcome({ features: BODY_CRC, canPassFds: 0, answers: [{ id: 'cpu0', decision: 3 }] }), { expectFrame: false });
  vectors.push({
    name: 'bad-return-decision',
    description: 'WELCOME with an answer of decision 3 (unknown).',
    direction: 'return',
    reader: 'source',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', 8),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcomeCpu());
  const at = s.length;
  s.frame(T.SECTION_FULL, fullCpu0(), { expectFrame: false });
  vectors.push({ name: 'bad-return-section', description: 'A section frame on a return path.', direction: 'return', reader: 'source', stream: s, expect: err(s, 'ERR_STREAM_PROTOCOL', at) });
}

// ---- rules made explicit after an independent implementation (test/interop/independent/AMBIGUITIES.md)

// Order of the main stream: ABORT may come inside an open section; COMMIT only after
// END_OF_STATE; after COMMIT or ABORT only PING, PONG, EOF; EOF only after
// END_OF_STATE or ABORT.
{
  const s = recorded([{ kind: 'state', id: 'cpu0' }]);
  s.frame(T.SECTION_START, section(T.SECTION_START, { sectionId: 1, idstr: 'cpu0', payload: Buffer.from('half') }));
  s.frame(T.ABORT, abort('ERR_STATE_SOURCE', 'the state stream failed midway'));
  s.frame(T.PONG, ping(3n, 4n));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-abort-inside-section',
    description:
      'A source whose state fails midway: SECTION_START, then ABORT inside the open section (it ends the section and the state), a PONG, EOF. No END_OF_STATE is needed after ABORT. (0.1.0 readers: ERR_STREAM_PROTOCOL at the ABORT.)',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}
recordedThen('bad-eof-inside-section', 'EOF inside an open section, without ABORT.', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_START, section(T.SECTION_START, { sectionId: 1, idstr: 'cpu0', payload: Buffer.from('a') }));
  s.frame(T.EOF, empty(), { expectFrame: false });
});
recordedThen('bad-section-after-abort', 'A section after ABORT: after ABORT only PING, PONG and EOF may come.', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.ABORT, abort('ERR_TIMEOUT', 'gave up'));
  s.frame(T.SECTION_FULL, fullCpu0(), { expectFrame: false });
});
recordedThen('bad-eof-before-end-of-state', 'HELLO, PLAN, EOF: a main stream ends after END_OF_STATE, or after ABORT.', 'ERR_STREAM_PROTOCOL', (s) => s.frame(T.EOF, empty(), { expectFrame: false }));
recordedThen('bad-commit-before-end-of-state', 'COMMIT before END_OF_STATE.', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.COMMIT, empty(), { expectFrame: false });
});
recordedThen('bad-abort-after-commit', 'ABORT after COMMIT: after COMMIT only PING, PONG and EOF may come.', 'ERR_STREAM_PROTOCOL', (s) => {
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5));
  s.frame(T.COMMIT, empty());
  s.frame(T.ABORT, abort('ERR_X', 'too late'), { expectFrame: false });
});
{
  const s = new StreamBuilder();
  s.frame(T.EOF, empty(), { expectFrame: false });
  vectors.push({
    name: 'bad-eof-before-hello',
    description: 'MAGIC EOF on a main stream: EOF before HELLO.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', 8),
  });
}

// PLAN's version and features (a recorded stream has no WELCOME to check them against).
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ min: 1, max: 2, features: BODY_CRC, canPassFds: 0, offers: [{ ...stateOffer, id: 'cpu0' }] }));
  const at = s.length;
  s.frame(T.PLAN, plan({ version: 2, features: BODY_CRC, devices: [{ kind: 'state', id: 'cpu0' }] }), { expectFrame: false });
  vectors.push({
    name: 'bad-plan-version',
    description: 'HELLO offers versions 1..2, PLAN says its frames use version 2, which a version 1 reader cannot read.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_VERSION', at),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: BODY_CRC, canPassFds: 0, offers: [{ ...stateOffer, id: 'cpu0' }] }));
  const at = s.length;
  s.frame(T.PLAN, plan({ features: BODY_CRC | MEMFD_PAYLOAD, devices: [{ kind: 'state', id: 'cpu0' }] }), { expectFrame: false });
  vectors.push({
    name: 'bad-plan-features',
    description: "PLAN's features (MEMFD_PAYLOAD|BODY_CRC) are not a subset of HELLO's (BODY_CRC).",
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', at),
  });
}

// Field encodings: str is valid UTF-8 (a NUL is valid UTF-8), a boolean is 0 or 1,
// json is RFC 8259 JSON text of an object.
/** A HELLO body laid out by hand: no offers or one offer (kind "state") with the given id bytes, and the given info bytes. */
const rawHello = (o: { id?: Buffer; info?: Buffer; offerCount?: number }) =>
  Buffer.concat([
    u16(1),
    u16(1),
    u32(BODY_CRC),
    u8(0),
    u8(0),
    u32(0xffffffff),
    blob(Buffer.alloc(0)),
    u32(o.offerCount ?? (o.id ? 1 : 0)),
    ...(o.id ? [str('state'), u16(o.id.length), o.id, u32(0), u32(1), u32(0), u8(2)] : []),
    blob(o.info ?? Buffer.alloc(0)),
  ]);
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, { bytes: rawHello({ id: Buffer.from([0x63, 0xff]) }), decoded: {} }, { expectFrame: false });
  vectors.push({ name: 'bad-str-utf8', description: 'An offer id that is not UTF-8 (63 ff).', direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_PROTOCOL', 8) });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, { bytes: rawHello({ id: Buffer.from([0x63, 0xed, 0xa0, 0x80]) }), decoded: {} }, { expectFrame: false });
  vectors.push({
    name: 'bad-str-surrogate',
    description: 'An offer id holding an encoded UTF-16 surrogate (ed a0 80), which is not UTF-8.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', 8),
  });
}
{
  const s = recorded([{ kind: 'state', id: 'a\u0000b' }]);
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 1, idstr: 'a\u0000b', payload: regs }));
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-str-nul',
    description: 'A device id with a NUL inside ("a\\u0000b"): valid UTF-8, so readers accept it (writers should not write one).',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: BODY_CRC, canPassFds: 0, offers: [{ ...stateOffer, id: 'cpu0' }] }));
  const at = s.length;
  s.frame(T.PLAN, plan({ features: BODY_CRC, devices: [{ kind: 'state', id: 'cpu0', withFds: 2 }] }), { expectFrame: false });
  vectors.push({
    name: 'bad-bool-with-fds',
    description: 'A planned device with withFds 2: a boolean is 0 or 1.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', at),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, hello({ features: BODY_CRC, canPassFds: 2, offers: [] }), { expectFrame: false });
  vectors.push({
    name: 'bad-bool-can-pass-fds',
    description: "HELLO's canPassFds is 2: a boolean is 0 or 1.",
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', 8),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcome({ features: BODY_CRC, canPassFds: 2, answers: [{ id: 'cpu0', decision: 1 }] }), { expectFrame: false });
  vectors.push({ name: 'bad-return-bool', description: "WELCOME's canPassFds is 2: a boolean is 0 or 1.", direction: 'return', reader: 'source', stream: s, expect: err(s, 'ERR_STREAM_PROTOCOL', 8) });
}
for (const [name, text, why] of [
  ['bad-json-nan', '{"a":NaN}', 'NaN is not JSON (RFC 8259)'],
  ['bad-json-null', 'null', 'a non-empty JSON null is not an object (length 0 is the only "none")'],
  ['bad-json-utf8', '{"a":"\xff"}', 'JSON text that is not UTF-8'],
] as const) {
  const s = new StreamBuilder();
  s.frame(T.HELLO, { bytes: rawHello({ info: Buffer.from(text, 'latin1') }), decoded: {} }, { expectFrame: false });
  vectors.push({ name, description: `HELLO's info is ${JSON.stringify(text)}: ${why}.`, direction: 'main', reader: 'inspect', stream: s, expect: err(s, 'ERR_STREAM_PROTOCOL', 8) });
}

{
  const s = new StreamBuilder();
  s.frame(T.HELLO, {
    bytes: rawHello({ id: Buffer.from('cpu0'), info: Buffer.from('{"a":1,"a":2}') }),
    decoded: {
      minVersion: 1,
      maxVersion: 1,
      features: BODY_CRC,
      canPassFds: 0,
      fdBudget: 0xffffffff,
      probe: null,
      offers: [{ kind: 'state', id: 'cpu0', instance: 0, version: 1, fdCount: 0, flags: 2 }],
      info: { a: 2 },
    },
  });
  s.frame(T.PLAN, plan({ features: BODY_CRC, devices: [{ kind: 'state', id: 'cpu0' }] }));
  s.frame(T.SECTION_FULL, fullCpu0());
  s.frame(T.END_OF_STATE, endOfState(1, 0, 5));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-json-duplicate-name',
    description: 'HELLO\'s info is {"a":1,"a":2}: duplicate names are accepted, the last one wins ({"a":2}).',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}

// Limits come before the fit: a length or count over its limit is ERR_STREAM_TOO_LARGE
// even when the bytes behind it are too few.
{
  const s = new StreamBuilder();
  const body = Buffer.concat([rawHello({}).subarray(0, 18), u32(1), str('state'), u16(5000), Buffer.alloc(16, 0x61)]);
  s.frame(T.HELLO, { bytes: body, decoded: {} }, { expectFrame: false });
  vectors.push({
    name: 'bad-str-over-limit-short',
    description: 'An offer id whose length (5000) is over the str limit (4096), with only 16 bytes behind it: the limit is checked first.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_TOO_LARGE', 8),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.HELLO, { bytes: rawHello({ offerCount: 70000 }), decoded: {} }, { expectFrame: false });
  vectors.push({
    name: 'bad-count-over-limit-short',
    description: 'offerCount 70000 (over the 65,536 limit) in a body with room for none: the limit is checked first.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_TOO_LARGE', 8),
  });
}
{
  const s = new StreamBuilder(null).raw(Buffer.from([0x89, 0x42, 0x58]));
  vectors.push({
    name: 'bad-magic-short',
    description: 'Three bytes that already differ from the magic, then the end: the magic is judged on all 8 bytes, so this is a truncation.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_TRUNCATED', 3),
  });
}

// ---- staged backends (STAGED)

/** A live handover with STAGED: the generic device's fds go in STAGE before FREEZE; the VMM state is precopied (its section open across FREEZE). */
function stagedHandover(o: { sectionFd?: boolean; eosBeforeFreeze?: boolean; noStage?: boolean } = {}): { s: StreamBuilder; welcome: Body; failAt: number } {
  const features = FDS | BODY_CRC | STAGED;
  const s = new StreamBuilder();
  s.frame(
    T.HELLO,
    hello({
      features,
      canPassFds: 1,
      fdBudget: 1000,
      probe: PROBE,
      offers: [{ kind: 'generic', id: 'gen0', fdCount: 2, flags: 1 | 2 }, stateOffer],
      info: { pid: 1234, program: 'backend-transfer', stateBytes: 10 },
    }),
    { fds: [probeFd()] },
  );
  const w = welcome({
    features,
    canPassFds: 1,
    fdBudget: 1000,
    answers: [
      { id: 'gen0', decision: 2 },
      { id: 'vmm-state', decision: 1 },
    ],
    info: { pid: 5678, probe: 'ok' },
  });
  s.frame(T.PLAN, plan({ features, devices: [{ kind: 'generic', id: 'gen0', withFds: 1, fdCount: 2 }, statePlanned], totalFds: 2 }));
  const devFds = (): FdDesc[] => [
    { kind: 'memfd', content: Buffer.from('guest ram').toString('hex'), sealed: false, note: "device fd 'ram' (staged)" },
    { kind: 'eventfd', value: 0, note: "device fd 'irq' (staged)" },
  ];
  const atts: AttIn[] = [
    { kind: 'memfd', name: 'ram', meta: null },
    { kind: 'eventfd', name: 'irq', meta: { queue: 0 } },
  ];
  if (!o.noStage) s.frame(T.STAGE, stage({ sectionId: 1, idstr: 'gen0', atts, payload: genericJson(['ram', 'irq']) }), { fds: devFds() });
  // The VMM state's first part goes before the freeze (precopy).
  s.frame(T.SECTION_START, section(T.SECTION_START, { sectionId: 2, idstr: 'vmm-state', payload: Buffer.from('early') }));
  let failAt = s.length;
  if (o.eosBeforeFreeze) {
    failAt = s.length;
    s.frame(T.SECTION_END, section(T.SECTION_END, { sectionId: 2, payload: Buffer.from('final') }));
    failAt = s.length;
    s.frame(T.END_OF_STATE, endOfState(1, 2, 10), { expectFrame: false });
    return { s, welcome: w, failAt };
  }
  s.frame(T.FREEZE, freeze([]));
  s.frame(T.SECTION_END, section(T.SECTION_END, { sectionId: 2, payload: Buffer.from('final') }));
  failAt = s.length;
  const blobState = genericJson(['ram', 'irq'], Buffer.from('vring bases'));
  if (o.sectionFd) {
    s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 3, idstr: 'gen0', atts: [{ kind: 'eventfd', name: 'irq' }], payload: blobState }), {
      fds: [{ kind: 'eventfd', value: 0, note: 'a device fd on a section under STAGED' }],
      expectFrame: false,
    });
    return { s, welcome: w, failAt };
  }
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 3, idstr: 'gen0', payload: blobState }));
  failAt = s.length;
  s.frame(T.END_OF_STATE, endOfState(2, o.noStage ? 0 : 2, 10 + blobState.length), { expectFrame: !o.noStage });
  if (o.noStage) return { s, welcome: w, failAt };
  s.frame(T.COMMIT, empty());
  s.frame(T.EOF, empty());
  return { s, welcome: w, failAt };
}

{
  const { s, welcome: w } = stagedHandover();
  vectors.push({
    name: 'valid-staged-live-handover',
    description:
      "A live handover with STAGED, read by a target that sent `welcome`: HELLO with its probe (#0), PLAN, a STAGE carrying the generic device's memfd and eventfd (#1, #2) and its static metadata, the VMM state's first part before the freeze (SECTION_START), FREEZE inside that open section (nothing dropped), its final part (SECTION_END), the device's section with its mutable state and no fds, END_OF_STATE (2 sections; totalFds 2: the stage in effect; payloadBytes of the sections only), COMMIT, EOF.",
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: ok(s),
  });
}
{
  // Two devices; both staged; at the freeze cpu1 is dropped and cpu0 staged again (its fd changed).
  const features = FDS | BODY_CRC | STAGED;
  const s = new StreamBuilder();
  s.frame(
    T.HELLO,
    hello({
      features,
      canPassFds: 1,
      offers: [
        { kind: 'generic', id: 'cpu0', fdCount: 1, flags: 1 },
        { kind: 'generic', id: 'cpu1', fdCount: 1, flags: 1 },
      ],
    }),
  );
  s.frame(
    T.PLAN,
    plan({
      features,
      devices: [
        { kind: 'generic', id: 'cpu0', withFds: 1, fdCount: 1 },
        { kind: 'generic', id: 'cpu1', withFds: 1, fdCount: 1 },
      ],
      totalFds: 2,
    }),
  );
  const ev = (note: string): FdDesc[] => [{ kind: 'eventfd', value: 1, note }];
  s.frame(T.STAGE, stage({ sectionId: 1, idstr: 'cpu0', atts: [{ kind: 'eventfd', name: 'kick' }], payload: genericJson(['kick']) }), { fds: ev("cpu0's kick, staged") });
  s.frame(T.STAGE, stage({ sectionId: 2, idstr: 'cpu1', atts: [{ kind: 'eventfd', name: 'kick' }], payload: genericJson(['kick']) }), { fds: ev("cpu1's kick, staged") });
  s.frame(T.FREEZE, freeze([{ id: 'cpu1', reason: 'unplugged after it was staged' }]));
  s.frame(T.STAGE, stage({ sectionId: 3, idstr: 'cpu0', atts: [{ kind: 'eventfd', name: 'kick' }], payload: genericJson(['kick']) }), { fds: ev("cpu0's new kick: staged again, replacing #0") });
  s.frame(T.SECTION_FULL, section(T.SECTION_FULL, { sectionId: 4, idstr: 'cpu0', payload: regs }));
  s.frame(T.END_OF_STATE, endOfState(1, 1, 5));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-staged-restage-and-drop',
    description:
      'STAGED, staged then changed: cpu0 and cpu1 are staged (fds #0, #1); FREEZE drops cpu1 (its staged fd is stale: the target closes it); cpu0 is staged again after FREEZE (#2 replaces #0); only cpu0 has a section; END_OF_STATE counts 1 section and 1 fd (the stage in effect).',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: ok(s),
  });
}
{
  const { s, welcome: w, failAt } = stagedHandover({ sectionFd: true });
  vectors.push({
    name: 'bad-staged-section-fd',
    description: 'STAGED: a section carries a device fd (they go in STAGE only).',
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: err(s, 'ERR_STREAM_FD_EXTRA', failAt),
  });
}
{
  const { s, welcome: w, failAt } = stagedHandover({ eosBeforeFreeze: true });
  vectors.push({
    name: 'bad-staged-eos-before-freeze',
    description: 'STAGED: END_OF_STATE without FREEZE.',
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', failAt),
  });
}
{
  const { s, welcome: w, failAt } = stagedHandover({ noStage: true });
  vectors.push({
    name: 'bad-staged-never-staged',
    description: 'STAGED: END_OF_STATE although the device planned with fds was never staged.',
    direction: 'main',
    reader: 'target',
    welcome: w.decoded,
    stream: s,
    expect: err(s, 'ERR_STREAM_FD_MISSING', failAt),
  });
}
{
  const s = recorded([{ kind: 'generic', id: 'cpu0' }]);
  const at = s.length;
  s.frame(T.STAGE, stage({ sectionId: 1, idstr: 'cpu0', atts: [], payload: regs }), { expectFrame: false });
  vectors.push({
    name: 'bad-stage-without-feature',
    description: 'A STAGE frame although PLAN has no STAGED feature.',
    direction: 'main',
    reader: 'inspect',
    stream: s,
    expect: err(s, 'ERR_STREAM_PROTOCOL', at),
  });
}
{
  const s = new StreamBuilder();
  s.frame(T.WELCOME, welcome({ features: FDS | BODY_CRC | STAGED, canPassFds: 1, fdBudget: 1000, answers: [{ id: 'gen0', decision: 2 }], info: { pid: 5678, probe: 'ok' } }));
  s.frame(T.ACK, ack(5, '', 1));
  s.frame(T.ACK, ack(3));
  s.frame(T.ACK, ack(4));
  s.frame(T.EOF, empty());
  vectors.push({
    name: 'valid-return-staged',
    description: 'A target with STAGED: ACK(STAGED) for STAGE section 1, then after END_OF_STATE only ACK(ADOPTED), then ACK(COMMITTED).',
    direction: 'return',
    reader: 'source',
    stream: s,
    expect: ok(s),
  });
}

// ---------------------------------------------------------------- output

function files(): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const index: Record<string, unknown>[] = [];
  for (const v of vectors) {
    const bytes = v.stream.bytes();
    const meta = {
      name: v.name,
      description: v.description,
      file: `${v.name}.bin`,
      bytes: bytes.length,
      sha256: sha256(bytes),
      direction: v.direction,
      reader: v.reader,
      ...(v.welcome ? { welcome: v.welcome } : {}),
      fds: v.stream.fds,
      fdBatches: v.stream.batches,
      expect: v.expect,
      expectWithoutFds: v.expectWithoutFds ?? v.expect,
    };
    out.set(`${v.name}.bin`, bytes);
    out.set(`${v.name}.json`, Buffer.from(`${JSON.stringify(meta, null, 1)}\n`));
    index.push({ name: v.name, valid: v.expect.ok, direction: v.direction, reader: v.reader });
  }
  out.set('index.json', Buffer.from(`${JSON.stringify(index, null, 1)}\n`));
  return out;
}

const want = files();
if (process.argv.includes('--check')) {
  const stale: string[] = [];
  for (const [name, bytes] of want) {
    const p = join(OUT, name);
    if (!existsSync(p) || !readFileSync(p).equals(bytes)) stale.push(name);
  }
  const extra = existsSync(OUT) ? readdirSync(OUT).filter((f) => (f.endsWith('.bin') || f.endsWith('.json')) && !want.has(f)) : [];
  if (stale.length || extra.length) {
    console.error(
      `docs/vectors is not up to date: ${[...stale.map((s) => `${s} differs`), ...extra.map((e) => `${e} is not generated`)].join(', ')}; run node --import tsx scripts/conformance-vectors.ts`,
    );
    process.exit(1);
  }
  console.log(`docs/vectors: ${vectors.length} vectors up to date`);
} else {
  mkdirSync(OUT, { recursive: true });
  for (const [name, bytes] of want) writeFileSync(join(OUT, name), bytes);
  console.log(`wrote ${vectors.length} vectors to docs/vectors/`);
}
