// Options, events and results of a handover session.
import { DEFAULT_STATE_JSON_LIMITS, type Resolved, type SourceDevice, type TargetDevice } from '../backends/types.js';
import type { PeerPolicy } from '../transport/peer.js';
import type { FdSocket } from '../transport/fd-socket.js';
import type { SectionPayload } from '../stream/writer.js';

/**
 * With staging (the STAGED feature, the default between two peers that have it):
 * source prepare → connect → authenticate → handshake → stage → freeze →
 * switch-over → adopt → commit → release → done; target ... → handshake → stage →
 * switch-over → adopt → commit → done. Without it (a 0.1.0 peer, staging: false):
 * freeze → transfer → verify on the source, transfer → verify → adopt on the target.
 */
export type SourcePhase = 'prepare' | 'connect' | 'authenticate' | 'handshake' | 'stage' | 'freeze' | 'switch-over' | 'transfer' | 'verify' | 'adopt' | 'commit' | 'release' | 'done' | 'aborted';
export type TargetPhase = 'prepare' | 'accept' | 'authenticate' | 'handshake' | 'stage' | 'switch-over' | 'transfer' | 'verify' | 'adopt' | 'commit' | 'done' | 'aborted';

export interface PhaseTimeouts {
  /** ms per phase; 0 = no limit. */
  connect?: number;
  authenticate?: number;
  handshake?: number;
  /**
   * Staging (with the STAGED feature), ms: the source sending every device's
   * STAGE and reading every ACK(STAGED) (a silent target fails it here, before
   * anything is frozen); the target waiting for the next STAGE or for FREEZE
   * (plus timeouts.freeze for the caller's freeze()).
   */
  stage?: number;
  /** The caller's freeze() (source). On timeout the source fails, tells the target and calls thaw(). */
  freeze?: number;
  transfer?: number;
  verify?: number;
  adopt?: number;
  /**
   * Writing COMMIT and waiting for the target's COMMITTED (source), or waiting
   * for the source's COMMIT (target).
   */
  commit?: number;
  /**
   * The stall bound, ms (0 = none): once frozen (source, from the transfer on) or
   * once the transfer began (target), the side fails when no stream bytes moved in
   * either direction for this long while it waits on the peer (PINGs and PONGs do
   * not count). Not a total deadline: a large state on a slow machine completes as
   * long as bytes keep moving. The source then thaws (ERR_HANDOVER_STALLED). The
   * target waits for the first section at most `freeze + stall`.
   */
  stall?: number;
}

export const DEFAULT_TIMEOUTS: Required<PhaseTimeouts> = {
  connect: 10_000,
  authenticate: 5_000,
  handshake: 10_000,
  stage: 30_000,
  freeze: 10_000,
  transfer: 0,
  verify: 30_000,
  adopt: 30_000,
  commit: 30_000,
  stall: 10_000,
};

export type HandoverEvent =
  | { type: 'phase'; phase: SourcePhase | TargetPhase; atMs: number }
  | { type: 'progress'; bytes: number; totalBytes: number | null; sections: number; fds: number; etaMs: number | null }
  | { type: 'warning'; message: string };

/** Where the downtime went (source, with staging). */
export interface DowntimeBreakdown {
  /** The caller's freeze(), and the check of which staged backends changed. */
  freezeMs: number;
  /** Writing FREEZE, re-stages, every device's mutable state, the VMM state and END_OF_STATE. */
  switchOverMs: number;
  /** From END_OF_STATE written until ACK(ADOPTED) read: the target's reading, adopting and its ACK. */
  adoptMs: number;
  /** Bytes written in the switch-over (FREEZE to END_OF_STATE, framing included). */
  switchOverBytes: number;
}

export interface HandoverTimings {
  /** Start to end, ms. */
  totalMs: number;
  /**
   * Source: from the call of freeze() (the backends stop being used) until the
   * target said ADOPTED; target: from the first section until it adopted all.
   */
  downtimeMs: number | null;
  /** ms spent in each phase. */
  phases: Record<string, number>;
  /** With staging (source): the downtime in parts. */
  breakdown?: DowntimeBreakdown;
}

export interface SendHandoverOptions {
  /** An FdSocket, a socket path to connect to, or a connected fd (checked: it must be AF_UNIX). */
  socket: FdSocket | string | number;
  devices: readonly SourceDevice[];
  /**
   * VMM-level state that travels with the devices (a Buffer, or parts from an
   * iterable). With `precopy`, this is the final part, sent after the freeze.
   */
  state?: SectionPayload;
  /**
   * Stage the backends before the freeze (the STAGED feature, when the target has
   * it; default true): every device's fds and static metadata go and are verified
   * by the target before freeze(), so that only mutable state moves in the downtime.
   * false, or a target without it (release 0.1.0), gives the old order.
   */
  staging?: boolean;
  /**
   * VMM state handed over before the freeze (with staging only): sent while the
   * VMM still runs, after the devices are staged; `state` then follows the freeze
   * as the final part of the same section. Tracking what changed meanwhile is the
   * caller's job (put it in the final part). A Buffer or an (async) iterable of parts.
   */
  precopy?: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;
  /** Version of that state's format. Default 1. */
  stateVersion?: number;
  /** The session promise that this is a local migration: without it no fd moves. */
  backendTransfer: boolean;
  peer?: PeerPolicy;
  timeouts?: PhaseTimeouts;
  /** Largest state part per frame (default 1 MiB). */
  partSize?: number;
  /** Send large parts as sealed memfds (default false). */
  memfdPayloads?: boolean;
  /** Checksum bodies (default true). */
  crc?: boolean;
  /** Called right before the devices are captured (phase 'freeze', counted in the downtime): stop using the backends. */
  freeze?: () => void | Promise<void>;
  /** Called when the handover fails after freeze(): use the backends again. */
  thaw?: () => void | Promise<void>;
  onEvent?: (e: HandoverEvent) => void;
  /** Stops the handover (ABORT to the target) unless it already committed. */
  signal?: AbortSignal;
  /**
   * Runs a tiny in-process handover first (phase 'prepare', once per process),
   * so that the real one runs on compiled code: a cold first handover has a
   * several-ms longer downtime. Default true.
   */
  warmUp?: boolean;
  /**
   * Runs a full garbage collection as the handshake starts, so that V8 does not
   * stop this process for one inside the downtime (measured in the demo: a major
   * GC of 8–13 ms right after the freeze in 5 of 6 runs without it, none in 8
   * runs with it). The handshake takes that GC instead. Default true.
   * It uses global.gc where node runs with --expose-gc; otherwise it sets that
   * flag with v8.setFlagsFromString for a moment to get gc() in a new context,
   * and clears it again (Node's docs call flags changed after start-up
   * unpredictable: start node with --expose-gc, or set this false, to avoid it).
   */
  collectGarbage?: boolean;
  /**
   * SO_SNDBUF for the session's socket, so that the state can be queued to the
   * kernel at once instead of waiting for the target to drain it piece by
   * piece. Default: room for the state after the freeze or the precopy,
   * whichever is larger (up to 4 MiB; the kernel caps it at
   * net.core.wmem_max), never smaller than the socket has; 0 leaves it alone.
   */
  sendBufferSize?: number;
}

export interface DeviceOutcome {
  id: string;
  kind: string;
  /**
   * 'moved': with its fds; 'state-only': its state went, the target opens its own
   * backend; 'refused': not transferred; 'dropped': staged, then gone or unusable at
   * the freeze (unplugged, its fds closed): nothing of it moved, the target closed
   * what was staged (`reason` says why).
   */
  outcome: 'moved' | 'state-only' | 'refused' | 'dropped';
  fds: number;
  /** With staging: the device's backend changed after it was staged and was staged again inside the downtime. */
  restaged?: boolean;
  reason?: string;
}

export interface SendHandoverResult {
  devices: DeviceOutcome[];
  stateBytes: number;
  /** Bytes written to the channel, all frames. */
  bytes: number;
  /** Backend fds that moved. */
  fds: number;
  /** The backends were staged before the freeze (the STAGED feature was negotiated). */
  staged: boolean;
  timings: HandoverTimings;
}

/** The backend type a target device adopts or opens. */
export type BackendOf<T> = T extends TargetDevice<infer B> ? B : never;

/**
 * A resolved device of one of the accepted targets: a union over them, with
 * `kind` as the discriminant, so that `if (d.kind === 'generic') d.backend` is a
 * GenericBackend (or null) without a cast; with one kind accepted, no test is needed.
 */
export type ResolvedOf<T> = T extends TargetDevice<infer B> ? Omit<Resolved<B>, 'kind'> & { kind: T['kind'] } : never;

export interface ReceiveHandoverOptions<A extends readonly TargetDevice[] = readonly TargetDevice[]> {
  /** An FdSocket, a path to listen on (one connection is accepted), or a connected fd. */
  socket: FdSocket | string | number;
  accept: A;
  backendTransfer: boolean;
  peer?: PeerPolicy;
  timeouts?: PhaseTimeouts;
  /** State parts as they arrive (then they are not kept in memory). */
  onState?: (part: Buffer) => void;
  /** Accept VMM state of these versions (default 1..1). */
  stateVersions?: [number, number];
  onEvent?: (e: HandoverEvent) => void;
  signal?: AbortSignal;
  /** Checks each received fd against its attachment kind in the reader too (default true). */
  verifyFdKinds?: boolean;
  /** As in SendHandoverOptions: warm the handover path before the source freezes (default true). */
  warmUp?: boolean;
  /** As in SendHandoverOptions: a full garbage collection as the handshake starts, so that none falls in the downtime (default true). */
  collectGarbage?: boolean;
  /**
   * What a source may make this side hold or do (defaults in DEFAULT_HANDOVER_LIMITS).
   * Each is checked before the memory is taken or the work is done, from the
   * lengths and counts the stream declares; over one, the handover fails with
   * ERR_STREAM_TOO_LARGE (details: what, value, limit) and the source is told.
   */
  limits?: HandoverLimits;
}

export interface HandoverLimits {
  /**
   * State kept in memory, all of it: the VMM state (unless onState takes it) and
   * every device's state. With onState, no single memfd part of the VMM state may
   * be larger (it is read into memory whole). Default 4 GiB (the largest memfd
   * payload). When the VMM state comes in several parts of a size the source did
   * not announce, joining them briefly takes that much again.
   */
  maxStateBytes?: number;
  /** One device's state, all its parts together. Default 64 MiB. */
  maxDeviceStateBytes?: number;
  /** The JSON part of a device's state, in bytes; checked before it is parsed. Default 4 MiB. */
  maxJsonBytes?: number;
  /** How deeply that JSON may nest ({ and [), checked by a linear scan before it is parsed. Default 64. */
  maxJsonDepth?: number;
  /** Offers in HELLO, and so devices in the PLAN; refused at the count, before one is read. Default 4096. */
  maxDevices?: number;
}

export const DEFAULT_HANDOVER_LIMITS: Required<HandoverLimits> = {
  maxStateBytes: 4 * 1024 * 1024 * 1024,
  maxDeviceStateBytes: 64 * 1024 * 1024,
  ...DEFAULT_STATE_JSON_LIMITS,
  maxDevices: 4096,
};

export interface ReceiveHandoverResult<A extends readonly TargetDevice[] = readonly TargetDevice[]> {
  /**
   * 'committed': the source committed, the backends are this side's. 'takeover':
   * the source died before committing (its process is gone, checked with a pidfd)
   * after the handshake; this side kept what arrived whole and verified, as nobody
   * else holds it any more.
   */
  outcome: 'committed' | 'takeover';
  /** Every planned device arrived and was adopted (always true when committed). */
  complete: boolean;
  /** Every accepted device, resolved: received, opened by its opener, or none. Typed from `accept` (see ResolvedOf). */
  devices: Map<string, ResolvedOf<A[number]>>;
  /** The VMM state (unless onState took it). */
  state: Buffer | null;
  stateBytes: number;
  bytes: number;
  fds: number;
  timings: HandoverTimings;
  /** With staging: devices the source dropped at the freeze (their staged fds were closed). */
  dropped: { id: string; instance: number; reason: string }[];
  /** The backends were staged before the freeze. */
  staged: boolean;
  /** Source's peer credentials. */
  peer: { pid: number; uid: number; gid: number } | null;
}

/** The pseudo-device carrying VMM state. */
export const STATE_DEVICE_ID = 'vmm-state';
