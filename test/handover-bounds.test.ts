// The handover session against peers that stall, flood, refuse COMMIT, hand the
// connection to another process, or send metadata with fractional counts. Real
// sources and targets in child processes (test/fixtures/handover-fault-peer.ts),
// real sockets between them. After each: the source keeps its backends and thaws,
// the target closes what it received, no fd leaks, no endless freeze, memory bounded.
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DEFAULT_TIMEOUTS, TapTarget, VhostUserSource, native, sendHandover, type BackendTransferError } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { Peers, type Peer, type PeerEvent } from './helpers/child.js';

trackFdLeaks();
const peers = new Peers();
const dir = mkdtempSync(join(tmpdir(), 'bt-bounds-'));
let n = 0;
const sockPath = () => join(dir, `h-${n++}.sock`);
/** Processes started by a fixture's child (the fork cases): killed before their parents are disposed of. */
const grandchildren: number[] = [];
afterEach(async () => {
  for (const pid of grandchildren.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await peers.disposeAll();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const MiB = 1 << 20;
const FIXTURE = { fixture: 'handover-fault-peer.ts' };
const ALL_OPEN = ['unix-stream', 'unix-stream', 'memfd', 'eventfd'];

function spawnTarget(path: string, opts: Record<string, unknown> = {}): Peer {
  return peers.spawn('target', [path, JSON.stringify(opts)], FIXTURE);
}
function spawnSource(path: string, opts: Record<string, unknown> = {}): Peer {
  return peers.spawn('source', [path, JSON.stringify(opts)], FIXTURE);
}
const first = (p: Peer, names: string[], ms = 30_000): Promise<PeerEvent> => Promise.race(names.map((x) => p.waitFor(x, ms)));
/** VmHWM (peak RSS) of a live process, bytes. */
function peakRss(pid: number): number {
  const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

/** The source failed before COMMIT took effect: it thawed, keeps every backend, leaked nothing. */
function expectSourceKept(r: PeerEvent): void {
  expect(r.event, JSON.stringify(r)).toBe('handover-failed');
  expect(r).toMatchObject({ frozen: true, thawed: true, leaked: 0 });
  expect(r.owned).toEqual(ALL_OPEN);
}

describe('no endless freeze: the stall bound (timeouts.stall)', () => {
  it('has a default', () => {
    expect(DEFAULT_TIMEOUTS.stall).toBeGreaterThan(0);
    expect(DEFAULT_TIMEOUTS.transfer).toBe(0); // no total deadline: a large state on a slow machine completes
  });

  it('a target that stops reading: the source, with the default timeouts, gives up, thaws and keeps its backends', async () => {
    const path = sockPath();
    // The target has no stall bound of its own here, so that the source's is what ends it.
    const t = spawnTarget(path, { mode: 'stop-reading', timeouts: { stall: 0 } });
    await t.waitFor('listening');
    // More state than the kernel and the target's read-ahead can hold.
    const s = spawnSource(path, { stateBytes: 128 * MiB });
    await s.waitFor('ready');
    const r = await s.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'], DEFAULT_TIMEOUTS.stall + 20_000);
    expect(r.code, JSON.stringify(r)).toBe('ERR_HANDOVER_STALLED');
    expect(['transfer', 'verify']).toContain((r.details as { phase: string }).phase);
    expectSourceKept(r);
  }, 60_000);

  it('a source that stops in the middle of the transfer: the target gives up and closes what it received; the source thaws when it runs again', async () => {
    const path = sockPath();
    // The source may stop before its first section left (the writer pulls a part ahead): freeze + stall bounds that wait.
    const t = spawnTarget(path, { timeouts: { stall: 1500, freeze: 500 } });
    await t.waitFor('listening');
    const s = spawnSource(path, { stopAfterFirstPart: true, stateBytes: 0 });
    await s.waitFor('ready');
    s.command({ cmd: 'handover' });
    await s.waitFor('stopping');
    const tr = await first(t, ['received', 'receive-failed'], 20_000);
    expect(tr, JSON.stringify(tr)).toMatchObject({ event: 'receive-failed', code: 'ERR_HANDOVER_STALLED', leaked: 0 });
    expect((tr.details as { phase: string }).phase).toBe('transfer');
    s.proc.kill('SIGCONT');
    const r = await first(s, ['handover-done', 'handover-failed'], 20_000);
    expect(String(r.code)).toMatch(/ERR_HANDOVER_REFUSED|ERR_PEER_CLOSED/);
    expectSourceKept(r);
  }, 60_000);

  it('a source that stops after the handshake (its freeze() hangs): the target waits at most freeze + stall for the first section', async () => {
    const path = sockPath();
    const t = spawnTarget(path, { timeouts: { freeze: 500, stall: 1000 } });
    await t.waitFor('listening');
    const s = spawnSource(path, { freezeMs: 4000 });
    await s.waitFor('ready');
    s.command({ cmd: 'handover' });
    const tr = await first(t, ['received', 'receive-failed'], 20_000);
    expect(tr, JSON.stringify(tr)).toMatchObject({ event: 'receive-failed', code: 'ERR_HANDOVER_STALLED', leaked: 0 });
    expect((tr.details as { phase: string; ms: number }).ms).toBe(1500);
    const r = await first(s, ['handover-done', 'handover-failed'], 20_000);
    expect(String(r.code)).toMatch(/ERR_HANDOVER_REFUSED|ERR_PEER_CLOSED/);
    expectSourceKept(r);
  }, 60_000);
});

describe('a peer that floods', () => {
  it('a target that floods PINGs without reading the PONGs, then acknowledges: the source is not stuck behind its PONGs; refused, thawed, memory bounded', async () => {
    const path = sockPath();
    const t = spawnTarget(path, { mode: 'ping-flood' });
    await t.waitFor('listening');
    const s = spawnSource(path, {});
    await s.waitFor('ready');
    const r = await s.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'], 40_000);
    expect(r.code, JSON.stringify(r)).toBe('ERR_PEER_FLOOD');
    expectSourceKept(r);
    const frozen = (s.events.find((e) => e.event === 'frozen')!.memory as { rss: number }).rss;
    const peak = (r.memory as { hwm: number }).hwm;
    console.info(`flood test: the source's RSS grew by ${((peak - frozen) / MiB).toFixed(1)} MiB while the target flooded it`);
    expect(peak - frozen, `source RSS grew by ${((peak - frozen) / MiB).toFixed(1)} MiB`).toBeLessThan(64 * MiB);
  }, 60_000);

  it('a source that floods PINGs (100 MB) without reading the PONGs: the target refuses it, closes everything, and its memory stays bounded', async () => {
    const path = sockPath();
    const t = spawnTarget(path, {});
    await t.waitFor('listening');
    const s = spawnSource(path, { floodBytes: 100 * MiB, timeouts: { freeze: 60_000 } });
    await s.waitFor('ready');
    s.command({ cmd: 'handover' });
    const flooded = await s.waitFor('flooded', 60_000);
    const base = ((await t.waitFor('phase', 5000)) && t.events.find((e) => e.event === 'phase' && e.phase === 'transfer'))!.memory as { rss: number };
    const grown = peakRss(t.proc.pid!) - base.rss;
    console.info(`flood test: the target's RSS grew by ${(grown / MiB).toFixed(1)} MiB (${(Number(flooded.bytes) / MiB).toFixed(1)} MiB of PINGs sent before it refused)`);
    expect(grown, `target RSS grew by ${(grown / MiB).toFixed(1)} MiB (${(Number(flooded.bytes) / MiB).toFixed(1)} MiB of PINGs sent)`).toBeLessThan(64 * MiB);
    const tr = await first(t, ['received', 'receive-failed'], 20_000);
    expect(tr, JSON.stringify(tr)).toMatchObject({ event: 'receive-failed', code: 'ERR_PEER_FLOOD', leaked: 0 });
    const r = await first(s, ['handover-done', 'handover-failed'], 20_000);
    expectSourceKept(r);
  }, 90_000);
});

describe('COMMIT that cannot be written', () => {
  it('EPIPE on the COMMIT write (the target shut its reading side): not committed; the source thaws, keeps its backends and says so', async () => {
    const path = sockPath();
    const t = spawnTarget(path, { mode: 'shut-read-at-adopt' });
    await t.waitFor('listening');
    const s = spawnSource(path, {});
    await s.waitFor('ready');
    const r = await s.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed'], 30_000);
    expect(r.code, JSON.stringify(r)).toBe('ERR_COMMIT_NOT_SENT');
    expect(r.details).toMatchObject({ phase: 'commit', commitSent: false });
    expectSourceKept(r);
    const tr = await first(t, ['received', 'receive-failed'], 20_000);
    expect(tr, JSON.stringify(tr)).toMatchObject({ event: 'receive-failed', leaked: 0 });
  }, 60_000);
});

describe('"is the peer gone?" asks about the process that holds the connection', () => {
  it('(a) the connecting parent exits, its child holds the connection, fails mid-transfer (no ABORT possible) and keeps its backends: the target does not take over', async () => {
    const path = sockPath();
    const t = spawnTarget(path, {
      accept: [
        { id: 'serial0', kind: 'chardev-socket' },
        { id: 'gen0', kind: 'generic' },
        { id: 'bad0', kind: 'generic' },
      ],
    });
    await t.waitFor('listening');
    const p = peers.spawn('fork-parent', [path, JSON.stringify({ parent: 'exit', badDevice: true })], FIXTURE);
    grandchildren.push(Number((await p.waitFor('forked')).child));
    await p.waitFor('parent-exits');
    const r = await first(p, ['handover-done', 'handover-failed'], 30_000);
    // The child's handover failed on the fd it could not send, and it thawed with everything.
    expect(r.code, JSON.stringify(r)).toBe('ERR_INVALID_ARGUMENT');
    expectSourceKept(r);
    const tr = await first(t, ['received', 'receive-failed'], 20_000);
    expect(tr.event, `the target took over backends its live source still uses: ${JSON.stringify(tr)}`).toBe('receive-failed');
    expect(String(tr.code)).toMatch(/ERR_PEER_CLOSED|ERR_STREAM_TRUNCATED/);
    expect(tr.leaked).toBe(0);
  }, 60_000);

  it('(b) the connector stays alive, the child that holds the connection is killed at verify: no takeover (the holder cannot be known); the connector still holds the backends', async () => {
    const path = sockPath();
    const t = spawnTarget(path);
    await t.waitFor('listening');
    const p = peers.spawn('fork-parent', [path, JSON.stringify({ parent: 'stay', killAt: 'verify' })], FIXTURE);
    const child = Number((await p.waitFor('forked')).child);
    grandchildren.push(child);
    const tr = await first(t, ['received', 'receive-failed'], 20_000);
    expect(tr, JSON.stringify(tr)).toMatchObject({ event: 'receive-failed', leaked: 0 });
    expect(String(tr.code)).toMatch(/ERR_PEER_CLOSED|ERR_STREAM_TRUNCATED/);
    expect((await p.ask({ cmd: 'owned' }, 'owned')).kinds).toEqual(ALL_OPEN);
    expect((await p.ask({ cmd: 'check-chardev' }, 'chardev')).echoed).toBe('ping');
  }, 60_000);

  it('(a, source side) the listening parent exits, its child holds the connection and never answers COMMIT: the source does not call the target gone (ERR_COMMIT_UNCERTAIN, no thaw)', async () => {
    const path = sockPath();
    const t = peers.spawn('fork-target-parent', [path, '{}'], FIXTURE);
    await t.waitFor('listening');
    const s = spawnSource(path, { timeouts: { commit: 2000 } });
    await s.waitFor('ready');
    s.command({ cmd: 'handover' });
    grandchildren.push(Number((await t.waitFor('forked')).child));
    await t.waitFor('parent-exits');
    const r = await first(s, ['handover-done', 'handover-failed'], 30_000);
    // COMMIT went into the child's socket: the child may read it yet. The source cannot know.
    expect(r, JSON.stringify(r)).toMatchObject({ event: 'handover-failed', code: 'ERR_COMMIT_UNCERTAIN', frozen: true, thawed: false, leaked: 0 });
    expect(r.details).toMatchObject({ commitSent: true, targetGone: false });
    expect(r.owned).toEqual(ALL_OPEN);
  }, 60_000);

  it('(c) the connecting process holds the connection and is killed at verify: the target takes over what arrived whole', async () => {
    const path = sockPath();
    const t = spawnTarget(path);
    await t.waitFor('listening');
    const s = spawnSource(path, { killAt: 'verify' });
    await s.waitFor('ready');
    s.command({ cmd: 'handover' });
    expect((await s.exited()).signal).toBe('SIGKILL');
    const tr = await first(t, ['received', 'receive-failed'], 20_000);
    expect(tr, JSON.stringify(tr)).toMatchObject({ event: 'received', outcome: 'takeover', complete: true });
    expect(tr.devices).toEqual({ serial0: { how: 'received' }, gen0: { how: 'received' } });
    expect((await t.ask({ cmd: 'close-all' }, 'closed')).leaked).toBe(0);
  }, 60_000);
});

describe('device metadata: every count and index a whole number', () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['kick: 0.5 (verified one eventfd, then dropped it)', { kick: 0.5 }, /metadata kick is 0.5/],
    ['call: 0.5', { call: 0.5 }, /metadata call is 0.5/],
    ['kick: -1', { kick: -1 }, /metadata kick is -1/],
    ['kick: "1"', { kick: '1' }, /metadata kick is string/],
    ['numQueues: 1.5', { numQueues: 1.5 }, /metadata numQueues is 1.5/],
    ['features: "x"', { features: 'x' }, /metadata features is not a u64/],
  ];
  for (const [name, meta, message] of cases) {
    it(`vhost-user ${name}: the target refuses it (ERR_BACKEND_VERIFY) and closes every fd; the source keeps its own`, async () => {
      const path = sockPath();
      const t = spawnTarget(path, { accept: [{ id: 'vhost0', kind: 'vhost-user' }] });
      await t.waitFor('listening');
      // Staged (the default): refused at staging, before the source froze.
      const s = spawnSource(path, { vhostMeta: meta, staging: true });
      await s.waitFor('ready');
      s.command({ cmd: 'handover' });
      const tr = await first(t, ['received', 'receive-failed'], 20_000);
      expect(tr, JSON.stringify(tr)).toMatchObject({ event: 'receive-failed', code: 'ERR_BACKEND_VERIFY', leaked: 0 });
      expect(String(tr.message)).toMatch(message);
      const r = await first(s, ['handover-done', 'handover-failed'], 20_000);
      expect(r).toMatchObject({ event: 'handover-failed', code: 'ERR_HANDOVER_REFUSED', frozen: false, thawed: false, leaked: 0 });
      expect((r.details as { phase: string }).phase).toBe('stage');
      expect((r.owned as string[]).filter((k) => k === 'closed')).toEqual([]);
    }, 30_000);
  }

  it('the source refuses fractional counts before anything is sent (ERR_BACKEND_INVALID)', async () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    try {
      const d = new VhostUserSource({ id: 'v', socket: a, socketPath: '', features: 0n, protocolFeatures: 0n, numQueues: 0.5, transfer: true, required: true });
      const err = await sendHandover({ socket: join(dir, 'nobody.sock'), devices: [d], backendTransfer: true, warmUp: false }).catch((e: unknown) => e as BackendTransferError);
      expect(err).toMatchObject({ code: 'ERR_BACKEND_INVALID' });
      expect(String((err as Error).message)).toMatch(/numQueues is 0.5/);
    } finally {
      native.close(a);
      native.close(b);
    }
  });

  it('TAP: fractional queue and vhost counts are refused on decode', () => {
    const t = new TapTarget({ id: 'net0' });
    for (const meta of [{ queues: 1.5 }, { vhost: 0.5 }, { queues: 0 }, { flags: 4098.5 }, { enabled: [1] }]) {
      const state = Buffer.from(JSON.stringify({ ifname: 'x', flags: 4098, vnetHdrSize: 12, queues: 1, vhost: 0, enabled: [true], ...meta }));
      expect(() => t.verify({ device: { id: 'net0', instance: 0, version: 1 } as never, attachments: [], state }), JSON.stringify(meta)).toThrow(/ERR_BACKEND_VERIFY/);
    }
  });
});
