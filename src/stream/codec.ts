// The frame header's codec, and every codec by name (for the writer, tests and
// fixtures): the primitives are cursor.ts's, the structs' codecs structs.ts's, and
// each frame body's codec sits in frames.ts next to that frame's table entry.
import { crc32 } from './crc.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { U32_MAX, U8_MAX, checkUint, encodeBody, hex, protocolError } from './cursor.js';
import { abortCodec, ackCodec, endOfStateCodec, freezeCodec, helloCodec, nackCodec, pingCodec, planCodec, welcomeCodec } from './frames.js';
import { HEADER_SIZE, type Abort, type Ack, type EndOfState, type Freeze, type Hello, type Nack, type Ping, type Plan, type Welcome } from './wire.js';

export { BodyWriter, Cursor, checkUint, encodeBody, hex, protocolError, tooLarge, type Codec } from './cursor.js';
export { answerCodec, attachmentCodec, droppedDeviceCodec, offerCodec, plannedDeviceCodec } from './structs.js';
export { abortCodec, ackCodec, decodeSectionPrefix, encodeSectionPrefix, endOfStateCodec, freezeCodec, helloCodec, nackCodec, pingCodec, planCodec, welcomeCodec } from './frames.js';

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
