// recordHandover writes the state-only stream of a handover to a file; the
// library's reader and `backend-transfer inspect` read it back.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { GenericSource, StreamReader, native, recordHandover, type SectionItem } from '../src/index.js';
import { countOpenFds, trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();
const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'bt-record-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('recordHandover', () => {
  it('writes HELLO PLAN sections END_OF_STATE EOF, every device state-only, fds untouched', async () => {
    const efd = native.eventfd(7);
    try {
      const state = Buffer.alloc(3 * 1024 * 1024 + 5);
      for (let i = 0; i < state.length; i++) state[i] = (i * 31) & 0xff;
      const file = join(dir, 'vm.bts');
      const before = countOpenFds();
      const res = await recordHandover({
        to: file,
        devices: [new GenericSource({ id: 'gen0', transfer: true, fds: [{ name: 'ev', fd: efd, kind: 'eventfd' }], metadata: { a: 1 }, state: Buffer.from('blob') })],
        state,
      });
      expect(countOpenFds()).toBe(before);
      expect(res.plan.totalFds).toBe(0);
      expect(res.plan.devices.map((d) => [d.id, d.kind, d.withFds])).toEqual([
        ['gen0', 'generic', false],
        ['vmm-state', 'state', false],
      ]);
      const bytes = readFileSync(file);
      expect(bytes.length).toBe(res.bytes);
      const items = new StreamReader({ role: 'inspect' }).feed(bytes);
      expect(items.map((i) => i.type)).toEqual(['hello', 'plan', 'section', 'section', 'section', 'section', 'section', 'end-of-state', 'eof']);
      const hello = items[0] as Extract<(typeof items)[0], { type: 'hello' }>;
      expect(hello.hello.canPassFds).toBe(false);
      expect(hello.probe).toBe('none');
      const sections = items.filter((i): i is SectionItem => i.type === 'section');
      const gen = sections.filter((s) => s.idstr === 'gen0');
      expect(Buffer.concat(gen.map((s) => s.payload)).toString()).toBe('{"metadata":{"a":1},"names":["ev"]}\0blob');
      const vmm = sections.filter((s) => s.idstr === 'vmm-state');
      expect(vmm.map((s) => s.frame)).toEqual(['start', 'part', 'part', 'end']);
      const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
      expect(sha(Buffer.concat(vmm.map((s) => s.payload)))).toBe(sha(state));
      // The eventfd is still the caller's, with its count.
      const b = Buffer.alloc(8);
      expect(readSync(efd, b)).toBe(8);
      expect(b.readBigUInt64LE()).toBe(7n);

      const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/cli/bin.ts', 'inspect', '--json', file], { cwd: ROOT });
      const report = JSON.parse(stdout) as { complete: boolean; error: unknown; sections: { device: string; payloadBytes: number; crc: string }[] };
      expect(report.error).toBeNull();
      expect(report.complete).toBe(true);
      expect(report.sections.map((s) => [s.device, s.payloadBytes, s.crc])).toEqual([
        ['gen0', 40, 'ok'],
        ['vmm-state', state.length, 'ok'],
      ]);
    } finally {
      native.close(efd);
    }
  });

  it('backend-transfer send --record FILE writes the stream, and inspect reads it', async () => {
    const desc = join(dir, 'devices.json');
    const stateFile = join(dir, 'state.bin');
    writeFileSync(desc, JSON.stringify({ devices: [{ kind: 'generic', id: 'g', transfer: true, fds: [], metadata: { x: 'y' } }] }));
    writeFileSync(stateFile, Buffer.alloc(5000, 9));
    const file = join(dir, 'cli.bts');
    const sent = await run(process.execPath, ['--import', 'tsx', 'src/cli/bin.ts', 'send', '--devices', desc, '--state', stateFile, '--record', file, '--json'], { cwd: ROOT });
    expect(JSON.parse(sent.stdout)).toMatchObject({ file, sections: 2, payloadBytes: 5000 + 33 });
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/cli/bin.ts', 'inspect', '--json', file], { cwd: ROOT });
    const report = JSON.parse(stdout) as { complete: boolean; error: unknown; sections: { device: string; payloadBytes: number }[] };
    expect([report.complete, report.error]).toEqual([true, null]);
    expect(report.sections.map((s) => [s.device, s.payloadBytes])).toEqual([
      ['g', 33],
      ['vmm-state', 5000],
    ]);
  });

  it('an unwritable path fails at once with the system error, and writes nothing', async () => {
    await expect(recordHandover({ to: join(dir, 'no', 'such', 'dir.bts'), devices: [], state: Buffer.from('x') })).rejects.toMatchObject({
      code: 'ERR_SYSTEM',
      message: expect.stringContaining('ENOENT'),
    });
  });
});
