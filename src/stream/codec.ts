// Encoding and decoding of frame headers and bodies (docs/stream-format.md).
// After compact-encoding: every encoder sizes first, then writes into one buffer;
// every decoder reads through a bounds-checked cursor and checks limits before it
// allocates.
import { crc32 } from './crc.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import {
  AttachmentRole,
  DEFAULT_LIMITS,
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
  type Ping,
  type Plan,
  type ReasonCode,
  type SectionHeader,
  type StreamLimits,
  type Welcome,
} from './wire.js';

export function protocolError(message: string, details?: Record<string, unknown>): BackendTransferError {
  return new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, message, details ? { details } : {});
}

export function tooLarge(what: string, value: number | bigint, limit: number): BackendTransferError {
  return new BackendTransferError(ErrorCodes.ERR_STREAM_TOO_LARGE, `${what} is ${value}, over the limit of ${limit}`, { details: { what, value: Number(value), limit } });
}

// ---------------------------------------------------------------- frame header

export interface FrameHeader {
  type: number;
  flags: number;
  bodyLength: number;
  fdCount: number;
  firstFdSeq: number;
}

/**
 * Checks that `v` is an integer in [0, max] before it is encoded: a value the field
 * cannot hold is ERR_INVALID_ARGUMENT, never masked or wrapped (an instance of
 * 2^32 + 7 must not go out as 7).
 */
export function checkUint(v: unknown, max: number, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) {
    throw BackendTransferError.invalidArgument(`${what} must be an integer in [0, ${max}], got ${String(v)}`);
  }
  return v;
}

const U8_MAX = 0xff;
const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;
const U64_MAX = (1n << 64n) - 1n;

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

export function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

// ---------------------------------------------------------------- body writer

class BodyWriter {
  buf: Buffer;
  pos = 0;
  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }
  // Every field is range-checked: a value it cannot hold is ERR_INVALID_ARGUMENT.
  u8(v: number, what = 'u8 field'): void {
    this.buf[this.pos++] = checkUint(v, U8_MAX, what);
  }
  u16(v: number, what = 'u16 field'): void {
    this.buf.writeUInt16LE(checkUint(v, U16_MAX, what), this.pos);
    this.pos += 2;
  }
  u32(v: number, what = 'u32 field'): void {
    this.buf.writeUInt32LE(checkUint(v, U32_MAX, what), this.pos);
    this.pos += 4;
  }
  u64(v: bigint, what = 'u64 field'): void {
    if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) throw BackendTransferError.invalidArgument(`${what} must be in [0, 2^64 - 1], got ${String(v)}`);
    this.buf.writeBigUInt64LE(v, this.pos);
    this.pos += 8;
  }
  bytes(b: Uint8Array): void {
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  str(s: Buffer): void {
    this.u16(s.length);
    this.bytes(s);
  }
  blob(b: Buffer): void {
    this.u32(b.length);
    this.bytes(b);
  }
  done(): Buffer {
    if (this.pos !== this.buf.length) throw new Error(`internal: body size ${this.pos} != ${this.buf.length}`);
    return this.buf;
  }
}

function utf8(s: string, what: string, limit = 65535): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > Math.min(limit, 65535)) throw BackendTransferError.invalidArgument(`${what} is ${b.length} bytes, over ${Math.min(limit, 65535)}`);
  return b;
}

function jsonBytes(v: Record<string, unknown> | null | undefined, what: string): Buffer {
  if (v === null || v === undefined) return Buffer.alloc(0);
  const b = Buffer.from(JSON.stringify(v), 'utf8');
  if (b.length > DEFAULT_LIMITS.maxMeta) throw BackendTransferError.invalidArgument(`${what} is ${b.length} bytes of JSON, over ${DEFAULT_LIMITS.maxMeta}`);
  return b;
}

export function encodeHello(h: Hello): Buffer {
  const offers = h.offers.map((o) => ({ o, kind: utf8(o.kind, 'offer kind'), id: utf8(o.id, 'device id') }));
  const info = jsonBytes(h.info, 'info');
  const probe = h.probe ? Buffer.from(h.probe) : Buffer.alloc(0);
  if (probe.length !== 0 && probe.length !== PROBE_SIZE) throw BackendTransferError.invalidArgument(`the HELLO probe is ${PROBE_SIZE} bytes`);
  let size = 2 + 2 + 4 + 1 + 1 + 4 + 4 + probe.length + 4 + 4 + info.length;
  for (const x of offers) size += 2 + x.kind.length + 2 + x.id.length + 4 + 4 + 4 + 1;
  const w = new BodyWriter(size);
  w.u16(h.minVersion, 'minVersion');
  w.u16(h.maxVersion, 'maxVersion');
  w.u32(h.features);
  w.u8(h.canPassFds ? 1 : 0);
  w.u8(0);
  w.u32(h.fdBudget, 'fdBudget');
  w.blob(probe);
  w.u32(offers.length);
  for (const { o, kind, id } of offers) {
    w.str(kind);
    w.str(id);
    w.u32(o.instance, 'instance');
    w.u32(o.version, 'version');
    w.u32(o.fdCount, 'fdCount');
    w.u8((o.wantsFds ? 1 : 0) | (o.required ? 2 : 0));
  }
  w.blob(info);
  return w.done();
}

export function encodeWelcome(wl: Welcome): Buffer {
  const answers = wl.answers.map((a) => ({ a, id: utf8(a.id, 'device id') }));
  const info = jsonBytes(wl.info, 'info');
  let size = 2 + 4 + 1 + 1 + 4 + 4 + 4 + info.length;
  for (const x of answers) size += 2 + x.id.length + 4 + 1 + 1 + 4 + 4;
  const w = new BodyWriter(size);
  w.u16(wl.version);
  w.u32(wl.features);
  w.u8(wl.canPassFds ? 1 : 0);
  w.u8(0);
  w.u32(wl.fdBudget, 'fdBudget');
  w.u32(answers.length);
  for (const { a, id } of answers) {
    w.str(id);
    w.u32(a.instance, 'instance');
    w.u8(a.decision);
    w.u8(a.reason);
    w.u32(a.minVersion);
    w.u32(a.maxVersion);
  }
  w.blob(info);
  return w.done();
}

export function encodePlan(p: Plan): Buffer {
  const devs = p.devices.map((d) => ({ d, kind: utf8(d.kind, 'device kind'), id: utf8(d.id, 'device id') }));
  let size = 2 + 4 + 4 + 4;
  for (const x of devs) size += 2 + x.kind.length + 2 + x.id.length + 4 + 4 + 1 + 4;
  const w = new BodyWriter(size);
  w.u16(p.version);
  w.u32(p.features);
  w.u32(p.totalFds);
  w.u32(devs.length);
  for (const { d, kind, id } of devs) {
    w.str(kind);
    w.str(id);
    w.u32(d.instance, 'instance');
    w.u32(d.version, 'version');
    w.u8(d.withFds ? 1 : 0);
    w.u32(d.fdCount);
  }
  return w.done();
}

/** The body of a section frame up to (not including) its inline payload bytes. */
export function encodeSectionPrefix(type: number, s: SectionHeader, inMemfd: boolean): Buffer {
  const opens = opensSection(type);
  const idstr = opens ? utf8(s.idstr ?? '', 'idstr') : null;
  const atts = s.attachments.map((a) => ({ a, name: utf8(a.name, 'attachment name'), meta: jsonBytes(a.meta, 'attachment meta') }));
  let size = 4 + 2 + 4 + (inMemfd ? 4 : 0);
  if (opens) size += 4 + 4 + 2 + idstr!.length;
  for (const x of atts) size += 1 + 1 + 2 + x.name.length + 4 + x.meta.length;
  const w = new BodyWriter(size);
  w.u32(s.sectionId);
  if (opens) {
    w.u32(s.instanceId ?? 0, 'instance');
    w.u32(s.versionId ?? 0, 'version');
    w.str(idstr!);
  }
  w.u16(atts.length);
  for (const { a, name, meta } of atts) {
    w.u8(attachmentKindCode(a.kind));
    w.u8(a.role);
    w.str(name);
    w.blob(meta);
  }
  w.u32(s.payloadLength, 'payloadLength');
  if (inMemfd) w.u32(s.payloadCrc ?? 0);
  return w.done();
}

export function encodeFreeze(f: Freeze): Buffer {
  const items = f.dropped.map((d) => ({ id: utf8(d.id, 'dropped id'), instance: d.instance, reason: utf8(d.reason.slice(0, 1000), 'dropped reason') }));
  let size = 4;
  for (const x of items) size += 2 + x.id.length + 4 + 2 + x.reason.length;
  const w = new BodyWriter(size);
  w.u32(items.length);
  for (const x of items) {
    w.str(x.id);
    w.u32(x.instance, 'instance');
    w.str(x.reason);
  }
  return w.done();
}

export function encodeEndOfState(e: EndOfState): Buffer {
  const w = new BodyWriter(16);
  w.u32(e.sectionCount);
  w.u32(e.totalFds);
  w.u64(e.payloadBytes, 'payloadBytes');
  return w.done();
}

export function encodeAck(a: Ack): Buffer {
  const detail = utf8(a.detail, 'ack detail');
  const w = new BodyWriter(1 + 4 + 2 + detail.length);
  w.u8(a.stage);
  w.u32(a.sectionId);
  w.str(detail);
  return w.done();
}

export function encodeNack(n: Nack): Buffer {
  const code = utf8(n.code, 'nack code');
  const reason = utf8(n.reason.slice(0, 2000), 'nack reason');
  const w = new BodyWriter(2 + code.length + 2 + reason.length + 4);
  w.str(code);
  w.str(reason);
  w.u32(n.sectionId);
  return w.done();
}

export function encodePing(p: Ping): Buffer {
  const w = new BodyWriter(16);
  w.u64(p.token);
  w.u64(p.timeNs);
  return w.done();
}

export function encodeAbort(a: Abort): Buffer {
  const code = utf8(a.code, 'abort code');
  const reason = utf8(a.reason.slice(0, 2000), 'abort reason');
  const w = new BodyWriter(2 + code.length + 2 + reason.length);
  w.str(code);
  w.str(reason);
  return w.done();
}

// ---------------------------------------------------------------- body reader

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export class Cursor {
  pos: number;
  constructor(
    readonly buf: Buffer,
    readonly limits: StreamLimits,
    start = 0,
    readonly end = buf.length,
  ) {
    this.pos = start;
  }
  need(n: number, what: string): void {
    if (this.pos + n > this.end) throw protocolError(`body too short: ${what} needs ${n} bytes at offset ${this.pos}, ${this.end - this.pos} left`);
  }
  u8(what = 'u8'): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }
  u16(what = 'u16'): number {
    this.need(2, what);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(what = 'u32'): number {
    this.need(4, what);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(what = 'u64'): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }
  str(what: string): string {
    const n = this.u16(`${what} length`);
    if (n > this.limits.maxString) throw tooLarge(what, n, this.limits.maxString);
    this.need(n, what);
    const s = this.utf8(n, what);
    this.pos += n;
    return s;
  }
  json(what: string, limit: number): Record<string, unknown> | null {
    const n = this.u32(`${what} length`);
    if (n > limit) throw tooLarge(what, n, limit);
    if (n === 0) return null;
    this.need(n, what);
    const text = this.utf8(n, what);
    this.pos += n;
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      throw protocolError(`${what} is not valid JSON`);
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw protocolError(`${what} is not a JSON object`);
    return v as Record<string, unknown>;
  }
  /** n bytes at pos as UTF-8: invalid UTF-8 is malformed (a BOM is kept, not skipped). */
  utf8(n: number, what: string): string {
    try {
      return UTF8.decode(this.buf.subarray(this.pos, this.pos + n));
    } catch {
      throw protocolError(`${what} is not valid UTF-8`);
    }
  }
  /** A boolean byte: 0 or 1; anything else is malformed. */
  bool(what: string): boolean {
    const v = this.u8(what);
    if (v > 1) throw protocolError(`${what} is ${v} (a boolean is 0 or 1)`);
    return v === 1;
  }
  count(what: string, limit: number, minBytesEach: number): number {
    const n = this.u32(`${what} count`);
    if (n > limit) throw tooLarge(`${what} count`, n, limit);
    // A count the remaining bytes cannot hold is malformed: say so before looping.
    if (n * minBytesEach > this.end - this.pos) throw protocolError(`${what} count ${n} does not fit the ${this.end - this.pos} bytes left`);
    return n;
  }
  finish(what: string): void {
    if (this.pos !== this.end) throw protocolError(`${what}: ${this.end - this.pos} unexpected trailing bytes`);
  }
}

export function decodeHello(c: Cursor): Hello {
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
  const offers = [];
  for (let i = 0; i < n; i++) {
    const kind = c.str('offer kind');
    const id = c.str('offer id');
    const instance = c.u32('instance');
    const version = c.u32('version');
    const fdCount = c.u32('fdCount');
    const flags = c.u8('offer flags');
    offers.push({ kind, id, instance, version, fdCount, wantsFds: (flags & 1) !== 0, required: (flags & 2) !== 0 });
  }
  const info = c.json('info', c.limits.maxMeta);
  c.finish('HELLO');
  return { minVersion, maxVersion, features, canPassFds, fdBudget, probe, offers, info };
}

export function decodeWelcome(c: Cursor): Welcome {
  const version = c.u16('version');
  const features = c.u32('features');
  const canPassFds = c.bool('canPassFds');
  c.u8('reserved');
  const fdBudget = c.u32('fdBudget');
  const n = c.count('answer', c.limits.maxDevices, 16);
  const answers: Answer[] = [];
  for (let i = 0; i < n; i++) {
    const id = c.str('answer id');
    const instance = c.u32('instance');
    const decision = c.u8('decision');
    const reason = c.u8('reason');
    const minVersion = c.u32('minVersion');
    const maxVersion = c.u32('maxVersion');
    if (decision > 2) throw protocolError(`unknown decision ${decision}`);
    if (reason > 6) throw protocolError(`unknown reason ${reason}`);
    answers.push({ id, instance, decision: decision as DecisionCode, reason: reason as ReasonCode, minVersion, maxVersion });
  }
  const info = c.json('info', c.limits.maxMeta);
  c.finish('WELCOME');
  return { version, features, canPassFds, fdBudget, answers, info };
}

export function decodePlan(c: Cursor): Plan {
  const version = c.u16('version');
  const features = c.u32('features');
  const totalFds = c.u32('totalFds');
  if (totalFds > c.limits.maxFdsPerStream) throw tooLarge('planned fds', totalFds, c.limits.maxFdsPerStream);
  const n = c.count('planned device', c.limits.maxDevices, 17);
  const devices = [];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const kind = c.str('device kind');
    const id = c.str('device id');
    const instance = c.u32('instance');
    const version = c.u32('version');
    const withFds = c.bool('withFds');
    const fdCount = c.u32('fdCount');
    if (!withFds && fdCount !== 0) throw protocolError(`planned device ${id} has ${fdCount} fds but does not move with them`);
    sum += fdCount;
    devices.push({ kind, id, instance, version, withFds, fdCount });
  }
  c.finish('PLAN');
  if (sum !== totalFds) throw protocolError(`PLAN says ${totalFds} fds but its devices add up to ${sum}`);
  return { version, features, totalFds, devices };
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
  for (let i = 0; i < n; i++) {
    const kindCode = c.u8('attachment kind');
    const kind = attachmentKindName(kindCode);
    if (!kind) throw protocolError(`unknown attachment kind ${kindCode}`);
    const role = c.u8('attachment role');
    if (role !== AttachmentRole.DEVICE && role !== AttachmentRole.PAYLOAD) throw protocolError(`unknown attachment role ${role}`);
    const name = c.str('attachment name');
    const meta = c.json('attachment meta', c.limits.maxMeta);
    atts.push({ kind, role, name, meta });
  }
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

export function decodeFreeze(c: Cursor): Freeze {
  // At least 8 bytes per dropped device (two empty strings and the instance).
  const n = c.count('dropped device', c.limits.maxDevices, 8);
  const dropped: DroppedDevice[] = [];
  for (let i = 0; i < n; i++) dropped.push({ id: c.str('dropped id'), instance: c.u32('dropped instance'), reason: c.str('dropped reason') });
  c.finish('FREEZE');
  return { dropped };
}

export function decodeEndOfState(c: Cursor): EndOfState {
  const e = { sectionCount: c.u32('sectionCount'), totalFds: c.u32('totalFds'), payloadBytes: c.u64('payloadBytes') };
  c.finish('END_OF_STATE');
  return e;
}

export function decodeAck(c: Cursor): Ack {
  const stage = c.u8('stage');
  if (stage < 1 || stage > 5) throw protocolError(`unknown ACK stage ${stage}`);
  const a = { stage: stage as AckStageCode, sectionId: c.u32('sectionId'), detail: c.str('detail') };
  c.finish('ACK');
  return a;
}

export function decodeNack(c: Cursor): Nack {
  const n = { code: c.str('code'), reason: c.str('reason'), sectionId: c.u32('sectionId') };
  c.finish('NACK');
  return n;
}

export function decodePing(c: Cursor): Ping {
  const p = { token: c.u64('token'), timeNs: c.u64('timeNs') };
  c.finish('PING');
  return p;
}

export function decodeAbort(c: Cursor): Abort {
  const a = { code: c.str('code'), reason: c.str('reason') };
  c.finish('ABORT');
  return a;
}

export function decodeEmpty(c: Cursor, what: string): void {
  c.finish(what);
}
