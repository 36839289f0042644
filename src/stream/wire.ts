// Wire constants and types of the migration stream (docs/stream-format.md). The
// frame types (FrameType, FRAME_NAMES) and their body codecs are frames.ts's.
import type { FdKind } from '../fd/kind.js';

export const STREAM_VERSION = 1;
export const MAGIC = Buffer.from([0x89, 0x42, 0x54, 0x4d, 0x0d, 0x0a, 0x1a, 0x0a]);
export const HEADER_SIZE = 20;
export const TRAILER_SIZE = 4;
export const NO_SECTION = 0xffffffff;
export const UNKNOWN_BUDGET = 0xffffffff;
export const PROBE_SIZE = 16;

export const FrameFlags = {
  PAYLOAD_IN_MEMFD: 0x01,
} as const;

export const Features = {
  FDS: 1 << 0,
  MEMFD_PAYLOAD: 1 << 1,
  BODY_CRC: 1 << 2,
  /** Backends are staged (STAGE frames, per-device ACK(STAGED)) before the freeze; only mutable state follows FREEZE. */
  STAGED: 1 << 3,
} as const;
export const ALL_FEATURES = Features.FDS | Features.MEMFD_PAYLOAD | Features.BODY_CRC | Features.STAGED;

export const OfferFlags = {
  WANTS_FDS: 1 << 0,
  REQUIRED: 1 << 1,
} as const;

export const Decision = {
  REFUSE: 0,
  STATE_ONLY: 1,
  WITH_FDS: 2,
} as const;
export type DecisionCode = (typeof Decision)[keyof typeof Decision];

export const Reason = {
  NONE: 0,
  UNKNOWN_DEVICE: 1,
  VERSION_TOO_NEW: 2,
  VERSION_TOO_OLD: 3,
  KIND_UNSUPPORTED: 4,
  NOT_WANTED: 5,
  FDS_NOT_ACCEPTED: 6,
} as const;
export type ReasonCode = (typeof Reason)[keyof typeof Reason];
export const REASON_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Reason).map(([k, v]) => [v, k.toLowerCase().replace(/_/g, '-')]));

export const AckStage = {
  LOADED: 1,
  VERIFIED: 2,
  ADOPTED: 3,
  COMMITTED: 4,
  /** With STAGED: one staged device verified (sectionId: its STAGE frame's). */
  STAGED: 5,
} as const;
export type AckStageCode = (typeof AckStage)[keyof typeof AckStage];

/**
 * Attachment kinds (one fd each): what the source declares an fd to be on the
 * wire; its code is its position here + 1 (docs/stream-format.md: never reorder).
 * Two families (docs/architecture.md, "Kinds of fd"): the fd kinds of FdKind that
 * the wire knows, by the same name and meaning (FdAttachmentKind: 'tap',
 * 'vhost-net', 'eventfd', 'memfd'), and roles ('vhost-user': a unix stream
 * socket, 'chardev-socket': a connected socket, 'listener': a listening socket,
 * 'generic': any fd). The reader checks each fd against its kind (kindMatches).
 */
export const ATTACHMENT_KINDS = ['tap', 'vhost-net', 'vhost-user', 'eventfd', 'memfd', 'chardev-socket', 'listener', 'generic'] as const;
export type AttachmentKind = (typeof ATTACHMENT_KINDS)[number];
/** The attachment kinds that are fd kinds (FdKind, as inspectFd names them) by the same name and meaning. */
export type FdAttachmentKind = Extract<AttachmentKind, FdKind>;
/** The attachment kinds that name a role, not an fd kind: what the fd is for ('generic': anything). */
export type RoleAttachmentKind = Exclude<AttachmentKind, FdKind>;
/** FdAttachmentKind as a list (checked against the type: a new FdKind that is also an attachment kind's name must be added here). */
export const FD_ATTACHMENT_KINDS = ['tap', 'vhost-net', 'eventfd', 'memfd'] as const satisfies readonly FdAttachmentKind[];
// Compile-time: FD_ATTACHMENT_KINDS lists every FdAttachmentKind (the `satisfies` above checks the other direction).
const _everyFdAttachmentKind: Exclude<FdAttachmentKind, (typeof FD_ATTACHMENT_KINDS)[number]> extends never ? true : never = true;
void _everyFdAttachmentKind;

/** Whether an fd kind is one the wire knows by the same name. */
export function isFdAttachmentKind(kind: FdKind): kind is FdAttachmentKind {
  return (FD_ATTACHMENT_KINDS as readonly string[]).includes(kind);
}

/**
 * The attachment kind to declare for an fd of this kind when nothing more is known
 * of its role: its own name when the wire knows it ('tap', 'vhost-net', 'eventfd',
 * 'memfd'), else 'generic'. `attachmentKindOf(inspectFd(fd).kind)` always passes
 * the reader's check of that fd.
 */
export function attachmentKindOf(kind: FdKind): AttachmentKind {
  return isFdAttachmentKind(kind) ? kind : 'generic';
}
export function attachmentKindCode(kind: AttachmentKind): number {
  return ATTACHMENT_KINDS.indexOf(kind) + 1;
}
export function attachmentKindName(code: number): AttachmentKind | undefined {
  return ATTACHMENT_KINDS[code - 1];
}

export const AttachmentRole = {
  DEVICE: 0,
  PAYLOAD: 1,
} as const;

export const SEALS_REQUIRED = 0x0002 | 0x0004 | 0x0008; // F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE

export interface StreamLimits {
  maxBody: number;
  maxFdsPerFrame: number;
  maxFdsPerStream: number;
  maxSections: number;
  maxDevices: number;
  maxMeta: number;
  maxString: number;
  maxMemfdPayload: number;
}

export const DEFAULT_LIMITS: StreamLimits = {
  maxBody: 64 * 1024 * 1024,
  maxFdsPerFrame: 4096,
  maxFdsPerStream: 1 << 20,
  maxSections: 65536,
  maxDevices: 65536,
  maxMeta: 64 * 1024,
  maxString: 4096,
  maxMemfdPayload: 4 * 1024 * 1024 * 1024,
};

// ---------------------------------------------------------------- frame contents

export interface Offer {
  kind: string;
  id: string;
  instance: number;
  version: number;
  fdCount: number;
  wantsFds: boolean;
  required: boolean;
}

export interface Hello {
  minVersion: number;
  maxVersion: number;
  features: number;
  canPassFds: boolean;
  fdBudget: number;
  /**
   * 16 random bytes, or null. When set, HELLO carries one fd: a sealed memfd
   * holding these bytes. A target that does not receive it knows that something
   * between the two (a relay, a proxy) drops SCM_RIGHTS.
   */
  probe?: Uint8Array | null;
  offers: Offer[];
  info: Record<string, unknown> | null;
}

export interface Answer {
  id: string;
  instance: number;
  decision: DecisionCode;
  reason: ReasonCode;
  minVersion: number;
  maxVersion: number;
}

export interface Welcome {
  version: number;
  features: number;
  canPassFds: boolean;
  fdBudget: number;
  answers: Answer[];
  info: Record<string, unknown> | null;
}

export interface PlannedDevice {
  kind: string;
  id: string;
  instance: number;
  version: number;
  withFds: boolean;
  fdCount: number;
}

export interface Plan {
  version: number;
  features: number;
  totalFds: number;
  devices: PlannedDevice[];
}

export interface AttachmentHeader {
  kind: AttachmentKind;
  role: 0 | 1;
  name: string;
  meta: Record<string, unknown> | null;
}

/** A section frame's body, without its payload bytes. */
export interface SectionHeader {
  sectionId: number;
  /** START and FULL only. */
  instanceId?: number;
  versionId?: number;
  idstr?: string;
  attachments: AttachmentHeader[];
  payloadLength: number;
  /** With PAYLOAD_IN_MEMFD: CRC of the memfd's content. */
  payloadCrc?: number;
}

/** A device the source dropped at the freeze (FREEZE body): its staged fds are closed, no section follows. */
export interface DroppedDevice {
  id: string;
  instance: number;
  reason: string;
}

export interface Freeze {
  dropped: DroppedDevice[];
}

export interface EndOfState {
  sectionCount: number;
  totalFds: number;
  payloadBytes: bigint;
}

export interface Ack {
  stage: AckStageCode;
  sectionId: number;
  detail: string;
}

export interface Nack {
  code: string;
  reason: string;
  sectionId: number;
}

export interface Ping {
  token: bigint;
  timeNs: bigint;
}

export interface Abort {
  code: string;
  reason: string;
}
