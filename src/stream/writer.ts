// (Over 450 lines: one class whose methods each write one kind of frame, all under
// the same sticky-error, plan and section checks, which they share as private
// state; a frame's bytes are frame-encoder.ts's and payloads payload.ts's.)
//
// The stream writer: frames to a channel, large payloads streamed in parts (memory
// stays bounded whatever the state size), optionally by sealed memfd. The first
// channel error is sticky: every later call reports it (QEMU's qemu-file does the
// same). A section that would need fds on a channel that cannot carry them fails
// before anything is written. Payloads in a memfd: payload.ts; a frame's bytes:
// frame-encoder.ts.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFd } from '../fd/index.js';
import { fillMemfd } from '../fd/memfd.js';
import type { StreamChannel } from './channel.js';
import { encodeFrame } from './frame-encoder.js';
import { FRAME_NAMES, FRAMES, FrameType, type FrameBodies, type ItemFrameName } from './frames.js';
import { checkMemfdPayload, forEachPart, isMemfdPayload, sendByMemfd, type OutgoingAttachment, type SectionDevice, type SectionPayload } from './payload.js';
import { encodeAck, encodeBody, encodeEndOfState, encodeFreeze, encodeHello, encodePlan, encodeSectionPrefix, encodeWelcome } from './codec.js';
import { AttachmentRole, Features, FrameFlags, NO_SECTION, type AckStageCode, type AttachmentHeader, type DroppedDevice, type Hello, type Plan, type PlannedDevice, type Welcome } from './wire.js';

export type { MemfdPayload, OutgoingAttachment, SectionDevice, SectionPayload } from './payload.js';
export { fillMemfd } from '../fd/memfd.js';

export interface StreamWriterOptions {
  /** Largest payload part per frame. Default 1 MiB. */
  partSize?: number;
  /** With MEMFD_PAYLOAD: parts of at least this many bytes travel in a sealed memfd. Default 256 KiB. */
  memfdThreshold?: number;
  /** Write the 8-byte magic before the first frame (default true). */
  magic?: boolean;
  /** Observe each frame written (progress). */
  onFrame?: (info: { type: number; bytes: number; fds: number; payloadBytes: number }) => void;
}

export interface WriterTotals {
  frames: number;
  bytes: number;
  sections: number;
  deviceFds: number;
  payloadBytes: bigint;
}

const EMPTY = new Uint8Array(0);
const PAYLOAD_ATTACHMENT: AttachmentHeader = { kind: 'memfd', role: AttachmentRole.PAYLOAD, name: 'payload', meta: null };

export class StreamWriter {
  readonly channel: StreamChannel;
  readonly #partSize: number;
  readonly #memfdThreshold: number;
  readonly #onFrame: StreamWriterOptions['onFrame'];
  #magicPending: boolean;
  #error: BackendTransferError | null = null;
  #features = Features.BODY_CRC; // handshake frames always carry a CRC
  #plan: Plan | null = null;
  #fdSeq = 0;
  #nextSectionId = 1;
  #written = new Set<string>();
  /** The section whose SECTION_START went out and whose SECTION_END did not yet. */
  #openSection: number | null = null;
  /** The device whose section is being written (counted in the totals already). */
  #writing: string | null = null;
  /** Why the state is broken (a section's payload failed midway): only ABORT (and PING, PONG) may follow, then EOF. */
  #broken: string | null = null;
  /** With STAGED: device fds of each device's stage in effect (dropped devices removed). */
  #staged = new Map<string, number>();
  #dropped = new Set<string>();
  #frozen = false;
  #openPiecewise: { device: SectionDevice; sectionId: number } | null = null;
  #busy: Promise<void> = Promise.resolve();
  readonly totals: WriterTotals = { frames: 0, bytes: 0, sections: 0, deviceFds: 0, payloadBytes: 0n };

  constructor(channel: StreamChannel, options: StreamWriterOptions = {}) {
    this.channel = channel;
    this.#partSize = options.partSize ?? 1024 * 1024;
    this.#memfdThreshold = options.memfdThreshold ?? 256 * 1024;
    this.#magicPending = options.magic ?? true;
    this.#onFrame = options.onFrame;
    if (!(this.#partSize >= 1)) throw BackendTransferError.invalidArgument('partSize must be at least 1');
  }

  /** The first error, after which nothing more is written. */
  get error(): BackendTransferError | null {
    return this.#error;
  }

  /** The plan written (source side), once plan() resolved. */
  get currentPlan(): Plan | null {
    return this.#plan;
  }

  /** Features in use: after plan() on a source, after welcome() on a target. */
  get features(): number {
    return this.#features;
  }

  // ---------------------------------------------------------------- handshake

  /**
   * With h.probe set, HELLO carries a sealed memfd holding the probe bytes: the
   * target learns whether fds survive the way between the two (docs/stream-format.md).
   */
  hello(h: Hello): Promise<void> {
    return this.#serial(async () => {
      if (!h.probe) return this.#frame(FrameType.HELLO, 0, [encodeHello(h)], []);
      if (!this.channel.canPassFds) throw new BackendTransferError(ErrorCodes.ERR_CHANNEL_CANNOT_PASS_FDS, 'a HELLO probe needs a channel that can carry fds; nothing was written');
      const probe = fillMemfd(h.probe, 'bt-probe');
      try {
        await this.#frame(FrameType.HELLO, 0, [encodeHello(h)], [probe]);
      } finally {
        closeFd(probe);
      }
    });
  }

  /** Target side: the answer; its features apply to the return path from now on. */
  welcome(w: Welcome): Promise<void> {
    return this.#serial(async () => {
      await this.#frame(FrameType.WELCOME, 0, [encodeWelcome(w)], []);
      this.#features = w.features;
    });
  }

  /** Source side: the negotiated layout; sections are checked against it. */
  plan(p: Plan): Promise<void> {
    return this.#serial(async () => {
      if (p.totalFds > 0 && !this.channel.canPassFds) {
        throw new BackendTransferError(ErrorCodes.ERR_CHANNEL_CANNOT_PASS_FDS, `the plan moves ${p.totalFds} fds but this channel cannot carry fds; nothing was written`);
      }
      await this.#frame(FrameType.PLAN, 0, [encodePlan(p)], []);
      this.#plan = p;
      this.#features = p.features;
    });
  }

  // ---------------------------------------------------------------- sections

  /**
   * Writes one device's section: its attachments (fds) on the first frame, and its
   * payload in parts of at most partSize bytes (START/PART/END, or FULL when one
   * frame holds it). An iterable payload is pulled one part ahead, so memory stays
   * bounded. Checks against the plan before writing anything.
   */
  section(device: SectionDevice, attachments: readonly OutgoingAttachment[], payload: SectionPayload = EMPTY): Promise<void> {
    return this.#serial(async () => {
      try {
        await this.#section(device, attachments, payload);
      } catch (err) {
        // Its payload failed after the checks (the section is counted, perhaps open
        // after SECTION_START): no later section or END_OF_STATE can be right, and a
        // reader takes only ABORT inside an open section (docs/stream-format.md, "Order").
        if (this.#writing !== null) {
          this.#broken = this.#openSection !== null ? `section ${this.#openSection} (${this.#writing}) was left open when its payload failed` : `the section of ${this.#writing} failed`;
        }
        throw err;
      } finally {
        this.#writing = null;
      }
    });
  }

  async #section(device: SectionDevice, attachments: readonly OutgoingAttachment[], payload: SectionPayload): Promise<void> {
    const key = `${device.id}\0${device.instance}`;
    const planned = this.#plannedDevice(device);
    if (attachments.length > 0 && !this.channel.canPassFds) {
      throw new BackendTransferError(
        ErrorCodes.ERR_CHANNEL_CANNOT_PASS_FDS,
        `section ${device.id} carries ${attachments.length} fd(s) but this channel cannot carry fds (not an AF_UNIX socket); nothing was written`,
      );
    }
    const staged = (this.#features & Features.STAGED) !== 0;
    if (staged && this.#dropped.has(key)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_NOT_NEGOTIATED, `device ${device.id}/${device.instance} was dropped at the freeze; nothing was written`);
    if (planned && staged && attachments.length > 0) {
      throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_EXTRA, `section ${device.id}: with STAGED a section carries no device fds (they go in STAGE); nothing was written`);
    }
    if (planned) {
      if (!staged && attachments.length !== planned.fdCount) {
        throw new BackendTransferError(
          attachments.length > planned.fdCount ? ErrorCodes.ERR_STREAM_FD_EXTRA : ErrorCodes.ERR_STREAM_FD_MISSING,
          `section ${device.id} has ${attachments.length} fd(s) but the plan moves ${planned.fdCount}${planned.withFds ? '' : ' (state only)'}; nothing was written`,
        );
      }
      if (device.version !== planned.version) throw BackendTransferError.invalidArgument(`section ${device.id} has version ${device.version}, the plan says ${planned.version}`);
    }
    if (this.#written.has(key)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_DUPLICATE_SECTION, `device ${device.id}/${device.instance} already has a section`);
    if (isMemfdPayload(payload)) checkMemfdPayload(payload, this.#features);
    this.#written.add(key);
    this.#writing = device.id;
    const sectionId = this.#nextSectionId++;
    const atts = attachments.map((a) => ({ kind: a.kind, role: AttachmentRole.DEVICE, name: a.name, meta: a.meta ?? null }));
    const fds = attachments.map((a) => a.fd);
    this.totals.sections++;
    this.totals.deviceFds += fds.length;

    if (isMemfdPayload(payload)) {
      await this.#sectionFrame(FrameType.SECTION_FULL, sectionId, device, atts, fds, payload.length, null, payload.memfd);
      return;
    }
    let first = true;
    const emit = async (part: Uint8Array, last: boolean): Promise<void> => {
      const type = first ? (last ? FrameType.SECTION_FULL : FrameType.SECTION_START) : last ? FrameType.SECTION_END : FrameType.SECTION_PART;
      await this.#sectionFrame(type, sectionId, device, first ? atts : [], first ? fds : [], part.length, part, null);
      first = false;
    };
    await forEachPart(payload, this.#partSize, emit);
  }

  #plannedDevice(device: SectionDevice): PlannedDevice | null {
    if (!this.#plan) return null;
    const d = this.#plan.devices.find((x) => x.id === device.id && x.instance === device.instance);
    if (!d) throw new BackendTransferError(ErrorCodes.ERR_STREAM_NOT_NEGOTIATED, `device ${device.id}/${device.instance} is not in the plan; nothing was written`);
    return d;
  }

  /** One frame of a section: its part inline, or by memfd (the given one, or one made of a large part when MEMFD_PAYLOAD is in use). */
  async #sectionFrame(
    type: number,
    sectionId: number,
    device: SectionDevice,
    atts: AttachmentHeader[],
    fds: number[],
    length: number,
    inline: Uint8Array | null,
    givenMemfd: number | null,
  ): Promise<void> {
    const send = async (memfd: number | null, payloadCrc: number): Promise<void> => {
      const frameAtts = memfd !== null ? [...atts, PAYLOAD_ATTACHMENT] : atts;
      const prefix = encodeSectionPrefix(
        type,
        { sectionId, instanceId: device.instance, versionId: device.version, idstr: device.id, attachments: frameAtts, payloadLength: length, payloadCrc },
        memfd !== null,
      );
      const body = memfd !== null || inline === null || inline.length === 0 ? [prefix] : [prefix, inline];
      this.totals.payloadBytes += BigInt(length);
      await this.#frame(type, memfd !== null ? FrameFlags.PAYLOAD_IN_MEMFD : 0, body, memfd !== null ? [...fds, memfd] : fds, length);
    };
    const useMemfd = givenMemfd !== null || (inline !== null && inline.length >= this.#memfdThreshold && (this.#features & Features.MEMFD_PAYLOAD) !== 0 && this.channel.canPassFds);
    return useMemfd ? sendByMemfd(inline, givenMemfd, length, (this.#features & Features.BODY_CRC) !== 0, send) : send(null, 0);
  }

  // ---------------------------------------------------------------- staged backends (STAGED)

  /**
   * With STAGED: one device's backend fds and static metadata (a STAGE frame),
   * before the freeze; again after FREEZE for a device whose backend changed (a
   * re-stage replaces the earlier one). The fds stay the caller's.
   */
  stage(device: SectionDevice, attachments: readonly OutgoingAttachment[], payload: Uint8Array): Promise<void> {
    return this.#serial(async () => {
      if ((this.#features & Features.STAGED) === 0) throw BackendTransferError.invalidArgument('STAGE needs the negotiated STAGED feature');
      const key = `${device.id}\0${device.instance}`;
      const planned = this.#plannedDevice(device);
      if (this.#dropped.has(key)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_NOT_NEGOTIATED, `device ${device.id}/${device.instance} was dropped at the freeze; nothing was written`);
      if (attachments.length > 0 && !this.channel.canPassFds)
        throw new BackendTransferError(ErrorCodes.ERR_CHANNEL_CANNOT_PASS_FDS, `STAGE ${device.id} needs a channel that can carry fds; nothing was written`);
      if (planned && (!planned.withFds || attachments.length !== planned.fdCount)) {
        throw new BackendTransferError(
          attachments.length > planned.fdCount ? ErrorCodes.ERR_STREAM_FD_EXTRA : ErrorCodes.ERR_STREAM_FD_MISSING,
          `STAGE ${device.id} has ${attachments.length} fd(s) but the plan moves ${planned.fdCount}${planned.withFds ? '' : ' (state only: nothing to stage)'}; nothing was written`,
        );
      }
      if (planned && device.version !== planned.version) throw BackendTransferError.invalidArgument(`STAGE ${device.id} has version ${device.version}, the plan says ${planned.version}`);
      const sectionId = this.#nextSectionId++;
      const atts = attachments.map((a) => ({ kind: a.kind, role: AttachmentRole.DEVICE, name: a.name, meta: a.meta ?? null }));
      const prefix = encodeSectionPrefix(
        FrameType.SECTION_FULL,
        { sectionId, instanceId: device.instance, versionId: device.version, idstr: device.id, attachments: atts, payloadLength: payload.length },
        false,
      );
      await this.#frame(
        FrameType.STAGE,
        0,
        payload.length ? [prefix, payload] : [prefix],
        attachments.map((a) => a.fd),
      );
      this.#staged.set(key, attachments.length);
    });
  }

  /** With STAGED: the source froze; `dropped` devices get no section (the target closes their staged fds). */
  freeze(dropped: readonly DroppedDevice[] = []): Promise<void> {
    return this.#serial(async () => {
      if ((this.#features & Features.STAGED) === 0) throw BackendTransferError.invalidArgument('FREEZE needs the negotiated STAGED feature');
      if (this.#frozen) throw BackendTransferError.invalidArgument('FREEZE was already written');
      for (const d of dropped) this.#plannedDevice({ ...d, version: 0 });
      await this.#frame(FrameType.FREEZE, 0, [encodeFreeze({ dropped: [...dropped] })], []);
      this.#frozen = true;
      for (const d of dropped) {
        const key = `${d.id}\0${d.instance}`;
        this.#dropped.add(key);
        this.#staged.delete(key);
      }
    });
  }

  /**
   * A section written piece by piece across calls (the precopied VMM state: its
   * parts before FREEZE, its final part after): SECTION_START (empty) now, then
   * sectionWrite() as SECTION_PARTs, then sectionClose() ending in SECTION_END. No
   * fds; inline payloads only. Nothing but FREEZE and PING/PONG may come between.
   */
  sectionOpen(device: SectionDevice): Promise<void> {
    return this.#serial(async () => {
      const key = `${device.id}\0${device.instance}`;
      const planned = this.#plannedDevice(device);
      if (planned && device.version !== planned.version) throw BackendTransferError.invalidArgument(`section ${device.id} has version ${device.version}, the plan says ${planned.version}`);
      if (planned && planned.fdCount > 0 && (this.#features & Features.STAGED) === 0) throw BackendTransferError.invalidArgument(`section ${device.id} needs its fds on its first frame`);
      if (this.#written.has(key)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_DUPLICATE_SECTION, `device ${device.id}/${device.instance} already has a section`);
      if (this.#openPiecewise) throw BackendTransferError.invalidArgument('a section is already open');
      this.#written.add(key);
      const sectionId = this.#nextSectionId++;
      this.totals.sections++;
      this.#openPiecewise = { device, sectionId };
      await this.#sectionFrame(FrameType.SECTION_START, sectionId, device, [], [], 0, EMPTY, null);
    });
  }

  sectionWrite(data: Uint8Array): Promise<void> {
    return this.#serial(async () => {
      const o = this.#openPiecewise;
      if (!o) throw BackendTransferError.invalidArgument('no section is open');
      for (let off = 0; off < data.length; off += this.#partSize) {
        const piece = data.subarray(off, Math.min(data.length, off + this.#partSize));
        await this.#sectionFrame(FrameType.SECTION_PART, o.sectionId, o.device, [], [], piece.length, piece, null);
      }
    });
  }

  sectionClose(data: Uint8Array = EMPTY): Promise<void> {
    return this.#serial(async () => {
      const o = this.#openPiecewise;
      if (!o) throw BackendTransferError.invalidArgument('no section is open');
      let off = 0;
      for (; data.length - off > this.#partSize; off += this.#partSize) {
        const piece = data.subarray(off, off + this.#partSize);
        await this.#sectionFrame(FrameType.SECTION_PART, o.sectionId, o.device, [], [], piece.length, piece, null);
      }
      const last = data.subarray(off);
      await this.#sectionFrame(FrameType.SECTION_END, o.sectionId, o.device, [], [], last.length, last, null);
      this.#openPiecewise = null;
    });
  }

  /** The next STAGE's sectionId (what the target's ACK(STAGED) will name). */
  get nextSectionId(): number {
    return this.#nextSectionId;
  }

  endOfState(): Promise<void> {
    return this.#serial(() => {
      let totalFds = this.totals.deviceFds;
      if ((this.#features & Features.STAGED) !== 0) {
        // The device fds of the stages in effect (sections carry none).
        totalFds = 0;
        for (const n of this.#staged.values()) totalFds += n;
      }
      return this.#frame(FrameType.END_OF_STATE, 0, [encodeEndOfState({ sectionCount: this.totals.sections, totalFds, payloadBytes: this.totals.payloadBytes })], []);
    });
  }

  // ---------------------------------------------------------------- return path and control

  ack(stage: AckStageCode, detail = '', sectionId = NO_SECTION): Promise<void> {
    return this.acks([{ stage, sectionId, detail }]);
  }

  /**
   * Several ACKs in one write (one sendmsg where the kernel takes them all): the
   * same frames in the same order as one ack() each, which would each wait for
   * the one before to reach the kernel and wake the peer once per frame. For the
   * target's ACK(STAGED)s, answered as a batch of STAGEs is verified.
   */
  acks(list: readonly { stage: AckStageCode; sectionId: number; detail?: string }[]): Promise<void> {
    if (list.length === 0) return Promise.resolve();
    return this.#serial(() => this.#frames(list.map((a) => ({ type: FrameType.ACK, body: [encodeAck({ stage: a.stage, sectionId: a.sectionId, detail: a.detail ?? '' })] }))));
  }

  nack(code: string, reason: string, sectionId = NO_SECTION): Promise<void> {
    return this.send('NACK', { code, reason, sectionId });
  }

  ping(token: bigint): Promise<void> {
    return this.send('PING', { token, timeNs: process.hrtime.bigint() });
  }

  pong(token: bigint): Promise<void> {
    return this.send('PONG', { token, timeNs: process.hrtime.bigint() });
  }

  commit(): Promise<void> {
    return this.send('COMMIT');
  }

  abort(code: string, reason: string): Promise<void> {
    return this.send('ABORT', { code, reason });
  }

  /**
   * Writes any frame that is no more than its body (the frame table gives it an
   * `item`; it carries no fds), encoded by the table's codec: such a frame type
   * needs no method of its own here (docs/architecture.md, "Adding a frame type").
   */
  send<N extends ItemFrameName>(name: N, ...body: FrameBodies[N] extends undefined ? [] : [FrameBodies[N]]): Promise<void> {
    const def = FRAMES.get(FrameType[name])!;
    const bytes = def.codec ? [encodeBody(def.codec, body[0])] : [];
    return this.#serial(() => this.#frame(def.code, 0, bytes, []));
  }

  eof(): Promise<void> {
    return this.#serial(() => this.#frame(FrameType.EOF, 0, [], []));
  }

  // ---------------------------------------------------------------- plumbing

  /** One operation at a time, in call order; the sticky error stops all later ones. */
  #serial(op: () => Promise<void>): Promise<void> {
    const run = this.#busy.then(() => {
      if (this.#error) throw new BackendTransferError(ErrorCodes.ERR_STREAM_WRITER_FAILED, `the stream writer failed earlier: ${this.#error.message}`, { cause: this.#error });
      return op();
    });
    this.#busy = run.catch(() => undefined);
    return run;
  }

  async #frame(type: number, flags: number, body: Uint8Array[], fds: number[], payloadBytes = 0): Promise<void> {
    this.#checkNotBroken(type);
    const { head, rest } = encodeFrame(type, flags, body, fds, this.#magicPending, this.#features, this.#fdSeq);
    await this.#write(head, rest, fds);
    this.#afterWrite(type, body, fds, head, rest, payloadBytes);
  }

  /** Frames without fds, written as one gather list (one sendmsg where the kernel takes them all): the same bytes as one #frame each. */
  async #frames(frames: readonly { type: number; body: Uint8Array[] }[]): Promise<void> {
    for (const f of frames) this.#checkNotBroken(f.type);
    const parts: Uint8Array[] = [];
    const encoded = frames.map((f, i) => {
      const e = encodeFrame(f.type, 0, f.body, [], i === 0 && this.#magicPending, this.#features, this.#fdSeq);
      parts.push(e.head, ...e.rest);
      return e;
    });
    await this.#write(parts[0]!, parts.slice(1), []);
    frames.forEach((f, i) => this.#afterWrite(f.type, f.body, [], encoded[i]!.head, encoded[i]!.rest, 0));
  }

  /**
   * Hands a frame's (or frames') bytes and fds to the channel. A failure is
   * sticky, except a refusal before any byte went (fds on a channel that cannot
   * carry them), which leaves the stream intact.
   */
  async #write(head: Uint8Array, rest: Uint8Array[], fds: number[]): Promise<void> {
    try {
      await this.channel.writeFrame(head, rest, fds);
    } catch (err) {
      const e = err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, 'writing the stream');
      if (e.code !== ErrorCodes.ERR_CHANNEL_CANNOT_PASS_FDS) this.#error = e;
      throw e;
    }
    this.#magicPending = false;
  }

  #checkNotBroken(type: number): void {
    if (this.#broken !== null && type !== FrameType.ABORT && type !== FrameType.PING && type !== FrameType.PONG) {
      throw new BackendTransferError(ErrorCodes.ERR_STREAM_WRITER_FAILED, `${this.#broken}: only ABORT may follow (${FRAME_NAMES[type] ?? type} not written)`);
    }
  }

  /** The bookkeeping of a frame written. */
  #afterWrite(type: number, body: Uint8Array[], fds: number[], head: Uint8Array, rest: Uint8Array[], payloadBytes: number): void {
    this.#fdSeq += fds.length;
    if (type === FrameType.SECTION_START) this.#openSection = sectionIdOf(body);
    else if (type === FrameType.SECTION_END || type === FrameType.ABORT) {
      this.#openSection = null;
      if (type === FrameType.ABORT) this.#broken = null;
    }
    const bytes = head.length + rest.reduce((n, r) => n + r.length, 0);
    this.totals.frames++;
    this.totals.bytes += bytes;
    this.#onFrame?.({ type, bytes, fds: fds.length, payloadBytes });
  }
}

/** A section frame's sectionId: the first u32 of its body. */
function sectionIdOf(body: Uint8Array[]): number {
  const b = body[0]!;
  return Buffer.from(b.buffer, b.byteOffset, b.length).readUInt32LE(0);
}
