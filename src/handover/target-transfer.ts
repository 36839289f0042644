// What the target receives after PLAN, up to ACK(ADOPTED): with staging, each
// backend verified as its STAGE arrives, FREEZE (with the devices dropped), the
// switch-over's states and re-stages, the adoption; in the old order, the
// sections, then verify and adopt. Each fd is in `received` from its arrival
// until it is closed or committed.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import type { Arrival, StateJsonLimits, TargetDevice } from '../backends/types.js';
import { verifyError } from '../backends/common.js';
import { closeFds, findSameFileIn, sameFileMethod } from '../fd/index.js';
import { releaseMapping } from '../fd/mapping.js';
import type { StageItem, StreamItem } from '../stream/reader.js';
import { AckStage, NO_SECTION, type PlannedDevice } from '../stream/wire.js';
import type { StreamWriter } from '../stream/writer.js';
import type { Session } from './session.js';
import { isVmmState, type Parts, type StateIntake } from './target-intake.js';
import type { ReceiveHandoverOptions, TargetPhase } from './types.js';
import { deviceKey, now } from './util.js';

/** A planned device on its way in. */
export interface Pending {
  planned: PlannedDevice;
  target: TargetDevice | null;
  arrival: Arrival;
  parts: Parts;
  complete: boolean;
  /** With staging: its backend was staged and verified. */
  staged: boolean;
  /** With staging: FREEZE dropped it. */
  dropped: boolean;
}

/** What the target's phases share, from the handshake on. */
export interface TargetRun {
  readonly o: ReceiveHandoverOptions;
  readonly s: Session<TargetPhase, 'abort'>;
  readonly intake: StateIntake;
  readonly jsonLimits: StateJsonLimits;
  writer: StreamWriter | null;
  /** Every planned device, by deviceKey. */
  readonly pending: Map<string, Pending>;
  /** Every device fd that arrived (stale staged ones taken out when closed), until committed. */
  readonly received: Set<number>;
  /** Each adopted device's backend, by deviceKey. */
  readonly adopted: Map<string, unknown>;
  /** With staging: the devices FREEZE dropped. */
  readonly dropped: { id: string; instance: number; reason: string }[];
  sections: number;
  /** The first section (old order) or FREEZE (staging) read; every backend adopted. */
  tFirst: number | null;
  tAdopted: number | null;
  /** PLAN was read. */
  planned: boolean;
  endOfState: boolean;
  /** The STAGED feature is in use; FREEZE was read. */
  stagedMode: boolean;
  frozenSeen: boolean;
  /** A failure tied to one STAGE: its sectionId goes in the NACK. */
  nackSection: number;
}

const progress = (r: TargetRun, sections: number) => r.o.onEvent?.({ type: 'progress', bytes: r.intake.bytes, totalBytes: null, sections, fds: r.intake.fds, etaMs: null });

/** A VMM-state or device section frame: its part kept, its fds received. */
function takeSection(r: TargetRun, it: Extract<StreamItem, { type: 'section' }>): void {
  r.sections++;
  const p = r.pending.get(deviceKey({ id: it.idstr, instance: it.instanceId }))!;
  for (const a of it.attachments) {
    r.received.add(a.fd);
    p.arrival.attachments.push(a);
  }
  if (!isVmmState(it.device) && !p.parts.add(it.payload, true) && it.payloadMapped) releaseMapping(it.payload); // copied when it arrived (if inline)
  if (it.frame === 'end' || it.frame === 'full') p.complete = true;
  progress(r, r.sections);
}

/** Every backend adopted (not the dropped ones), then ACK(ADOPTED). */
async function adoptAll(r: TargetRun): Promise<void> {
  r.s.enter('adopt');
  for (const [key, p] of r.pending) {
    if (!p.planned.withFds || !p.target || p.dropped) continue;
    r.adopted.set(key, p.target.adopt(p.arrival));
  }
  r.tAdopted = now();
  await r.s.bounded(r.writer!.ack(AckStage.ADOPTED), r.s.timeouts.adopt, 'sending ACK(ADOPTED)');
}

/**
 * With staging. Stage: each backend arrives with its static metadata while the
 * source still uses it. It is verified now (from the kernel's view, touching
 * nothing) and answered on its own, ACK(STAGED) or NACK, before anything is
 * frozen. Then FREEZE, the switch-over until END_OF_STATE, and the adoption of
 * what was verified at staging (nothing is inspected again).
 */
export async function receiveStaged(r: TargetRun): Promise<void> {
  const { o, s, pending } = r;
  const w = r.writer!;
  const { timeouts } = s;
  s.enter('stage');
  const toStage = [...pending.values()].filter((p) => p.planned.withFds).length;
  let stagedCount = 0;
  const stage = (it: StageItem, afterFreeze: boolean) => {
    r.nackSection = it.sectionId;
    const p = pending.get(deviceKey(it.device))!;
    for (const a of it.attachments) r.received.add(a.fd);
    if (p.staged) {
      // A re-stage: the backend changed after it was staged; the old fds are stale.
      const stale = p.arrival.attachments.map((a) => a.fd);
      for (const fd of stale) r.received.delete(fd);
      closeFds(stale);
    }
    p.arrival = { device: p.planned, attachments: it.attachments, state: it.payload, jsonLimits: r.jsonLimits };
    if (!p.target) throw new BackendTransferError(ErrorCodes.ERR_BACKEND_VERIFY, `device ${p.planned.id}: staged, but this side has no device for it`);
    p.target.verify(p.arrival);
    if (!p.staged) stagedCount++;
    p.staged = true;
    // No open file twice: within the device now, across all once all are staged (and again for a re-stage).
    if (afterFreeze || stagedCount === toStage) checkDistinctFiles([...pending.values()].filter((x) => x.staged && !x.dropped));
    else checkDistinctFiles([p]);
    r.nackSection = NO_SECTION;
  };
  // The source's freeze() runs between its last ACK(STAGED) and FREEZE.
  const stageWait = timeouts.stage > 0 && timeouts.freeze > 0 ? timeouts.stage + timeouts.freeze : 0;
  // The STAGEs verified and not yet answered: their ACK(STAGED)s go together, in
  // order, in one write, once no further frame is waiting to be read (a batch of
  // STAGEs arrives together: one write and one wake-up of the source per batch,
  // not per device). A NACK for a later device leaves them unanswered.
  let unanswered: number[] = [];
  const answer = async () => {
    if (unanswered.length === 0) return;
    // An abort heard by now refuses these devices rather than acknowledging them.
    s.checkAborted();
    const acks = unanswered.map((sectionId) => ({ stage: AckStage.STAGED, sectionId }));
    unanswered = [];
    await s.bounded(w.acks(acks), timeouts.stage, 'sending ACK(STAGED)');
  };
  for (;;) {
    if (s.queue!.ready === 0) await answer();
    const it = await s.next('STAGE or FREEZE', stageWait, false);
    if (it.type === 'stage') {
      stage(it, false);
      progress(r, stagedCount);
      s.checkAborted();
      unanswered.push(it.sectionId);
      continue;
    }
    await answer();
    if (it.type === 'section' && isVmmState(it.device)) {
      takeSection(r, it); // the precopied VMM state
      continue;
    }
    if (it.type === 'freeze') {
      r.tFirst = now();
      r.frozenSeen = true;
      for (const d of it.freeze.dropped) {
        const p = pending.get(deviceKey(d))!;
        p.dropped = true;
        const fds = p.arrival.attachments.map((a) => a.fd);
        for (const fd of fds) r.received.delete(fd);
        closeFds(fds);
        p.arrival.attachments = [];
        r.dropped.push({ id: d.id, instance: d.instance, reason: d.reason });
        o.onEvent?.({ type: 'warning', message: `device ${d.id}: dropped by the source at the freeze (${d.reason}); its staged fds were closed` });
      }
      break;
    }
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `unexpected ${it.type} while staging`);
  }
  // Switch-over: only what changed while the VMM ran (and re-stages) until END_OF_STATE.
  s.enter('switch-over');
  s.guard!.watchStall(timeouts.stall);
  for (;;) {
    const it = await s.next('the switch-over state', timeouts.transfer);
    if (it.type === 'end-of-state') {
      r.endOfState = true;
      break;
    }
    if (it.type === 'stage') stage(it, true);
    else if (it.type === 'section') takeSection(r, it);
    else throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `unexpected ${it.type} in the switch-over`);
  }
  for (const p of pending.values()) if (!p.dropped) p.arrival.state = p.parts.joined();
  s.queue!.quiet = true;
  await adoptAll(r);
}

/** The old order (a 0.1.0 source, or staging off): the sections with their fds, ACK(LOADED), verify, ACK(VERIFIED), adopt. */
export async function receiveInOrder(r: TargetRun): Promise<void> {
  const { s, pending } = r;
  const w = r.writer!;
  const { timeouts } = s;
  s.enter('transfer');
  // The source freezes now (its freeze() may take up to timeouts.freeze); from the
  // first section on, no progress for timeouts.stall ms fails the transfer.
  const firstWait = timeouts.stall > 0 ? timeouts.freeze + timeouts.stall : 0;
  const stallFirst = firstWait > 0 && !(timeouts.transfer > 0 && timeouts.transfer <= firstWait);
  for (let first = true; ; first = false) {
    const it = !first
      ? await s.next('sections', timeouts.transfer)
      : await s.next('sections', stallFirst ? firstWait : timeouts.transfer, false).catch((err: unknown) => {
          if (!stallFirst || (err as BackendTransferError).code !== ErrorCodes.ERR_TIMEOUT) throw err;
          throw new BackendTransferError(ErrorCodes.ERR_HANDOVER_STALLED, `no section within ${firstWait} ms of PLAN (timeouts.freeze + timeouts.stall): the source stopped after the handshake`, {
            details: { phase: s.phase, ms: firstWait },
          });
        });
    if (first) s.guard!.watchStall(timeouts.stall);
    if (it.type === 'end-of-state') {
      r.endOfState = true;
      break;
    }
    if (it.type !== 'section') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `unexpected ${it.type} among the sections`);
    r.tFirst ??= now();
    takeSection(r, it);
  }
  for (const p of pending.values()) p.arrival.state = p.parts.joined();
  // No more PONGs from here: the ACKs are what the source waits for.
  s.queue!.quiet = true;
  await s.bounded(w.ack(AckStage.LOADED, `${pending.size} section(s), ${r.received.size} fd(s)`), timeouts.verify, 'sending ACK(LOADED)');

  s.enter('verify');
  for (const p of pending.values()) {
    if (!p.planned.withFds || !p.target) continue;
    p.target.verify(p.arrival);
  }
  checkDistinctFiles([...pending.values()].filter((p) => p.planned.withFds && p.target));
  await s.bounded(w.ack(AckStage.VERIFIED), timeouts.verify, 'sending ACK(VERIFIED)');
  await adoptAll(r);
}

/**
 * Every fd the devices of one handover receive must be its own open file: a
 * source that sends one file twice (one TAP queue as queue0 and queue1, one
 * eventfd as kick and call, or one fd in two devices) would pass each per-fd
 * check, and the two "backends" would then share a queue. kcmp(KCMP_FILE) tells
 * open file descriptions apart; where it is not available (EPERM under YAMA,
 * ENOSYS), sockets and eventfds are still compared (see findSameFile).
 * ERR_BACKEND_VERIFY names both fds.
 */
export function checkDistinctFiles(devices: readonly Pending[]): void {
  const fds: number[] = [];
  const owner: { device: string; name: string }[] = [];
  const runs: number[][] = [];
  for (const p of devices) {
    const base = fds.length;
    for (const a of p.arrival.attachments) {
      fds.push(a.fd);
      owner.push({ device: p.planned.id, name: a.name });
    }
    // A device checked before (alone, as it was staged): its fds in kcmp's order, merged rather than sorted again.
    const known = fileOrder.get(p.arrival.attachments);
    const run: number[] = [];
    if (known && known.length === fds.length - base) for (const i of known) run.push(base + i);
    else for (let i = base; i < fds.length; i++) run.push(i);
    runs.push(run);
  }
  const order: number[] = [];
  const same = findSameFileIn(fds, { runs, order });
  if (!same) {
    if (devices.length === 1 && order.length === fds.length) fileOrder.set(devices[0]!.arrival.attachments, order);
    return;
  }
  const [x, y] = [owner[same[0]]!, owner[same[1]]!];
  const other = x.device === y.device ? `fd ${y.name}` : `fd ${y.name} of device ${y.device}`;
  throw verifyError(x.device, `fd ${x.name} and ${other} are the same open file (one file sent twice), found by ${sameFileMethod() === 'kcmp' ? 'kcmp(KCMP_FILE)' : 'inode/eventfd-id'}`, {
    sameFile: [x, y],
  });
}

/**
 * Each device's attachments (by the list's identity: a re-stage brings a new
 * list) in kcmp's order, as its own check found them: the check across all
 * devices merges these instead of sorting every fd again (about a fifth fewer
 * kcmp calls at 650 devices of 30 fds).
 */
const fileOrder = new WeakMap<readonly unknown[], number[]>();
