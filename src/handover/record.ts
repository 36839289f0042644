// recordHandover: the state-only stream a handover would send, written to a file
// (or any writable) instead of a socket: MAGIC HELLO PLAN sections… END_OF_STATE
// EOF, every device planned state-only (a file carries no fds), the VMM state as
// the `vmm-state` device. `backend-transfer inspect FILE` reads it back.
import { createWriteStream, openSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { BackendTransferError } from '../errors.js';
import { offersFor } from '../backends/policy.js';
import type { SourceDevice } from '../backends/types.js';
import { writableChannel } from '../stream/channel.js';
import { answerOffers, computePlan } from '../stream/negotiate.js';
import { Features, STREAM_VERSION, UNKNOWN_BUDGET, type Hello, type Plan } from '../stream/wire.js';
import { StreamWriter, type SectionPayload } from '../stream/writer.js';
import { STATE_DEVICE_ID } from './types.js';

export interface RecordHandoverOptions {
  /** A file path (created, or truncated) or an open writable (left open). */
  to: string | Writable;
  devices: readonly SourceDevice[];
  /** VMM-level state (a Buffer, or parts from an iterable; not a memfd: a file carries no fds). */
  state?: Exclude<SectionPayload, { memfd: number }>;
  /** Version of that state's format. Default 1. */
  stateVersion?: number;
  /** Largest state part per frame (default 1 MiB). */
  partSize?: number;
  /** Checksum bodies (default true). */
  crc?: boolean;
}

export interface RecordHandoverResult {
  /** Bytes written. */
  bytes: number;
  /** The stream's PLAN: every device state-only. */
  plan: Plan;
  sections: number;
  /** State bytes of all sections (devices' and VMM state). */
  payloadBytes: bigint;
}

/** Writes the state-only stream of these devices and state; no fd is touched or sent. */
export async function recordHandover(o: RecordHandoverOptions): Promise<RecordHandoverResult> {
  const ids = new Set<string>();
  for (const d of o.devices) {
    const key = `${d.id}/${d.instance}`;
    if (ids.has(key) || d.id === STATE_DEVICE_ID) throw BackendTransferError.invalidArgument(`device ${key} appears twice (or uses the reserved id ${STATE_DEVICE_ID})`);
    ids.add(key);
  }
  const offers = offersFor(o.devices, { backendTransfer: false });
  if (o.state !== undefined) offers.push({ kind: 'state', id: STATE_DEVICE_ID, instance: 0, version: o.stateVersion ?? 1, fdCount: 0, wantsFds: false, required: true });
  const stateBytes = o.state instanceof Uint8Array ? o.state.length : null;
  const features = o.crc === false ? 0 : Features.BODY_CRC;
  const hello: Hello = {
    minVersion: STREAM_VERSION,
    maxVersion: STREAM_VERSION,
    features,
    canPassFds: false,
    fdBudget: UNKNOWN_BUDGET,
    probe: null,
    offers,
    info: { pid: process.pid, program: 'backend-transfer', recorded: true, stateBytes },
  };
  // A recording's reader takes every device as offered: its PLAN is authoritative.
  const welcome = answerOffers(hello, (offer) => ({ kind: offer.kind, minVersion: offer.version, maxVersion: offer.version, acceptFds: false }), {
    canPassFds: false,
    features,
    fdBudget: UNKNOWN_BUDGET,
  });
  const plan = computePlan(hello, welcome);

  let out: Writable;
  if (typeof o.to === 'string') {
    let fd: number;
    try {
      fd = openSync(o.to, 'w', 0o644); // fails here, clearly, rather than as a stream error later
    } catch (err) {
      throw BackendTransferError.fromSystem(err, `recording to ${o.to}`);
    }
    out = createWriteStream('', { fd });
  } else out = o.to;
  const writer = new StreamWriter(writableChannel(out), { partSize: o.partSize });
  try {
    await writer.hello(hello);
    await writer.plan(plan);
    for (const p of plan.devices) {
      const device = { id: p.id, instance: p.instance, version: p.version };
      if (p.id === STATE_DEVICE_ID) {
        await writer.section(device, [], o.state ?? Buffer.alloc(0));
        continue;
      }
      const d = o.devices.find((x) => x.id === p.id && x.instance === p.instance)!;
      await writer.section(device, [], d.capture(false).state);
    }
    await writer.endOfState();
    await writer.eof();
  } finally {
    if (typeof o.to === 'string') {
      // 'close', not 'finish': the file's fd is closed by then.
      await new Promise<void>((resolve, reject) => {
        out.once('error', reject);
        out.once('close', () => resolve());
        out.end();
      });
    }
  }
  return { bytes: writer.totals.bytes, plan, sections: writer.totals.sections, payloadBytes: writer.totals.payloadBytes };
}
