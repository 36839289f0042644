// sendHandover: the old owner's side of a live handover.
//
// connect → authenticate the peer → handshake (HELLO with an fd probe, WELCOME,
// PLAN) → freeze and transfer (sections with fds, VMM state) → wait until the
// target verified and adopted every backend → COMMIT → once the target confirmed
// the commit, release the source's copies. Any failure before COMMIT leaves the
// source exactly as it was (its fds were only ever duplicated) and thaws it.
import { BackendTransferError, ErrorCodes, withoutCode } from '../errors.js';
import { offersFor } from '../backends/policy.js';
import type { SourceDevice } from '../backends/types.js';
import { fdBudget } from '../stream/budget.js';
import { fdSocketChannel } from '../stream/channel.js';
import { computePlan } from '../stream/negotiate.js';
import { StreamReader, type StreamItem } from '../stream/reader.js';
import { AckStage, Features, REASON_NAMES, STREAM_VERSION, type Hello, type Plan, type Welcome } from '../stream/wire.js';
import { StreamWriter } from '../stream/writer.js';
import { FdSocket } from '../transport/fd-socket.js';
import { checkPeer } from '../transport/peer.js';
import { ItemQueue } from './items.js';
import { DEFAULT_TIMEOUTS, STATE_DEVICE_ID, type DeviceOutcome, type SendHandoverOptions, type SendHandoverResult, type SourcePhase } from './types.js';
import { PeerWatch, PhaseClock, SessionGuard, abortedError, collectGarbage, limited, now, randomProbe } from './util.js';
import { native } from '../native.js';
import { warmUpHandover } from './warmup.js';

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
  const moved: SourceDevice[] = [];

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
        if (clock.phase === 'transfer') {
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
    });
    const offers = offersFor(o.devices, { backendTransfer: o.backendTransfer });
    if (o.state !== undefined) offers.push({ kind: 'state', id: STATE_DEVICE_ID, instance: 0, version: o.stateVersion ?? 1, fdCount: 0, wantsFds: false, required: true });
    const wantsFds = offers.some((x) => x.wantsFds);
    const features = (o.crc === false ? 0 : Features.BODY_CRC) | (wantsFds ? Features.FDS : 0) | (o.memfdPayloads ? Features.MEMFD_PAYLOAD | Features.FDS : 0);
    const hello: Hello = {
      minVersion: STREAM_VERSION,
      maxVersion: STREAM_VERSION,
      features,
      canPassFds: true,
      fdBudget: fdBudget(),
      probe: wantsFds || o.memfdPayloads ? randomProbe() : null,
      offers,
      // The state's size lets the target make room for it before the freeze.
      info: { pid: process.pid, program: 'backend-transfer', stateBytes: payloadSize(o.state) },
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

    // The downtime starts here: from now on the backends are not used.
    enter('freeze');
    aborted();
    tFreeze = now();
    frozen = true;
    // Bounded, so that a freeze() that never returns cannot hold the handover (and
    // the target) forever; the caller's abort is heard after it, as before.
    const freezing = o.freeze?.();
    if (freezing) await limited(Promise.resolve(freezing), timeouts.freeze, "the caller's freeze()", { phase: () => clock.phase, abortable: () => false });
    enter('transfer');
    // From now on no wait on the target is unbounded: no progress for timeouts.stall ms fails it.
    guard.watchStall(timeouts.stall);
    tTransfer = now();
    // Queue every section at once (the writer keeps them in order), so that small
    // sections do not each wait for the one before to reach the kernel.
    const writes: Promise<void>[] = [];
    for (const p of plan.devices) {
      aborted();
      if (p.id === STATE_DEVICE_ID) {
        writes.push(writer.section({ id: p.id, instance: p.instance, version: p.version }, [], o.state ?? Buffer.alloc(0)));
        continue;
      }
      const d = o.devices.find((x) => x.id === p.id && x.instance === p.instance)!;
      const captured = d.capture(p.withFds);
      writes.push(writer.section({ id: d.id, instance: d.instance, version: d.version }, captured.attachments, captured.state));
      if (p.withFds) moved.push(d);
    }
    writes.push(writer.endOfState());
    await bounded(Promise.all(writes).then(() => undefined), timeouts.transfer, 'sending the sections');

    enter('verify');
    await expect('ACK(LOADED)', timeouts.verify, (it) => it.type === 'ack' && it.ack.stage === AckStage.LOADED);
    // The target verifies and adopts now: local work, bounded by the verify and adopt timeouts.
    await expect('ACK(VERIFIED)', timeouts.verify, (it) => it.type === 'ack' && it.ack.stage === AckStage.VERIFIED, false);
    await expect('ACK(ADOPTED)', timeouts.adopt, (it) => it.type === 'ack' && it.ack.stage === AckStage.ADOPTED, false);
    tAdopted = now();

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
    const outcomes: DeviceOutcome[] = o.devices.map((d) => {
      const p = plan.devices.find((x) => x.id === d.id && x.instance === d.instance);
      return { id: d.id, kind: d.kind, outcome: !p ? 'refused' : p.withFds ? 'moved' : 'state-only', fds: p?.fdCount ?? 0 };
    });
    return {
      devices: outcomes,
      stateBytes: payloadSize(o.state) ?? 0,
      bytes,
      fds: plan.totalFds,
      timings: { totalMs: clock.total(), downtimeMs: tFreeze !== null && tAdopted !== null ? tAdopted - tFreeze : null, phases: clock.spent },
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
      e = new BackendTransferError(
        ErrorCodes.ERR_COMMIT_NOT_SENT,
        `COMMIT could not be written (${e.message}): the target cannot have committed. The source thawed and keeps its backends.`,
        { cause: e, details: { cause: e.code } },
      );
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
  for (const d of o.devices) {
    const p = plan.devices.find((x) => x.id === d.id && x.instance === d.instance);
    const n = d.fdCount();
    const answer = welcome.answers.find((a) => a.id === d.id && a.instance === d.instance);
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

function welcomeSaysProbeMissing(w: Welcome): boolean {
  return (w.info as { probe?: string } | null)?.probe === 'missing';
}
