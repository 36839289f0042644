// What a section carries (its device, fds and payload) and how its payload goes:
// an inline payload in parts, and payloads in a sealed memfd (docs/stream-format.md),
// on both sides: the writer's checks of a memfd it is given, the memfd it makes of
// a large part, and their CRC; the reader's checks of one it received (seals, size,
// seen once) before it reads, maps or keeps it; and HELLO's probe, a memfd too.
// The syscalls are src/fd/memfd.ts's.
import { readSync } from 'node:fs';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFd } from '../fd/index.js';
import { addSeals, fileStat, fillMemfd, getSeals, mapMemfd, unmapBuffer } from '../fd/memfd.js';
import { crc32 } from './crc.js';
import { hex } from './codec.js';
import { Features, SEALS_REQUIRED, type AttachmentKind } from './wire.js';

export interface OutgoingAttachment {
  kind: AttachmentKind;
  name: string;
  meta?: Record<string, unknown> | null;
  /** Stays the caller's; it must stay open until section() resolves. */
  fd: number;
}

export interface SectionDevice {
  id: string;
  instance: number;
  version: number;
}

/** State that already lives in a sealed memfd: sent by descriptor, not copied. */
export interface MemfdPayload {
  memfd: number;
  length: number;
  /** Add the seals if the memfd lacks them (it must allow sealing). Default false: an unsealed memfd is refused. */
  seal?: boolean;
}

export type SectionPayload = Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array> | MemfdPayload;

export function isMemfdPayload(p: SectionPayload): p is MemfdPayload {
  return typeof p === 'object' && p !== null && 'memfd' in p && typeof p.memfd === 'number';
}

// ---------------------------------------------------------------- writer

const NO_BYTES = new Uint8Array(0);

/**
 * An inline payload in parts of at most partSize bytes: emit(part, last) for each,
 * in order (an empty payload is one empty last part). An iterable is pulled one
 * part ahead (to know which part is last), so memory stays bounded.
 */
export async function forEachPart(payload: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>, partSize: number, emit: (part: Uint8Array, last: boolean) => Promise<void>): Promise<void> {
  if (payload instanceof Uint8Array) {
    if (payload.length <= partSize) return emit(payload, true);
    for (let off = 0; off < payload.length; off += partSize) {
      await emit(payload.subarray(off, Math.min(payload.length, off + partSize)), off + partSize >= payload.length);
    }
    return;
  }
  // An iterable: keep one part in hand to know which one is last.
  let held: Uint8Array | null = null;
  for await (const chunk of payload as AsyncIterable<Uint8Array>) {
    for (let off = 0; off < chunk.length || (chunk.length === 0 && off === 0); off += partSize) {
      const piece = chunk.subarray(off, Math.min(chunk.length, off + partSize));
      if (piece.length === 0 && chunk.length === 0) break;
      if (held) await emit(held, false);
      held = piece;
    }
  }
  await emit(held ?? NO_BYTES, true);
}

/** The largest memfd payload a frame can declare (payloadLength is a u32). */
const MAX_MEMFD_PAYLOAD = 0xffffffff;

/** The writer's checks of a memfd payload it was given (sealing it when asked), before anything is written. */
export function checkMemfdPayload(p: MemfdPayload, features: number): void {
  if ((features & Features.MEMFD_PAYLOAD) === 0) throw BackendTransferError.invalidArgument('a memfd payload needs the negotiated MEMFD_PAYLOAD feature');
  // payloadLength is a u32: refuse here what no reader could take, before anything is written.
  if (!(p.length <= MAX_MEMFD_PAYLOAD)) {
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_TOO_LARGE, `memfd payload is ${p.length} bytes, over the limit of ${MAX_MEMFD_PAYLOAD}; nothing was written`, {
      details: { what: 'memfd payload', value: p.length, limit: MAX_MEMFD_PAYLOAD },
    });
  }
  let seals: number;
  try {
    seals = getSeals(p.memfd);
  } catch (err) {
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_KIND, `payload fd ${p.memfd} is not a memfd`, { cause: err });
  }
  if ((seals & SEALS_REQUIRED) !== SEALS_REQUIRED) {
    if (!p.seal) throw new BackendTransferError(ErrorCodes.ERR_STREAM_MEMFD_UNSEALED, `payload memfd ${p.memfd} is not sealed (pass seal: true to seal it)`);
    addSeals(p.memfd, SEALS_REQUIRED);
  }
  const size = fileStat(p.memfd).size;
  if (size !== p.length) throw new BackendTransferError(ErrorCodes.ERR_STREAM_MEMFD_SIZE, `payload memfd holds ${size} bytes, not ${p.length}`);
}

/** The CRC of a sealed memfd's `length` bytes (seals and size checked by checkMemfdPayload), over a mapping: no read loop. */
function memfdCrc(fd: number, length: number): number {
  if (length === 0) return 0;
  const m = mapMemfd(fd, length);
  try {
    return crc32(m);
  } finally {
    unmapBuffer(m);
  }
}

/**
 * send(memfd, payloadCrc) with the memfd a section part travels in: `given`, or a
 * sealed memfd made here from `inline` (closed once send settles). payloadCrc is
 * the CRC of its bytes with bodyCrc, else 0.
 */
export async function sendByMemfd(inline: Uint8Array | null, given: number | null, length: number, bodyCrc: boolean, send: (memfd: number, payloadCrc: number) => Promise<void>): Promise<void> {
  const memfd = given ?? fillMemfd(inline!);
  try {
    await send(memfd, bodyCrc ? (inline ? crc32(inline) : memfdCrc(memfd, length)) : 0);
  } finally {
    if (given === null) closeFd(memfd);
  }
}

// ---------------------------------------------------------------- reader

const EMPTY = Buffer.alloc(0);
/** The most one readSync of a payload memfd asks for (its length is an int32). */
const MEMFD_READ_CHUNK = 1 << 30;

/** The reader's payload memfds: each checked, then read, mapped or kept. */
export class PayloadMemfds {
  readonly #mode: 'read' | 'keep' | 'map';
  /** The files (st_dev:st_ino) of the payload memfds seen so far: a stream carries each once. */
  readonly #files = new Set<string>();

  constructor(mode: 'read' | 'keep' | 'map') {
    this.#mode = mode;
  }

  /**
   * A payload memfd's bytes (EMPTY when kept; a mapping with 'map' unless `into`
   * is given), after its seals, size and uniqueness, and with BODY_CRC its CRC.
   * The fd stays the caller's.
   */
  take(fd: number, length: number, crc: number, features: number, into?: Buffer): Buffer {
    const fail = (code: (typeof ErrorCodes)[keyof typeof ErrorCodes], message: string): never => {
      throw new BackendTransferError(code, message, { details: { length } });
    };
    let seals: number;
    try {
      seals = getSeals(fd);
    } catch {
      return fail(ErrorCodes.ERR_STREAM_FD_KIND, 'the payload attachment is not a memfd (F_GET_SEALS failed)');
    }
    if ((seals & SEALS_REQUIRED) !== SEALS_REQUIRED) {
      return fail(ErrorCodes.ERR_STREAM_MEMFD_UNSEALED, `payload memfd lacks seals: has 0x${seals.toString(16)}, needs F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE`);
    }
    const st = fileStat(fd);
    if (st.size !== length) return fail(ErrorCodes.ERR_STREAM_MEMFD_SIZE, `payload memfd holds ${st.size} bytes, the frame declares ${length}`);
    // The same sealed file sent again (as several parts, or for several devices) would
    // be read, kept and counted once per frame: a stream carries each payload memfd once.
    const file = `${st.devMajor}:${st.devMinor}:${st.ino}`;
    if (this.#files.has(file)) {
      return fail(ErrorCodes.ERR_STREAM_PROTOCOL, `the same payload memfd (inode ${st.ino}) came a second time in this stream; each payload travels in its own memfd`);
    }
    this.#files.add(file);
    if (this.#mode === 'keep') return EMPTY;
    if (into !== undefined && into.length !== length) throw new Error(`internal: onPayload gave ${into.length} bytes of room for ${length}`);
    if (into === undefined && this.#mode === 'map') {
      // Sealed against shrinking and of the declared size (both checked above): map it.
      if (length === 0) return EMPTY;
      const m = mapMemfd(fd, length);
      if ((features & Features.BODY_CRC) !== 0) {
        const c = crc32(m);
        if (c !== crc) {
          unmapBuffer(m);
          return fail(ErrorCodes.ERR_STREAM_CRC, `payload memfd content CRC mismatch (stored ${hex(crc)}, computed ${hex(c)})`);
        }
      }
      return m;
    }
    const out = into ?? Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      // read() and Node's readSync take at most 2 GiB - 1 at a time.
      const n = readSync(fd, out, got, Math.min(length - got, MEMFD_READ_CHUNK), got);
      if (n <= 0) return fail(ErrorCodes.ERR_STREAM_MEMFD_SIZE, `payload memfd ended after ${got} of ${length} bytes`);
      got += n;
    }
    if ((features & Features.BODY_CRC) !== 0) {
      const c = crc32(out);
      if (c !== crc) return fail(ErrorCodes.ERR_STREAM_CRC, `payload memfd content CRC mismatch (stored ${hex(crc)}, computed ${hex(c)})`);
    }
    return out;
  }
}

/** Whether HELLO's probe fd is a memfd holding the probe bytes: 'ok' or 'bad'. Closes it. */
export function checkProbe(fd: number, nonce: Uint8Array): 'ok' | 'bad' {
  try {
    getSeals(fd);
    const got = Buffer.alloc(nonce.length + 1);
    const n = readSync(fd, got, 0, got.length, 0);
    return n === nonce.length && got.subarray(0, n).equals(nonce) ? 'ok' : 'bad';
  } catch {
    return 'bad';
  } finally {
    closeFd(fd);
  }
}
