// sendHandover: the old owner's side of a live handover.
//
// connect → authenticate the peer → handshake (HELLO with an fd probe, WELCOME,
// PLAN) → [stage: every backend's fds, verified by the target] → freeze and
// transfer (sections, VMM state) → wait until the target verified and adopted
// every backend → COMMIT → once the target confirmed the commit, release the
// source's copies. Any failure before COMMIT leaves the source exactly as it was
// (its fds were only ever duplicated) and thaws it.
//
// The session skeleton (phase clock, bounded waits, the target's last words,
// cleanup) is session.ts; the checks and HELLO are source-handshake.ts; staging,
// the check at the freeze and the sections are source-transfer.ts.
import { BackendTransferError, ErrorCodes, withoutCode } from '../errors.js';
import type { SourceDevice } from '../backends/types.js';
import { fdSocketChannel } from '../stream/channel.js';
import { computePlan } from '../stream/negotiate.js';
import { StreamReader } from '../stream/reader.js';
import { AckStage, Features, type Plan } from '../stream/wire.js';
import { StreamWriter } from '../stream/writer.js';
import { FdSocket } from '../transport/fd-socket.js';
import { Session } from './session.js';
import { buildHello, checkDevices, checkProbe, growSendBuffer, payloadSize, warnUnmoved } from './source-handshake.js';
import { SourceStaging, queueSections, type Dropped, type SourceRun } from './source-transfer.js';
import { type DeviceOutcome, type SendHandoverOptions, type SendHandoverResult, type SourcePhase } from './types.js';
import { byDevice, collectGarbage, deviceKey, now } from './util.js';
import { warmUpHandover } from './warmup.js';

/** Progress from the writer's frames, and the marks the result's timings come from. */
interface Sent {
  bytes: number;
  sections: number;
  fds: number;
  /** When the transfer began (for the ETA). */
  tTransfer: number;
  /** freeze() called, the change check done, END_OF_STATE written, ACK(ADOPTED) read. */
  tFreeze: number | null;
  tFrozen: number | null;
  tEos: number | null;
  tAdopted: number | null;
  bytesAtFreeze: number;
  bytesAtEos: number;
}

export async function sendHandover(o: SendHandoverOptions): Promise<SendHandoverResult> {
  const s = new Session<SourcePhase, 'nack'>({
    first: 'prepare',
    timeouts: o.timeouts,
    signal: o.signal,
    onEvent: o.onEvent,
    peer: 'the target',
    lastWord: { type: 'nack', code: ErrorCodes.ERR_HANDOVER_REFUSED, says: 'the target refused' },
  });
  const { timeouts } = s;
  let frozen = false;
  /** COMMIT handed to the writer, not yet wholly in the kernel. */
  let commitPending = false;
  const sent: Sent = { bytes: 0, sections: 0, fds: 0, tTransfer: 0, tFreeze: null, tFrozen: null, tEos: null, tAdopted: null, bytesAtFreeze: 0, bytesAtEos: 0 };
  const totalBytes: number | null = payloadSize(o.state);
  const staging = new SourceStaging();

  try {
    s.checkAborted();
    // Fail up front: a device that may never move says so before anything is sent.
    checkDevices(o);
    if (o.warmUp !== false) await s.timed(warmUpHandover(), 0, 'warming up');

    s.enter('connect');
    s.checkAborted();
    const sock =
      typeof o.socket === 'string'
        ? s.attach(await s.timed(FdSocket.connect(o.socket, { peer: o.peer, timeout: timeouts.connect || undefined }), timeouts.connect, 'connect'), true)
        : s.attachGiven(o.socket);
    growSendBuffer(sock, o);

    s.enter('authenticate');
    s.checkAborted();
    // Also watches whether the target's process dies holding this connection (for after COMMIT).
    s.authenticate(sock, o.peer, 'handover source');

    s.enter('handshake');
    s.checkAborted();
    // The caller's garbage is collected now, not by a major GC inside the downtime
    // (early, so that V8's background sweeping is done by the freeze).
    if (o.collectGarbage !== false) collectGarbage();
    const w = new StreamWriter(fdSocketChannel(sock), {
      partSize: o.partSize,
      memfdThreshold: o.memfdPayloads ? 64 * 1024 : Number.MAX_SAFE_INTEGER,
      onFrame: (f) => {
        sent.bytes += f.bytes;
        if (f.type >= 0x10 && f.type <= 0x13) {
          sent.sections++;
          sent.fds += f.fds; // backend fds (not HELLO's probe)
        }
        if (f.type === 0x14) sent.fds += f.fds; // STAGE
        if (s.phase === 'transfer' || s.phase === 'switch-over') {
          const elapsed = now() - sent.tTransfer;
          const eta = totalBytes && sent.bytes > 0 && elapsed > 0 ? Math.max(0, ((totalBytes - sent.bytes) * elapsed) / sent.bytes) : null;
          o.onEvent?.({ type: 'progress', bytes: sent.bytes, totalBytes, sections: sent.sections, fds: sent.fds, etaMs: eta });
        }
      },
    });
    const queue = s.start(sock, new StreamReader({ role: 'source' }), w, undefined, { expected: staging.expected });
    const guard = s.guard!;
    const hello = buildHello(o);
    await s.timed(w.hello(hello), timeouts.handshake, 'sending HELLO');
    const { welcome } = await s.expect('welcome', 'WELCOME', timeouts.handshake);
    checkProbe(hello, welcome);
    const plan: Plan = computePlan(hello, welcome);
    await s.timed(w.plan(plan), timeouts.handshake, 'sending PLAN');
    warnUnmoved(o, plan, welcome);

    const byKey = byDevice(o.devices);
    const run: SourceRun = { o, s, w, plan, staged: (plan.features & Features.STAGED) !== 0, deviceOf: (p) => byKey.get(deviceKey(p))! };
    const { staged } = run;
    if (staged) {
      s.enter('stage');
      s.checkAborted();
      await staging.stage(run);
    }

    // The downtime starts here: from now on the backends are not used.
    s.enter('freeze');
    s.checkAborted();
    sent.tFreeze = now();
    frozen = true;
    // Bounded, so that a freeze() that never returns cannot hold the handover (and
    // the target) forever; the caller's abort is heard after it, as before.
    const freezing = o.freeze?.();
    if (freezing) await s.unabortable(Promise.resolve(freezing), timeouts.freeze, "the caller's freeze()");
    const at = staging.atFreeze();
    sent.tFrozen = now();
    sent.bytesAtFreeze = sent.bytes;
    s.enter(staged ? 'switch-over' : 'transfer');
    // From now on no wait on the target is unbounded: no progress for timeouts.stall ms fails it.
    guard.watchStall(timeouts.stall);
    sent.tTransfer = now();
    const { writes, moved } = await queueSections(run, staging, at);
    await s.bounded(
      Promise.all(writes).then(() => undefined),
      timeouts.transfer,
      'sending the sections',
    );
    sent.tEos = now();
    sent.bytesAtEos = sent.bytes;

    const ack = (stage: number) => (it: { ack: { stage: number } }) => it.ack.stage === stage;
    if (staged) {
      s.enter('adopt');
      // The target adopts what it verified at staging (nothing is inspected again) and says ADOPTED.
      await s.expect('ack', 'ACK(ADOPTED)', timeouts.adopt, ack(AckStage.ADOPTED), false);
    } else {
      s.enter('verify');
      await s.expect('ack', 'ACK(LOADED)', timeouts.verify, ack(AckStage.LOADED));
      // The target verifies and adopts now: local work, bounded by the verify and adopt timeouts.
      await s.expect('ack', 'ACK(VERIFIED)', timeouts.verify, ack(AckStage.VERIFIED), false);
      await s.expect('ack', 'ACK(ADOPTED)', timeouts.adopt, ack(AckStage.ADOPTED), false);
    }
    sent.tAdopted = now();
    // The duplicates kept for the change check are done with (outside the downtime now).
    staging.close();

    s.enter('commit');
    s.checkAborted();
    // No more PONGs: nothing may queue ahead of or behind COMMIT.
    queue.quiet = true;
    // COMMIT counts as sent once its last byte is in the kernel; until then a
    // failure (EPIPE: the target shut its reading side or closed; a stall) means
    // the target cannot have a whole COMMIT frame: not committed. The caller's
    // abort is no longer heard from here on.
    commitPending = true;
    await s.unabortable(guard.guard(w.commit()), timeouts.commit, 'sending COMMIT');
    commitPending = false;
    s.settled = true;
    await s.expect('ack', 'ACK(COMMITTED)', timeouts.commit, ack(AckStage.COMMITTED));

    s.enter('release');
    for (const d of moved) d.release();
    // Courtesy, and bounded: a target that stopped reading must not hold this call.
    await s.timed(w.eof(), 2000, 'sending EOF').catch(() => undefined);
    // The target ends its direction too; its EOF is a courtesy, not a condition.
    guard.stop();
    await s.timed(queue.next(0, 'EOF'), 2000, 'the target EOF').catch(() => undefined);
    s.enter('done');
    return result(o, s, plan, staged, sent, moved, at.dropped, new Set(at.restage));
  } catch (err) {
    let e = s.failure(err);
    const failedIn = s.phase;
    const commitSent = s.settled;
    if (commitPending) {
      // COMMIT did not go out whole: drop it (and all queued) before another byte can
      // leave, so that the target never reads a whole COMMIT. Not committed: thaw.
      commitPending = false;
      s.sock?.destroy();
      e = new BackendTransferError(ErrorCodes.ERR_COMMIT_NOT_SENT, `COMMIT could not be written (${e.message}): the target cannot have committed. The source thawed and keeps its backends.`, {
        cause: e,
        details: { cause: e.code },
      });
    }
    // A send failed because the target hung up: it may have said why first.
    e = await s.lastWords(e);
    s.enter('aborted');
    // Tell the target why, so it closes what it received; never wait long for that.
    if (!commitSent) await s.tellPeer((w) => w.abort(e.code, withoutCode(e.message, e.code)));
    // After COMMIT the target may own the backends, unless its process is gone.
    // Only when the target's process died holding this connection (not merely the
    // process that listened: see PeerWatch).
    const targetGone = commitSent && (await s.peerDied(1500));
    if (commitSent && !targetGone) {
      throw new BackendTransferError(
        ErrorCodes.ERR_COMMIT_UNCERTAIN,
        `COMMIT was sent but the target did not confirm it (${e.message}) and is still running: it may own the backends now. The source kept its copies and did not thaw; settle it with the target before using them.`,
        { cause: e, details: { phase: failedIn, commitSent: true, targetGone: false } },
      );
    }
    if (frozen) {
      // Not committed (or the target died with it): the backends are still only ours.
      await Promise.resolve(o.thaw?.()).catch(() => undefined);
    }
    e.details = { ...(e.details ?? {}), phase: failedIn, commitSent, ...(commitSent ? { targetGone } : {}) };
    throw e;
  } finally {
    staging.close();
    s.close();
  }
}

/** The result: each device's outcome, the bytes and fds that moved, the timings. */
function result(
  o: SendHandoverOptions,
  s: Session<SourcePhase, 'nack'>,
  plan: Plan,
  staged: boolean,
  sent: Sent,
  moved: SourceDevice[],
  dropped: Dropped[],
  restaged: Set<SourceDevice>,
): SendHandoverResult {
  const droppedBy = new Map(dropped.map((x) => [deviceKey(x), x.reason] as const));
  const planned = byDevice(plan.devices);
  const outcomes: DeviceOutcome[] = o.devices.map((d) => {
    const p = planned.get(deviceKey(d));
    const why = droppedBy.get(deviceKey(d));
    if (why !== undefined) return { id: d.id, kind: d.kind, outcome: 'dropped', fds: 0, reason: why };
    const out: DeviceOutcome = { id: d.id, kind: d.kind, outcome: !p ? 'refused' : p.withFds ? 'moved' : 'state-only', fds: p?.fdCount ?? 0 };
    if (restaged.has(d)) out.restaged = true;
    return out;
  });
  const { tFreeze, tFrozen, tEos, tAdopted } = sent;
  const timings: SendHandoverResult['timings'] = {
    totalMs: s.clock.total(),
    downtimeMs: tFreeze !== null && tAdopted !== null ? tAdopted - tFreeze : null,
    phases: s.clock.spent,
  };
  if (staged && tFreeze !== null && tFrozen !== null && tEos !== null && tAdopted !== null) {
    timings.breakdown = { freezeMs: tFrozen - tFreeze, switchOverMs: tEos - tFrozen, adoptMs: tAdopted - tEos, switchOverBytes: sent.bytesAtEos - sent.bytesAtFreeze };
  }
  return {
    devices: outcomes,
    stateBytes: (payloadSize(o.state) ?? 0) + (o.precopy instanceof Uint8Array ? o.precopy.length : 0),
    bytes: sent.bytes,
    fds: moved.reduce((n, d) => n + (planned.get(deviceKey(d))?.fdCount ?? 0), 0),
    staged,
    timings,
  };
}
