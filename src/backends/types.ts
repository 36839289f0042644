// What a backend kind provides on each side of a handover.
//
// Source: a SourceDevice says what it would move (its offer), refuses up front if
// it may never move (check), captures its fds and state into a section, and keeps
// owning its fds until the target has committed (then release).
// Target: a TargetDevice says what it accepts (kind, version window, fds or not),
// verifies what arrived against the declared metadata, adopts it, or opens its
// own backend when nothing came.
import type { OutgoingAttachment, SectionPayload } from '../stream/writer.js';
import type { ReceivedAttachment } from '../stream/reader.js';
import type { PlannedDevice } from '../stream/wire.js';

import type { BACKEND_REGISTRY } from './registry.js';
import type { Json, SourceCommon, TargetCommon } from './json.js';

/** The kinds in the registry (registry.ts): 'tap' | 'vhost-user' | 'chardev-socket' | 'generic'. */
export type BackendKind = (typeof BACKEND_REGISTRY)[number]['kind'];

export interface Captured {
  /** fds and their metadata, in the order the target will see them. Still the source's. */
  attachments: OutgoingAttachment[];
  /** Device state: small metadata as JSON, large state streamed in parts. */
  state: SectionPayload;
}

export interface SourceDevice {
  readonly kind: BackendKind;
  readonly id: string;
  readonly instance: number;
  /** Version of this device's state format. */
  readonly version: number;
  /** The per-device opt-in: move the backend itself when the session allows it. */
  readonly transfer: boolean;
  /** The handover fails if the target refuses this device. */
  readonly required: boolean;
  /**
   * With staging: the device went away after it was staged (hot-unplugged). At the
   * freeze the source then drops it (FREEZE names it) instead of moving it.
   */
  readonly unplugged?: boolean;
  /** fds capture() will attach. */
  fdCount(): number;
  /** Throws (ERR_BACKEND_NOT_MOVABLE, ...) when this backend may never move. Called before anything is sent. */
  check(): void;
  /**
   * The section for this device: with fds when `withFds` (the negotiated layout
   * says so), state only otherwise.
   */
  capture(withFds: boolean): Captured;
  /** After the target committed: close the source's copies. */
  release(): void;
}

/** What arrived for one device on the target. */
export interface Arrival {
  device: PlannedDevice;
  /** Device fds in order (owned by the arrival until adopt() or close). */
  attachments: ReceivedAttachment[];
  /** The device state (all parts joined). */
  state: Buffer;
  /** How large and deep the JSON in `state` may be (decodeState checks it before parsing). Default DEFAULT_STATE_JSON_LIMITS. */
  jsonLimits?: StateJsonLimits;
}

export interface StateJsonLimits {
  /** Bytes of the JSON part. */
  maxJsonBytes: number;
  /** Nesting of { and [. */
  maxJsonDepth: number;
}

/** The JSON limits of a device's state where the caller gives none (as receiveHandover's defaults). */
export const DEFAULT_STATE_JSON_LIMITS: StateJsonLimits = { maxJsonBytes: 4 * 1024 * 1024, maxJsonDepth: 64 };

export interface TargetDevice<T = unknown> {
  readonly kind: BackendKind;
  readonly id: string;
  readonly instance: number;
  readonly minVersion: number;
  readonly maxVersion: number;
  /** The per-device opt-in on the target: take the backend's fds. */
  readonly acceptFds: boolean;
  /** Proves that each received fd is what the metadata says. Throws ERR_BACKEND_VERIFY. Touches nothing. */
  verify(arrival: Arrival): void;
  /** Takes the fds over (only after every device verified). */
  adopt(arrival: Arrival): T;
  /** When no backend came (state only, or not transferred): open one. Without it, such a device is left unresolved. */
  open?(state: Buffer | null): T | Promise<T>;
}

/** The result of resolving a device on the target at start. */
export interface Resolved<T = unknown> {
  id: string;
  kind: BackendKind;
  /** 'received': the backend came with the handover; 'opened': the target opened its own; 'none': neither. */
  how: 'received' | 'opened' | 'none';
  backend: T | null;
  state: Buffer | null;
}

/** A received or opened backend's fds in a fixed order, with names, and its metadata (the CLI prints these). */
export interface BackendDescription {
  fds: { name: string; fd: number }[];
  meta: unknown;
}

/**
 * Everything about one backend kind, in one place: its Source and Target classes,
 * how a JSON description (the `send` / `receive` CLI's format) becomes a device,
 * how a received backend is described, and the kind's part of the warm-up
 * handover. A new kind is a file exporting one of these plus one line in
 * registry.ts (see docs/architecture.md).
 */
export interface BackendKindEntry<K extends string = string, B = unknown> {
  readonly kind: K;
  readonly Source: abstract new (...args: never[]) => SourceDevice;
  readonly Target: abstract new (...args: never[]) => TargetDevice<B>;
  /** A source device from its JSON description (the fds are this process's). */
  sourceFromJson(d: Json, common: SourceCommon, state: Buffer | undefined): SourceDevice;
  /** A target device from its JSON description. */
  targetFromJson(d: Json, common: TargetCommon): TargetDevice<B>;
  /** The fds and metadata of a backend this kind's target produced. */
  describe(backend: B): BackendDescription;
  /**
   * A source and a target for the in-process warm-up handover (handover/warmup.ts),
   * built on fds it opens and pushes onto `own` (closed by the caller). Left out
   * by kinds whose checks need privilege (a TAP needs CAP_NET_ADMIN).
   */
  warmUp?(own: number[]): { source: SourceDevice; target: TargetDevice };
}
