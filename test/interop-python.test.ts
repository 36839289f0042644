// The independent decoder (test/interop/decode_stream.py, Python standard
// library only, written from docs/stream-format.md) agrees with every
// conformance vector, and decodes a stream recorded by recordHandover.
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { GenericSource, native, recordHandover } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();
const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SCRIPT = join(ROOT, 'test/interop/decode_stream.py');
const dir = mkdtempSync(join(tmpdir(), 'bt-pyinterop-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let python: string | null = null;
try {
  execFileSync('python3', ['-c', 'import zlib, json, hashlib'], { stdio: 'ignore' });
  python = 'python3';
} catch {
  console.log('interop-python: skipped, python3 is not installed (CI installs it)');
}

describe.skipIf(python === null)('the independent Python decoder', () => {
  it('matches every vector in docs/vectors (frames, errors and offsets, with and without fds)', async () => {
    const { stdout } = await run(python!, [SCRIPT, join(ROOT, 'docs/vectors')]);
    expect(stdout).toMatch(/^(\d+) vectors, 0 mismatch\(es\)$/m);
  });

  it('decodes a stream recorded by recordHandover, CRCs, counts and order included', async () => {
    const efd = native.eventfd(0);
    try {
      const file = join(dir, 'rec.bts');
      const state = Buffer.alloc(2 * 1024 * 1024 + 3, 0x5a);
      await recordHandover({ to: file, devices: [new GenericSource({ id: 'gen0', transfer: true, fds: [{ name: 'ev', fd: efd, kind: 'eventfd' }] })], state });
      const { stdout } = await run(python!, [SCRIPT, file], { maxBuffer: 16 << 20 });
      const out = JSON.parse(stdout) as { error: unknown; frames: { type: string; body: Record<string, unknown> }[] };
      expect(out.error).toBeNull();
      expect(out.frames.map((f) => f.type)).toEqual(['HELLO', 'PLAN', 'SECTION_FULL', 'SECTION_START', 'SECTION_PART', 'SECTION_END', 'END_OF_STATE', 'EOF']);
      expect(out.frames[6]!.body).toEqual({ sectionCount: 2, totalFds: 0, payloadBytes: String(state.length + 30) });
    } finally {
      native.close(efd);
    }
  });
});
