// The CLI in real processes: the demo (the main job), send/receive from JSON
// descriptions with inherited fds and --exec, and supported.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { closeFds, native } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();
const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = ['--import', 'tsx', 'src/cli/bin.ts'];
const dir = mkdtempSync(join(tmpdir(), 'bt-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('backend-transfer demo', () => {
  it('moves every backend available here, live, and no peer sees a reconnect', async () => {
    const { stdout } = await run(process.execPath, [...CLI, 'demo', '--json', '--state-mib', '2'], { cwd: ROOT, timeout: 120_000 });
    const r = JSON.parse(stdout) as {
      ok: boolean;
      problems: string[];
      moved: { id: string; kind: string; how: string }[];
      reconnects: { reconnects: number }[];
      skipped: { backend: string }[];
      stateBytes: number;
      downtimeMs: number;
    };
    expect(r.problems).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.moved.map((m) => m.how).every((h) => h === 'received')).toBe(true);
    expect(r.moved.some((m) => m.kind === 'chardev-socket')).toBe(true);
    // Every backend is either moved or skipped with a reason.
    expect(r.moved.length + r.skipped.length).toBe(3);
    expect(r.reconnects.every((x) => x.reconnects === 0)).toBe(true);
    expect(r.stateBytes).toBe(2 * 1024 * 1024);
    expect(r.downtimeMs).toBeGreaterThan(0);
  });

  it('prints a readable report', async () => {
    const { stdout } = await run(process.execPath, [...CLI, 'demo', '--without', 'tap', '--without', 'vhost-user'], { cwd: ROOT, timeout: 120_000 });
    expect(stdout).toMatch(/moved\s+kind\s+fds/);
    expect(stdout).toMatch(/serial0\s+chardev-socket\s+1\s+received/);
    expect(stdout).toMatch(/downtime\s+[\d.]+ ms/);
    expect(stdout).toMatch(/reconnects\s+0 seen by chardev echo peer/);
    expect(stdout).toMatch(/skipped\s+TAP .*left out/);
    expect(stdout).toMatch(/OK: every backend moved live/);
  });
});

describe('backend-transfer send / receive', () => {
  it('hands inherited fds described in JSON to a program started by receive --exec', async () => {
    const sockPath = join(dir, 'h.sock');
    writeFileSync(join(dir, 'accept.json'), JSON.stringify({ backendTransfer: true, devices: [{ kind: 'generic', id: 'misc', expect: { irq: 'eventfd', ram: 'memfd' } }] }));
    writeFileSync(
      join(dir, 'devices.json'),
      JSON.stringify({ socket: sockPath, backendTransfer: true, devices: [{ kind: 'generic', id: 'misc', transfer: true, fds: [{ name: 'irq', fd: 3, kind: 'eventfd' }, { name: 'ram', fd: 4, kind: 'memfd' }], metadata: { note: 'hi' } }] }),
    );
    // The program run by --exec reports what it inherited.
    const probe = join(dir, 'probe.mjs');
    writeFileSync(
      probe,
      `import { readlinkSync } from 'node:fs';
const d = JSON.parse(process.env.BT_HANDOVER);
const fds = d.devices[0].fds.map((f) => ({ name: f.name, fd: f.fd, link: readlinkSync('/proc/self/fd/' + f.fd) }));
console.log(JSON.stringify({ fds, how: d.devices[0].how, meta: d.devices[0].meta }));`,
    );
    const receiver = spawn(process.execPath, [...CLI, 'receive', '--listen', sockPath, '--accept', join(dir, 'accept.json'), '--exec', '--', process.execPath, probe], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    receiver.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    let err = '';
    receiver.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const { existsSync } = await import('node:fs');
    for (let i = 0; i < 200 && !existsSync(sockPath); i++) await new Promise((r) => setTimeout(r, 20));
    const efd = native.eventfd(5);
    const m = native.memfd_create('ram');
    const sender = spawn(process.execPath, [...CLI, 'send', '--devices', join(dir, 'devices.json'), '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe', efd, m] });
    closeFds([efd, m]);
    let sent = '';
    sender.stdout!.on('data', (d: Buffer) => (sent += d.toString()));
    const [sc, rc] = await Promise.all([new Promise((r) => sender.on('close', r)), new Promise((r) => receiver.on('close', r))]);
    expect(sc, sent).toBe(0);
    expect(rc, err).toBe(0);
    expect(JSON.parse(sent).devices).toEqual([{ id: 'misc', kind: 'generic', outcome: 'moved', fds: 2 }]);
    const got = JSON.parse(out.trim()) as { fds: { name: string; fd: number; link: string }[]; how: string; meta: unknown };
    expect(got.how).toBe('received');
    expect(got.meta).toEqual({ note: 'hi' });
    expect(got.fds.map((f) => [f.name, f.fd])).toEqual([
      ['irq', 3],
      ['ram', 4],
    ]);
    expect(got.fds[0]!.link).toBe('anon_inode:[eventfd]');
    expect(got.fds[1]!.link).toMatch(/^\/memfd:ram/);
  });

  it('send refuses a description it cannot use, with a clear message', async () => {
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ socket: '/x', devices: [{ kind: 'floppy', id: 'a' }] }));
    const r = await run(process.execPath, [...CLI, 'send', '--devices', join(dir, 'bad.json')], { cwd: ROOT }).catch((e: { code: number; stderr: string }) => e);
    expect((r as { code: number }).code).toBe(2);
    expect((r as { stderr: string }).stderr).toMatch(/unknown kind floppy/);
  });
});

describe('backend-transfer supported', () => {
  it('lists the kinds and what the machine has', async () => {
    const { stdout } = await run(process.execPath, [...CLI, 'supported', '--json'], { cwd: ROOT });
    const s = JSON.parse(stdout) as { kinds: string[]; machine: Record<string, boolean> };
    expect(s.kinds).toEqual(['tap', 'vhost-user', 'chardev-socket', 'generic']);
    expect(Object.keys(s.machine).sort()).toEqual(['memfd', 'peerPidfd', 'tun', 'vhostNet']);
  });
});
