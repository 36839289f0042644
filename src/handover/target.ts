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
import { closeFds, findSameFile, sameFileMethod } from '../fd/index.js';
import { releaseMapping } from '../fd/mapping.js';
import { verifyError } from '../backends/common.js';
import { fdBudget } from '../stream/budget.js';
import { fdSocketChannel } from '../stream/channel.js';
import { answerOffers } from '../stream/negotiate.js';
import { StreamReader, type StageItem, type StreamItem } from '../stream/reader.js';
import { tooLarge } from '../stream/codec.js';
import { ALL_FEATURES, AckStage, Features, NO_SECTION, type PlannedDevice } from '../stream/wire.js';
import { StreamWriter } from '../stream/writer.js';
import { FdSocket } from '../transport/fd-socket.js';
import { checkPeer } from '../transport/peer.js';
import { FdServer } from '../transport/server.js';
import { ItemQueue } from './items.js';
import { DEFAULT_HANDOVER_LIMITS, DEFAULT_TIMEOUTS, STATE_DEVICE_ID, type ReceiveHandoverOptions, type ReceiveHandoverResult, type TargetPhase } from './types.js';
import { PeerWatch, PhaseClock, SessionGuard, abortedError, byDevice, deviceKey, closeSectionItem, collectGarbage, limited, now } from './util.js';
import { warmUpHandover } from './warmup.js';

/** VMM state up to this size is given room before the freeze (announced in HELLO). */
const MAX_PREALLOCATED_STATE = 256 * 1024 * 1024;
const EMPTY = Buffer.alloc(0);

interface Pending {
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

/** Parts under this size are copied together into shared chunks. */
const SMALL_PART = 64 * 1024;
const CHUNK_MAX = 1024 * 1024;

/**
 * A state's parts as they arrive, without one object per part: small parts are
 * copied together into chunks (growing up to 1 MiB), large ones are kept as they
 * are (a copy only when the caller does not own them). A source sending millions
 * of tiny frames costs their bytes, not millions of Buffers. joined() gives one
 * part without copying it.
 */
class Parts {
  #list: Buffer[] = [];
  #chunk: Buffer | null = null;
  #fill = 0;

  /** Whether the part itself is kept (false: it was copied, or empty). */
  add(part: Buffer, owned: boolean): boolean {
    if (part.length === 0) return false;
    if (part.length >= SMALL_PART) {
      this.#seal();
      this.#list.push(owned ? part : Buffer.from(part));
      return owned;
    }
    if (this.#chunk === null || this.#fill + part.length > this.#chunk.length) {
      const grown = Math.min(CHUNK_MAX, Math.max(part.length, 2 * (this.#chunk?.length ?? 128)));
      this.#seal();
      this.#chunk = Buffer.allocUnsafe(grown);
    }
    part.copy(this.#chunk, this.#fill);
    this.#fill += part.length;
    return false;
  }

  #seal(): void {
    if (this.#chunk !== null && this.#fill > 0) this.#list.push(this.#chunk.subarray(0, this.#fill));
    this.#chunk = null;
    this.#fill = 0;
  }

  get empty(): boolean {
    return this.#list.length === 0 && this.#fill === 0;
  }

  /** All parts in one buffer (a single one as it is); the parts are let go. */
  joined(): Buffer {
    this.#seal();
    const list = this.#list;
    this.#list = [];
    return list.length === 1 ? list[0]! : Buffer.concat(list);
  }
}

const isVmmState = (d: { id: string; instance: number }): boolean => d.id === STATE_DEVICE_ID && d.instance === 0;

export async function receiveHandover(o: ReceiveHandoverOptions): Promise<ReceiveHandoverResult> {
  const timeouts = { ...DEFAULT_TIMEOUTS, ...o.timeouts };
  const lim = { ...DEFAULT_HANDOVER_LIMITS, ...o.limits };
  for (const [k, v] of Object.entries(lim)) {
    if (typeof v !== 'number' || !(v >= 0)) throw BackendTransferError.invalidArgument(`limits.${k} must be a number >= 0, not ${String(v)}`);
  }
  const clock = new PhaseClock<TargetPhase>('prepare', o.onEvent);
  const enter = (p: TargetPhase) => clock.enter(p);

  let sock: FdSocket | null = null;
  let queue: ItemQueue | null = null;
  let writer: StreamWriter | null = null;
  let committed = false;
  const pending = new Map<string, Pending>();
  const received = new Set<number>(); // every device fd that arrived (stale staged ones taken out when closed), until committed
  let stateParts: Parts | null = o.onState ? null : new Parts();
  let stateBuf: Buffer | null = null;
  let stateBytes = 0;
  let bytes = 0;
  let fdsCount = 0;
  let sections = 0;
  let tFirst: number | null = null;
  let tAdopted: number | null = null;
  const adopted = new Map<string, unknown>();

  const limits = { phase: () => clock.phase, signal: o.signal, abortable: () => !committed };
  let session: SessionGuard | null = null;
  /** A phase's timeout, the stall bound once it runs, and a flooding peer. */
  const guard = <T>(p: Promise<T>, ms: number, what: string, stall = true): Promise<T> => limited(session ? session.guard(p, stall) : p, ms, what, limits);
  let sourceAborted = false;
  const next = async (what: string, ms: number, stall = true): Promise<StreamItem> => {
    const pending = queue!.next(0, what);
    // When this wait gives up (a timeout, the caller's abort), an item still on its
    // way to it is nobody's: close its fds when it comes.
    const it = await guard(pending, ms, `waiting for ${what}`, stall).catch((err: unknown) => {
      pending.then(closeSectionItem, () => undefined);
      throw err;
    });
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
      state: stateBuf ? stateBuf.subarray(0, stateBytes) : stateParts ? stateParts.joined() : null,
      stateBytes,
      bytes,
      fds: received.size,
      timings: { totalMs: clock.total(), downtimeMs: tFirst !== null && tAdopted !== null ? tAdopted - tFirst : null, phases: clock.spent },
      dropped: droppedList,
      staged: stagedMode,
      peer: cred,
    };
  };

  /** The source died before COMMIT: keep the devices that arrived whole and verify, close the rest. */
  const takeover = async (): Promise<ReceiveHandoverResult> => {
    let all = endOfState;
    const kept: Pending[] = [];
    for (const [key, p] of pending) {
      if (adopted.has(key)) continue;
      const fds = p.arrival.attachments.map((a) => a.fd);
      if (!p.planned.withFds || !p.target || !p.complete || p.dropped || (stagedMode && !p.staged)) {
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
        adopted.set(key, p.target.adopt(p.arrival));
        kept.push(p);
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
  let watch: PeerWatch | null = null;
  let planned = false;
  let endOfState = false;
  /** The STAGED feature is in use; FREEZE was read. */
  let stagedMode = false;
  let frozenSeen = false;
  const droppedList: { id: string; instance: number; reason: string }[] = [];
  /** A failure tied to one STAGE: its sectionId goes in the NACK. */
  let nackSection = NO_SECTION;
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
    // Watches whether the source's process dies holding this connection (the takeover).
    watch = new PeerWatch(sock, cred.pid);

    enter('handshake');
    // Now rather than by a major GC inside the downtime, which starts soon after WELCOME.
    if (o.collectGarbage !== false) collectGarbage();
    // Frames are assembled in one reused buffer: what is kept is copied out of it
    // (device state into its own buffer, VMM state into room made before the freeze).
    // What the source may make this side hold, checked from the declared lengths
    // before a payload is read out of its memfd or copied (see HandoverLimits).
    let keptBytes = 0; // all state kept in memory
    const stagedBytes = new Map<string, number>(); // staged metadata kept, per device
    let vmmReserved = 0; // VMM state accounted so far, in stream order: where the next part goes in stateBuf
    let lateRoom = 0; // an announced VMM state size too large to make room for before the freeze
    const deviceBytes = new Map<PlannedDevice, number>();
    const onPayload = (d: PlannedDevice, length: number, inMemfd: boolean): Buffer | undefined => {
      if (isVmmState(d)) {
        if (o.onState) {
          if (length > lim.maxStateBytes) throw tooLarge('VMM state part', length, lim.maxStateBytes);
          return undefined;
        }
        if (keptBytes + length > lim.maxStateBytes) throw tooLarge('VMM state', keptBytes + length, lim.maxStateBytes);
        keptBytes += length;
        if (vmmReserved === 0 && stateBuf === null && lateRoom > 0) stateBuf = Buffer.allocUnsafe(lateRoom);
        const at = vmmReserved;
        vmmReserved += length;
        // A memfd part that fits the room made before the freeze is read straight into it.
        return inMemfd && stateBuf && at + length <= stateBuf.length ? stateBuf.subarray(at, at + length) : undefined;
      }
      const mine = (deviceBytes.get(d) ?? 0) + length;
      if (mine > lim.maxDeviceStateBytes) throw tooLarge(`state of device ${d.id}`, mine, lim.maxDeviceStateBytes);
      if (keptBytes + length > lim.maxStateBytes) throw tooLarge('state', keptBytes + length, lim.maxStateBytes);
      deviceBytes.set(d, mine);
      keptBytes += length;
      return undefined;
    };
    reader = new StreamReader({
      role: 'target',
      verifyFdKinds: o.verifyFdKinds ?? true,
      reuseBuffers: true,
      limits: { maxDevices: lim.maxDevices },
      onPayload,
      // A memfd part not read into room made for it is mapped, not read: no copy.
      memfdPayload: 'map',
    });
    writer = new StreamWriter(fdSocketChannel(sock));
    const w = writer;
    const g = (session = new SessionGuard(sock, () => clock.phase));
    queue = new ItemQueue(
      sock,
      reader,
      (it) => {
        if (it.type === 'stage') {
          // Its metadata is kept past the reader's reused buffer: within the same
          // limits as a device's state (a re-stage replaces what it staged before).
          const key = `${it.device.id}\0${it.device.instance}`;
          const before = stagedBytes.get(key) ?? 0;
          if (it.payload.length > lim.maxDeviceStateBytes) throw tooLarge(`staged metadata of device ${it.device.id}`, it.payload.length, lim.maxDeviceStateBytes);
          if (keptBytes - before + it.payload.length > lim.maxStateBytes) throw tooLarge('state', keptBytes - before + it.payload.length, lim.maxStateBytes);
          keptBytes += it.payload.length - before;
          stagedBytes.set(key, it.payload.length);
          bytes += it.bodyLength;
          fdsCount += it.attachments.length;
          it.payload = Buffer.from(it.payload);
          return;
        }
        if (it.type !== 'section') return;
        bytes += it.bodyLength;
        fdsCount += it.attachments.length;
        // The reader reuses its buffer for inline payloads: take them out now, while
        // they are valid. A payload read out of a memfd is a buffer of its own (or
        // already in place in stateBuf), a mapped one a mapping of its own: it is
        // kept as it is, never copied again. onState gets a mapped part for the
        // call only (like an inline one): it is unmapped when onState returns.
        if (isVmmState(it.device)) {
          const n = it.payload.length; // before a mapping is released (then its length is 0)
          if (o.onState) {
            try {
              o.onState(it.payload);
            } finally {
              if (it.payloadMapped) releaseMapping(it.payload);
            }
          } else if (stateBuf && stateBytes + it.payload.length <= stateBuf.length) {
            const inPlace = it.payload.buffer === stateBuf.buffer && it.payload.byteOffset === stateBuf.byteOffset + stateBytes;
            if (!inPlace) it.payload.copy(stateBuf, stateBytes);
            if (it.payloadMapped) releaseMapping(it.payload);
          } else {
            if (stateBuf) {
              // More than announced: go on in parts.
              stateParts!.add(stateBuf.subarray(0, stateBytes), true);
              stateBuf = null;
            }
            const kept = stateParts!.add(it.payload, it.payloadInMemfd);
            if (it.payloadMapped && !kept) releaseMapping(it.payload);
          }
          stateBytes += n;
          it.payload = EMPTY;
        } else if (!it.payloadInMemfd) it.payload = Buffer.from(it.payload);
      },
      { pong: (token) => w.pong(token), onFlood: (err) => g.fail(err), onNoise: (n) => (g.noise += n) },
    );
    const first = await next('HELLO', timeouts.handshake);
    if (first.type !== 'hello') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `expected HELLO, the source sent ${first.type}`);
    const hello = first.hello;
    const announced = (hello.info as { stateBytes?: unknown } | null)?.stateBytes;
    if (!o.onState && typeof announced === 'number' && Number.isInteger(announced) && announced > 0 && announced <= lim.maxStateBytes) {
      // Written now, so that its pages are there before the source freezes: a
      // large Buffer.alloc() is fresh zero pages, each faulted in on first write,
      // which would happen inside the downtime.
      if (announced <= MAX_PREALLOCATED_STATE) stateBuf = Buffer.allocUnsafe(announced).fill(0);
      // Larger: the room is taken (not written) when the state starts to arrive, so
      // that its parts are not joined at the end (twice their size for a moment).
      else lateRoom = announced;
    }
    const canPassFds = o.backendTransfer && first.probe === 'ok';
    const stateWindow = o.stateVersions ?? [1, 1];
    const welcome = answerOffers(
      hello,
      // The reserved VMM-state device is accepted once: instance 0.
      acceptFor(o.accept, { backendTransfer: o.backendTransfer }, (offer) =>
        isVmmState(offer) && offer.kind === 'state' ? { kind: 'state', minVersion: stateWindow[0], maxVersion: stateWindow[1], acceptFds: false } : null,
      ),
      { canPassFds, features: ALL_FEATURES, fdBudget: fdBudget(), info: { pid: process.pid, probe: first.probe } },
    );
    reader.setWelcome(welcome);
    await guard(writer.welcome(welcome), timeouts.handshake, 'sending WELCOME');
    const planItem = await next('PLAN', timeouts.handshake);
    if (planItem.type !== 'plan') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `expected PLAN, the source sent ${planItem.type}`);
    planned = true;
    const jsonLimits = { maxJsonBytes: lim.maxJsonBytes, maxJsonDepth: lim.maxJsonDepth };
    const byKey = byDevice(o.accept);
    if (o.onEvent) {
      // Say what will not arrive: nothing else would (the handover itself succeeds).
      // Maps, not searches: the offers and the plan are bounded by limits.maxDevices, not small.
      const plannedByKey = byDevice(planItem.plan.devices);
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
    for (const p of planItem.plan.devices) {
      const target = byKey.get(deviceKey(p)) ?? null;
      pending.set(`${p.id}\0${p.instance}`, {
        planned: p,
        target,
        arrival: { device: p, attachments: [], state: Buffer.alloc(0), jsonLimits },
        parts: new Parts(),
        complete: false,
        staged: false,
        dropped: false,
      });
    }

    stagedMode = (planItem.plan.features & Features.STAGED) !== 0;
    /** A VMM-state or device section frame: its part kept. */
    const takeSection = (it: Extract<StreamItem, { type: 'section' }>) => {
      sections++;
      const p = pending.get(`${it.idstr}\0${it.instanceId}`)!;
      for (const a of it.attachments) {
        received.add(a.fd);
        p.arrival.attachments.push(a);
      }
      if (!isVmmState(it.device) && !p.parts.add(it.payload, true) && it.payloadMapped) releaseMapping(it.payload); // copied when it arrived (if inline)
      if (it.frame === 'end' || it.frame === 'full') p.complete = true;
      o.onEvent?.({ type: 'progress', bytes, totalBytes: null, sections, fds: fdsCount, etaMs: null });
    };
    if (stagedMode) {
      // Stage: each backend arrives with its static metadata while the source still
      // uses it. It is verified now (from the kernel's view, touching nothing) and
      // answered on its own, ACK(STAGED) or NACK, before anything is frozen.
      enter('stage');
      const toStage = [...pending.values()].filter((p) => p.planned.withFds).length;
      let stagedCount = 0;
      const stage = (it: StageItem, afterFreeze: boolean) => {
        nackSection = it.sectionId;
        const p = pending.get(`${it.device.id}\0${it.device.instance}`)!;
        for (const a of it.attachments) received.add(a.fd);
        if (p.staged) {
          // A re-stage: the backend changed after it was staged; the old fds are stale.
          const stale = p.arrival.attachments.map((a) => a.fd);
          for (const fd of stale) received.delete(fd);
          closeFds(stale);
        }
        p.arrival = { device: p.planned, attachments: it.attachments, state: it.payload, jsonLimits };
        if (!p.target) throw new BackendTransferError(ErrorCodes.ERR_BACKEND_VERIFY, `device ${p.planned.id}: staged, but this side has no device for it`);
        p.target.verify(p.arrival);
        if (!p.staged) stagedCount++;
        p.staged = true;
        // No open file twice: within the device now, across all once all are staged (and again for a re-stage).
        if (afterFreeze || stagedCount === toStage) checkDistinctFiles([...pending.values()].filter((x) => x.staged && !x.dropped));
        else checkDistinctFiles([p]);
        nackSection = NO_SECTION;
      };
      // The source's freeze() runs between its last ACK(STAGED) and FREEZE.
      const stageWait = timeouts.stage > 0 && timeouts.freeze > 0 ? timeouts.stage + timeouts.freeze : 0;
      for (;;) {
        const it = await next('STAGE or FREEZE', stageWait, false);
        if (it.type === 'stage') {
          stage(it, false);
          o.onEvent?.({ type: 'progress', bytes, totalBytes: null, sections: stagedCount, fds: fdsCount, etaMs: null });
          // An abort heard by now refuses this device rather than acknowledging it.
          if (o.signal?.aborted) throw abortedError(clock.phase, o.signal);
          await guard(writer.ack(AckStage.STAGED, '', it.sectionId), timeouts.stage, 'sending ACK(STAGED)');
          continue;
        }
        if (it.type === 'section' && isVmmState(it.device)) {
          takeSection(it); // the precopied VMM state
          continue;
        }
        if (it.type === 'freeze') {
          tFirst = now();
          frozenSeen = true;
          for (const d of it.freeze.dropped) {
            const p = pending.get(`${d.id}\0${d.instance}`)!;
            p.dropped = true;
            const fds = p.arrival.attachments.map((a) => a.fd);
            for (const fd of fds) received.delete(fd);
            closeFds(fds);
            p.arrival.attachments = [];
            droppedList.push({ id: d.id, instance: d.instance, reason: d.reason });
            o.onEvent?.({ type: 'warning', message: `device ${d.id}: dropped by the source at the freeze (${d.reason}); its staged fds were closed` });
          }
          break;
        }
        throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `unexpected ${it.type} while staging`);
      }
      // Switch-over: only what changed while the VMM ran (and re-stages) until END_OF_STATE.
      enter('switch-over');
      session.watchStall(timeouts.stall);
      for (;;) {
        const it = await next('the switch-over state', timeouts.transfer);
        if (it.type === 'end-of-state') {
          endOfState = true;
          break;
        }
        if (it.type === 'stage') stage(it, true);
        else if (it.type === 'section') takeSection(it);
        else throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `unexpected ${it.type} in the switch-over`);
      }
      for (const p of pending.values()) if (!p.dropped) p.arrival.state = p.parts.joined();
      queue.quiet = true;
      // Adopt: what was verified at staging is taken as it is (nothing inspected again).
      enter('adopt');
      for (const [key, p] of pending) {
        if (!p.planned.withFds || !p.target || p.dropped) continue;
        adopted.set(key, p.target.adopt(p.arrival));
      }
      tAdopted = now();
      await guard(writer.ack(AckStage.ADOPTED), timeouts.adopt, 'sending ACK(ADOPTED)');
    } else {
      enter('transfer');
      // The source freezes now (its freeze() may take up to timeouts.freeze); from the
      // first section on, no progress for timeouts.stall ms fails the transfer.
      const firstWait = timeouts.stall > 0 ? timeouts.freeze + timeouts.stall : 0;
      const stallFirst = firstWait > 0 && !(timeouts.transfer > 0 && timeouts.transfer <= firstWait);
      for (let first = true; ; first = false) {
        const it = !first
          ? await next('sections', timeouts.transfer)
          : await next('sections', stallFirst ? firstWait : timeouts.transfer, false).catch((err: unknown) => {
              if (!stallFirst || (err as BackendTransferError).code !== ErrorCodes.ERR_TIMEOUT) throw err;
              throw new BackendTransferError(ErrorCodes.ERR_HANDOVER_STALLED, `no section within ${firstWait} ms of PLAN (timeouts.freeze + timeouts.stall): the source stopped after the handshake`, {
                details: { phase: clock.phase, ms: firstWait },
              });
            });
        if (first) session.watchStall(timeouts.stall);
        if (it.type === 'end-of-state') {
          endOfState = true;
          break;
        }
        if (it.type !== 'section') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `unexpected ${it.type} among the sections`);
        tFirst ??= now();
        takeSection(it);
      }
      for (const p of pending.values()) p.arrival.state = p.parts.joined();
      // No more PONGs from here: the ACKs are what the source waits for.
      queue.quiet = true;
      await guard(writer.ack(AckStage.LOADED, `${pending.size} section(s), ${received.size} fd(s)`), timeouts.verify, 'sending ACK(LOADED)');

      enter('verify');
      for (const p of pending.values()) {
        if (!p.planned.withFds || !p.target) continue;
        p.target.verify(p.arrival);
      }
      checkDistinctFiles([...pending.values()].filter((p) => p.planned.withFds && p.target));
      await guard(writer.ack(AckStage.VERIFIED), timeouts.verify, 'sending ACK(VERIFIED)');

      enter('adopt');
      for (const [key, p] of pending) {
        if (!p.planned.withFds || !p.target) continue;
        adopted.set(key, p.target.adopt(p.arrival));
      }
      tAdopted = now();
      await guard(writer.ack(AckStage.ADOPTED), timeouts.adopt, 'sending ACK(ADOPTED)');
    }

    enter('commit');
    const c = await next('COMMIT', timeouts.commit);
    if (c.type !== 'commit') throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `expected COMMIT, the source sent ${c.type}`);
    committed = true;
    session.stop();
    // Bounded: the backends are ours now, and a source that stopped reading must not hold this call.
    await guard(writer.ack(AckStage.COMMITTED), 2000, 'sending ACK(COMMITTED)', false).catch(() => undefined);
    // The rest is courtesy: the backends are ours whatever happens to the socket now.
    await guard(queue.next(0, 'EOF'), 2000, 'the source EOF').catch(() => undefined);
    await guard(writer.eof(), 2000, 'sending EOF', false).catch(() => undefined);

    enter('done');
    return await finish('committed', true);
  } catch (err) {
    let e = err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, `handover (phase ${clock.phase})`);
    const failedIn = clock.phase;
    session?.stop();
    // A send failed because the source hung up: it may have sent ABORT first.
    if (e.code === ErrorCodes.ERR_PEER_CLOSED && queue && !committed) {
      const abort = await queue.find('abort', 300);
      if (abort) e = abortedBySource(abort);
    }
    // The source went away without COMMIT or ABORT. If the process that held the
    // connection died with it, nobody else holds these backends: keep what arrived
    // whole (a takeover). Where the holder cannot be known (the connecting process
    // died while the connection stayed open, say a fork's child held it), no takeover.
    const sourceVanished = e.code === ErrorCodes.ERR_PEER_CLOSED || e.code === ErrorCodes.ERR_STREAM_TRUNCATED;
    // With staging, only after FREEZE: before it the source never stopped using the
    // backends, so their state here may be stale; what was staged is closed.
    if (!committed && planned && sourceVanished && (!stagedMode || frozenSeen) && watch !== null && (await watch.holderGone(1500))) {
      o.onEvent?.({ type: 'warning', message: `the source (pid ${cred?.pid}) died in phase ${failedIn}: taking over what arrived` });
      enter('done');
      return await takeover();
    }
    enter('aborted');
    if (!committed) {
      // Nothing received is ours without COMMIT.
      closeFds([...received]);
      received.clear();
      // Tell the source why (unless it is the one that aborted), so that it thaws at once.
      if (writer && !writer.error && sock && !sock.closed && !sourceAborted) {
        await Promise.race([
          writer
            .nack(e.code, withoutCode(e.message, e.code), nackSection)
            .then(() => writer!.eof())
            .catch(() => undefined),
          new Promise((r) => setTimeout(r, 500)),
        ]);
      }
    }
    e.details = { ...(e.details ?? {}), phase: failedIn, committed };
    throw e;
  } finally {
    session?.stop();
    watch?.close();
    listener?.close();
    queue?.drain();
    reader?.close();
    if (sock && !(o.socket instanceof FdSocket)) sock.close();
    stateParts = null;
  }
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
function checkDistinctFiles(devices: readonly Pending[]): void {
  const fds: number[] = [];
  const owner: { device: string; name: string }[] = [];
  for (const p of devices) {
    for (const a of p.arrival.attachments) {
      fds.push(a.fd);
      owner.push({ device: p.planned.id, name: a.name });
    }
  }
  const same = findSameFile(fds);
  if (!same) return;
  const [x, y] = [owner[same[0]]!, owner[same[1]]!];
  const other = x.device === y.device ? `fd ${y.name}` : `fd ${y.name} of device ${y.device}`;
  throw verifyError(x.device, `fd ${x.name} and ${other} are the same open file (one file sent twice), found by ${sameFileMethod() === 'kcmp' ? 'kcmp(KCMP_FILE)' : 'inode/eventfd-id'}`, {
    sameFile: [x, y],
  });
}
