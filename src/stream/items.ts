// What the stream reader yields: one item per frame (StreamItem), with the
// received fds in it the caller's from then on.
import { closeFd, closeFds } from '../fd/index.js';
import { unmapBuffer } from '../fd/memfd.js';
import type { TableItem } from './frames.js';
import type { Ack, AttachmentHeader, EndOfState, Freeze, Hello, Plan, PlannedDevice, Welcome } from './wire.js';

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
  // NACK, PING, PONG, COMMIT, ABORT: the items the frame table yields (its `item`s).
  | TableItem
  | { type: 'eof' };

/** Nothing of a failed feed reaches the caller: closes the fds in its items, and unmaps their mapped payloads. */
export function releaseItems(items: readonly StreamItem[]): void {
  for (const it of items) {
    if (it.type === 'stage') closeFds(it.attachments.map((a) => a.fd));
    if (it.type === 'section') {
      closeFds(it.attachments.map((a) => a.fd));
      if (it.payloadFd !== undefined) closeFd(it.payloadFd);
      if (it.payloadMapped) unmapBuffer(it.payload);
    }
  }
}
