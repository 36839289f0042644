// The demo: an old owner hands live backends to a new owner while traffic flows
// through all of them, then both sides and the real peers are asked what they saw.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PhaseTimeouts } from '../../handover/types.js';
import { OwnerProcess, TapNamespace, startEchoPeer, type OwnerEvent } from './harness.js';
import type { OwnerConfig } from './owner.js';
import { StorageDaemon } from './storage-daemon.js';
import { hasCommand } from './process.js';

export interface DemoOptions {
  /** Chardev connections to the echo peer. Default 1. */
  chardevs?: number;
  /** vhost-user devices on the qemu-storage-daemon (when installed). Default 1. */
  vhostDevices?: number;
  /** TAP queues (when this process may create a network namespace). Default 4. */
  tapQueues?: number;
  /** VMM state moved with the devices. Default 4 MiB. */
  stateBytes?: number;
  /** How long traffic runs before and after the handover, ms. Default 400. */
  trafficMs?: number;
  /** Leave out backends even when available. */
  without?: ('vhost-user' | 'tap')[];
  /** Progress as the handover goes (phase names, bytes). */
  onProgress?: (e: OwnerEvent) => void;
  timeouts?: PhaseTimeouts;
  /** The CLI to run the owners with (default: this process's own). */
  cli?: string[];
  /** Stage the backends before the freeze (default true; false: the old order). */
  staging?: boolean;
  /** Hand the VMM state over before the freeze (precopy): only the devices' mutable state follows it. */
  precopy?: boolean;
}

export interface DemoReport {
  ok: boolean;
  /** ms the old owner spent in each handover phase. */
  phases: Record<string, number>;
  oldPid: number;
  newPid: number;
  moved: { id: string; kind: string; how: string; fds: number }[];
  skipped: { backend: string; reason: string; enable: string }[];
  stateBytes: number;
  fds: number;
  downtimeMs: number | null;
  /** With staging: the downtime in parts (freeze, switch-over state, adopt and ACK). */
  breakdown?: { freezeMs: number; switchOverMs: number; adoptMs: number; switchOverBytes: number };
  /** The backends were staged before the freeze. */
  staged?: boolean;
  totalMs: number | null;
  throughputMBps: number | null;
  reconnects: { peer: string; reconnects: number; detail: string }[];
  traffic: { before: Record<string, unknown>; after: Record<string, unknown>; afterLater: Record<string, unknown> };
  problems: string[];
}

/** Why a TAP in a private namespace cannot be made here, or null. */
export function tapUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'needs CAP_NET_ADMIN to create a network namespace and a TAP (run as root)';
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun does not exist (no tun driver)';
  if (!hasCommand('ip')) return "the 'ip' command is missing (Debian package iproute2)";
  return null;
}

/** Why qemu-storage-daemon cannot serve vhost-user here, or null. */
export function vhostUnavailable(): string | null {
  if (!hasCommand('qemu-storage-daemon')) return 'qemu-storage-daemon is not installed';
  return null;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runDemo(o: DemoOptions = {}): Promise<DemoReport> {
  const dir = mkdtempSync(join(tmpdir(), 'bt-demo-'));
  const problems: string[] = [];
  const skipped: DemoReport['skipped'] = [];
  const trafficMs = o.trafficMs ?? 400;
  let echo: ReturnType<typeof startEchoPeer> | null = null;
  // qemu-storage-daemon serves one front-end per export at a time: one daemon per device.
  const qsds: StorageDaemon[] = [];
  let ns: TapNamespace | null = null;
  let oldOwner: OwnerProcess | null = null;
  let newOwner: OwnerProcess | null = null;
  try {
    // The real peers.
    const echoPath = join(dir, 'echo.sock');
    echo = startEchoPeer(echoPath);
    const vOut = o.without?.includes('vhost-user') || o.vhostDevices === 0;
    const vReason = vOut ? (o.vhostDevices === 0 ? 'left out (--vhost-devices 0)' : 'left out (--without vhost-user)') : vhostUnavailable();
    if (vReason === null) for (let i = 0; i < (o.vhostDevices ?? 1); i++) qsds.push(await StorageDaemon.start({ sizeBytes: 64 * 1024 * 1024, numQueues: 2 }));
    else
      skipped.push({
        backend: 'vhost-user (qemu-storage-daemon)',
        reason: vReason,
        enable: vOut ? (o.vhostDevices === 0 ? 'give --vhost-devices 1 or more' : 'leave out --without vhost-user') : 'apt-get install qemu-system-common',
      });
    const tOut = o.without?.includes('tap') === true;
    let tReason = tOut ? 'left out (--without tap)' : tapUnavailable();
    let tEnable = tOut ? 'leave out --without tap' : 'run as root (sudo) with iproute2 installed';
    if (tReason === null) {
      try {
        ns = new TapNamespace('bt0');
      } catch (err) {
        // Root in a user namespace (unshare -Urn), a container without CAP_SYS_ADMIN: no netns here.
        tReason = `a network namespace cannot be created here (${(err as Error).message})`;
        tEnable = 'run as real root, outside a user namespace or restricted container';
      }
    }
    if (tReason !== null) skipped.push({ backend: 'TAP (multi-queue, in a private network namespace)', reason: tReason, enable: tEnable });

    const base: OwnerConfig = {
      role: 'old',
      handoverPath: join(dir, 'handover.sock'),
      echoPath,
      chardevs: o.chardevs ?? 1,
      stateBytes: o.stateBytes ?? 4 * 1024 * 1024,
      timeouts: o.timeouts,
      ...(o.staging === false ? { staging: false } : {}),
      ...(o.precopy ? { precopy: true } : {}),
      ...(qsds.length ? { vhostPaths: qsds.map((q) => q.socketPath), vhostQueues: 2 } : {}),
      ...(ns ? { tap: { ifname: ns.ifname, queues: o.tapQueues ?? 4 } } : {}),
    };

    // The old owner, with its backends and traffic.
    oldOwner = new OwnerProcess(base, { netns: ns?.name, cli: o.cli });
    const ready = await oldOwner.waitFor('ready');
    const tapInfo = ready.tap as { mac: string; ifindex: number; queues: number } | null;
    if (ns && tapInfo) {
      ns.configure(tapInfo.queues);
      await oldOwner.ask({ cmd: 'start-tap' }, 'tap-started');
    }
    const acceptedBefore = qsds.map((q) => q.acceptedCount());
    const qsdConnsBefore = qsds.map((q) => q.connections().map((c) => c.inode));
    await sleep(trafficMs);
    const before = (await oldOwner.ask({ cmd: 'stats' }, 'stats')).traffic as Record<string, unknown>;

    // The new owner, and the handover.
    newOwner = new OwnerProcess({ ...base, role: 'new', tapMac: tapInfo?.mac }, { cli: o.cli });
    await newOwner.waitFor('listening');
    if (o.onProgress) {
      oldOwner.onEvent(o.onProgress);
      newOwner.onEvent(o.onProgress);
    }
    const watch = ns ? await ns.watch() : null;
    const done = await oldOwner.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'], 120_000);
    const received = await newOwner.waitFor(['received', 'receive-failed'], 60_000);
    if (done.event !== 'handover-done') problems.push(`the handover failed: ${String(done.message)}`);
    if (received.event !== 'received') problems.push(`the new owner failed: ${String(received.message)}`);

    await sleep(trafficMs);
    const after = received.event === 'received' ? ((await newOwner.ask({ cmd: 'stats' }, 'stats')).traffic as Record<string, unknown>) : {};
    await sleep(trafficMs / 2);
    const afterLater = received.event === 'received' ? ((await newOwner.ask({ cmd: 'stats' }, 'stats')).traffic as Record<string, unknown>) : {};
    const link = await watch?.stop();

    // What the peers saw.
    const reconnects: DemoReport['reconnects'] = [];
    const es = echo.stats();
    const chardevs = o.chardevs ?? 1;
    reconnects.push({
      peer: 'chardev echo peer',
      reconnects: Math.max(0, es.connections - chardevs),
      detail: `${es.connections} connection(s) for ${chardevs} chardev(s), ${es.received} bytes in order (${es.mismatches} out of order)`,
    });
    if (es.mismatches > 0) problems.push(`the echo peer saw ${es.mismatches} bytes out of order`);
    qsds.forEach((qsd, i) => {
      const accepted = qsd.acceptedCount() - acceptedBefore[i]!;
      const now = qsd.connections().map((c) => c.inode);
      const same = now.length === 1 && JSON.stringify(now) === JSON.stringify(qsdConnsBefore[i]);
      reconnects.push({
        peer: `qemu-storage-daemon ${i} (vhost-user-blk)`,
        reconnects: accepted + (same ? 0 : 1),
        detail: `${accepted} connection(s) accepted during the handover; its connection ${same ? `unchanged (socket inode ${now[0]})` : 'changed or gone'}`,
      });
    });
    if (ns && link) {
      const drops = link.alwaysUp ? 0 : 1;
      reconnects.push({
        peer: `TAP ${ns.ifname} (namespace ${ns.name})`,
        reconnects: drops + (link.ifindexes.length > 1 ? 1 : 0),
        detail: `${link.events.length} link event(s) during the handover (netlink): ${link.alwaysUp ? 'carrier up throughout' : `carrier dropped: ${link.events.join(' / ')}`}, ifindex ${link.ifindexes.join(', ')}`,
      });
    }
    for (const r of reconnects) if (r.reconnects > 0) problems.push(`${r.peer}: ${r.detail}`);
    // Traffic kept flowing through every backend the new owner has.
    for (const [name, later] of Object.entries(afterLater)) {
      const a = after[name] as Record<string, number> | undefined;
      const l = later as Record<string, number>;
      const moved = (x: Record<string, number> | undefined) => (x ? (x.echoed ?? x.requests ?? x.answered ?? 0) : 0);
      if (!(moved(l) > moved(a))) problems.push(`no traffic through ${name} after the handover`);
      if ((l.bad ?? 0) > 0 || (l.errors ?? 0) > 0) problems.push(`${name}: ${l.bad ?? l.errors} bad replies after the handover`);
    }

    const result = done.result as
      | {
          devices: { id: string; kind: string; outcome: string; fds: number }[];
          fds: number;
          stateBytes: number;
          staged?: boolean;
          timings: { downtimeMs: number | null; totalMs: number; breakdown?: DemoReport['breakdown'] };
        }
      | undefined;
    const rec = received.devices as { id: string; kind: string; how: string }[] | undefined;
    const timings = result?.timings;
    const ph = (timings as unknown as { phases?: Record<string, number> } | undefined)?.phases ?? {};
    const transferMs = ph.transfer ?? ph['switch-over'] ?? null;
    return {
      phases: (timings as unknown as { phases?: Record<string, number> } | undefined)?.phases ?? {},
      ok: problems.length === 0,
      oldPid: oldOwner.pid,
      newPid: newOwner.pid,
      moved: (result?.devices ?? []).map((d) => ({ id: d.id, kind: d.kind, how: rec?.find((r) => r.id === d.id)?.how ?? d.outcome, fds: d.fds })),
      skipped,
      stateBytes: result?.stateBytes ?? 0,
      fds: result?.fds ?? 0,
      downtimeMs: timings?.downtimeMs ?? null,
      ...(timings?.breakdown ? { breakdown: timings.breakdown } : {}),
      ...(result?.staged !== undefined ? { staged: result.staged } : {}),
      totalMs: timings?.totalMs ?? null,
      throughputMBps: transferMs && result ? result.stateBytes / 1e6 / (transferMs / 1000) : null,
      reconnects,
      traffic: { before, after, afterLater },
      problems,
    };
  } finally {
    await Promise.all([newOwner?.stop(), oldOwner?.stop()]);
    echo?.close();
    for (const q of qsds) await q.dispose();
    ns?.delete();
    rmSync(dir, { recursive: true, force: true });
  }
}
