// receiveHandover: the new owner's side of a live handover.
//
// accept → authenticate the peer → handshake (HELLO and its fd probe, WELCOME
// from what this side accepts, PLAN) → receive sections → verify every backend →
// adopt them → wait for COMMIT. Without COMMIT, everything received is closed.
// After it, each accepted device resolves: the received backend, else one its
// opener makes.
import { BackendTransferError, ErrorCodes, withoutCode } from '../errors.js';
import { acceptFor } from '../backends/policy.js';
import type { Arrival, Resolved, TargetDevice } from '../backends/types.js';
import { closeFds } from '../fd/index.js';
import { fdBudget } from '../stream/budget.js';
import { fdSocketChannel } from '../stream/channel.js';
import { answerOffers } from '../stream/negotiate.js';
import { StreamReader, type StreamItem } from '../stream/reader.js';
import { ALL_FEATURES, AckStage, type PlannedDevice } from '../stream/wire.js';
import { StreamWriter } from '../stream/writer.js';
import { FdSocket } from '../transport/fd-socket.js';
import { checkPeer } from '../transport/peer.js';
import { FdServer } from '../transport/server.js';
import { ItemQueue } from './items.js';
import { DEFAULT_TIMEOUTS, STATE_DEVICE_ID, type ReceiveHandoverOptions, type ReceiveHandoverResult, type TargetPhase } from './types.js';
import { PhaseClock, abortedError, collectGarbage, limited, now, processGone } from './util.js';
import { warmUpHandover } from './warmup.js';

/** VMM state up to this size is given room before the freeze (announced in HELLO). */
const MAX_PREALLOCATED_STATE = 256 * 1024 * 1024;
const EMPTY = Buffer.alloc(0);

interface Pending {
  planned: PlannedDevice;
  target: TargetDevice | null;
  arrival: Arrival;
  parts: Buffer[];
  complete: boolean;
}

export async function receiveHandover(o: ReceiveHandoverOptions): Promise<ReceiveHandoverResult> {
  const timeouts = { ...DEFAULT_TIMEOUTS, ...o.timeouts };
  const clock = new PhaseClock<TargetPhase>('prepare', o.onEvent);
  const enter = (p: TargetPhase) => clock.enter(p);

  let sock: FdSocket | null = null;
  let queue: ItemQueue | null = null;
  let writer: StreamWriter | null = null;
  let committed = false;
  const pending = new Map<string, Pending>();
  const received: number[] = []; // every device fd that arrived, until committed
  let stateParts: Buffer[] | null = o.onState ? null : [];
  let stateBuf: Buffer | null = null;
  let stateBytes = 0;
  let bytes = 0;
  let fdsCount = 0;
  let sections = 0;
  let tFirst: number | null = null;
  let tAdopted: number | null = null;
  const adopted = new Map<string, unknown>();

  const limits = { phase: () => clock.phase, signal: o.signal, abortable: () => !committed };
  const guard = <T>(p: Promise<T>, ms: number, what: string): Promise<T> => limited(p, ms, what, limits);
  let sourceAborted = false;
  const next = async (what: string, ms: number): Promise<StreamItem> => {
    const it = await guard(queue!.next(0, what), ms, `waiting for ${what}`);
    if (it.type === 'abort') throw abortedBySource(it);
    return it;
  };
  const abortedBySource = (it: Extract<StreamItem, { type: 'abort' }>) => {
    sourceAborted = true;
    return new BackendTransferError(ErrorCodes.ERR_HANDOVER_ABORTED, `the source aborted in phase ${clock.phase}: ${it.abort.code}: ${withoutCode(it.abort.reason, it.abort.code)}`, {
      details: { phase: clock.phase, code: it.abort.code, reason: it.abort.reason },
    });
  };

  /** Every accepted device, resolved: the adopted backend, else its opener's, else none. */
  const finish = async (outcome: 'committed' | 'takeover', complete: boolean): Promise<ReceiveHandoverResult> => {
    const devices = new Map<string, Resolved>();
    for (const t of o.accept) {
      const key = `${t.id}\0${t.instance}`;
      const p = pending.get(key);
      const backend = adopted.get(key);
      if (backend !== undefined) devices.set(t.id, { id: t.id, kind: t.kind, how: 'received', backend, state: p?.arrival.state ?? null });
      else if (t.open) devices.set(t.id, { id: t.id, kind: t.kind, how: 'opened', backend: await t.open(p?.arrival.state ?? null), state: p?.arrival.state ?? null });
      else devices.set(t.id, { id: t.id, kind: t.kind, how: 'none', backend: null, state: p?.arrival.state ?? null });
    }
    return {
      outcome,
      complete,
      devices,
      state: stateBuf ? stateBuf.subarray(0, stateBytes) : stateParts ? Buffer.concat(stateParts) : null,
      stateBytes,
      bytes,
      fds: received.length,
      timings: { totalMs: clock.elapsed(), downtimeMs: tFirst !== null && tAdopted !== null ? tAdopted - tFirst : null, phases: clock.spent },
      peer: cred,
    };
  };

  /** The source died before COMMIT: keep the devices that arrived whole and verify, close the rest. */
  const takeover = async (): Promise<ReceiveHandoverResult> => {
    let all = endOfState;
    for (const [key, p] of pending) {
      if (adopted.has(key)) continue;
      const fds = p.arrival.attachments.map((a) => a.fd);
      if (!p.planned.withFds || !p.target || !p.complete) {
        closeFds(fds);
        if (p.planned.withFds) all = false;
        continue;
      }
      p.arrival.state = Buffer.concat(p.parts);
      try {
        p.target.verify(p.arrival);
        adopted.set(key, p.target.adopt(p.arrival));
      } catch {
        closeFds(fds);
        all = false;
      }
    }
    tAdopted ??= now();
    return finish('takeover', all);
  };

  let listener: FdServer | null = null;
  let reader: StreamReader | null = null;
  let cred: { pid: number; uid: number; gid: number } | null = null;
  let pidfd: number | null = null;
  let planned = false;
  let endOfState = false;
  try {
    if (o.signal?.aborted) throw abortedError('prepare', o.signal);
    // Listen first, so that a source can connect (into the backlog) while this side warms up.
    if (typeof o.socket === 'string') listener = FdServer.listen(o.socket, { peer: o.peer });
    if (o.warmUp !== false) await guard(warmUpHandover(), 0, 'warming up');

    enter('accept');
    if (o.socket instanceof FdSocket) sock = o.socket;
    else if (typeof o.socket === 'number') sock = FdSocket.fromFd(o.socket);
    else {
      sock = await guard(listener!.accept(), timeouts.connect, 'a source to connect');
      listener!.close();
      listener = null;
    }

    enter('authenticate');
    cred = sock.peer ?? sock.peerCredentials();
    checkPeer(cred, o.peer, 'handover target');
    pidfd = sock.peerPidfd();

    enter('handshake');
    // Now rather than by a major GC inside the downtime, which starts soon after WELCOME.
    if (o.collectGarbage !== false) collectGarbage();
    // Frames are assembled in one reused buffer: what is kept is copied out of it
    // (device state into its own buffer, VMM state into room made before the freeze).
    reader = new StreamReader({ role: 'target', verifyFdKinds: o.verifyFdKinds ?? true, reuseBuffers: true });
    writer = new StreamWriter(fdSocketChannel(sock));
    const w = writer;
    queue = new ItemQueue(sock, reader, (it) => {
      if (it.type === 'ping') void w.pong(it.ping.token).catch(() => undefined);
      if (it.type !== 'section') return;
      bytes += it.bodyLength;
      fdsCount += it.attachments.length;
      // The reader reuses its buffer: take the payload out now, while it is valid.
      if (it.idstr === STATE_DEVICE_ID) {
        if (o.onState) o.onState(it.payload);
        else if (stateBuf && stateBytes + it.payload.length <= stateBuf.length) it.payload.copy(stateBuf, stateBytes);
        else {
          if (stateBuf) {
            // More than announced: go on in parts.
            stateParts!.push(stateBuf.subarray(0, stateBytes));
            stateBuf = null;
          }
          stateParts!.push(Buffer.from(it.payload));
        }
        stateBytes += it.payload.length;
        it.payload = EMPTY;
      } else it.payload = Buffer.from(it.payload);
    });
    const first = await next('HELLO', timeouts.handshake);
    if (first.type !== 'hello') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `expected HELLO, the source sent ${first.type}`);
    const hello = first.hello;
    const announced = (hello.info as { stateBytes?: unknown } | null)?.stateBytes;
    if (!o.onState && typeof announced === 'number' && Number.isInteger(announced) && announced > 0 && announced <= MAX_PREALLOCATED_STATE) {
      // Written now, so that its pages are there before the source freezes: a
      // large Buffer.alloc() is fresh zero pages, each faulted in on first write,
      // which would happen inside the downtime.
      stateBuf = Buffer.allocUnsafe(announced).fill(0);
    }
    const canPassFds = o.backendTransfer && first.probe === 'ok';
    const stateWindow = o.stateVersions ?? [1, 1];
    const welcome = answerOffers(
      hello,
      acceptFor(o.accept, { backendTransfer: o.backendTransfer }, (offer) =>
        offer.id === STATE_DEVICE_ID && offer.kind === 'state' ? { kind: 'state', minVersion: stateWindow[0], maxVersion: stateWindow[1], acceptFds: false } : null,
      ),
      { canPassFds, features: ALL_FEATURES, fdBudget: fdBudget(), info: { pid: process.pid, probe: first.probe } },
    );
    reader.setWelcome(welcome);
    await guard(writer.welcome(welcome), timeouts.handshake, 'sending WELCOME');
    const planItem = await next('PLAN', timeouts.handshake);
    if (planItem.type !== 'plan') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `expected PLAN, the source sent ${planItem.type}`);
    planned = true;
    if (o.onEvent) {
      // Say what will not arrive: nothing else would (the handover itself succeeds).
      for (const t of o.accept) {
        const p = planItem.plan.devices.find((x) => x.id === t.id && x.instance === t.instance);
        const offered = hello.offers.some((x) => x.id === t.id && x.instance === t.instance);
        if (!p) o.onEvent({ type: 'warning', message: `device ${t.id}: ${offered ? 'offered by the source but not planned (kind or version does not match)' : 'the source did not offer it (under another id?)'}: nothing of it arrives` });
        else if (!p.withFds && t.acceptFds) o.onEvent({ type: 'warning', message: `device ${t.id}: only its state arrives, not its backend's fds` });
      }
      for (const x of hello.offers) {
        if (x.id !== STATE_DEVICE_ID && !o.accept.some((t) => t.id === x.id && t.instance === x.instance)) o.onEvent({ type: 'warning', message: `the source offered device ${x.id} (${x.kind}), which this side does not accept` });
      }
    }
    for (const p of planItem.plan.devices) {
      const target = o.accept.find((t) => t.id === p.id && t.instance === p.instance) ?? null;
      pending.set(`${p.id}\0${p.instance}`, { planned: p, target, arrival: { device: p, attachments: [], state: Buffer.alloc(0) }, parts: [], complete: false });
    }

    enter('transfer');
    for (;;) {
      const it = await next('sections', timeouts.transfer);
      if (it.type === 'end-of-state') {
        endOfState = true;
        break;
      }
      if (it.type !== 'section') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `unexpected ${it.type} among the sections`);
      tFirst ??= now();
      sections++;
      const p = pending.get(`${it.idstr}\0${it.instanceId}`)!;
      for (const a of it.attachments) {
        received.push(a.fd);
        p.arrival.attachments.push(a);
      }
      if (it.idstr !== STATE_DEVICE_ID) p.parts.push(it.payload); // copied when it arrived
      if (it.frame === 'end' || it.frame === 'full') p.complete = true;
      o.onEvent?.({ type: 'progress', bytes, totalBytes: null, sections, fds: fdsCount, etaMs: null });
    }
    for (const p of pending.values()) p.arrival.state = Buffer.concat(p.parts);
    await guard(writer.ack(AckStage.LOADED, `${pending.size} section(s), ${received.length} fd(s)`), timeouts.verify, 'sending ACK(LOADED)');

    enter('verify');
    for (const p of pending.values()) {
      if (!p.planned.withFds || !p.target) continue;
      p.target.verify(p.arrival);
    }
    await guard(writer.ack(AckStage.VERIFIED), timeouts.verify, 'sending ACK(VERIFIED)');

    enter('adopt');
    for (const [key, p] of pending) {
      if (!p.planned.withFds || !p.target) continue;
      adopted.set(key, p.target.adopt(p.arrival));
    }
    tAdopted = now();
    await guard(writer.ack(AckStage.ADOPTED), timeouts.adopt, 'sending ACK(ADOPTED)');

    enter('commit');
    const c = await next('COMMIT', timeouts.commit);
    if (c.type !== 'commit') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `expected COMMIT, the source sent ${c.type}`);
    committed = true;
    await writer.ack(AckStage.COMMITTED).catch(() => undefined);
    // The rest is courtesy: the backends are ours whatever happens to the socket now.
    await guard(queue.next(0, 'EOF'), 2000, 'the source EOF').catch(() => undefined);
    await writer.eof().catch(() => undefined);

    enter('done');
    return await finish('committed', true);
  } catch (err) {
    let e = err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, `handover (phase ${clock.phase})`);
    const failedIn = clock.phase;
    // A send failed because the source hung up: it may have sent ABORT first.
    if (e.code === ErrorCodes.ERR_PEER_CLOSED && queue && !committed) {
      const abort = await queue.find('abort', 300);
      if (abort) e = abortedBySource(abort);
    }
    // The source went away without COMMIT or ABORT. If its process is gone for good,
    // nobody else holds these backends: keep what arrived whole (a takeover).
    const sourceVanished = e.code === ErrorCodes.ERR_PEER_CLOSED || e.code === ErrorCodes.ERR_STREAM_TRUNCATED;
    if (!committed && planned && sourceVanished && (await processGone(pidfd, cred?.pid ?? null, 1500))) {
      o.onEvent?.({ type: 'warning', message: `the source (pid ${cred?.pid}) died in phase ${failedIn}: taking over what arrived` });
      enter('done');
      return await takeover();
    }
    enter('aborted');
    if (!committed) {
      // Nothing received is ours without COMMIT.
      closeFds(received);
      received.length = 0;
      // Tell the source why (unless it is the one that aborted), so that it thaws at once.
      if (writer && !writer.error && sock && !sock.closed && !sourceAborted) {
        await Promise.race([
          writer
            .nack(e.code, withoutCode(e.message, e.code))
            .then(() => writer!.eof())
            .catch(() => undefined),
          new Promise((r) => setTimeout(r, 500)),
        ]);
      }
    }
    e.details = { ...(e.details ?? {}), phase: failedIn, committed };
    throw e;
  } finally {
    if (pidfd !== null) closeFds([pidfd]);
    listener?.close();
    queue?.drain();
    reader?.close();
    if (sock && !(o.socket instanceof FdSocket)) sock.close();
    stateParts = null;
  }
}
