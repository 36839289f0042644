// The migration stream: round trips in any split, the return path, state-only
// channels, memfd payloads, and one test per hardening error. Every test ends with
// no fd left open (trackFdLeaks).
import { PassThrough } from 'node:stream';
import { writeSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  AckStage,
  BackendTransferError,
  Features,
  FrameType,
  MAGIC,
  MemoryChannel,
  StreamReader,
  StreamWriter,
  answerOffers,
  closeFds,
  computePlan,
  inspectFd,
  native,
  pumpReadable,
  writableChannel,
  type SectionItem,
  type StreamItem,
} from '../src/index.js';
import { encodeHeader, encodeHello, encodePlan, encodeSectionPrefix } from '../src/stream/codec.js';
import { trackFdLeaks } from './helpers/fds.js';
import { buildStream, closeItems, dupWrites, feedSplit, rawFrame, targetReader } from './helpers/stream.js';

trackFdLeaks();

const big = Buffer.alloc(20_000);
for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;

const DEVICES = [
  { kind: 'tap', id: 'net0', fds: ['eventfd', 'eventfd', 'memfd'] as ('eventfd' | 'memfd')[], payload: Buffer.from('tap state') },
  { kind: 'state', id: 'cpu0', payload: big },
  { kind: 'generic', id: 'ram', fds: ['memfd'] as ('eventfd' | 'memfd')[] },
];

function sections(items: StreamItem[]): SectionItem[] {
  return items.filter((i): i is SectionItem => i.type === 'section');
}

async function expectCode(p: () => unknown, code: string): Promise<BackendTransferError> {
  let err: unknown;
  try {
    await p();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(BackendTransferError);
  expect((err as BackendTransferError).code).toBe(code);
  return err as BackendTransferError;
}

describe('round trip', () => {
  it('HELLO, PLAN, sections in parts with fds, END_OF_STATE, EOF: fed whole', async () => {
    const built = await buildStream(DEVICES);
    const reader = targetReader(built);
    const items = feedSplit(reader, dupWrites(built.channel));
    expect(items.map((i) => (i.type === 'section' ? `${i.frame}:${i.idstr}` : i.type))).toEqual([
      'hello',
      'plan',
      'full:net0',
      'start:cpu0',
      'part:cpu0',
      'part:cpu0',
      'part:cpu0',
      'end:cpu0',
      'full:ram',
      'end-of-state',
      'eof',
    ]);
    const secs = sections(items);
    const net = secs[0]!;
    expect(net.payload.toString()).toBe('tap state');
    expect(net.attachments.map((a) => [a.kind, a.name, inspectFd(a.fd).kind])).toEqual([
      ['eventfd', 'eventfd0', 'eventfd'],
      ['eventfd', 'eventfd1', 'eventfd'],
      ['memfd', 'memfd2', 'memfd'],
    ]);
    expect(net.attachments[0]!.meta).toEqual({ i: 0 });
    const cpu = Buffer.concat(secs.filter((s) => s.idstr === 'cpu0').map((s) => Buffer.from(s.payload)));
    expect(cpu.equals(big)).toBe(true);
    expect(reader.finished).toBe(true);
    reader.end();
    closeItems(items);
    built.channel.close();
  });

  it('gives the same frames fed one byte at a time and at random cuts', async () => {
    const built = await buildStream(DEVICES);
    const total = built.channel.bytes().length;
    const whole = feedSplit(targetReader(built), dupWrites(built.channel));
    const summary = (items: StreamItem[]) => items.map((i) => (i.type === 'section' ? `${i.frame}:${i.idstr}:${i.payload.toString('hex')}:${i.attachments.map((a) => a.name).join(',')}` : i.type));
    const bytewise = feedSplit(
      targetReader(built),
      dupWrites(built.channel),
      Array.from({ length: total }, (_, i) => i),
    );
    expect(summary(bytewise)).toEqual(summary(whole));
    for (let round = 0; round < 20; round++) {
      const cuts = Array.from({ length: 30 }, () => Math.floor(Math.random() * total));
      const items = feedSplit(targetReader(built), dupWrites(built.channel), cuts);
      expect(summary(items)).toEqual(summary(whole));
      closeItems(items);
    }
    closeItems(whole);
    closeItems(bytewise);
    built.channel.close();
  });

  it('the return path: WELCOME, ACKs, NACK, PING/PONG, EOF', async () => {
    const built = await buildStream([]);
    const ch = new MemoryChannel();
    const w = new StreamWriter(ch);
    await w.welcome(built.welcome);
    await w.ack(AckStage.LOADED, 'all read');
    await w.ping(42n);
    await w.pong(42n);
    await w.nack('ERR_STREAM_CRC', 'bad section', 3);
    await w.eof();
    const r = new StreamReader({ role: 'source' });
    const items = r.feed(ch.bytes());
    expect(items.map((i) => i.type)).toEqual(['welcome', 'ack', 'ping', 'pong', 'nack', 'eof']);
    expect(items[1]).toMatchObject({ ack: { stage: AckStage.LOADED, detail: 'all read' } });
    expect(items[2]).toMatchObject({ ping: { token: 42n } });
    expect(items[4]).toMatchObject({ nack: { code: 'ERR_STREAM_CRC', reason: 'bad section', sectionId: 3 } });
    built.channel.close();
  });

  it('COMMIT closes the main stream: then only PING, PONG and EOF (an ABORT after it is refused)', async () => {
    const ch = new MemoryChannel();
    const w = new StreamWriter(ch);
    const built = await buildStream([]);
    await w.hello(built.hello);
    await w.plan(built.plan);
    await w.endOfState();
    await w.commit();
    await w.pong(1n);
    const beforeEof = ch.bytes().length;
    await w.eof();
    const items = targetReader(built).feed(ch.bytes());
    expect(items.map((i) => i.type)).toEqual(['hello', 'plan', 'end-of-state', 'commit', 'pong', 'eof']);
    await w.abort('ERR_X', 'changed my mind');
    const bytes = ch.bytes();
    const r = targetReader(built);
    const late = Buffer.concat([bytes.subarray(0, beforeEof), bytes.subarray(beforeEof + 24)]); // without the 24-byte EOF
    expect(() => r.feed(late)).toThrow(expect.objectContaining({ code: 'ERR_STREAM_PROTOCOL', message: expect.stringContaining('ABORT frame after COMMIT') }));
    built.channel.close();
  });
});

describe('reuseBuffers', () => {
  it('a payload returned by feed() stays intact while the same feed() goes on assembling the next frame', async () => {
    const a = Buffer.alloc(3000, 0xaa);
    const b = Buffer.alloc(3000, 0xbb);
    const built = await buildStream([
      { kind: 'state', id: 'a', payload: a },
      { kind: 'state', id: 'b', payload: b },
    ]);
    const writes = built.channel.writes;
    // Cut inside frame a, then inside frame b: the second chunk completes a (assembled
    // in the reused buffer) and starts b (assembled there too).
    const offA = writes.slice(0, 2).reduce((n, w) => n + w.bytes.length, 0);
    const offB = offA + writes[2]!.bytes.length;
    const r = targetReader(built, { reuseBuffers: true });
    const all = Buffer.concat(writes.map((w) => w.bytes));
    r.feed(all.subarray(0, offA + 100));
    const second = r.feed(all.subarray(offA + 100, offB + 100));
    const sa = second.find((i): i is SectionItem => i.type === 'section' && i.idstr === 'a')!;
    expect(sa.payload.equals(a)).toBe(true);
    const third = r.feed(all.subarray(offB + 100));
    const sb = third.find((i): i is SectionItem => i.type === 'section' && i.idstr === 'b')!;
    expect(sb.payload.equals(b)).toBe(true);
    built.channel.close();
  });
});

describe('the HELLO probe: do fds survive the way?', () => {
  const probeHello = (canPassFds: boolean) => ({
    minVersion: 1,
    maxVersion: 1,
    features: Features.FDS,
    canPassFds,
    fdBudget: 10,
    probe: Buffer.from('0123456789abcdef'),
    offers: [],
    info: null,
  });

  it('ok when the memfd arrives with the bytes, missing when the way dropped it', async () => {
    const ch = new MemoryChannel();
    const w = new StreamWriter(ch);
    await w.hello(probeHello(true));
    expect(ch.writes[0]!.fds.length).toBe(1);
    const ok = new StreamReader({ role: 'target' }).feed(
      ch.bytes(),
      ch.writes[0]!.fds.map((fd) => native.dup(fd)),
    );
    expect(ok[0]).toMatchObject({ type: 'hello', probe: 'ok' });
    // The same bytes without the fd: what a relay that drops SCM_RIGHTS delivers.
    const r = new StreamReader({ role: 'target' });
    expect(r.feed(ch.bytes())[0]).toMatchObject({ type: 'hello', probe: 'missing' });
    // A wrong fd in its place.
    const efd = native.eventfd(0);
    expect(new StreamReader({ role: 'target' }).feed(ch.bytes(), [efd])[0]).toMatchObject({ type: 'hello', probe: 'bad' });
    expect(() => native.close(efd)).toThrow(/EBADF/); // the reader closed it
    ch.close();
  });

  it('is refused on a channel that cannot carry fds, before anything is written', async () => {
    const ch = new MemoryChannel(false);
    await expectCode(() => new StreamWriter(ch).hello(probeHello(false)), 'ERR_CHANNEL_CANNOT_PASS_FDS');
    expect(ch.writes.length).toBe(0);
  });
});

describe('state-only channels', () => {
  it('a stream without fds goes over a byte channel (a Node stream) and reads back', async () => {
    const pass = new PassThrough();
    const chunks: Buffer[] = [];
    pass.on('data', (c: Buffer) => chunks.push(c));
    const w = new StreamWriter(writableChannel(pass), { partSize: 1000 });
    const hello = {
      minVersion: 1,
      maxVersion: 1,
      features: Features.BODY_CRC,
      canPassFds: false,
      fdBudget: 0,
      offers: [{ kind: 'state', id: 'cpu0', instance: 0, version: 1, fdCount: 0, wantsFds: false, required: true }],
      info: null,
    };
    const welcome = answerOffers(hello, () => ({ minVersion: 1, maxVersion: 1, acceptFds: false }), { canPassFds: false, features: Features.BODY_CRC, fdBudget: 0 });
    const plan = computePlan(hello, welcome);
    await w.hello(hello);
    await w.plan(plan);
    await w.section({ id: 'cpu0', instance: 0, version: 1 }, [], big);
    await w.endOfState();
    await w.eof();
    pass.end();
    const r = new StreamReader({ role: 'inspect' });
    const items: StreamItem[] = [];
    const replay = new PassThrough();
    replay.end(Buffer.concat(chunks));
    await pumpReadable(replay, (c) => items.push(...r.feed(c)));
    r.end();
    expect(Buffer.concat(sections(items).map((s) => Buffer.from(s.payload))).equals(big)).toBe(true);
  });

  it('a section with fds fails before anything is written when the channel cannot carry fds', async () => {
    const ch = new MemoryChannel(false);
    const w = new StreamWriter(ch);
    const hello = { minVersion: 1, maxVersion: 1, features: Features.BODY_CRC, canPassFds: false, fdBudget: 0, offers: [], info: null };
    await w.hello(hello);
    const before = ch.writes.length;
    const efd = native.eventfd(0);
    await expectCode(() => w.section({ id: 'x', instance: 0, version: 1 }, [{ kind: 'eventfd', name: 'e', fd: efd }], Buffer.from('s')), 'ERR_CHANNEL_CANNOT_PASS_FDS');
    expect(ch.writes.length).toBe(before);
    // The stream is intact: the writer goes on.
    await w.eof();
    expect(w.error).toBeNull();
    closeFds([efd]);
  });

  it('a plan that moves fds is refused on such a channel', async () => {
    const built = await buildStream([{ kind: 'generic', id: 'g', fds: ['eventfd'] }]);
    const w = new StreamWriter(new MemoryChannel(false));
    await expectCode(() => w.plan(built.plan), 'ERR_CHANNEL_CANNOT_PASS_FDS');
    built.channel.close();
  });
});

describe('payloads by sealed memfd', () => {
  it('parts over the threshold travel as sealed memfds and read back intact', async () => {
    const built = await buildStream([{ kind: 'state', id: 'ram', payload: big }], { features: Features.FDS | Features.BODY_CRC | Features.MEMFD_PAYLOAD, partSize: 8192, memfdThreshold: 4096 });
    const items = feedSplit(targetReader(built), dupWrites(built.channel));
    const secs = sections(items);
    // 8192 + 8192 by memfd; the last 3616 bytes are under the threshold and go inline.
    expect(secs.map((s) => s.payloadInMemfd)).toEqual([true, true, false]);
    expect(Buffer.concat(secs.map((s) => s.payload)).equals(big)).toBe(true);
    closeItems(items);
    built.channel.close();
  });

  it('keep mode hands out the sealed memfd itself', async () => {
    const built = await buildStream([{ kind: 'state', id: 'ram', payload: big }], { features: Features.FDS | Features.BODY_CRC | Features.MEMFD_PAYLOAD, partSize: 1 << 20, memfdThreshold: 1 });
    const items = feedSplit(targetReader(built, { memfdPayload: 'keep' }), dupWrites(built.channel));
    const s = sections(items)[0]!;
    expect(s.payloadFd).toBeDefined();
    const info = inspectFd(s.payloadFd!);
    expect(info.kind).toBe('memfd');
    expect(info.size).toBe(big.length);
    closeItems(items);
    built.channel.close();
  });

  it('state already in a memfd is sent by descriptor, without a copy', async () => {
    const built = await buildStream([]);
    const hello = {
      ...built.hello,
      features: Features.FDS | Features.BODY_CRC | Features.MEMFD_PAYLOAD,
      offers: [{ kind: 'state', id: 'ram', instance: 0, version: 1, fdCount: 0, wantsFds: false, required: false }],
    };
    const welcome = answerOffers(hello, () => ({ minVersion: 1, maxVersion: 1, acceptFds: true }), { canPassFds: true, features: hello.features, fdBudget: 1000 });
    const plan = computePlan(hello, welcome);
    const ch = new MemoryChannel();
    const w = new StreamWriter(ch);
    await w.hello(hello);
    await w.plan(plan);
    const m = native.memfd_create('guest-ram');
    writeSync(m, big);
    await expectCode(() => w.section({ id: 'ram', instance: 0, version: 1 }, [], { memfd: m, length: big.length }), 'ERR_STREAM_MEMFD_UNSEALED');
    await w.section({ id: 'ram', instance: 0, version: 1 }, [], { memfd: m, length: big.length, seal: true });
    await w.endOfState();
    await w.eof();
    const r = new StreamReader({ role: 'target' });
    r.setWelcome(welcome);
    const items = feedSplit(r, dupWrites(ch));
    expect(Buffer.concat(sections(items).map((s) => s.payload)).equals(big)).toBe(true);
    closeFds([m]);
    ch.close();
    built.channel.close();
  });
});

// ---------------------------------------------------------------- hardening

/** A handshake (HELLO, PLAN) for one device with `fds` fds, then `tail` raw bytes; fed with `feedFds`. */
async function handshakeThen(tail: Buffer[], feedFds: number[] = [], device = { kind: 'generic', id: 'dev', fds: 1 }) {
  const built = await buildStream([{ kind: device.kind, id: device.id, fds: new Array(device.fds).fill('eventfd') }]);
  // Keep HELLO and PLAN only (the first two writes), drop the rest of the valid stream.
  const head = Buffer.concat(built.channel.writes.slice(0, 2).map((w) => w.bytes));
  built.channel.close();
  const r = targetReader(built);
  return { r, run: () => r.feed(Buffer.concat([head, ...tail]), feedFds), built };
}

function sectionBody(
  type: number,
  o: { id?: string; version?: number; sectionId?: number; atts?: { kind: 'eventfd' | 'memfd' | 'generic'; role?: 0 | 1 }[]; payload?: Buffer; inMemfd?: boolean; payloadLength?: number },
) {
  const atts = (o.atts ?? []).map((a, i) => ({ kind: a.kind, role: a.role ?? 0, name: `a${i}`, meta: null }));
  const payload = o.payload ?? Buffer.alloc(0);
  const prefix = encodeSectionPrefix(
    type,
    { sectionId: o.sectionId ?? 1, instanceId: 0, versionId: o.version ?? 1, idstr: o.id ?? 'dev', attachments: atts, payloadLength: o.payloadLength ?? payload.length, payloadCrc: 0 },
    o.inMemfd ?? false,
  );
  return o.inMemfd ? prefix : Buffer.concat([prefix, payload]);
}

describe('hardening: each error has its code, and no fd survives it', () => {
  it('ERR_STREAM_TRUNCATED: the channel ends mid-frame, or before EOF', async () => {
    const built = await buildStream(DEVICES);
    const bytes = built.channel.bytes();
    // In the magic, in a header, in a body, between frames (before EOF), in the EOF frame.
    const eofStart = bytes.length - 24;
    for (const cut of [3, 8 + 10, 8 + 30, eofStart, eofStart + 5]) {
      const r = targetReader(built);
      // the writes up to the cut, each with its fds, read as the kernel would hand them over
      const upTo: { bytes: Buffer; fds: number[] }[] = [];
      let off = 0;
      for (const w of built.channel.writes) {
        if (off < cut) upTo.push({ bytes: w.bytes.subarray(0, Math.min(w.bytes.length, cut - off)), fds: w.fds.map((fd) => native.dup(fd)) });
        off += w.bytes.length;
      }
      closeItems(feedSplit(r, upTo));
      const e = await expectCode(() => r.end(), 'ERR_STREAM_TRUNCATED');
      expect(e.message).toMatch(cut === eofStart ? /between frames, before the EOF frame/ : /stream ended/);
      expect(r.pendingFds).toBe(0);
    }
    // The whole stream ends cleanly.
    const r = targetReader(built);
    closeItems(feedSplit(r, dupWrites(built.channel)));
    expect(() => r.end()).not.toThrow();
    built.channel.close();
  });

  it('ERR_STREAM_BAD_MAGIC', async () => {
    const r = new StreamReader({ role: 'target' });
    await expectCode(() => r.feed(Buffer.from('GET / HTTP/1.1\r\n')), 'ERR_STREAM_BAD_MAGIC');
    // Sticky: the next feed reports the same error.
    await expectCode(() => r.feed(Buffer.from('x')), 'ERR_STREAM_BAD_MAGIC');
  });

  it('ERR_STREAM_VERSION: a HELLO with no version in common', async () => {
    const hello = { minVersion: 5, maxVersion: 7, features: 0, canPassFds: false, fdBudget: 0, offers: [], info: null };
    const r = new StreamReader({ role: 'target' });
    await expectCode(() => r.feed(Buffer.concat([MAGIC, rawFrame(FrameType.HELLO, encodeHello(hello))])), 'ERR_STREAM_VERSION');
    await expectCode(() => answerOffers(hello, () => null, { canPassFds: true, features: 0, fdBudget: 0 }), 'ERR_STREAM_VERSION');
  });

  it('ERR_STREAM_UNKNOWN_FRAME', async () => {
    const { run } = await handshakeThen([rawFrame(0x16, Buffer.alloc(4))]);
    await expectCode(run, 'ERR_STREAM_UNKNOWN_FRAME');
  });

  it('ERR_STREAM_TOO_LARGE: a body length over the limit is refused from the header alone', async () => {
    // A header (with a valid header CRC) announcing a 1 GiB body, and nothing after it.
    const h = encodeHeader({ type: FrameType.SECTION_FULL, flags: 0, bodyLength: 1 << 30, fdCount: 0, firstFdSeq: 0 });
    const { r, run } = await handshakeThen([h]);
    const e = await expectCode(run, 'ERR_STREAM_TOO_LARGE');
    expect(e.message).toMatch(/1073741824/);
    expect(r.pendingFds).toBe(0);
  });

  it('ERR_STREAM_CRC: a flipped bit in a body, and in a header', async () => {
    const built = await buildStream(DEVICES);
    const writes = dupWrites(built.channel);
    // Flip one payload bit of the cpu0 START frame (the 4th write).
    const victim = writes[3]!;
    victim.bytes = Buffer.from(victim.bytes);
    victim.bytes[victim.bytes.length - 10]! ^= 0x10;
    const r = targetReader(built);
    const e = await expectCode(() => feedSplit(r, writes), 'ERR_STREAM_CRC');
    expect(e.message).toMatch(/body CRC mismatch/);
    expect(r.pendingFds).toBe(0);

    const { run } = await handshakeThen([rawFrame(FrameType.EOF, Buffer.alloc(0), { badHeaderCrc: true })]);
    await expectCode(run, 'ERR_STREAM_CRC');
    built.channel.close();
  });

  it('ERR_STREAM_FD_MISSING: a frame whose fd did not arrive', async () => {
    const body = sectionBody(FrameType.SECTION_FULL, { atts: [{ kind: 'eventfd' }] });
    const { run } = await handshakeThen([rawFrame(FrameType.SECTION_FULL, body, { fdCount: 1, firstFdSeq: 0 })], []);
    await expectCode(run, 'ERR_STREAM_FD_MISSING');
  });

  it('ERR_STREAM_FD_EXTRA: an fd that no frame declares is closed', async () => {
    const body = sectionBody(FrameType.SECTION_FULL, { atts: [{ kind: 'eventfd' }] });
    const e1 = native.eventfd(0);
    const e2 = native.eventfd(0);
    const { r, run } = await handshakeThen([rawFrame(FrameType.SECTION_FULL, body, { fdCount: 1, firstFdSeq: 0 })], [e1, e2]);
    await expectCode(run, 'ERR_STREAM_FD_EXTRA');
    expect(r.pendingFds).toBe(0);
    // Both were closed by the reader: closing them again fails.
    expect(() => native.close(e1)).toThrow(/EBADF/);
    expect(() => native.close(e2)).toThrow(/EBADF/);
  });

  it('ERR_STREAM_FD_SEQUENCE: a frame whose first fd number is not where the queue is', async () => {
    const body = sectionBody(FrameType.SECTION_FULL, { atts: [{ kind: 'eventfd' }] });
    const { run } = await handshakeThen([rawFrame(FrameType.SECTION_FULL, body, { fdCount: 1, firstFdSeq: 2 })], [native.eventfd(0)]);
    const e = await expectCode(run, 'ERR_STREAM_FD_SEQUENCE');
    expect(e.message).toMatch(/2 fd\(s\) lost before it/);
  });

  it('ERR_STREAM_FD_KIND: a pipe where an eventfd was declared', async () => {
    const [rd, wr] = native.pipe2();
    const body = sectionBody(FrameType.SECTION_FULL, { atts: [{ kind: 'eventfd' }] });
    const { run } = await handshakeThen([rawFrame(FrameType.SECTION_FULL, body, { fdCount: 1 })], [rd]);
    const e = await expectCode(run, 'ERR_STREAM_FD_KIND');
    expect(e.message).toMatch(/declared eventfd but the fd is pipe/);
    expect(() => native.close(rd)).toThrow(/EBADF/);
    closeFds([wr]);
  });

  it('ERR_STREAM_NOT_NEGOTIATED: a section for a device that is not in the plan', async () => {
    const body = sectionBody(FrameType.SECTION_FULL, { id: 'intruder' });
    const { run } = await handshakeThen([rawFrame(FrameType.SECTION_FULL, body)], [], { kind: 'state', id: 'dev', fds: 0 });
    await expectCode(run, 'ERR_STREAM_NOT_NEGOTIATED');
  });

  it('ERR_STREAM_DUPLICATE_SECTION: the same device twice', async () => {
    const body = sectionBody(FrameType.SECTION_FULL, {});
    const body2 = sectionBody(FrameType.SECTION_FULL, { sectionId: 2 });
    const { run } = await handshakeThen([rawFrame(FrameType.SECTION_FULL, body), rawFrame(FrameType.SECTION_FULL, body2)], [], { kind: 'state', id: 'dev', fds: 0 });
    await expectCode(run, 'ERR_STREAM_DUPLICATE_SECTION');
  });

  it('ERR_DEVICE_VERSION_TOO_NEW and ERR_DEVICE_VERSION_TOO_OLD: outside the target window', async () => {
    // The target answered with window 1..3 (see buildStream).
    for (const [version, code] of [
      [4, 'ERR_DEVICE_VERSION_TOO_NEW'],
      [0, 'ERR_DEVICE_VERSION_TOO_OLD'],
    ] as const) {
      const body = sectionBody(FrameType.SECTION_FULL, { version });
      const { run } = await handshakeThen([rawFrame(FrameType.SECTION_FULL, body)], [], { kind: 'state', id: 'dev', fds: 0 });
      const e = await expectCode(run, code);
      expect(e.message).toMatch(/1\.\.3/);
    }
    // In the handshake: a device offered at version 9 is refused with the reason.
    const hello = {
      minVersion: 1,
      maxVersion: 1,
      features: 0,
      canPassFds: false,
      fdBudget: 0,
      offers: [{ kind: 'state', id: 'd', instance: 0, version: 9, fdCount: 0, wantsFds: false, required: true }],
      info: null,
    };
    const welcome = answerOffers(hello, () => ({ minVersion: 1, maxVersion: 3, acceptFds: false }), { canPassFds: false, features: 0, fdBudget: 0 });
    const e = await expectCode(() => computePlan(hello, welcome), 'ERR_DEVICE_REFUSED');
    expect(e.message).toMatch(/version-too-new \(target window 1\.\.3\)/);
  });

  it('ERR_STREAM_PROTOCOL: frames out of order, PLAN not matching the negotiation', async () => {
    const { run } = await handshakeThen([rawFrame(FrameType.SECTION_PART, sectionBody(FrameType.SECTION_PART, {}))], [], { kind: 'state', id: 'dev', fds: 0 });
    await expectCode(run, 'ERR_STREAM_PROTOCOL');
    // A PLAN that moves a device with fds when the target answered state-only.
    const built = await buildStream([{ kind: 'generic', id: 'g', fds: ['eventfd'] }]);
    const forged = { ...built.plan, totalFds: 0, devices: built.plan.devices.map((d) => ({ ...d, withFds: false, fdCount: 0 })) };
    const r = targetReader(built);
    const hello = built.channel.writes[0]!.bytes;
    await expectCode(() => r.feed(Buffer.concat([hello, rawFrame(FrameType.PLAN, encodePlan(forged))])), 'ERR_STREAM_PROTOCOL');
    built.channel.close();
  });

  it('ERR_STREAM_MEMFD_UNSEALED and ERR_STREAM_MEMFD_SIZE: the payload memfd is checked before a byte is trusted', async () => {
    const built = await buildStream([{ kind: 'state', id: 'dev' }], { features: Features.FDS | Features.BODY_CRC | Features.MEMFD_PAYLOAD });
    const head = Buffer.concat(built.channel.writes.slice(0, 2).map((w) => w.bytes));
    const data = Buffer.from('payload-bytes');
    for (const [sealed, length, code] of [
      [false, data.length, 'ERR_STREAM_MEMFD_UNSEALED'],
      [true, data.length + 5, 'ERR_STREAM_MEMFD_SIZE'],
    ] as const) {
      const m = native.memfd_create('p');
      writeSync(m, data);
      if (sealed) native.fcntl_add_seals(m, native.F_SEAL_SHRINK | native.F_SEAL_GROW | native.F_SEAL_WRITE);
      const body = sectionBody(FrameType.SECTION_FULL, { atts: [{ kind: 'memfd', role: 1 }], inMemfd: true, payloadLength: length });
      const r = targetReader(built);
      await expectCode(() => r.feed(Buffer.concat([head, rawFrame(FrameType.SECTION_FULL, body, { flags: 1, fdCount: 1 })]), [m]), code);
      expect(() => native.close(m)).toThrow(/EBADF/);
    }
    built.channel.close();
  });

  it('limits: too many fds in one frame, strings and counts over their limits', async () => {
    const { run } = await handshakeThen([rawFrame(FrameType.SECTION_FULL, Buffer.alloc(0), { fdCount: 100_000 })]);
    await expectCode(run, 'ERR_STREAM_TOO_LARGE');
    const r = new StreamReader({ role: 'target', limits: { maxDevices: 2 } });
    const hello = {
      minVersion: 1,
      maxVersion: 1,
      features: 0,
      canPassFds: false,
      fdBudget: 0,
      offers: Array.from({ length: 3 }, (_, i) => ({ kind: 'state', id: `d${i}`, instance: 0, version: 1, fdCount: 0, wantsFds: false, required: false })),
      info: null,
    };
    await expectCode(() => r.feed(Buffer.concat([MAGIC, rawFrame(FrameType.HELLO, encodeHello(hello))])), 'ERR_STREAM_TOO_LARGE');
  });
});
