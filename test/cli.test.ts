// The CLI in real processes: the demo (the main job), send/receive from JSON
// descriptions with inherited fds and --exec, and supported.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { GenericSource, closeFds, native, sendHandover } from '../src/index.js';
import { escapeText, safeJson } from '../src/cli/escape.js';
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
      JSON.stringify({
        socket: sockPath,
        backendTransfer: true,
        devices: [
          {
            kind: 'generic',
            id: 'misc',
            transfer: true,
            fds: [
              { name: 'irq', fd: 3, kind: 'eventfd' },
              { name: 'ram', fd: 4, kind: 'memfd' },
            ],
            metadata: { note: 'hi' },
          },
        ],
      }),
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
    const receiver = spawn(process.execPath, [...CLI, 'receive', '--listen', sockPath, '--accept', join(dir, 'accept.json'), '--exec', '--', process.execPath, probe], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    receiver.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    let err = '';
    receiver.stderr!.on('data', (d: Buffer) => (err += d.toString()));
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
    expect(['@node-rs/crc32', 'zlib']).toContain((s as unknown as { crc: { impl: string } }).crc.impl);
  });
});

/** Runs the CLI to its end: exit code (or signal) and output. `fds` become the child's fds 3, 4, ... */
function cli(args: string[], o: { fds?: number[]; timeoutMs?: number; env?: Record<string, string> } = {}): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [...CLI, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe', ...(o.fds ?? [])], env: { ...process.env, ...o.env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 60_000);
  return new Promise((resolve) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    }),
  );
}

/**
 * Waits until a socket at `path` listens: the path exists from bind(), before
 * listen(), and a connect in between is refused (seen once under load). The
 * kernel's table of unix sockets (/proc/net/unix) says which ones listen
 * (__SO_ACCEPTCON, 0x10000 in Flags), without connecting to them.
 */
async function socketAppears(path: string): Promise<void> {
  const listening = () =>
    existsSync(path) &&
    readFileSync('/proc/net/unix', 'utf8')
      .split('\n')
      .some((l) => {
        const f = l.trim().split(/\s+/);
        return f[7] === path && (parseInt(f[3] ?? '0', 16) & 0x10000) !== 0;
      });
  for (let i = 0; i < 500 && !listening(); i++) await new Promise((r) => setTimeout(r, 20));
}

let k = 0;
const file = (name: string, content: unknown) => {
  const p = join(dir, `${k++}-${name}`);
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
  return p;
};

describe('send checks its fds before it connects', () => {
  it("refuses fds it did not inherit (the event loop's own, as under npx): exit 2, nothing sent", async () => {
    // No fd is passed: fds 3.. are whatever Node and libuv opened (epoll, eventfds, pipes) or closed.
    const fds = Array.from({ length: 28 }, (_, i) => ({ name: `f${i + 3}`, fd: i + 3 }));
    const desc = file('npx.json', { socket: join(dir, 'nobody.sock'), devices: [{ kind: 'generic', id: 'misc', transfer: true, fds }] });
    const r = await cli(['send', '--devices', desc]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/fd \d+ was not inherited: it is an epoll fd of this process's event loop/);
    expect(r.stderr).toMatch(/node_modules\/\.bin\/backend-transfer/);
    expect(r.stderr).not.toMatch(/ERR_CONNECT_FAILED/);
  });

  it('refuses an fd that is not of its declared kind', async () => {
    const m = native.memfd_create('not-an-eventfd');
    const desc = file('kind.json', { socket: join(dir, 'nobody.sock'), devices: [{ kind: 'generic', id: 'misc', transfer: true, fds: [{ name: 'irq', fd: 3, kind: 'eventfd' }] }] });
    const p = cli(['send', '--devices', desc], { fds: [m] });
    closeFds([m]);
    const r = await p;
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/device misc: fd 3 \(irq, declared eventfd\) is memfd/);
  });
});

describe('receive --exec checks the program before it accepts a source', () => {
  const accept = () => file('accept.json', { devices: [{ kind: 'generic', id: 'misc' }] });

  it('a program that does not exist: exit 2 at once, nothing listens', async () => {
    const sock = join(dir, 'noprog.sock');
    const r = await cli(['receive', '--listen', sock, '--accept', accept(), '--exec', '--', 'bt-no-such-program-4711']);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/cannot run bt-no-such-program-4711: not found on PATH/);
    expect(existsSync(sock)).toBe(false);
  });

  it('a file that is not executable: exit 2', async () => {
    const notExec = file('not-exec.sh', '#!/bin/sh\necho hi\n');
    const r = await cli(['receive', '--listen', join(dir, 'noexec.sock'), '--accept', accept(), '--exec', '--', notExec]);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/is not executable/);
  });

  it('arguments and environment near ARG_MAX: exit 2 before accepting', async () => {
    // A 512 KiB stack limit makes ARG_MAX 128 KiB; 100 KiB of environment still starts the CLI
    // but leaves too little room to be sure the program starts too.
    const sock = join(dir, 'bigenv.sock');
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const c = spawn('prlimit', ['--stack=524288', '--', process.execPath, ...CLI, 'receive', '--listen', sock, '--accept', accept(), '--exec', '--', process.execPath, '-e', '0'], {
        cwd: ROOT,
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, BT_TEST_FILLER: 'f'.repeat(100 * 1024) },
      });
      let stderr = '';
      c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      c.on('close', (code) => resolve({ code, stderr }));
    });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/arguments and environment take \d+ bytes, over the \d+ that execve allows here/);
    expect(existsSync(sock)).toBe(false);
  });

  it('a description over 128 KiB reaches the program in the BT_HANDOVER_FD memfd (the environment cannot hold it)', async () => {
    const sockPath = join(dir, 'big.sock');
    const big = 'm'.repeat(200 * 1024);
    const probe = file(
      'probe-big.mjs',
      `import { readFileSync, readlinkSync } from 'node:fs';
const fd = Number(process.env.BT_HANDOVER_FD);
const d = JSON.parse(readFileSync(fd, 'utf8'));
console.log(JSON.stringify({ inEnv: process.env.BT_HANDOVER !== undefined, metaLength: d.devices[0].meta.big.length, fds: d.devices[0].fds, irq: readlinkSync('/proc/self/fd/' + d.devices[0].fds[0].fd) }));`,
    );
    const receiver = cli(['receive', '--listen', sockPath, '--accept', accept(), '--exec', '--', process.execPath, probe]);
    await socketAppears(sockPath);
    const efd = native.eventfd(0);
    const desc = file('big-devices.json', { socket: sockPath, devices: [{ kind: 'generic', id: 'misc', transfer: true, fds: [{ name: 'irq', fd: 3, kind: 'eventfd' }], metadata: { big } }] });
    const sender = cli(['send', '--devices', desc, '--json'], { fds: [efd] });
    closeFds([efd]);
    const [s, r] = await Promise.all([sender, receiver]);
    expect(s.code, s.stderr + s.stdout).toBe(0);
    expect(r.code, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout.trim()) as { inEnv: boolean; metaLength: number; fds: { name: string; fd: number }[]; irq: string };
    expect(got).toEqual({ inEnv: false, metaLength: big.length, fds: [{ name: 'irq', fd: 3 }], irq: 'anon_inode:[eventfd]' });
  });
});

describe('send / receive options: timeouts, peer policy, pass-through', () => {
  it('--timeout connect=SECONDS bounds how long receive waits; unknown names and bad values are refused', async () => {
    const acc = file('accept.json', { devices: [{ kind: 'generic', id: 'misc' }] });
    const r = await cli(['receive', '--listen', join(dir, 't1.sock'), '--accept', acc, '--timeout', 'connect=0.5', '--json']);
    expect(r.code, r.stderr).toBe(1);
    expect(JSON.parse(r.stdout).error).toMatchObject({ code: 'ERR_TIMEOUT', details: { ms: 500 } });
    const bad = await cli(['receive', '--listen', join(dir, 't2.sock'), '--accept', acc, '--timeout', 'conect=5']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/unknown timeout "conect" \(known: connect, /);
    const neg = await cli(['send', '--devices', acc, '--socket', '/x', '--timeouts', '{"verify": -1}']);
    expect(neg.code).toBe(2);
    expect(neg.stderr).toMatch(/timeout verify: "-1" is not a number of seconds/);
  });

  it('--peer-uid: send refuses a target of another uid', async () => {
    const sockPath = join(dir, 'peer.sock');
    const acc = file('accept.json', { devices: [{ kind: 'generic', id: 'misc' }] });
    const receiver = cli(['receive', '--listen', sockPath, '--accept', acc, '--timeout', 'handshake=5']);
    await socketAppears(sockPath);
    const other = (process.getuid?.() ?? 0) + 4242;
    const desc = file('peer-devices.json', { socket: sockPath, devices: [] });
    const s = await cli(['send', '--devices', desc, '--peer-uid', String(other), '--json']);
    expect(s.code, s.stderr).toBe(1);
    expect(JSON.parse(s.stdout).error.code).toBe('ERR_PEER_REJECTED');
    expect(JSON.parse(s.stdout).error.message).toContain(`not in the allowed uids [${other}]`);
    expect((await receiver).code).toBe(1);
  });

  it('--option passes any other library option through (here stateVersions, which refuses state version 1)', async () => {
    const sockPath = join(dir, 'opt.sock');
    const acc = file('accept.json', { devices: [] });
    const receiver = cli(['receive', '--listen', sockPath, '--accept', acc, '--option', 'stateVersions=[2,3]', '--json']);
    await socketAppears(sockPath);
    const desc = file('opt-devices.json', { socket: sockPath, devices: [], state: Buffer.from('vm state').toString('base64') });
    const s = await cli(['send', '--devices', desc, '--json']);
    const r = await receiver;
    expect(s.code, s.stdout).toBe(1);
    expect(JSON.stringify(JSON.parse(s.stdout).error)).toMatch(/vmm-state|version/i);
    expect(r.code).toBe(1);
    const reserved = await cli(['receive', '--listen', sockPath, '--accept', acc, '--option', 'socket=3']);
    expect(reserved.code).toBe(2);
    expect(reserved.stderr).toMatch(/--option socket: set by the command itself/);
  });
});

describe('warnings, exit codes, escaping', () => {
  it('a handover in which nothing moved says so on both sides', async () => {
    const sockPath = join(dir, 'warn.sock');
    const acc = file('accept.json', {
      devices: [
        { kind: 'generic', id: 'other' },
        { kind: 'generic', id: 'misc' },
      ],
    });
    const receiver = cli(['receive', '--listen', sockPath, '--accept', acc]);
    await socketAppears(sockPath);
    const efd = native.eventfd(0);
    // transfer is not true: the fd stays with the source.
    // 'extra' is not accepted by the target (it accepts 'other' instead).
    const desc = file('warn-devices.json', {
      socket: sockPath,
      devices: [
        { kind: 'generic', id: 'misc', fds: [{ name: 'irq', fd: 3, kind: 'eventfd' }] },
        { kind: 'generic', id: 'extra', fds: [] },
      ],
    });
    const sender = cli(['send', '--devices', desc], { fds: [efd] });
    closeFds([efd]);
    const [s, r] = await Promise.all([sender, receiver]);
    expect(s.code, s.stderr).toBe(0);
    expect(r.code, r.stderr).toBe(0);
    expect(s.stderr).toMatch(/warning: device misc: its 1 fd\(s\) stay here: the device does not have transfer: true/);
    expect(r.stderr).toMatch(/warning: device other: the source did not offer it/);
    expect(r.stderr).toMatch(/warning: device misc: only its state arrives/);
    expect(s.stderr).toMatch(/warning: device extra: the target did not take it \(unknown-device/);
    expect(r.stderr).toMatch(/warning: the source offered device extra \(generic\), which this side does not accept/);
  });

  it('inspect of a file that cannot be read is bad input (exit 2), not a damaged stream', async () => {
    const r = await cli(['inspect', join(dir, 'no-such-recording.bin')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot read .*no-such-recording\.bin/);
    expect(r.stdout).not.toMatch(/damaged|ERROR/);
  });

  it("a peer's ABORT reason with terminal escapes is printed escaped", async () => {
    const sockPath = join(dir, 'esc.sock');
    const acc = file('accept.json', { devices: [{ kind: 'generic', id: 'misc' }] });
    const receiver = cli(['receive', '--listen', sockPath, '--accept', acc]);
    await socketAppears(sockPath);
    const evil = '\x1b[2J\x1b[H\x1b[32mOK: handover complete\x1b[0m\r\n\u009b31m\u202egnp.exe';
    const ac = new AbortController();
    const efd = native.eventfd(0);
    const sent = sendHandover({
      socket: sockPath,
      backendTransfer: true,
      devices: [new GenericSource({ id: 'misc', transfer: true, fds: [{ name: 'irq', fd: efd, kind: 'eventfd' }] })],
      signal: ac.signal,
      warmUp: false,
      onEvent: (e) => e.type === 'phase' && e.phase === 'freeze' && ac.abort(evil),
    }).catch((e: Error) => e);
    const [s, r] = await Promise.all([sent, receiver]);
    closeFds([efd]);
    expect((s as { code?: string }).code).toBe('ERR_HANDOVER_ABORTED');
    expect(r.code).toBe(1);
    // Nothing a terminal acts on: no ESC, no CR, no C1 CSI, no bidi override, and one line only.
    expect(r.stderr).not.toMatch(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('\\x1b[2J\\x1b[H\\x1b[32mOK: handover complete\\x1b[0m\\x0d\\x0a\\x9b31m\\u202egnp.exe');
  });

  it('escapeText and safeJson', () => {
    expect(escapeText('a\x1b[31mb\\c\nd\u200f\u0085')).toBe('a\\x1b[31mb\\\\c\\x0ad\\u200f\\x85');
    expect(escapeText('plain ünïcödé text ✓')).toBe('plain ünïcödé text ✓');
    const v = { s: '\x1b]0;title\x07\u009b2J\u2066x\u2028', n: 1n };
    const j = safeJson(v, 0);
    expect(j).not.toMatch(/[\x00-\x1f\x7f-\x9f\u2028\u2066]/);
    expect(JSON.parse(j)).toEqual({ s: v.s, n: 1 });
  });
});

describe('demo options', () => {
  it('bad values are refused with exit 2 and a one-line message', async () => {
    for (const args of [['--chardevs', 'abc'], ['--without', 'disk'], ['--state-mib', '1e9'], ['--tap-queues', '0'], ['--vhost-devices=-1']]) {
      const r = await cli(['demo', ...args]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
      expect(r.stdout).not.toMatch(/OK/);
    }
  });

  it('runs where no network namespace can be made (unshare -Urn): TAP is skipped with the reason, a backend left out says how to include it', async (ctx) => {
    const probe = await promisify(execFile)('unshare', ['-Urn', 'true']).then(
      () => null,
      (e: Error) => e.message,
    );
    if (probe !== null) {
      console.log(`skipped: unshare -Urn does not work here (${probe})`);
      ctx.skip();
    }
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const c = spawn('unshare', ['-Urn', process.execPath, ...CLI, 'demo', '--json', '--without', 'vhost-user', '--state-mib', '1'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      c.on('close', (code) => resolve({ code, stdout, stderr }));
    });
    expect(r.code, r.stderr).toBe(0);
    const rep = JSON.parse(r.stdout) as { ok: boolean; skipped: { backend: string; reason: string; enable: string }[] };
    expect(rep.ok).toBe(true);
    const tap = rep.skipped.find((s) => s.backend.startsWith('TAP'));
    const vhost = rep.skipped.find((s) => s.backend.startsWith('vhost-user'));
    expect(tap?.reason).toMatch(/network namespace cannot be created here/);
    expect(vhost).toMatchObject({ reason: 'left out (--without vhost-user)', enable: 'leave out --without vhost-user' });
  }, 120_000);
});
