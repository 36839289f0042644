// An "old" or "new" owner of real backends, as a process: the demo's two sides,
// and the processes the fault tests kill. It opens or adopts the backends, keeps
// traffic flowing through each (traffic.ts), hands them over or takes them over,
// and reports. Commands arrive as JSON lines on stdin, events
// leave as JSON lines on stdout.
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { BackendTransferError, ErrorCodes } from '../../errors.js';
import { closeFds } from '../../fd/index.js';
import { createEventfd, createMemfd } from '../../fd/create.js';
import { ChardevSocketSource, ChardevSocketTarget, type ChardevBackend } from '../../backends/chardev-socket.js';
import { TapSource, TapTarget, openTap, type TapBackend } from '../../backends/tap.js';
import { VhostUserSource, VhostUserTarget, type VhostUserBackend } from '../../backends/vhost-user.js';
import { VhostUserFrontend, VhostUserProtocolFeatureBit, featureBit, hasFeature } from '../../vhost-user/index.js';
import type { SourceDevice, TargetDevice } from '../../backends/types.js';
import { sendHandover } from '../../handover/source.js';
import { receiveHandover } from '../../handover/target.js';
import { warmUpHandover } from '../../handover/warmup.js';
import type { HandoverEvent, PhaseTimeouts } from '../../handover/types.js';
import { FdServer } from '../../transport/server.js';
import { FdSocket } from '../../transport/fd-socket.js';
import { chardevTraffic, tapTraffic, vhostTraffic, type Traffic } from './traffic.js';

export interface OwnerConfig {
  role: 'old' | 'new';
  handoverPath: string;
  /** A chardev peer (echo server) to connect `chardevs` connections to. */
  echoPath?: string;
  chardevs?: number;
  /** vhost-user back-end sockets, one device (connection) each, with `vhostQueues` queues. */
  vhostPaths?: string[];
  vhostQueues?: number;
  /** A multi-queue TAP: the old owner opens it (it runs in the TAP's namespace). */
  tap?: { ifname: string; queues: number };
  /** VMM state that travels with the devices. */
  stateBytes?: number;
  /** Fault injection (tests): SIGKILL this process when the handover enters this phase. */
  killAt?: string;
  /** Fault injection (tests, old owner): SIGKILL this process once this many sections went out. */
  killAfterSections?: number;
  /** Fault injection (tests, new owner): stop reading the handover socket in this phase. */
  stopReadingAt?: string;
  timeouts?: PhaseTimeouts;
  partSize?: number;
  /** Stage the backends before the freeze (default true; false: the old order). */
  staging?: boolean;
  /** Hand the VMM state over before the freeze (precopy); nothing of it follows the freeze. */
  precopy?: boolean;
  /** Fault injection (tests, old owner): abort the handover (its AbortSignal) when it enters this phase. */
  abortAt?: string;
  /** Fault injection (tests, new owner): refuse the first staged device (its verify fails: a NACK at staging). */
  refuseStaged?: boolean;
  /** Fault injection (tests, new owner): stop reading the handover socket once this many devices were staged (and acknowledged). */
  silentAfterStages?: number;
}

function emit(event: string, data: Record<string, unknown> = {}): void {
  process.stdout.write(JSON.stringify({ event, ...data }, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
}

function errInfo(err: unknown): Record<string, unknown> {
  const e = err as BackendTransferError;
  return { code: e.code ?? 'ERR_UNKNOWN', message: e.message, details: e.details ?? null };
}

// ---------------------------------------------------------------- the owners

interface VhostConn {
  fe: VhostUserFrontend;
  callFds: number[];
  inflight: { fd: number; size: number; offset: number; queueSize: number };
  features: bigint;
  protocolFeatures: bigint;
}

async function openVhost(path: string, queues: number): Promise<VhostConn> {
  const fe = await VhostUserFrontend.connect(path);
  const features = await fe.getFeatures();
  await fe.setOwner();
  const offered = await fe.getProtocolFeatures();
  const protocolFeatures = [VhostUserProtocolFeatureBit.MQ, VhostUserProtocolFeatureBit.CONFIG, VhostUserProtocolFeatureBit.REPLY_ACK].reduce(
    (acc, bit) => acc | (hasFeature(offered, bit) ? featureBit(bit) : 0n),
    0n,
  );
  await fe.setProtocolFeatures(protocolFeatures);
  const callFds = Array.from({ length: queues }, () => createEventfd({ nonBlocking: true }));
  for (let i = 0; i < queues; i++) await fe.setVringCall(i, callFds[i]!);
  // The inflight region a front-end would share with the back-end (this daemon
  // offers no INFLIGHT_SHMFD, so the front-end's own memfd stands in).
  const fd = createMemfd('inflight');
  const { ftruncateSync } = await import('node:fs');
  ftruncateSync(fd, 16384);
  return { fe, callFds, inflight: { fd, size: 16384, offset: 0, queueSize: 128 }, features, protocolFeatures };
}

function makeState(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += 4096) b[i] = i & 0xff;
  return b;
}

async function oldOwner(c: OwnerConfig, commands: Map<string, (cmd: Record<string, unknown>) => Promise<void> | void>): Promise<void> {
  const traffic: { name: string; t: Traffic }[] = [];
  const devices: SourceDevice[] = [];
  const cleanups: (() => void)[] = [];
  await warmUpHandover();
  const chardevState = new Map<string, () => Uint8Array>();

  // chardevs
  for (let i = 0; c.echoPath && i < (c.chardevs ?? 1); i++) {
    const sock = await FdSocket.connect(c.echoPath);
    const t = chardevTraffic(sock, { sent: 0, echoed: 0 });
    const id = `serial${i}`;
    traffic.push({ name: id, t });
    chardevState.set(id, () => Buffer.from(JSON.stringify({ sent: t.st.sent, echoed: t.st.echoed })));
    devices.push(new ChardevSocketSource({ id, fd: sock.fd, role: 'client', address: c.echoPath, transfer: true, required: true, closeOnRelease: false, state: () => chardevState.get(id)!() }));
    cleanups.push(() => sock.close());
  }
  // vhost-user
  const vhosts: VhostConn[] = [];
  for (const [i, vhostPath] of (c.vhostPaths ?? []).entries()) {
    const v = await openVhost(vhostPath, c.vhostQueues ?? 2);
    vhosts.push(v);
    traffic.push({ name: `blk${i}`, t: vhostTraffic(v.fe) });
    devices.push(
      new VhostUserSource({
        id: `blk${i}`,
        socket: v.fe.fd,
        callFds: v.callFds,
        inflight: v.inflight,
        socketPath: vhostPath,
        features: v.features,
        protocolFeatures: v.protocolFeatures,
        numQueues: c.vhostQueues ?? 2,
        transfer: true,
        required: true,
        closeOnRelease: false,
        deviceState: Buffer.from(`virtio-blk ${i}`),
      }),
    );
    cleanups.push(() => {
      v.fe.close();
      closeFds([...v.callFds, v.inflight.fd]);
    });
  }
  // TAP (this process runs in the TAP's namespace)
  let tap: TapBackend | null = null;
  let tapMac = '';
  let tapT: Traffic | null = null;
  if (c.tap) {
    tap = openTap(c.tap.ifname, { queues: c.tap.queues, vnetHdr: true });
    tapMac = readFileSync(`/sys/class/net/${c.tap.ifname}/address`, 'utf8').trim();
    const t = tap;
    devices.push(new TapSource({ id: 'net0', queues: t.queues, transfer: true, required: true, closeOnRelease: false, state: () => Buffer.from(JSON.stringify({ mac: tapMac })) }));
    cleanups.push(() => t.close());
  }
  const state = makeState(c.stateBytes ?? 256 * 1024);
  emit('ready', {
    pid: process.pid,
    tap: tap ? { ifname: tap.ifname, ifindex: tap.meta.ifindex, mac: tapMac, queues: tap.queues.length } : null,
    devices: devices.map((d) => ({ id: d.id, kind: d.kind, fds: d.fdCount() })),
  });

  commands.set('start-tap', () => {
    if (tap && !tapT) {
      tapT = tapTraffic(tap, tapMac, 1);
      traffic.push({ name: 'net0', t: tapT });
    }
    emit('tap-started');
  });
  commands.set('stats', () => emit('stats', { traffic: Object.fromEntries(traffic.map((x) => [x.name, x.t.stats()])) }));
  commands.set('handover', async (cmd) => {
    let frozenAt = 0;
    const ac = new AbortController();
    try {
      const r = await sendHandover({
        staging: c.staging,
        signal: ac.signal,
        // A different path may be given (a relay in front of the new owner, say).
        socket: typeof cmd.path === 'string' ? cmd.path : c.handoverPath,
        devices,
        backendTransfer: true,
        ...(c.precopy ? { precopy: state, state: Buffer.alloc(0) } : { state }),
        timeouts: c.timeouts,
        partSize: c.partSize,
        onEvent: (e: HandoverEvent) => {
          onPhase(c, e);
          if (e.type === 'phase' && c.abortAt === e.phase) ac.abort('fault injection: abortAt');
        },
        freeze: async () => {
          frozenAt = performance.now();
          // Stop using the backends: what is in flight stays in the kernel for the new owner.
          await Promise.all(traffic.map((x) => x.t.stop()));
        },
        thaw: () => {
          // Not handed over: use them again, from where they stopped.
          for (const x of traffic) x.t.resume();
        },
      });
      emit('handover-done', { result: r, frozenForMs: performance.now() - frozenAt, traffic: Object.fromEntries(traffic.map((x) => [x.name, x.t.stats()])) });
      // Committed: the new owner has them. Close this side's copies.
      for (const f of cleanups) f();
    } catch (err) {
      emit('handover-failed', { ...errInfo(err), frozen: frozenAt > 0, traffic: Object.fromEntries(traffic.map((x) => [x.name, x.t.stats()])) });
    }
  });
}

async function newOwner(c: OwnerConfig, commands: Map<string, (cmd: Record<string, unknown>) => Promise<void> | void>, tapMac: string): Promise<void> {
  // Warm the handover code while nothing is frozen yet (a cold one has a longer downtime).
  await warmUpHandover();
  const server = FdServer.listen(c.handoverPath);
  emit('listening', { pid: process.pid });
  const ms = c.timeouts?.connect ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  let sock: FdSocket;
  try {
    sock = await Promise.race([server.accept(), new Promise<never>((_, reject) => (timer = setTimeout(() => reject(BackendTransferError.timeout('waiting for the old owner to connect', ms)), ms)))]);
  } catch (err) {
    emit('receive-failed', errInfo(err));
    return;
  } finally {
    clearTimeout(timer);
    server.close();
  }
  const targets: TargetDevice[] = [];
  for (let i = 0; c.echoPath && i < (c.chardevs ?? 1); i++) targets.push(new ChardevSocketTarget({ id: `serial${i}` }));
  if (c.refuseStaged && targets[0]) {
    const t = targets[0];
    t.verify = () => {
      throw new BackendTransferError(ErrorCodes.ERR_BACKEND_VERIFY, `device ${t.id}: refused by fault injection (refuseStaged)`);
    };
  }
  let stagedSeen = 0;
  let inStage = false;
  for (let i = 0; i < (c.vhostPaths?.length ?? 0); i++) targets.push(new VhostUserTarget({ id: `blk${i}` }));
  if (c.tap) targets.push(new TapTarget({ id: 'net0' }));
  try {
    const r = await receiveHandover({
      socket: sock,
      accept: targets,
      backendTransfer: true,
      timeouts: c.timeouts,
      onEvent: (e) => {
        if (e.type === 'phase' && c.stopReadingAt === e.phase) sock.pause();
        if (e.type === 'phase') inStage = e.phase === 'stage';
        if (e.type === 'progress' && inStage && c.silentAfterStages !== undefined && ++stagedSeen === c.silentAfterStages) {
          // Silent for real: not reading, and not answering what the reader already
          // took in (pausing the socket alone leaves queued STAGEs to be acknowledged).
          // The test sends SIGCONT once the source gave up.
          sock.pause();
          process.kill(process.pid, 'SIGSTOP');
        }
        onPhase(c, e);
      },
    });
    sock.close();
    const traffic: { name: string; t: Traffic }[] = [];
    for (const [id, d] of r.devices) {
      if (d.how !== 'received' || !d.backend) continue;
      if (d.kind === 'chardev-socket') {
        const b = d.backend as ChardevBackend;
        const from = JSON.parse(b.state.toString()) as { sent: number; echoed: number };
        traffic.push({ name: id, t: chardevTraffic(b.toFdSocket(), from) });
      } else if (d.kind === 'vhost-user') {
        const b = d.backend as VhostUserBackend;
        const fe = VhostUserFrontend.fromFd(b.takeSocket(), { session: { protocolFeatures: b.protocolFeatures, owner: true } });
        traffic.push({ name: id, t: vhostTraffic(fe) });
      } else if (d.kind === 'tap') {
        const b = d.backend as TapBackend;
        const mac = tapMac || (JSON.parse(b.state.toString() || '{}') as { mac?: string }).mac || '';
        traffic.push({ name: id, t: tapTraffic(b, mac, 5000) });
      }
    }
    emit('received', {
      outcome: r.outcome,
      complete: r.complete,
      devices: [...r.devices.values()].map((d) => ({ id: d.id, kind: d.kind, how: d.how })),
      stateBytes: r.stateBytes,
      fds: r.fds,
      timings: r.timings,
    });
    commands.set('stats', () => emit('stats', { traffic: Object.fromEntries(traffic.map((x) => [x.name, x.t.stats()])) }));
    commands.set('stop', async () => {
      await Promise.all(traffic.map((x) => x.t.stop()));
      emit('stopped', { traffic: Object.fromEntries(traffic.map((x) => [x.name, x.t.stats()])) });
    });
  } catch (err) {
    sock.close();
    emit('receive-failed', errInfo(err));
  }
}

/**
 * Phases inside the downtime (staged): their lines wait for the next phase, so that
 * the owner does not write to its stdout, and wake the process reading it, while
 * the VM is frozen (a VMM would not either). Order and content are unchanged.
 */
const QUIET_PHASES = new Set(['switch-over', 'adopt']);
const heldPhases: Record<string, unknown>[] = [];

function onPhase(c: OwnerConfig, e: HandoverEvent): void {
  if (e.type === 'progress' && c.role === 'old' && c.killAfterSections !== undefined && e.sections >= c.killAfterSections) {
    flushPhases();
    process.kill(process.pid, 'SIGKILL');
  }
  if (e.type !== 'phase') return;
  if (QUIET_PHASES.has(e.phase)) heldPhases.push({ phase: e.phase, atMs: e.atMs });
  else {
    flushPhases();
    emit('phase', { phase: e.phase, atMs: e.atMs });
  }
  if (c.killAt === e.phase) {
    flushPhases();
    process.kill(process.pid, 'SIGKILL');
  }
}

function flushPhases(): void {
  for (const p of heldPhases.splice(0)) emit('phase', p);
}

/** Runs an owner in this process: `backend-transfer _owner '<json config>'`. */
export async function runOwner(configJson: string): Promise<number> {
  const c = JSON.parse(configJson) as OwnerConfig & { tapMac?: string };
  const commands = new Map<string, (cmd: Record<string, unknown>) => Promise<void> | void>();
  commands.set('exit', () => process.exit(0));
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    let cmd: Record<string, unknown>;
    try {
      cmd = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return emit('error', { message: `not JSON: ${line}` });
    }
    const h = commands.get(String(cmd.cmd));
    if (!h) return emit('error', { message: `unknown command ${String(cmd.cmd)}` });
    Promise.resolve(h(cmd)).catch((err: unknown) => emit('fatal', { message: (err as Error).stack ?? String(err) }));
  });
  rl.on('close', () => process.exit(0)); // the orchestrator went away
  try {
    if (c.role === 'old') await oldOwner(c, commands);
    else await newOwner(c, commands, c.tapMac ?? '');
  } catch (err) {
    emit('fatal', { ...errInfo(err), message: (err as Error).stack ?? String(err) });
    return 1;
  }
  return new Promise<number>(() => undefined); // runs until told to exit
}
