// The QMP client against a real QEMU (qemu-system-x86_64 -nodefaults -nographic
// -S, KVM where usable): greeting and capabilities, commands with ids, events,
// error classes, timeouts, fds with getfd/closefd and add-fd/remove-fd, QEMU dying
// mid-command, and peers that are not QMP.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendTransferError, ErrorCodes, FdSocket, closeFd, inspectFd, native } from '../src/index.js';
import { JsonObjectSplitter, QmpClient, QmpErrorCodes, isQmpCommandError, type QmpEvent } from '../src/qmp/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { skipUnless } from './helpers/env.js';
import { QemuInstances, qemuUnavailable, rejection } from './helpers/qemu.js';

trackFdLeaks();
const qemus = new QemuInstances();
const cleanups: (() => void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) c();
  await qemus.disposeAll();
});

function memfd(name: string): number {
  const fd = native.memfd_create(name);
  cleanups.push(() => closeFd(fd));
  return fd;
}

describe('QMP client against a real QEMU', () => {
  it('greets, negotiates, matches replies to commands by id, and maps QMP errors to ERR_QMP_ERROR with their class', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    const qmp = await q.connect();
    expect(qmp.peerPid).toBe(q.pid);

    const v = await qmp.execute<{ qemu: { major: number; minor: number; micro: number }; package: string }>('query-version');
    expect(qmp.version.qemu).toEqual(v.qemu); // the greeting told the truth
    expect(qmp.version.package).toBe(v.package);
    expect(qmp.greeting.capabilities).toContain('oob');

    // Several commands in flight at once: each promise gets its own reply.
    const [status, name, kvm, version] = await Promise.all([
      qmp.execute<{ status: string; running: boolean }>('query-status'),
      qmp.execute<{ name: string }>('query-name'),
      qmp.execute<{ enabled: boolean; present: boolean }>('query-kvm'),
      qmp.execute<{ qemu: { major: number } }>('query-version'),
    ]);
    expect(status).toMatchObject({ status: 'prelaunch', running: false });
    expect(name.name).toBe(`bt-test-${process.pid}`);
    expect(typeof kvm.enabled).toBe('boolean');
    if (q.accel === 'tcg') expect(kvm.enabled).toBe(false); // asked for KVM, QEMU may still fall back to TCG
    expect(version.qemu.major).toBe(v.qemu.major);

    const notFound = await rejection(qmp.execute('no-such-command'));
    expect(notFound.code).toBe(QmpErrorCodes.ERR_QMP_ERROR);
    expect(notFound.details?.class).toBe('CommandNotFound');
    expect(notFound.details?.command).toBe('no-such-command');
    expect(notFound.message).toMatch(/^ERR_QMP_ERROR: no-such-command: CommandNotFound: /);
    expect(isQmpCommandError(notFound, 'CommandNotFound')).toBe(true);

    const badArgs = await rejection(qmp.execute('query-status', { bogus: 1 }));
    expect(badArgs.code).toBe(QmpErrorCodes.ERR_QMP_ERROR);
    expect(badArgs.details?.class).toBe('GenericError');
    expect(String(badArgs.details?.desc)).toMatch(/bogus/);

    const noDevice = await rejection(qmp.execute('device_del', { id: 'nothing-here' }));
    expect(noDevice.details?.class).toBe('DeviceNotFound');

    // Still in step after the errors.
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('prelaunch');
    qmp.close();
    expect(qmp.closed).toBe(true);
    const after = await rejection(qmp.execute('query-status'));
    expect(after.code).toBe(QmpErrorCodes.ERR_QMP_CLOSED);
  });

  it('delivers events as they happen (cont → RESUME, stop → STOP)', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    const qmp = await q.connect();
    const seen: QmpEvent[] = [];
    qmp.on('event', (ev: QmpEvent) => seen.push(ev));

    const resumed = qmp.waitForEvent('RESUME', { timeout: 10_000 });
    await qmp.execute('cont');
    const ev = await resumed;
    expect(ev.timestamp!.seconds).toBeGreaterThan(1_600_000_000);
    expect((await qmp.execute<{ running: boolean }>('query-status')).running).toBe(true);

    const stopped = qmp.waitForEvent('STOP', { timeout: 10_000 });
    await qmp.execute('stop');
    await stopped;
    expect(seen.map((e) => e.event)).toEqual(['RESUME', 'STOP']);

    const never = await rejection(qmp.waitForEvent('SHUTDOWN', { timeout: 100 }));
    expect(never.code).toBe(QmpErrorCodes.ERR_QMP_TIMEOUT);
  });

  it('a reply that does not come in time rejects with ERR_QMP_TIMEOUT; the late reply is dropped and the stream stays in step', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    const qmp = await q.connect();
    q.pause(); // SIGSTOP: QEMU reads nothing until resumed
    const t0 = Date.now();
    const late = await rejection(qmp.execute('query-status', undefined, { timeout: 200 }));
    expect(late.code).toBe(QmpErrorCodes.ERR_QMP_TIMEOUT);
    expect(late.details).toMatchObject({ command: 'query-status', ms: 200, sent: true });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(190);
    expect(qmp.pendingCommands).toBe(1); // its reply is still due
    q.resume();
    const name = await qmp.execute<{ name: string }>('query-name');
    expect(name.name).toBe(`bt-test-${process.pid}`); // not the late query-status reply
    expect(qmp.pendingCommands).toBe(0);
  });

  it('getfd gives QEMU a duplicate under a name until closefd; the caller keeps its fd', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    const qmp = await q.connect();
    const tag = `bt-getfd-${process.pid}`;
    const m = memfd(tag);
    const link = `/memfd:${tag} (deleted)`;
    expect(q.fdsLinkedTo(link)).toEqual([]);

    await qmp.getfd('probe', m);
    const held = q.fdsLinkedTo(link);
    expect(held).toHaveLength(1);
    expect(inspectFd(m).kind).toBe('memfd'); // ours is untouched

    await qmp.closefd('probe');
    expect(q.fdsLinkedTo(link)).toEqual([]);

    const again = await rejection(qmp.closefd('probe'));
    expect(again.code).toBe(QmpErrorCodes.ERR_QMP_ERROR);
    expect(String(again.details?.desc)).toMatch(/not found/);

    // getfd without an fd: QEMU says so.
    const noFd = await rejection(qmp.execute('getfd', { fdname: 'nothing' }));
    expect(noFd.details?.class).toBe('GenericError');
    expect(String(noFd.details?.desc)).toMatch(/SCM_RIGHTS/);

    // Refused before anything is sent: a name QEMU would reject, an fd that is not open.
    const badName = await rejection(qmp.getfd('1st', m));
    expect(badName.code).toBe(ErrorCodes.ERR_INVALID_ARGUMENT);
    const closed = await rejection(qmp.getfd('gone', 1_000_000));
    expect(closed.code).toBe(ErrorCodes.ERR_INVALID_ARGUMENT);
    expect(q.fdsLinkedTo(link)).toEqual([]);
    // And the connection is fine.
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('prelaunch');
  });

  it('add-fd puts fds in fd sets (each concurrent add-fd lands with its own fd), query-fdsets lists them, remove-fd closes them', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    // With 'oob' enabled QEMU reads up to 8 commands ahead and keeps only the
    // latest fds it received: several fd-carrying commands in flight at once would
    // get each other's fds. The client keeps one in flight at a time.
    const qmp = await q.connect({ oob: true });
    expect(qmp.enabledCapabilities).toEqual(['oob']);
    // QEMU 7.2 closes removed fdset fds only while the guest runs (not in prelaunch).
    await qmp.execute('cont');

    const tags = Array.from({ length: 6 }, (_, i) => `bt-fdset-${process.pid}-${i}`);
    const fds = tags.map((t) => memfd(t));
    const added = await Promise.all(fds.map((fd, i) => qmp.addFd(fd, { opaque: `m${i}` })));
    const byFd = new Map(q.fds().map((f) => [f.fd, f.link]));
    added.forEach((a, i) => expect(byFd.get(a.fd)).toBe(`/memfd:${tags[i]} (deleted)`));
    expect(new Set(added.map((a) => a.fdsetId)).size).toBe(6); // a new set each

    // A second fd in the first set.
    const extra = await qmp.addFd(fds[1]!, { fdsetId: added[0]!.fdsetId, opaque: 'second' });
    expect(extra.fdsetId).toBe(added[0]!.fdsetId);

    const sets = await qmp.queryFdsets();
    const first = sets.find((s) => s.fdsetId === added[0]!.fdsetId)!;
    expect(first.fds.map((f) => f.opaque).sort()).toEqual(['m0', 'second']);
    expect(first.fds.map((f) => f.fd).sort((a, b) => a - b)).toEqual([added[0]!.fd, extra.fd].sort((a, b) => a - b));

    await qmp.removeFd(added[0]!.fdsetId, extra.fd);
    expect(q.fds().some((f) => f.fd === extra.fd && f.link === `/memfd:${tags[1]} (deleted)`)).toBe(false);
    for (const a of added) await qmp.removeFd(a.fdsetId);
    expect(await qmp.queryFdsets()).toEqual([]);
    for (const t of tags) expect(q.fdsLinkedTo(`/memfd:${t} (deleted)`)).toEqual([]);

    const unknown = await rejection(qmp.removeFd(12345));
    expect(unknown.details?.class).toBe('GenericError');
  });

  it('QEMU killed mid-command: every pending command rejects with ERR_QMP_CLOSED, later ones too, and nothing leaks', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    const qmp = await q.connect();
    let closeEvent: unknown = 'none';
    qmp.on('close', (err: unknown) => (closeEvent = err));
    const m = memfd(`bt-killed-${process.pid}`);
    q.pause(); // the commands below reach the socket but are never answered
    const status = qmp.execute('query-status');
    const getfd = qmp.getfd('in-flight', m);
    const queued = qmp.addFd(m); // waits for getfd's reply (one fd command at a time)
    const outcomesP = Promise.allSettled([status, getfd, queued]);
    await new Promise((r) => setTimeout(r, 50));
    expect(qmp.pendingCommands).toBe(3);
    await q.kill();

    const outcomes = await outcomesP;
    outcomes.forEach((o, i) => {
      expect(o.status).toBe('rejected');
      const err = (o as PromiseRejectedResult).reason as BackendTransferError;
      expect(err).toBeInstanceOf(BackendTransferError);
      expect(err.code).toBe(QmpErrorCodes.ERR_QMP_CLOSED);
      expect(err.details?.command).toBe(['query-status', 'getfd', 'add-fd'][i]);
    });
    expect(qmp.closed).toBe(true);
    expect(closeEvent).toBeInstanceOf(BackendTransferError);
    expect((closeEvent as BackendTransferError).code).toBe(QmpErrorCodes.ERR_QMP_CLOSED);
    const later = await rejection(qmp.execute('query-status'));
    expect(later.code).toBe(QmpErrorCodes.ERR_QMP_CLOSED);
    expect(inspectFd(m).kind).toBe('memfd'); // the fd that was in flight is still ours
  });

  it('reads pretty-printed QMP (-mon pretty=on), where one message spans many lines', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const dir = mkdtempSync(join(tmpdir(), 'bt-qmp-pretty-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'pretty.sock');
    await qemus.start({ args: ['-chardev', `socket,id=pretty,path=${path},server=on,wait=off`, '-mon', 'chardev=pretty,mode=control,pretty=on'] });
    const qmp = await QmpClient.connect(path);
    cleanups.push(() => qmp.close());
    const cmds = await qmp.execute<{ name: string }[]>('query-commands');
    expect(cmds.map((c) => c.name)).toEqual(expect.arrayContaining(['getfd', 'closefd', 'add-fd', 'remove-fd', 'netdev_add', 'chardev-add']));
    expect((await qmp.execute<{ name: string }>('query-name')).name).toBe(`bt-test-${process.pid}`);
  });
});

describe('peers that are not QMP are refused', () => {
  it("QEMU's HMP monitor socket: ERR_QMP_NOT_QMP", async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start({ hmp: true });
    const err = await rejection(QmpClient.connect(q.hmpPath!));
    expect(err.code).toBe(QmpErrorCodes.ERR_QMP_NOT_QMP);
    expect(err.message).toMatch(/does not speak QMP/);
    // QEMU's QMP socket still works alongside.
    const qmp = await q.connect();
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('prelaunch');
  });

  /** A unix listener in this process that answers each connection with `respond`. */
  async function fakeServer(respond: (sock: FdSocket) => Promise<void> | void): Promise<string> {
    const dir = mkdtempSync(join(tmpdir(), 'bt-notqmp-'));
    const path = join(dir, 's.sock');
    const server = FdSocket.listen(path);
    const accepted: FdSocket[] = [];
    cleanups.push(() => {
      for (const s of accepted) s.close();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    });
    void (async () => {
      for await (const s of server) {
        accepted.push(s);
        await respond(s);
      }
    })().catch(() => {});
    return path;
  }

  it('JSON that is not a greeting, text, silence and a hang-up each fail with a stable code', async () => {
    const json = await fakeServer((s) => s.send(Buffer.from('{"hello": "world"}\r\n')));
    const jsonErr = await rejection(QmpClient.connect(json));
    expect(jsonErr.code).toBe(QmpErrorCodes.ERR_QMP_NOT_QMP);
    expect(jsonErr.message).toMatch(/not a QMP greeting/);

    const text = await fakeServer((s) => s.send(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n')));
    expect((await rejection(QmpClient.connect(text))).code).toBe(QmpErrorCodes.ERR_QMP_NOT_QMP);

    const silent = await fakeServer(() => {});
    const t0 = Date.now();
    const silentErr = await rejection(QmpClient.connect(silent, { timeout: 300 }));
    expect(silentErr.code).toBe(QmpErrorCodes.ERR_QMP_TIMEOUT);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);

    const hangup = await fakeServer((s) => s.close());
    expect((await rejection(QmpClient.connect(hangup))).code).toBe(QmpErrorCodes.ERR_QMP_CLOSED);

    // A greeting, then no answer to qmp_capabilities: a timeout, not a hang.
    const mute = await fakeServer((s) => s.send(Buffer.from('{"QMP": {"version": {"qemu": {"major": 9, "minor": 0, "micro": 0}, "package": ""}, "capabilities": []}}\r\n')));
    expect((await rejection(QmpClient.connect(mute, { timeout: 300 }))).code).toBe(QmpErrorCodes.ERR_QMP_TIMEOUT);

    const nowhere = await rejection(QmpClient.connect(join(tmpdir(), `bt-no-such-${process.pid}.sock`)));
    expect(nowhere.code).toBe(ErrorCodes.ERR_CONNECT_FAILED);
  });

  it('garbage after a good greeting fails the connection with ERR_QMP_PROTOCOL and rejects what was pending', async () => {
    const path = await fakeServer(async (s) => {
      await s.send(Buffer.from('{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "x"}, "capabilities": []}}\r\n'));
      // Answer qmp_capabilities with the id the client sent, then talk nonsense.
      const c = await s.read();
      const id = (JSON.parse(c!.data.toString()) as { id: string }).id;
      await s.send(Buffer.from(JSON.stringify({ return: {}, id }) + '\r\n'));
      await s.read();
      await s.send(Buffer.from('{"return": {}, "id": tru'));
      await s.send(Buffer.from('nk}\r\n'));
    });
    const qmp = await QmpClient.connect(path);
    cleanups.push(() => qmp.close());
    expect(qmp.version.qemu).toEqual({ major: 7, minor: 2, micro: 0 });
    const err = await rejection(qmp.execute('query-status'));
    expect(err.code).toBe(QmpErrorCodes.ERR_QMP_PROTOCOL);
    expect(qmp.closed).toBe(true);
  });
});

describe('JsonObjectSplitter', () => {
  it('finds objects split at every byte, with braces and escapes inside strings, and refuses what is not an object', () => {
    const msgs = [{ a: '}{"\\', b: [1, { c: '\u00e9\u4e2d' }] }, { event: 'X', data: { s: 'line\nbreak' } }, {}];
    const bytes = Buffer.from(msgs.map((m) => JSON.stringify(m, null, 2)).join('\r\n') + '\r\n');
    for (const step of [1, 2, 3, 7, bytes.length]) {
      const s = new JsonObjectSplitter(1 << 20);
      const out: unknown[] = [];
      for (let i = 0; i < bytes.length; i += step) for (const b of s.push(bytes.subarray(i, i + step))) out.push(JSON.parse(b.toString()));
      expect(out).toEqual(msgs);
      expect(s.pending).toBe(0);
    }
    expect(() => new JsonObjectSplitter(100).push(Buffer.from('  [1]'))).toThrow(/expected a JSON object/);
    expect(() => new JsonObjectSplitter(10).push(Buffer.from('{"a": "0123456789"}'))).toThrow(/larger than 10 bytes/);
  });
});
