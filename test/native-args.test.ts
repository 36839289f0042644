// Every integer argument of every native export is checked at the boundary:
// fractions, negatives, 2^32 + n, NaN, Infinity and huge values are
// ERR_INVALID_ARGUMENT, thrown before any syscall, never wrapped to another fd.
import { describe, expect, it } from 'vitest';
import { FdSocket, StreamWriter, closeFds, fdSocketChannel, native } from '../src/index.js';
import { encodeHeader, encodeHello } from '../src/stream/codec.js';
import { isOpen, trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();

/** Values that must never pass as an fd, each built from a real open fd (so a wrap would hit it). */
const badFds = (fd: number): number[] => [fd + 0.5, -1, -fd, 2 ** 32 + fd, 2 ** 31 + fd, NaN, Infinity, -Infinity, 2 ** 53 + fd, 1e300];
/** Values that must never pass as an offset or a length. */
const badSizes = [-1, 0.5, NaN, Infinity, -Infinity, 2 ** 53, 2 ** 64, 1e300, -(2 ** 53)];

function expectInvalid(f: () => unknown, what: string): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err, `${what} must throw`).toBeInstanceOf(Error);
  expect((err as { code?: string }).code, `${what}: ${(err as Error).message}`).toBe('ERR_INVALID_ARGUMENT');
}

// Every export that takes an integer, with the argument positions that are integers.
// `call(v)` puts v into one integer position; the others are valid.
interface Case {
  name: string;
  call: (fd: number, v: number) => unknown;
  kind: 'fd' | 'size' | 'int';
  bad?: number[];
}

describe('native integer arguments', () => {
  const META = () => new Int32Array(2 + native.SCM_MAX_FD);
  const MMETA = () => new Int32Array(1 + 2 * (3 + native.SCM_MAX_FD));
  const buf = Buffer.alloc(64);
  const cases: Case[] = [
    { name: 'sendmsg fd', kind: 'fd', call: (_fd, v) => native.sendmsg(v, Buffer.from('x')) },
    { name: 'sendmsg fds[]', kind: 'fd', call: (fd, v) => native.sendmsg(fd, Buffer.from('x'), [v]) },
    { name: 'recvmsg fd', kind: 'fd', call: (_fd, v) => native.recvmsg(v, buf, 0, 8, META()) },
    { name: 'recvmsg offset', kind: 'size', call: (fd, v) => native.recvmsg(fd, buf, v, 8, META()) },
    { name: 'recvmsg length', kind: 'size', call: (fd, v) => native.recvmsg(fd, buf, 0, v, META()) },
    { name: 'recvmmsg fd', kind: 'fd', call: (_fd, v) => native.recvmmsg(v, buf, 0, 8, MMETA(), 2) },
    { name: 'recvmmsg offset', kind: 'size', call: (fd, v) => native.recvmmsg(fd, buf, v, 8, MMETA(), 2) },
    { name: 'recvmmsg length', kind: 'size', call: (fd, v) => native.recvmmsg(fd, buf, 0, v, MMETA(), 2) },
    { name: 'recvmmsg vlen', kind: 'int', call: (fd, v) => native.recvmmsg(fd, buf, 0, 8, MMETA(), v), bad: [0, 65, 2.5, -1, 2 ** 32 + 2, NaN, Infinity] },
    { name: 'socket type', kind: 'int', call: (_fd, v) => native.socket(v), bad: [1.5, -1, 2 ** 32 + 1, NaN, Infinity, 2 ** 53] },
    { name: 'socketpair type', kind: 'int', call: (_fd, v) => native.socketpair(v), bad: [1.5, -1, 2 ** 32 + 1, NaN, Infinity, 2 ** 53] },
    { name: 'bind fd', kind: 'fd', call: (_fd, v) => native.bind(v, '\0bt-args-test') },
    { name: 'listen fd', kind: 'fd', call: (_fd, v) => native.listen(v, 1) },
    { name: 'listen backlog', kind: 'int', call: (fd, v) => native.listen(fd, v), bad: [1.5, -1, 2 ** 32 + 1, NaN, Infinity, 2 ** 53] },
    { name: 'accept4 fd', kind: 'fd', call: (_fd, v) => native.accept4(v) },
    { name: 'connect fd', kind: 'fd', call: (_fd, v) => native.connect(v, '\0bt-args-none') },
    { name: 'getsockopt fd', kind: 'fd', call: (_fd, v) => native.getsockopt(v, native.SOL_SOCKET, native.SO_TYPE) },
    { name: 'getsockopt level', kind: 'int', call: (fd, v) => native.getsockopt(fd, v, native.SO_TYPE), bad: [1.5, -1, 2 ** 32 + 1, NaN, Infinity] },
    { name: 'getsockopt name', kind: 'int', call: (fd, v) => native.getsockopt(fd, native.SOL_SOCKET, v), bad: [3.5, -1, 2 ** 32 + 3, NaN, Infinity] },
    { name: 'setsockopt fd', kind: 'fd', call: (_fd, v) => native.setsockopt(v, native.SOL_SOCKET, native.SO_SNDBUF, 65536) },
    { name: 'setsockopt level', kind: 'int', call: (fd, v) => native.setsockopt(fd, v, native.SO_SNDBUF, 65536), bad: [1.5, -1, 2 ** 32 + 1, NaN] },
    { name: 'setsockopt name', kind: 'int', call: (fd, v) => native.setsockopt(fd, native.SOL_SOCKET, v, 65536), bad: [7.5, -1, 2 ** 32 + 7, NaN] },
    { name: 'setsockopt value', kind: 'int', call: (fd, v) => native.setsockopt(fd, native.SOL_SOCKET, native.SO_SNDBUF, v), bad: [65536.5, 2 ** 32 + 65536, -(2 ** 31) - 1, NaN, Infinity] },
    { name: 'getpeercred fd', kind: 'fd', call: (_fd, v) => native.getpeercred(v) },
    { name: 'getpeerpidfd fd', kind: 'fd', call: (_fd, v) => native.getpeerpidfd(v) },
    { name: 'getsockname fd', kind: 'fd', call: (_fd, v) => native.getsockname(v) },
    { name: 'getpeername fd', kind: 'fd', call: (_fd, v) => native.getpeername(v) },
    { name: 'shutdown fd', kind: 'fd', call: (_fd, v) => native.shutdown(v, native.SHUT_WR) },
    { name: 'shutdown how', kind: 'int', call: (fd, v) => native.shutdown(fd, v), bad: [1.5, -1, 3, 2 ** 32 + 1, NaN] },
    { name: 'close fd', kind: 'fd', call: (_fd, v) => native.close(v) },
    { name: 'close_range first', kind: 'fd', call: (fd, v) => native.close_range(v, fd) },
    { name: 'close_range last', kind: 'fd', call: (fd, v) => native.close_range(fd, v) },
    { name: 'dup fd', kind: 'fd', call: (_fd, v) => native.dup(v) },
    { name: 'dup minFd', kind: 'int', call: (fd, v) => native.dup(fd, v), bad: [0.5, -1, 2 ** 32, NaN, Infinity] },
    { name: 'fcntl_getfl fd', kind: 'fd', call: (_fd, v) => native.fcntl_getfl(v) },
    { name: 'fcntl_getfd fd', kind: 'fd', call: (_fd, v) => native.fcntl_getfd(v) },
    { name: 'fstat fd', kind: 'fd', call: (_fd, v) => native.fstat(v) },
    { name: 'fstat_mode fd', kind: 'fd', call: (_fd, v) => native.fstat_mode(v) },
    { name: 'eventfd initval', kind: 'int', call: (_fd, v) => native.eventfd(v), bad: [0.5, -1, 2 ** 32, NaN, Infinity] },
    { name: 'eventfd flags', kind: 'int', call: (_fd, v) => native.eventfd(0, v), bad: [0.5, -1, 2 ** 32, NaN, Infinity] },
    { name: 'memfd_create flags', kind: 'int', call: (_fd, v) => native.memfd_create('x', v), bad: [0.5, -1, 2 ** 32, NaN, Infinity] },
    { name: 'fcntl_add_seals fd', kind: 'fd', call: (_fd, v) => native.fcntl_add_seals(v, native.F_SEAL_SEAL) },
    { name: 'fcntl_add_seals seals', kind: 'int', call: (fd, v) => native.fcntl_add_seals(fd, v), bad: [0.5, -1, 2 ** 32 + 1, NaN, Infinity] },
    { name: 'fcntl_get_seals fd', kind: 'fd', call: (_fd, v) => native.fcntl_get_seals(v) },
    { name: 'pipe2 flags', kind: 'int', call: (_fd, v) => native.pipe2(v), bad: [0.5, -1, 2 ** 32, NaN, Infinity] },
    { name: 'pidfd_open pid', kind: 'int', call: (_fd, v) => native.pidfd_open(v), bad: [process.pid + 0.5, 0, -1, 2 ** 32 + process.pid, NaN, Infinity] },
    { name: 'kcmp pid1', kind: 'int', call: (fd, v) => native.kcmp(v, process.pid, native.KCMP_FILE, fd, fd), bad: [process.pid + 0.5, 0, -1, 2 ** 32 + process.pid, NaN] },
    { name: 'kcmp pid2', kind: 'int', call: (fd, v) => native.kcmp(process.pid, v, native.KCMP_FILE, fd, fd), bad: [process.pid + 0.5, 0, -1, 2 ** 32 + process.pid, NaN] },
    { name: 'kcmp type', kind: 'int', call: (fd, v) => native.kcmp(process.pid, process.pid, v, fd, fd), bad: [0.5, -1, 2 ** 32, NaN, 7, 100] },
    { name: 'kcmp idx1', kind: 'fd', call: (fd, v) => native.kcmp(process.pid, process.pid, native.KCMP_FILE, v, fd) },
    { name: 'kcmp idx2', kind: 'fd', call: (fd, v) => native.kcmp(process.pid, process.pid, native.KCMP_FILE, fd, v) },
    { name: 'close_deferred fds[]', kind: 'fd', call: (_fd, v) => native.close_deferred([v]) },
    // An Int32Array cannot hold a wrapped value: only negatives can be wrong.
    { name: 'fstat_modes fds[]', kind: 'int', call: (_fd, v) => native.fstat_modes(Int32Array.of(v), new Int32Array(2)), bad: [-1, -2147483648] },
    { name: 'mmap_memfd fd', kind: 'fd', call: (_fd, v) => native.mmap_memfd(v, 4096) },
    { name: 'mmap_memfd length', kind: 'int', call: (fd, v) => native.mmap_memfd(fd, v), bad: [0, -1, 0.5, NaN, Infinity, 2 ** 53, 1e300] },
    { name: 'tunsetiff fd', kind: 'fd', call: (_fd, v) => native.tunsetiff(v, '', native.IFF_TAP) },
    { name: 'tunsetiff flags', kind: 'int', call: (fd, v) => native.tunsetiff(fd, '', v), bad: [2.5, -1, 65536, 2 ** 32 + 2, NaN] },
    { name: 'tungetiff fd', kind: 'fd', call: (_fd, v) => native.tungetiff(v) },
    { name: 'tunsetqueue fd', kind: 'fd', call: (_fd, v) => native.tunsetqueue(v, native.IFF_ATTACH_QUEUE) },
    { name: 'tunsetqueue flags', kind: 'int', call: (fd, v) => native.tunsetqueue(fd, v), bad: [2.5, -1, 65536 + 0x200, NaN] },
    { name: 'tungetvnethdrsz fd', kind: 'fd', call: (_fd, v) => native.tungetvnethdrsz(v) },
    { name: 'tunsetvnethdrsz fd', kind: 'fd', call: (_fd, v) => native.tunsetvnethdrsz(v, 12) },
    { name: 'tunsetvnethdrsz size', kind: 'int', call: (fd, v) => native.tunsetvnethdrsz(fd, v), bad: [12.5, -1, 2 ** 32 + 12, NaN] },
    { name: 'tunsetoffload fd', kind: 'fd', call: (_fd, v) => native.tunsetoffload(v, 0) },
    { name: 'tunsetoffload flags', kind: 'int', call: (fd, v) => native.tunsetoffload(fd, v), bad: [0.5, -1, 2 ** 32, NaN] },
    { name: 'tungetfeatures fd', kind: 'fd', call: (_fd, v) => native.tungetfeatures(v) },
    { name: 'tungetdevnetns fd', kind: 'fd', call: (_fd, v) => native.tungetdevnetns(v) },
    { name: 'Poller fd', kind: 'fd', call: (_fd, v) => new native.Poller(v, () => undefined) },
    {
      name: 'Poller.start events',
      kind: 'int',
      call: (fd, v) => {
        const p = new native.Poller(fd, () => undefined);
        try {
          p.start(v);
        } finally {
          p.close();
        }
      },
      bad: [1.5, -1, 16, 2 ** 32 + 1, NaN],
    },
  ];

  it('covers every export that takes an integer', () => {
    const noIntegers = new Set(['if_nametoindex', 'closer_stats', 'munmap_buffer', 'mapping_stats']); // a string only; no arguments; a Buffer only
    const covered = new Set(cases.map((c) => c.name.split(' ')[0]!.split('.')[0]!));
    const exported = Object.entries(native)
      .filter(([k, v]) => typeof v === 'function' && !noIntegers.has(k))
      .map(([k]) => k);
    for (const k of exported) expect(covered.has(k), `native.${k} has integer arguments but no case here`).toBe(true);
  });

  it.each(cases)('$name: bad values are ERR_INVALID_ARGUMENT, before any syscall', (c) => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    const efd = native.eventfd(0);
    try {
      const target = c.name.startsWith('close_range') ? efd : a;
      const values = c.bad ?? (c.kind === 'fd' ? badFds(target) : badSizes);
      for (const v of values) expectInvalid(() => c.call(target, v), `${c.name}(${v})`);
      // nothing was closed, sent or received by a wrapped value
      expect(isOpen(a) && isOpen(b) && isOpen(efd)).toBe(true);
      expect(native.recvmsg(b, Buffer.alloc(8), 0, 8, META())).toBe(-native.EAGAIN);
    } finally {
      closeFds([a, b, efd]);
    }
  });

  it('close(2^32 + fd) and close(fd + 0.5) leave fd open; sendmsg([2^32 + fd]) sends nothing', () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    const efd = native.eventfd(0);
    try {
      expectInvalid(() => native.close(2 ** 32 + efd), 'close(2^32 + fd)');
      expectInvalid(() => native.close(efd + 0.5), 'close(fd + 0.5)');
      expect(isOpen(efd)).toBe(true);
      expectInvalid(() => native.sendmsg(a, Buffer.from('x'), [2 ** 32 + efd]), 'sendmsg([2^32 + fd])');
      expectInvalid(() => native.sendmsg(a, Buffer.from('x'), Int32Array.of(-1)), 'sendmsg(Int32Array[-1])');
      expect(native.recvmsg(b, Buffer.alloc(8), 0, 8, META())).toBe(-native.EAGAIN);
    } finally {
      closeFds([a, b, efd]);
    }
  });

  it('recvmsg/recvmmsg bounds: offset + length is checked without overflow', () => {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    try {
      const small = Buffer.alloc(16);
      for (const [off, len] of [
        [2 ** 53 - 1, 1],
        [1, 2 ** 53 - 1],
        [2 ** 53 - 1, 2 ** 53 - 1],
        [16, 1],
        [8, 9],
        [17, 0],
      ] as const) {
        expectInvalid(() => native.recvmsg(a, small, off, len, META()), `recvmsg(${off}, ${len})`);
        expectInvalid(() => native.recvmmsg(a, small, off, len, MMETA(), 1), `recvmmsg(${off}, ${len})`);
      }
      // in range: fine (nothing there yet)
      expect(native.recvmsg(a, small, 16, 0, META())).toBe(-native.EAGAIN);
      expect(native.recvmsg(a, small, 8, 8, META())).toBe(-native.EAGAIN);
    } finally {
      closeFds([a, b]);
    }
  });
});

describe('FdSocket.send and the stream codec check ranges the same way', () => {
  it('FdSocket.send refuses 2^32 + fd, fractions, negatives, NaN and Infinity; nothing arrives', async () => {
    const [a, b] = FdSocket.pair('stream');
    const efd = native.eventfd(0);
    try {
      for (const v of badFds(efd)) {
        await expect(a.send(Buffer.from('x'), [v]), `send([${v}])`).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
        expect(() => a.write(Buffer.from('x'), [v]), `write([${v}])`).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
      }
      // the socket still works, and the first thing the peer gets is this, with its one fd
      await a.send(Buffer.from('ok'), [efd]);
      const chunk = await b.read();
      expect(chunk && Buffer.from(chunk.data).toString()).toBe('ok');
      expect(chunk!.fds).toHaveLength(1);
      expect(chunk!.fdSeq).toBe(0);
      closeFds(chunk!.fds);
    } finally {
      a.close();
      b.close();
      closeFds([efd]);
    }
  });

  it('the codec refuses values its fields cannot hold instead of masking them (instance 2^32 + 7 is not 7)', async () => {
    const hello = (instance: number, version = 1) => ({
      minVersion: 1,
      maxVersion: 1,
      features: 0,
      canPassFds: false,
      fdBudget: 10,
      probe: null,
      offers: [{ kind: 'generic' as const, id: 'dev', instance, version, fdCount: 0, wantsFds: false, required: false }],
      info: null,
    });
    expect(() => encodeHello(hello(7))).not.toThrow();
    for (const v of [2 ** 32 + 7, -1, 7.5, NaN, Infinity, 2 ** 53]) {
      expect(() => encodeHello(hello(v)), `instance ${v}`).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
      expect(() => encodeHello(hello(1, v)), `version ${v}`).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
    expect(() => encodeHeader({ type: 0x10 + 256, flags: 0, bodyLength: 0, fdCount: 0, firstFdSeq: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => encodeHeader({ type: 0x10, flags: 0, bodyLength: 2 ** 32, fdCount: 0, firstFdSeq: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => encodeHeader({ type: 0x10, flags: 0, bodyLength: 0, fdCount: 2 ** 32 + 1, firstFdSeq: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));

    // A writer over a real socket: the section with instance 2^32 + 7 is refused and nothing goes out.
    const [a, b] = FdSocket.pair('stream');
    try {
      const w = new StreamWriter(fdSocketChannel(a));
      await expect(w.section({ id: 'dev', instance: 2 ** 32 + 7, version: 1 }, [], Buffer.from('state'))).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
      await new Promise((r) => setTimeout(r, 20));
      expect(native.recvmsg(b.fd, Buffer.alloc(64), 0, 64, new Int32Array(2 + native.SCM_MAX_FD))).toBe(-native.EAGAIN);
    } finally {
      a.close();
      b.close();
    }
  });
});
