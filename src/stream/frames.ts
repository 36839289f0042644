// The frame types of the stream, each in one place: its number, its body codec
// (size, encode, decode side by side; section frames and STAGE share the section
// prefix codec) and its entry in the frame table (FRAME_TABLE, at the end), which
// the reader and the writer both read. FrameType, FRAME_NAMES and the body type of
// each frame (FrameBodies) are derived from the table (docs/architecture.md,
// "Adding a frame type"). An entry says what the generic checks need: who may
// receive the frame, where it may come in the order, how many fds and which flags
// it may carry, whether its body is always CRC'd or only with BODY_CRC, the feature
// it needs, and its body codec; and, for a frame that is no more than its body,
// the item the reader yields for it. What no table can say simply (HELLO's probe,
// a section's device bookkeeping) stays in the reader's handler for that frame;
// the reader's handler map is typed by FrameName, so a new entry without `item`
// does not compile until the reader handles it.
import { BackendTransferError } from '../errors.js';
import { BodyWriter, jsonBytes, protocolError, tooLarge, utf8, type Codec, type Cursor } from './cursor.js';
import { answerCodec, attachmentCodec, droppedDeviceCodec, offerCodec, plannedDeviceCodec, sizeOfAll } from './structs.js';
import {
  AttachmentRole,
  Features,
  FrameFlags,
  PROBE_SIZE,
  type Abort,
  type Ack,
  type AckStageCode,
  type Answer,
  type AttachmentHeader,
  type DroppedDevice,
  type EndOfState,
  type Freeze,
  type Hello,
  type Nack,
  type Offer,
  type Ping,
  type Plan,
  type PlannedDevice,
  type SectionHeader,
  type Welcome,
} from './wire.js';

/** Where a frame comes in the order of a stream (docs/stream-format.md, "Order"). */
export const OrderPhase = {
  /** HELLO, WELCOME, PLAN: each once, in this order. */
  HANDSHAKE: 0,
  /** Sections, STAGE, FREEZE, END_OF_STATE: after PLAN, before END_OF_STATE is done. */
  STATE: 1,
  /** COMMIT, ABORT: end the state; only PING, PONG and EOF follow. */
  END: 2,
  /** ACK, NACK, PING, PONG: any time after the handshake (a NACK also in place of WELCOME). */
  CONTROL: 3,
  /** EOF: last. */
  FINAL: 4,
} as const;
export type OrderPhaseCode = (typeof OrderPhase)[keyof typeof OrderPhase];

export interface FrameDef {
  readonly code: number;
  readonly name: FrameName;
  /** 'main': source → target only; 'return': target → source only; 'both'. */
  readonly receivedOn: 'main' | 'return' | 'both';
  readonly phase: OrderPhaseCode;
  /** 'always': the body CRC is checked whatever was negotiated; 'feature': only with BODY_CRC. */
  readonly crc: 'always' | 'feature';
  /** The most fds one frame may declare (the reader's maxFdsPerFrame applies on top). */
  readonly maxFds: number;
  /** Header flags the frame may carry. */
  readonly flags: number;
  /** Feature bits that must be in use for this frame to come at all (0: none). */
  readonly requires: number;
  /** May come inside an open section (between SECTION_START and SECTION_END). */
  readonly inSection: boolean;
  /** May come after COMMIT or ABORT. */
  readonly afterEnd: boolean;
  /** May come after a NACK in place of WELCOME (return path). */
  readonly afterRefusal: boolean;
  /** The body codec (size, encode, decode); null where the body is laid out with the header (section frames, STAGE: encodeSectionPrefix) or empty. */
  readonly codec: Codec<unknown> | null;
  /** The item the reader yields for the frame, for a frame that is no more than its body; else the reader's handler makes it. */
  readonly item: ((value: unknown) => { type: string }) | null;
}

// ---------------------------------------------------------------- codecs, in the order of the frames

export const helloCodec: Codec<Hello> = {
  size(h) {
    const size = 2 + 2 + 4 + 1 + 1 + 4 + 4 + 4 + 4 + sizeOfAll(offerCodec, h.offers) + jsonBytes(h.info, 'info').length;
    const probe = h.probe ? h.probe.length : 0;
    if (probe !== 0 && probe !== PROBE_SIZE) throw BackendTransferError.invalidArgument(`the HELLO probe is ${PROBE_SIZE} bytes`);
    return size + probe;
  },
  encode(w, h) {
    w.u16(h.minVersion, 'minVersion');
    w.u16(h.maxVersion, 'maxVersion');
    w.u32(h.features);
    w.u8(h.canPassFds ? 1 : 0);
    w.u8(0);
    w.u32(h.fdBudget, 'fdBudget');
    w.blob(h.probe ? Buffer.from(h.probe) : Buffer.alloc(0));
    w.u32(h.offers.length);
    for (const o of h.offers) offerCodec.encode(w, o);
    w.blob(jsonBytes(h.info, 'info'));
  },
  decode(c) {
    const minVersion = c.u16('minVersion');
    const maxVersion = c.u16('maxVersion');
    const features = c.u32('features');
    const canPassFds = c.bool('canPassFds');
    c.u8('reserved');
    const fdBudget = c.u32('fdBudget');
    const probeLen = c.u32('probe length');
    if (probeLen !== 0 && probeLen !== PROBE_SIZE) throw protocolError(`HELLO probe of ${probeLen} bytes (must be 0 or ${PROBE_SIZE})`);
    c.need(probeLen, 'probe');
    const probe = probeLen ? Buffer.from(c.buf.subarray(c.pos, c.pos + probeLen)) : null;
    c.pos += probeLen;
    const n = c.count('offer', c.limits.maxDevices, 17);
    const offers: Offer[] = [];
    for (let i = 0; i < n; i++) offers.push(offerCodec.decode(c));
    const info = c.json('info', c.limits.maxMeta);
    c.finish('HELLO');
    return { minVersion, maxVersion, features, canPassFds, fdBudget, probe, offers, info };
  },
};

export const welcomeCodec: Codec<Welcome> = {
  size: (wl) => 2 + 4 + 1 + 1 + 4 + 4 + sizeOfAll(answerCodec, wl.answers) + 4 + jsonBytes(wl.info, 'info').length,
  encode(w, wl) {
    w.u16(wl.version);
    w.u32(wl.features);
    w.u8(wl.canPassFds ? 1 : 0);
    w.u8(0);
    w.u32(wl.fdBudget, 'fdBudget');
    w.u32(wl.answers.length);
    for (const a of wl.answers) answerCodec.encode(w, a);
    w.blob(jsonBytes(wl.info, 'info'));
  },
  decode(c) {
    const version = c.u16('version');
    const features = c.u32('features');
    const canPassFds = c.bool('canPassFds');
    c.u8('reserved');
    const fdBudget = c.u32('fdBudget');
    const n = c.count('answer', c.limits.maxDevices, 16);
    const answers: Answer[] = [];
    for (let i = 0; i < n; i++) answers.push(answerCodec.decode(c));
    const info = c.json('info', c.limits.maxMeta);
    c.finish('WELCOME');
    return { version, features, canPassFds, fdBudget, answers, info };
  },
};

export const planCodec: Codec<Plan> = {
  size: (p) => 2 + 4 + 4 + 4 + sizeOfAll(plannedDeviceCodec, p.devices),
  encode(w, p) {
    w.u16(p.version);
    w.u32(p.features);
    w.u32(p.totalFds);
    w.u32(p.devices.length);
    for (const d of p.devices) plannedDeviceCodec.encode(w, d);
  },
  decode(c) {
    const version = c.u16('version');
    const features = c.u32('features');
    const totalFds = c.u32('totalFds');
    if (totalFds > c.limits.maxFdsPerStream) throw tooLarge('planned fds', totalFds, c.limits.maxFdsPerStream);
    const n = c.count('planned device', c.limits.maxDevices, 17);
    const devices: PlannedDevice[] = [];
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const d = plannedDeviceCodec.decode(c);
      sum += d.fdCount;
      devices.push(d);
    }
    c.finish('PLAN');
    if (sum !== totalFds) throw protocolError(`PLAN says ${totalFds} fds but its devices add up to ${sum}`);
    return { version, features, totalFds, devices };
  },
};

/**
 * The body of a section (or STAGE) frame up to, not including, its inline payload
 * bytes. Its layout depends on the frame (START and FULL open the section) and on
 * PAYLOAD_IN_MEMFD, so it is a codec per (type, inMemfd); the decoder also checks
 * the attachments against the header's fd count.
 */
export function encodeSectionPrefix(type: number, s: SectionHeader, inMemfd: boolean): Buffer {
  const opens = opensSection(type);
  const idstr = opens ? utf8(s.idstr ?? '', 'idstr') : null;
  let size = 4 + 2 + 4 + (inMemfd ? 4 : 0) + sizeOfAll(attachmentCodec, s.attachments);
  if (opens) size += 4 + 4 + 2 + idstr!.length;
  const w = new BodyWriter(size);
  w.u32(s.sectionId);
  if (opens) {
    w.u32(s.instanceId ?? 0, 'instance');
    w.u32(s.versionId ?? 0, 'version');
    w.str(idstr!);
  }
  w.u16(s.attachments.length);
  for (const a of s.attachments) attachmentCodec.encode(w, a);
  w.u32(s.payloadLength, 'payloadLength');
  if (inMemfd) w.u32(s.payloadCrc ?? 0);
  return w.done();
}

export function decodeSectionPrefix(c: Cursor, type: number, flags: number, fdCount: number): SectionHeader {
  // A STAGE body is laid out as a SECTION_FULL body (its payload always inline).
  if (type === FrameType.STAGE) type = FrameType.SECTION_FULL;
  if (!isSectionFrame(type)) throw new Error('internal: not a section frame');
  const sectionId = c.u32('sectionId');
  const s: SectionHeader = { sectionId, attachments: [], payloadLength: 0 };
  if (opensSection(type)) {
    s.instanceId = c.u32('instanceId');
    s.versionId = c.u32('versionId');
    s.idstr = c.str('idstr');
  }
  const n = c.u16('attachment count');
  if (n !== fdCount) throw protocolError(`section frame declares ${n} attachments but its header carries ${fdCount} fds`);
  const atts: AttachmentHeader[] = [];
  for (let i = 0; i < n; i++) atts.push(attachmentCodec.decode(c));
  s.attachments = atts;
  s.payloadLength = c.u32('payloadLength');
  const inMemfd = (flags & 1) !== 0;
  if (inMemfd) {
    s.payloadCrc = c.u32('payloadCrc');
    const last = atts[atts.length - 1];
    if (!last || last.role !== AttachmentRole.PAYLOAD || last.kind !== 'memfd') throw protocolError('PAYLOAD_IN_MEMFD without a memfd payload attachment last');
    if (atts.filter((a) => a.role === AttachmentRole.PAYLOAD).length !== 1) throw protocolError('more than one payload attachment');
    if (s.payloadLength > c.limits.maxMemfdPayload) throw tooLarge('memfd payload', s.payloadLength, c.limits.maxMemfdPayload);
  } else {
    if (atts.some((a) => a.role === AttachmentRole.PAYLOAD)) throw protocolError('payload attachment without PAYLOAD_IN_MEMFD');
    if (s.payloadLength !== c.end - c.pos) throw protocolError(`payloadLength ${s.payloadLength} but ${c.end - c.pos} payload bytes in the body`);
  }
  return s;
}

export const freezeCodec: Codec<Freeze> = {
  size: (f) => 4 + sizeOfAll(droppedDeviceCodec, f.dropped),
  encode(w, f) {
    w.u32(f.dropped.length);
    for (const d of f.dropped) droppedDeviceCodec.encode(w, d);
  },
  decode(c) {
    const n = c.count('dropped device', c.limits.maxDevices, 8);
    const dropped: DroppedDevice[] = [];
    for (let i = 0; i < n; i++) dropped.push(droppedDeviceCodec.decode(c));
    c.finish('FREEZE');
    return { dropped };
  },
};

export const endOfStateCodec: Codec<EndOfState> = {
  size: () => 16,
  encode(w, e) {
    w.u32(e.sectionCount);
    w.u32(e.totalFds);
    w.u64(e.payloadBytes, 'payloadBytes');
  },
  decode(c) {
    const e = { sectionCount: c.u32('sectionCount'), totalFds: c.u32('totalFds'), payloadBytes: c.u64('payloadBytes') };
    c.finish('END_OF_STATE');
    return e;
  },
};

export const ackCodec: Codec<Ack> = {
  size: (a) => 1 + 4 + 2 + utf8(a.detail, 'ack detail').length,
  encode(w, a) {
    w.u8(a.stage);
    w.u32(a.sectionId);
    w.str(utf8(a.detail, 'ack detail'));
  },
  decode(c) {
    const stage = c.u8('stage');
    if (stage < 1 || stage > 5) throw protocolError(`unknown ACK stage ${stage}`);
    const a = { stage: stage as AckStageCode, sectionId: c.u32('sectionId'), detail: c.str('detail') };
    c.finish('ACK');
    return a;
  },
};

export const nackCodec: Codec<Nack> = {
  size: (n) => 2 + utf8(n.code, 'nack code').length + 2 + utf8(n.reason.slice(0, 2000), 'nack reason').length + 4,
  encode(w, n) {
    w.str(utf8(n.code, 'nack code'));
    w.str(utf8(n.reason.slice(0, 2000), 'nack reason'));
    w.u32(n.sectionId);
  },
  decode(c) {
    const n = { code: c.str('code'), reason: c.str('reason'), sectionId: c.u32('sectionId') };
    c.finish('NACK');
    return n;
  },
};

/** PING and PONG. */
export const pingCodec: Codec<Ping> = {
  size: () => 16,
  encode(w, p) {
    w.u64(p.token);
    w.u64(p.timeNs);
  },
  decode(c) {
    const p = { token: c.u64('token'), timeNs: c.u64('timeNs') };
    c.finish('PING');
    return p;
  },
};

export const abortCodec: Codec<Abort> = {
  size: (a) => 2 + utf8(a.code, 'abort code').length + 2 + utf8(a.reason.slice(0, 2000), 'abort reason').length,
  encode(w, a) {
    w.str(utf8(a.code, 'abort code'));
    w.str(utf8(a.reason.slice(0, 2000), 'abort reason'));
  },
  decode(c) {
    const a = { code: c.str('code'), reason: c.str('reason') };
    c.finish('ABORT');
    return a;
  },
};

// ---------------------------------------------------------------- the table

const ANY = Number.MAX_SAFE_INTEGER;

/** What an entry of the table gives; the rest has defaults: CRC only with BODY_CRC, no fds, no flags, no feature needed, not in a section, not after the end or a refusal, no item. */
interface Entry {
  readonly code: number;
  readonly receivedOn: FrameDef['receivedOn'];
  readonly phase: OrderPhaseCode;
  readonly crc?: FrameDef['crc'];
  readonly maxFds?: number;
  readonly flags?: number;
  readonly requires?: number;
  readonly inSection?: boolean;
  readonly afterEnd?: boolean;
  readonly afterRefusal?: boolean;
  /** Any codec (its decode gives the frame's body type, FrameBodies), or null. */
  readonly codec: { decode(c: Cursor): unknown } | null;
  readonly item?: (value: never) => { type: string };
}

const section = { receivedOn: 'main', phase: OrderPhase.STATE, maxFds: ANY, flags: FrameFlags.PAYLOAD_IN_MEMFD, codec: null } as const;

/** One entry per frame type, by name, in the order of their codes. */
const FRAME_TABLE = {
  HELLO: { code: 0x01, receivedOn: 'main', phase: OrderPhase.HANDSHAKE, crc: 'always', maxFds: 1, codec: helloCodec },
  WELCOME: { code: 0x02, receivedOn: 'return', phase: OrderPhase.HANDSHAKE, crc: 'always', codec: welcomeCodec },
  PLAN: { code: 0x03, receivedOn: 'main', phase: OrderPhase.HANDSHAKE, crc: 'always', codec: planCodec },
  SECTION_START: { ...section, code: 0x10 },
  SECTION_PART: { ...section, code: 0x11, inSection: true },
  SECTION_END: { ...section, code: 0x12, inSection: true },
  SECTION_FULL: { ...section, code: 0x13 },
  /** With STAGED: one device's backend fds and static metadata, before the freeze. */
  STAGE: { code: 0x14, receivedOn: 'main', phase: OrderPhase.STATE, maxFds: ANY, requires: Features.STAGED, codec: null },
  /** With STAGED: the source froze; the switch-over follows (with the devices it dropped). It may come inside the open section of a precopied state. */
  FREEZE: { code: 0x15, receivedOn: 'main', phase: OrderPhase.STATE, requires: Features.STAGED, inSection: true, codec: freezeCodec },
  END_OF_STATE: { code: 0x20, receivedOn: 'main', phase: OrderPhase.STATE, codec: endOfStateCodec },
  ACK: { code: 0x30, receivedOn: 'return', phase: OrderPhase.CONTROL, codec: ackCodec },
  NACK: { code: 0x31, receivedOn: 'return', phase: OrderPhase.CONTROL, afterRefusal: true, codec: nackCodec, item: (nack: Nack) => ({ type: 'nack' as const, nack }) },
  PING: { code: 0x32, receivedOn: 'both', phase: OrderPhase.CONTROL, inSection: true, afterEnd: true, codec: pingCodec, item: (ping: Ping) => ({ type: 'ping' as const, ping }) },
  PONG: { code: 0x33, receivedOn: 'both', phase: OrderPhase.CONTROL, inSection: true, afterEnd: true, codec: pingCodec, item: (ping: Ping) => ({ type: 'pong' as const, ping }) },
  COMMIT: { code: 0x40, receivedOn: 'main', phase: OrderPhase.END, codec: null, item: () => ({ type: 'commit' as const }) },
  /** ABORT may come inside an open section (a source whose state failed midway says why). */
  ABORT: { code: 0x41, receivedOn: 'main', phase: OrderPhase.END, inSection: true, codec: abortCodec, item: (abort: Abort) => ({ type: 'abort' as const, abort }) },
  EOF: { code: 0x7f, receivedOn: 'both', phase: OrderPhase.FINAL, afterEnd: true, afterRefusal: true, codec: null },
} as const satisfies Record<string, Entry>;

type Table = typeof FRAME_TABLE;
export type FrameName = keyof Table;

/** The frame type codes, by name (derived from the table). */
export const FrameType = Object.fromEntries((Object.keys(FRAME_TABLE) as FrameName[]).map((name) => [name, FRAME_TABLE[name].code])) as { readonly [K in FrameName]: Table[K]['code'] };
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];

export const FRAME_NAMES: Record<number, string> = Object.fromEntries(Object.entries(FrameType).map(([k, v]) => [v, k]));

/** The decoded body of each frame type, from its codec (undefined: laid out with the header, or empty). */
export type FrameBodies = { [K in FrameName]: Table[K]['codec'] extends Codec<infer T> ? T : undefined };

/** The frames the table yields an item for (no more than their body); the reader handles all others. */
export type ItemFrameName = { [K in FrameName]: Table[K] extends { item: unknown } ? K : never }[FrameName];
/** The items the table yields (part of the reader's StreamItem). */
export type TableItem = { [K in ItemFrameName]: Table[K] extends { item: (v: never) => infer I } ? I : never }[ItemFrameName];

/** The table, by frame type code. */
export const FRAMES: ReadonlyMap<number, FrameDef> = new Map(
  (Object.keys(FRAME_TABLE) as FrameName[]).map((name) => {
    const e: Entry = FRAME_TABLE[name];
    // Every entry made into the same shape (one hidden class: the reader's property reads stay monomorphic).
    const def: FrameDef = {
      code: e.code,
      name,
      receivedOn: e.receivedOn,
      phase: e.phase,
      crc: e.crc ?? 'feature',
      maxFds: e.maxFds ?? 0,
      flags: e.flags ?? 0,
      requires: e.requires ?? 0,
      inSection: e.inSection ?? false,
      afterEnd: e.afterEnd ?? false,
      afterRefusal: e.afterRefusal ?? false,
      codec: e.codec as Codec<unknown> | null,
      item: (e.item as FrameDef['item'] | undefined) ?? null,
    };
    return [def.code, Object.freeze(def)];
  }),
);

/** The entry of a frame type, or undefined for an unknown code. */
export function frameDef(type: number): FrameDef | undefined {
  return FRAMES.get(type);
}

/** Whether a frame's body carries a CRC the reader checks: always for the handshake, else with BODY_CRC. */
export function bodyHasCrc(type: number, features: number): boolean {
  return FRAMES.get(type)?.crc === 'always' || (features & Features.BODY_CRC) !== 0;
}

/** The names of feature bits, for messages ("STAGED", "BODY_CRC | STAGED"). */
export function featureNames(bits: number): string {
  return (Object.keys(Features) as (keyof typeof Features)[]).filter((k) => (bits & Features[k]) !== 0).join(' | ');
}

/** The place of a frame type in the order (undefined for an unknown code). */
export function phaseOf(type: number): OrderPhaseCode | undefined {
  return FRAMES.get(type)?.phase;
}

export function isSectionFrame(type: number): boolean {
  return type >= FrameType.SECTION_START && type <= FrameType.SECTION_FULL;
}

export function opensSection(type: number): boolean {
  return type === FrameType.SECTION_START || type === FrameType.SECTION_FULL;
}
