// What the source sends after the handshake: with staging, every backend's fds
// before the freeze (and the precopied VMM state), the check at the freeze of
// which staged backends changed; then, in either order, the sections queued at
// once after the freeze.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import type { Captured, SourceDevice } from '../backends/types.js';
import type { StreamItem } from '../stream/reader.js';
import { AckStage, type Plan, type PlannedDevice } from '../stream/wire.js';
import type { SectionPayload, StreamWriter } from '../stream/writer.js';
import type { Session } from './session.js';
import { STATE_DEVICE_ID, type SendHandoverOptions, type SourcePhase } from './types.js';
import { deviceKey, now } from './util.js';
import { StagedPrints } from './staging-check.js';

/** What the source's phases share after the handshake. */
export interface SourceRun {
  readonly o: SendHandoverOptions;
  readonly s: Session<SourcePhase, 'nack'>;
  readonly w: StreamWriter;
  readonly plan: Plan;
  /** The STAGED feature is in use. */
  readonly staged: boolean;
  readonly deviceOf: (p: { id: string; instance: number }) => SourceDevice;
}

export type Dropped = { id: string; instance: number; reason: string };

/** Right after freeze(): what changed since it was staged. */
export interface AtFreeze {
  /** Each staged device captured again (not those dropped). */
  captured: Map<SourceDevice, Captured>;
  /** Unplugged, or its backend no longer usable: nothing of it moves. */
  dropped: Dropped[];
  /** Its fds are not those staged: staged again inside the window. */
  restage: SourceDevice[];
}

/** The source's staging: the STAGEs and their ACKs, what each staged device sent, the precopied VMM state. */
export class SourceStaging {
  /** ACK(STAGED)s still to come: the queue does not count them as unasked-for frames. */
  acksDue = 0;
  /** What each staged device sent (to see at the freeze whether it changed). */
  prints: StagedPrints<SourceDevice> | null = null;
  precopy: Precopy | null = null;

  /** For the queue: an ACK(STAGED) while some are due is expected, not a flood. */
  readonly expected = (it: StreamItem): boolean => this.acksDue > 0 && it.type === 'ack' && it.ack.stage === AckStage.STAGED;

  /**
   * Every backend's fds and static metadata go now, while the VMM still uses them
   * (the target only holds duplicates and must not touch them); the target
   * verifies each and answers ACK(STAGED) or NACK. Nothing is frozen yet.
   */
  async stage(r: SourceRun): Promise<void> {
    const { o, s, w } = r;
    const t0 = now();
    const left = () => (s.timeouts.stage > 0 ? Math.max(1, s.timeouts.stage - (now() - t0)) : 0);
    const withFds = r.plan.devices.filter((p) => p.withFds);
    const firstId = w.nextSectionId;
    this.acksDue = withFds.length;
    const stageWrites: Promise<unknown>[] = [];
    this.prints = new StagedPrints(withFds.reduce((n, p) => n + p.fdCount, 0));
    for (const p of withFds) {
      const d = r.deviceOf(p);
      const cap = d.capture(true);
      this.prints.record(d, cap.attachments);
      stageWrites.push(w.stage({ id: d.id, instance: d.instance, version: d.version }, cap.attachments, await payloadBytes(cap.state)));
    }
    const acks = (async () => {
      const due = new Set<number>(withFds.map((_, i) => firstId + i));
      while (due.size > 0) {
        const it = await s.expect('ack', `ACK(STAGED) (${due.size} of ${withFds.length} to come)`, left(), (x) => x.ack.stage === AckStage.STAGED);
        const id = it.ack.sectionId;
        if (!due.delete(id)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `ACK(STAGED) for section ${id}, which was not staged or was acknowledged already`);
        this.acksDue--;
      }
    })();
    await s.timed(Promise.all([Promise.all(stageWrites), acks]), s.timeouts.stage, 'staging the backends');
    if (o.precopy !== undefined) {
      // The VMM state's first parts, while the VMM runs; its final part follows the freeze.
      this.precopy = startPrecopy(w, o.precopy, o.stateVersion ?? 1);
      await s.timed(this.precopy.sent, s.timeouts.stage, 'sending the precopied state');
    }
  }

  /**
   * Staged, then changed: right after freeze(), each staged device is captured
   * again; one unplugged, or whose fds are no longer those staged, is dropped or
   * staged again now, inside the window.
   */
  atFreeze(): AtFreeze {
    const captured = new Map<SourceDevice, Captured>();
    const dropped: Dropped[] = [];
    const restage: SourceDevice[] = [];
    for (const d of this.prints?.keys() ?? []) {
      if (d.unplugged) {
        dropped.push({ id: d.id, instance: d.instance, reason: 'unplugged after it was staged' });
        continue;
      }
      try {
        const cap = d.capture(true);
        const changed = this.prints!.changed(d, cap.attachments);
        captured.set(d, cap);
        if (changed) restage.push(d);
      } catch (err) {
        captured.delete(d);
        dropped.push({ id: d.id, instance: d.instance, reason: `its backend is no longer usable: ${(err as Error).message}` });
      }
    }
    return { captured, dropped, restage };
  }

  /** Releases the duplicates the change check keeps (after ACK(ADOPTED), or on failure). Idempotent. */
  close(): void {
    this.prints?.close();
  }
}

/**
 * After the freeze: every frame queued at once (the writer keeps them in order),
 * so that small sections do not each wait for the one before to reach the
 * kernel. With staging FREEZE (with the dropped devices) and the re-stages come
 * first, and the sections carry no fds (they went staged). The writes, and the
 * devices whose fds move.
 */
export async function queueSections(r: SourceRun, staging: SourceStaging, at: AtFreeze): Promise<{ writes: Promise<void>[]; moved: SourceDevice[] }> {
  const { o, s, w, staged } = r;
  const { captured, dropped } = at;
  const precopy = staging.precopy;
  const writes: Promise<void>[] = [];
  const moved: SourceDevice[] = [];
  if (staged) {
    const restaged: [SourceDevice, Captured, Uint8Array][] = [];
    for (const d of at.restage) restaged.push([d, captured.get(d)!, await payloadBytes(captured.get(d)!.state)]);
    if (precopy) {
      precopy.freeze(dropped, await payloadBytes(o.state ?? Buffer.alloc(0)));
      writes.push(precopy.done);
    } else writes.push(w.freeze(dropped));
    for (const [d, cap, b] of restaged) writes.push(w.stage({ id: d.id, instance: d.instance, version: d.version }, cap.attachments, b));
  }
  const droppedKeys = new Set(dropped.map(deviceKey));
  for (const p of r.plan.devices) {
    s.checkAborted();
    if (p.id === STATE_DEVICE_ID) {
      if (!precopy) writes.push(w.section(device(p), [], statePayload(o)));
      continue;
    }
    if (droppedKeys.has(deviceKey(p))) continue;
    const d = r.deviceOf(p);
    // With staging the fds went already: only the state captured now follows.
    const cap = captured.get(d) ?? d.capture(p.withFds);
    writes.push(w.section({ id: d.id, instance: d.instance, version: d.version }, staged ? [] : cap.attachments, cap.state));
    if (p.withFds) moved.push(d);
  }
  writes.push(w.endOfState());
  return { writes, moved };
}

const device = (p: PlannedDevice) => ({ id: p.id, instance: p.instance, version: p.version });

/** The VMM state's section payload without staging: a precopy (if any) and the state, as one section. */
function statePayload(o: SendHandoverOptions): SectionPayload {
  const state = o.state ?? Buffer.alloc(0);
  if (o.precopy === undefined) return state;
  const pre = o.precopy;
  return (async function* () {
    if (pre instanceof Uint8Array) yield pre;
    else for await (const x of pre as AsyncIterable<Uint8Array>) yield x;
    yield await payloadBytes(state);
  })();
}

/** A device's staged metadata as bytes (a STAGE payload is inline). */
async function payloadBytes(p: SectionPayload): Promise<Uint8Array> {
  if (p instanceof Uint8Array) return p;
  if (typeof p === 'object' && p !== null && 'memfd' in p) throw BackendTransferError.invalidArgument('a device state in a memfd cannot be staged (send it as bytes)');
  const parts: Uint8Array[] = [];
  for await (const x of p as AsyncIterable<Uint8Array>) parts.push(x);
  return Buffer.concat(parts);
}

interface Precopy {
  /** The parts given before the freeze are written. */
  sent: Promise<void>;
  /** At the freeze: FREEZE (inside the open section), then the final part and SECTION_END. */
  freeze(dropped: Dropped[], final: Uint8Array): void;
  done: Promise<void>;
}

/** The VMM state's section opened before the freeze, its precopied parts written. */
function startPrecopy(w: StreamWriter, parts: NonNullable<SendHandoverOptions['precopy']>, version: number): Precopy {
  const dev = { id: STATE_DEVICE_ID, instance: 0, version };
  const sent = (async () => {
    await w.sectionOpen(dev);
    const list = parts instanceof Uint8Array ? [parts] : parts;
    for await (const part of list as AsyncIterable<Uint8Array>) await w.sectionWrite(part);
  })();
  let done: Promise<void> = Promise.resolve();
  return {
    sent,
    freeze(dropped, final) {
      // Queued now, in this order, ahead of everything the switch-over queues after.
      done = Promise.all([w.freeze(dropped), w.sectionClose(final)]).then(() => undefined);
    },
    get done() {
      return done;
    },
  };
}
