// Building migration streams for tests: a real writer into a MemoryChannel (each
// frame's fds duplicated, as SCM_RIGHTS would), and a crafter for malformed frames.
import { crc32 } from 'node:zlib';
import {
  Features,
  FrameType,
  MAGIC,
  MemoryChannel,
  StreamReader,
  StreamWriter,
  answerOffers,
  computePlan,
  native,
  closeFds,
  type Hello,
  type OutgoingAttachment,
  type Plan,
  type StreamItem,
  type StreamReaderOptions,
  type Welcome,
} from '../../src/index.js';
import { encodeHeader } from '../../src/stream/codec.js';

export interface DeviceSpec {
  kind: string;
  id: string;
  instance?: number;
  version?: number;
  /** fds attached: created fresh (eventfds / memfds) and closed after writing. */
  fds?: ('eventfd' | 'memfd')[];
  payload?: Uint8Array;
  required?: boolean;
}

export interface BuiltStream {
  channel: MemoryChannel;
  hello: Hello;
  welcome: Welcome;
  plan: Plan;
}

export function makeFd(kind: 'eventfd' | 'memfd', tag: number): number {
  if (kind === 'eventfd') return native.eventfd(tag);
  const fd = native.memfd_create(`t${tag}`);
  return fd;
}

/**
 * Writes a whole main stream (HELLO, PLAN, one section per device, END_OF_STATE,
 * EOF) with a real StreamWriter. The target's answer accepts every device with fds.
 */
export async function buildStream(devices: DeviceSpec[], opts: { features?: number; partSize?: number; memfdThreshold?: number; canPassFds?: boolean } = {}): Promise<BuiltStream> {
  const canPassFds = opts.canPassFds ?? true;
  const features = opts.features ?? Features.FDS | Features.BODY_CRC;
  const channel = new MemoryChannel(canPassFds);
  const hello: Hello = {
    minVersion: 1,
    maxVersion: 1,
    features,
    canPassFds,
    fdBudget: 100000,
    offers: devices.map((d) => ({
      kind: d.kind,
      id: d.id,
      instance: d.instance ?? 0,
      version: d.version ?? 1,
      fdCount: d.fds?.length ?? 0,
      wantsFds: (d.fds?.length ?? 0) > 0,
      required: d.required ?? false,
    })),
    info: { test: true },
  };
  const welcome = answerOffers(hello, () => ({ minVersion: 1, maxVersion: 3, acceptFds: true }), { canPassFds, features, fdBudget: 100000 });
  const plan = computePlan(hello, welcome);
  const w = new StreamWriter(channel, { partSize: opts.partSize ?? 4096, memfdThreshold: opts.memfdThreshold });
  await w.hello(hello);
  await w.plan(plan);
  let tag = 1;
  for (const d of devices) {
    const created = (d.fds ?? []).map((k) => makeFd(k, tag++));
    const atts: OutgoingAttachment[] = created.map((fd, i) => ({ kind: d.fds![i]!, name: `${d.fds![i]}${i}`, meta: { i }, fd }));
    try {
      await w.section({ id: d.id, instance: d.instance ?? 0, version: d.version ?? 1 }, atts, d.payload ?? new Uint8Array(0));
    } finally {
      closeFds(created);
    }
  }
  await w.endOfState();
  await w.eof();
  return { channel, hello, welcome, plan };
}

/** The recorded writes as (bytes, fds) with fresh duplicates of the fds, for one feeding. */
export function dupWrites(channel: MemoryChannel): { bytes: Buffer; fds: number[] }[] {
  return channel.writes.map((w) => ({ bytes: w.bytes, fds: w.fds.map((fd) => native.dup(fd)) }));
}

/**
 * Feeds writes to a reader split at `cuts` (stream offsets), and at the end of
 * every write that carries fds (where the kernel ends a recvmsg). Each write's
 * fds go with the chunk holding the write's first byte. Returns all items; rethrows the
 * reader's error after closing what it had handed out.
 */
export function feedSplit(reader: StreamReader, writes: { bytes: Buffer; fds: number[] }[], cuts: number[] = []): StreamItem[] {
  const all = Buffer.concat(writes.map((w) => w.bytes));
  const fdAt = new Map<number, number[]>();
  const fdEnds: number[] = [];
  let off = 0;
  for (const w of writes) {
    if (w.fds.length) fdAt.set(off, [...(fdAt.get(off) ?? []), ...w.fds]);
    off += w.bytes.length;
    if (w.fds.length) fdEnds.push(off);
  }
  // As the kernel does: a read that takes fds ends at the latest with the write
  // they were sent with (it may start with earlier bytes that came without fds).
  const points = [...new Set([0, ...[...cuts, ...fdEnds].filter((c) => c > 0 && c < all.length), all.length])].sort((a, b) => a - b);
  if (points.length === 1) points.push(0); // no bytes at all: still one feed, with every fd
  const items: StreamItem[] = [];
  const fdStarts = [...fdAt.keys()];
  try {
    for (let i = 0; i + 1 < points.length; i++) {
      const [a, b] = [points[i]!, points[i + 1]!];
      const fds: number[] = [];
      const last = i + 2 === points.length;
      const mine = (s: number) => (s >= a && s < b) || (last && s >= b); // fds past the end go with the last chunk
      for (const s of fdStarts) if (mine(s) && fdAt.has(s)) fds.push(...fdAt.get(s)!);
      for (const s of fdStarts) if (mine(s)) fdAt.delete(s);
      items.push(...reader.feed(all.subarray(a, b), fds));
    }
  } catch (err) {
    closeItems(items);
    for (const fds of fdAt.values()) closeFds(fds);
    throw err;
  }
  return items;
}

export function closeItems(items: StreamItem[]): void {
  for (const it of items) {
    if (it.type === 'section') {
      closeFds(it.attachments.map((a) => a.fd));
      if (it.payloadFd !== undefined) closeFds([it.payloadFd]);
    }
  }
}

/** A target reader set up with the negotiated WELCOME. */
export function targetReader(built: BuiltStream, options: Partial<StreamReaderOptions> = {}): StreamReader {
  const r = new StreamReader({ role: 'target', ...options });
  r.setWelcome(built.welcome);
  return r;
}

/** A raw frame, for malformed input: header (with a correct header CRC unless told otherwise), body, body CRC. */
export function rawFrame(type: number, body: Uint8Array, o: { flags?: number; fdCount?: number; firstFdSeq?: number; badHeaderCrc?: boolean; badBodyCrc?: boolean } = {}): Buffer {
  const header = encodeHeader({ type, flags: o.flags ?? 0, bodyLength: body.length, fdCount: o.fdCount ?? 0, firstFdSeq: o.firstFdSeq ?? 0 });
  if (o.badHeaderCrc) header.writeUInt32LE((header.readUInt32LE(16) ^ 1) >>> 0, 16);
  const trailer = Buffer.alloc(4);
  trailer.writeUInt32LE((crc32(body) ^ (o.badBodyCrc ? 1 : 0)) >>> 0, 0);
  return Buffer.concat([header, body, trailer]);
}

/**
 * HELLO and PLAN of a stream whose only device is the VMM state ('ram', instance
 * 0, version 1, no fds), with `features`; the target's side of the handshake is
 * left out (benchmarks and tests that write state-only streams).
 */
export function stateOnlyHandshake(features: number, o: { canPassFds?: boolean; fdBudget?: number } = {}): { hello: Hello; plan: Plan } {
  const hello: Hello = {
    minVersion: 1,
    maxVersion: 1,
    features,
    canPassFds: o.canPassFds ?? true,
    fdBudget: o.fdBudget ?? 0xffffffff,
    offers: [{ kind: 'state', id: 'ram', instance: 0, version: 1, fdCount: 0, wantsFds: false, required: true }],
    info: null,
  };
  const plan: Plan = { version: 1, features, totalFds: 0, devices: [{ kind: 'state', id: 'ram', instance: 0, version: 1, withFds: false, fdCount: 0 }] };
  return { hello, plan };
}

export { MAGIC, FrameType };
