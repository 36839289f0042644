// Memory and work a source can make a handover target spend, with real processes
// (test/fixtures/limits-peer.ts): the target runs receiveHandover and reports its
// peak RSS growth (VmHWM) and the longest stall of its event loop; the source is
// a hand-made peer that speaks the protocol but sends what a hostile or careless
// source might. Times are reported, never asserted: what is asserted is the
// refusal, its code and where it came (before the bytes were read or looped over).
import { createHash } from 'node:crypto';
import { ftruncateSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { trackFdLeaks } from './helpers/fds.js';
import { Peers, type Peer, type PeerEvent } from './helpers/child.js';
import { decodeState, jsonDepthOver } from '../src/backends/common.js';
import { Features, MemoryChannel, StreamWriter, answerOffers, computePlan, native, receiveHandover, type Hello } from '../src/index.js';

trackFdLeaks();

const dir = mkdtempSync(join(tmpdir(), 'bt-limits-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const peers = new Peers();
afterEach(() => peers.disposeAll());

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
let seq = 0;

function memAvailable(): number {
  return Number(/MemAvailable:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;
}

/** Skips (and says why) where the machine has not `bytes` of memory to spare, and a margin. */
function needMemory(ctx: { skip: (note?: string) => void }, bytes: number, what: string): void {
  const free = memAvailable();
  if (free < bytes + 3 * GiB) {
    console.warn(`SKIP ${what}: ${Math.round(free / MiB)} MiB of memory available, it needs about ${Math.round((bytes + 3 * GiB) / MiB)}`);
    ctx.skip('not enough free memory');
  }
}

/** The first of the target's two possible outcomes. */
function outcome(target: Peer): Promise<PeerEvent> {
  return Promise.race([target.waitFor('received', 120_000), target.waitFor('receive-failed', 120_000)]);
}

async function pair(targetSpec: Record<string, unknown>, sourceScenario: string, sourceSpec: Record<string, unknown>): Promise<{ t: PeerEvent; s: Peer; target: Peer }> {
  const path = join(dir, `h-${seq++}.sock`);
  const target = peers.spawn('target', [path, JSON.stringify(targetSpec)], { fixture: 'limits-peer.ts' });
  await target.waitFor('listening');
  const s = peers.spawn(sourceScenario, [path, JSON.stringify(sourceSpec)], { fixture: 'limits-peer.ts' });
  const t = await outcome(target);
  console.log(
    `[limits] ${sourceScenario} ${JSON.stringify(sourceSpec)} -> ${t.event} ${String(t.code ?? '')} rssGrowth ${Math.round(Number(t.rssGrowth) / MiB)} MiB, longest loop stall ${String(t.maxGapMs)} ms, ${String(t.elapsedMs)} ms`,
  );
  // Whatever happened, the target holds no fd it did not hold before (the received backends were closed by the fixture).
  expect(t.leaked, 'fds left open in the target').toBe(0);
  return { t, s, target };
}

describe.sequential('memory a source can make the target spend', () => {
  it('the same sparse, sealed 1 GiB memfd sent as 3 parts: refused at the second part, read once', async (ctx) => {
    needMemory(ctx, GiB, 'the 1 GiB memfd test');
    const { t } = await pair({}, 'source', { case: 'memfd-parts', size: GiB, parts: 3 });
    expect(t.event).toBe('receive-failed');
    expect(t.code).toBe('ERR_STREAM_PROTOCOL');
    expect(String(t.message)).toMatch(/same payload memfd/);
    // The first part was read (1 GiB of zeros and two marks), never copied again.
    expect(Number(t.rssGrowth)).toBeLessThan(GiB + 256 * MiB);
  });

  it('VMM state in 3 distinct memfd parts of 512 MiB, its size announced: read once, into one buffer, never joined', async (ctx) => {
    needMemory(ctx, 1536 * MiB, 'the 3 x 512 MiB memfd test');
    const { t } = await pair({}, 'source', { case: 'memfd-parts', size: 512 * MiB, parts: 3, distinct: true, announce: true });
    expect(t).toMatchObject({ event: 'received', outcome: 'committed', stateBytes: 3 * 512 * MiB });
    // 1.5 GiB of state: held once (before: read into a buffer, copied, joined).
    expect(Number(t.rssGrowth)).toBeLessThan(1536 * MiB + 256 * MiB);
  });

  it('VMM state over limits.maxStateBytes: refused from the declared length, before a byte of it is read', async () => {
    const { t, s } = await pair({ limits: { maxStateBytes: 512 * MiB } }, 'source', { case: 'memfd-parts', size: GiB, parts: 3 });
    expect(t).toMatchObject({ event: 'receive-failed', code: 'ERR_STREAM_TOO_LARGE' });
    // The source is told why.
    expect(await s.waitFor('nack')).toMatchObject({ code: 'ERR_STREAM_TOO_LARGE' });
    expect(t.details).toMatchObject({ what: 'VMM state', value: GiB, limit: 512 * MiB });
    expect(Number(t.rssGrowth)).toBeLessThan(128 * MiB);
  });

  it('device state over limits.maxDeviceStateBytes: refused from the declared lengths, the state never kept', async () => {
    const { t } = await pair({ limits: { maxDeviceStateBytes: 8 * MiB } }, 'source', { case: 'device-state', bytes: 32 * MiB });
    expect(t).toMatchObject({ event: 'receive-failed', code: 'ERR_STREAM_TOO_LARGE' });
    expect(t.details).toMatchObject({ what: 'state of device dev0', limit: 8 * MiB });
    expect(Number(t.rssGrowth)).toBeLessThan(96 * MiB);
  });

  it('deeply nested JSON as device state: refused by a linear scan before JSON.parse', async () => {
    // 16 MiB of '[' and ']': 8 million levels. Parsed, this took gigabytes.
    const { t } = await pair({ limits: { maxJsonBytes: 32 * MiB } }, 'source', { case: 'device-state', json: 'deep', bytes: 16 * MiB });
    expect(t).toMatchObject({ event: 'receive-failed', code: 'ERR_STREAM_TOO_LARGE' });
    expect(t.details).toMatchObject({ what: 'JSON nesting of device dev0 state', limit: 64 });
    expect(Number(t.rssGrowth)).toBeLessThan(160 * MiB);
  });

  it('large JSON as device state: refused by its size before JSON.parse (default limit)', async () => {
    const { t } = await pair({}, 'source', { case: 'device-state', json: 'wide', bytes: 24 * MiB });
    expect(t).toMatchObject({ event: 'receive-failed', code: 'ERR_STREAM_TOO_LARGE' });
    expect(t.details).toMatchObject({ what: 'JSON of device dev0 state', limit: 4 * MiB });
    expect(Number(t.rssGrowth)).toBeLessThan(160 * MiB);
  });

  it('200 000 one-byte parts of one device: kept as their bytes (not one Buffer each), the state whole and in order', async () => {
    const parts = 200_000;
    const { t } = await pair({}, 'source', { case: 'tiny-parts', parts });
    expect(t).toMatchObject({ event: 'received', outcome: 'committed' });
    const blob = (t.blobs as Record<string, { bytes: number; sha256: string }>).dev0!;
    expect(blob).toEqual({ bytes: parts, sha256: createHash('sha256').update(Buffer.alloc(parts, 'x')).digest('hex') });
  });

  it('JSON state within the limits is accepted and parsed once', async () => {
    const { t } = await pair({}, 'source', { case: 'device-state', json: 'wide', bytes: 2 * MiB });
    expect(t).toMatchObject({ event: 'received', outcome: 'committed' });
    expect(t.devices).toContainEqual({ id: 'dev0', how: 'received' });
    // verify() and adopt() both read it: one JSON.parse of the 2 MiB text.
    expect(t.largeParses).toBe(1);
  });
});

describe.sequential('work a PLAN can make the target do', () => {
  it('16 384 offers: refused at the count, before one is decoded', async () => {
    const { t } = await pair({}, 'source', { case: 'offers', offers: 16_384 });
    expect(t).toMatchObject({ event: 'receive-failed', code: 'ERR_STREAM_TOO_LARGE' });
    expect(t.details).toMatchObject({ what: 'offer count', value: 16_384, limit: 4096 });
  });

  it('the reserved vmm-state offer is accepted for instance 0 only', async () => {
    // 4000 vmm-state offers (under the limit) and 90 devices the target knows: the
    // plan holds vmm-state/0 and the 90, not 4090 devices.
    const { t, s } = await pair({ devices: 90 }, 'source', { case: 'offers', offers: 4000, generic: 90 });
    expect((await s.waitFor('planned')).devices).toBe(91);
    expect(t).toMatchObject({ event: 'received', outcome: 'committed' });
  });
});

describe.sequential('memfd payloads of 2 GiB and more (the documented limit is 4 GiB)', () => {
  it('our own source and target: VMM state in one sealed memfd of 2 GiB + 4 KiB', async (ctx) => {
    // The target reads the memfd once into memory (the API hands out a Buffer), so
    // this test needs a bit over 2 GiB of free memory for a few seconds.
    const need = 2 * GiB + 4096;
    needMemory(ctx, need, 'the 2 GiB memfd test');
    const { t, s } = await pair({ onState: true }, 'big-source', { size: need });
    expect(t).toMatchObject({ event: 'received', outcome: 'committed', stateBytes: need, streamed: need });
    expect(t.marks).toEqual(['first page', 'last page']);
    expect(await s.waitFor('handover-done')).toMatchObject({ stateBytes: need });
  });
});

describe('the JSON checks before JSON.parse', () => {
  it('counts nesting outside strings only, escapes included', () => {
    expect(jsonDepthOver(Buffer.from('{"a":[1,{"b":[]}]}'), 4)).toBeNull();
    expect(jsonDepthOver(Buffer.from('{"a":[1,{"b":[]}]}'), 3)).toBe(4);
    expect(jsonDepthOver(Buffer.from('{"a":"[[[[{{{{","b":"\\"[[[["}'), 1)).toBeNull();
    expect(jsonDepthOver(Buffer.from('[[["\\\\"]]]'), 2)).toBe(3);
  });

  it('decodeState refuses before parsing, and parses each state buffer once', () => {
    const deep = Buffer.from(`{"m":${'['.repeat(100)}${']'.repeat(100)}}`);
    expect(() => decodeState('d', deep)).toThrow(expect.objectContaining({ code: 'ERR_STREAM_TOO_LARGE', details: expect.objectContaining({ value: 65, limit: 64 }) }));
    expect(decodeState('d', deep, { maxJsonBytes: 1 << 20, maxJsonDepth: 200 }).meta).toHaveProperty('m');
    const big = Buffer.from(JSON.stringify({ a: 'x'.repeat(100) }));
    expect(() => decodeState('d', big, { maxJsonBytes: 50, maxJsonDepth: 64 })).toThrow(expect.objectContaining({ code: 'ERR_STREAM_TOO_LARGE' }));
    const state = Buffer.concat([Buffer.from('{"a":1}'), Buffer.from([0]), Buffer.from('blob')]);
    const first = decodeState('d', state);
    expect(decodeState('d', state)).toBe(first);
    expect(first.blob.toString()).toBe('blob');
  });

  it('receiveHandover refuses a limit that is not a number >= 0, before it listens', async () => {
    await expect(receiveHandover({ socket: join(dir, 'never.sock'), accept: [], backendTransfer: true, limits: { maxStateBytes: -1 } })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describe('the source refuses what no reader could take', () => {
  it('a memfd payload of 4 GiB (payloadLength is a u32): ERR_STREAM_TOO_LARGE before anything is written', async () => {
    const features = Features.FDS | Features.BODY_CRC | Features.MEMFD_PAYLOAD;
    const hello: Hello = {
      minVersion: 1,
      maxVersion: 1,
      features,
      canPassFds: true,
      fdBudget: 1000,
      probe: null,
      info: null,
      offers: [{ kind: 'state', id: 'vmm-state', instance: 0, version: 1, fdCount: 0, wantsFds: false, required: true }],
    };
    const welcome = answerOffers(hello, () => ({ minVersion: 1, maxVersion: 1, acceptFds: false }), { canPassFds: true, features, fdBudget: 1000 });
    const channel = new MemoryChannel(true);
    const w = new StreamWriter(channel);
    await w.hello(hello);
    await w.plan(computePlan(hello, welcome));
    const fd = native.memfd_create('four-gib');
    try {
      ftruncateSync(fd, 4 * GiB); // sparse: nothing is written
      native.fcntl_add_seals(fd, native.F_SEAL_SHRINK | native.F_SEAL_GROW | native.F_SEAL_WRITE);
      const before = channel.writes.length;
      await expect(w.section({ id: 'vmm-state', instance: 0, version: 1 }, [], { memfd: fd, length: 4 * GiB })).rejects.toMatchObject({
        code: 'ERR_STREAM_TOO_LARGE',
        details: { what: 'memfd payload', value: 4 * GiB, limit: 4 * GiB - 1 },
      });
      expect(channel.writes.length).toBe(before);
    } finally {
      native.close(fd);
    }
  });
});
