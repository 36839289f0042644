// FdSocket's two halves on their own, driven by fake sendmsg / recvmsg: partial
// writes, EAGAIN, fds across pieces, peer gone, MSG_CTRUNC, EOF. The real-socket
// behaviour is in fd-socket.test.ts; this checks what a kernel rarely does on cue.
import { describe, expect, it } from 'vitest';
import { BackendTransferError, ErrorCodes, native } from '../src/index.js';
import { SendQueue, type SendmsgFn, type SendQueueHooks } from '../src/transport/send-queue.js';
import { ReceiveBuffer, type RecvSyscalls, type ReceiveBufferHooks } from '../src/transport/receive-buffer.js';
import { SCM_MAX_FD, type FdSocketStats, type ReceivedChunk } from '../src/transport/types.js';
import { READABLE, WRITABLE } from '../src/transport/poller.js';
import { openFds, trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();

const EAGAIN = -11;

function stats(): FdSocketStats {
  return { bytesSent: 0, bytesReceived: 0, fdsSent: 0, fdsReceived: 0, sendmsgCalls: 0, recvmsgCalls: 0 };
}

interface Call {
  bytes: Buffer;
  fds: number[];
}

/** A fake sendmsg: takes at most `take()` bytes per call (a negative number: EAGAIN), or throws what `fail()` gives. */
function fakeSendmsg(take: () => number, fail?: () => Error | null): { fn: SendmsgFn; calls: Call[]; accepted: Buffer[] } {
  const calls: Call[] = [];
  const accepted: Buffer[] = [];
  const fn: SendmsgFn = (_fd, data, fds) => {
    const e = fail?.();
    if (e) throw e;
    const bytes = Buffer.concat(data instanceof Uint8Array ? [data] : [...data]);
    const n = take();
    calls.push({ bytes, fds: fds ? [...fds] : [] });
    if (n < 0) return n;
    const k = Math.min(n, bytes.length);
    accepted.push(bytes.subarray(0, k));
    return k;
  };
  return { fn, calls, accepted };
}

function queue(sendmsg: SendmsgFn, over: Partial<SendQueueHooks> = {}, type: 'stream' | 'seqpacket' = 'stream') {
  const log: string[] = [];
  let closed = false;
  let writeError: BackendTransferError | null = null;
  const hooks: SendQueueHooks = {
    closed: () => closed,
    stopped: () => closed || writeError !== null,
    fail: (e) => {
      log.push(`fail ${e.code}`);
      closed = true;
      q.rejectAll(e);
    },
    failWrites: (e) => {
      log.push(`failWrites ${e.code}`);
      writeError = e;
      q.rejectAll(e);
    },
    updatePoll: () => log.push('updatePoll'),
    drained: () => log.push('drained'),
    ...over,
  };
  const st = stats();
  const q = new SendQueue({ fd: 99, type, recordSize: 64 * 1024, iovMax: 1024, sendmsg, stats: st, hooks });
  return { q, log, st };
}

const noFailQueued = (e: Error): void => {
  throw e;
};

describe('constants the transport holds without loading the addon', () => {
  it('match the addon', () => {
    expect(SCM_MAX_FD).toBe(native.SCM_MAX_FD);
    expect(READABLE).toBe(native.UV_READABLE);
    expect(WRITABLE).toBe(native.UV_WRITABLE);
  });
});

describe('SendQueue with a fake sendmsg', () => {
  it('partial writes: every byte once, in order, and the fds only with the first accepted byte', async () => {
    const fake = fakeSendmsg(() => 3);
    const { q, st } = queue(fake.fn);
    const msg = q.submit(Buffer.from('0123456789'), [7, 8], true, noFailQueued);
    expect(msg).not.toBeNull();
    await msg!.promise;
    expect(Buffer.concat(fake.accepted).toString()).toBe('0123456789');
    expect(fake.calls[0]!.fds).toEqual([7, 8]);
    expect(fake.calls.slice(1).every((c) => c.fds.length === 0)).toBe(true);
    expect(st.fdsSent).toBe(2);
    expect(st.bytesSent).toBe(10);
    expect(q.idle).toBe(true);
  });

  it('EAGAIN before any byte: nothing is lost, the fds stay with the queued piece and go with the next flush', async () => {
    let next = EAGAIN;
    const fake = fakeSendmsg(() => next);
    const { q, log, st } = queue(fake.fn);
    const msg = q.submit(Buffer.from('abc'), [5], true, noFailQueued)!;
    expect(st.fdsSent).toBe(0);
    expect(q.queuedBytes).toBe(3);
    expect(log).toContain('updatePoll'); // asked for POLLOUT
    next = 100;
    q.flush();
    await msg.promise;
    // Every attempt before the one that went (EAGAIN: nothing sent) carried the fds too.
    const withFds = fake.calls.filter((c) => c.fds.length > 0);
    expect(withFds.length).toBe(fake.calls.length);
    expect(withFds.at(-1)!.bytes.toString()).toBe('abc');
    expect(Buffer.concat(fake.accepted).toString()).toBe('abc');
    expect(st.fdsSent).toBe(1);
    expect(log).toContain('drained');
  });

  it('more than SCM_MAX_FD fds: one batch per piece, each piece on its own bytes, never after another message', async () => {
    const fake = fakeSendmsg(() => 1 << 20);
    const { q } = queue(fake.fn);
    // Something queued first, so that the fd pieces follow another message's bytes.
    let eagain = true;
    const blocked = fakeSendmsg(() => (eagain ? EAGAIN : 1 << 20));
    const { q: q2 } = queue(blocked.fn);
    const first = q2.submit(Buffer.from('head'), [], true, noFailQueued)!;
    const fds = Array.from({ length: 300 }, (_, i) => 1000 + i);
    const second = q2.submit(Buffer.from('xyz'), fds, true, noFailQueued)!;
    eagain = false;
    q2.flush();
    await Promise.all([first.promise, second.promise]);
    const fdCalls = blocked.calls.filter((c) => c.fds.length > 0);
    expect(fdCalls.map((c) => c.fds.length)).toEqual([SCM_MAX_FD, 300 - SCM_MAX_FD]);
    expect(fdCalls[0]!.bytes.toString()).toBe('x'); // one byte carries the first batch
    expect(fdCalls[1]!.bytes.toString()).toBe('yz');
    expect(fdCalls.flatMap((c) => c.fds)).toEqual(fds); // each fd once, in order
    expect(Buffer.concat(blocked.accepted).toString()).toBe('headxyz');
    // and the fast path of an idle queue
    expect(q.submit(Buffer.from('z'), [1], true, noFailQueued)).toBeNull();
  });

  it('fds need bytes to ride on', () => {
    const { q } = queue(fakeSendmsg(() => 10).fn);
    expect(() =>
      q.submit(
        Buffer.alloc(1),
        Array.from({ length: 254 }, (_, i) => i),
        true,
        noFailQueued,
      ),
    ).toThrow(expect.objectContaining({ code: ErrorCodes.ERR_FDS_NEED_BYTES }));
    expect(() => q.submit(Buffer.alloc(4), [-1], true, noFailQueued)).toThrow(expect.objectContaining({ code: ErrorCodes.ERR_INVALID_ARGUMENT }));
  });

  it("EBADF on a message's first bytes fails that message only; EPIPE fails the sending side", async () => {
    let err: Error | null = Object.assign(new Error('bad fd'), { code: 'EBADF' });
    const fake = fakeSendmsg(
      () => 100,
      () => err,
    );
    const { q, log } = queue(fake.fn);
    expect(() => q.submit(Buffer.from('a'), [3], true, noFailQueued)).toThrow(expect.objectContaining({ code: ErrorCodes.ERR_INVALID_ARGUMENT }));
    expect(log.filter((l) => l.startsWith('fail'))).toEqual([]);
    err = Object.assign(new Error('broken pipe'), { code: 'EPIPE' });
    expect(() => q.submit(Buffer.from('b'), [], true, noFailQueued)).toThrow(expect.objectContaining({ code: ErrorCodes.ERR_PEER_CLOSED }));
    expect(log).toContain(`failWrites ${ErrorCodes.ERR_PEER_CLOSED}`);
  });

  it('a failure after queueing rejects the queued message and drain waiters', async () => {
    let mode: 'eagain' | 'reset' = 'eagain';
    const fake = fakeSendmsg(
      () => EAGAIN,
      () => (mode === 'reset' ? Object.assign(new Error('reset'), { code: 'ECONNRESET' }) : null),
    );
    const { q } = queue(fake.fn);
    const msg = q.submit(Buffer.from('queued'), [], true, noFailQueued)!;
    const drained = q.waitDrain();
    mode = 'reset';
    q.flush();
    await expect(msg.promise).rejects.toMatchObject({ code: ErrorCodes.ERR_PEER_CLOSED });
    await expect(drained).rejects.toMatchObject({ code: ErrorCodes.ERR_PEER_CLOSED });
    expect(q.idle).toBe(true);
  });
});

/** A fake kernel receive queue: each entry is one recvmsg result. */
type Rx = { bytes?: Buffer; fds?: number[]; flags?: number } | 'EAGAIN' | Error;

function fakeRecv(script: Rx[]): RecvSyscalls {
  return {
    MSG_CTRUNC: native.MSG_CTRUNC,
    MSG_TRUNC: native.MSG_TRUNC,
    recvmsg(_fd, buffer, offset, length, meta) {
      const r = script.shift() ?? 'EAGAIN';
      if (r === 'EAGAIN') return EAGAIN;
      if (r instanceof Error) throw r;
      const b = r.bytes ?? Buffer.alloc(0);
      if (b.length > length) throw new Error('test script: record larger than the space offered');
      Buffer.from(buffer.buffer, buffer.byteOffset, buffer.length).set(b, offset);
      const fds = r.fds ?? [];
      meta[0] = fds.length;
      meta[1] = r.flags ?? 0;
      fds.forEach((fd, i) => (meta[2 + i] = fd));
      return b.length;
    },
    recvmmsg() {
      return EAGAIN; // only used after small fd-carrying stream messages; these tests use seqpacket
    },
  };
}

function buffer(script: Rx[]) {
  const log: string[] = [];
  let closed = false;
  const hooks: ReceiveBufferHooks = {
    closed: () => closed,
    fail: (e) => {
      log.push(`fail ${e.code}`);
      closed = true;
      rb.releaseAll();
    },
    peerGone: (e) => {
      log.push(`peerGone ${e.code}`);
      rb.markPeerGone(e);
      rb.settleAfterPeerGone();
    },
    updatePoll: () => undefined,
    ended: () => log.push('ended'),
  };
  const st = stats();
  const rb: ReceiveBuffer = new ReceiveBuffer({
    fd: 98,
    type: 'seqpacket',
    readBufferSize: 1024,
    recycle: false,
    highWaterMark: 1 << 20,
    fdHighWaterMark: 1024,
    syscalls: fakeRecv(script),
    stats: st,
    hooks,
  });
  return { rb, log, st };
}

describe('ReceiveBuffer with a fake recvmsg', () => {
  it('chunks carry their fds, fd sequence numbers and offsets; EAGAIN stops the loop; EOF ends it', () => {
    const [e1, e2, e3] = [native.eventfd(0), native.eventfd(0), native.eventfd(0)];
    const { rb, log, st } = buffer([{ bytes: Buffer.from('ab'), fds: [e1, e2] }, { bytes: Buffer.from('cde'), fds: [e3] }, 'EAGAIN', { bytes: Buffer.from('f') }, {}]);
    rb.readLoop();
    expect(rb.bufferedBytes).toBe(5);
    expect(rb.bufferedFds).toBe(3);
    const c1 = rb.tryRead() as ReceivedChunk;
    const c2 = rb.tryRead() as ReceivedChunk;
    expect([c1.data.toString(), c1.fds, c1.fdSeq, c1.offset]).toEqual(['ab', [e1, e2], 0, 0]);
    expect([c2.data.toString(), c2.fds, c2.fdSeq, c2.offset]).toEqual(['cde', [e3], 2, 2]);
    expect(rb.tryRead()).toBeUndefined(); // EAGAIN: nothing more now
    rb.readLoop();
    expect((rb.tryRead() as ReceivedChunk).data.toString()).toBe('f');
    expect(rb.tryRead()).toBeNull();
    expect(log).toEqual(['ended']);
    expect(st.fdsReceived).toBe(3);
    native.close(e1);
    native.close(e2);
    native.close(e3);
  });

  it('MSG_CTRUNC: the fds that did arrive are closed and the socket fails with ERR_FDS_TRUNCATED', () => {
    const [e1, e2] = [native.eventfd(0), native.eventfd(0)];
    const { rb, log } = buffer([{ bytes: Buffer.from('x'), fds: [e1, e2], flags: native.MSG_CTRUNC }]);
    rb.readLoop();
    expect(log).toEqual([`fail ${ErrorCodes.ERR_FDS_TRUNCATED}`]);
    const open = openFds();
    expect(open.has(e1)).toBe(false);
    expect(open.has(e2)).toBe(false);
  });

  it('MSG_TRUNC (a record cut short) fails with ERR_RECORD_TRUNCATED and closes its fds', () => {
    const e1 = native.eventfd(0);
    const { rb, log } = buffer([{ bytes: Buffer.from('x'), fds: [e1], flags: native.MSG_TRUNC }]);
    rb.readLoop();
    expect(log).toEqual([`fail ${ErrorCodes.ERR_RECORD_TRUNCATED}`]);
    expect(openFds().has(e1)).toBe(false);
  });

  it('a reset after data: what arrived is still read, then the reset', async () => {
    const { rb, log } = buffer([{ bytes: Buffer.from('last words') }, Object.assign(new Error('reset'), { code: 'ECONNRESET' })]);
    rb.readLoop();
    expect(log).toEqual([`peerGone ${ErrorCodes.ERR_PEER_CLOSED}`]);
    expect((rb.tryRead() as ReceivedChunk).data.toString()).toBe('last words');
    expect(rb.tryRead()).toBeUndefined();
    expect(rb.readError?.code).toBe(ErrorCodes.ERR_PEER_CLOSED);
  });

  it('releaseAll closes every fd nobody read and says how many', () => {
    const [e1, e2] = [native.eventfd(0), native.eventfd(0)];
    const { rb } = buffer([{ bytes: Buffer.from('a') }, { bytes: Buffer.from('b'), fds: [e1, e2] }]);
    rb.readLoop();
    expect(rb.releaseAll()).toEqual({ unclaimed: 2, firstSeq: 0 });
    expect(openFds().has(e1)).toBe(false);
    expect(openFds().has(e2)).toBe(false);
  });

  it('push mode delivers in order and a throwing handler fails the socket', async () => {
    const { rb, log } = buffer([{ bytes: Buffer.from('1') }, { bytes: Buffer.from('2') }, { bytes: Buffer.from('3') }]);
    const seen: string[] = [];
    const done = rb.consume((c) => {
      seen.push(c.data.toString());
      if (seen.length === 2) throw new BackendTransferError(ErrorCodes.ERR_BACKEND_VERIFY, 'handler refuses');
    }, null);
    rb.readLoop();
    expect(seen).toEqual(['1', '2']);
    expect(log).toEqual([`fail ${ErrorCodes.ERR_BACKEND_VERIFY}`]);
    rb.settleClosed(new Error('closed'), new BackendTransferError(ErrorCodes.ERR_BACKEND_VERIFY, 'handler refuses'));
    await expect(done).rejects.toMatchObject({ code: ErrorCodes.ERR_BACKEND_VERIFY });
  });
});

describe('ReceiveBuffer reads after a target region', () => {
  it('the read right after a filled target asks for 16 KiB only (the next frame head), later reads the whole slab; every byte arrives once, in order', async () => {
    const asked: number[] = [];
    let fed = 0;
    const stream = Buffer.alloc(600 * 1024);
    for (let i = 0; i < stream.length; i++) stream[i] = (i * 13) & 0xff;
    const sys: RecvSyscalls = {
      MSG_CTRUNC: native.MSG_CTRUNC,
      MSG_TRUNC: native.MSG_TRUNC,
      recvmsg(_fd, buffer, offset, length, meta) {
        asked.push(length);
        if (fed === stream.length) return EAGAIN;
        const n = Math.min(length, stream.length - fed);
        Buffer.from(buffer.buffer, buffer.byteOffset, buffer.length).set(stream.subarray(fed, fed + n), offset);
        fed += n;
        meta[0] = 0;
        meta[1] = 0;
        return n;
      },
      recvmmsg: () => EAGAIN,
    };
    const hooks: ReceiveBufferHooks = { closed: () => false, fail: (e) => expect.fail(e.message), peerGone: () => undefined, updatePoll: () => undefined, ended: () => undefined };
    const rb = new ReceiveBuffer({ fd: 97, type: 'stream', readBufferSize: 256 * 1024, recycle: false, highWaterMark: 8 << 20, fdHighWaterMark: 1024, syscalls: sys, stats: stats(), hooks });
    // The consumer wants its first 100 KiB in a region of its own (a frame body), then nothing.
    const region = Buffer.alloc(100 * 1024);
    let targets = 0;
    const got: Buffer[] = [];
    void rb.consume(
      (c) => got.push(Buffer.from(c.data)),
      () => (targets++ === 0 ? region : null),
    );
    rb.readLoop();
    expect(asked[0]).toBe(region.length); // the target
    expect(asked[1]).toBe(16 * 1024); // the head of what follows it
    expect(asked[2]).toBe(256 * 1024 - 16 * 1024); // the rest of the slab, as usual
    expect(Buffer.concat(got).equals(stream)).toBe(true);
  });
});
