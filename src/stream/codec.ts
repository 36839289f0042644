// The codecs of the stream (docs/stream-format.md): the frame header, and one
// codec per struct with its size, encoder and decoder side by side (see Codec in
// cursor.ts): every value range-checked on encode, every limit checked on decode
// before anything is allocated. The frame table (frames.ts) names each frame's.
import { crc32 } from './crc.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { BodyWriter, Cursor, U32_MAX, U8_MAX, checkUint, encodeBody, hex, jsonBytes, protocolError, tooLarge, utf8, type Codec } from './cursor.js';
import {
  AttachmentRole,
  FrameType,
  PROBE_SIZE,
  HEADER_SIZE,
  attachmentKindCode,
  attachmentKindName,
  isSectionFrame,
  opensSection,
  type Abort,
  type Ack,
  type AckStageCode,
  type Answer,
  type AttachmentHeader,
  type DecisionCode,
  type DroppedDevice,
  type EndOfState,
  type Freeze,
  type Hello,
  type Nack,
  type Offer,
  type Ping,
  type Plan,
  type PlannedDevice,
  type ReasonCode,
  type SectionHeader,
  type Welcome,
} from './wire.js';

export { BodyWriter, Cursor, checkUint, encodeBody, hex, protocolError, tooLarge, type Codec } from './cursor.js';

// ---------------------------------------------------------------- frame header

export interface FrameHeader {
  type: number;
  flags: number;
  bodyLength: number;
  fdCount: number;
  firstFdSeq: number;
}

export function encodeHeader(h: FrameHeader): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE);
  b[0] = checkUint(h.type, U8_MAX, 'frame type');
  b[1] = checkUint(h.flags, U8_MAX, 'frame flags');
  b.writeUInt16LE(0, 2);
  b.writeUInt32LE(checkUint(h.bodyLength, U32_MAX, 'bodyLength'), 4);
  b.writeUInt32LE(checkUint(h.fdCount, U32_MAX, 'fdCount'), 8);
  b.writeUInt32LE(checkUint(h.firstFdSeq, U32_MAX, 'firstFdSeq'), 12);
  b.writeUInt32LE(crc32(b.subarray(0, 16)), 16);
  return b;
}

/** Decodes and checks a 20-byte header (CRC, reserved bits). Limits are the reader's business. */
export function decodeHeader(b: Uint8Array, at: number): FrameHeader {
  const view = Buffer.from(b.buffer, b.byteOffset + at, HEADER_SIZE);
  const want = view.readUInt32LE(16);
  const got = crc32(view.subarray(0, 16));
  if (want !== got) {
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_CRC, `frame header CRC mismatch (stored ${hex(want)}, computed ${hex(got)})`, {
      details: { where: 'header', stored: want, computed: got },
    });
  }
  const h: FrameHeader = { type: view[0]!, flags: view[1]!, bodyLength: view.readUInt32LE(4), fdCount: view.readUInt32LE(8), firstFdSeq: view.readUInt32LE(12) };
  if (view.readUInt16LE(2) !== 0) throw protocolError('reserved header bits are set');
  return h;
}

// ---------------------------------------------------------------- structs inside bodies

/** One device a HELLO offers. */
export const offerCodec: Codec<Offer> = {
  size: (o) => 2 + utf8(o.kind, 'offer kind').length + 2 + utf8(o.id, 'device id').length + 4 + 4 + 4 + 1,
  encode(w, o) {
    w.str(utf8(o.kind, 'offer kind'));
    w.str(utf8(o.id, 'device id'));
    w.u32(o.instance, 'instance');
    w.u32(o.version, 'version');
    w.u32(o.fdCount, 'fdCount');
    w.u8((o.wantsFds ? 1 : 0) | (o.required ? 2 : 0));
  },
  decode(c) {
    const kind = c.str('offer kind');
    const id = c.str('offer id');
    const instance = c.u32('instance');
    const version = c.u32('version');
    const fdCount = c.u32('fdCount');
    const flags = c.u8('offer flags');
    return { kind, id, instance, version, fdCount, wantsFds: (flags & 1) !== 0, required: (flags & 2) !== 0 };
  },
};

/** The WELCOME's answer to one offer. */
export const answerCodec: Codec<Answer> = {
  size: (a) => 2 + utf8(a.id, 'device id').length + 4 + 1 + 1 + 4 + 4,
  encode(w, a) {
    w.str(utf8(a.id, 'device id'));
    w.u32(a.instance, 'instance');
    w.u8(a.decision);
    w.u8(a.reason);
    w.u32(a.minVersion);
    w.u32(a.maxVersion);
  },
  decode(c) {
    const id = c.str('answer id');
    const instance = c.u32('instance');
    const decision = c.u8('decision');
    const reason = c.u8('reason');
    const minVersion = c.u32('minVersion');
    const maxVersion = c.u32('maxVersion');
    if (decision > 2) throw protocolError(`unknown decision ${decision}`);
    if (reason > 6) throw protocolError(`unknown reason ${reason}`);
    return { id, instance, decision: decision as DecisionCode, reason: reason as ReasonCode, minVersion, maxVersion };
  },
};

/** One device of a PLAN. */
export const plannedDeviceCodec: Codec<PlannedDevice> = {
  size: (d) => 2 + utf8(d.kind, 'device kind').length + 2 + utf8(d.id, 'device id').length + 4 + 4 + 1 + 4,
  encode(w, d) {
    w.str(utf8(d.kind, 'device kind'));
    w.str(utf8(d.id, 'device id'));
    w.u32(d.instance, 'instance');
    w.u32(d.version, 'version');
    w.u8(d.withFds ? 1 : 0);
    w.u32(d.fdCount);
  },
  decode(c) {
    const kind = c.str('device kind');
    const id = c.str('device id');
    const instance = c.u32('instance');
    const version = c.u32('version');
    const withFds = c.bool('withFds');
    const fdCount = c.u32('fdCount');
    if (!withFds && fdCount !== 0) throw protocolError(`planned device ${id} has ${fdCount} fds but does not move with them`);
    return { kind, id, instance, version, withFds, fdCount };
  },
};

/** One attachment (fd) of a section or STAGE frame. */
export const attachmentCodec: Codec<AttachmentHeader> = {
  size: (a) => 1 + 1 + 2 + utf8(a.name, 'attachment name').length + 4 + jsonBytes(a.meta, 'attachment meta').length,
  encode(w, a) {
    w.u8(attachmentKindCode(a.kind));
    w.u8(a.role);
    w.str(utf8(a.name, 'attachment name'));
    w.blob(jsonBytes(a.meta, 'attachment meta'));
  },
  decode(c) {
    const kindCode = c.u8('attachment kind');
    const kind = attachmentKindName(kindCode);
    if (!kind) throw protocolError(`unknown attachment kind ${kindCode}`);
    const role = c.u8('attachment role');
    if (role !== AttachmentRole.DEVICE && role !== AttachmentRole.PAYLOAD) throw protocolError(`unknown attachment role ${role}`);
    const name = c.str('attachment name');
    const meta = c.json('attachment meta', c.limits.maxMeta);
    return { kind, role, name, meta };
  },
};

/** A device FREEZE drops (at least 8 bytes: two empty strings and the instance). */
export const droppedDeviceCodec: Codec<DroppedDevice> = {
  size: (d) => 2 + utf8(d.id, 'dropped id').length + 4 + 2 + utf8(d.reason.slice(0, 1000), 'dropped reason').length,
  encode(w, d) {
    w.str(utf8(d.id, 'dropped id'));
    w.u32(d.instance, 'instance');
    w.str(utf8(d.reason.slice(0, 1000), 'dropped reason'));
  },
  decode: (c) => ({ id: c.str('dropped id'), instance: c.u32('dropped instance'), reason: c.str('dropped reason') }),
};

function sizeOfAll<T>(codec: Codec<T>, items: readonly T[]): number {
  let n = 0;
  for (const x of items) n += codec.size(x);
  return n;
}

// ---------------------------------------------------------------- frame bodies

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

// ---------------------------------------------------------------- section frames

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

// ---------------------------------------------------------------- by name (tests, fixtures, the writer)

export const encodeHello = (v: Hello): Buffer => encodeBody(helloCodec, v);
export const encodeWelcome = (v: Welcome): Buffer => encodeBody(welcomeCodec, v);
export const encodePlan = (v: Plan): Buffer => encodeBody(planCodec, v);
export const encodeFreeze = (v: Freeze): Buffer => encodeBody(freezeCodec, v);
export const encodeEndOfState = (v: EndOfState): Buffer => encodeBody(endOfStateCodec, v);
export const encodeAck = (v: Ack): Buffer => encodeBody(ackCodec, v);
export const encodeNack = (v: Nack): Buffer => encodeBody(nackCodec, v);
export const encodePing = (v: Ping): Buffer => encodeBody(pingCodec, v);
export const encodeAbort = (v: Abort): Buffer => encodeBody(abortCodec, v);
