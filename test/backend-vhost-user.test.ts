// A vhost-user connection moves between two processes under a real back-end:
// Debian's qemu-storage-daemon exporting a vhost-user-blk device. The old owner
// negotiates (GET_FEATURES, SET_OWNER, protocol features, call eventfds, the
// inflight region) and hands the connection over with the handover session; the
// new owner continues the same session, and the daemon saw exactly one connection.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { trackFdLeaks } from './helpers/fds.js';
import { Peers } from './helpers/child.js';
import { skipUnless } from './helpers/env.js';
import { StorageDaemons, qsdUnavailable } from './helpers/qsd.js';

trackFdLeaks();
const peers = new Peers();
const daemons = new StorageDaemons();
const dir = mkdtempSync(join(tmpdir(), 'bt-vu-'));
afterEach(async () => {
  await peers.disposeAll();
  await daemons.disposeAll();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('vhost-user handover', () => {
  it('the new owner continues the same session; the daemon saw one connection', async (ctx) => {
    skipUnless(ctx, qsdUnavailable());
    const qsd = await daemons.start({ sizeBytes: 64 * 1024 * 1024, numQueues: 2 });
    const hPath = join(dir, 'h.sock');
    const source = peers.spawn('vhost-source', [hPath, qsd.socketPath, '2'], { fixture: 'handover-peer.ts' });
    const ready = await source.waitFor('ready');
    expect(ready.capacity).toBe(String((64 * 1024 * 1024) / 512));
    const before = await qsd.waitForConnections(1);
    const target = peers.spawn('vhost-target', [hPath], { fixture: 'handover-peer.ts' });
    await target.waitFor('listening');

    const done = await source.ask({ cmd: 'handover' }, 'handover-done');
    const expectedFds = 1 + 2 + 1;
    expect(done.result).toMatchObject({ devices: [{ id: 'blk0', kind: 'vhost-user', outcome: 'moved', fds: expectedFds }] });
    const got = await target.waitFor('received');
    expect(got).toMatchObject({ how: 'received', capacity: ready.capacity, queues: ready.queues, declared: ready.features, features: ready.features, deviceState: 'virtio-blk device state' });
    expect(got.callKinds).toEqual(['eventfd', 'eventfd']);
    const inflight = ready.inflight as { size: number; fromDaemon: boolean };
    if (!inflight.fromDaemon) console.warn('note: this qemu-storage-daemon offers no INFLIGHT_SHMFD; the inflight memfd moved was made by the source');
    expect(got.inflight).toEqual({ kind: 'memfd', size: inflight.size });

    // The daemon's side: still the one connection it accepted, same socket inode.
    const after = qsd.connections();
    expect(after.map((c) => c.inode)).toEqual(before.map((c) => c.inode));
    expect(qsd.acceptedCount()).toBe(1);
    // And it keeps answering the new owner.
    expect((await target.ask({ cmd: 'more' }, 'more')).capacity).toBe(ready.capacity);
    expect(qsd.acceptedCount()).toBe(1);
  });

  it('an inflight memfd of another size than declared is refused; the source keeps the connection', async (ctx) => {
    skipUnless(ctx, qsdUnavailable());
    const qsd = await daemons.start({ sizeBytes: 8 * 1024 * 1024 });
    const hPath = join(dir, 'h2.sock');
    const source = peers.spawn('vhost-source', [hPath, qsd.socketPath, '1', 'lie-inflight-size'], { fixture: 'handover-peer.ts' });
    await source.waitFor('ready');
    const before = await qsd.waitForConnections(1);
    const target = peers.spawn('vhost-target', [hPath], { fixture: 'handover-peer.ts' });
    await target.waitFor('listening');
    const failed = await source.ask({ cmd: 'handover' }, 'handover-failed');
    expect(failed.code).toBe('ERR_HANDOVER_REFUSED');
    expect((failed.details as { code: string }).code).toBe('ERR_BACKEND_VERIFY');
    expect(String(failed.message)).toMatch(/inflight memfd holds 16384 bytes, the source declared 20480/);
    expect(failed.stillTalks).toBe(true);
    expect((await target.waitFor('receive-failed')).code).toBe('ERR_BACKEND_VERIFY');
    expect(qsd.connections().map((c) => c.inode)).toEqual(before.map((c) => c.inode));
    expect(qsd.acceptedCount()).toBe(1);
  });
});
