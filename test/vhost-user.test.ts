// The vhost-user front-end against a real back-end (qemu-storage-daemon exporting
// vhost-user-blk), the handover of a live connection to another process, and the
// ways a wrong or silent peer fails.
import { mkdtempSync, readSync, rmSync } from 'node:fs';
import { endianness, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendTransferError, FdSocket, closeFd, closeFds, inspectFd, native, sendMessage, type FdServer } from '../src/index.js';
import {
  VHOST_USER_FLAG_NEED_REPLY,
  VHOST_USER_FLAG_REPLY,
  VHOST_USER_HEADER_SIZE,
  VIRTIO_BLK_CONFIG_SIZE,
  VhostFeatureBit,
  VhostUserErrorCodes,
  VhostUserFrontend,
  VhostUserProtocolFeatureBit,
  VhostUserRequest,
  VirtioBlkFeatureBit,
  decodeConfig,
  decodeHeader,
  decodeU64,
  decodeVirtioBlkConfig,
  encodeConfig,
  encodeMessage,
  encodeU64,
  featureBit,
  hasFeature,
  type VhostUserSession,
} from '../src/vhost-user/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { skipUnless } from './helpers/env.js';
import { Peers } from './helpers/child.js';
import { StorageDaemons, ownSocketInodes, qsdUnavailable, ssUnavailable, type StorageDaemon } from './helpers/qsd.js';

trackFdLeaks();

// ------------------------------------------------------------------ cleanup

const daemons = new StorageDaemons();
const frontends: VhostUserFrontend[] = [];
const sockets: FdSocket[] = [];
const servers: FdServer[] = [];
const peers = new Peers();
const dirs: string[] = [];
afterEach(async () => {
  for (const f of frontends.splice(0)) f.close();
  for (const s of sockets.splice(0)) s.close();
  for (const s of servers.splice(0)) s.close();
  await peers.disposeAll();
  await daemons.disposeAll();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function track(fe: VhostUserFrontend): VhostUserFrontend {
  frontends.push(fe);
  return fe;
}

async function connect(qsd: StorageDaemon, timeout = 5000): Promise<VhostUserFrontend> {
  return track(await VhostUserFrontend.connect(qsd.socketPath, { timeout }));
}

/** What QEMU's vhost-user-blk front-end negotiates, minus what needs guest memory. */
async function negotiate(fe: VhostUserFrontend): Promise<{ features: bigint; protocolFeatures: bigint }> {
  const features = await fe.getFeatures();
  const want = featureBit(VhostFeatureBit.VIRTIO_F_VERSION_1) | featureBit(VhostFeatureBit.VHOST_USER_F_PROTOCOL_FEATURES) | featureBit(VirtioBlkFeatureBit.MQ);
  await fe.setFeatures(features & want);
  await fe.setOwner();
  const offered = await fe.getProtocolFeatures();
  const protocolFeatures = offered & (featureBit(VhostUserProtocolFeatureBit.MQ) | featureBit(VhostUserProtocolFeatureBit.CONFIG) | featureBit(VhostUserProtocolFeatureBit.REPLY_ACK));
  await fe.setProtocolFeatures(protocolFeatures);
  return { features, protocolFeatures };
}

function sessionJson(s: VhostUserSession): Record<string, unknown> {
  return {
    features: s.features === undefined ? undefined : `0x${s.features.toString(16)}`,
    protocolFeatures: s.protocolFeatures === undefined ? undefined : `0x${s.protocolFeatures.toString(16)}`,
    owner: s.owner,
  };
}

async function expectCode(p: Promise<unknown>, code: string): Promise<BackendTransferError> {
  const err = await p.then(
    () => {
      throw new Error(`expected ${code}, but it succeeded`);
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(BackendTransferError);
  expect((err as BackendTransferError).code).toBe(code);
  expect((err as Error).message.startsWith(`${code}: `)).toBe(true);
  return err as BackendTransferError;
}

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'bt-vu-'));
  dirs.push(d);
  return d;
}

// ------------------------------------------------------------------ codec

describe('vhost-user codec', () => {
  it('lays out the header, u64 and config payloads as vhost-user.rst says (host byte order = little-endian here)', (ctx) => {
    skipUnless(ctx, endianness() === 'LE' ? null : 'big-endian host: the byte strings below are little-endian');
    const m = encodeMessage(VhostUserRequest.SET_FEATURES, 0x1 | VHOST_USER_FLAG_NEED_REPLY, encodeU64(0x1_4000_0000n));
    expect(m.toString('hex')).toBe('02000000' + '09000000' + '08000000' + '0000004001000000');
    expect(decodeHeader(m)).toEqual({ request: 2, flags: 9, size: 8 });
    expect(decodeU64(m.subarray(VHOST_USER_HEADER_SIZE))).toBe(0x1_4000_0000n);
    const cfg = encodeConfig(0, 8, 0);
    expect(cfg.length).toBe(20);
    expect(cfg.subarray(0, 12).toString('hex')).toBe('000000000800000000000000');
    const filled = Buffer.concat([cfg.subarray(0, 12), Buffer.from('0000020000000000', 'hex')]);
    expect(decodeConfig(filled).data.readBigUInt64LE(0)).toBe(131072n);
    expect(() => decodeConfig(cfg.subarray(0, 19))).toThrow(/ERR_INVALID_ARGUMENT/);
    expect(() => encodeU64(-1n)).toThrow(/ERR_INVALID_ARGUMENT/);
    expect(() => encodeConfig(0, 0)).toThrow(/ERR_INVALID_ARGUMENT/);
  });

  it('decodes struct virtio_blk_config field by field, and only the fields present', () => {
    const b = Buffer.alloc(VIRTIO_BLK_CONFIG_SIZE);
    b.writeBigUInt64LE(123456789n, 0);
    b.writeUInt32LE(65536, 8);
    b.writeUInt32LE(126, 12);
    b.writeUInt16LE(1000, 16);
    b.writeUInt8(16, 18);
    b.writeUInt8(63, 19);
    b.writeUInt32LE(4096, 20);
    b.writeUInt8(3, 24);
    b.writeUInt16LE(8, 26);
    b.writeUInt32LE(64, 28);
    b.writeUInt8(1, 32);
    b.writeUInt16LE(4, 34);
    b.writeUInt32LE(777, 36);
    b.writeUInt8(1, 56);
    const c = decodeVirtioBlkConfig(b);
    expect(c).toMatchObject({
      capacity: 123456789n,
      sizeMax: 65536,
      segMax: 126,
      geometry: { cylinders: 1000, heads: 16, sectors: 63 },
      blkSize: 4096,
      physicalBlockExp: 3,
      minIoSize: 8,
      optIoSize: 64,
      wce: 1,
      numQueues: 4,
      maxDiscardSectors: 777,
      writeZeroesMaySleep: 1,
    });
    const short = decodeVirtioBlkConfig(b.subarray(0, 24));
    expect(short.blkSize).toBe(4096);
    expect(short.numQueues).toBeUndefined();
    expect(() => decodeVirtioBlkConfig(b.subarray(0, 7))).toThrow(/ERR_INVALID_ARGUMENT/);
  });
});

// ------------------------------------------------------------------ a real back-end

describe('vhost-user front-end against qemu-storage-daemon (vhost-user-blk)', () => {
  const configs = [
    { name: '64 MiB, writable, 2 queues', sizeBytes: 64 * 1024 * 1024, writable: true, numQueues: 2, logicalBlockSize: undefined },
    { name: '3 MiB + 4 KiB, read-only, 1 queue, 4 KiB blocks', sizeBytes: 3 * 1024 * 1024 + 4096, writable: false, numQueues: 1, logicalBlockSize: 4096 },
  ];
  for (const cfg of configs) {
    it(`negotiates and reads the config of the export (${cfg.name})`, async (ctx) => {
      skipUnless(ctx, qsdUnavailable());
      const qsd = await daemons.start(cfg);
      const fe = await connect(qsd);
      const { features, protocolFeatures } = await negotiate(fe);
      // virtio 1.x device with vhost-user protocol features; RO exactly when the export is read-only.
      expect(hasFeature(features, VhostFeatureBit.VHOST_USER_F_PROTOCOL_FEATURES)).toBe(true);
      expect(hasFeature(features, VhostFeatureBit.VIRTIO_F_VERSION_1)).toBe(true);
      expect(hasFeature(features, VirtioBlkFeatureBit.RO)).toBe(!cfg.writable);
      expect(hasFeature(features, VirtioBlkFeatureBit.BLK_SIZE)).toBe(true);
      expect(features >> 64n).toBe(0n);
      expect(hasFeature(protocolFeatures, VhostUserProtocolFeatureBit.CONFIG)).toBe(true);
      expect(hasFeature(protocolFeatures, VhostUserProtocolFeatureBit.MQ)).toBe(true);
      expect(fe.session).toEqual({ features: features & (featureBit(32) | featureBit(30) | featureBit(12)), owner: true, protocolFeatures });

      expect(await fe.getQueueNum()).toBe(cfg.numQueues);
      const blk = await fe.getBlkConfig();
      expect(blk.capacity).toBe(BigInt(qsd.sizeBytes / 512));
      expect(blk.numQueues).toBe(cfg.numQueues);
      expect(blk.blkSize).toBe(cfg.logicalBlockSize ?? 512);
      // The short form: the first u64 alone.
      const first = await fe.getConfig(0, 8);
      expect(first.readBigUInt64LE(0)).toBe(blk.capacity);
      // After SET_FEATURES, GET_FEATURES still reports what the back-end offers.
      expect(await fe.getFeatures()).toBe(features);

      // The daemon holds one connection, and its other end is our socket.
      const [conn, ...more] = await qsd.waitForConnections(1);
      expect(more).toEqual([]);
      expect(qsd.acceptedCount()).toBe(1);
      if (ssUnavailable() === null) expect(await qsd.peerInode(conn!.inode)).toBe(native.fstat(fe.fd).ino);
    });
  }

  it('SET_VRING_CALL carries an eventfd over SCM_RIGHTS that the back-end signals; REPLY_ACK confirms', async (ctx) => {
    skipUnless(ctx, qsdUnavailable());
    const qsd = await daemons.start({ numQueues: 2 });
    const fe = await connect(qsd);
    const { protocolFeatures } = await negotiate(fe);
    expect(hasFeature(protocolFeatures, VhostUserProtocolFeatureBit.REPLY_ACK)).toBe(true);
    const efds = [native.eventfd(0, native.EFD_NONBLOCK), native.eventfd(0, native.EFD_NONBLOCK)];
    try {
      // libvhost-user writes 1 to a new call fd at once ("in case of I/O hang after reconnecting").
      await fe.setVringCall(1, efds[1]!);
      const b = Buffer.alloc(8);
      expect(readSync(efds[1]!, b, 0, 8, null)).toBe(8);
      expect(b.readBigUInt64LE(0)).toBe(1n);
      // Ring 0 was not touched: its eventfd is empty.
      expect(() => readSync(efds[0]!, b, 0, 8, null)).toThrow(/EAGAIN/);
      // A no-fd SET_VRING_CALL (polling) is fine too.
      await fe.setVringCall(0, null);
    } finally {
      closeFds(efds);
    }
    expect(await fe.getQueueNum()).toBe(2);
  });

  it('a GET_CONFIG larger than virtio_blk_config is refused (ERR_VHOST_USER_REJECTED) and the session goes on', async (ctx) => {
    skipUnless(ctx, qsdUnavailable());
    const qsd = await daemons.start();
    const fe = await connect(qsd);
    await negotiate(fe);
    const err = await expectCode(fe.getConfig(0, 256), VhostUserErrorCodes.ERR_VHOST_USER_REJECTED);
    expect(err.details).toMatchObject({ request: 'GET_CONFIG', size: 256 });
    expect(fe.failure).toBeNull();
    expect((await fe.getBlkConfig()).capacity).toBe(BigInt(qsd.sizeBytes / 512));
    expect(qsd.acceptedCount()).toBe(1);
  });
});

// ------------------------------------------------------------------ handover

describe('vhost-user connection handover to another process', () => {
  it('a child continues the same session over the received socket: one connection ever, same daemon-side inode', async (ctx) => {
    skipUnless(ctx, qsdUnavailable());
    skipUnless(ctx, ssUnavailable());
    const qsd = await daemons.start({ numQueues: 2, sizeBytes: 48 * 1024 * 1024 });
    const fe = await connect(qsd);
    const { features } = await negotiate(fe);
    const clientInode = native.fstat(fe.fd).ino;
    const nonblocking = (native.fcntl_getfl(fe.fd) & native.O_NONBLOCK) !== 0;
    const [before] = await qsd.waitForConnections(1);
    expect(await qsd.peerInode(before!.inode)).toBe(clientInode);
    expect(qsd.acceptedCount()).toBe(1);

    const child = peers.spawn('continue', [], { fixture: 'vhost-user-peer.ts', socket: 'stream' });
    const session = fe.session;
    const fd = fe.detach();
    try {
      await sendMessage(child.sock!, Buffer.from(JSON.stringify({ session: sessionJson(session) })), [fd]);
    } finally {
      closeFd(fd);
    }
    // This process no longer has the connection at all.
    expect(fe.closed).toBe(true);
    expect(ownSocketInodes().has(clientInode)).toBe(false);
    await expectCode(fe.getFeatures(), VhostUserErrorCodes.ERR_VHOST_USER_CLOSED);

    const received = await child.waitFor('received');
    expect(received).toMatchObject({ inode: clientInode, kind: 'unix-stream', nonblocking });
    const cont = await child.waitFor('continued');
    expect(cont).toMatchObject({
      features: `0x${features.toString(16)}`,
      capacity: String(qsd.sizeBytes / 512),
      numQueues: 2,
      queues: 2,
      vringCallCounter: 1,
      inode: clientInode,
      nonblocking,
    });

    // The daemon still has exactly its first connection, now talking to the child.
    const after = qsd.connections();
    expect(after).toEqual([before]);
    expect(await qsd.peerInode(before!.inode)).toBe(clientInode);
    expect(qsd.acceptedCount()).toBe(1);
    expect(qsd.stderr).not.toMatch(/Unable to read|Connection reset|disconnect/i);

    // When the child lets go, the daemon's connection ends: nobody else held it.
    child.sock!.close();
    await child.waitFor('closed');
    expect((await child.exited()).code).toBe(0);
    await qsd.waitForConnections(0);
    expect(qsd.acceptedCount()).toBe(1);
  });

  it('control: a reconnect instead of a handover is seen by the harness (second accept, new inode); QMP clients are not counted', async (ctx) => {
    skipUnless(ctx, qsdUnavailable());
    const qsd = await daemons.start({ qmp: true });
    // A client of the QMP monitor is accepted too, but not on the export.
    const qmp = await FdSocket.connect(qsd.qmpPath!);
    sockets.push(qmp);
    const greeting = await qmp.read();
    expect(greeting?.data.toString()).toMatch(/^\{"QMP"/);
    qmp.close();
    await qsd.waitFor('the QMP accept in the trace', () => (qsd.stderr.match(/qio_channel_socket_accept_complete/g)?.length === 1 ? true : undefined));
    expect(qsd.acceptedCount()).toBe(0);
    expect(qsd.connections()).toEqual([]);

    const first = await connect(qsd);
    await negotiate(first);
    const [c1] = await qsd.waitForConnections(1);
    expect(qsd.acceptedCount()).toBe(1);
    first.close();
    await qsd.waitForConnections(0);
    const second = await connect(qsd);
    await negotiate(second);
    const [c2] = await qsd.waitForConnections(1);
    await qsd.waitForAccepted(2);
    expect(qsd.acceptedCount()).toBe(2);
    expect(c2!.inode).not.toBe(c1!.inode);
  });

  it('detach() refuses while a request is in flight (ERR_VHOST_USER_BUSY) and leaves the session usable', async (ctx) => {
    skipUnless(ctx, qsdUnavailable());
    const qsd = await daemons.start();
    const fe = await connect(qsd);
    const pending = fe.getFeatures();
    expect(() => fe.detach()).toThrow(expect.objectContaining({ code: VhostUserErrorCodes.ERR_VHOST_USER_BUSY }) as Error);
    expect(hasFeature(await pending, VhostFeatureBit.VHOST_USER_F_PROTOCOL_FEATURES)).toBe(true);
    const fd = fe.detach();
    expect(inspectFd(fd).kind).toBe('unix-stream');
    const again = track(VhostUserFrontend.fromFd(fd));
    expect(hasFeature(await again.getFeatures(), VhostFeatureBit.VHOST_USER_F_PROTOCOL_FEATURES)).toBe(true);
    expect(qsd.acceptedCount()).toBe(1);
  });
});

// ------------------------------------------------------------------ errors

/** A listener in this process; `onConn` plays the peer on each accepted socket. */
function fakeServer(onConn: (s: FdSocket) => void): string {
  const path = join(tempDir(), 'peer.sock');
  const server = FdSocket.listen(path);
  servers.push(server);
  void (async () => {
    try {
      for await (const s of server) {
        sockets.push(s);
        onConn(s);
      }
    } catch {
      /* closed */
    }
  })();
  return path;
}

/** The request headers a peer socket has received so far, as they arrive. */
async function readRequest(s: FdSocket): Promise<{ request: number; flags: number; payload: Buffer; fds: number[] }> {
  let buf = Buffer.alloc(0);
  const fds: number[] = [];
  for (;;) {
    if (buf.length >= VHOST_USER_HEADER_SIZE) {
      const h = decodeHeader(buf);
      if (buf.length >= VHOST_USER_HEADER_SIZE + h.size) {
        const rest = buf.subarray(VHOST_USER_HEADER_SIZE + h.size);
        if (rest.length) s.unshift({ data: rest, fds: [], fdSeq: 0, offset: 0 });
        return { request: h.request, flags: h.flags, payload: buf.subarray(VHOST_USER_HEADER_SIZE, VHOST_USER_HEADER_SIZE + h.size), fds };
      }
    }
    const c = await s.read();
    if (c === null) throw new Error('EOF');
    buf = Buffer.concat([buf, c.data]);
    fds.push(...c.fds);
  }
}

const tick = (ms = 2): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('vhost-user front-end: peers that are not (good) back-ends', () => {
  it('an echo server: ERR_VHOST_USER_PROTOCOL (no REPLY flag), the session is closed, later calls fail the same', async () => {
    const path = fakeServer((s) => {
      void (async () => {
        for await (const c of s) {
          closeFds(c.fds);
          await s.send(Buffer.from(c.data));
        }
      })().catch(() => undefined);
    });
    const fe = track(await VhostUserFrontend.connect(path, { timeout: 2000 }));
    const err = await expectCode(fe.getFeatures(), VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL);
    expect(err.message).toMatch(/without the REPLY flag/);
    expect(fe.closed).toBe(true);
    expect(await fe.getQueueNum().catch((e: unknown) => e)).toBe(err);
  });

  it('a server that never answers: ERR_VHOST_USER_TIMEOUT within the limit', async () => {
    const path = fakeServer(() => undefined);
    const fe = track(await VhostUserFrontend.connect(path, { timeout: 150 }));
    const t0 = Date.now();
    const err = await expectCode(fe.getProtocolFeatures(), VhostUserErrorCodes.ERR_VHOST_USER_TIMEOUT);
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(140);
    expect(took).toBeLessThan(2000);
    expect(err.details).toMatchObject({ request: 'GET_PROTOCOL_FEATURES (15)', ms: 150 });
    expect(fe.failure).toBe(err);
  });

  it('a server that closes the connection: ERR_VHOST_USER_CLOSED, also mid-reply', async () => {
    const path = fakeServer((s) => s.close());
    const fe = track(await VhostUserFrontend.connect(path, { timeout: 2000 }));
    await expectCode(fe.getFeatures(), VhostUserErrorCodes.ERR_VHOST_USER_CLOSED);

    const [a, b] = FdSocket.pair();
    sockets.push(b);
    const fe2 = track(VhostUserFrontend.fromSocket(a, { timeout: 2000 }));
    const p = fe2.getFeatures();
    await readRequest(b);
    await b.send(encodeMessage(VhostUserRequest.GET_FEATURES, 0x5, encodeU64(1n)).subarray(0, 15));
    b.close();
    const err = await expectCode(p, VhostUserErrorCodes.ERR_VHOST_USER_CLOSED);
    expect(err.message).toMatch(/after 3 of 8 bytes/);
  });

  it('a second front-end while the daemon serves one gets no answer (it accepts one client at a time): ERR_VHOST_USER_TIMEOUT', async (ctx) => {
    skipUnless(ctx, qsdUnavailable());
    const qsd = await daemons.start();
    const fe = await connect(qsd);
    await negotiate(fe);
    const other = track(await VhostUserFrontend.connect(qsd.socketPath, { timeout: 300 }));
    await expectCode(other.getFeatures(), VhostUserErrorCodes.ERR_VHOST_USER_TIMEOUT);
    expect(qsd.acceptedCount()).toBe(1);
    expect(qsd.connections().length).toBe(1);
    expect(hasFeature(await fe.getFeatures(), VhostFeatureBit.VIRTIO_F_VERSION_1)).toBe(true);
  });

  it('replies split into single bytes or merged into one write decode the same; reply fds go to the caller', async () => {
    const [a, b] = FdSocket.pair();
    sockets.push(b);
    const fe = track(VhostUserFrontend.fromSocket(a, { timeout: 5000 }));

    // Split: one byte per write, each arriving on its own.
    const p1 = fe.getFeatures();
    const r1 = await readRequest(b);
    expect(r1).toMatchObject({ request: VhostUserRequest.GET_FEATURES, flags: 1 });
    const reply1 = encodeMessage(VhostUserRequest.GET_FEATURES, 0x1 | VHOST_USER_FLAG_REPLY, encodeU64(0x1_7500_7e46n));
    for (let i = 0; i < reply1.length; i++) {
      await b.send(reply1.subarray(i, i + 1));
      await tick();
    }
    expect(await p1).toBe(0x1_7500_7e46n);

    // Merged: header, payload and an fd in one sendmsg (as a back-end answering GET_INFLIGHT_FD would).
    const memfd = native.memfd_create('inflight');
    const p2 = fe.request(VhostUserRequest.GET_INFLIGHT_FD, Buffer.alloc(24));
    const r2 = await readRequest(b);
    expect(r2.request).toBe(VhostUserRequest.GET_INFLIGHT_FD);
    await b.send(encodeMessage(VhostUserRequest.GET_INFLIGHT_FD, 0x5, Buffer.alloc(24, 7)), [memfd]);
    closeFd(memfd);
    const reply2 = (await p2)!;
    expect(reply2.payload).toEqual(Buffer.alloc(24, 7));
    expect(reply2.fds.length).toBe(1);
    expect(inspectFd(reply2.fds[0]!).kind).toBe('memfd');
    closeFds(reply2.fds);

    // An fd a typed request does not expect is closed, not leaked (the leak check would see it).
    const efd = native.eventfd(5);
    const p3 = fe.getQueueNum();
    await readRequest(b);
    await b.send(encodeMessage(VhostUserRequest.GET_QUEUE_NUM, 0x5, encodeU64(4n)), [efd]);
    closeFd(efd);
    expect(await p3).toBe(4);

    // NEED_REPLY is set only once REPLY_ACK is negotiated; a non-zero ack is a refusal, not a broken session.
    const p4 = fe.setProtocolFeatures(featureBit(VhostUserProtocolFeatureBit.REPLY_ACK));
    expect((await readRequest(b)).flags & VHOST_USER_FLAG_NEED_REPLY).toBe(0);
    await p4;
    const p5 = fe.setOwner();
    const r5 = await readRequest(b);
    expect(r5.flags & VHOST_USER_FLAG_NEED_REPLY).toBe(VHOST_USER_FLAG_NEED_REPLY);
    await b.send(encodeMessage(VhostUserRequest.SET_OWNER, 0x5, encodeU64(1n)));
    await expectCode(p5, VhostUserErrorCodes.ERR_VHOST_USER_REJECTED);
    expect(fe.failure).toBeNull();
    const p6 = fe.setOwner();
    await readRequest(b);
    await b.send(encodeMessage(VhostUserRequest.SET_OWNER, 0x5, encodeU64(0n)));
    await p6;
  });

  it('queued requests go one at a time and each gets its own reply', async () => {
    const [a, b] = FdSocket.pair();
    sockets.push(b);
    const fe = track(VhostUserFrontend.fromSocket(a, { timeout: 5000 }));
    const ps = [fe.getFeatures(), fe.getProtocolFeatures(), fe.getQueueNum()];
    for (const [code, value] of [
      [VhostUserRequest.GET_FEATURES, 11n],
      [VhostUserRequest.GET_PROTOCOL_FEATURES, 22n],
      [VhostUserRequest.GET_QUEUE_NUM, 3n],
    ] as const) {
      const r = await readRequest(b);
      expect(r.request).toBe(code);
      // Nothing else was sent before this reply.
      expect(b.readableLength).toBe(0);
      await b.send(encodeMessage(code, 0x5, encodeU64(value)));
    }
    expect(await Promise.all(ps)).toEqual([11n, 22n, 3]);
  });

  it('wrong replies are protocol errors: another request, bad version, oversized, wrong payload size, unsolicited bytes', async () => {
    const cases: { name: string; reply: Buffer; match: RegExp }[] = [
      { name: 'reply to another request', reply: encodeMessage(VhostUserRequest.GET_QUEUE_NUM, 0x5, encodeU64(1n)), match: /reply to GET_QUEUE_NUM/ },
      { name: 'version 2', reply: encodeMessage(VhostUserRequest.GET_FEATURES, 0x6, encodeU64(1n)), match: /version 2/ },
      { name: '4 GiB payload announced', reply: encodeMessage(VhostUserRequest.GET_FEATURES, 0x5).fill(0xff, 8, 12), match: /over the limit/ },
      { name: 'u64 of 4 bytes', reply: encodeMessage(VhostUserRequest.GET_FEATURES, 0x5, Buffer.alloc(4)), match: /should carry a u64/ },
    ];
    for (const c of cases) {
      const [a, b] = FdSocket.pair();
      sockets.push(b);
      const fe = track(VhostUserFrontend.fromSocket(a, { timeout: 2000 }));
      const p = fe.getFeatures();
      await readRequest(b);
      await b.send(c.reply);
      const err = await expectCode(p, VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL);
      expect(err.message, c.name).toMatch(c.match);
      expect(fe.closed).toBe(true);
    }

    // Bytes before any request (with an fd on them): refused, and the fd is closed.
    const [a, b] = FdSocket.pair();
    sockets.push(b);
    const fe = track(VhostUserFrontend.fromSocket(a, { timeout: 2000 }));
    const efd = native.eventfd(0);
    await b.send(encodeMessage(VhostUserRequest.GET_FEATURES, 0x5, encodeU64(1n)), [efd]);
    closeFd(efd);
    await tick(20);
    const err = await expectCode(fe.getFeatures(), VhostUserErrorCodes.ERR_VHOST_USER_PROTOCOL);
    expect(err.message).toMatch(/nobody asked for/);
  });

  it('close() during a request: ERR_VHOST_USER_CLOSED; bad arguments: ERR_INVALID_ARGUMENT without sending', async () => {
    const [a, b] = FdSocket.pair();
    sockets.push(b);
    const fe = track(VhostUserFrontend.fromSocket(a, { timeout: 5000 }));
    await expectCode(fe.request(VhostUserRequest.GET_FEATURES, undefined, { needReply: false }), 'ERR_INVALID_ARGUMENT');
    await expectCode(fe.setVringCall(256, null), 'ERR_INVALID_ARGUMENT');
    await expectCode(fe.request(VhostUserRequest.SET_MEM_TABLE, Buffer.alloc(8), { fds: [0, 1, 2, 0, 1, 2, 0, 1, 2] }), 'ERR_INVALID_ARGUMENT');
    await expectCode(fe.getConfig(0, 0), 'ERR_INVALID_ARGUMENT');
    await tick(10);
    expect(b.readableLength).toBe(0);
    expect(fe.failure).toBeNull();

    const p = fe.getFeatures();
    await readRequest(b);
    fe.close();
    const err = await expectCode(p, VhostUserErrorCodes.ERR_VHOST_USER_CLOSED);
    expect(err.message).toMatch(/closed while it waited/);
    await expectCode(fe.getFeatures(), VhostUserErrorCodes.ERR_VHOST_USER_CLOSED);
  });

  it('fromFd refuses what is not a unix socket (ERR_NOT_UNIX_SOCKET) and leaves the fd to the caller', () => {
    const [r, w] = native.pipe2();
    try {
      expect(() => VhostUserFrontend.fromFd(r)).toThrow(expect.objectContaining({ code: 'ERR_NOT_UNIX_SOCKET' }) as Error);
      expect(inspectFd(r).kind).toBe('pipe');
    } finally {
      closeFds([r, w]);
    }
  });
});
