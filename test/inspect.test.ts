// `backend-transfer inspect`: a recorded stream, damaged and whole, read by the CLI
// in a real process.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { Features } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { buildStream } from './helpers/stream.js';

trackFdLeaks();
const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'bt-inspect-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function cliEnv(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['--import', 'tsx', 'src/cli/bin.ts', ...args], { cwd: ROOT, env });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

function cli(...args: string[]): Promise<{ code: number; stdout: string }> {
  return cliEnv(process.env, ...args);
}

async function recorded(name: string, mutate?: (b: Buffer) => Buffer): Promise<string> {
  const big = Buffer.alloc(10_000, 1);
  const built = await buildStream(
    [
      { kind: 'tap', id: 'net0', fds: ['eventfd', 'eventfd'], payload: Buffer.from('tap-state') },
      { kind: 'state', id: 'cpu0', payload: big },
    ],
    { features: Features.FDS | Features.BODY_CRC, partSize: 4096 },
  );
  let bytes = built.channel.bytes();
  built.channel.close();
  if (mutate) bytes = mutate(Buffer.from(bytes));
  const file = join(dir, name);
  writeFileSync(file, bytes);
  return file;
}

describe('backend-transfer inspect', () => {
  it('prints each section with its device, version, sizes, fd attachments and CRC status', async () => {
    const file = await recorded('whole.bts');
    const { code, stdout } = await cli('inspect', file);
    expect(code).toBe(0);
    expect(stdout).toMatch(/PLAN\s+version 1, features FDS\|BODY_CRC, 2 device\(s\), 1 with fds \(2 fds\)/);
    expect(stdout).toMatch(/1\s+net0\/0\s+tap\s+1\s+1\s+9 B\s+eventfd:eventfd0 eventfd:eventfd1\s+ok/);
    expect(stdout).toMatch(/2\s+cpu0\/0\s+state\s+1\s+3\s+9\.8 KiB\s+-\s+ok/);
    expect(stdout).toMatch(/END_OF_STATE\s+2 section\(s\), 2 fd\(s\), 9\.8 KiB of state/);
    expect(stdout).toMatch(/complete \(EOF frame seen\)/);
  });

  it('reads a recorded stream where the addon cannot be loaded (it is loaded on first use, not at import)', async () => {
    const file = await recorded('no-addon.bts');
    const missing = join(dir, 'no-such-addon.node');
    const env = { ...process.env, BACKEND_TRANSFER_NATIVE: missing };
    const { code, stdout } = await cliEnv(env, 'inspect', file);
    expect(code).toBe(0);
    expect(stdout).toMatch(/1\s+net0\/0\s+tap\s+1\s+1\s+9 B\s+eventfd:eventfd0 eventfd:eventfd1\s+ok/);
    expect(stdout).toMatch(/complete \(EOF frame seen\)/);
    // The same override does reach the loader: a command that needs the addon fails on it.
    const needs = await cliEnv(env, 'supported');
    expect(needs.code).not.toBe(0);
    expect(needs.stderr).toContain('no-such-addon.node');
  });

  it('--json gives the same facts for machines', async () => {
    const file = await recorded('json.bts');
    const { code, stdout } = await cli('inspect', file, '--json');
    expect(code).toBe(0);
    const r = JSON.parse(stdout) as { sections: { device: string; payloadBytes: number; attachments: { kind: string }[]; crc: string }[]; complete: boolean };
    expect(r.complete).toBe(true);
    expect(r.sections.map((s) => [s.device, s.payloadBytes, s.attachments.length, s.crc])).toEqual([
      ['net0', 9, 2, 'ok'],
      ['cpu0', 10_000, 0, 'ok'],
    ]);
  });

  it('marks a section whose CRC is bad and exits 1', async () => {
    // Flip a byte inside cpu0's payload (far from any header).
    const file = await recorded('bad.bts', (b) => {
      const i = b.indexOf(Buffer.alloc(64, 1)) + 32;
      b[i]! ^= 0xff;
      return b;
    });
    const { code, stdout } = await cli('inspect', file);
    expect(code).toBe(1);
    expect(stdout).toMatch(/cpu0\/0 .* BAD \(1 frame\(s\)\)/);
  });

  it('says where a truncated stream ends', async () => {
    const file = await recorded('cut.bts', (b) => b.subarray(0, b.length - 100));
    const { code, stdout } = await cli('inspect', file);
    expect(code).toBe(1);
    expect(stdout).toMatch(/ERROR\s+ERR_STREAM_TRUNCATED: stream ended in the middle of a SECTION_END frame/);
  });

  it('refuses a file that is not a stream', async () => {
    const file = join(dir, 'not.bts');
    writeFileSync(file, 'hello world, not a stream');
    const { code, stdout } = await cli('inspect', file);
    expect(code).toBe(1);
    expect(stdout).toMatch(/ERR_STREAM_BAD_MAGIC/);
  });
});
