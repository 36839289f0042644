// Bytes → checked frames, for the stream reader: the magic, each frame's header
// (its CRC, a known type, the limits and the frame table's fd and flag rules, all
// before anything is allocated), its body assembled in any split of the bytes
// (in place when a chunk holds it whole, else in a buffer, reused with
// reuseBuffers), and the body CRC. What a frame means, and whether it may come
// now, is the reader's: the framer asks its sink (FrameSink) at each header and
// hands it each whole frame. It makes no syscall and holds no fd.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { crc32 } from './crc.js';
import { decodeHeader, hex, protocolError, tooLarge, type FrameHeader } from './codec.js';
import { bodyHasCrc, frameDef, type FrameDef, FRAME_NAMES, isSectionFrame } from './frames.js';
import type { StreamItem } from './items.js';
import { FrameFlags, HEADER_SIZE, MAGIC, TRAILER_SIZE, type StreamLimits } from './wire.js';

/** Bodies with at least this much still to come are read in place (readTarget). */
const TARGET_MIN = 16 * 1024;

/** What the framer asks of the reader. */
export interface FrameSink {
  /** The features in use (whether a body carries a CRC). */
  features(): number;
  /** A header passed the framer's checks: the reader's checks (order, state) before its body is read. */
  header(def: FrameDef): void;
  /** A whole frame, body CRC checked (crcOk false only with crc 'report'); its items go to `items`. */
  frame(def: FrameDef, h: FrameHeader, body: Buffer, crcOk: boolean, items: StreamItem[]): void;
}

export interface FramerOptions {
  limits: StreamLimits;
  /** Expect the 8-byte magic first. */
  magic: boolean;
  reuseBuffers: boolean;
  /** 'report': a section frame whose body CRC does not match comes with crcOk false. */
  crc: 'throw' | 'report';
}

export class Framer {
  readonly #limits: StreamLimits;
  readonly #reuse: boolean;
  readonly #crcMode: 'throw' | 'report';
  readonly #sink: FrameSink;
  /** The EOF frame came: no byte may follow. Set by the reader. */
  done = false;
  #spare: Buffer | null = null;
  /** A frame returned by the current feed() lives in the spare. */
  #spareLent = false;

  #inMagic: boolean;
  #offset = 0; // stream offset of the next byte fed
  #magicBuf = Buffer.alloc(8);
  #magicFill = 0;
  #headBuf = Buffer.alloc(HEADER_SIZE);
  #headFill = 0;
  #header: FrameHeader | null = null;
  #frameStart = 0;
  #body: Buffer | null = null; // body + trailer being assembled
  #bodyFill = 0;

  constructor(options: FramerOptions, sink: FrameSink) {
    this.#limits = options.limits;
    this.#reuse = options.reuseBuffers;
    this.#crcMode = options.crc;
    this.#inMagic = options.magic;
    this.#sink = sink;
  }

  /** Bytes consumed so far. */
  get offset(): number {
    return this.#offset;
  }

  /** Stream offset of the frame being read (or last read). */
  get frameStart(): number {
    return this.#frameStart;
  }

  /** The items of the last feed() have expired: the spare may be reused. */
  release(): void {
    this.#spareLent = false;
  }

  /** Where the stream stands, for a stream that ended before its EOF frame. */
  describeEnd(): string {
    if (this.#inMagic) return this.#magicFill === 0 ? 'before any byte' : `after ${this.#magicFill} of 8 magic bytes`;
    if (this.#header) return `in the middle of a ${FRAME_NAMES[this.#header.type] ?? 'frame'} frame (${this.#bodyFill} of ${this.#header.bodyLength + TRAILER_SIZE} body bytes)`;
    if (this.#headFill > 0) return `in the middle of a frame header (${this.#headFill} of ${HEADER_SIZE} bytes)`;
    return 'between frames, before the EOF frame';
  }

  consume(b: Buffer, items: StreamItem[]): void {
    let pos = 0;
    const len = b.length;
    while (pos < len) {
      if (this.done) throw protocolError(`${len - pos} bytes after the EOF frame`);
      if (this.#inMagic) {
        const take = Math.min(8 - this.#magicFill, len - pos);
        b.copy(this.#magicBuf, this.#magicFill, pos, pos + take);
        this.#magicFill += take;
        pos += take;
        this.#offset += take;
        if (this.#magicFill === 8) {
          if (!this.#magicBuf.equals(MAGIC)) {
            throw new BackendTransferError(ErrorCodes.ERR_STREAM_BAD_MAGIC, `not a backend-transfer stream: first bytes ${this.#magicBuf.toString('hex')}, expected ${MAGIC.toString('hex')}`);
          }
          this.#inMagic = false;
        }
        continue;
      }
      if (this.#header === null) {
        // Header: decode in place when all 20 bytes are here, else gather them.
        if (this.#headFill === 0 && len - pos >= HEADER_SIZE) {
          this.#frameStart = this.#offset;
          this.#startFrame(decodeHeader(b, pos));
          pos += HEADER_SIZE;
          this.#offset += HEADER_SIZE;
        } else {
          if (this.#headFill === 0) this.#frameStart = this.#offset;
          const take = Math.min(HEADER_SIZE - this.#headFill, len - pos);
          b.copy(this.#headBuf, this.#headFill, pos, pos + take);
          this.#headFill += take;
          pos += take;
          this.#offset += take;
          if (this.#headFill < HEADER_SIZE) continue;
          this.#headFill = 0;
          this.#startFrame(decodeHeader(this.#headBuf, 0));
        }
        continue;
      }
      const h = this.#header;
      const need = h.bodyLength + TRAILER_SIZE;
      if (this.#body === null && len - pos >= need) {
        // The whole body is in this chunk: use it in place.
        const body = b.subarray(pos, pos + need);
        pos += need;
        this.#offset += need;
        this.#finishFrame(h, body, items);
        continue;
      }
      if (this.#body === null) this.#allocBody(need);
      const take = Math.min(need - this.#bodyFill, len - pos);
      // Bytes received straight into the body (readTarget) are in place already.
      const inPlace = b.buffer === this.#body!.buffer && b.byteOffset + pos === this.#body!.byteOffset + this.#bodyFill;
      if (!inPlace) b.copy(this.#body!, this.#bodyFill, pos, pos + take);
      this.#bodyFill += take;
      pos += take;
      this.#offset += take;
      if (this.#bodyFill === need) {
        const body = this.#body!;
        this.#body = null;
        this.#bodyFill = 0;
        if (this.#reuse) this.#spareLent = true;
        this.#finishFrame(h, body, items);
      }
    }
  }

  /**
   * With reuseBuffers one assembly buffer serves every frame (its payloads are
   * valid until the next feed); otherwise each frame gets its own.
   */
  #allocBody(need: number): void {
    if (this.#reuse) {
      // A frame of this very feed() may still sit in the spare: then take a new one.
      if (this.#spare === null || this.#spare.length < need || this.#spareLent) {
        this.#spare = Buffer.allocUnsafe(Math.max(need, 64 * 1024));
        this.#spareLent = false;
      }
      this.#body = this.#spare.subarray(0, need);
    } else this.#body = Buffer.allocUnsafe(need);
    this.#bodyFill = 0;
  }

  /** See StreamReader.readTarget (the caller checked the reader is neither failed nor closed). */
  readTarget(): Buffer | null {
    const h = this.#header;
    if (h === null) return null;
    const need = h.bodyLength + TRAILER_SIZE;
    if (need - this.#bodyFill < TARGET_MIN) return null;
    if (this.#body === null) this.#allocBody(need);
    return this.#body!.subarray(this.#bodyFill);
  }

  /** A header arrived: check it against limits and the protocol state before allocating. */
  #startFrame(h: FrameHeader): void {
    const def = frameDef(h.type);
    if (!def) throw new BackendTransferError(ErrorCodes.ERR_STREAM_UNKNOWN_FRAME, `unknown frame type 0x${h.type.toString(16)} at offset ${this.#frameStart}`);
    if (h.bodyLength > this.#limits.maxBody) throw tooLarge(`${def.name} body length`, h.bodyLength, this.#limits.maxBody);
    if (h.fdCount > this.#limits.maxFdsPerFrame) throw tooLarge(`fds of one ${def.name} frame`, h.fdCount, this.#limits.maxFdsPerFrame);
    if ((h.flags & ~FrameFlags.PAYLOAD_IN_MEMFD) !== 0) throw protocolError(`unknown frame flags 0x${h.flags.toString(16)}`);
    // The table's fd allowance (HELLO: its probe; STAGE and sections: their device's) and flags.
    if (h.fdCount > def.maxFds) throw protocolError(`${def.name} frames carry ${def.maxFds ? 'at most one fd' : 'no fds'}, this one declares ${h.fdCount}`);
    if ((h.flags & ~def.flags) !== 0) throw protocolError(`${def.name} frames have no flags`);
    this.#sink.header(def);
    this.#header = h;
  }

  #finishFrame(h: FrameHeader, bodyAndTrailer: Buffer, items: StreamItem[]): void {
    this.#header = null;
    const body = bodyAndTrailer.subarray(0, h.bodyLength);
    const storedCrc = bodyAndTrailer.readUInt32LE(h.bodyLength);
    let crcOk = true;
    if (bodyHasCrc(h.type, this.#sink.features())) {
      const got = crc32(body);
      if (got !== storedCrc) {
        crcOk = false;
        if (this.#crcMode === 'throw' || !isSectionFrame(h.type)) {
          throw new BackendTransferError(ErrorCodes.ERR_STREAM_CRC, `${FRAME_NAMES[h.type]} frame at offset ${this.#frameStart}: body CRC mismatch (stored ${hex(storedCrc)}, computed ${hex(got)})`, {
            details: { where: 'body', offset: this.#frameStart, stored: storedCrc, computed: got },
          });
        }
      }
    }
    this.#sink.frame(frameDef(h.type)!, h, body, crcOk, items); // #startFrame refused unknown types
  }
}
