// FdSocket's poll logic, driven by a stand-in poller (the native class is a
// constructor parameter): what it waits for at each moment decides backpressure.
import { describe, expect, it } from 'vitest';
import { FdPoller, FdSocket, closeFd, native } from '../src/index.js';
import type { PollerInstance } from '../src/native.js';
import { leakedSince, openFds, trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();

const R = native.UV_READABLE;
const W = native.UV_WRITABLE;

class FakePoller implements PollerInstance {
  static all: FakePoller[] = [];
  events = 0;
  closed = false;
  constructor(
    readonly fd: number,
    readonly cb: (status: number, events: number) => void,
  ) {
    FakePoller.all.push(this);
  }
  start(events: number): void {
    this.events = events;
  }
  stop(): void {
    this.events = 0;
  }
  close(): void {
    this.closed = true;
    this.events = 0;
  }
  ref(): void {}
  unref(): void {}
  fire(events: number): void {
    this.cb(0, events);
  }
}

function pollerOf(sock: FdSocket): FakePoller {
  return FakePoller.all.find((p) => p.fd === sock.fd && !p.closed)!;
}

describe('FdPoller', () => {
  it('starts, changes and stops only when the wanted events change', () => {
    const calls: string[] = [];
    class Recording extends FakePoller {
      override start(e: number): void {
        calls.push(`start ${e}`);
        super.start(e);
      }
      override stop(): void {
        calls.push('stop');
        super.stop();
      }
    }
    const p = new FdPoller(0, () => {}, Recording);
    p.set(R);
    p.set(R);
    p.set(R | W);
    p.set(0);
    p.set(0);
    p.close();
    p.set(R); // after close: ignored
    expect(calls).toEqual([`start ${R}`, `start ${R | W}`, 'stop']);
  });

  it('the native poller, started after close, throws a documented code (ERR_NATIVE)', () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    try {
      const p = new native.Poller(a, () => {});
      p.close();
      let err: unknown;
      try {
        p.start(R);
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code: 'ERR_NATIVE', message: expect.stringContaining('poller is closed') });
    } finally {
      closeFd(a);
      closeFd(b);
    }
  });

  it('turns a poll error status into a library error', () => {
    let got: unknown;
    const p = new FdPoller(0, (_e, err) => (got = err), FakePoller);
    FakePoller.all.at(-1)!.cb(-9, 0);
    expect(got).toMatchObject({ code: 'ERR_SYSTEM' });
    p.close();
  });
});

describe('FdSocket poll interest', () => {
  it('waits for POLLOUT while bytes are queued, and drops it lazily once idle', async () => {
    const [a, b] = FdSocket.pair('stream', { poller: FakePoller });
    const pa = pollerOf(a);
    expect(pa.events).toBe(R);
    a.setBufferSizes({ send: 4096 });
    let done = false;
    const sent = a.send(Buffer.alloc(1 << 20)).then(() => (done = true));
    expect(pa.events).toBe(R | W); // EAGAIN: now it waits for writability
    // Drain the peer by hand and tell `a` it may write, until everything went.
    const pb = pollerOf(b);
    for (let i = 0; i < 10_000 && !done; i++) {
      pb.fire(R);
      while (b.tryRead()) {
        /* discard */
      }
      pa.fire(W);
      await Promise.resolve();
    }
    await sent;
    // Still armed: a bulk sender about to hit EAGAIN again pays no epoll_ctl.
    expect(pa.events).toBe(R | W);
    pa.fire(W); // fires with nothing queued: now it stops asking
    expect(pa.events).toBe(R);
    a.close();
    b.close();
    expect(pa.closed).toBe(true);
  });

  it('stops polling for input at the high-water mark and resumes after read()', async () => {
    const [a, b] = FdSocket.pair('stream', { poller: FakePoller, highWaterMark: 64 * 1024, sendBufferSize: 64 * 1024 });
    const pb = pollerOf(b);
    // Real data waits in the kernel; the reader takes it only when "readable" fires.
    const pending = a.send(Buffer.alloc(1024 * 1024)).catch((e: unknown) => e);
    pollerOf(a).fire(W);
    pb.fire(R);
    expect(b.readableLength).toBeGreaterThanOrEqual(64 * 1024);
    expect(pb.events & R).toBe(0);
    while (b.readableLength > 0) await b.read();
    expect(pb.events & R).toBe(R);
    a.close();
    b.close();
    // The rest of the message never went: closing rejects it.
    expect(await pending).toMatchObject({ code: 'ERR_SOCKET_CLOSED' });
  });
});

describe('the leak check itself', () => {
  it('sees an fd left open', () => {
    const before = openFds();
    const fd = native.eventfd(0);
    expect(leakedSince(before)).toEqual([`${fd} -> anon_inode:[eventfd]`]);
    closeFd(fd);
    expect(leakedSince(before)).toEqual([]);
  });
});
