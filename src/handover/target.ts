// receiveHandover: the new owner's side of a live handover.
//
// accept → authenticate the peer → handshake (HELLO and its fd probe, WELCOME
// from what this side accepts, PLAN) → receive sections → verify every backend →
// adopt them → wait for COMMIT. Without COMMIT, everything received is closed.
// After it, each accepted device resolves: the received backend, else one its
// opener makes.
//
// The session skeleton (phase clock, bounded waits, the source's last words,
// cleanup) is session.ts; what is kept of the arriving state, within the limits,
// is target-intake.ts; the phases from PLAN to ACK(ADOPTED) are target-transfer.ts.
import { BackendTransferError, ErrorCodes, withoutCode } from '../errors.js';
import { acceptFor } from '../backends/policy.js';
import type { Resolved } from '../backends/types.js';
import { closeFds } from '../fd/index.js';
import { openFdCount } from '../fd/probe.js';
import { fdBudget } from '../stream/budget.js';
import { fdSocketChannel } from '../stream/channel.js';
import { answerOffers } from '../stream/negotiate.js';
import { StreamReader } from '../stream/reader.js';
import { ALL_FEATURES, AckStage, Features, NO_SECTION, type Plan } from '../stream/wire.js';
import { StreamWriter } from '../stream/writer.js';
import { FdSocket } from '../transport/fd-socket.js';
import { FdServer } from '../transport/server.js';
import { Session } from './session.js';
import { Parts, StateIntake, isVmmState } from './target-intake.js';
import { checkDistinctFiles, receiveInOrder, receiveStaged, type Pending, type TargetRun } from './target-transfer.js';
import { DEFAULT_HANDOVER_LIMITS, type ReceiveHandoverOptions, type ReceiveHandoverResult, type TargetPhase } from './types.js';
import { byDevice, collectGarbage, deviceKey, now } from './util.js';
import { warmUpHandover } from './warmup.js';

export async function receiveHandover(o: ReceiveHandoverOptions): Promise<ReceiveHandoverResult> {
  const lim = { ...DEFAULT_HANDOVER_LIMITS, ...o.limits };
  for (const [k, v] of Object.entries(lim)) {
    if (typeof v !== 'number' || !(v >= 0)) throw BackendTransferError.invalidArgument(`limits.${k} must be a number >= 0, not ${String(v)}`);
  }
  const s = new Session<TargetPhase, 'abort'>({
    first: 'prepare',
    timeouts: o.timeouts,
    signal: o.signal,
    onEvent: o.onEvent,
    peer: 'the source',
    lastWord: { type: 'abort', code: ErrorCodes.ERR_HANDOVER_ABORTED, says: 'the source aborted' },
  });
  const { timeouts } = s;
  const r: TargetRun = {
    o,
    s,
    intake: new StateIntake(o, lim),
    jsonLimits: { maxJsonBytes: lim.maxJsonBytes, maxJsonDepth: lim.maxJsonDepth },
    writer: null,
    pending: new Map(),
    received: new Set(),
    adopted: new Map(),
    dropped: [],
    sections: 0,
    tFirst: null,
    tAdopted: null,
    planned: false,
    endOfState: false,
    stagedMode: false,
    frozenSeen: false,
    nackSection: NO_SECTION,
  };

  let listener: FdServer | null = null;
  try {
    s.checkAborted();
    // Listen first, so that a source can connect (into the backlog) while this side warms up.
    if (typeof o.socket === 'string') listener = FdServer.listen(o.socket, { peer: o.peer });
    if (o.warmUp !== false) await s.bounded(warmUpHandover(), 0, 'warming up');

    s.enter('accept');
    let sock: FdSocket;
    if (typeof o.socket !== 'string') sock = s.attachGiven(o.socket);
    else {
      sock = s.attach(await s.bounded(listener!.accept(), timeouts.connect, 'a source to connect'), true);
      listener!.close();
      listener = null;
    }

    s.enter('authenticate');
    // Also watches whether the source's process dies holding this connection (the takeover).
    s.authenticate(sock, o.peer, 'handover target');

    s.enter('handshake');
    // Now rather than by a major GC inside the downtime, which starts soon after WELCOME.
    if (o.collectGarbage !== false) collectGarbage();
    const reader = new StreamReader({
      role: 'target',
      verifyFdKinds: o.verifyFdKinds ?? true,
      reuseBuffers: true,
      limits: { maxDevices: lim.maxDevices },
      onPayload: r.intake.onPayload,
      // A memfd part not read into room made for it is mapped, not read: no copy.
      memfdPayload: 'map',
    });
    r.writer = new StreamWriter(fdSocketChannel(sock));
    s.start(sock, reader, r.writer, r.intake.onItem);
    const plan = await handshake(r, reader);

    r.stagedMode = (plan.features & Features.STAGED) !== 0;
    if (r.stagedMode) await receiveStaged(r);
    else await receiveInOrder(r);

    s.enter('commit');
    await s.expect('commit', 'COMMIT', timeouts.commit);
    s.settled = true;
    s.guard!.stop();
    // Bounded: the backends are ours now, and a source that stopped reading must not hold this call.
    await s.bounded(r.writer.ack(AckStage.COMMITTED), 2000, 'sending ACK(COMMITTED)', false).catch(() => undefined);
    // The rest is courtesy: the backends are ours whatever happens to the socket now.
    await s.bounded(s.queue!.next(0, 'EOF'), 2000, 'the source EOF').catch(() => undefined);
    await s.bounded(r.writer.eof(), 2000, 'sending EOF', false).catch(() => undefined);

    s.enter('done');
    return await finish(r, 'committed', true);
  } catch (err) {
    let e = s.failure(err);
    const failedIn = s.phase;
    const committed = s.settled;
    // A send failed because the source hung up: it may have sent ABORT first.
    e = await s.lastWords(e);
    // The source went away without COMMIT or ABORT. If the process that held the
    // connection died with it, nobody else holds these backends: keep what arrived
    // whole (a takeover). Where the holder cannot be known (the connecting process
    // died while the connection stayed open, say a fork's child held it), no takeover.
    const sourceVanished = e.code === ErrorCodes.ERR_PEER_CLOSED || e.code === ErrorCodes.ERR_STREAM_TRUNCATED;
    // With staging, only after FREEZE: before it the source never stopped using the
    // backends, so their state here may be stale; what was staged is closed.
    if (!committed && r.planned && sourceVanished && (!r.stagedMode || r.frozenSeen) && (await s.peerDied(1500))) {
      o.onEvent?.({ type: 'warning', message: `the source (pid ${s.cred?.pid}) died in phase ${failedIn}: taking over what arrived` });
      s.enter('done');
      return await takeover(r);
    }
    s.enter('aborted');
    if (!committed) {
      // Nothing received is ours without COMMIT.
      closeFds([...r.received]);
      r.received.clear();
      // Tell the source why (unless it is the one that aborted), so that it thaws at once.
      if (!s.peerGaveUp) await s.tellPeer((w) => w.nack(e.code, withoutCode(e.message, e.code), r.nackSection));
    }
    e.details = { ...(e.details ?? {}), phase: failedIn, committed };
    throw e;
  } finally {
    listener?.close();
    s.close();
    r.intake.release();
  }
}

/** HELLO (room made for the announced state), WELCOME from what this side accepts, PLAN; a warning for each device that will not arrive whole. */
async function handshake(r: TargetRun, reader: StreamReader): Promise<Plan> {
  const { o, s } = r;
  const { timeouts } = s;
  const first = await s.expect('hello', 'HELLO', timeouts.handshake);
  const hello = first.hello;
  r.intake.makeRoom(hello.info);
  const canPassFds = o.backendTransfer && first.probe === 'ok';
  const stateWindow = o.stateVersions ?? [1, 1];
  const welcome = answerOffers(
    hello,
    // The reserved VMM-state device is accepted once: instance 0.
    acceptFor(o.accept, { backendTransfer: o.backendTransfer }, (offer) =>
      isVmmState(offer) && offer.kind === 'state' ? { kind: 'state', minVersion: stateWindow[0], maxVersion: stateWindow[1], acceptFds: false } : null,
    ),
    { canPassFds, features: ALL_FEATURES, fdBudget: fdBudget(openFdCount), info: { pid: process.pid, probe: first.probe } },
  );
  reader.setWelcome(welcome);
  await s.bounded(r.writer!.welcome(welcome), timeouts.handshake, 'sending WELCOME');
  const { plan } = await s.expect('plan', 'PLAN', timeouts.handshake);
  r.planned = true;
  const byKey = byDevice(o.accept);
  if (o.onEvent) {
    // Say what will not arrive: nothing else would (the handover itself succeeds).
    // Maps, not searches: the offers and the plan are bounded by limits.maxDevices, not small.
    const plannedByKey = byDevice(plan.devices);
    const offeredKeys = byDevice(hello.offers);
    for (const t of o.accept) {
      const key = deviceKey(t);
      const p = plannedByKey.get(key);
      if (!p)
        o.onEvent({
          type: 'warning',
          message: `device ${t.id}: ${offeredKeys.has(key) ? 'offered by the source but not planned (kind or version does not match)' : 'the source did not offer it (under another id?)'}: nothing of it arrives`,
        });
      else if (!p.withFds && t.acceptFds) o.onEvent({ type: 'warning', message: `device ${t.id}: only its state arrives, not its backend's fds` });
    }
    for (const x of hello.offers) {
      if (!isVmmState(x) && !byKey.has(deviceKey(x))) o.onEvent({ type: 'warning', message: `the source offered device ${x.id} (${x.kind}), which this side does not accept` });
    }
  }
  for (const p of plan.devices) {
    r.pending.set(deviceKey(p), {
      planned: p,
      target: byKey.get(deviceKey(p)) ?? null,
      arrival: { device: p, attachments: [], state: Buffer.alloc(0), jsonLimits: r.jsonLimits },
      parts: new Parts(),
      complete: false,
      staged: false,
      dropped: false,
    });
  }
  return plan;
}

/** Every accepted device, resolved: the adopted backend, else its opener's, else none. */
async function finish(r: TargetRun, outcome: 'committed' | 'takeover', complete: boolean): Promise<ReceiveHandoverResult> {
  const { o, s } = r;
  const devices = new Map<string, Resolved>();
  for (const t of o.accept) {
    const key = deviceKey(t);
    const p = r.pending.get(key);
    const backend = r.adopted.get(key);
    if (backend !== undefined) devices.set(t.id, { id: t.id, kind: t.kind, how: 'received', backend, state: p?.arrival.state ?? null });
    else if (t.open) devices.set(t.id, { id: t.id, kind: t.kind, how: 'opened', backend: await t.open(p?.arrival.state ?? null), state: p?.arrival.state ?? null });
    else devices.set(t.id, { id: t.id, kind: t.kind, how: 'none', backend: null, state: p?.arrival.state ?? null });
  }
  return {
    outcome,
    complete,
    devices,
    state: r.intake.state(),
    stateBytes: r.intake.stateBytes,
    bytes: r.intake.bytes,
    fds: r.received.size,
    timings: { totalMs: s.clock.total(), downtimeMs: r.tFirst !== null && r.tAdopted !== null ? r.tAdopted - r.tFirst : null, phases: s.clock.spent },
    dropped: r.dropped,
    staged: r.stagedMode,
    peer: s.cred,
  };
}

/** The source died before COMMIT: keep the devices that arrived whole and verify, close the rest. */
async function takeover(r: TargetRun): Promise<ReceiveHandoverResult> {
  let all = r.endOfState;
  const kept: Pending[] = [];
  for (const [key, p] of r.pending) {
    if (r.adopted.has(key)) continue;
    const fds = p.arrival.attachments.map((a) => a.fd);
    if (!p.planned.withFds || !p.target || !p.complete || p.dropped || (r.stagedMode && !p.staged)) {
      closeFds(fds);
      if (p.planned.withFds) all = false;
      continue;
    }
    if (!p.parts.empty) p.arrival.state = p.parts.joined();
    try {
      // A staged backend was verified when it arrived; its state came after FREEZE.
      if (!p.staged) {
        p.target.verify(p.arrival);
        checkDistinctFiles([...kept, p]);
      }
      r.adopted.set(key, p.target.adopt(p.arrival));
      kept.push(p);
    } catch {
      closeFds(fds);
      all = false;
    }
  }
  r.tAdopted ??= now();
  return finish(r, 'takeover', all);
}
