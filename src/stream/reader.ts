// The incremental, hardened stream reader. feed(bytes, fds) in any split returns
// the frames that became complete, each checked: header CRC, limits before any
// allocation, body CRC, frame order, negotiation, fd sequence numbers, fd kinds.
// While a frame is incomplete it simply waits for more; end() says whether the
// stream really ended cleanly. Every fd it received and did not hand out is closed
// when it fails or is closed; an error is sticky.
//
// Its parts: framer.ts (bytes → checked frames), fd-queue.ts (the fds it holds
// until a frame claims them), sections.ts (the planned devices, their sections
// and stages, payload.ts for payloads in a memfd); here the protocol state, the
// order of frames, and one handler per frame type (#handlers).
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFds } from '../fd/index.js';
import { Cursor, protocolError, tooLarge, type FrameHeader } from './codec.js';
import { FdQueue } from './fd-queue.js';
import { Framer } from './framer.js';
import { OrderPhase, featureNames, type FrameBodies, type FrameDef, type FrameName, type ItemFrameName, FrameType } from './frames.js';
import { releaseItems, type ReaderRole, type StreamItem } from './items.js';
import { chooseVersion, computePlan, samePlan } from './negotiate.js';
import { checkProbe } from './payload.js';
import { Sections } from './sections.js';
import { DEFAULT_LIMITS, Features, STREAM_VERSION, type Hello, type Plan, type PlannedDevice, type StreamLimits, type Welcome } from './wire.js';

export type { ProbeResult, ReaderRole, ReceivedAttachment, SectionFrameName, SectionItem, StageItem, StreamItem } from './items.js';
export { kindMatches } from './sections.js';

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

/** What a handler gets besides the decoded body. */
interface FrameInput {
  h: FrameHeader;
  c: Cursor;
  body: Buffer;
  fds: number[];
  crcOk: boolean;
}
type FrameHandler<T> = (value: T, frame: FrameInput) => StreamItem;
/** One handler per frame type the table yields no item for: a new entry without one does not compile until handled here. */
type FrameHandlers = { readonly [K in Exclude<FrameName, ItemFrameName>]: FrameHandler<FrameBodies[K]> };

type Phase = 'handshake' | 'planned' | 'state-done';

export class StreamReader {
  readonly role: ReaderRole;
  readonly limits: StreamLimits;
  readonly #fdsAbsent: boolean;
  readonly #framer: Framer;
  readonly #sections: Sections;

  #error: BackendTransferError | null = null;
  #closed = false;
  #phase: Phase = 'handshake';

  // fds
  #fds = new FdQueue();

  // protocol state
  #hello: Hello | null = null;
  #welcome: Welcome | null = null;
  #plan: Plan | null = null;
  #features = 0;
  /** Source role: the target sent NACK in place of WELCOME; only EOF may follow. */
  #refusedEarly = false;
  /** Main stream: COMMIT or ABORT came; only PING, PONG and EOF may follow. */
  #ended: 'COMMIT' | 'ABORT' | null = null;

  constructor(options: StreamReaderOptions) {
    this.role = options.role;
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    this.#fdsAbsent = options.role === 'inspect' && options.fdsAbsent === true;
    this.#framer = new Framer(
      { limits: this.limits, magic: options.magic !== false, reuseBuffers: options.reuseBuffers ?? false, crc: options.role === 'inspect' ? (options.crc ?? 'throw') : 'throw' },
      {
        features: () => this.#features,
        header: (def) => this.#checkOrder(def),
        frame: (def, h, body, crcOk, items) => this.#frame(def, h, body, crcOk, items),
      },
    );
    this.#sections = new Sections({
      limits: this.limits,
      verifyKinds: options.verifyFdKinds ?? true,
      fdsAbsent: this.#fdsAbsent,
      memfdMode: options.memfdPayload ?? 'read',
      onPayload: options.onPayload,
    });
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
    return this.#framer.offset;
  }

  /** fds received and not yet handed out. */
  get pendingFds(): number {
    return this.#fds.pending;
  }

  /** True after the EOF frame. */
  get finished(): boolean {
    return this.#framer.done;
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
    this.#framer.release(); // the items of the last feed() have expired
    this.#fds.push(fds, this.#framer.offset + bytes.length);
    const items: StreamItem[] = [];
    try {
      if (this.#fds.received > this.limits.maxFdsPerStream) throw tooLarge('fds received', this.#fds.received, this.limits.maxFdsPerStream);
      this.#framer.consume(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length), items);
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
    if (this.#framer.done) return;
    const where = this.#framer.describeEnd();
    const offset = this.#framer.offset;
    const e = new BackendTransferError(ErrorCodes.ERR_STREAM_TRUNCATED, `stream ended ${where} at offset ${offset}`, { details: { offset } });
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
    releaseItems(items);
    this.#dropQueuedFds();
  }

  #dropQueuedFds(): void {
    this.#fds.drop();
  }

  /**
   * Where the next bytes belong when they are the rest of a large frame body: a
   * receiver that can read straight into it (FdSocket consume's `target`) saves a
   * copy; feed() then sees the bytes are in place. null when the next bytes are
   * better read into the channel's own buffer.
   */
  readTarget(): Buffer | null {
    this.#framer.release(); // the caller is done with the items of the last feed()
    if (this.#error || this.#closed) return null;
    return this.#framer.readTarget();
  }

  // ---------------------------------------------------------------- order

  #checkOrder(def: FrameDef): void {
    const { name, code: type } = def;
    const bad = (why: string): never => {
      throw protocolError(`${name} frame ${why} (offset ${this.#framer.frameStart})`);
    };
    const staged = (this.#features & Features.STAGED) !== 0;
    const featured = (this.#features & def.requires) === def.requires;
    // Generic checks from the frame table, then each frame's own rules below.
    if (this.#sections.isOpen && !(def.inSection && featured)) {
      bad(`inside section ${this.#sections.openSectionId} (expected SECTION_PART or SECTION_END)`);
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
        if ((type === FrameType.SECTION_PART || type === FrameType.SECTION_END) && !this.#sections.isOpen) bad('without SECTION_START');
        break;
      case FrameType.STAGE:
      case FrameType.FREEZE:
        if (type === FrameType.FREEZE && this.#sections.frozen) bad('repeated');
        break;
      case FrameType.END_OF_STATE:
        if (staged && !this.#sections.frozen) bad('before FREEZE (STAGED)');
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
        this.#sections.abandon();
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

  /** A whole frame from the framer: its fds from the ledger, its body decoded by the table's codec, its handler. */
  #frame(def: FrameDef, h: FrameHeader, body: Buffer, crcOk: boolean, items: StreamItem[]): void {
    // The frame's fds: exactly fdCount, starting at firstFdSeq, none left behind.
    const fds = this.#fds.forFrame(h, this.#framer.frameStart, this.#framer.offset, this.#fdsAbsent);
    try {
      const c = new Cursor(body, this.limits);
      // The table's codec decodes the body; a frame without one (empty, or decoded with its header) gets undefined.
      let value: unknown;
      if (def.codec) value = def.codec.decode(c);
      else if (def.phase !== OrderPhase.STATE) c.finish(def.name);
      // The table's item for a frame that is no more than its body, else the frame's handler.
      if (def.item) items.push(def.item(value) as StreamItem);
      else items.push((this.#handlers[def.name as Exclude<FrameName, ItemFrameName>] as FrameHandler<unknown>)(value, { h, c, body, fds, crcOk }));
    } catch (err) {
      // Until its item is returned, the frame's fds are still the reader's to close.
      closeFds(fds);
      throw err;
    }
  }

  /**
   * One handler per frame type that is more than its body (the table yields the
   * item of the others), after its body was decoded by the table's codec: the
   * checks that need the reader's state, and the item it yields. Typed by
   * FrameName, so a frame type added to the table without an `item` needs its
   * handler here.
   */
  readonly #handlers: FrameHandlers = {
    HELLO: (hello, { h, fds }) => {
      chooseVersion(hello.minVersion, hello.maxVersion); // ERR_STREAM_VERSION when none in common
      if ((hello.probe ? 1 : 0) !== h.fdCount) throw protocolError(`HELLO with ${hello.probe ? 'a' : 'no'} probe declares ${h.fdCount} fd(s)`);
      const probe = hello.probe ? (fds[0]! < 0 ? (this.#fdsAbsent ? 'none' : 'missing') : checkProbe(fds[0]!, hello.probe)) : 'none';
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
    SECTION_START: (_, f) => this.#sections.section(f.h, f.c, f.body, f.fds, f.crcOk, this.#features, this.#framer.frameStart),
    SECTION_PART: (_, f) => this.#sections.section(f.h, f.c, f.body, f.fds, f.crcOk, this.#features, this.#framer.frameStart),
    SECTION_END: (_, f) => this.#sections.section(f.h, f.c, f.body, f.fds, f.crcOk, this.#features, this.#framer.frameStart),
    SECTION_FULL: (_, f) => this.#sections.section(f.h, f.c, f.body, f.fds, f.crcOk, this.#features, this.#framer.frameStart),
    STAGE: (_, f) => this.#sections.stage(f.h, f.c, f.body, f.fds, this.#framer.frameStart),
    FREEZE: (freeze) => {
      this.#sections.freeze(freeze);
      return { type: 'freeze', freeze };
    },
    END_OF_STATE: (summary) => {
      this.#sections.endOfState(summary, this.#features);
      this.#phase = 'state-done';
      return { type: 'end-of-state', summary };
    },
    ACK: (ack) => {
      if (ack.stage === 5 && (this.#features & Features.STAGED) === 0) throw protocolError('ACK(STAGED) without the STAGED feature');
      return { type: 'ack', ack };
    },
    EOF: () => {
      if (this.pendingFds > 0) {
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_EXTRA, `${this.pendingFds} fd(s) arrived that no frame declared (closed)`, { details: { extra: this.pendingFds } });
      }
      this.#framer.done = true;
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
    this.#sections.plan(plan, this.#welcome);
    this.#phase = 'planned';
  }
}
