// vhost-user backends: the front-end's connected socket to the backend, the
// backend channel if any, per-queue kick/call eventfds and the inflight memfd,
// with the negotiated features and an opaque device state. The target proves the
// socket is a connected AF_UNIX stream (to the declared backend socket, when the
// kernel can tell), the eventfds are eventfds and the memfd has the declared size.
import { createEventfd, createMemfd, streamSocketPair } from '../fd/create.js';
import { peerName } from '../fd/socket-info.js';
import { closeFds, inspectFd } from '../fd/index.js';
import type { OutgoingAttachment } from '../stream/writer.js';
import { byName, checkCount, decodeState, encodeState, expectFd, invalid, requireCount, verifyError, stateOf } from './common.js';
import type { Arrival, Captured, StateJsonLimits } from './types.js';
import { SourceBase, TargetBase, type SourceOptionsBase, type TargetOptionsBase } from './base.js';
import { big, num, nums, text, type Json } from './json.js';
import type { BackendKindEntry } from './types.js';
import { writeSync } from 'node:fs';

export interface InflightInfo {
  size: number;
  offset: number;
  queueSize: number;
}

export interface VhostUserMeta {
  socketPath: string;
  /** Negotiated virtio/vhost features (u64, as a decimal string in JSON). */
  features: string;
  protocolFeatures: string;
  numQueues: number;
  kick: number;
  call: number;
  backendChannel: boolean;
  inflight: InflightInfo | null;
}

export interface VhostUserSourceOptions extends SourceOptionsBase {
  /** The front-end's connected socket to the backend. */
  socket: number;
  /** The backend channel (formerly slave channel), if one was set up. */
  backendChannel?: number;
  kickFds?: number[];
  callFds?: number[];
  /** The inflight region (a memfd), with its geometry. */
  inflight?: { fd: number } & InflightInfo;
  socketPath: string;
  features: bigint;
  protocolFeatures: bigint;
  numQueues: number;
  /** Opaque device state (the front-end's own). */
  deviceState?: Uint8Array | (() => Uint8Array);
}

export class VhostUserSource extends SourceBase<VhostUserSourceOptions> {
  readonly kind = 'vhost-user' as const;

  protected fds(): number[] {
    const o = this.o;
    return [o.socket, ...(o.backendChannel !== undefined ? [o.backendChannel] : []), ...(o.kickFds ?? []), ...(o.callFds ?? []), ...(o.inflight ? [o.inflight.fd] : [])];
  }

  check(): void {
    this.meta(); // every count and size a whole number
    const info = inspectFd(this.o.socket);
    if (info.kind !== 'unix-stream') throw invalid(this.id, `the vhost-user socket (fd ${this.o.socket}) is ${info.kind}, not a connected unix stream socket`);
  }

  meta(): VhostUserMeta {
    const o = this.o;
    checkCount(this.id, 'numQueues', o.numQueues, 'encode');
    if (o.inflight) for (const k of ['size', 'offset', 'queueSize'] as const) checkCount(this.id, `inflight.${k}`, o.inflight[k], 'encode', Number.MAX_SAFE_INTEGER);
    return {
      socketPath: o.socketPath,
      features: o.features.toString(),
      protocolFeatures: o.protocolFeatures.toString(),
      numQueues: o.numQueues,
      kick: o.kickFds?.length ?? 0,
      call: o.callFds?.length ?? 0,
      backendChannel: o.backendChannel !== undefined,
      inflight: o.inflight ? { size: o.inflight.size, offset: o.inflight.offset, queueSize: o.inflight.queueSize } : null,
    };
  }

  capture(withFds: boolean): Captured {
    this.check();
    const o = this.o;
    const meta = this.meta();
    const attachments: OutgoingAttachment[] = [];
    if (withFds) {
      attachments.push({ kind: 'vhost-user', name: 'socket', meta: { socketPath: o.socketPath }, fd: o.socket });
      if (o.backendChannel !== undefined) attachments.push({ kind: 'vhost-user', name: 'backend-channel', fd: o.backendChannel });
      (o.kickFds ?? []).forEach((fd, i) => attachments.push({ kind: 'eventfd', name: `kick${i}`, meta: { queue: i }, fd }));
      (o.callFds ?? []).forEach((fd, i) => attachments.push({ kind: 'eventfd', name: `call${i}`, meta: { queue: i }, fd }));
      if (o.inflight) attachments.push({ kind: 'memfd', name: 'inflight', meta: { size: o.inflight.size }, fd: o.inflight.fd });
    }
    return { attachments, state: encodeState({ ...meta }, stateOf(o.deviceState)) };
  }
}

/** An adopted vhost-user connection: the fds and the session facts. */
export class VhostUserBackend {
  #closed = false;
  #socket: number;
  constructor(
    readonly meta: VhostUserMeta,
    socket: number,
    readonly backendChannel: number | null,
    readonly kickFds: number[],
    readonly callFds: number[],
    readonly inflightFd: number | null,
    readonly deviceState: Buffer,
  ) {
    this.#socket = socket;
  }

  /** The connected socket to the backend (-1 once taken). */
  get socket(): number {
    return this.#socket;
  }

  get features(): bigint {
    return BigInt(this.meta.features);
  }

  get protocolFeatures(): bigint {
    return BigInt(this.meta.protocolFeatures);
  }

  /** Hands the socket fd over (to a VhostUserFrontend, say); close() then leaves it alone. */
  takeSocket(): number {
    const fd = this.#socket;
    this.#socket = -1;
    return fd;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFds(
      [this.#socket, ...(this.backendChannel !== null ? [this.backendChannel] : []), ...this.kickFds, ...this.callFds, ...(this.inflightFd !== null ? [this.inflightFd] : [])].filter((fd) => fd >= 0),
    );
  }
}

export type VhostUserTargetOptions = TargetOptionsBase<VhostUserMeta, VhostUserBackend>;

export class VhostUserTarget extends TargetBase<VhostUserMeta, VhostUserBackend> {
  readonly kind = 'vhost-user' as const;

  constructor(o: VhostUserTargetOptions) {
    super(o);
  }

  verify(arrival: Arrival): void {
    const id = this.id;
    const meta = checkedMeta(id, arrival.state, arrival.jsonLimits);
    const atts = byName(arrival);
    const sock = atts.get('socket');
    if (!sock) throw verifyError(id, 'the vhost-user socket is missing');
    expectFd(id, sock, ['unix-stream']);
    // The kernel knows which socket the front-end is connected to.
    if (meta.socketPath) {
      let peer: string | null = null;
      try {
        peer = peerName(sock.fd);
      } catch {
        peer = null;
      }
      if (peer !== null && peer !== '' && peer !== meta.socketPath) {
        throw verifyError(id, `the socket is connected to ${peer}, the source declared ${meta.socketPath}`, { attachment: 'socket' });
      }
    }
    let expected = 1;
    if (meta.backendChannel) {
      const bc = atts.get('backend-channel');
      if (!bc) throw verifyError(id, 'the backend channel is missing');
      expectFd(id, bc, ['unix-stream']);
      expected++;
    }
    for (const [prefix, n] of [
      ['kick', meta.kick],
      ['call', meta.call],
    ] as const) {
      for (let i = 0; i < n; i++) {
        const a = atts.get(`${prefix}${i}`);
        if (!a) throw verifyError(id, `${prefix}${i} is missing`);
        expectFd(id, a, ['eventfd']);
        expected++;
      }
    }
    if (meta.inflight) {
      const a = atts.get('inflight');
      if (!a) throw verifyError(id, 'the inflight memfd is missing');
      const info = expectFd(id, a, ['memfd']);
      if (info.size !== meta.inflight.size) throw verifyError(id, `the inflight memfd holds ${info.size} bytes, the source declared ${meta.inflight.size}`, { attachment: 'inflight' });
      expected++;
    }
    if (arrival.attachments.length !== expected) throw verifyError(id, `${arrival.attachments.length} fds arrived, the connection has ${expected}`);
  }

  adopt(arrival: Arrival): VhostUserBackend {
    const { blob } = decodeState(this.id, arrival.state, arrival.jsonLimits);
    const m = checkedMeta(this.id, arrival.state, arrival.jsonLimits);
    const atts = byName(arrival);
    const list = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => atts.get(`${prefix}${i}`)!.fd);
    return new VhostUserBackend(m, atts.get('socket')!.fd, atts.get('backend-channel')?.fd ?? null, list('kick', m.kick), list('call', m.call), atts.get('inflight')?.fd ?? null, blob);
  }
}

/** The metadata of a vhost-user section, every count, size and feature word checked. */
function checkedMeta(id: string, state: Buffer, limits?: StateJsonLimits): VhostUserMeta {
  const meta = decodeState(id, state, limits).meta;
  const u64 = (key: string): string => {
    const v = meta[key];
    if (typeof v !== 'string' || !/^[0-9]{1,20}$/.test(v) || BigInt(v) >= 1n << 64n) throw verifyError(id, `metadata ${key} is not a u64 in decimal`, { key });
    return v;
  };
  let inflight: InflightInfo | null = null;
  if (meta.inflight !== null && meta.inflight !== undefined) {
    if (typeof meta.inflight !== 'object' || Array.isArray(meta.inflight)) throw verifyError(id, 'metadata inflight is not an object', { key: 'inflight' });
    const inf = meta.inflight as Record<string, unknown>;
    inflight = {
      size: checkCount(id, 'inflight.size', inf.size, 'decode', Number.MAX_SAFE_INTEGER),
      offset: checkCount(id, 'inflight.offset', inf.offset, 'decode', Number.MAX_SAFE_INTEGER),
      queueSize: checkCount(id, 'inflight.queueSize', inf.queueSize, 'decode', Number.MAX_SAFE_INTEGER),
    };
  }
  if (meta.backendChannel !== undefined && typeof meta.backendChannel !== 'boolean') throw verifyError(id, 'metadata backendChannel is not a boolean', { key: 'backendChannel' });
  if (meta.socketPath !== undefined && typeof meta.socketPath !== 'string') throw verifyError(id, 'metadata socketPath is not a string', { key: 'socketPath' });
  return {
    socketPath: meta.socketPath ?? '',
    features: u64('features'),
    protocolFeatures: u64('protocolFeatures'),
    numQueues: requireCount(id, meta, 'numQueues'),
    kick: requireCount(id, meta, 'kick'),
    call: requireCount(id, meta, 'call'),
    backendChannel: meta.backendChannel === true,
    inflight,
  };
}

/** The vhost-user kind's registry entry. */
export const vhostUserKind: BackendKindEntry<'vhost-user', VhostUserBackend> = {
  kind: 'vhost-user',
  Source: VhostUserSource,
  Target: VhostUserTarget,
  sourceFromJson: (d: Json, common, state) => {
    const inflight = d.inflight as Json | undefined;
    return new VhostUserSource({
      ...common,
      socket: num(d, 'socket'),
      backendChannel: d.backendChannel as number | undefined,
      kickFds: nums(d, 'kickFds'),
      callFds: nums(d, 'callFds'),
      inflight: inflight ? { fd: num(inflight, 'fd'), size: num(inflight, 'size'), offset: (inflight.offset as number) ?? 0, queueSize: (inflight.queueSize as number) ?? 0 } : undefined,
      socketPath: text(d, 'socketPath'),
      features: big(d, 'features'),
      protocolFeatures: big(d, 'protocolFeatures'),
      numQueues: num(d, 'numQueues'),
      deviceState: state,
    });
  },
  targetFromJson: (_d, common) => new VhostUserTarget(common),
  describe: (v) => ({
    fds: [
      { name: 'socket', fd: v.socket },
      ...(v.backendChannel !== null ? [{ name: 'backend-channel', fd: v.backendChannel }] : []),
      ...v.kickFds.map((fd, i) => ({ name: `kick${i}`, fd })),
      ...v.callFds.map((fd, i) => ({ name: `call${i}`, fd })),
      ...(v.inflightFd !== null ? [{ name: 'inflight', fd: v.inflightFd }] : []),
    ],
    meta: v.meta,
  }),
  warmUp: (own) => {
    // A socketpair stands in for the connection; eventfds and an inflight memfd as QEMU has them.
    const [v1, v2] = streamSocketPair();
    own.push(v1, v2);
    const kick = createEventfd();
    const call = createEventfd();
    const inflight = createMemfd('bt-warm-up');
    own.push(kick, call, inflight);
    writeSync(inflight, Buffer.alloc(4096), 0, 4096, 0);
    return {
      source: new VhostUserSource({
        id: 'warm-vhost',
        transfer: true,
        required: true,
        socket: v1,
        kickFds: [kick],
        callFds: [call],
        inflight: { fd: inflight, size: 4096, offset: 0, queueSize: 0 },
        socketPath: 'warm-up',
        features: 0n,
        protocolFeatures: 0n,
        numQueues: 1,
        closeOnRelease: false,
      }),
      target: new VhostUserTarget({ id: 'warm-vhost' }),
    };
  },
};
