// sendHandover: the old owner's side of a live handover.
//
// connect → authenticate the peer → handshake (HELLO with an fd probe, WELCOME,
// PLAN) → freeze and transfer (sections with fds, VMM state) → wait until the
// target verified and adopted every backend → COMMIT → once the target confirmed
// the commit, release the source's copies. Any failure before COMMIT leaves the
// source exactly as it was (its fds were only ever duplicated) and thaws it.
import { BackendTransferError, ErrorCodes, withoutCode } from '../errors.js';
import { offersFor } from '../backends/policy.js';
import type { Captured, SourceDevice } from '../backends/types.js';
import { fdBudget } from '../stream/budget.js';
import { fdSocketChannel } from '../stream/channel.js';
import { computePlan } from '../stream/negotiate.js';
import { StreamReader, kindMatches, type StreamItem } from '../stream/reader.js';
import { inspectFd, type FdInfo } from '../fd/index.js';
import { AckStage, Features, REASON_NAMES, STREAM_VERSION, type Hello, type Plan, type Welcome } from '../stream/wire.js';
import { StreamWriter, type SectionPayload } from '../stream/writer.js';
import { FdSocket } from '../transport/fd-socket.js';
import { checkPeer } from '../transport/peer.js';
import { ItemQueue } from './items.js';
import { DEFAULT_TIMEOUTS, STATE_DEVICE_ID, type DeviceOutcome, type SendHandoverOptions, type SendHandoverResult, type SourcePhase } from './types.js';
import { PeerWatch, PhaseClock, SessionGuard, abortedError, byDevice, deviceKey, collectGarbage, limited, now, randomProbe } from './util.js';
import { native } from '../native.js';
import { warmUpHandover } from './warmup.js';
import { StagedPrints } from './staging-check.js';

function payloadSize(p: unknown): number | null {
  if (p instanceof Uint8Array) return p.length;
  if (p && typeof p === 'object' && 'length' in p && 'memfd' in p) return Number((p as { length: number }).length);
  return null;
}

/** The automatic SO_SNDBUF goes up to this (the state of a typical VM fits). */
const MAX_AUTO_SNDBUF = 4 * 1024 * 1024;

/** Raises SO_SNDBUF to `bytes` (never lowers it; 0 leaves it alone). The kernel caps it at wmem_max. */
function growSendBuffer(sock: FdSocket, bytes: number): void {
  if (!(bytes > 0)) return;
  // Linux reports twice what was set (its bookkeeping overhead).
  if (native.getsockopt(sock.fd, native.SOL_SOCKET, native.SO_SNDBUF) / 2 < bytes) sock.setBufferSizes({ send: bytes });
}

export async function sendHandover(o: SendHandoverOptions): Promise<SendHandoverResult> {
  const timeouts = { ...DEFAULT_TIMEOUTS, ...o.timeouts };
  const clock = new PhaseClock<SourcePhase>('prepare', o.onEvent);
  const enter = (p: SourcePhase) => clock.enter(p);

  let sock: FdSocket | null = null;
  let reader: StreamReader | null = null;
  let watch: PeerWatch | null = null;
  let guard: SessionGuard | null = null;
  let queue: ItemQueue | null = null;
  let writer: StreamWriter | null = null;
  let frozen = false;
  let commitSent = false;
  /** COMMIT handed to the writer, not yet wholly in the kernel. */
  let commitPending = false;
  let tFreeze: number | null = null;
  let tAdopted: number | null = null;
  let tFrozen: number | null = null;
  let tEos: number | null = null;
  let bytesAtFreeze = 0;
  let bytesAtEos = 0;
  let precopy: Precopy | null = null;
  /** ACK(STAGED)s still to come: the queue does not count them as unasked-for frames. */
  let stageAcksDue = 0;
  let droppedOut: { id: string; instance: number; reason: string }[] = [];
  let restagedOut = new Set<SourceDevice>();
  const moved: SourceDevice[] = [];
  /** With staging: what each staged device sent (to see at the freeze whether it changed). */
  let stagedPrints: StagedPrints<SourceDevice> | null = null;

  // Progress from the writer's frames.
  let bytes = 0;
  let sections = 0;
  let fds = 0;
  let tTransfer = 0;
  const totalBytes: number | null = payloadSize(o.state);

  const limits = { phase: () => clock.phase, signal: o.signal, abortable: () => !commitSent };
  const aborted = () => {
    if (o.signal?.aborted && !commitSent) throw abortedError(clock.phase, o.signal);
  };
  const timed = <T>(p: Promise<T>, ms: number, what: string): Promise<T> => limited(p, ms, what, limits);
  /** timed(), and after the freeze also the stall bound and a flooding peer. */
  const bounded = <T>(p: Promise<T>, ms: number, what: string, stall = true): Promise<T> => timed(guard ? guard.guard(p, stall) : p, ms, what);
  const refused = (it: Extract<StreamItem, { type: 'nack' }>) =>
    new BackendTransferError(ErrorCodes.ERR_HANDOVER_REFUSED, `the target refused in phase ${clock.phase}: ${it.nack.code}: ${withoutCode(it.nack.reason, it.nack.code)}`, {
      details: { phase: clock.phase, code: it.nack.code, reason: it.nack.reason },
    });
  const expect = async (what: string, ms: number, ok: (it: StreamItem) => boolean, stall = true): Promise<StreamItem> => {
    const it = await bounded(queue!.next(0, what), ms, `waiting for ${what}`, stall);
    if (it.type === 'nack') throw refused(it);
    if (!ok(it)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `expected ${what}, the target sent ${it.type}`);
    return it;
  };

  try {
    aborted();
    // Fail up front: a device that may never move says so before anything is sent.
    if (o.backendTransfer) for (const d of o.devices) if (d.transfer) d.check();
    // Every fd a device would move is open and of its declared kind, checked before
    // anything is sent (else a closed fd is found only after the freeze).
    if (o.backendTransfer) for (const d of o.devices) if (d.transfer) checkDeviceFds(d);
    const ids = new Set<string>();
    for (const d of o.devices) {
      const key = `${d.id}/${d.instance}`;
      if (ids.has(key) || d.id === STATE_DEVICE_ID) throw BackendTransferError.invalidArgument(`device ${key} appears twice (or uses the reserved id ${STATE_DEVICE_ID})`);
      ids.add(key);
    }

    if (o.warmUp !== false) await timed(warmUpHandover(), 0, 'warming up');

    enter('connect');
    aborted();
    if (o.socket instanceof FdSocket) sock = o.socket;
    else if (typeof o.socket === 'number') sock = FdSocket.fromFd(o.socket);
    else sock = await timed(FdSocket.connect(o.socket, { peer: o.peer, timeout: timeouts.connect || undefined }), timeouts.connect, 'connect');

    growSendBuffer(sock, o.sendBufferSize ?? Math.min(MAX_AUTO_SNDBUF, (payloadSize(o.state) ?? MAX_AUTO_SNDBUF) + 256 * 1024));

    enter('authenticate');
    aborted();
    const cred = sock.peer ?? sock.peerCredentials();
    checkPeer(cred, o.peer, 'handover source');
    // Watches whether the target's process dies holding this connection (for after COMMIT).
    watch = new PeerWatch(sock, cred.pid);

    enter('handshake');
    aborted();
    // The caller's garbage is collected now, not by a major GC inside the downtime
    // (early, so that V8's background sweeping is done by the freeze).
    if (o.collectGarbage !== false) collectGarbage();
    writer = new StreamWriter(fdSocketChannel(sock), {
      partSize: o.partSize,
      memfdThreshold: o.memfdPayloads ? 64 * 1024 : Number.MAX_SAFE_INTEGER,
      onFrame: (f) => {
        bytes += f.bytes;
        if (f.type >= 0x10 && f.type <= 0x13) {
          sections++;
          fds += f.fds; // backend fds (not HELLO's probe)
        }
        if (f.type === 0x14) fds += f.fds; // STAGE
        if (clock.phase === 'transfer' || clock.phase === 'switch-over') {
          const elapsed = now() - tTransfer;
          const sent = bytes;
          const eta = totalBytes && sent > 0 && elapsed > 0 ? Math.max(0, ((totalBytes - sent) * elapsed) / sent) : null;
          o.onEvent?.({ type: 'progress', bytes, totalBytes, sections, fds, etaMs: eta });
        }
      },
    });
    const w = writer;
    reader = new StreamReader({ role: 'source' });
    const g = (guard = new SessionGuard(sock, () => clock.phase));
    queue = new ItemQueue(sock, reader, undefined, {
      pong: (token) => w.pong(token),
      onFlood: (err) => g.fail(err),
      onNoise: (n) => (g.noise += n),
      expected: (it) => stageAcksDue > 0 && it.type === 'ack' && it.ack.stage === AckStage.STAGED,
    });
    const offers = offersFor(o.devices, { backendTransfer: o.backendTransfer });
    if (o.state !== undefined || o.precopy !== undefined) offers.push({ kind: 'state', id: STATE_DEVICE_ID, instance: 0, version: o.stateVersion ?? 1, fdCount: 0, wantsFds: false, required: true });
    const wantsFds = offers.some((x) => x.wantsFds);
    const features =
      (o.crc === false ? 0 : Features.BODY_CRC) |
      (wantsFds ? Features.FDS : 0) |
      (o.memfdPayloads ? Features.MEMFD_PAYLOAD | Features.FDS : 0) |
      // Staging: only when something could be staged, or state precopied.
      (o.staging !== false && (wantsFds || o.precopy !== undefined) ? Features.STAGED : 0);
    const hello: Hello = {
      minVersion: STREAM_VERSION,
      maxVersion: STREAM_VERSION,
      features,
      canPassFds: true,
      fdBudget: fdBudget(),
      probe: wantsFds || o.memfdPayloads ? randomProbe() : null,
      offers,
      // The state's size lets the target make room for it before the freeze.
      info: { pid: process.pid, program: 'backend-transfer', stateBytes: announcedState(o) },
    };
    await timed(writer.hello(hello), timeouts.handshake, 'sending HELLO');
    const wl = await expect('WELCOME', timeouts.handshake, (it) => it.type === 'welcome');
    const welcome = (wl as Extract<StreamItem, { type: 'welcome' }>).welcome;
    if ((features & Features.FDS) !== 0 && !welcome.canPassFds && welcomeSaysProbeMissing(welcome)) {
      throw new BackendTransferError(
        ErrorCodes.ERR_CHANNEL_DROPS_FDS,
        'the target did not receive the probe fd sent with HELLO: something between the two processes (a relay, a proxy) drops SCM_RIGHTS, so no backend can move over this channel',
        { details: { probe: 'missing' } },
      );
    }
    const plan: Plan = computePlan(hello, welcome);
    await timed(writer.plan(plan), timeouts.handshake, 'sending PLAN');
    warnUnmoved(o, plan, welcome);

    const staged = (plan.features & Features.STAGED) !== 0;
    const byKey = new Map(o.devices.map((d) => [`${d.id}\0${d.instance}`, d] as const));
    const deviceOf = (p: { id: string; instance: number }) => byKey.get(`${p.id}\0${p.instance}`)!;
    if (staged) {
      // Stage: every backend's fds and static metadata go now, while the VMM still
      // uses them (the target only holds duplicates and must not touch them); the
      // target verifies each and answers ACK(STAGED) or NACK. Nothing is frozen yet.
      enter('stage');
      aborted();
      const t0 = now();
      const left = () => (timeouts.stage > 0 ? Math.max(1, timeouts.stage - (now() - t0)) : 0);
      const withFds = plan.devices.filter((p) => p.withFds);
      const firstId = w.nextSectionId;
      stageAcksDue = withFds.length;
      const stageWrites: Promise<unknown>[] = [];
      stagedPrints = new StagedPrints(withFds.reduce((n, p) => n + p.fdCount, 0));
      for (const p of withFds) {
        const d = deviceOf(p);
        const cap = d.capture(true);
        stagedPrints.record(d, cap.attachments);
        stageWrites.push(w.stage({ id: d.id, instance: d.instance, version: d.version }, cap.attachments, await payloadBytes(cap.state)));
      }
      const acks = (async () => {
        const due = new Set<number>(withFds.map((_, i) => firstId + i));
        while (due.size > 0) {
          const it = await expect(`ACK(STAGED) (${due.size} of ${withFds.length} to come)`, left(), (x) => x.type === 'ack' && x.ack.stage === AckStage.STAGED);
          const id = (it as Extract<StreamItem, { type: 'ack' }>).ack.sectionId;
          if (!due.delete(id)) throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `ACK(STAGED) for section ${id}, which was not staged or was acknowledged already`);
          stageAcksDue--;
        }
      })();
      await timed(Promise.all([Promise.all(stageWrites), acks]), timeouts.stage, 'staging the backends');
      if (o.precopy !== undefined) {
        // The VMM state's first parts, while the VMM runs; its final part follows the freeze.
        precopy = startPrecopy(w, o.precopy, o.stateVersion ?? 1);
        await timed(precopy.sent, timeouts.stage, 'sending the precopied state');
      }
    }

    // The downtime starts here: from now on the backends are not used.
    enter('freeze');
    aborted();
    tFreeze = now();
    frozen = true;
    // Bounded, so that a freeze() that never returns cannot hold the handover (and
    // the target) forever; the caller's abort is heard after it, as before.
    const freezing = o.freeze?.();
    if (freezing) await limited(Promise.resolve(freezing), timeouts.freeze, "the caller's freeze()", { phase: () => clock.phase, abortable: () => false });
    // Staged, then changed: a device unplugged, or whose fds are no longer those
    // staged, is dropped or staged again now, inside the window.
    const captured = new Map<SourceDevice, Captured>();
    const dropped: { id: string; instance: number; reason: string }[] = [];
    const restage: SourceDevice[] = [];
    for (const d of stagedPrints?.keys() ?? []) {
      if (d.unplugged) {
        dropped.push({ id: d.id, instance: d.instance, reason: 'unplugged after it was staged' });
        continue;
      }
      try {
        const cap = d.capture(true);
        const changed = stagedPrints!.changed(d, cap.attachments);
        captured.set(d, cap);
        if (changed) restage.push(d);
      } catch (err) {
        captured.delete(d);
        dropped.push({ id: d.id, instance: d.instance, reason: `its backend is no longer usable: ${(err as Error).message}` });
      }
    }
    const droppedKeys = new Set(dropped.map((x) => `${x.id}\0${x.instance}`));
    tFrozen = now();
    bytesAtFreeze = bytes;
    enter(staged ? 'switch-over' : 'transfer');
    // From now on no wait on the target is unbounded: no progress for timeouts.stall ms fails it.
    guard.watchStall(timeouts.stall);
    tTransfer = now();
    // Queue every frame at once (the writer keeps them in order), so that small
    // sections do not each wait for the one before to reach the kernel.
    const writes: Promise<void>[] = [];
    if (staged) {
      const restaged: [SourceDevice, Captured, Uint8Array][] = [];
      for (const d of restage) restaged.push([d, captured.get(d)!, await payloadBytes(captured.get(d)!.state)]);
      if (precopy) {
        precopy.freeze(dropped, await payloadBytes(o.state ?? Buffer.alloc(0)));
        writes.push(precopy.done);
      } else writes.push(w.freeze(dropped));
      for (const [d, cap, b] of restaged) writes.push(w.stage({ id: d.id, instance: d.instance, version: d.version }, cap.attachments, b));
    }
    for (const p of plan.devices) {
      aborted();
      if (p.id === STATE_DEVICE_ID) {
        if (!precopy) writes.push(w.section({ id: p.id, instance: p.instance, version: p.version }, [], statePayload(o)));
        continue;
      }
      if (droppedKeys.has(`${p.id}\0${p.instance}`)) continue;
      const d = deviceOf(p);
      // With staging the fds went already: only the state captured now follows.
      const cap = captured.get(d) ?? d.capture(p.withFds);
      writes.push(w.section({ id: d.id, instance: d.instance, version: d.version }, staged ? [] : cap.attachments, cap.state));
      if (p.withFds) moved.push(d);
    }
    writes.push(w.endOfState());
    await bounded(
      Promise.all(writes).then(() => undefined),
      timeouts.transfer,
      'sending the sections',
    );
    tEos = now();
    bytesAtEos = bytes;

    if (staged) {
      enter('adopt');
      // The target adopts what it verified at staging (nothing is inspected again) and says ADOPTED.
      await expect('ACK(ADOPTED)', timeouts.adopt, (it) => it.type === 'ack' && it.ack.stage === AckStage.ADOPTED, false);
    } else {
      enter('verify');
      await expect('ACK(LOADED)', timeouts.verify, (it) => it.type === 'ack' && it.ack.stage === AckStage.LOADED);
      // The target verifies and adopts now: local work, bounded by the verify and adopt timeouts.
      await expect('ACK(VERIFIED)', timeouts.verify, (it) => it.type === 'ack' && it.ack.stage === AckStage.VERIFIED, false);
      await expect('ACK(ADOPTED)', timeouts.adopt, (it) => it.type === 'ack' && it.ack.stage === AckStage.ADOPTED, false);
    }
    tAdopted = now();
    // The duplicates kept for the change check are done with (outside the downtime now).
    stagedPrints?.close();
    droppedOut = dropped;
    restagedOut = new Set(restage);

    enter('commit');
    aborted();
    // No more PONGs: nothing may queue ahead of or behind COMMIT.
    queue.quiet = true;
    // COMMIT counts as sent once its last byte is in the kernel; until then a
    // failure (EPIPE: the target shut its reading side or closed; a stall) means
    // the target cannot have a whole COMMIT frame: not committed. The caller's
    // abort is no longer heard from here on.
    commitPending = true;
    await limited(guard.guard(writer.commit()), timeouts.commit, 'sending COMMIT', { phase: () => clock.phase, abortable: () => false });
    commitPending = false;
    commitSent = true;
    await expect('ACK(COMMITTED)', timeouts.commit, (it) => it.type === 'ack' && it.ack.stage === AckStage.COMMITTED);

    enter('release');
    for (const d of moved) d.release();
    // Courtesy, and bounded: a target that stopped reading must not hold this call.
    await timed(writer.eof(), 2000, 'sending EOF').catch(() => undefined);
    // The target ends its direction too; its EOF is a courtesy, not a condition.
    guard.stop();
    await timed(queue.next(0, 'EOF'), 2000, 'the target EOF').catch(() => undefined);
    enter('done');
    const droppedBy = new Map(droppedOut.map((x) => [deviceKey(x), x.reason] as const));
    const planned = byDevice(plan.devices);
    const outcomes: DeviceOutcome[] = o.devices.map((d) => {
      const p = planned.get(deviceKey(d));
      const why = droppedBy.get(`${d.id}\0${d.instance}`);
      if (why !== undefined) return { id: d.id, kind: d.kind, outcome: 'dropped', fds: 0, reason: why };
      const out: DeviceOutcome = { id: d.id, kind: d.kind, outcome: !p ? 'refused' : p.withFds ? 'moved' : 'state-only', fds: p?.fdCount ?? 0 };
      if (restagedOut.has(d)) out.restaged = true;
      return out;
    });
    const timings: SendHandoverResult['timings'] = {
      totalMs: clock.total(),
      downtimeMs: tFreeze !== null && tAdopted !== null ? tAdopted - tFreeze : null,
      phases: clock.spent,
    };
    if (staged && tFreeze !== null && tFrozen !== null && tEos !== null && tAdopted !== null) {
      timings.breakdown = { freezeMs: tFrozen - tFreeze, switchOverMs: tEos - tFrozen, adoptMs: tAdopted - tEos, switchOverBytes: bytesAtEos - bytesAtFreeze };
    }
    return {
      devices: outcomes,
      stateBytes: (payloadSize(o.state) ?? 0) + (o.precopy instanceof Uint8Array ? o.precopy.length : 0),
      bytes,
      fds: moved.reduce((n, d) => n + (planned.get(deviceKey(d))?.fdCount ?? 0), 0),
      staged,
      timings,
    };
  } catch (err) {
    let e = err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, `handover (phase ${clock.phase})`);
    const failedIn = clock.phase;
    guard?.stop();
    if (commitPending) {
      // COMMIT did not go out whole: drop it (and all queued) before another byte can
      // leave, so that the target never reads a whole COMMIT. Not committed: thaw.
      commitPending = false;
      sock?.destroy();
      e = new BackendTransferError(ErrorCodes.ERR_COMMIT_NOT_SENT, `COMMIT could not be written (${e.message}): the target cannot have committed. The source thawed and keeps its backends.`, {
        cause: e,
        details: { cause: e.code },
      });
    }
    // A send failed because the target hung up: it may have said why first.
    if (e.code === ErrorCodes.ERR_PEER_CLOSED && queue && !commitSent) {
      const nack = await queue.find('nack', 300);
      if (nack) e = refused(nack);
    }
    enter('aborted');
    if (!commitSent && writer && !writer.error && sock && !sock.closed) {
      // Tell the target why, so it closes what it received; never wait long for that.
      await Promise.race([
        writer
          .abort(e.code, withoutCode(e.message, e.code))
          .then(() => writer!.eof())
          .catch(() => undefined),
        new Promise((r) => setTimeout(r, 500)),
      ]);
    }
    // After COMMIT the target may own the backends, unless its process is gone.
    // Only when the target's process died holding this connection (not merely the
    // process that listened: see PeerWatch).
    const targetGone = commitSent && watch !== null && (await watch.holderGone(1500));
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
    stagedPrints?.close();
    guard?.stop();
    watch?.close();
    queue?.drain();
    reader?.close();
    if (sock && !(o.socket instanceof FdSocket)) sock.close();
  }
}

/** A `warning` event for each device whose fds will not move, with why (else nothing says so). */
function warnUnmoved(o: SendHandoverOptions, plan: Plan, welcome: Welcome): void {
  if (!o.onEvent) return;
  const planned = byDevice(plan.devices);
  const answers = byDevice(welcome.answers);
  for (const d of o.devices) {
    const p = planned.get(deviceKey(d));
    const n = d.fdCount();
    const answer = answers.get(deviceKey(d));
    let why: string | null = null;
    if (!p) why = `the target did not take it (${answer ? (REASON_NAMES[answer.reason] ?? `reason ${answer.reason}`) : 'no answer'}; does it accept this id and kind?): nothing of it moves`;
    else if (!p.withFds && n > 0) {
      if (!o.backendTransfer) why = `its ${n} fd(s) stay here: backendTransfer is off, only its state moves`;
      else if (!d.transfer) why = `its ${n} fd(s) stay here: the device does not have transfer: true, only its state moves`;
      else if (!welcome.canPassFds) why = `its ${n} fd(s) stay here: the target cannot receive fds on this channel, only its state moves`;
      else why = `its ${n} fd(s) stay here: the target takes only its state`;
    }
    if (why) o.onEvent({ type: 'warning', message: `device ${d.id}: ${why}` });
  }
}

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

/** The VMM state's size when known (precopy and final part together). */
function announcedState(o: SendHandoverOptions): number | null {
  const a = o.state === undefined ? 0 : payloadSize(o.state);
  const b = o.precopy === undefined ? 0 : o.precopy instanceof Uint8Array ? o.precopy.length : null;
  return a === null || b === null ? null : a + b;
}

/** ERR_BACKEND_INVALID unless each fd the device would attach is open and of its declared kind. */
function checkDeviceFds(d: SourceDevice): void {
  for (const a of d.capture(true).attachments) {
    let info: FdInfo;
    try {
      info = inspectFd(a.fd);
    } catch (err) {
      throw new BackendTransferError(ErrorCodes.ERR_BACKEND_INVALID, `device ${d.id}: fd ${a.fd} (${a.name}) is not open (${(err as Error).message}); nothing was sent`, {
        cause: err,
        details: { device: d.id, attachment: a.name, fd: a.fd },
      });
    }
    if (!kindMatches(a.kind, info)) {
      throw new BackendTransferError(
        ErrorCodes.ERR_BACKEND_INVALID,
        `device ${d.id}: fd ${a.fd} (${a.name}) is declared ${a.kind} but is ${info.kind}${info.link ? ` (${info.link})` : ''}; nothing was sent`,
        {
          details: { device: d.id, attachment: a.name, fd: a.fd, declared: a.kind, actual: info.kind },
        },
      );
    }
  }
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
  freeze(dropped: { id: string; instance: number; reason: string }[], final: Uint8Array): void;
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

function welcomeSaysProbeMissing(w: Welcome): boolean {
  return (w.info as { probe?: string } | null)?.probe === 'missing';
}
