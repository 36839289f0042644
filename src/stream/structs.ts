// The codecs of the structs inside frame bodies (docs/stream-format.md): an offer
// of HELLO, an answer of WELCOME, a planned device of PLAN, an attachment of a
// section or STAGE frame, a device FREEZE drops. Each with its size, encoder and
// decoder side by side (Codec, cursor.ts).
import { jsonBytes, protocolError, utf8, type Codec } from './cursor.js';
import {
  AttachmentRole,
  attachmentKindCode,
  attachmentKindName,
  type Answer,
  type AttachmentHeader,
  type DecisionCode,
  type DroppedDevice,
  type Offer,
  type PlannedDevice,
  type ReasonCode,
} from './wire.js';

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

export function sizeOfAll<T>(codec: Codec<T>, items: readonly T[]): number {
  let n = 0;
  for (const x of items) n += codec.size(x);
  return n;
}
