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

export const BACKEND_KINDS = ['tap', 'vhost-user', 'chardev-socket', 'generic'] as const;
export type BackendKind = (typeof BACKEND_KINDS)[number];

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
