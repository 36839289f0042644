// The two-level policy of the QEMU design discussion: a session promise that this
// is a local migration (backendTransfer) and a per-device opt-in. Neither alone
// moves an fd. What moves is the intersection of the source's offer and the
// target's answer.
import { existsSync } from 'node:fs';
import { memfdAvailable, peerPidfdAvailable } from '../fd/probe.js';
import { crcImplementation, type CrcImplementation } from '../stream/crc.js';
import type { AcceptFn, DeviceSupport } from '../stream/negotiate.js';
import type { Offer } from '../stream/wire.js';
import { BACKEND_KINDS } from './registry.js';
import type { BackendKind, SourceDevice, TargetDevice } from './types.js';

export interface Supported {
  /** Backend kinds this build can transfer. */
  kinds: BackendKind[];
  /** What this machine offers for them. */
  machine: { tun: boolean; vhostNet: boolean; memfd: boolean; peerPidfd: boolean };
  /** The CRC-32 implementation in use (@node-rs/crc32, SIMD; or zlib where that is missing), and why not the fast one. */
  crc: { impl: CrcImplementation; fallbackReason: string | null };
}

/** The kinds this build can transfer, and what this machine has for them. */
export function supported(): Supported {
  const peerPidfd = peerPidfdAvailable();
  const memfd = memfdAvailable();
  return { kinds: [...BACKEND_KINDS], machine: { tun: existsSync('/dev/net/tun'), vhostNet: existsSync('/dev/vhost-net'), memfd, peerPidfd }, crc: crcImplementation() };
}

/** The source's offers: a device wants its fds moved only with both the session promise and its own opt-in. */
export function offersFor(devices: readonly SourceDevice[], o: { backendTransfer: boolean }): Offer[] {
  return devices.map((d) => ({
    kind: d.kind,
    id: d.id,
    instance: d.instance,
    version: d.version,
    fdCount: d.fdCount(),
    wantsFds: o.backendTransfer && d.transfer && d.fdCount() > 0,
    required: d.required,
  }));
}

/** The target's answers: the devices it knows, their version windows, and fds only with both levels of consent. */
export function acceptFor(targets: readonly TargetDevice[], o: { backendTransfer: boolean }, extra?: AcceptFn): AcceptFn {
  // One map, not a search per offer: answering HELLO is linear in its offers.
  const byKey = new Map<string, TargetDevice>();
  for (const t of targets) if (!byKey.has(`${t.id}\0${t.instance}`)) byKey.set(`${t.id}\0${t.instance}`, t);
  return (offer: Offer): DeviceSupport | null | 'not-wanted' => {
    const t = byKey.get(`${offer.id}\0${offer.instance}`);
    if (!t) return extra ? extra(offer) : null;
    return { kind: t.kind, minVersion: t.minVersion, maxVersion: t.maxVersion, acceptFds: o.backendTransfer && t.acceptFds };
  };
}
