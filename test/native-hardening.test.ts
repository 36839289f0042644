// Hostile fds and hostile byte placement, with real processes and real sockets:
// - closing a TCP socket whose close lingers never blocks the process (either side);
// - one open file sent as two backend fds is refused (kcmp(KCMP_FILE));
// - an fd sent on the next frame's bytes, merged by the kernel into one read, is
//   ERR_STREAM_FD_MISSING for the frame that declared it.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  FdSocket,
  GenericSource,
  GenericTarget,
  TapTarget,
  VhostUserTarget,
  closeFds,
  fdBudget,
  findSameFile,
  native,
  pumpFdSocket,
  receiveHandover,
  sameFileMethod,
  sendHandover,
  type StreamItem,
} from '../src/index.js';
import { openFdCount } from '../src/fd/probe.js';
import { findSameFileIn } from '../src/fd/same-file.js';
import { countOpenFds, trackFdLeaks } from './helpers/fds.js';
import { Peers } from './helpers/child.js';
import { netnsUnavailable, skipUnless } from './helpers/env.js';
import { createNetns, deleteNetns } from './helpers/netns.js';
import { buildStream, closeItems, targetReader } from './helpers/stream.js';

trackFdLeaks();
const peers = new Peers();
const namespaces: string[] = [];
const dir = mkdtempSync(join(tmpdir(), 'bt-hard-'));
let n = 0;
const sockPath = () => join(dir, `h-${n++}.sock`);
afterEach(async () => {
  await peers.disposeAll();
  for (const ns of namespaces.splice(0)) deleteNetns(ns);
  // The lingering closes end once the peer that never read is gone (its kernel resets the connection).
  for (let i = 0; i < 200 && native.closer_stats().busy + native.closer_stats().queued > 0; i++) await new Promise((r) => setTimeout(r, 10));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Ticks every 10 ms and records the longest gap: a blocked event loop shows as a long one. */
function loopWatch() {
  let last = Date.now();
  let maxGap = 0;
  const t = setInterval(() => {
    const now = Date.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
  }, 10);
  return {
    stop: () => {
      clearInterval(t);
      return Math.max(maxGap, Date.now() - last);
    },
  };
}

/** Waits until a closer thread is in a close() that does not return (the linger). */
async function closerBlocked(): Promise<boolean> {
  for (let i = 0; i < 300; i++) {
    if (native.closer_stats().busy > 0) return true;
    await new Promise((r) => setTimeout(r, 10));
  }
  return false;
}

// A close that blocked the loop would block it for the whole linger time (60 s); a
// gap of a few seconds on a loaded machine is scheduling, not a blocked close.
const BLOCKED_MS = 15_000;

describe('closing a hostile fd never blocks the process', () => {
  it('target: the refused lingering TCP socket is closed off the loop; the loop keeps ticking', async () => {
    const path = sockPath();
    const watch = loopWatch();
    const receiving = receiveHandover({ socket: path, accept: [new GenericTarget({ id: 'dev', expect: { tcp: 'eventfd' } })], backendTransfer: true, warmUp: false });
    const src = peers.spawn('linger-source', [path], { fixture: 'hostile-peer.ts' });
    const err = await receiving.then(
      () => null,
      (e: unknown) => e as { code?: string; message?: string },
    );
    expect(err?.code, err?.message).toBe('ERR_BACKEND_VERIFY');
    const sent = await src.waitFor('sent');
    expect(Number(sent.queued)).toBeGreaterThan(0); // the socket had unsent data: its last close lingers
    // The target's close was the last reference: it lingers, on the closer thread.
    expect(await closerBlocked()).toBe(true);
    // Still responsive while that close waits.
    await new Promise((r) => setTimeout(r, 300));
    expect(native.closer_stats().busy).toBeGreaterThan(0);
    const gap = watch.stop();
    expect(gap).toBeLessThan(BLOCKED_MS);
    await src.waitFor('refused');
  });

  it("source: a lingering TCP socket on the target's NACK is closed off the loop; the source thaws", async () => {
    const path = sockPath();
    const tgt = peers.spawn('linger-target', [path], { fixture: 'hostile-peer.ts' });
    await tgt.waitFor('listening');
    const efd = native.eventfd(0);
    const events: string[] = [];
    const watch = loopWatch();
    try {
      const err = await sendHandover({
        socket: path,
        devices: [new GenericSource({ id: 'dev', transfer: true, fds: [{ name: 'e', fd: efd, kind: 'eventfd' }] })],
        backendTransfer: true,
        warmUp: false,
        freeze: () => void events.push('freeze'),
        thaw: () => void events.push('thaw'),
      }).then(
        () => null,
        (e: unknown) => e as { code?: string; message?: string },
      );
      expect(err, 'the handover must fail').not.toBeNull();
      expect(['ERR_STREAM_FD_EXTRA', 'ERR_HANDOVER_REFUSED']).toContain(err!.code);
      expect(events).toEqual(['freeze', 'thaw']);
      expect(Number((await tgt.waitFor('sent')).queued)).toBeGreaterThan(0);
      expect(await closerBlocked()).toBe(true);
      const gap = watch.stop();
      expect(gap).toBeLessThan(BLOCKED_MS);
      // the source's own backend fd is untouched
      expect(native.fcntl_getfd(efd)).toBeGreaterThanOrEqual(0);
    } finally {
      watch.stop();
      closeFds([efd]);
    }
  });
});

describe('counting open fds for the fd budget', () => {
  it('openFdCount (one fstat per slot of the fd table) agrees with a listing of /proc/self/fd, and fdBudget with either count', () => {
    const before = openFdCount();
    expect(before).toBe(countOpenFds());
    const more = Array.from({ length: 300 }, () => native.eventfd(0));
    try {
      expect(openFdCount()).toBe(before! + 300);
      expect(openFdCount()).toBe(countOpenFds());
      expect(fdBudget(openFdCount)).toBe(fdBudget());
      expect(fdBudget(() => null)).toBe(fdBudget());
    } finally {
      closeFds(more);
    }
    expect(openFdCount()).toBe(before);
  });
});

describe('one open file sent as two backend fds is refused', () => {
  it(`findSameFile tells a dup from a distinct file (method here: ${sameFileMethod()})`, () => {
    const a = native.eventfd(0);
    const b = native.eventfd(0);
    const a2 = native.dup(a);
    const [s1, s2] = native.socketpair(native.SOCK_STREAM);
    const s1b = native.dup(s1);
    try {
      expect(findSameFile([a, b, s1, s2])).toBeNull();
      expect(findSameFile([b, a, s1, a2])).toEqual([1, 3]);
      expect(findSameFile([s1, s2, b, s1b])).toEqual([0, 3]);
      expect(() => findSameFile([a, 1_000_000])).toThrow();
    } finally {
      closeFds([a, b, a2, s1, s2, s1b]);
    }
  });

  it('findSameFileIn with runs (each device checked alone first, then all merged) finds a file sent twice across runs and within one', () => {
    const fds = Array.from({ length: 60 }, () => native.eventfd(0));
    const runs = [0, 1, 2].map((k) => Array.from({ length: 20 }, (_, i) => k * 20 + i));
    try {
      // Each run alone, its order kept, then all three merged.
      const orders = runs.map((run) => {
        const order: number[] = [];
        expect(
          findSameFileIn(
            run.map((i) => fds[i]!),
            { order },
          ),
        ).toBeNull();
        expect([...order].sort((x, y) => x - y)).toEqual(run.map((_, i) => i));
        return order.map((i) => run[i]!);
      });
      expect(findSameFileIn(fds, { runs: orders })).toBeNull();
      const dupAcross = fds.slice();
      dupAcross[47] = native.dup(fds[5]!);
      expect(findSameFileIn(dupAcross, { runs: orders })).toEqual([5, 47]);
      const dupWithin = fds.slice();
      dupWithin[33] = native.dup(fds[21]!);
      expect(findSameFileIn(dupWithin, { runs: orders })).toEqual([21, 33]);
      closeFds([dupAcross[47]!, dupWithin[33]!]);
    } finally {
      closeFds(fds);
    }
  });

  it('without kcmp (BACKEND_TRANSFER_NO_KCMP=1, as under EPERM/ENOSYS) sockets and eventfds are still compared; other kinds are not', () => {
    const script = `
      const { findSameFile, sameFileMethod, native, closeFds } = await import(${JSON.stringify(fileURLToPath(new URL('../src/index.ts', import.meta.url)))});
      const a = native.eventfd(0), b = native.eventfd(0), a2 = native.dup(a);
      const [s1, s2] = native.socketpair(native.SOCK_STREAM); const s1b = native.dup(s1);
      const m = native.memfd_create('x'); const m2 = native.dup(m);
      console.log(JSON.stringify({ method: sameFileMethod(), distinct: findSameFile([a, b, s1, s2]), eventfd: findSameFile([b, a, s1, a2]), socket: findSameFile([s1, s2, b, s1b]), memfd: findSameFile([m, m2]) }));
      closeFds([a, b, a2, s1, s2, s1b, m, m2]);`;
    const tsx = fileURLToPath(new URL('../node_modules/tsx/dist/esm/index.mjs', import.meta.url));
    const out = execFileSync(process.execPath, ['--import', tsx, '--input-type=module', '-e', script], { env: { ...process.env, BACKEND_TRANSFER_NO_KCMP: '1' }, encoding: 'utf8' });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ method: 'fallback', distinct: null, eventfd: [1, 3], socket: [0, 3], memfd: null });
  });

  it('one eventfd as kick0 and call0 of a vhost-user connection: ERR_BACKEND_VERIFY (distinct ones pass)', async () => {
    for (const which of ['vhost', 'vhost-ok']) {
      const path = sockPath();
      const src = peers.spawn('dup-source', [path, which], { fixture: 'hostile-peer.ts' });
      await src.waitFor('ready');
      const receiving = receiveHandover({ socket: path, accept: [new VhostUserTarget({ id: 'vu0' })], backendTransfer: true, warmUp: false });
      src.command({ cmd: 'handover' });
      if (which === 'vhost') {
        const err = await receiving.then(
          () => null,
          (e: unknown) => e as { code?: string; message?: string },
        );
        expect(err?.code, err?.message).toBe('ERR_BACKEND_VERIFY');
        expect(err!.message).toMatch(/kick0 and fd call0 are the same open file/);
        expect((await src.waitFor('handover-failed')).code).toBe('ERR_HANDOVER_REFUSED');
      } else {
        const r = await receiving;
        expect(r.devices.get('vu0')!.how).toBe('received');
        await src.waitFor('handover-done');
        (r.devices.get('vu0')!.backend as { close(): void }).close();
      }
    }
  });

  it('one TAP queue as queue0 and queue1: ERR_BACKEND_VERIFY', async (ctx) => {
    skipUnless(ctx, netnsUnavailable());
    const ns = createNetns('dq');
    namespaces.push(ns);
    const path = sockPath();
    const src = peers.spawn('dup-source', [path, 'tap'], { fixture: 'hostile-peer.ts', netns: ns });
    await src.waitFor('ready');
    const receiving = receiveHandover({ socket: path, accept: [new TapTarget({ id: 'net0' })], backendTransfer: true, warmUp: false });
    src.command({ cmd: 'handover' });
    const err = await receiving.then(
      () => null,
      (e: unknown) => e as { code?: string; message?: string },
    );
    expect(err?.code, err?.message).toBe('ERR_BACKEND_VERIFY');
    expect(err!.message).toMatch(/queue0 and fd queue1 are the same open file/);
    expect((await src.waitFor('handover-failed')).code).toBe('ERR_HANDOVER_REFUSED');
  });
});

describe("an fd on the next frame's bytes", () => {
  /**
   * Sends a built stream over a real socketpair, every write before the reader
   * reads (so the kernel merges writes into one recvmsg where it may). `shift`
   * moves the section's fd from its own frame to the first byte of the next one.
   */
  async function run(shift: boolean): Promise<{ err: { code?: string; message?: string } | null; items: StreamItem[] }> {
    const built = await buildStream([{ kind: 'generic', id: 'dev', fds: ['eventfd'] }]);
    const writes = built.channel.writes;
    const [w, r] = native.socketpair(native.SOCK_STREAM);
    const sock = FdSocket.fromFd(r);
    const items: StreamItem[] = [];
    try {
      const at = writes.findIndex((x) => x.fds.length > 0);
      expect(at).toBeGreaterThan(0);
      for (let i = 0; i < writes.length; i++) {
        let fds = writes[i]!.fds;
        if (shift && i === at) fds = [];
        if (shift && i === at + 1) fds = writes[at]!.fds;
        expect(native.sendmsg(w, writes[i]!.bytes, fds)).toBe(writes[i]!.bytes.length);
      }
      native.shutdown(w, native.SHUT_WR);
      const reader = targetReader(built);
      const err = await pumpFdSocket(sock, reader, (its) => void items.push(...its)).then(
        () => {
          reader.end();
          return null;
        },
        (e: unknown) => e as { code?: string; message?: string },
      );
      return { err, items };
    } finally {
      closeItems(items);
      sock.close();
      closeFds([w]);
      built.channel.close();
    }
  }

  it('honest: the fd on its own frame, merged with earlier writes into one read, is accepted', async () => {
    const { err, items } = await run(false);
    expect(err).toBeNull();
    const s = items.find((i) => i.type === 'section');
    expect(s && s.type === 'section' && s.attachments.length).toBe(1);
  });

  it('hostile: frame A declares 1 fd and carries none, the fd rides on frame B: ERR_STREAM_FD_MISSING', async () => {
    const { err } = await run(true);
    expect(err?.code, err?.message).toBe('ERR_STREAM_FD_MISSING');
  });
});
