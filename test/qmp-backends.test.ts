// Handing backends to a real QEMU over QMP: the whole path old owner → new owner
// → QEMU. The old owner is another process (test/fixtures/qmp-peer.ts) that
// opened a multi-queue TAP inside a network namespace, or holds a connection to a
// backend service; it passes the fds to this process (the new owner) over an
// FdSocket and lets go; this process gives them to QEMU with getfd + netdev_add /
// chardev-add and checks, from /proc/<qemu>/fd and QEMU's own read-back, that
// QEMU holds them.
import { execFileSync } from 'node:child_process';
import { existsSync, openSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendTransferError, ErrorCodes, MessageReader, closeFd, inspectFd, native, sendMessage } from '../src/index.js';
import { QmpErrorCodes, attachChardevSocketToQemu, attachTapToQemu, queryChardevs, readNetworkInfo } from '../src/qmp/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { netnsUnavailable, skipUnless } from './helpers/env.js';
import { createNetns, deleteNetns, linkInfo } from './helpers/netns.js';
import { QemuInstances, QmpPeers, gdbChecksum, ownFdLink, qemuUnavailable, rejection } from './helpers/qemu.js';

trackFdLeaks();
const qemus = new QemuInstances();
const peers = new QmpPeers();
const namespaces: string[] = [];
/** fds this test holds; closed after each test unless the test closed them itself. */
const held = new Set<number>();
afterEach(async () => {
  for (const fd of held) closeFd(fd);
  held.clear();
  await peers.disposeAll();
  await qemus.disposeAll();
  for (const ns of namespaces.splice(0)) deleteNetns(ns);
});

function hold(fds: number[]): number[] {
  for (const fd of fds) held.add(fd);
  return fds;
}

function release(fds: number[]): void {
  for (const fd of fds) {
    if (held.delete(fd)) closeFd(fd);
  }
}

const byNumber = (a: number, b: number): number => a - b;

function newNetns(): string {
  const ns = createNetns('qmp');
  namespaces.push(ns);
  return ns;
}

function linkExists(ns: string, ifname: string): boolean {
  try {
    execFileSync('ip', ['-n', ns, 'link', 'show', 'dev', ifname], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The old owner opens a multi-queue TAP in `ns`, hands the queues over and exits. */
async function tapFromOldOwner(ns: string, ifname: string, queues: number): Promise<{ fds: number[]; ifindex: number }> {
  const peer = peers.spawn('tap', [ifname, String(queues)], { netns: ns });
  const msg = await new MessageReader(peer.sock).read();
  expect(msg).not.toBeNull();
  hold(msg!.fds);
  const meta = JSON.parse(msg!.data.toString()) as { ifname: string; ifindex: number; queues: number };
  expect(meta).toMatchObject({ ifname, queues });
  expect(msg!.fds).toHaveLength(queues);
  expect(await peer.exited()).toEqual({ code: 0, signal: null }); // the old owner is gone
  for (const fd of msg!.fds) expect(inspectFd(fd).tun?.name).toBe(ifname);
  return { fds: msg!.fds, ifindex: meta.ifindex };
}

function skipUnlessTap(ctx: Parameters<typeof skipUnless>[0]): void {
  skipUnless(ctx, qemuUnavailable() ?? netnsUnavailable());
}

describe('attachTapToQemu', () => {
  it('a multi-queue TAP from a network namespace, handed over by its old owner, becomes a QEMU tap netdev on a virtio-net device', async (ctx) => {
    skipUnlessTap(ctx);
    const ns = newNetns();
    const { fds, ifindex } = await tapFromOldOwner(ns, 'btq0', 4);
    const q = await qemus.start();
    const qmp = await q.connect();
    expect(q.tapFds('btq0')).toEqual([]);

    const tap = await attachTapToQemu(qmp, { id: 'net0', queueFds: fds });
    expect(tap).toMatchObject({ id: 'net0', queues: 4, vhost: false, ifname: 'btq0' });
    // QEMU holds exactly four queues of btq0, and they are the fds it reports.
    expect(q.tapFds('btq0')).toEqual([...tap.qemuFds].sort(byNumber));
    // Ours are still ours.
    for (const fd of fds) expect(inspectFd(fd).kind).toBe('tap');

    // Attach it to a NIC (multi-queue: 2 vectors per queue pair, plus config and control).
    await qmp.execute('device_add', { driver: 'virtio-net-pci', id: 'nic0', netdev: 'net0', mq: true, vectors: 10 });
    expect(await qmp.execute('qom-get', { path: '/machine/peripheral/nic0', property: 'netdev' })).toBe('net0');
    const net = (await readNetworkInfo(qmp)).filter((e) => e.name === 'net0');
    expect(net.map((e) => ({ index: e.index, type: e.type, peerOf: e.peerOf, fd: e.fd }))).toEqual(tap.qemuFds.map((fd, index) => ({ index, type: 'tap', peerOf: 'nic0', fd })));

    // The new owner lets go too: QEMU alone keeps the TAP alive ...
    release(fds);
    expect(linkInfo(ns, 'btq0').ifindex).toBe(ifindex);
    expect(q.tapFds('btq0')).toHaveLength(4);
    // ... and when QEMU goes, so does the (non-persistent) TAP.
    await q.kill();
    await until('btq0 is gone', () => !linkExists(ns, 'btq0'));
  });

  it('a duplicate netdev id is a clear ERR_QMP_ERROR, and the fds already passed are closed in QEMU', async (ctx) => {
    skipUnlessTap(ctx);
    const ns = newNetns();
    const a = await tapFromOldOwner(ns, 'btq0', 2);
    const b = await tapFromOldOwner(ns, 'btq1', 2);
    const q = await qemus.start();
    const qmp = await q.connect();
    await attachTapToQemu(qmp, { id: 'net0', queueFds: a.fds });

    const err = await rejection(attachTapToQemu(qmp, { id: 'net0', queueFds: b.fds }));
    expect(err.code).toBe(QmpErrorCodes.ERR_QMP_ERROR);
    expect(err.details).toMatchObject({ class: 'GenericError', command: 'netdev_add' });
    expect(String(err.details?.desc)).toMatch(/Duplicate ID 'net0'/);
    const cleanup = err.details?.cleanup as { closed: string[]; alreadyGone: string[]; removed: string[]; failed: unknown[] };
    expect(cleanup.closed).toHaveLength(2);
    expect(cleanup.removed).toEqual([]); // net0 was not ours to remove
    expect(cleanup.failed).toEqual([]);
    expect(q.tapFds('btq1')).toEqual([]); // closed in QEMU
    expect(q.tapFds('btq0')).toHaveLength(2); // the first netdev is untouched
    for (const fd of b.fds) expect(inspectFd(fd).kind).toBe('tap'); // ours are untouched

    // The same queues go in fine under another id.
    const ok = await attachTapToQemu(qmp, { id: 'net1', queueFds: b.fds });
    expect(q.tapFds('btq1')).toEqual([...ok.qemuFds].sort(byNumber));
  });

  it('refuses what is not a TAP queue, or not vhost-net, before anything reaches QEMU; a single queue goes in too', async (ctx) => {
    skipUnlessTap(ctx);
    const ns = newNetns();
    const { fds } = await tapFromOldOwner(ns, 'btq0', 2);
    const q = await qemus.start();
    const qmp = await q.connect();
    const [e] = hold([native.eventfd(0)]);
    const commands: string[] = [];
    qmp.on('command', (c: { command: string }) => commands.push(c.command));
    const before = q.fds().length;

    const cases: [string, Promise<unknown>, RegExp][] = [
      ['an eventfd as a queue', attachTapToQemu(qmp, { id: 'net0', queueFds: [e!] }), /is eventfd, not a TAP queue/],
      ['an eventfd as vhost fds', attachTapToQemu(qmp, { id: 'net0', queueFds: fds, vhostFds: [e!, e!] }), /not \/dev\/vhost-net/],
      ['one vhost fd for two queues', attachTapToQemu(qmp, { id: 'net0', queueFds: fds, vhostFds: [e!] }), /one fd per queue/],
      ['a queue twice', attachTapToQemu(qmp, { id: 'net0', queueFds: [fds[0]!, fds[0]!] }), /twice/],
      ['no queues', attachTapToQemu(qmp, { id: 'net0', queueFds: [] }), /at least one/],
      ['a bad id', attachTapToQemu(qmp, { id: '0net', queueFds: fds }), /must start with a letter/],
      ['an option the helper sets', attachTapToQemu(qmp, { id: 'net0', queueFds: fds, netdevOptions: { fds: 'x' } }), /may not set 'fds'/],
      ['a closed fd', attachTapToQemu(qmp, { id: 'net0', queueFds: [1_000_000] }), /not an open fd/],
    ];
    for (const [what, p, re] of cases) {
      const err = await rejection(p);
      expect(err.code, what).toBe(ErrorCodes.ERR_INVALID_ARGUMENT);
      expect(err.message, what).toMatch(re);
    }
    expect(commands).toEqual([]);
    expect(q.fds().length).toBe(before);

    // A single queue goes in too (netdev_add with fd=, not fds=).
    const one = await attachTapToQemu(qmp, { id: 'net9', queueFds: [fds[1]!] });
    expect(one).toMatchObject({ queues: 1, ifname: 'btq0' });
    expect(q.tapFds('btq0')).toEqual(one.qemuFds);
    expect(commands).toContain('netdev_add');
  });

  it('a failure after QEMU took some fds (vhostforce without vhost-net) closes the rest in QEMU; none stays there', async (ctx) => {
    skipUnlessTap(ctx);
    skipUnless(ctx, existsSync('/dev/vhost-net') ? '/dev/vhost-net exists here, so vhostforce would succeed instead of failing inside QEMU' : null);
    const ns = newNetns();
    const { fds } = await tapFromOldOwner(ns, 'btq0', 2);
    const q = await qemus.start();
    const qmp = await q.connect();
    // QEMU takes queue 0's fd, then fails to open /dev/vhost-net for it.
    const err = await rejection(attachTapToQemu(qmp, { id: 'net0', queueFds: fds, netdevOptions: { vhostforce: true } }));
    expect(err.code).toBe(QmpErrorCodes.ERR_QMP_ERROR);
    expect(String(err.details?.desc)).toMatch(/vhost/);
    const cleanup = err.details?.cleanup as { closed: string[]; alreadyGone: string[] };
    expect(cleanup.alreadyGone.length + cleanup.closed.length).toBe(2);
    expect(cleanup.alreadyGone.length).toBeGreaterThanOrEqual(1); // netdev_add had consumed (and closed) it
    expect(q.tapFds('btq0')).toEqual([]);
    expect((await readNetworkInfo(qmp)).filter((x) => x.name === 'net0')).toEqual([]);
  });

  it('vhost-net fds ride along as vhostfds', async (ctx) => {
    skipUnlessTap(ctx);
    skipUnless(ctx, existsSync('/dev/vhost-net') ? null : '/dev/vhost-net does not exist on this machine (no vhost_net module); the vhostfd path is covered only by argument checks');
    const ns = newNetns();
    const { fds } = await tapFromOldOwner(ns, 'btq0', 2);
    const vhost = hold(fds.map(() => openSync('/dev/vhost-net', 'r+')));
    const q = await qemus.start();
    const qmp = await q.connect();
    const tap = await attachTapToQemu(qmp, { id: 'net0', queueFds: fds, vhostFds: vhost });
    expect(tap.vhost).toBe(true);
    expect(q.tapFds('btq0')).toHaveLength(2);
    expect(q.fdsLinkedTo('/dev/vhost-net')).toHaveLength(2);
  });

  it('QEMU killed in the middle of an attach: a clean ERR_QMP_CLOSED, and our fds stay ours', async (ctx) => {
    skipUnlessTap(ctx);
    const ns = newNetns();
    const { fds } = await tapFromOldOwner(ns, 'btq0', 2);
    const q = await qemus.start();
    const qmp = await q.connect();
    // Freeze QEMU just before the first fd goes out (after the info network
    // read-back it answered), then kill it while getfd and its fd are in flight.
    let frozen = false;
    qmp.on('command', (c: { command: string }) => {
      if (c.command === 'getfd' && !frozen) {
        q.pause();
        frozen = true;
      }
    });
    const attach = attachTapToQemu(qmp, { id: 'net0', queueFds: fds }).then(
      () => null,
      (err: unknown) => err,
    );
    await until('QEMU is frozen at the first getfd', () => frozen);
    expect(qmp.pendingCommands).toBe(1);
    await q.kill();
    const err = (await attach) as BackendTransferError;
    expect(err).toBeInstanceOf(BackendTransferError);
    expect(err.code).toBe(QmpErrorCodes.ERR_QMP_CLOSED);
    expect(err.details?.command).toBe('getfd');
    expect(err.details?.cleanup).toMatchObject({ failed: [{ step: 'closefd', error: 'the QMP connection is closed' }] });
    expect(qmp.closed).toBe(true);
    for (const fd of fds) expect(inspectFd(fd).kind).toBe('tap');
    // We hold the only copies now: letting go removes the TAP.
    release(fds);
    await until('btq0 is gone', () => !linkExists(ns, 'btq0'));
  });
});

describe('attachChardevSocketToQemu', () => {
  /** HMP gdbserver on the chardev: QEMU's gdbstub reads packets from it and writes replies into it. */
  async function gdbExchange(peerSock: Parameters<typeof sendMessage>[0], waitReply: () => Promise<Record<string, unknown>>, body: string): Promise<{ reply: string; accepts: number }> {
    const packet = `$${body}#${gdbChecksum(body)}`;
    await sendMessage(peerSock, Buffer.from(JSON.stringify({ send: packet, until: '\\$[^#]*#[0-9a-fA-F]{2}' })));
    const ev = await waitReply();
    expect(ev.error).toBeNull();
    return { reply: String(ev.reply), accepts: Number(ev.accepts) };
  }

  function checkGdbReply(reply: string): string {
    const m = /^\+\$([^#]*)#([0-9a-f]{2})$/.exec(reply);
    expect(m, `gdb reply ${JSON.stringify(reply)}`).not.toBeNull();
    expect(m![2]).toBe(gdbChecksum(m![1]!)); // a well-formed packet, checksum and all
    return m![1]!;
  }

  it("a backend connection handed over by its old owner becomes a QEMU chardev; QEMU's writes reach the backend on the same connection", async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const peer = peers.spawn('chardev-backend');
    const msg = await new MessageReader(peer.sock).read();
    const [fd] = hold(msg!.fds);
    const meta = JSON.parse(msg!.data.toString()) as { link: string };
    const handed = await peer.waitFor('handed-over');
    expect(handed.hello).toBe('hello from the old owner\n');
    expect(ownFdLink(fd!)).toBe(meta.link); // the very socket the old owner used

    const q = await qemus.start();
    const qmp = await q.connect();
    const ch = await attachChardevSocketToQemu(qmp, { id: 'ch0', fd: fd! });
    expect(ch).toMatchObject({ id: 'ch0', frontendOpen: false });
    expect(ch.filename).toMatch(/^unix:/);
    expect(q.fdsLinkedTo(meta.link)).toHaveLength(1); // QEMU holds this socket
    release([fd!]); // and from now on only QEMU does

    // A frontend that writes: the gdbstub, attached to the chardev at run time.
    expect(await qmp.humanMonitorCommand('gdbserver chardev:ch0')).toMatch(/Waiting for gdb connection on device 'chardev:ch0'/);
    expect((await queryChardevs(qmp)).find((c) => c.label === 'ch0')?.frontendOpen).toBe(true);

    // '?' asks why the target stopped: QEMU answers "+" and a T05 stop packet.
    const first = await gdbExchange(peer.sock, () => peer.next('reply'), '?');
    expect(checkGdbReply(first.reply)).toMatch(/^T05/);
    // qAttached: "1", QEMU attached to an existing process.
    const second = await gdbExchange(peer.sock, () => peer.next('reply'), 'qAttached');
    expect(checkGdbReply(second.reply)).toBe('1');
    expect(second.accepts).toBe(1); // never a second connection: no reconnect
    expect(q.fdsLinkedTo(meta.link)).toHaveLength(1);
  });

  it('a duplicate chardev id is a clear ERR_QMP_ERROR and the socket is closed in QEMU; wrong fds are refused up front', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    const qmp = await q.connect();
    const [a] = hold(native.socketpair(native.SOCK_STREAM)); // both ends held; QEMU gets one
    const [b] = hold(native.socketpair(native.SOCK_STREAM));
    await attachChardevSocketToQemu(qmp, { id: 'ch0', fd: a! });
    const err = await rejection(attachChardevSocketToQemu(qmp, { id: 'ch0', fd: b! }));
    expect(err.code).toBe(QmpErrorCodes.ERR_QMP_ERROR);
    expect(err.details).toMatchObject({ class: 'GenericError', command: 'chardev-add' });
    const cleanup = err.details?.cleanup as { closed: string[]; alreadyGone: string[] };
    expect(cleanup.closed.length + cleanup.alreadyGone.length).toBe(1);
    expect(q.fdsLinkedTo(ownFdLink(b!))).toEqual([]); // nothing of it stays in QEMU
    expect(q.fdsLinkedTo(ownFdLink(a!))).toHaveLength(1);
    expect(inspectFd(b!).kind).toBe('unix-stream');

    const commands: string[] = [];
    qmp.on('command', (c: { command: string }) => commands.push(c.command));
    const [ev] = hold([native.eventfd(0)]);
    const listener = hold([native.socket(native.SOCK_STREAM)])[0]!;
    native.bind(listener, `\0bt-qmp-listener-${process.pid}`);
    native.listen(listener, 1);
    const unconnected = hold([native.socket(native.SOCK_STREAM)])[0]!;
    for (const [fd, re] of [
      [ev!, /not a socket/],
      [listener, /listening socket/],
      [unconnected, /not a connected socket/],
    ] as const) {
      const e = await rejection(attachChardevSocketToQemu(qmp, { id: 'ch1', fd }));
      expect(e.code).toBe(ErrorCodes.ERR_INVALID_ARGUMENT);
      expect(e.message).toMatch(re);
    }
    expect(commands).toEqual([]);
  });

  it('QEMU killed while the socket is in flight: ERR_QMP_CLOSED, and the socket is still ours', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    const qmp = await q.connect();
    const [a] = hold(native.socketpair(native.SOCK_STREAM));
    q.pause(); // getfd and its fd sit in QEMU's socket, unread
    const attach = attachChardevSocketToQemu(qmp, { id: 'ch0', fd: a! }).then(
      () => null,
      (e: unknown) => e,
    );
    await until('getfd is in flight', () => qmp.pendingCommands === 1);
    await q.kill();
    const err = (await attach) as BackendTransferError;
    expect(err.code).toBe(QmpErrorCodes.ERR_QMP_CLOSED);
    expect(err.details?.command).toBe('getfd');
    expect(inspectFd(a!).kind).toBe('unix-stream');
  });
});
