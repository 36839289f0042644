// The independent implementation (test/interop/independent/): a decoder, a live
// target and a live source written by an outside implementer from
// docs/stream-format.md, the vectors and the README's CLI section alone (Python
// standard library only; AMBIGUITIES.md records what the text left open and how
// each point was settled). Here it replays every vector with real fds through a
// real socketpair, takes a live handover from `backend-transfer send`, and hands
// live handovers to `backend-transfer receive` (also with --exec, and with a
// dropped probe). Plus the one rule it found the library's own source broke: a
// source whose state fails midway sends ABORT inside the open section, and both
// the library's target and the independent one report the source's reason.
// Each live run is one short handover (about a second).
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { receiveHandover, sendHandover } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();
const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const IND = join(ROOT, 'test/interop/independent');
const dir = mkdtempSync(join(tmpdir(), 'bt-independent-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
// The Python peers start `node bin/backend-transfer.js` with this node.
const env = { ...process.env, BT_NODE: process.execPath, PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}` };

let python: string | null = null;
try {
  // 3.10: os.eventfd, os.memfd_create and socket.send_fds/recv_fds.
  execFileSync('python3', ['-c', 'import sys; assert sys.version_info >= (3, 10)'], { stdio: 'ignore' });
  python = 'python3';
} catch {
  console.log('interop-independent: skipped, no python3 >= 3.10 here (CI installs python3)');
}
const cliBuilt = existsSync(join(ROOT, 'dist/cli/bin.js'));
if (!cliBuilt) console.log('interop-independent: live CLI runs skipped, dist/ is not built (npm run build:ts)');

interface PySummary {
  ok: boolean;
  [k: string]: unknown;
}

async function py(script: string, args: string[]): Promise<PySummary> {
  const r = await run(python!, [join(IND, script), ...args], { cwd: ROOT, env, timeout: 60_000, maxBuffer: 16 << 20 }).catch((e: { stdout?: string; stderr?: string }) => e);
  try {
    return JSON.parse(r.stdout ?? '') as PySummary;
  } catch {
    throw new Error(`${script} printed no JSON: ${r.stdout ?? ''} ${r.stderr ?? ''}`);
  }
}

describe.skipIf(python === null)('the independent implementation (outside reading of the spec)', () => {
  it('replays every vector in docs/vectors, real memfds and eventfds through a real socketpair, and from the bytes alone', async () => {
    const { stdout } = await run(python!, [join(IND, 'check_vectors.py'), join(ROOT, 'docs/vectors'), '--socketpair'], { env });
    const m = /^(\d+) passed, (\d+) failed, (\d+) skipped$/m.exec(stdout);
    expect(m, stdout).not.toBeNull();
    expect(Number(m![2]), stdout).toBe(0);
    expect(Number(m![1])).toBeGreaterThanOrEqual(86);
    // Only the STAGED vectors are skipped (this reader predates that feature), and they are named.
    const skippedNames = [...stdout.matchAll(/^skip (\S+) \(feature STAGED/gm)].map((x) => x[1]!);
    expect(skippedNames.length).toBe(Number(m![3]));
    for (const n of skippedNames) expect(n).toMatch(/stage/);
  });

  it.skipIf(!cliBuilt)('recorded streams both ways: `send --record` read by its decoder, its encoder read by `inspect`', async () => {
    const s = await py('record_roundtrip.py', []);
    expect(s.ok, JSON.stringify(s)).toBe(true);
  });

  it.skipIf(!cliBuilt)('its target takes a live handover from `backend-transfer send`: memfd, eventfd and 1 MiB of state, checked by content', async () => {
    const s = await py('py_target.py', ['--spawn-node']);
    expect(s.ok, JSON.stringify(s)).toBe(true);
    expect(s.framesRead).toEqual(['HELLO', 'PLAN', 'SECTION_FULL', 'SECTION_FULL', 'END_OF_STATE', 'COMMIT', 'EOF']);
    const devices = s.devices as { id: string; fds?: { kind: string; sameFileAsSent?: boolean }[]; stateSha256?: string }[];
    expect(devices.find((d) => d.id === 'gen0')!.fds!.map((f) => [f.kind, f.sameFileAsSent ?? null])).toEqual([
      ['memfd', true],
      ['eventfd', null],
    ]);
  });

  for (const variant of [[], ['--memfd-payload'], ['--ping', '--no-crc']]) {
    it.skipIf(!cliBuilt)(`its source hands a live handover to \`backend-transfer receive --json\` ${variant.join(' ') || '(state in 3 parts)'}; the report carries the state's SHA-256`, async () => {
      const s = await py('py_source.py', ['--spawn-node', '--parts', '3', ...variant]);
      expect(s.ok, JSON.stringify(s)).toBe(true);
      const checks = s.checks as Record<string, boolean>;
      expect(checks).toMatchObject({ sourceCommitted: true, nodeExit0: true, reportCommitted: true, stateBytesArrived: true, stateContentArrived: true, fdsArrived: true });
      // ACK(LOADED)'s detail counts sections (gen0 and vmm-state), not the 4 section frames.
      const acks = (s.source as { acks: { stage: number; detail: string }[] }).acks;
      expect(acks.map((a) => a.stage)).toEqual([1, 2, 3, 4]);
      expect(acks[0]!.detail).toBe('2 section(s), 2 fd(s)');
    });
  }

  it.skipIf(!cliBuilt)('a COMMIT sent right after END_OF_STATE (breaking the commit rule) is read only after ACK(ADOPTED): the ACKs still come in order', async () => {
    const s = await py('py_source.py', ['--spawn-node', '--commit-early']);
    expect(s.ok, JSON.stringify(s)).toBe(true);
    expect((s.source as { acks: { stage: number }[] }).acks.map((a) => a.stage)).toEqual([1, 2, 3, 4]);
  });

  it.skipIf(!cliBuilt)('`receive --exec --json` prints its report on stdout before the program runs, and the program uses the fds', async () => {
    const s = await py('py_source.py', ['--spawn-node', '--exec']);
    expect(s.ok, JSON.stringify(s)).toBe(true);
    const report = s.nodeReport as { outcome: string; stateSha256: string; devices: { id: string; fds: { name: string; fd: number }[] }[] };
    expect(report.outcome).toBe('committed');
    expect(report.stateSha256).toBe(s.stateSha256);
    // The report gives the child's fd numbers (3, 4, ...).
    expect(report.devices.find((d) => d.id === 'gen0')!.fds).toEqual([
      { name: 'ram', fd: 3 },
      { name: 'irq', fd: 4 },
    ]);
    expect(s.checks).toMatchObject({ childReadMemfd: true, childEventfdRoundTrip: true });
  });

  it.skipIf(!cliBuilt)('a dropped probe: the target answers canPassFds 0, probe "missing", the fd device STATE_ONLY with reason 6; the source aborts with ERR_CHANNEL_DROPS_FDS', async () => {
    const s = await py('py_source.py', ['--spawn-node', '--drop-probe']);
    expect(s.ok).toBe(false);
    expect(s.error).toMatchObject({ code: 'ERR_CHANNEL_DROPS_FDS' });
    const welcome = (s.returnFrames as { type: string; body: Record<string, unknown> }[])[0]!;
    expect(welcome.type).toBe('WELCOME');
    expect(welcome.body).toMatchObject({ canPassFds: 0, info: { probe: 'missing' } });
    expect(welcome.body.answers).toEqual([
      { id: 'gen0', instance: 0, decision: 1, reason: 6, minVersion: 1, maxVersion: 1 },
      { id: 'vmm-state', instance: 0, decision: 1, reason: 0, minVersion: 1, maxVersion: 1 },
    ]);
    // The library's target heard the source's ABORT.
    expect(String(s.nodeStderr ?? '') + JSON.stringify(s.nodeReport ?? '')).toMatch(/ERR_HANDOVER_ABORTED/);
  });
});

describe.skipIf(!cliBuilt)('`backend-transfer receive` without --json', () => {
  it("ends with the state's size and SHA-256, so a peer can check the content", async () => {
    const path = join(dir, 'text.sock');
    const acceptFile = join(dir, 'accept-none.json');
    writeFileSync(acceptFile, JSON.stringify({ backendTransfer: false, devices: [] }));
    const recv = run(process.execPath, [join(ROOT, 'bin/backend-transfer.js'), 'receive', '--listen', path, '--accept', acceptFile], { cwd: ROOT, timeout: 60_000 });
    for (let i = 0; i < 500 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10));
    const state = Buffer.alloc(300_000);
    for (let i = 0; i < state.length; i++) state[i] = (i * 31) >>> 2;
    await sendHandover({ socket: path, backendTransfer: false, devices: [], state, warmUp: false, collectGarbage: false });
    const { stdout } = await recv;
    expect(stdout.trim().split('\n').at(-1)).toBe(`state ${state.length} bytes, sha256 ${createHash('sha256').update(state).digest('hex')}`);
  });
});

/** Runs the library's source whose state breaks midway (test/fixtures/abort-midway-source.ts) against PATH. */
function brokenSource(path: string): Promise<{ ok: boolean; code?: string; message?: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/fixtures/abort-midway-source.ts'), path], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (err += d));
    child.on('error', reject);
    child.on('close', () => {
      try {
        resolve(JSON.parse(out) as { ok: boolean; code?: string; message?: string });
      } catch {
        reject(new Error(`the source printed no JSON: ${out} ${err}`));
      }
    });
  });
}

describe('a source whose state breaks midway sends ABORT inside the open section', () => {
  it("the library's target reports the source's code and reason (ERR_HANDOVER_ABORTED), not a protocol error", async () => {
    const path = join(dir, 'midway-lib.sock');
    const target = receiveHandover({ socket: path, backendTransfer: false, accept: [], warmUp: false, collectGarbage: false });
    target.catch(() => undefined);
    for (let i = 0; i < 500 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10));
    const src = await brokenSource(path);
    expect(src).toMatchObject({ ok: false, code: 'ERR_SYSTEM', message: expect.stringContaining('broke midway') });
    const e = await target.then(
      () => null,
      (err: unknown) => err as { code: string; details: { code?: string; reason?: string; phase?: string } },
    );
    expect(e?.code).toBe('ERR_HANDOVER_ABORTED');
    expect(e?.details).toMatchObject({ code: 'ERR_SYSTEM', phase: 'transfer', reason: expect.stringContaining('broke midway') });
  });

  it.skipIf(python === null)('the independent target reads the ABORT inside the section and reports it (ERR_HANDOVER_ABORTED with the source code)', async () => {
    const path = join(dir, 'midway-py.sock');
    const target = run(python!, [join(IND, 'py_target.py'), '--listen', path], { cwd: ROOT, env, timeout: 60_000 }).catch((e: { stdout: string }) => e);
    for (let i = 0; i < 500 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 10));
    const src = await brokenSource(path);
    expect(src).toMatchObject({ ok: false, code: 'ERR_SYSTEM' });
    const s = JSON.parse((await target).stdout) as PySummary;
    expect(s).toMatchObject({ ok: false, committed: false, error: 'ERR_HANDOVER_ABORTED', errorReason: expect.stringMatching(/^ERR_SYSTEM: .*broke midway/) });
  });
});
