// chardev-socket and generic backends between real processes, and the error
// paths of the backends: each refused with a clear error, with no fd leaked on
// either side and every backend still the source's.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { supported } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { Peers } from './helpers/child.js';

trackFdLeaks();
const peers = new Peers();
const dir = mkdtempSync(join(tmpdir(), 'bt-chardev-'));
let n = 0;
const path = (tag: string) => join(dir, `${tag}-${n++}.sock`);
afterEach(() => peers.disposeAll());
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const F = { fixture: 'handover-peer.ts' };

describe('chardev-socket handover with data in flight both ways', () => {
  it('one connection, every byte once, in order, across the handover', async () => {
    const echoPath = path('echo');
    const echo = peers.spawn('echo-server', [echoPath], F);
    await echo.waitFor('listening');
    const hPath = path('h');
    const source = peers.spawn('chardev-source', [hPath, echoPath], F);
    await source.waitFor('ready');
    // Let traffic run a while.
    for (;;) {
      const p = await source.ask({ cmd: 'progress' }, 'progress');
      if (Number(p.echoed) > 20_000) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const target = peers.spawn('chardev-target', [hPath], F);
    await target.waitFor('listening');
    const done = await source.ask({ cmd: 'handover' }, 'handover-done');
    const received = await target.waitFor('received');
    expect(received.how).toBe('received');
    const at = done.at as { sent: number; echoed: number; bad: number };
    expect(received.from).toEqual({ sent: at.sent, echoed: at.echoed });
    // Bytes were in flight at the switch: sent but not yet echoed back to the old owner.
    expect(at.sent).toBeGreaterThan(at.echoed);
    await new Promise((r) => setTimeout(r, 200)); // the new owner's own traffic
    const fin = await target.ask({ cmd: 'finish' }, 'finished');
    const stats = await echo.ask({ cmd: 'stats' }, 'stats');
    expect(stats.connections).toBe(1);
    expect(stats.mismatches).toBe(0); // the server got 0, 1, 2, ... with nothing lost or repeated
    expect(stats.received).toBe(fin.sent);
    expect(fin.echoed).toBe(fin.sent); // every echo reached an owner, in order
    expect(fin.bad).toBe(0);
    expect(at.bad).toBe(0);
    expect(Number(fin.sent)).toBeGreaterThan(at.sent);
  });
});

describe('generic backends', () => {
  it('a memfd, an eventfd and a pidfd move as named fds of the declared kinds', async () => {
    const hPath = path('g');
    const target = peers.spawn('generic-target', [hPath, JSON.stringify([{ id: 'misc', kind: 'generic', expect: { ram: 'memfd', irq: 'eventfd', pid: 'pidfd' } }])], F);
    await target.waitFor('listening');
    const source = peers.spawn('generic-source', [hPath, JSON.stringify({ devices: [{ id: 'misc', kind: 'generic' }] })], F);
    await source.waitFor('ready');
    const done = await source.ask({ cmd: 'handover' }, 'handover-done');
    expect(done.result).toMatchObject({ devices: [{ id: 'misc', outcome: 'moved', fds: 3 }] });
    expect(done.leaked).toBe(0);
    expect(await target.waitFor('received')).toMatchObject({ devices: { misc: { how: 'received', fds: { ram: 'memfd', irq: 'eventfd', pid: 'pidfd' } } }, fds: 3 });
  });

  it('supported() lists the kinds this build can transfer', () => {
    const s = supported();
    expect(s.kinds).toEqual(['tap', 'vhost-user', 'chardev-socket', 'generic']);
    expect(typeof s.machine.vhostNet).toBe('boolean');
  });
});

describe('error paths: a clear error, no fd leaked on either side, the source keeps its backends', () => {
  async function run(spec: object, accept: object[], targetArgs: string[] = []) {
    const hPath = path('e');
    const target = peers.spawn('generic-target', [hPath, JSON.stringify(accept), ...targetArgs], F);
    await target.waitFor('listening');
    const source = peers.spawn('generic-source', [hPath, JSON.stringify(spec)], F);
    await source.waitFor('ready');
    const out = await source.ask({ cmd: 'handover' }, 'owned');
    const result = source.events.find((e) => e.event === 'handover-done' || e.event === 'handover-failed')!;
    return { source, target, result, owned: out.kinds as string[] };
  }

  it('a non-vhost-user fd declared as the vhost-user socket is refused by the target', async () => {
    const { target, result, owned } = await run({ devices: [{ id: 'blk0', kind: 'lying-vhost-user' }] }, [{ id: 'blk0', kind: 'vhost-user' }]);
    expect(result.event).toBe('handover-failed');
    expect(result.code).toBe('ERR_HANDOVER_REFUSED');
    expect((result.details as { code: string }).code).toMatch(/ERR_BACKEND_VERIFY|ERR_STREAM_FD_KIND/);
    expect(String(result.message)).toMatch(/socket/);
    expect(result.leaked).toBe(0);
    expect(owned).toEqual(['eventfd']);
    const failed = await target.waitFor('receive-failed');
    expect(failed.leaked).toBe(0);
  });

  it('a TLS chardev is refused before anything is sent', async () => {
    const { target, result, owned } = await run({ devices: [{ id: 'serial0', kind: 'chardev-socket', tls: true }] }, [{ id: 'serial0', kind: 'chardev-socket' }]);
    expect(result).toMatchObject({ event: 'handover-failed', code: 'ERR_BACKEND_NOT_MOVABLE' });
    expect(String(result.message)).toMatch(/TLS/);
    expect(result.leaked).toBe(0);
    expect(owned).toEqual(['unix-stream', 'unix-stream']);
    // The target never saw a connection.
    expect(target.events.map((e) => e.event)).toEqual(['listening']);
  });

  it('a socket marked never to move (a management connection) is refused too', async () => {
    const { result } = await run({ devices: [{ id: 'qmp', kind: 'chardev-socket', neverMove: true }] }, [{ id: 'qmp', kind: 'chardev-socket' }]);
    expect(result).toMatchObject({ event: 'handover-failed', code: 'ERR_BACKEND_NOT_MOVABLE' });
    expect(String(result.message)).toMatch(/never to move/);
  });

  it('a channel that is not a unix socket fails up front', async () => {
    const { target, result, owned } = await run({ devices: [{ id: 'misc', kind: 'generic' }], tcp: true }, [{ id: 'misc', kind: 'generic' }]);
    expect(result).toMatchObject({ event: 'handover-failed', code: 'ERR_NOT_UNIX_SOCKET' });
    expect(result.leaked).toBe(0);
    expect(owned).toEqual(['memfd', 'eventfd', 'pidfd']);
    expect(target.events.map((e) => e.event)).toEqual(['listening']);
  });

  it('a device the target did not accept is not transferred; a required one fails the handover', async () => {
    const ok = await run(
      {
        devices: [
          { id: 'misc', kind: 'generic' },
          { id: 'extra', kind: 'generic', required: false },
        ],
      },
      [{ id: 'misc', kind: 'generic' }],
    );
    expect(ok.result.event).toBe('handover-done');
    expect((ok.result.result as { devices: unknown[] }).devices).toEqual([
      { id: 'misc', kind: 'generic', outcome: 'moved', fds: 3 },
      { id: 'extra', kind: 'generic', outcome: 'refused', fds: 0 },
    ]);
    // The fixture does not close on release: all six fds are still open in the source.
    expect(ok.owned).toEqual(['memfd', 'eventfd', 'pidfd', 'memfd', 'eventfd', 'pidfd']);
    const bad = await run({ devices: [{ id: 'extra', kind: 'generic', required: true }] }, [{ id: 'misc', kind: 'generic' }]);
    expect(bad.result).toMatchObject({ event: 'handover-failed', code: 'ERR_DEVICE_REFUSED' });
    expect(String(bad.result.message)).toMatch(/extra.*unknown-device/);
    expect(bad.result.leaked).toBe(0);
    expect((await bad.target.waitFor('receive-failed')).leaked).toBe(0);
  });
});
