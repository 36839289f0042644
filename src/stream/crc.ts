// CRC-32 (IEEE 802.3, the one zlib computes) for frame headers and bodies. The
// SIMD implementation of @node-rs/crc32 (a prebuilt addon per platform, an
// optional dependency) is used where its platform package loads; elsewhere
// Node's zlib.crc32 (portable, several times slower on large bodies). Both give
// the same value for the same bytes, continued CRCs included, so the wire does
// not depend on which one a side uses. BACKEND_TRANSFER_CRC=zlib forces the
// fallback (tests, comparisons).
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';

/** Which CRC-32 implementation this process uses. */
export type CrcImplementation = '@node-rs/crc32' | 'zlib';

type Crc32Fn = (data: Uint8Array, value?: number) => number;

// zlib.crc32 of an empty buffer without backing memory (crypto.randomBytes(0),
// say: a NULL pointer to zlib) returns 0, not the value passed in: a continued
// CRC over an empty piece would start over. An empty piece changes nothing.
const zlibFn: Crc32Fn = (data, value) => (data.length === 0 ? (value ?? 0) >>> 0 : zlibCrc32(data, value ?? 0));

function load(): { fn: Crc32Fn; impl: CrcImplementation; why: string | null } {
  if (process.env.BACKEND_TRANSFER_CRC === 'zlib') return { fn: zlibFn, impl: 'zlib', why: 'BACKEND_TRANSFER_CRC=zlib' };
  try {
    const req = createRequire(import.meta.url);
    const mod = req('@node-rs/crc32') as { crc32: (input: Uint8Array, initialState?: number | null) => number };
    const f = mod.crc32;
    // Trust but check: a known vector, and a continued CRC.
    const v = Buffer.from('123456789');
    if (f(v) !== 0xcbf43926 || f(v.subarray(4), f(v.subarray(0, 4))) !== 0xcbf43926) throw new Error('wrong CRC-32 values');
    return { fn: (data, value) => f(data, value ?? 0) >>> 0, impl: '@node-rs/crc32', why: null };
  } catch (e) {
    return { fn: zlibFn, impl: 'zlib', why: `@node-rs/crc32 not usable: ${(e as Error).message.split('\n')[0]}` };
  }
}

const loaded = load();

/** CRC-32 of `data`, continuing from `value` (the CRC of the bytes before it; 0 to start). */
export const crc32: Crc32Fn = loaded.fn;

/** The implementation in use, and why the fast one is not (null when it is). */
export function crcImplementation(): { impl: CrcImplementation; fallbackReason: string | null } {
  return { impl: loaded.impl, fallbackReason: loaded.why };
}
