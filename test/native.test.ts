// The addon: one syscall per call, errno mapped to .code/.errno/.syscall.
import { readSync, writeSync, openSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { closeFd, closeFds, inspectFd, native } from '../src/index.js';
import { skipUnless } from './helpers/env.js';
import { isOpen, trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();

const META = () => new Int32Array(2 + native.SCM_MAX_FD);

describe('errno mapping', () => {
  it('throws Error with code, negative errno and syscall', () => {
    const fd = native.socket(native.SOCK_STREAM);
    try {
      let err: (Error & { code?: string; errno?: number; syscall?: string }) | undefined;
      try {
        native.connect(fd, '/nonexistent/bt.sock');
      } catch (e) {
        err = e as typeof err;
      }
      expect(err).toBeInstanceOf(Error);
      expect(err!.code).toBe('ENOENT');
      expect(err!.errno).toBe(-2);
      expect(err!.syscall).toBe('connect');
      expect(err!.message).toMatch(/^ENOENT: .*, connect$/);
    } finally {
      closeFd(fd);
    }
  });

  it('names errnos libuv does not know (ETOOMANYREFS family) and EBADF', () => {
    expect(() => native.close(1_000_000)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'close' }));
    expect(() => native.fstat(1_000_000)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'fstat' }));
  });

  it('rejects bad arguments with stable codes', () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    try {
      expect(() => native.sendmsg(a, Buffer.from('x'), new Array(254).fill(a))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
      expect(() => native.recvmsg(a, Buffer.alloc(4), 0, 4, new Int32Array(3))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
      expect(() => native.recvmsg(a, Buffer.alloc(4), 2, 4, META())).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
      expect(() => native.bind(a, 'x'.repeat(200))).toThrow(expect.objectContaining({ code: 'ENAMETOOLONG' }));
    } finally {
      closeFds([a, b]);
    }
  });
});

describe('closing fds', () => {
  it('close_range closes a whole range in one call; its errors carry the syscall', () => {
    const fds = Array.from({ length: 6 }, () => native.eventfd(0)).sort((a, b) => a - b);
    const lo = fds[0]!;
    const hi = fds[fds.length - 1]!;
    expect(hi - lo).toBe(5); // fresh fds take the lowest free numbers
    native.close_range(lo, hi);
    for (const fd of fds) expect(isOpen(fd)).toBe(false);
    expect(() => native.close_range(hi, lo)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'close_range' }));
  });

  it('closeFds closes exactly the listed fds: runs in one go, gaps and strays untouched, repeats and closed fds ignored', () => {
    const fds = Array.from({ length: 40 }, () => native.eventfd(0)).sort((a, b) => a - b);
    // keep three that are not listed: one inside a long run, and both ends of another
    const keep = [fds[10]!, fds[20]!, fds[25]!];
    const listed = fds.filter((fd) => !keep.includes(fd));
    const shuffled = [...listed].reverse();
    shuffled.push(listed[3]!, listed[3]!); // repeated
    const stale = native.eventfd(0);
    native.close(stale);
    shuffled.push(stale, -1); // not open, and not an fd at all
    closeFds(shuffled);
    for (const fd of listed) expect(isOpen(fd)).toBe(false);
    for (const fd of keep) expect(isOpen(fd)).toBe(true);
    closeFds(new Set(keep)); // any iterable, and short lists
    for (const fd of keep) expect(isOpen(fd)).toBe(false);
  });
});

describe('sockets', () => {
  it('creates non-blocking, close-on-exec sockets of both types', () => {
    for (const type of [native.SOCK_STREAM, native.SOCK_SEQPACKET]) {
      const fds = [native.socket(type), ...native.socketpair(type)];
      for (const fd of fds) {
        expect(native.fcntl_getfl(fd) & native.O_NONBLOCK).toBe(native.O_NONBLOCK);
        expect(native.fcntl_getfd(fd) & native.FD_CLOEXEC).toBe(native.FD_CLOEXEC);
        expect(native.getsockopt(fd, native.SOL_SOCKET, native.SO_TYPE)).toBe(type);
        expect(native.getsockopt(fd, native.SOL_SOCKET, native.SO_DOMAIN)).toBe(native.AF_UNIX);
      }
      closeFds(fds);
    }
  });

  it('binds, listens, connects and accepts on an abstract address', () => {
    const name = `\0bt-native-${process.pid}`;
    const l = native.socket(native.SOCK_SEQPACKET);
    native.bind(l, name);
    native.listen(l, 4);
    expect(native.getsockname(l)).toBe(name);
    expect(native.getsockopt(l, native.SOL_SOCKET, native.SO_ACCEPTCONN)).toBe(1);
    expect(native.accept4(l)).toBe(-native.EAGAIN);
    const c = native.socket(native.SOCK_SEQPACKET);
    expect(native.connect(c, name)).toBe(0);
    const s = native.accept4(l);
    expect(s).toBeGreaterThan(0);
    expect(native.fcntl_getfl(s) & native.O_NONBLOCK).toBe(native.O_NONBLOCK);
    expect(native.fcntl_getfd(s) & native.FD_CLOEXEC).toBe(native.FD_CLOEXEC);
    expect(native.getpeername(c)).toBe(name);
    const cred = native.getpeercred(s);
    expect(cred).toEqual({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    closeFds([l, c, s]);
  });

  it('gives a pidfd of the peer (SO_PEERPIDFD)', () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    try {
      const pidfd = native.getpeerpidfd(a);
      expect(inspectFd(pidfd).kind).toBe('pidfd');
      expect(inspectFd(pidfd).closeOnExec).toBe(true);
      closeFd(pidfd);
    } catch (err) {
      // Kernels before 6.5 lack SO_PEERPIDFD; the error must say so, not crash.
      expect((err as { code?: string }).code).toBe('ENOPROTOOPT');
    } finally {
      closeFds([a, b]);
    }
  });
});

describe('sendmsg / recvmsg', () => {
  it('carries fds with MSG_CMSG_CLOEXEC and reports counts', () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    const efd = native.eventfd(9);
    expect(native.sendmsg(a, [Buffer.from('ab'), Buffer.from('cd')], [efd, efd])).toBe(4);
    const buf = Buffer.alloc(16);
    const meta = META();
    expect(native.recvmsg(b, buf, 0, 16, meta)).toBe(4);
    expect(buf.subarray(0, 4).toString()).toBe('abcd');
    expect(meta[0]).toBe(2);
    expect(meta[1]! & native.MSG_CTRUNC).toBe(0);
    const got = [meta[2]!, meta[3]!];
    for (const fd of got) {
      expect(native.fcntl_getfd(fd) & native.FD_CLOEXEC).toBe(native.FD_CLOEXEC);
      expect(inspectFd(fd).kind).toBe('eventfd');
    }
    expect(native.recvmsg(b, buf, 0, 16, meta)).toBe(-native.EAGAIN);
    closeFds([a, b, efd, ...got]);
  });

  it('recvmmsg takes several fd-carrying messages in one call, each with its own fds', () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    const e = [native.eventfd(1), native.eventfd(2), native.eventfd(3)];
    native.sendmsg(a, Buffer.from('a'), [e[0]!]);
    native.sendmsg(a, Buffer.from('bb'), [e[1]!, e[2]!]);
    native.sendmsg(a, Buffer.from('ccc'));
    const buf = Buffer.alloc(8 * 64);
    const meta = new Int32Array(1 + 8 * (3 + native.SCM_MAX_FD));
    const n = native.recvmmsg(b, buf, 0, buf.length, meta, 8);
    // The kernel ends a read after each fd-carrying skb: 'a'+1 fd, 'bb'+2 fds, then 'ccc'.
    expect(n).toBe(3);
    expect([meta[1], meta[3]]).toEqual([1, 1]);
    expect(buf.subarray(0, 1).toString()).toBe('a');
    expect([meta[5], meta[7]]).toEqual([2, 2]);
    expect(buf.subarray(64, 66).toString()).toBe('bb');
    expect([meta[10], meta[12]]).toEqual([3, 0]);
    expect(buf.subarray(128, 131).toString()).toBe('ccc');
    const got = [meta[4]!, meta[8]!, meta[9]!];
    for (const fd of got) expect(native.fcntl_getfd(fd) & native.FD_CLOEXEC).toBe(native.FD_CLOEXEC);
    expect(native.recvmmsg(b, buf, 0, buf.length, meta, 8)).toBe(-native.EAGAIN);
    closeFds([a, b, ...e, ...got]);
  });

  it('reports EAGAIN as -EAGAIN and partial writes as a count', () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    native.setsockopt(a, native.SOL_SOCKET, native.SO_SNDBUF, 4096);
    const big = Buffer.alloc(1 << 20);
    const n = native.sendmsg(a, big);
    expect(n).toBeGreaterThan(0);
    expect(n).toBeLessThan(big.length);
    expect(native.sendmsg(a, big)).toBe(-native.EAGAIN);
    closeFds([a, b]);
  });

  it('reports MSG_TRUNC when a seqpacket record is larger than the buffer', () => {
    // (MSG_CTRUNC needs a full fd table on the receiver: see fd-socket.test.ts.)
    const [a, b] = native.socketpair(native.SOCK_SEQPACKET);
    native.sendmsg(a, Buffer.alloc(100));
    const meta = META();
    expect(native.recvmsg(b, Buffer.alloc(10), 0, 10, meta)).toBe(10);
    expect(meta[1]! & native.MSG_TRUNC).toBe(native.MSG_TRUNC);
    closeFds([a, b]);
  });

  it('never changes the file status flags of a received fd', () => {
    const [r, w] = native.pipe2(); // blocking pipe
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    const before = native.fcntl_getfl(r);
    expect(before & native.O_NONBLOCK).toBe(0);
    native.sendmsg(a, Buffer.from('x'), [r]);
    const meta = META();
    native.recvmsg(b, Buffer.alloc(1), 0, 1, meta);
    const got = meta[2]!;
    expect(native.fcntl_getfl(got)).toBe(before);
    expect(native.fcntl_getfl(r)).toBe(before);
    closeFds([r, w, a, b, got]);
  });
});

describe('fd factories and inspection', () => {
  it('eventfd, memfd with seals, pipe, pidfd, file, listener, connected socket', () => {
    const efd = native.eventfd(3, native.EFD_NONBLOCK);
    const m = native.memfd_create('bt-test');
    writeSync(m, 'hello');
    native.fcntl_add_seals(m, native.F_SEAL_SHRINK | native.F_SEAL_GROW | native.F_SEAL_WRITE);
    const [r, w] = native.pipe2();
    const pidfd = native.pidfd_open(process.pid);
    const file = openSync('/proc/self/status', 'r');
    const l = native.socket(native.SOCK_STREAM);
    native.bind(l, `\0bt-inspect-${process.pid}`);
    native.listen(l, 1);
    const [s1, s2] = native.socketpair(native.SOCK_SEQPACKET);
    try {
      expect(inspectFd(efd).kind).toBe('eventfd');
      const mi = inspectFd(m);
      expect(mi.kind).toBe('memfd');
      expect(mi.size).toBe(5);
      expect(mi.seals! & native.F_SEAL_WRITE).toBe(native.F_SEAL_WRITE);
      expect(() => writeSync(m, 'x')).toThrow(/EPERM/);
      expect(inspectFd(r).kind).toBe('pipe');
      expect(inspectFd(pidfd).kind).toBe('pidfd');
      expect(inspectFd(file).kind).toBe('file');
      expect(inspectFd(l).kind).toBe('unix-listener');
      expect(inspectFd(s1).kind).toBe('unix-seqpacket');
      expect(inspectFd(s1).socket).toEqual({ domain: native.AF_UNIX, type: 'seqpacket', listening: false });
      const b = Buffer.alloc(8);
      readSync(efd, b, 0, 8, null);
      expect(b.readBigUInt64LE(0)).toBe(3n);
    } finally {
      closeFds([efd, m, r, w, pidfd, file, l, s1, s2]);
    }
  });

  it('tells an unattached /dev/net/tun fd from a TAP', (ctx) => {
    let fd: number;
    try {
      fd = openSync('/dev/net/tun', 'r+');
    } catch (err) {
      skipUnless(ctx, `cannot open /dev/net/tun here: ${(err as Error).message}`);
      return;
    }
    expect(inspectFd(fd).kind).toBe('tun-unattached');
    closeFd(fd);
  });
});
