// (Over 450 lines: the incremental reader is one state machine over bytes, fds and
// the protocol state; the frame table (frames.ts) now holds what each frame type
// allows, and a further split of the device bookkeeping is left for later.)
//
// The incremental, hardened stream reader. feed(bytes, fds) in any split returns
// the frames that became complete, each checked: header CRC, limits before any
// allocation, body CRC, frame order, negotiation, fd sequence numbers, fd kinds.
// While a frame is incomplete it simply waits for more; end() says whether the
// stream really ended cleanly. Every fd it received and did not hand out is closed
// when it fails or is closed; an error is sticky.
import { readSync } from 'node:fs';
import { crc32 } from './crc.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFd, closeFds, fdKindOf, type FdKindInfo } from '../fd/index.js';
import { native } from '../native.js';
import { Cursor, decodeHeader, decodeSectionPrefix, hex, protocolError, tooLarge, type FrameHeader } from './codec.js';
import { OrderPhase, bodyHasCrc, featureNames, frameDef, type FrameBodies, type FrameDef, type FrameName } from './frames.js';
import { FdQueue } from './fd-queue.js';
import { chooseVersion, computePlan, samePlan } from './negotiate.js';
import {
  AttachmentRole,
  DEFAULT_LIMITS,
  FRAME_NAMES,
  Features,
  FrameFlags,
  FrameType,
  HEADER_SIZE,
  MAGIC,
  SEALS_REQUIRED,
  STREAM_VERSION,
  TRAILER_SIZE,
  isSectionFrame,
  opensSection,
  type Abort,
  type Ack,
  type AttachmentHeader,
  type AttachmentKind,
  type EndOfState,
  type Freeze,
  type Hello,
  type Nack,
  type Ping,
  type Plan,
  type PlannedDevice,
  type StreamLimits,
  type Welcome,
} from './wire.js';

export type ReaderRole = 'target' | 'source' | 'inspect';
export type ProbeResult = 'none' | 'ok' | 'missing' | 'bad';

export interface ReceivedAttachment extends AttachmentHeader {
  /** Owned by the caller once the item is returned. */
  fd: number;
}

export type SectionFrameName = 'start' | 'part' | 'end' | 'full';

export interface SectionItem {
  type: 'section';
  frame: SectionFrameName;
  sectionId: number;
  /** The planned device this section belongs to. */
  device: PlannedDevice;
  instanceId: number;
  versionId: number;
  idstr: string;
  /** Device fds (role 0) of this frame, in order. */
  attachments: ReceivedAttachment[];
  /**
   * This frame's part of the state (read out of the memfd when it came as one).
   * With reuseBuffers an inline payload is valid only until the next feed() or
   * readTarget(): copy what you keep. A payload read out of a memfd is a buffer of
   * its own (or the one onPayload gave), never reused by the reader.
   */
  payload: Buffer;
  /** With memfdPayload: 'keep', the sealed, checked payload memfd (the caller's). */
  payloadFd?: number;
  /**
   * With memfdPayload: 'map', the payload is a private mapping of its memfd (no
   * copy; see mapSealedMemfd): releaseMapping(payload) unmaps it at once when the
   * caller is done, else it is unmapped when collected.
   */
  payloadMapped?: boolean;
  payloadInMemfd: boolean;
  /** false only in inspect mode with crc: 'report', when the body CRC did not match. */
  crcOk: boolean;
  /** Stream offset of the frame and its body length (for inspectors). */
  offset: number;
  bodyLength: number;
}

/** With STAGED: one device's staged backend (a STAGE frame). */
export interface StageItem {
  type: 'stage';
  sectionId: number;
  device: PlannedDevice;
  versionId: number;
  /** Device fds, in order (the caller's once returned). */
  attachments: ReceivedAttachment[];
  /** The static metadata (with reuseBuffers valid until the next feed(): copy what you keep). */
  payload: Buffer;
  /** A second STAGE of this device (it replaces the first, whose fds are stale). */
  restage: boolean;
  /** Came after FREEZE (inside the switch-over). */
  afterFreeze: boolean;
  offset: number;
  bodyLength: number;
}

export type StreamItem =
  | {
      type: 'hello';
      hello: Hello;
      /** The fd probe: 'ok' it came with the right bytes, 'missing' it did not come (SCM_RIGHTS dropped on the way), 'bad' it came wrong, 'none' not sent. */
      probe: ProbeResult;
    }
  | { type: 'welcome'; welcome: Welcome }
  | { type: 'plan'; plan: Plan }
  | SectionItem
  | StageItem
  | { type: 'freeze'; freeze: Freeze }
  | { type: 'end-of-state'; summary: EndOfState }
  | { type: 'ack'; ack: Ack }
  | { type: 'nack'; nack: Nack }
  | { type: 'ping'; ping: Ping }
  | { type: 'pong'; ping: Ping }
  | { type: 'commit' }
  | { type: 'abort'; abort: Abort }
  | { type: 'eof' };

export interface StreamReaderOptions {
  /**
   * 'target' reads a source's main stream (PLAN is checked against HELLO and the
   * WELCOME given to setWelcome()); 'source' reads a target's return path;
   * 'inspect' reads a recorded stream, trusting its PLAN.
   */
  role: ReaderRole;
  limits?: Partial<StreamLimits>;
  /** Check each received fd against its attachment's kind (default true). */
  verifyFdKinds?: boolean;
  /**
   * 'read' (default): read memfd payloads into memory and close the memfd; 'keep':
   * hand the memfd out; 'map': map it privately (one mmap, no read, no copy; the
   * item says payloadMapped) and close it, unless onPayload gives a buffer to
   * read it into. Seals and size are checked before anything is read or mapped.
   */
  memfdPayload?: 'read' | 'keep' | 'map';
  /** 'throw' (default), or 'report' to mark section frames crcOk: false (inspect only). */
  crc?: 'throw' | 'report';
  /** Expect the 8-byte magic first (default true). */
  magic?: boolean;
  /**
   * The bytes come without their fds (a stream recorded to a file): frames may
   * declare fds, attachments come out with fd -1, and fd checks are skipped.
   * Inspect role only.
   */
  fdsAbsent?: boolean;
  /**
   * Assemble frames that span several chunks in one reused buffer: a section's
   * payload is then valid only until the next feed() or readTarget() (copy what
   * you keep). Spares a fresh allocation, and its page faults, per frame.
   * Default false.
   */
  reuseBuffers?: boolean;
  /**
   * Called for each section frame with its declared payload length, before the
   * payload is read out of its memfd or handed out: throw to refuse it (a limit;
   * the frame's fds are closed), or, for a payload in a memfd read into memory,
   * return a buffer of exactly `length` bytes to read it into (default: a new one).
   */
  onPayload?: (device: PlannedDevice, length: number, inMemfd: boolean) => Buffer | undefined | void;
}

interface DeviceState {
  device: PlannedDevice;
  /** Window the target accepts, when known. */
  minVersion: number;
  maxVersion: number;
  sectionId: number | null;
  fdsSeen: number;
  closed: boolean;
  /** With STAGED: device fds of the stage in effect, or null before its first STAGE. */
  stagedFds: number | null;
  dropped: boolean;
}

/** What a handler gets besides the decoded body. */
interface FrameInput {
  h: FrameHeader;
  c: Cursor;
  body: Buffer;
  fds: number[];
  crcOk: boolean;
}
type FrameHandler<T> = (value: T, frame: FrameInput) => StreamItem;
type FrameHandlers = { readonly [K in FrameName]: FrameHandler<FrameBodies[K]> };

type Phase = 'magic' | 'handshake' | 'planned' | 'state-done' | 'finished';

const EMPTY = Buffer.alloc(0);
/** The most one readSync of a payload memfd asks for (its length is an int32). */
const MEMFD_READ_CHUNK = 1 << 30;
/** Bodies with at least this much still to come are read in place (readTarget). */
const TARGET_MIN = 16 * 1024;

export class StreamReader {
  readonly role: ReaderRole;
  readonly limits: StreamLimits;
  readonly #verifyKinds: boolean;
  readonly #memfdMode: 'read' | 'keep' | 'map';
  readonly #crcMode: 'throw' | 'report';
  readonly #fdsAbsent: boolean;
  readonly #reuse: boolean;
  readonly #onPayload: StreamReaderOptions['onPayload'];
  /** The files (st_dev:st_ino) of the payload memfds seen so far: a stream carries each once. */
  readonly #payloadFiles = new Set<string>();
  #spare: Buffer | null = null;
  /** A frame returned by the current feed() lives in the spare. */
  #spareLent = false;

  #error: BackendTransferError | null = null;
  #closed = false;
  #phase: Phase;

  // byte assembly
  #offset = 0; // stream offset of the next byte fed
  #magicBuf = Buffer.alloc(8);
  #magicFill = 0;
  #headBuf = Buffer.alloc(HEADER_SIZE);
  #headFill = 0;
  #header: FrameHeader | null = null;
  #frameStart = 0;
  #body: Buffer | null = null; // body + trailer being assembled
  #bodyFill = 0;

  // fds
  #fds = new FdQueue();

  // protocol state
  #hello: Hello | null = null;
  #welcome: Welcome | null = null;
  #plan: Plan | null = null;
  #features = 0;
  #devices = new Map<string, DeviceState>();
  #sectionIds = new Set<number>();
  #open: DeviceState | null = null;
  #openSectionId = -1;
  #sectionCount = 0;
  #deviceFds = 0;
  #payloadBytes = 0n;
  #totalFdsSeen = 0;
  /** With STAGED: FREEZE was read. */
  #frozen = false;
  /** Source role: the target sent NACK in place of WELCOME; only EOF may follow. */
  #refusedEarly = false;
  /** Main stream: COMMIT or ABORT came; only PING, PONG and EOF may follow. */
  #ended: 'COMMIT' | 'ABORT' | null = null;

  constructor(options: StreamReaderOptions) {
    this.role = options.role;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#verifyKinds = options.verifyFdKinds ?? true;
    this.#memfdMode = options.memfdPayload ?? 'read';
    this.#crcMode = options.role === 'inspect' ? (options.crc ?? 'throw') : 'throw';
    this.#phase = options.magic === false ? 'handshake' : 'magic';
    this.#fdsAbsent = options.role === 'inspect' && options.fdsAbsent === true;
    this.#reuse = options.reuseBuffers ?? false;
    this.#onPayload = options.onPayload;
  }

  get error(): BackendTransferError | null {
    return this.#error;
  }

  get hello(): Hello | null {
    return this.#hello;
  }

  get plan(): Plan | null {
    return this.#plan;
  }

  /** Bytes consumed so far. */
  get offset(): number {
    return this.#offset;
  }

  /** fds received and not yet handed out. */
  get pendingFds(): number {
    return this.#fds.pending;
  }

  /** True after the EOF frame. */
  get finished(): boolean {
    return this.#phase === 'finished';
  }

  /**
   * Target role: the WELCOME this side sent. PLAN must then equal the layout
   * computed from HELLO and this WELCOME, and sections must fit its version windows.
   */
  setWelcome(welcome: Welcome): void {
    this.#welcome = welcome;
  }

  /** Source role: agreed features for the return path (from the WELCOME it read). */
  get welcome(): Welcome | null {
    return this.#welcome;
  }

  /**
   * Feeds the next bytes and the fds that arrived with them (in order). The fds
   * are the reader's from now on. Returns the frames completed by these bytes;
   * the fds in them are the caller's.
   */
  feed(bytes: Uint8Array, fds: readonly number[] = []): StreamItem[] {
    if (this.#error) {
      closeFds(fds);
      throw this.#error;
    }
    if (this.#closed) {
      closeFds(fds);
      throw BackendTransferError.socketClosed('stream reader');
    }
    this.#spareLent = false; // the items of the last feed() have expired
    const chunkEnd = this.#offset + bytes.length;
    this.#fds.push(fds, chunkEnd);
    this.#totalFdsSeen += fds.length;
    const items: StreamItem[] = [];
    try {
      if (this.#totalFdsSeen > this.limits.maxFdsPerStream) throw tooLarge('fds received', this.#totalFdsSeen, this.limits.maxFdsPerStream);
      this.#consume(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length), items);
    } catch (err) {
      const e = err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, 'stream reader');
      this.#failWith(e, items);
      throw e;
    }
    return items;
  }

  /**
   * The channel has ended. Throws ERR_STREAM_TRUNCATED unless the EOF frame came,
   * and ERR_STREAM_FD_EXTRA if fds are left over.
   */
  end(): void {
    if (this.#error) throw this.#error;
    if (this.#phase === 'finished') return;
    let where: string;
    if (this.#phase === 'magic') where = this.#magicFill === 0 ? 'before any byte' : `after ${this.#magicFill} of 8 magic bytes`;
    else if (this.#header) where = `in the middle of a ${FRAME_NAMES[this.#header.type] ?? 'frame'} frame (${this.#bodyFill} of ${this.#header.bodyLength + TRAILER_SIZE} body bytes)`;
    else if (this.#headFill > 0) where = `in the middle of a frame header (${this.#headFill} of ${HEADER_SIZE} bytes)`;
    else where = 'between frames, before the EOF frame';
    const e = new BackendTransferError(ErrorCodes.ERR_STREAM_TRUNCATED, `stream ended ${where} at offset ${this.#offset}`, { details: { offset: this.#offset } });
    this.#failWith(e, []);
    throw e;
  }

  /** Closes every fd still held. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#dropQueuedFds();
  }

  #failWith(e: BackendTransferError, items: StreamItem[]): void {
    if (!this.#error) this.#error = e;
    // Nothing of this feed reaches the caller: close the fds in its items too.
    for (const it of items) {
      if (it.type === 'stage') closeFds(it.attachments.map((a) => a.fd));
      if (it.type === 'section') {
        closeFds(it.attachments.map((a) => a.fd));
        if (it.payloadFd !== undefined) closeFd(it.payloadFd);
        if (it.payloadMapped) native.munmap_buffer(it.payload);
      }
    }
    this.#dropQueuedFds();
  }

  #dropQueuedFds(): void {
    this.#fds.drop();
  }

  // ---------------------------------------------------------------- bytes → frames

  #consume(b: Buffer, items: StreamItem[]): void {
    let pos = 0;
    const len = b.length;
    while (pos < len) {
      if (this.#phase === 'finished') throw protocolError(`${len - pos} bytes after the EOF frame`);
      if (this.#phase === 'magic') {
        const take = Math.min(8 - this.#magicFill, len - pos);
        b.copy(this.#magicBuf, this.#magicFill, pos, pos + take);
        this.#magicFill += take;
        pos += take;
        this.#offset += take;
        if (this.#magicFill === 8) {
          if (!this.#magicBuf.equals(MAGIC)) {
            throw new BackendTransferError(ErrorCodes.ERR_STREAM_BAD_MAGIC, `not a backend-transfer stream: first bytes ${this.#magicBuf.toString('hex')}, expected ${MAGIC.toString('hex')}`);
          }
          this.#phase = 'handshake';
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

  /**
   * Where the next bytes belong when they are the rest of a large frame body: a
   * receiver that can read straight into it (FdSocket consume's `target`) saves a
   * copy; feed() then sees the bytes are in place. null when the next bytes are
   * better read into the channel's own buffer.
   */
  readTarget(): Buffer | null {
    this.#spareLent = false; // the caller is done with the items of the last feed()
    const h = this.#header;
    if (h === null || this.#error || this.#closed) return null;
    const need = h.bodyLength + TRAILER_SIZE;
    if (need - this.#bodyFill < TARGET_MIN) return null;
    if (this.#body === null) this.#allocBody(need);
    return this.#body!.subarray(this.#bodyFill);
  }

  /** A header arrived: check it against limits and the protocol state before allocating. */
  #startFrame(h: FrameHeader): void {
    const def = frameDef(h.type);
    if (!def) throw new BackendTransferError(ErrorCodes.ERR_STREAM_UNKNOWN_FRAME, `unknown frame type 0x${h.type.toString(16)} at offset ${this.#frameStart}`);
    if (h.bodyLength > this.limits.maxBody) throw tooLarge(`${def.name} body length`, h.bodyLength, this.limits.maxBody);
    if (h.fdCount > this.limits.maxFdsPerFrame) throw tooLarge(`fds of one ${def.name} frame`, h.fdCount, this.limits.maxFdsPerFrame);
    if ((h.flags & ~FrameFlags.PAYLOAD_IN_MEMFD) !== 0) throw protocolError(`unknown frame flags 0x${h.flags.toString(16)}`);
    // The table's fd allowance (HELLO: its probe; STAGE and sections: their device's) and flags.
    if (h.fdCount > def.maxFds) throw protocolError(`${def.name} frames carry ${def.maxFds ? 'at most one fd' : 'no fds'}, this one declares ${h.fdCount}`);
    if ((h.flags & ~def.flags) !== 0) throw protocolError(`${def.name} frames have no flags`);
    this.#checkOrder(def);
    this.#header = h;
  }

  #checkOrder(def: FrameDef): void {
    const { name, code: type } = def;
    const bad = (why: string): never => {
      throw protocolError(`${name} frame ${why} (offset ${this.#frameStart})`);
    };
    const staged = (this.#features & Features.STAGED) !== 0;
    const featured = (this.#features & def.requires) === def.requires;
    // Generic checks from the frame table, then each frame's own rules below.
    if (this.#open !== null && !(def.inSection && featured)) {
      bad(`inside section ${this.#openSectionId} (expected SECTION_PART or SECTION_END)`);
    }
    if (this.#ended !== null && !def.afterEnd) bad(`after ${this.#ended} (only PING, PONG and EOF may follow)`);
    const handshakeDone = this.role === 'source' ? this.#welcome !== null : this.#hello !== null;
    if (this.#refusedEarly && !def.afterRefusal) bad('after a NACK in place of WELCOME (only EOF may follow)');
    if (def.receivedOn === 'main' && this.role === 'source') bad('on a return path');
    if (def.receivedOn === 'return' && this.role !== 'source') bad('on a main stream');
    // A frame of the state needs PLAN first (which fixes the features); any other says so at once.
    if (def.phase !== OrderPhase.STATE && !featured) bad(`without the ${featureNames(def.requires)} feature`);
    if (def.phase === OrderPhase.STATE) {
      if (!this.#plan) bad('before PLAN');
      if (!featured) bad(`without the ${featureNames(def.requires)} feature`);
      if (this.#phase === 'state-done') bad(type === FrameType.END_OF_STATE ? 'repeated' : 'after END_OF_STATE');
    }
    switch (type) {
      case FrameType.HELLO:
        if (this.#hello) bad('repeated');
        break;
      case FrameType.WELCOME:
        if (this.#welcome) bad('repeated');
        break;
      case FrameType.PLAN:
        if (!this.#hello) bad('before HELLO');
        if (this.#plan) bad('repeated');
        if (this.role === 'target' && !this.#welcome) bad('before this side sent its WELCOME (setWelcome)');
        break;
      case FrameType.SECTION_START:
      case FrameType.SECTION_FULL:
      case FrameType.SECTION_PART:
      case FrameType.SECTION_END:
        if ((type === FrameType.SECTION_PART || type === FrameType.SECTION_END) && this.#open === null) bad('without SECTION_START');
        break;
      case FrameType.STAGE:
      case FrameType.FREEZE:
        if (type === FrameType.FREEZE && this.#frozen) bad('repeated');
        break;
      case FrameType.END_OF_STATE:
        if (staged && !this.#frozen) bad('before FREEZE (STAGED)');
        break;
      case FrameType.ACK:
      case FrameType.NACK:
        // A NACK instead of WELCOME is the target refusing the HELLO, with its reason.
        if (!handshakeDone && type === FrameType.ACK) bad('before WELCOME');
        if (this.#refusedEarly) bad('after a NACK in place of WELCOME');
        if (!handshakeDone) this.#refusedEarly = true;
        break;
      case FrameType.COMMIT:
        if (this.#phase !== 'state-done') bad('before END_OF_STATE');
        this.#ended = 'COMMIT';
        break;
      case FrameType.ABORT:
        if (!handshakeDone) bad('before HELLO');
        this.#ended = 'ABORT';
        this.#open = null;
        break;
      case FrameType.PING:
      case FrameType.PONG:
        if (!handshakeDone) bad('before the handshake');
        break;
      case FrameType.EOF:
        // A main stream ends after its state, or after the source gave up (ABORT).
        if (this.role !== 'source' && this.#phase !== 'state-done' && this.#ended === null) bad('before END_OF_STATE, without ABORT');
        break;
    }
  }

  // ---------------------------------------------------------------- frames → items

  #finishFrame(h: FrameHeader, bodyAndTrailer: Buffer, items: StreamItem[]): void {
    this.#header = null;
    const frameEnd = this.#offset;
    const body = bodyAndTrailer.subarray(0, h.bodyLength);
    const storedCrc = bodyAndTrailer.readUInt32LE(h.bodyLength);
    let crcOk = true;
    if (bodyHasCrc(h.type, this.#features)) {
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
    // The frame's fds: exactly fdCount, starting at firstFdSeq, none left behind.
    // (HELLO's probe fd may be missing: that is what the probe finds out.)
    const fds =
      h.type === FrameType.HELLO && h.fdCount === 1 && this.pendingFds === 0 && !this.#fdsAbsent
        ? this.#fds.skipProbe(h)
        : this.#fdsAbsent
          ? new Array<number>(h.fdCount).fill(-1)
          : this.#fds.claim(h, this.#frameStart, frameEnd);
    try {
      this.#decodeFrame(h, body, fds, crcOk, items);
    } catch (err) {
      // Until its item is returned, the frame's fds are still the reader's to close.
      closeFds(fds);
      throw err;
    }
  }

  #decodeFrame(h: FrameHeader, body: Buffer, fds: number[], crcOk: boolean, items: StreamItem[]): void {
    const def = frameDef(h.type)!; // #startFrame refused unknown types
    const c = new Cursor(body, this.limits);
    const handle = this.#handlers[def.name] as FrameHandler<unknown>;
    // The table's codec decodes the body; a frame without one (empty, or decoded with its header) gets undefined.
    let value: unknown;
    if (def.codec) value = def.codec.decode(c);
    else if (def.phase !== OrderPhase.STATE) c.finish(def.name);
    items.push(handle(value, { h, c, body, fds, crcOk }));
  }

  /**
   * One handler per frame type, after its body was decoded by the table's codec:
   * the checks that need the reader's state, and the item it yields. Typed by
   * FrameName, so a frame type added to the table needs its handler here.
   */
  readonly #handlers: FrameHandlers = {
    HELLO: (hello, { h, fds }) => {
      chooseVersion(hello.minVersion, hello.maxVersion); // ERR_STREAM_VERSION when none in common
      if ((hello.probe ? 1 : 0) !== h.fdCount) throw protocolError(`HELLO with ${hello.probe ? 'a' : 'no'} probe declares ${h.fdCount} fd(s)`);
      const probe = hello.probe ? this.#checkProbe(fds[0]!, hello.probe) : 'none';
      this.#hello = hello;
      return { type: 'hello', hello, probe };
    },
    WELCOME: (welcome) => {
      chooseVersion(welcome.version, welcome.version);
      this.#welcome = welcome;
      this.#features = welcome.features;
      return { type: 'welcome', welcome };
    },
    PLAN: (plan) => {
      this.#acceptPlan(plan);
      return { type: 'plan', plan };
    },
    SECTION_START: (_, f) => this.#section(f.h, f.c, f.body, f.fds, f.crcOk),
    SECTION_PART: (_, f) => this.#section(f.h, f.c, f.body, f.fds, f.crcOk),
    SECTION_END: (_, f) => this.#section(f.h, f.c, f.body, f.fds, f.crcOk),
    SECTION_FULL: (_, f) => this.#section(f.h, f.c, f.body, f.fds, f.crcOk),
    STAGE: (_, f) => this.#stage(f.h, f.c, f.body, f.fds),
    FREEZE: (freeze) => {
      this.#acceptFreeze(freeze);
      return { type: 'freeze', freeze };
    },
    END_OF_STATE: (summary) => {
      this.#checkEndOfState(summary);
      this.#phase = 'state-done';
      return { type: 'end-of-state', summary };
    },
    ACK: (ack) => {
      if (ack.stage === 5 && (this.#features & Features.STAGED) === 0) throw protocolError('ACK(STAGED) without the STAGED feature');
      return { type: 'ack', ack };
    },
    NACK: (nack) => ({ type: 'nack', nack }),
    PING: (ping) => ({ type: 'ping', ping }),
    PONG: (ping) => ({ type: 'pong', ping }),
    COMMIT: () => ({ type: 'commit' }),
    ABORT: (abort) => ({ type: 'abort', abort }),
    EOF: () => {
      if (this.pendingFds > 0) {
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_EXTRA, `${this.pendingFds} fd(s) arrived that no frame declared (closed)`, { details: { extra: this.pendingFds } });
      }
      this.#phase = 'finished';
      return { type: 'eof' };
    },
  };

  #acceptPlan(plan: Plan): void {
    // The version the frames use: one this reader speaks, within HELLO's window.
    const hello = this.#hello!;
    if (plan.version !== STREAM_VERSION || plan.version < hello.minVersion || plan.version > hello.maxVersion) {
      throw new BackendTransferError(
        ErrorCodes.ERR_STREAM_VERSION,
        `PLAN uses stream version ${plan.version}; this reader speaks ${STREAM_VERSION}, HELLO offered ${hello.minVersion}..${hello.maxVersion}`,
        {
          details: { version: plan.version, minVersion: hello.minVersion, maxVersion: hello.maxVersion },
        },
      );
    }
    if ((plan.features & ~hello.features) !== 0) throw protocolError(`PLAN features 0x${plan.features.toString(16)} are not a subset of HELLO's 0x${hello.features.toString(16)}`);
    if (this.role === 'target') {
      const expected = computePlan(this.#hello!, this.#welcome!);
      if (!samePlan(plan, expected)) {
        throw protocolError('PLAN differs from the layout negotiated by HELLO and WELCOME', { plan, expected });
      }
    }
    if (plan.devices.length > this.limits.maxSections) throw tooLarge('planned devices', plan.devices.length, this.limits.maxSections);
    this.#plan = plan;
    this.#features = plan.features;
    // One map of the answers, not a search per planned device: a PLAN is checked in linear time.
    const answers = new Map<string, { minVersion: number; maxVersion: number }>();
    for (const a of this.#welcome?.answers ?? []) {
      const key = `${a.id}\0${a.instance}`;
      if (!answers.has(key)) answers.set(key, a);
    }
    for (const d of plan.devices) {
      const key = `${d.id}\0${d.instance}`;
      if (this.#devices.has(key)) throw protocolError(`device ${d.id}/${d.instance} is planned twice`);
      let minVersion = d.version;
      let maxVersion = d.version;
      const answer = answers.get(key);
      if (answer) {
        minVersion = answer.minVersion;
        maxVersion = answer.maxVersion;
      }
      this.#devices.set(key, { device: d, minVersion, maxVersion, sectionId: null, fdsSeen: 0, closed: false, stagedFds: null, dropped: false });
    }
    this.#phase = 'planned';
  }

  #section(h: FrameHeader, c: Cursor, body: Buffer, fds: number[], crcOk: boolean): SectionItem {
    const s = decodeSectionPrefix(c, h.type, h.flags, h.fdCount);
    const inMemfd = (h.flags & FrameFlags.PAYLOAD_IN_MEMFD) !== 0;
    if (inMemfd && (this.#features & Features.MEMFD_PAYLOAD) === 0) throw protocolError('a memfd payload without the MEMFD_PAYLOAD feature');
    let dev: DeviceState;
    if (opensSection(h.type)) {
      const key = `${s.idstr}\0${s.instanceId}`;
      const d = this.#devices.get(key);
      if (!d) {
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_NOT_NEGOTIATED, `section ${s.sectionId} is for device ${s.idstr}/${s.instanceId}, which was not negotiated`, {
          details: { idstr: s.idstr, instanceId: s.instanceId },
        });
      }
      if (d.dropped) {
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_NOT_NEGOTIATED, `section ${s.sectionId} is for device ${s.idstr}/${s.instanceId}, which FREEZE dropped`, {
          details: { idstr: s.idstr, instanceId: s.instanceId },
        });
      }
      if (this.#sectionIds.has(s.sectionId)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_DUPLICATE_SECTION, `section id ${s.sectionId} appears twice`);
      if (d.sectionId !== null) {
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_DUPLICATE_SECTION, `device ${s.idstr}/${s.instanceId} has a second section (${s.sectionId}, after ${d.sectionId})`);
      }
      if (this.#sectionCount >= this.limits.maxSections) throw tooLarge('sections', this.#sectionCount + 1, this.limits.maxSections);
      const v = s.versionId!;
      if (v > d.maxVersion) {
        throw new BackendTransferError(ErrorCodes.ERR_DEVICE_VERSION_TOO_NEW, `section for ${s.idstr} has version ${v}, newer than this side supports (${d.minVersion}..${d.maxVersion})`, {
          details: { idstr: s.idstr, version: v, minVersion: d.minVersion, maxVersion: d.maxVersion },
        });
      }
      if (v < d.minVersion) {
        throw new BackendTransferError(ErrorCodes.ERR_DEVICE_VERSION_TOO_OLD, `section for ${s.idstr} has version ${v}, older than this side supports (${d.minVersion}..${d.maxVersion})`, {
          details: { idstr: s.idstr, version: v, minVersion: d.minVersion, maxVersion: d.maxVersion },
        });
      }
      this.#sectionIds.add(s.sectionId);
      this.#sectionCount++;
      d.sectionId = s.sectionId;
      dev = d;
      if (h.type === FrameType.SECTION_START) {
        this.#open = d;
        this.#openSectionId = s.sectionId;
      }
    } else {
      if (s.sectionId !== this.#openSectionId) throw protocolError(`${FRAME_NAMES[h.type]} for section ${s.sectionId} inside section ${this.#openSectionId}`);
      dev = this.#open!;
      if (h.type === FrameType.SECTION_END) this.#open = null;
    }

    // fds: how many of each role, and whether the device may have them.
    const deviceAtts: ReceivedAttachment[] = [];
    let payloadFd: number | undefined;
    s.attachments.forEach((a, i) => {
      const fd = fds[i]!;
      if (a.role === AttachmentRole.PAYLOAD) payloadFd = fd;
      else deviceAtts.push({ ...a, fd });
    });
    dev.fdsSeen += deviceAtts.length;
    const staged = (this.#features & Features.STAGED) !== 0;
    if (staged && deviceAtts.length > 0) {
      throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_EXTRA, `device ${dev.device.id}: with STAGED a section carries no device fds (they come in STAGE) (closed)`, {
        details: { id: dev.device.id, seen: deviceAtts.length },
      });
    }
    if (dev.fdsSeen > dev.device.fdCount) {
      throw new BackendTransferError(
        ErrorCodes.ERR_STREAM_FD_EXTRA,
        dev.device.withFds
          ? `device ${dev.device.id} was planned with ${dev.device.fdCount} fd(s) but its section carries more (${dev.fdsSeen}) (closed)`
          : `device ${dev.device.id} was planned state-only but its section carries fds (closed)`,
        { details: { id: dev.device.id, planned: dev.device.fdCount, seen: dev.fdsSeen } },
      );
    }
    if (this.#verifyKinds && !this.#fdsAbsent) {
      for (const a of deviceAtts) this.#checkKind(a);
    }
    if (h.type === FrameType.SECTION_END || h.type === FrameType.SECTION_FULL) {
      dev.closed = true;
      if (!staged && dev.fdsSeen !== dev.device.fdCount) {
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_MISSING, `device ${dev.device.id} was planned with ${dev.device.fdCount} fd(s) but its section carried ${dev.fdsSeen}`, {
          details: { id: dev.device.id, planned: dev.device.fdCount, seen: dev.fdsSeen },
        });
      }
    }
    const into = this.#onPayload?.(dev.device, s.payloadLength, inMemfd) ?? undefined;
    let payload: Buffer = EMPTY;
    let mapped = false;
    if (inMemfd) {
      if (!this.#fdsAbsent) {
        payload = this.#memfdPayload(payloadFd!, s.payloadLength, s.payloadCrc ?? 0, into);
        mapped = this.#memfdMode === 'map' && into === undefined && payload.length > 0;
      }
    } else {
      payload = body.subarray(c.pos, c.pos + s.payloadLength);
    }
    // Nothing below throws: the item takes the fds.
    if (inMemfd && (this.#memfdMode !== 'keep' || this.#fdsAbsent)) {
      if (!this.#fdsAbsent) closeFd(payloadFd!);
      payloadFd = undefined;
    }
    this.#payloadBytes += BigInt(s.payloadLength);
    this.#deviceFds += deviceAtts.length;
    const frame: SectionFrameName = h.type === FrameType.SECTION_START ? 'start' : h.type === FrameType.SECTION_PART ? 'part' : h.type === FrameType.SECTION_END ? 'end' : 'full';
    const item: SectionItem = {
      type: 'section',
      frame,
      sectionId: s.sectionId,
      device: dev.device,
      instanceId: dev.device.instance,
      versionId: s.versionId ?? dev.device.version,
      idstr: dev.device.id,
      attachments: deviceAtts,
      payload,
      payloadInMemfd: inMemfd,
      crcOk,
      offset: this.#frameStart,
      bodyLength: h.bodyLength,
    };
    if (payloadFd !== undefined) item.payloadFd = payloadFd;
    if (mapped) item.payloadMapped = true;
    return item;
  }

  /** A STAGE frame: a planned device with fds, all its fds (of their kinds), a new sectionId. */
  #stage(h: FrameHeader, c: Cursor, body: Buffer, fds: number[]): StageItem {
    if (h.flags !== 0) throw protocolError('STAGE frames have no flags');
    const s = decodeSectionPrefix(c, FrameType.STAGE, 0, h.fdCount);
    const key = `${s.idstr}\0${s.instanceId}`;
    const d = this.#devices.get(key);
    if (!d || d.dropped) {
      throw new BackendTransferError(
        ErrorCodes.ERR_STREAM_NOT_NEGOTIATED,
        `STAGE ${s.sectionId} is for device ${s.idstr}/${s.instanceId}, which was not negotiated${d ? ' (FREEZE dropped it)' : ''}`,
        {
          details: { idstr: s.idstr, instanceId: s.instanceId },
        },
      );
    }
    if (!d.device.withFds) {
      throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_EXTRA, `STAGE for device ${d.device.id}, which was planned state-only (closed)`, { details: { id: d.device.id } });
    }
    if (this.#sectionIds.has(s.sectionId)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_DUPLICATE_SECTION, `section id ${s.sectionId} appears twice`);
    const v = s.versionId!;
    if (v > d.maxVersion || v < d.minVersion) {
      throw new BackendTransferError(
        v > d.maxVersion ? ErrorCodes.ERR_DEVICE_VERSION_TOO_NEW : ErrorCodes.ERR_DEVICE_VERSION_TOO_OLD,
        `STAGE for ${s.idstr} has version ${v}, outside what this side supports (${d.minVersion}..${d.maxVersion})`,
        { details: { idstr: s.idstr, version: v, minVersion: d.minVersion, maxVersion: d.maxVersion } },
      );
    }
    if (s.attachments.some((a) => a.role !== AttachmentRole.DEVICE)) throw protocolError('a STAGE frame carries device fds only (role 0)');
    if (h.fdCount !== d.device.fdCount) {
      throw new BackendTransferError(
        h.fdCount > d.device.fdCount ? ErrorCodes.ERR_STREAM_FD_EXTRA : ErrorCodes.ERR_STREAM_FD_MISSING,
        `STAGE for device ${d.device.id} carries ${h.fdCount} fd(s), the plan says ${d.device.fdCount} (closed)`,
        { details: { id: d.device.id, planned: d.device.fdCount, seen: h.fdCount } },
      );
    }
    const atts: ReceivedAttachment[] = s.attachments.map((a, i) => ({ ...a, fd: fds[i]! }));
    if (this.#verifyKinds && !this.#fdsAbsent) for (const a of atts) this.#checkKind(a);
    if (this.#sectionIds.size >= this.limits.maxSections * 2) throw tooLarge('sections and stages', this.#sectionIds.size + 1, this.limits.maxSections * 2);
    this.#sectionIds.add(s.sectionId);
    const restage = d.stagedFds !== null;
    d.stagedFds = h.fdCount;
    return {
      type: 'stage',
      sectionId: s.sectionId,
      device: d.device,
      versionId: v,
      attachments: atts,
      payload: body.subarray(c.pos, c.pos + s.payloadLength),
      restage,
      afterFreeze: this.#frozen,
      offset: this.#frameStart,
      bodyLength: h.bodyLength,
    };
  }

  #acceptFreeze(f: Freeze): void {
    const seen = new Set<string>();
    for (const x of f.dropped) {
      const key = `${x.id}\0${x.instance}`;
      const d = this.#devices.get(key);
      if (!d)
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_NOT_NEGOTIATED, `FREEZE drops device ${x.id}/${x.instance}, which was not negotiated`, {
          details: { idstr: x.id, instanceId: x.instance },
        });
      if (seen.has(key)) throw protocolError(`FREEZE drops device ${x.id}/${x.instance} twice`);
      if (d.sectionId !== null) throw protocolError(`FREEZE drops device ${x.id}/${x.instance}, which already has a section`);
      seen.add(key);
      d.dropped = true;
    }
    this.#frozen = true;
  }

  /** Whether the probe fd is a memfd holding the probe bytes. Closes it. */
  #checkProbe(fd: number, nonce: Uint8Array): ProbeResult {
    if (fd < 0) return this.#fdsAbsent ? 'none' : 'missing';
    try {
      native.fcntl_get_seals(fd);
      const got = Buffer.alloc(nonce.length + 1);
      const n = readSync(fd, got, 0, got.length, 0);
      return n === nonce.length && got.subarray(0, n).equals(nonce) ? 'ok' : 'bad';
    } catch {
      return 'bad';
    } finally {
      closeFd(fd);
    }
  }

  #checkKind(a: ReceivedAttachment): void {
    let info: FdKindInfo;
    try {
      info = fdKindOf(a.fd);
    } catch (err) {
      throw BackendTransferError.fromSystem(err, `inspecting attachment ${a.name}`);
    }
    if (!kindMatches(a.kind, info)) {
      throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_KIND, `attachment ${a.name} is declared ${a.kind} but the fd is ${info.kind}${info.link ? ` (${info.link})` : ''} (closed)`, {
        details: { name: a.name, declared: a.kind, actual: info.kind },
      });
    }
  }

  #memfdPayload(fd: number, length: number, crc: number, into?: Buffer): Buffer {
    const fail = (code: (typeof ErrorCodes)[keyof typeof ErrorCodes], message: string): never => {
      throw new BackendTransferError(code, message, { details: { length } });
    };
    let seals: number;
    try {
      seals = native.fcntl_get_seals(fd);
    } catch {
      return fail(ErrorCodes.ERR_STREAM_FD_KIND, 'the payload attachment is not a memfd (F_GET_SEALS failed)');
    }
    if ((seals & SEALS_REQUIRED) !== SEALS_REQUIRED) {
      return fail(ErrorCodes.ERR_STREAM_MEMFD_UNSEALED, `payload memfd lacks seals: has 0x${seals.toString(16)}, needs F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE`);
    }
    const st = native.fstat(fd);
    if (st.size !== length) return fail(ErrorCodes.ERR_STREAM_MEMFD_SIZE, `payload memfd holds ${st.size} bytes, the frame declares ${length}`);
    // The same sealed file sent again (as several parts, or for several devices) would
    // be read, kept and counted once per frame: a stream carries each payload memfd once.
    const file = `${st.devMajor}:${st.devMinor}:${st.ino}`;
    if (this.#payloadFiles.has(file)) {
      return fail(ErrorCodes.ERR_STREAM_PROTOCOL, `the same payload memfd (inode ${st.ino}) came a second time in this stream; each payload travels in its own memfd`);
    }
    this.#payloadFiles.add(file);
    if (this.#memfdMode === 'keep') return EMPTY;
    if (into !== undefined && into.length !== length) throw new Error(`internal: onPayload gave ${into.length} bytes of room for ${length}`);
    if (into === undefined && this.#memfdMode === 'map') {
      // Sealed against shrinking and of the declared size (both checked above): map it.
      if (length === 0) return EMPTY;
      const m = native.mmap_memfd(fd, length);
      if ((this.#features & Features.BODY_CRC) !== 0) {
        const c = crc32(m);
        if (c !== crc) {
          native.munmap_buffer(m);
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
    if ((this.#features & Features.BODY_CRC) !== 0) {
      const c = crc32(out);
      if (c !== crc) return fail(ErrorCodes.ERR_STREAM_CRC, `payload memfd content CRC mismatch (stored ${hex(crc)}, computed ${hex(c)})`);
    }
    return out;
  }

  #checkEndOfState(e: EndOfState): void {
    if (this.#open !== null) throw protocolError(`END_OF_STATE inside section ${this.#openSectionId}`);
    const missing = [...this.#devices.values()].filter((d) => d.sectionId === null && !d.dropped).map((d) => d.device.id);
    if (missing.length > 0) throw protocolError(`END_OF_STATE before the sections of planned device(s) ${missing.join(', ')}`);
    if (e.sectionCount !== this.#sectionCount) throw protocolError(`END_OF_STATE counts ${e.sectionCount} sections, the reader saw ${this.#sectionCount}`);
    let deviceFds = this.#deviceFds;
    if ((this.#features & Features.STAGED) !== 0) {
      deviceFds = 0;
      const unstaged: string[] = [];
      for (const d of this.#devices.values()) {
        if (d.dropped || !d.device.withFds) continue;
        if (d.stagedFds === null) unstaged.push(d.device.id);
        else deviceFds += d.stagedFds;
      }
      if (unstaged.length > 0) {
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_MISSING, `END_OF_STATE before the STAGE of planned device(s) ${unstaged.join(', ')}`, { details: { unstaged } });
      }
    }
    if (e.totalFds !== deviceFds) throw protocolError(`END_OF_STATE counts ${e.totalFds} fds, the reader saw ${deviceFds}`);
    if (e.payloadBytes !== this.#payloadBytes) throw protocolError(`END_OF_STATE counts ${e.payloadBytes} payload bytes, the reader saw ${this.#payloadBytes}`);
  }
}

/** Whether an fd, as the kernel describes it, can be an attachment of this kind. */
export function kindMatches(kind: AttachmentKind, info: FdKindInfo): boolean {
  switch (kind) {
    case 'tap':
      return info.kind === 'tap' || info.kind === 'tun-unattached';
    case 'vhost-net':
      return info.kind === 'vhost-net';
    case 'eventfd':
      return info.kind === 'eventfd';
    case 'memfd':
      return info.kind === 'memfd';
    case 'vhost-user':
      return info.kind === 'unix-stream';
    case 'chardev-socket':
      return info.fileType === 'socket' && !info.socket?.listening;
    case 'listener':
      return info.fileType === 'socket' && info.socket?.listening === true;
    case 'generic':
      return true;
  }
}
