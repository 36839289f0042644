// TAP backends: one fd per queue of a (multi-queue, vnet_hdr) TAP, plus optional
// vhost-net fds. The source describes the device (TUNGETIFF, vnet header size,
// queue states, its network namespace); the target proves each fd is that very
// device before adopting it. Neither side ever touches a queue fd's file status
// flags: they are shared with the other owner.
import { constants as fsc, openSync, readSync, readlinkSync, writeSync } from 'node:fs';
import { BackendTransferError } from '../errors.js';
import { closeFds, inspectFd } from '../fd/index.js';
import { ifIndexOf, tapFlagMask, tapHasVnetHdr, tapNetnsIno, tapOpenFlags, tapQueueEnabled, tapQueueIff, tapVnetHdrSize, tunSetIff } from '../fd/tap.js';
import { FdPoller, READABLE } from '../transport/poller.js';
import type { OutgoingAttachment } from '../stream/writer.js';
import { byName, decodeState, encodeState, expectFd, invalid, checkCount, requireCount, requireString, verifyError, stateOf } from './common.js';
import type { Arrival, Captured } from './types.js';
import { SourceBase, TargetBase, type SourceOptionsBase, type TargetOptionsBase } from './base.js';
import { nums, type Json } from './json.js';
import type { BackendKindEntry } from './types.js';

export interface TapMeta {
  ifname: string;
  ifindex: number | null;
  flags: number;
  vnetHdrSize: number;
  offloads: number | null;
  queues: number;
  enabled: boolean[];
  vhost: number;
  /** Inode of the device's network namespace (TUNGETDEVNETNS), when the kernel tells. */
  netnsIno: number | null;
}

function ownNetnsIno(): number | null {
  try {
    // /proc/self/ns/net is a link "net:[ino]".
    const m = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/net'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Reads the TAP's description from its queue fds (and what the caller knows). */
export function describeTap(queues: readonly number[], vhostFds: readonly number[] = [], known: { offloads?: number; ifindex?: number; id?: string } = {}): TapMeta {
  const dev = known.id ?? 'tap';
  if (queues.length === 0) throw invalid(dev, 'no queue fds');
  for (const k of ['offloads', 'ifindex'] as const) if (known[k] !== undefined && known[k] !== null) checkCount(dev, k, known[k], 'encode', Number.MAX_SAFE_INTEGER);
  let ifname = '';
  let flags = 0;
  const enabled: boolean[] = [];
  queues.forEach((fd, i) => {
    // Two syscalls per queue (this runs inside the downtime too); inspectFd() only to say what a wrong fd is.
    const tun = tapQueueIff(fd);
    if (!tun) throw invalid(dev, `queue ${i} (fd ${fd}) is not a TAP queue but ${inspectFd(fd).kind}`);
    if (i === 0) {
      ifname = tun.name;
      flags = tun.flags & tapFlagMask();
    } else if (tun.name !== ifname || (tun.flags & tapFlagMask()) !== flags) {
      throw invalid(dev, `queue ${i} belongs to ${tun.name} (flags 0x${tun.flags.toString(16)}), queue 0 to ${ifname}`);
    }
    enabled.push(tapQueueEnabled(tun.flags));
  });
  for (const [i, fd] of vhostFds.entries()) {
    if (inspectFd(fd).kind !== 'vhost-net') throw invalid(dev, `vhost fd ${i} (fd ${fd}) is not /dev/vhost-net`);
  }
  const netnsIno = tapNetnsIno(queues[0]!);
  let ifindex: number | null = known.ifindex ?? null;
  if (ifindex === null && netnsIno !== null && netnsIno === ownNetnsIno()) {
    const idx = ifIndexOf(ifname);
    ifindex = idx > 0 ? idx : null;
  }
  return {
    ifname,
    ifindex,
    flags,
    vnetHdrSize: tapHasVnetHdr(flags) ? tapVnetHdrSize(queues[0]!) : 0,
    offloads: known.offloads ?? null,
    queues: queues.length,
    enabled,
    vhost: vhostFds.length,
    netnsIno,
  };
}

export interface TapSourceOptions extends SourceOptionsBase {
  /** Queue fds, in queue order. They stay the caller's until release(). */
  queues: number[];
  vhostFds?: number[];
  /** TUN_F_* offloads the owner set (the kernel has no getter). */
  offloads?: number;
  /** The ifindex, when this process is not in the device's network namespace. */
  ifindex?: number;
  /** Opaque device state (the virtio-net device's own). */
  state?: Uint8Array | (() => Uint8Array);
}

export class TapSource extends SourceBase<TapSourceOptions> {
  readonly kind = 'tap' as const;

  protected fds(): number[] {
    return [...this.o.queues, ...(this.o.vhostFds ?? [])];
  }

  check(): void {
    describeTap(this.o.queues, this.o.vhostFds ?? [], this.o);
  }

  capture(withFds: boolean): Captured {
    const meta = describeTap(this.o.queues, this.o.vhostFds ?? [], this.o);
    const attachments: OutgoingAttachment[] = [];
    if (withFds) {
      this.o.queues.forEach((fd, i) => attachments.push({ kind: 'tap', name: `queue${i}`, meta: { index: i, enabled: meta.enabled[i] }, fd }));
      (this.o.vhostFds ?? []).forEach((fd, i) => attachments.push({ kind: 'vhost-net', name: `vhost${i}`, meta: { index: i }, fd }));
    }
    return { attachments, state: encodeState({ ...meta }, stateOf(this.o.state)) };
  }
}

/** An adopted (or opened) TAP: the queue fds and what is known of the device. */
export class TapBackend {
  readonly meta: TapMeta;
  readonly queues: number[];
  readonly vhostFds: number[];
  /** The device state the source sent (opaque). */
  readonly state: Buffer;
  #closed = false;

  constructor(meta: TapMeta, queues: number[], vhostFds: number[], state: Buffer = Buffer.alloc(0)) {
    this.meta = meta;
    this.queues = queues;
    this.vhostFds = vhostFds;
    this.state = state;
  }

  get ifname(): string {
    return this.meta.ifname;
  }

  /** Writes one frame (with its virtio-net header when the TAP has vnet_hdr) to a queue. */
  writeFrame(queue: number, frame: Uint8Array): number {
    return writeSync(this.#queue(queue), frame);
  }

  /**
   * Reads one frame from a queue, waiting up to `timeoutMs` for one. Waits with
   * poll first, so a queue fd in blocking mode (its flags are not ours to change)
   * does not block the event loop while nothing is there. Resolves null on a
   * timeout, or as soon as `signal` aborts.
   */
  async readFrame(queue: number, timeoutMs = 1000, size = 65536 + 12, signal?: AbortSignal): Promise<Buffer | null> {
    const fd = this.#queue(queue);
    const buf = Buffer.allocUnsafe(size);
    const tryRead = (): Buffer | null => {
      try {
        const n = readSync(fd, buf, 0, size, null);
        return Buffer.from(buf.subarray(0, n));
      } catch (err) {
        if ((err as { code?: string }).code === 'EAGAIN') return null;
        throw err;
      }
    };
    if (signal?.aborted) return null;
    return new Promise<Buffer | null>((resolve, reject) => {
      let poller: FdPoller | null = null;
      const giveUp = (): void => {
        poller?.close();
        clearTimeout(timer);
        signal?.removeEventListener('abort', giveUp);
        resolve(null);
      };
      const timer = setTimeout(giveUp, timeoutMs);
      signal?.addEventListener('abort', giveUp);
      poller = new FdPoller(fd, (_ev, err) => {
        poller?.close();
        clearTimeout(timer);
        signal?.removeEventListener('abort', giveUp);
        if (err) return reject(err);
        try {
          resolve(tryRead());
        } catch (e) {
          reject(e);
        }
      });
      poller.set(READABLE);
    });
  }

  #queue(i: number): number {
    if (this.#closed) throw BackendTransferError.socketClosed(`TAP ${this.meta.ifname}`);
    const fd = this.queues[i];
    if (fd === undefined) throw BackendTransferError.invalidArgument(`TAP ${this.meta.ifname} has no queue ${i}`);
    return fd;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFds([...this.queues, ...this.vhostFds]);
  }
}

/** Opens a TAP queue by queue (O_NONBLOCK: these fds are ours from the start). */
export function openTap(name: string, options: { queues?: number; vnetHdr?: boolean } = {}): TapBackend {
  const n = options.queues ?? 1;
  const flags = tapOpenFlags({ vnetHdr: options.vnetHdr ?? true, multiQueue: n > 1 });
  const fds: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const fd = openSync('/dev/net/tun', fsc.O_RDWR | fsc.O_NONBLOCK);
      fds.push(fd);
      tunSetIff(fd, name, flags);
    }
  } catch (err) {
    closeFds(fds);
    throw BackendTransferError.fromSystem(err, `opening TAP ${name}`);
  }
  return new TapBackend(describeTap(fds), fds, []);
}

export type TapTargetOptions = TargetOptionsBase<TapMeta, TapBackend>;

export class TapTarget extends TargetBase<TapMeta, TapBackend> {
  readonly kind = 'tap' as const;

  constructor(o: TapTargetOptions) {
    super(o);
  }

  verify(arrival: Arrival): void {
    const id = this.id;
    const meta = decodeState(id, arrival.state, arrival.jsonLimits).meta;
    const ifname = requireString(id, meta, 'ifname');
    const flags = requireCount(id, meta, 'flags', 0xffff);
    const nQueues = requireCount(id, meta, 'queues', undefined, 1);
    const vnetHdrSize = requireCount(id, meta, 'vnetHdrSize', 0xffff);
    const nVhost = requireCount(id, meta, 'vhost');
    for (const k of ['ifindex', 'netnsIno', 'offloads']) if (meta[k] !== undefined && meta[k] !== null) requireCount(id, meta, k, Number.MAX_SAFE_INTEGER);
    const enabled = Array.isArray(meta.enabled) ? (meta.enabled as unknown[]) : [];
    if (enabled.length > nQueues || enabled.some((e) => typeof e !== 'boolean')) throw verifyError(id, 'metadata enabled is not one boolean per queue', { key: 'enabled' });
    const atts = byName(arrival);
    for (let i = 0; i < nQueues; i++) {
      const a = atts.get(`queue${i}`);
      if (!a) throw verifyError(id, `queue${i} is missing`);
      const info = expectFd(id, a, ['tap']);
      const tun = info.tun!;
      if (tun.name !== ifname) throw verifyError(id, `queue${i} is a queue of ${tun.name}, not of ${ifname}`, { attachment: a.name });
      if ((tun.flags & tapFlagMask()) !== flags) {
        throw verifyError(id, `queue${i} has TAP flags 0x${(tun.flags & tapFlagMask()).toString(16)}, the source declared 0x${flags.toString(16)}`, { attachment: a.name });
      }
      const on = tapQueueEnabled(tun.flags);
      if (enabled[i] !== undefined && enabled[i] !== on) throw verifyError(id, `queue${i} is ${on ? 'enabled' : 'detached'}, the source declared it ${on ? 'detached' : 'enabled'}`);
      if (tapHasVnetHdr(flags)) {
        const sz = tapVnetHdrSize(a.fd);
        if (sz !== vnetHdrSize) throw verifyError(id, `queue${i} has a ${sz}-byte vnet header, the source declared ${vnetHdrSize}`);
      }
      if (typeof meta.netnsIno === 'number') {
        const ns = tapNetnsIno(a.fd);
        if (ns !== null && ns !== meta.netnsIno) throw verifyError(id, `queue${i} is a ${ifname} of another network namespace (${ns}, declared ${meta.netnsIno})`);
      }
    }
    for (let i = 0; i < nVhost; i++) {
      const a = atts.get(`vhost${i}`);
      if (!a) throw verifyError(id, `vhost${i} is missing`);
      expectFd(id, a, ['vhost-net']);
    }
    const expected = nQueues + nVhost;
    if (arrival.attachments.length !== expected) throw verifyError(id, `${arrival.attachments.length} fds arrived, the TAP has ${expected}`);
    // The ifindex can be checked from inside the device's namespace only.
    if (typeof meta.ifindex === 'number' && typeof meta.netnsIno === 'number' && meta.netnsIno === ownNetnsIno()) {
      const idx = ifIndexOf(ifname);
      if (idx !== meta.ifindex) throw verifyError(id, `${ifname} has ifindex ${idx} here, the source declared ${meta.ifindex}`);
    }
  }

  adopt(arrival: Arrival): TapBackend {
    const { meta, blob } = decodeState(this.id, arrival.state, arrival.jsonLimits);
    const m = meta as unknown as TapMeta;
    const q: number[] = [];
    const v: number[] = [];
    for (const a of arrival.attachments) (a.kind === 'vhost-net' ? v : q).push(a.fd);
    return new TapBackend(m, q, v, blob);
  }
}

/** The TAP kind's registry entry. No warm-up part: a TAP needs CAP_NET_ADMIN. */
export const tapKind: BackendKindEntry<'tap', TapBackend> = {
  kind: 'tap',
  Source: TapSource,
  Target: TapTarget,
  sourceFromJson: (d: Json, common, state) =>
    new TapSource({ ...common, queues: nums(d, 'queues'), vhostFds: nums(d, 'vhostFds'), offloads: d.offloads as number | undefined, ifindex: d.ifindex as number | undefined, state }),
  targetFromJson: (_d, common) => new TapTarget(common),
  describe: (t) => ({ fds: [...t.queues.map((fd, i) => ({ name: `queue${i}`, fd })), ...t.vhostFds.map((fd, i) => ({ name: `vhost${i}`, fd }))], meta: t.meta }),
};
