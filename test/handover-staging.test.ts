// Staged backends (the STAGED feature, issue 14), between real processes: the
// source runs in a child (test/fixtures/session-peer.ts), the target here. The
// backends are staged and verified before freeze(); only mutable state follows.
// The old order (staging: false), precopy of the VMM state, staged-then-changed
// (unplugged, fd replaced, fd closed), and the check before connecting.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GenericTarget, inspectFd, receiveHandover, type GenericBackend, type HandoverEvent } from '../src/index.js';
import { sameFileMethod } from '../src/fd/index.js';
import type { Peer } from './helpers/child.js';
import { countOpenFds, trackFdLeaks } from './helpers/fds.js';
import { MiB, phasesOf, readMemfd, sessionHarness, sha256 } from './helpers/session.js';

/** The open fd count once closes still in flight (closed off the loop) are done. */
async function fdsSettleAt(n: number): Promise<number> {
  for (let i = 0; i < 100 && countOpenFds() !== n; i++) await new Promise((r) => setTimeout(r, 20));
  return countOpenFds();
}

trackFdLeaks();
const { source, receive } = sessionHarness('bt-staging-', 's-');

type SourceResult = {
  result: { devices: Record<string, unknown>[]; staged: boolean; fds: number; timings: { downtimeMs: number; breakdown?: Record<string, number> } };
  events: HandoverEvent[];
  frozen: number;
  thawed: number;
  leaked: number;
  works: boolean | null;
};

/** Asks the source process to hand over; its answer (handover-done or handover-failed). */
async function handover(peer: Peer): Promise<SourceResult & { event: string }> {
  return (await peer.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'])) as unknown as SourceResult & { event: string };
}

describe('staged backends', () => {
  it('is the default: the fds are staged and verified before the freeze, only the state follows, and the downtime is broken down', async () => {
    const { peer, sha, path } = await source({ stateBytes: MiB + 3 });
    const t = receive(path);
    const s = await handover(peer);
    const r = await t.done;
    expect(s.event, JSON.stringify(s)).toBe('handover-done');
    expect(phasesOf(s.events)).toEqual(['prepare', 'connect', 'authenticate', 'handshake', 'stage', 'freeze', 'switch-over', 'adopt', 'commit', 'release', 'done']);
    expect(phasesOf(t.events)).toEqual(['prepare', 'accept', 'authenticate', 'handshake', 'stage', 'switch-over', 'adopt', 'commit', 'done']);
    expect(s.result.staged).toBe(true);
    expect(r.staged).toBe(true);
    expect(s.result.devices).toEqual([{ id: 'vm0', kind: 'generic', outcome: 'moved', fds: 2 }]);
    const b = s.result.timings.breakdown!;
    expect(Object.keys(b).sort()).toEqual(['adoptMs', 'freezeMs', 'switchOverBytes', 'switchOverMs']);
    expect(b.switchOverBytes).toBeGreaterThan(MiB + 3); // the state and the device's mutable state, framed
    expect(b.freezeMs! + b.switchOverMs! + b.adoptMs!).toBeCloseTo(s.result.timings.downtimeMs, 3);
    expect(r.state && sha256(r.state)).toBe(sha);
    expect(r.dropped).toEqual([]);
    const dev = r.devices.get('vm0')!;
    expect(dev.how).toBe('received');
    const back = dev.backend as GenericBackend;
    expect(readMemfd(back.fd('ram'), 18).toString()).toBe('guest memory page ');
    expect(inspectFd(back.fd('irq')).kind).toBe('eventfd');
    expect(back.metadata).toEqual({ ramBytes: 4608 });
    back.close();
    expect(s.leaked).toBe(0);
    expect(s.works).toBe(true);
  });

  it('staging: false gives the old order on both sides (what a 0.1.0 peer gets)', async () => {
    const { peer, sha, path } = await source({ stateBytes: MiB, staging: false });
    const t = receive(path);
    const s = await handover(peer);
    const r = await t.done;
    expect(s.event, JSON.stringify(s)).toBe('handover-done');
    expect(phasesOf(s.events)).toEqual(['prepare', 'connect', 'authenticate', 'handshake', 'freeze', 'transfer', 'verify', 'commit', 'release', 'done']);
    expect(phasesOf(t.events)).toEqual(['prepare', 'accept', 'authenticate', 'handshake', 'transfer', 'verify', 'adopt', 'commit', 'done']);
    expect(s.result.staged).toBe(false);
    expect(r.staged).toBe(false);
    expect(s.result.timings.breakdown).toBeUndefined();
    expect(r.state && sha256(r.state)).toBe(sha);
    (r.devices.get('vm0')!.backend as GenericBackend).close();
  });

  it('precopy: part of the VMM state goes before the freeze, the final part after, and arrives whole', async () => {
    for (const staging of [true, false]) {
      const { peer, sha, path } = await source({ stateBytes: 3 * MiB + 5, precopyBytes: 2 * MiB + 1, staging });
      const t = receive(path);
      const s = await handover(peer);
      const r = await t.done;
      expect(s.event, JSON.stringify(s)).toBe('handover-done');
      expect(r.stateBytes).toBe(3 * MiB + 5);
      expect(r.state && sha256(r.state)).toBe(sha);
      (r.devices.get('vm0')!.backend as GenericBackend).close();
    }
  });
});

describe('staged, then changed before the freeze', () => {
  it('an fd replaced: the device is staged again inside the window, the target closes the stale fd and adopts the new one', async () => {
    const { peer, path } = await source({ stateBytes: 1000, change: 'replace' });
    const before = countOpenFds(); // after the child's pipes
    const t = receive(path);
    const s = await handover(peer);
    const r = await t.done;
    expect(s.event, JSON.stringify(s)).toBe('handover-done');
    expect(s.result.devices).toEqual([{ id: 'vm0', kind: 'generic', outcome: 'moved', fds: 2, restaged: true }]);
    const back = r.devices.get('vm0')!.backend as GenericBackend;
    // Exactly the two adopted fds are open here: the stale staged irq was closed.
    expect((await fdsSettleAt(before + 2)) - before).toBe(2);
    expect(inspectFd(back.fd('irq')).kind).toBe('eventfd');
    back.close();
    expect(await fdsSettleAt(before)).toBe(before);
  });

  it('an eventfd closed and a new one opened under the same fd number (same kind, same inode): found by kcmp against the duplicate kept at staging, staged again; the target adopts the new one and closes the stale one', async () => {
    const { peer, path } = await source({ stateBytes: 1000, change: 'replace-same-number' });
    const before = countOpenFds(); // after the child's pipes
    const t = receive(path);
    const s = await handover(peer);
    const r = await t.done;
    expect(s.event, JSON.stringify(s)).toBe('handover-done');
    if (sameFileMethod() !== 'kcmp') {
      // Without kcmp the check falls back to inodes, which all eventfds share.
      console.warn(`skipping the same-number check: kcmp(KCMP_FILE) is not available here`);
      (r.devices.get('vm0')!.backend as GenericBackend).close();
      return;
    }
    expect(s.result.devices).toEqual([{ id: 'vm0', kind: 'generic', outcome: 'moved', fds: 2, restaged: true }]);
    expect(s.leaked).toBe(0); // the duplicates kept for the check were closed
    const back = r.devices.get('vm0')!.backend as GenericBackend;
    // The irq adopted is the new eventfd (it holds the count 5; the stale one held 0), and only the two adopted fds are open here.
    expect(readFileSync(`/proc/self/fdinfo/${back.fd('irq')}`, 'utf8')).toMatch(/^eventfd-count:\s*5$/m);
    expect((await fdsSettleAt(before + 2)) - before).toBe(2);
    back.close();
    expect(await fdsSettleAt(before)).toBe(before);
  });

  it('without kcmp (BACKEND_TRANSFER_NO_KCMP=1 in the source): the inode fallback finds a memfd replaced under the same number (another inode: staged again) and a closed one (dropped)', async () => {
    for (const change of ['replace-ram-same-number', 'close-ram'] as const) {
      const { peer, path } = await source({ stateBytes: 1000, change, env: { BACKEND_TRANSFER_NO_KCMP: '1' } });
      const before = countOpenFds(); // after the child's pipes
      const t = receive(path);
      const s = await handover(peer);
      const r = await t.done;
      expect(s.event, JSON.stringify(s)).toBe('handover-done');
      expect(s.leaked).toBe(0);
      if (change === 'replace-ram-same-number') {
        expect(s.result.devices).toEqual([{ id: 'vm0', kind: 'generic', outcome: 'moved', fds: 2, restaged: true }]);
        const back = r.devices.get('vm0')!.backend as GenericBackend;
        expect(readMemfd(back.fd('ram'), 18).toString()).toBe('fresh memory page '); // the new memfd, not the stale staged one
        expect((await fdsSettleAt(before + 2)) - before).toBe(2);
        back.close();
      } else {
        expect(s.result.devices[0]).toMatchObject({ id: 'vm0', outcome: 'dropped' });
        expect(r.dropped.map((d) => d.id)).toEqual(['vm0']);
      }
      expect(await fdsSettleAt(before)).toBe(before);
    }
  });

  it('unplugged: the device is dropped with a clear outcome on both sides, its staged fds closed', async () => {
    const { peer, path } = await source({ stateBytes: 1000, change: 'unplug' });
    const before = countOpenFds(); // after the child's pipes
    const t = receive(path);
    const s = await handover(peer);
    const r = await t.done;
    expect(s.event, JSON.stringify(s)).toBe('handover-done');
    expect(s.result.devices).toEqual([{ id: 'vm0', kind: 'generic', outcome: 'dropped', fds: 0, reason: 'unplugged after it was staged' }]);
    expect(r.dropped).toEqual([{ id: 'vm0', instance: 0, reason: 'unplugged after it was staged' }]);
    expect(r.devices.get('vm0')!.how).toBe('none');
    expect(t.events.some((e) => e.type === 'warning' && e.message.includes('dropped'))).toBe(true);
    expect(await fdsSettleAt(before)).toBe(before);
  });

  it('an fd closed after staging: the device is dropped (its backend is no longer usable), the target closes what it staged', async () => {
    const { peer, path } = await source({ stateBytes: 1000, change: 'close-ram' });
    const before = countOpenFds(); // after the child's pipes
    const t = receive(path);
    const s = await handover(peer);
    const r = await t.done;
    expect(s.event, JSON.stringify(s)).toBe('handover-done');
    expect(s.result.devices[0]).toMatchObject({ id: 'vm0', outcome: 'dropped' });
    expect(String(s.result.devices[0]!.reason)).toMatch(/no longer usable/);
    expect(r.dropped.map((d) => d.id)).toEqual(['vm0']);
    expect(await fdsSettleAt(before)).toBe(before);
  });
});

describe('checked before anything moves', () => {
  it('a closed fd in a GenericSource fails before connecting (ERR_BACKEND_INVALID), not after the freeze', async () => {
    const { peer, path } = await source({ stateBytes: 1000, closeBefore: true });
    const t = receive(path, { timeouts: { connect: 1500 } });
    const s = (await peer.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'])) as { event: string; code: string; message: string; frozen: number };
    expect(s.event).toBe('handover-failed');
    expect(s.code).toBe('ERR_BACKEND_INVALID');
    expect(s.message).toMatch(/ram.*not open/);
    expect(s.frozen).toBe(0);
    // Nothing connected: the target is still waiting for a source.
    await expect(t.done).rejects.toMatchObject({ code: 'ERR_TIMEOUT' });
  });
});

describe('checked before anything moves (kinds)', () => {
  it('an fd of another kind than declared (a memfd declared an eventfd) fails before connecting', async () => {
    const { peer, path } = await source({ stateBytes: 1000, lie: true });
    const t = receive(path, { timeouts: { connect: 1500 } });
    const s = (await peer.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'])) as { event: string; code: string; message: string; frozen: number; works: boolean };
    expect(s).toMatchObject({ event: 'handover-failed', code: 'ERR_BACKEND_INVALID', frozen: 0, works: true });
    expect(s.message).toMatch(/ram\) is declared eventfd but is memfd/);
    await expect(t.done).rejects.toMatchObject({ code: 'ERR_TIMEOUT' });
  });
});

describe('faults while staging (the target here)', () => {
  it("the target refuses a staged fd (NACK with the STAGE's sectionId): nothing was frozen, the source keeps working backends, the target closes all it staged", async () => {
    const { peer, path } = await source({ stateBytes: 1000 });
    const before = countOpenFds(); // after the child's pipes
    // irq is an eventfd: a target that expects a memfd refuses it at staging.
    const t = receive(path, { accept: [new GenericTarget({ id: 'vm0', expect: { ram: 'memfd', irq: 'memfd' } })] });
    const s = (await peer.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'])) as {
      event: string;
      code: string;
      details: Record<string, unknown>;
      frozen: number;
      thawed: number;
      works: boolean;
      leaked: number;
    };
    expect(s.event).toBe('handover-failed');
    expect(s.code).toBe('ERR_HANDOVER_REFUSED');
    expect(s.details).toMatchObject({ phase: 'stage', code: 'ERR_BACKEND_VERIFY' });
    expect(s.frozen).toBe(0);
    expect(s.thawed).toBe(0);
    expect(s.works).toBe(true);
    expect(s.leaked).toBe(0);
    await expect(t.done).rejects.toMatchObject({ code: 'ERR_BACKEND_VERIFY', details: { phase: 'stage', committed: false } });
    expect(await fdsSettleAt(before)).toBe(before);
  });

  it('100 devices, the STAGEs written without waiting and answered in batches: a NACK for device 7 while later STAGEs are in flight freezes nothing, the target closes everything, the source keeps every backend', async () => {
    const { peer, path } = await source({ stateBytes: 1000, extraDevices: 99 });
    const before = countOpenFds();
    const accept = [
      new GenericTarget({ id: 'vm0', expect: { ram: 'memfd', irq: 'eventfd' } }),
      // d7's fd a is an eventfd: a target that expects a memfd refuses it at staging.
      ...Array.from({ length: 99 }, (_, i) => new GenericTarget({ id: `d${i + 1}`, expect: i + 1 === 7 ? { a: 'memfd' } : { a: 'eventfd', b: 'eventfd' } })),
    ];
    const t = receive(path, { accept });
    const s = (await peer.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'])) as {
      event: string;
      code: string;
      details: { phase: string; code: string; reason: string };
      frozen: number;
      thawed: number;
      works: boolean;
      leaked: number;
    };
    expect(s.event).toBe('handover-failed');
    expect(s.code).toBe('ERR_HANDOVER_REFUSED');
    expect(s.details).toMatchObject({ phase: 'stage', code: 'ERR_BACKEND_VERIFY' });
    expect(s.details.reason).toMatch(/device d7/);
    expect(s.frozen).toBe(0);
    expect(s.thawed).toBe(0);
    expect(s.works).toBe(true); // all 201 fds still open here, of their kinds, and working
    expect(s.leaked).toBe(0);
    await expect(t.done).rejects.toMatchObject({ code: 'ERR_BACKEND_VERIFY', details: { phase: 'stage', committed: false } });
    // Every fd staged here (up to 202, and those of STAGEs still arriving) is closed.
    expect(await fdsSettleAt(before)).toBe(before);
  });

  it("staged metadata counts against the target's limits (maxDeviceStateBytes): refused at staging, before any freeze", async () => {
    const { peer, path } = await source({ stateBytes: 1000 });
    const before = countOpenFds();
    const t = receive(path, { limits: { maxDeviceStateBytes: 10 } });
    const s = (await peer.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'])) as { event: string; code: string; details: Record<string, unknown>; frozen: number; works: boolean };
    expect(s).toMatchObject({ event: 'handover-failed', code: 'ERR_HANDOVER_REFUSED', frozen: 0, works: true });
    expect(s.details).toMatchObject({ phase: 'stage', code: 'ERR_STREAM_TOO_LARGE' });
    await expect(t.done).rejects.toMatchObject({ code: 'ERR_STREAM_TOO_LARGE', details: { what: 'staged metadata of device vm0' } });
    expect(await fdsSettleAt(before)).toBe(before);
  });

  it('the target aborts while staging: the source is told and never froze, the target closes all it staged', async () => {
    const { peer, path } = await source({ stateBytes: 1000 });
    const before = countOpenFds();
    const ac = new AbortController();
    const events: HandoverEvent[] = [];
    const done = receiveHandover({
      socket: path,
      accept: [new GenericTarget({ id: 'vm0' })],
      backendTransfer: true,
      signal: ac.signal,
      onEvent: (e) => {
        events.push(e);
        if (e.type === 'progress') ac.abort('operator said no'); // after the first STAGE arrived
      },
    });
    done.catch(() => undefined);
    const s = (await peer.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'])) as { event: string; code: string; details: Record<string, unknown>; frozen: number; works: boolean };
    expect(s).toMatchObject({ event: 'handover-failed', code: 'ERR_HANDOVER_REFUSED', frozen: 0, works: true });
    expect(s.details.phase).toBe('stage');
    await expect(done).rejects.toMatchObject({ code: 'ERR_HANDOVER_ABORTED' });
    expect(phasesOf(events)).toContain('stage');
    expect(await fdsSettleAt(before)).toBe(before);
  });
});
