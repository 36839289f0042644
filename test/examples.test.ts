// The examples are documentation that runs: each is run here the way a reader
// runs it (node + tsx, from the repository root), and its --json report checked.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import type { Report } from '../examples/handover-to-qemu.js';
import { netnsUnavailable, skipUnless } from './helpers/env.js';
import { trackFdLeaks } from './helpers/fds.js';
import { ip } from './helpers/netns.js';
import { qemuUnavailable } from './helpers/qemu.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TSX = fileURLToPath(new URL('../node_modules/tsx/dist/esm/index.mjs', import.meta.url));

trackFdLeaks();

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `node --import tsx examples/<file> ...args` in the repository root; kills it after `timeoutMs`. */
function runExample(file: string, args: string[], timeoutMs = 50_000): Promise<Run> {
  const proc = spawn(process.execPath, ['--import', TSX, `examples/${file}`, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  // SIGINT first: the example cleans up (QEMU, namespace) on it.
  const timer = setTimeout(() => proc.kill('SIGINT'), timeoutMs);
  return new Promise((resolve) =>
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    }),
  );
}

function parseReport(r: Run): Report {
  try {
    return JSON.parse(r.stdout) as Report;
  } catch {
    throw new Error(`the example printed no JSON report (exit ${r.code}, signal ${r.signal}):\n${r.stdout}\n${r.stderr}`);
  }
}

describe('examples/handover-to-qemu.ts', () => {
  it('old owner → new owner → QEMU: QEMU holds the TAP queues and the chardev, nothing reconnected, nothing left behind', async (ctx) => {
    skipUnless(ctx, qemuUnavailable() ?? netnsUnavailable());
    const t0 = Date.now();
    const run = await runExample('handover-to-qemu.ts', ['--json']);
    const report = parseReport(run);
    if (run.code === 2) skipUnless(ctx, `the example cannot run here: ${report.unavailable}`);
    expect(report.error, run.stderr).toBeNull();
    expect(
      report.checks.filter((c) => !c.ok),
      run.stderr,
    ).toEqual([]);
    expect(run.code).toBe(0);
    expect(report.ok).toBe(true);
    expect(report.checks.length).toBeGreaterThanOrEqual(9);

    // old owner → new owner: one committed session, both devices with their fds (4 queues + 1 socket).
    expect(report.handover).toMatchObject({
      outcome: 'committed',
      fds: 5,
      devices: [
        { id: 'net0', kind: 'tap', how: 'received' },
        { id: 'ch0', kind: 'chardev-socket', how: 'received' },
      ],
    });
    // new owner → QEMU: QEMU's own read-back and its fd table agree, one fd per queue.
    const tap = report.tap!;
    expect(tap.queues).toBe(4);
    expect(tap.qemuFds).toHaveLength(tap.queues);
    expect(tap.qemuFdsInProc).toBe(tap.queues);
    expect(tap.ifindexAfter).toBe(tap.ifindexBefore);
    expect(tap.up).toBe(true);
    expect(tap.linkDownEvents).toEqual([]);
    // The chardev: connected in QEMU, the old owner's socket, and QEMU's bytes reached the backend on its only connection.
    expect(report.chardev).toMatchObject({ id: 'ch0', connected: true, frontendOpen: true, sameSocket: true, peerConnections: 1 });
    expect(report.chardev!.bytesFromQemu).toBeGreaterThan(0);
    expect(report.chardev!.gdbReply).toMatch(/^\$T05/);

    // Cleaned up: no fd of the example's left open, its namespace and its QEMU gone.
    expect(report.fdsLeftOpen).toEqual([]);
    expect(ip('netns', 'list')).not.toContain(report.netns!);
    const qemuPid = report.qemuPid!;
    expect(existsSync(`/proc/${qemuPid}`) && readFileSync(`/proc/${qemuPid}/comm`, 'utf8').startsWith('qemu')).toBe(false);
    console.log(`handover-to-qemu example: ${Date.now() - t0} ms (its own count: ${report.timings.totalMs} ms; handover downtime ${report.handover!.downtimeMs.toFixed(1)} ms)`);
  });
});
