// The primitives of every body codec (docs/stream-format.md): a writer that
// range-checks each field it writes, a bounds-checked reader (Cursor) that checks
// limits before it allocates, and the errors both raise.
import { BackendTransferError, ErrorCodes, type ErrorDetails } from '../errors.js';
import { DEFAULT_LIMITS, type StreamLimits } from './wire.js';

export function protocolError(message: string, details?: ErrorDetails<'ERR_STREAM_PROTOCOL'>): BackendTransferError {
  return new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, message, details ? { details } : {});
}

export function tooLarge(what: string, value: number | bigint, limit: number): BackendTransferError {
  return new BackendTransferError(ErrorCodes.ERR_STREAM_TOO_LARGE, `${what} is ${value}, over the limit of ${limit}`, { details: { what, value: Number(value), limit } });
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

export const U8_MAX = 0xff;
export const U16_MAX = 0xffff;
export const U32_MAX = 0xffffffff;
export const U64_MAX = (1n << 64n) - 1n;

export function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

// ---------------------------------------------------------------- body writer

export class BodyWriter {
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

export function utf8(s: string, what: string, limit = 65535): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > Math.min(limit, 65535)) throw BackendTransferError.invalidArgument(`${what} is ${b.length} bytes, over ${Math.min(limit, 65535)}`);
  return b;
}

export function jsonBytes(v: Record<string, unknown> | null | undefined, what: string): Buffer {
  if (v === null || v === undefined) return Buffer.alloc(0);
  const b = Buffer.from(JSON.stringify(v), 'utf8');
  if (b.length > DEFAULT_LIMITS.maxMeta) throw BackendTransferError.invalidArgument(`${what} is ${b.length} bytes of JSON, over ${DEFAULT_LIMITS.maxMeta}`);
  return b;
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

// ---------------------------------------------------------------- codecs

/**
 * A body codec (after compact-encoding): its size, its encoder and its decoder
 * side by side. size() checks what a length depends on (string and JSON lengths);
 * encode() writes exactly size() bytes, each field range-checked by BodyWriter;
 * decode() reads through a Cursor, limits checked before anything is allocated.
 */
export interface Codec<T> {
  size(v: T): number;
  encode(w: BodyWriter, v: T): void;
  decode(c: Cursor): T;
}

/** A whole body: sized, then written into one buffer. */
export function encodeBody<T>(codec: Codec<T>, v: T): Buffer {
  const w = new BodyWriter(codec.size(v));
  codec.encode(w, v);
  return w.done();
}
