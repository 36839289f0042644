// Sealed memfds mapped (mapSealedMemfd) rather than read: the checks before the
// mapping, the release that detaches, and the sender's pages untouched.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { ftruncateSync, readSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  Features,
  HEADER_SIZE,
  MemoryChannel,
  StreamReader,
  StreamWriter,
  TRAILER_SIZE,
  closeFd,
  crc32,
  isReleased,
  mapSealedMemfd,
  mappingStats,
  native,
  releaseMapping,
  type SectionItem,
} from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { stateOnlyHandshake } from './helpers/stream.js';

trackFdLeaks();

const ALL = () => native.F_SEAL_SHRINK | native.F_SEAL_GROW | native.F_SEAL_WRITE;

function memfd(bytes: Buffer, seals: number): number {
  const fd = native.memfd_create('bt-map-test');
  if (bytes.length > 0) writeSync(fd, bytes, 0, bytes.length, 0);
  if (seals) native.fcntl_add_seals(fd, seals);
  return fd;
}

function code(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe('mapSealedMemfd / releaseMapping', () => {
  it('maps the bytes without copying; release detaches every view, twice is false, later use is a clear error', () => {
    const data = randomBytes(3 * 4096 + 123);
    const fd = memfd(data, ALL());
    const before = mappingStats();
    const m = mapSealedMemfd(fd, data.length);
    closeFd(fd); // the mapping does not need the fd
    expect(mappingStats()).toEqual({ mappings: before.mappings + 1, bytes: before.bytes + data.length });
    expect(m.equals(data)).toBe(true);
    const view = m.subarray(4096, 8192);
    expect(view.equals(data.subarray(4096, 8192))).toBe(true);
    expect(isReleased(m)).toBe(false);

    expect(releaseMapping(m)).toBe(true);
    expect(mappingStats()).toEqual(before);
    expect(m.length).toBe(0);
    expect(view.length).toBe(0);
    expect(isReleased(m)).toBe(true);
    expect(m[0]).toBeUndefined();
    expect(view[10]).toBeUndefined();
    expect(() => m.readUInt32LE(0)).toThrow(RangeError);
    expect(Buffer.from(m).length).toBe(0);
    expect(m.toString('hex')).toBe('');
    // Release twice: false, no crash.
    expect(releaseMapping(m)).toBe(false);
    expect(releaseMapping(view)).toBe(false);
  });

  it('refuses a Buffer that is not a mapping (ERR_INVALID_ARGUMENT)', () => {
    expect(code(() => releaseMapping(Buffer.alloc(10)))).toBe('ERR_INVALID_ARGUMENT');
    expect(code(() => native.munmap_buffer('x' as unknown as Buffer))).toBe('ERR_INVALID_ARGUMENT');
  });

  it('refuses, before mapping, an unsealed memfd, one without F_SEAL_SHRINK, one of another size, and a non-memfd', () => {
    const data = randomBytes(8192);
    const before = mappingStats();
    const cases: [number, string][] = [
      [memfd(data, 0), 'ERR_STREAM_MEMFD_UNSEALED'],
      // A peer that sealed all but SHRINK could cut the file under the mapping (SIGBUS on read): refused.
      [memfd(data, native.F_SEAL_GROW | native.F_SEAL_WRITE), 'ERR_STREAM_MEMFD_UNSEALED'],
      [memfd(data, native.F_SEAL_SHRINK | native.F_SEAL_GROW), 'ERR_STREAM_MEMFD_UNSEALED'],
      [memfd(data.subarray(0, 4096), ALL()), 'ERR_STREAM_MEMFD_SIZE'],
      [native.eventfd(0), 'ERR_STREAM_FD_KIND'],
    ];
    for (const [fd, want] of cases) {
      expect(code(() => mapSealedMemfd(fd, data.length))).toBe(want);
      closeFd(fd);
    }
    expect(mappingStats()).toEqual(before);
    // The unsealed one really could be shrunk under a reader: that is what the check prevents.
    const fd = memfd(data, 0);
    ftruncateSync(fd, 100);
    expect(native.fstat(fd).size).toBe(100);
    closeFd(fd);
    const fd2 = memfd(data, 0);
    expect(code(() => mapSealedMemfd(fd2, -1))).toBe('ERR_INVALID_ARGUMENT');
    closeFd(fd2);
  });

  it("a write through the mapping is this process's own copy: the sender's pages do not change", () => {
    const data = randomBytes(2 * 4096);
    const fd = memfd(data, ALL());
    const m = mapSealedMemfd(fd, data.length);
    m.fill(0xee, 0, 100);
    m[5000] = data[5000]! ^ 0xff;
    const back = Buffer.alloc(data.length);
    expect(readSync(fd, back, 0, back.length, 0)).toBe(data.length);
    expect(back.equals(data)).toBe(true);
    const m2 = mapSealedMemfd(fd, data.length);
    expect(m2.equals(data)).toBe(true);
    releaseMapping(m);
    releaseMapping(m2);
    closeFd(fd);
  });

  it('a 0-byte sealed memfd maps to an empty Buffer (nothing mapped)', () => {
    const fd = memfd(Buffer.alloc(0), ALL());
    const m = mapSealedMemfd(fd, 0);
    expect(m.length).toBe(0);
    expect(releaseMapping(m)).toBe(false);
    closeFd(fd);
  });

  it('a mapping not released is unmapped when its Buffer is collected', () => {
    const script = `
      const { mapSealedMemfd, mappingStats, native, closeFd } = await import(${JSON.stringify(fileURLToPath(new URL('../src/index.ts', import.meta.url)))});
      const fd = native.memfd_create('gc');
      (await import('node:fs')).ftruncateSync(fd, 1 << 20);
      native.fcntl_add_seals(fd, native.F_SEAL_SHRINK | native.F_SEAL_GROW | native.F_SEAL_WRITE);
      let sum = 0;
      for (let i = 0; i < 200; i++) sum += mapSealedMemfd(fd, 1 << 20)[i];
      const held = mappingStats().mappings;
      closeFd(fd);
      for (let i = 0; i < 5 && mappingStats().mappings > 0; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
      console.log(JSON.stringify({ held, after: mappingStats(), sum }));`;
    const tsx = fileURLToPath(new URL('../node_modules/tsx/dist/esm/index.mjs', import.meta.url));
    const out = execFileSync(process.execPath, ['--expose-gc', '--import', tsx, '--input-type=module', '-e', script], { encoding: 'utf8' });
    const r = JSON.parse(out.trim().split('\n').pop()!) as { held: number; after: { mappings: number; bytes: number }; sum: number };
    expect(r.held).toBeGreaterThan(0);
    expect(r.after).toEqual({ mappings: 0, bytes: 0 });
    expect(r.sum).toBe(0);
  });
});

describe("StreamReader memfdPayload: 'map'", () => {
  async function memfdStream(data: Buffer): Promise<MemoryChannel> {
    const ch = new MemoryChannel(true);
    const features = Features.BODY_CRC | Features.MEMFD_PAYLOAD | Features.FDS;
    const w = new StreamWriter(ch);
    const { hello, plan } = stateOnlyHandshake(features, { fdBudget: 100 });
    await w.hello(hello);
    await w.plan(plan);
    const fd = memfd(data, ALL());
    await w.section({ id: 'ram', instance: 0, version: 1 }, [], { memfd: fd, length: data.length });
    closeFd(fd);
    await w.endOfState();
    await w.eof();
    return ch;
  }

  function feedAll(ch: MemoryChannel, r: StreamReader): SectionItem[] {
    const out: SectionItem[] = [];
    for (const wr of ch.writes) for (const it of r.feed(wr.bytes, wr.fds.splice(0))) if (it.type === 'section') out.push(it);
    return out;
  }

  it('maps the payload (no copy), closes the memfd, and the caller releases it', async () => {
    const data = randomBytes(100_000);
    const ch = await memfdStream(data);
    const before = mappingStats().mappings;
    const r = new StreamReader({ role: 'inspect', memfdPayload: 'map' });
    const [it] = feedAll(ch, r);
    expect(it!.payloadMapped).toBe(true);
    expect(it!.payloadFd).toBeUndefined();
    expect(it!.payload.equals(data)).toBe(true);
    expect(mappingStats().mappings).toBe(before + 1);
    expect(releaseMapping(it!.payload)).toBe(true);
    expect(mappingStats().mappings).toBe(before);
    r.close();
    ch.close();
  });

  it('a payload CRC that does not match: ERR_STREAM_CRC, and nothing stays mapped', async () => {
    const data = randomBytes(50_000);
    const ch = await memfdStream(data);
    // Change the payload CRC the frame declares, and make its body CRC right again.
    const good = crc32(data);
    const frame = ch.writes.find((w) => w.fds.length === 1)!.bytes;
    const body = frame.subarray(HEADER_SIZE, frame.length - TRAILER_SIZE);
    const at = body.indexOf(Buffer.from(Uint32Array.of(good).buffer));
    expect(at).toBeGreaterThan(0);
    body.writeUInt32LE((good ^ 1) >>> 0, at);
    frame.writeUInt32LE(crc32(body), frame.length - TRAILER_SIZE);
    const before = mappingStats().mappings;
    const r = new StreamReader({ role: 'inspect', memfdPayload: 'map' });
    expect(() => feedAll(ch, r)).toThrow(expect.objectContaining({ code: 'ERR_STREAM_CRC' }) as Error);
    expect(mappingStats().mappings).toBe(before);
    r.close();
    ch.close();
  });
});
