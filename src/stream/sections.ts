// The reader's bookkeeping of the planned devices and their sections (docs/
// stream-format.md, "Sections"): which devices were planned and in which version
// window, the section ids seen, the open section, each device's fds against its
// plan and their kinds, STAGE and FREEZE (STAGED), the payload of each section
// frame (inline, or a memfd: payload.ts), and the totals END_OF_STATE must match.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFd, fdKindOf, type FdKindInfo } from '../fd/index.js';
import { decodeSectionPrefix, protocolError, tooLarge, type Cursor, type FrameHeader } from './codec.js';
import type { ReceivedAttachment, SectionFrameName, SectionItem, StageItem } from './items.js';
import { PayloadMemfds } from './payload.js';
import { FRAME_NAMES, FrameType, opensSection } from './frames.js';
import { AttachmentRole, Features, FrameFlags, type AttachmentKind, type EndOfState, type Freeze, type Plan, type PlannedDevice, type StreamLimits, type Welcome } from './wire.js';

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

export interface SectionsOptions {
  limits: StreamLimits;
  verifyKinds: boolean;
  fdsAbsent: boolean;
  memfdMode: 'read' | 'keep' | 'map';
  onPayload: ((device: PlannedDevice, length: number, inMemfd: boolean) => Buffer | undefined | void) | undefined;
}

const EMPTY = Buffer.alloc(0);

export class Sections {
  readonly limits: StreamLimits;
  readonly #verifyKinds: boolean;
  readonly #fdsAbsent: boolean;
  readonly #memfdMode: 'read' | 'keep' | 'map';
  readonly #onPayload: SectionsOptions['onPayload'];
  readonly #payloads: PayloadMemfds;
  #devices = new Map<string, DeviceState>();
  #sectionIds = new Set<number>();
  #open: DeviceState | null = null;
  #openSectionId = -1;
  #sectionCount = 0;
  #deviceFds = 0;
  #payloadBytes = 0n;
  /** With STAGED: FREEZE was read. */
  #frozen = false;

  constructor(options: SectionsOptions) {
    this.limits = options.limits;
    this.#verifyKinds = options.verifyKinds;
    this.#fdsAbsent = options.fdsAbsent;
    this.#memfdMode = options.memfdMode;
    this.#onPayload = options.onPayload;
    this.#payloads = new PayloadMemfds(options.memfdMode);
  }

  /** A section is open (between SECTION_START and SECTION_END). */
  get isOpen(): boolean {
    return this.#open !== null;
  }

  get openSectionId(): number {
    return this.#openSectionId;
  }

  /** With STAGED: FREEZE was read. */
  get frozen(): boolean {
    return this.#frozen;
  }

  /** ABORT: the open section, if any, will not be finished. */
  abandon(): void {
    this.#open = null;
  }

  /** PLAN's devices, each with the version window the WELCOME (if any) answered. */
  plan(plan: Plan, welcome: Welcome | null): void {
    // One map of the answers, not a search per planned device: a PLAN is checked in linear time.
    const answers = new Map<string, { minVersion: number; maxVersion: number }>();
    for (const a of welcome?.answers ?? []) {
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
  }

  /** A section frame: its device, its place in the section, its fds and its payload. */
  section(h: FrameHeader, c: Cursor, body: Buffer, fds: number[], crcOk: boolean, features: number, offset: number): SectionItem {
    const s = decodeSectionPrefix(c, h.type, h.flags, h.fdCount);
    const inMemfd = (h.flags & FrameFlags.PAYLOAD_IN_MEMFD) !== 0;
    if (inMemfd && (features & Features.MEMFD_PAYLOAD) === 0) throw protocolError('a memfd payload without the MEMFD_PAYLOAD feature');
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
    const staged = (features & Features.STAGED) !== 0;
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
        payload = this.#payloads.take(payloadFd!, s.payloadLength, s.payloadCrc ?? 0, features, into);
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
      offset: offset,
      bodyLength: h.bodyLength,
    };
    if (payloadFd !== undefined) item.payloadFd = payloadFd;
    if (mapped) item.payloadMapped = true;
    return item;
  }

  /** A STAGE frame: a planned device with fds, all its fds (of their kinds), a new sectionId. */
  stage(h: FrameHeader, c: Cursor, body: Buffer, fds: number[], offset: number): StageItem {
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
      offset: offset,
      bodyLength: h.bodyLength,
    };
  }

  /** FREEZE: the devices it drops get no section. */
  freeze(f: Freeze): void {
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

  /** END_OF_STATE: every planned device has its section (and with STAGED its stage), and the totals match. */
  endOfState(e: EndOfState, features: number): void {
    if (this.#open !== null) throw protocolError(`END_OF_STATE inside section ${this.#openSectionId}`);
    const missing = [...this.#devices.values()].filter((d) => d.sectionId === null && !d.dropped).map((d) => d.device.id);
    if (missing.length > 0) throw protocolError(`END_OF_STATE before the sections of planned device(s) ${missing.join(', ')}`);
    if (e.sectionCount !== this.#sectionCount) throw protocolError(`END_OF_STATE counts ${e.sectionCount} sections, the reader saw ${this.#sectionCount}`);
    let deviceFds = this.#deviceFds;
    if ((features & Features.STAGED) !== 0) {
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
