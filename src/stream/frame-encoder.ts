// A frame's bytes, as the writer hands them to the channel: the writer's
// counterpart of framer.ts. The header (docs/stream-format.md, "Frame"), the body
// parts as given (never copied, except the first when fds ride on it), and the
// trailer with the body CRC where the frame table's CRC rule asks for one.
import { crc32 } from './crc.js';
import { encodeHeader } from './codec.js';
import { bodyHasCrc } from './frames.js';
import { MAGIC } from './wire.js';

/**
 * One frame: its head (the magic first if `magic`, the header, and with fds the
 * first body part, so that the fds ride on the frame's own bytes and never on
 * another frame's) and the rest (the other body parts, the trailer). `features`:
 * the negotiated bits (BODY_CRC); `fdSeq`: the sequence number of the first fd.
 */
export function encodeFrame(
  type: number,
  flags: number,
  body: readonly Uint8Array[],
  fds: readonly number[],
  magic: boolean,
  features: number,
  fdSeq: number,
): { head: Uint8Array; rest: Uint8Array[] } {
  let bodyLength = 0;
  for (const b of body) bodyLength += b.length;
  let bodyCrc = 0;
  if (bodyHasCrc(type, features)) {
    for (const b of body) bodyCrc = crc32(b, bodyCrc);
  }
  const header = encodeHeader({ type, flags, bodyLength, fdCount: fds.length, firstFdSeq: fds.length ? fdSeq : 0 });
  const trailer = Buffer.allocUnsafe(4);
  trailer.writeUInt32LE(bodyCrc, 0);
  let head: Uint8Array = header;
  const rest: Uint8Array[] = [];
  if (magic) head = Buffer.concat([MAGIC, header]);
  if (fds.length > 0 && body.length > 0) {
    head = Buffer.concat([head, body[0]!]);
    rest.push(...body.slice(1));
  } else rest.push(...body);
  rest.push(trailer);
  return { head, rest };
}
