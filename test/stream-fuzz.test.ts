// Property-based hardening of the stream reader (fast-check): valid streams split
// at random points and mutated in bytes and fds. Every case must end in items or a
// BackendTransferError with a stream code (never another exception), and with every
// fd the reader received closed or handed out. BT_FUZZ_RUNS sets the number of
// cases (10,000 in the suite; `npm run fuzz` runs many more).
import fc from 'fast-check';
import { crc32 } from 'node:zlib';
import { readdirSync, readlinkSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackendTransferError, Features, closeFds, native, type StreamItem } from '../src/index.js';
import { buildStream, closeItems, feedSplit, targetReader, type BuiltStream, type DeviceSpec } from './helpers/stream.js';

const RUNS = Number(process.env.BT_FUZZ_RUNS ?? 10_000);
const ALLOWED = new Set([
  'ERR_STREAM_TRUNCATED',
  'ERR_STREAM_BAD_MAGIC',
  'ERR_STREAM_VERSION',
  'ERR_STREAM_UNKNOWN_FRAME',
  'ERR_STREAM_TOO_LARGE',
  'ERR_STREAM_CRC',
  'ERR_STREAM_FD_MISSING',
  'ERR_STREAM_FD_EXTRA',
  'ERR_STREAM_FD_SEQUENCE',
  'ERR_STREAM_FD_KIND',
  'ERR_STREAM_NOT_NEGOTIATED',
  'ERR_STREAM_DUPLICATE_SECTION',
  'ERR_STREAM_PROTOCOL',
  'ERR_STREAM_MEMFD_UNSEALED',
  'ERR_STREAM_MEMFD_SIZE',
  'ERR_DEVICE_VERSION_TOO_NEW',
  'ERR_DEVICE_VERSION_TOO_OLD',
  'ERR_FD_BUDGET',
  'ERR_DEVICE_REFUSED',
]);

const countFds = () => readdirSync('/proc/self/fd').length;

function payload(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed) & 0xff;
  return b;
}

// A pool of valid streams of several shapes: fds of two kinds, payloads inline,
// in parts and in memfds.
const SHAPES: { devices: DeviceSpec[]; opts?: Parameters<typeof buildStream>[1] }[] = [
  { devices: [] },
  { devices: [{ kind: 'state', id: 'cpu', payload: payload(100, 1) }] },
  { devices: [{ kind: 'tap', id: 'net0', fds: ['eventfd', 'eventfd'], payload: payload(40, 2) }] },
  {
    devices: [
      { kind: 'generic', id: 'g', fds: ['memfd', 'eventfd', 'memfd'] },
      { kind: 'state', id: 's', payload: payload(9000, 3) },
    ],
    opts: { partSize: 2000 },
  },
  {
    devices: [{ kind: 'vu', id: 'blk0', fds: ['eventfd'], payload: payload(5000, 4) }],
    opts: { features: Features.FDS | Features.BODY_CRC | Features.MEMFD_PAYLOAD, partSize: 2048, memfdThreshold: 1024 },
  },
  { devices: Array.from({ length: 5 }, (_, i) => ({ kind: 'chr', id: `c${i}`, fds: ['eventfd'] as ('eventfd' | 'memfd')[], payload: payload(i * 10, i) })) },
  { devices: [{ kind: 'state', id: 'nocrc', payload: payload(3000, 9) }], opts: { features: Features.FDS, partSize: 1000 } },
];

let pool: BuiltStream[] = [];
let reference: string[][] = [];

function summary(items: StreamItem[]): string[] {
  return items.map((i) => (i.type === 'section' ? `${i.frame}:${i.idstr}:${i.payload.length}:${i.attachments.length}` : i.type));
}

beforeAll(async () => {
  pool = [];
  for (const s of SHAPES) pool.push(await buildStream(s.devices, s.opts));
  reference = pool.map((b) => {
    const items = feedSplit(
      targetReader(b),
      b.channel.writes.map((w) => ({ bytes: w.bytes, fds: w.fds.map((fd) => native.dup(fd)) })),
    );
    closeItems(items);
    return summary(items);
  });
});

afterAll(() => {
  for (const b of pool) b.channel.close();
});

type Mutation =
  | { kind: 'none' }
  | { kind: 'flip'; at: number; xor: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: number[] }
  | { kind: 'delete'; at: number; len: number }
  | { kind: 'duplicate'; at: number; len: number }
  | { kind: 'drop-fd'; write: number }
  | { kind: 'extra-fd'; write: number }
  | { kind: 'pipe-for-fd'; write: number }
  | { kind: 'move-fds'; from: number; to: number }
  // Frame-level mutations keep the CRCs right, so they reach the checks behind them.
  | { kind: 'drop-frame'; frame: number }
  | { kind: 'dup-frame'; frame: number }
  | { kind: 'swap-frames'; frame: number }
  | { kind: 'shift-fd-seq'; frame: number; by: number }
  | { kind: 'patch-body'; frame: number; at: number; xor: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.constant({ kind: 'none' as const }),
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 24 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ kind: fc.constant('drop-fd' as const), write: fc.nat() }),
  fc.record({ kind: fc.constant('extra-fd' as const), write: fc.nat() }),
  fc.record({ kind: fc.constant('pipe-for-fd' as const), write: fc.nat() }),
  fc.record({ kind: fc.constant('move-fds' as const), from: fc.nat(), to: fc.nat() }),
  fc.record({ kind: fc.constant('drop-frame' as const), frame: fc.nat() }),
  fc.record({ kind: fc.constant('dup-frame' as const), frame: fc.nat() }),
  fc.record({ kind: fc.constant('swap-frames' as const), frame: fc.nat() }),
  fc.record({ kind: fc.constant('shift-fd-seq' as const), frame: fc.nat(), by: fc.integer({ min: -3, max: 3 }).filter((x) => x !== 0) }),
  fc.record({ kind: fc.constant('patch-body' as const), frame: fc.nat(), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
);

/** Re-computes a frame's header and body CRCs after a change (the frame starts at `at` in `b`). */
function fixCrcs(b: Buffer, at: number): void {
  b.writeUInt32LE(crc32(b.subarray(at, at + 16)), at + 16);
  const len = b.readUInt32LE(at + 4);
  b.writeUInt32LE(crc32(b.subarray(at + 20, at + 20 + len)), at + 20 + len);
}

/** Applies a mutation to fresh duplicates of a stream's writes; returns them and any fd it made that the reader never gets. */
function mutated(b: BuiltStream, m: Mutation): { writes: { bytes: Buffer; fds: number[] }[]; strays: number[] } {
  const writes = b.channel.writes.map((w) => ({ bytes: w.bytes, fds: w.fds.map((fd) => native.dup(fd)) }));
  const strays: number[] = [];
  const all = () => Buffer.concat(writes.map((w) => w.bytes));
  const setBytes = (buf: Buffer) => {
    // Redistribute the bytes over the writes, keeping each write's start where possible.
    let off = 0;
    for (let i = 0; i < writes.length; i++) {
      const len = i === writes.length - 1 ? Math.max(0, buf.length - off) : Math.min(writes[i]!.bytes.length, Math.max(0, buf.length - off));
      writes[i]!.bytes = buf.subarray(off, off + len);
      off += len;
    }
  };
  const withFds = writes.map((w, i) => (w.fds.length ? i : -1)).filter((i) => i >= 0);
  switch (m.kind) {
    case 'none':
      break;
    case 'flip': {
      const buf = Buffer.from(all());
      if (buf.length) buf[m.at % buf.length]! ^= m.xor;
      setBytes(buf);
      break;
    }
    case 'truncate': {
      const buf = all();
      setBytes(buf.subarray(0, m.at % (buf.length + 1)));
      break;
    }
    case 'insert': {
      const buf = all();
      const at = m.at % (buf.length + 1);
      setBytes(Buffer.concat([buf.subarray(0, at), Buffer.from(m.bytes), buf.subarray(at)]));
      break;
    }
    case 'delete': {
      const buf = all();
      const at = m.at % (buf.length + 1);
      setBytes(Buffer.concat([buf.subarray(0, at), buf.subarray(at + m.len)]));
      break;
    }
    case 'duplicate': {
      const buf = all();
      const at = m.at % (buf.length + 1);
      setBytes(Buffer.concat([buf.subarray(0, at + m.len), buf.subarray(at)]));
      break;
    }
    case 'drop-fd': {
      if (withFds.length === 0) break;
      const w = writes[withFds[m.write % withFds.length]!]!;
      const fd = w.fds.pop()!;
      strays.push(fd);
      break;
    }
    case 'extra-fd':
      writes[m.write % writes.length]!.fds.push(native.eventfd(0));
      break;
    case 'pipe-for-fd': {
      if (withFds.length === 0) break;
      const w = writes[withFds[m.write % withFds.length]!]!;
      const [r, wr] = native.pipe2();
      strays.push(w.fds[0]!, wr);
      w.fds[0] = r;
      break;
    }
    case 'move-fds': {
      if (withFds.length === 0) break;
      const from = writes[withFds[m.from % withFds.length]!]!;
      const to = writes[m.to % writes.length]!;
      to.fds.push(...from.fds.splice(0));
      break;
    }
    // Each write is one frame (the first also holds the magic); frame 0 (HELLO) is left alone.
    case 'drop-frame': {
      if (writes.length < 2) break;
      const i = 1 + (m.frame % (writes.length - 1));
      strays.push(...writes[i]!.fds);
      writes.splice(i, 1);
      break;
    }
    case 'dup-frame': {
      if (writes.length < 2) break;
      const i = 1 + (m.frame % (writes.length - 1));
      writes.splice(i, 0, { bytes: writes[i]!.bytes, fds: writes[i]!.fds.map((fd) => native.dup(fd)) });
      break;
    }
    case 'swap-frames': {
      if (writes.length < 3) break;
      const i = 1 + (m.frame % (writes.length - 2));
      [writes[i], writes[i + 1]] = [writes[i + 1]!, writes[i]!];
      break;
    }
    case 'shift-fd-seq': {
      if (withFds.length === 0) break;
      const w = writes[withFds[m.frame % withFds.length]!]!;
      const b = Buffer.from(w.bytes);
      const at = w === writes[0] ? 8 : 0;
      b.writeUInt32LE(Math.max(0, b.readUInt32LE(at + 12) + m.by), at + 12);
      fixCrcs(b, at);
      w.bytes = b;
      break;
    }
    case 'patch-body': {
      const w = writes[m.frame % writes.length]!;
      const at = w === writes[0] ? 8 : 0;
      const b = Buffer.from(w.bytes);
      const len = b.readUInt32LE(at + 4);
      if (len === 0) break;
      b[at + 20 + (m.at % len)]! ^= m.xor;
      fixCrcs(b, at);
      w.bytes = b;
      break;
    }
  }
  return { writes, strays };
}

describe('stream reader fuzzing', () => {
  it(`${RUNS} random splits and mutations: a clear error or the right items, and no fd left behind`, () => {
    let errors = 0;
    const codes = new Map<string, number>();
    fc.assert(
      fc.property(fc.nat(pool.length - 1), fc.array(fc.nat(), { maxLength: 12 }), mutationArb, (which, cutsRaw, m) => {
        const b = pool[which]!;
        const before = countFds();
        const { writes, strays } = mutated(b, m);
        const total = writes.reduce((n, w) => n + w.bytes.length, 0);
        const cuts = cutsRaw.map((c) => c % (total + 1));
        const reader = targetReader(b);
        let items: StreamItem[] = [];
        let error: unknown = null;
        try {
          items = feedSplit(reader, writes, cuts);
          reader.end();
        } catch (e) {
          error = e;
        }
        closeItems(items);
        reader.close();
        closeFds(strays);
        if (error !== null) {
          if (!(error instanceof BackendTransferError) || !ALLOWED.has(error.code)) throw error;
          errors++;
          codes.set(error.code, (codes.get(error.code) ?? 0) + 1);
          if (m.kind === 'none') throw new Error(`a valid stream failed: ${(error as Error).message}`);
        } else if (m.kind === 'none') {
          expect(summary(items)).toEqual(reference[which]);
        }
        const now = countFds();
        if (now !== before) {
          const links = readdirSync('/proc/self/fd').map((f) => {
            try {
              return `${f}:${readlinkSync('/proc/self/fd/' + f)}`;
            } catch {
              return f;
            }
          });
          throw new Error(`fd count ${now} after the case, ${before} before (mutation ${m.kind}): ${links.join(' ')}`);
        }
      }),
      { numRuns: RUNS },
    );
    // The mutations do reach the checks: most cases fail, with many different codes.
    expect(errors).toBeGreaterThan(RUNS / 3);
    expect(codes.size).toBeGreaterThanOrEqual(12);
    console.log(`fuzz: ${RUNS} cases, ${errors} rejected; codes: ${[...codes].map(([c, n]) => `${c} ${n}`).join(', ')}`);
  }, 600_000);
});
