// The second decoder (test/interop/decode_stream.py, Python standard library
// only, following docs/stream-format.md, no code shared with the library) agrees
// with every conformance vector and decodes a stream recorded by recordHandover;
// a Python target built on it (test/interop/live_target.py) takes live
// handovers from sendHandover, fds and all.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { GenericTarget, GenericSource, native, receiveHandover, recordHandover, sendHandover, type GenericBackend } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();
const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SCRIPT = join(ROOT, 'test/interop/decode_stream.py');
const dir = mkdtempSync(join(tmpdir(), 'bt-pyinterop-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let python: string | null = null;
try {
  // 3.10: os.eventfd and socket.send_fds/recv_fds (Debian bookworm has 3.11).
  execFileSync('python3', ['-c', 'import sys, zlib, json, hashlib; assert sys.version_info >= (3, 10)'], { stdio: 'ignore' });
  python = 'python3';
} catch {
  console.log('interop-python: skipped, no python3 >= 3.10 here (CI installs python3)');
}

describe.skipIf(python === null)('the independent Python decoder', () => {
  it('matches every vector in docs/vectors (frames, errors and offsets, with and without fds)', async () => {
    const { stdout } = await run(python!, [SCRIPT, join(ROOT, 'docs/vectors')]);
    expect(stdout).toMatch(/^(\d+) vectors, 0 mismatch\(es\)$/m);
  });

  for (const memfdPayloads of [false, true]) {
    it(`a Python target takes a live handover from sendHandover: a memfd, an eventfd, 1 MiB of state${memfdPayloads ? ' (in a payload memfd)' : ''}`, async () => {
      const path = join(dir, `live-${memfdPayloads}.sock`);
      const py = spawn(python!, [join(ROOT, 'test/interop/live_target.py'), path], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let errText = '';
      py.stdout.on('data', (d: Buffer) => (out += d));
      py.stderr.on('data', (d: Buffer) => (errText += d));
      const exited = new Promise<number | null>((resolve) => py.on('exit', (code) => resolve(code)));
      for (let i = 0; i < 500 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 20));
      const memfd = native.memfd_create('py-live');
      const content = Buffer.from('guest memory, as the source wrote it');
      writeSync(memfd, content, 0, content.length, 0);
      const efd = native.eventfd(0);
      const state = Buffer.alloc(1 << 20);
      for (let i = 0; i < state.length; i++) state[i] = (i * 131) >>> 3;
      let moved = false; // after the commit the source released (closed) its copies
      try {
        const res = await sendHandover({
          socket: path,
          backendTransfer: true,
          memfdPayloads,
          warmUp: false,
          collectGarbage: false,
          devices: [
            new GenericSource({
              id: 'gen0',
              transfer: true,
              fds: [
                { name: 'mem', fd: memfd, kind: 'memfd' },
                { name: 'ev', fd: efd, kind: 'eventfd' },
              ],
              state: Buffer.from('blob'),
            }),
          ],
          state,
        });
        moved = true;
        expect(res.devices).toEqual([{ id: 'gen0', kind: 'generic', outcome: 'moved', fds: 2 }]);
        expect(await exited, errText).toBe(0);
        const got = JSON.parse(out) as Record<string, unknown>;
        expect(got).toMatchObject({
          ok: true,
          memfd: content.toString(),
          eventfd: 10,
          stateBytes: state.length,
          stateSha256: createHash('sha256').update(state).digest('hex'),
          genericBlob: 'blob',
          probe: 'ok',
          // the probe, the two device fds, and with memfdPayloads the state's payload memfd
          fdNumbering: memfdPayloads ? 4 : 3,
        });
      } finally {
        if (!moved) {
          native.close(memfd);
          native.close(efd);
        }
        py.kill();
      }
    });
  }

  for (const memfdPayload of [false, true]) {
    it(`a Python source hands a live handover to receiveHandover: a memfd, an eventfd, 1 MiB of state${memfdPayload ? ' (in a payload memfd)' : ''}`, async () => {
      const path = join(dir, `src-${memfdPayload}.sock`);
      const target = receiveHandover({
        socket: path,
        backendTransfer: true,
        warmUp: false,
        collectGarbage: false,
        accept: [new GenericTarget({ id: 'gen0', expect: { mem: 'memfd', ev: 'eventfd' } })],
      });
      target.catch(() => undefined);
      const py = spawn(python!, [join(ROOT, 'test/interop/live_source.py'), path, ...(memfdPayload ? ['--memfd-payload'] : [])], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let errText = '';
      py.stdout.on('data', (d: Buffer) => (out += d));
      py.stderr.on('data', (d: Buffer) => (errText += d));
      const exited = new Promise<number | null>((resolve) => py.on('exit', (code) => resolve(code)));
      try {
        const res = await target;
        const dev = res.devices.get('gen0')!;
        expect([res.outcome, dev.how]).toEqual(['committed', 'received']);
        const b = dev.backend as GenericBackend;
        try {
          const mem = Buffer.alloc(64);
          const n = readSync(b.fd('mem'), mem, 0, 64, 0);
          expect(mem.subarray(0, n).toString()).toBe('guest memory from a Python source');
          const eight = Buffer.alloc(8);
          eight.writeBigUInt64LE(3n);
          writeSync(b.fd('ev'), eight);
          expect(readSync(b.fd('ev'), eight, 0, 8, null)).toBe(8);
          expect(eight.readBigUInt64LE()).toBe(3n);
          expect([b.metadata, b.state.toString()]).toEqual([{ from: 'python' }, 'blob']);
        } finally {
          b.close();
        }
        expect(await exited, errText).toBe(0);
        const got = JSON.parse(out) as { ok: boolean; stateSha256: string; fdsSent: number };
        expect(got.ok).toBe(true);
        expect(createHash('sha256').update(res.state!).digest('hex')).toBe(got.stateSha256);
        expect(got.fdsSent).toBe(memfdPayload ? 4 : 3);
      } finally {
        py.kill();
      }
    });
  }

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
