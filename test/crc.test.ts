// The CRC-32 the stream uses: @node-rs/crc32 (SIMD) where it loads, zlib.crc32
// elsewhere. Both must give zlib's values, for whole buffers and continued CRCs,
// or the bytes on the wire would depend on which side has which.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { crc32, crcImplementation } from '../src/stream/crc.js';
import { Features, MemoryChannel, StreamReader, StreamWriter, supported } from '../src/index.js';
import { stateOnlyHandshake } from './helpers/stream.js';

const LENGTHS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 1023, 1024, 1025, 4095, 4096, 4097, 65535, 65536, 65537, 1 << 20, (1 << 20) + 13];

describe('crc32', () => {
  it('uses @node-rs/crc32 here (its platform package installs from the registry), and says so in supported()', () => {
    const { impl, fallbackReason } = crcImplementation();
    // Linux x64/arm64 glibc and musl have platform packages; anything else falls back (and says why).
    if (impl !== '@node-rs/crc32') console.log(`crc32 fell back to zlib: ${fallbackReason}`);
    expect(supported().crc).toEqual({ impl, fallbackReason });
    if (process.platform === 'linux' && (process.arch === 'x64' || process.arch === 'arm64')) expect(impl).toBe('@node-rs/crc32');
  });

  it('equals zlib.crc32 on random buffers of many lengths and offsets', () => {
    for (const n of LENGTHS) {
      const b = randomBytes(n + 7);
      for (const off of [0, 1, 3, 7]) {
        const v = b.subarray(off, off + n);
        expect(crc32(v), `length ${n} offset ${off}`).toBe(zlibCrc32(v));
      }
    }
    for (let i = 0; i < 300; i++) {
      const v = randomBytes(Math.floor(Math.random() * 5000));
      expect(crc32(v)).toBe(zlibCrc32(v));
    }
  });

  it('continued CRCs equal the CRC of the whole, split anywhere, and equal zlib.crc32 continued', () => {
    for (const n of [0, 1, 17, 1000, 65537, (1 << 20) + 13]) {
      const b = randomBytes(n);
      for (const cuts of [[0], [n], [Math.floor(n / 2)], [1, Math.floor(n / 3), n - 1].filter((x) => x >= 0 && x <= n).sort((a, c) => a - c)]) {
        let c = 0;
        let z = 0;
        let prev = 0;
        for (const cut of [...cuts, n]) {
          c = crc32(b.subarray(prev, cut), c);
          z = zlibCrc32(b.subarray(prev, cut), z);
          prev = cut;
        }
        expect(c, `length ${n} cuts ${cuts.join(',')}`).toBe(zlibCrc32(b));
        expect(z).toBe(c);
      }
      // A value with the top bit set passed back in (unsigned, as both return it).
      const hi = 0xfedcba98;
      if (n > 0) expect(crc32(b, hi)).toBe(zlibCrc32(b, hi));
      // An empty piece continues nothing; zlib.crc32 returns 0 for one without backing memory (the wrapper does not).
      else expect(crc32(b, hi)).toBe(hi);
    }
  });

  it('BACKEND_TRANSFER_CRC=zlib forces the fallback, which gives the same values and reads a stream written with the fast one', async () => {
    // A stream with body CRCs, written here (fast CRC), read in a child that uses zlib.
    const ch = new MemoryChannel(false);
    const features = Features.BODY_CRC;
    const w = new StreamWriter(ch, { partSize: 1000 });
    const { hello, plan } = stateOnlyHandshake(features, { canPassFds: false, fdBudget: 0 });
    await w.hello(hello);
    await w.plan(plan);
    const state = randomBytes(12_345);
    await w.section({ id: 'ram', instance: 0, version: 1 }, [], state);
    await w.endOfState();
    await w.eof();
    const bytes = ch.bytes();
    const probe = randomBytes(3000);
    const script = `
      const { crcImplementation, crc32, StreamReader } = await import(${JSON.stringify(fileURLToPath(new URL('../src/index.ts', import.meta.url)))});
      const r = new StreamReader({ role: 'inspect', fdsAbsent: true, verifyFdKinds: false });
      let n = 0;
      for (const it of r.feed(Buffer.from(${JSON.stringify(bytes.toString('base64'))}, 'base64'))) if (it.type === 'section') n += it.payload.length;
      const probe = Buffer.from(${JSON.stringify(probe.toString('base64'))}, 'base64');
      console.log(JSON.stringify({ ...crcImplementation(), crc: crc32(probe), cont: crc32(probe.subarray(100), crc32(probe.subarray(0, 100))), empty: crc32(Buffer.from(new ArrayBuffer(0)), 0xfedcba98), n }));`;
    const tsx = fileURLToPath(new URL('../node_modules/tsx/dist/esm/index.mjs', import.meta.url));
    const out = execFileSync(process.execPath, ['--import', tsx, '--input-type=module', '-e', script], { env: { ...process.env, BACKEND_TRANSFER_CRC: 'zlib' }, encoding: 'utf8' });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ impl: 'zlib', fallbackReason: 'BACKEND_TRANSFER_CRC=zlib', crc: crc32(probe), cont: crc32(probe), empty: 0xfedcba98, n: state.length });
    // And this side reads what it wrote.
    const r = new StreamReader({ role: 'inspect', fdsAbsent: true, verifyFdKinds: false });
    let n = 0;
    for (const it of r.feed(bytes)) if (it.type === 'section') n += it.payload.length;
    expect(n).toBe(state.length);
  });
});
