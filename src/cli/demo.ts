// `backend-transfer demo`: the main job. Two processes, real backends, traffic
// flowing through all of them while the old owner hands everything to the new one.
import { parseArgs } from 'node:util';
import { runDemo, type DemoReport } from './demo/demo.js';
import type { Command } from './main.js';
import { BackendTransferError } from '../errors.js';
import { escapeText } from './escape.js';

function size(n: number): string {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

/** A whole number option within [min, max]; undefined when not given. */
function count(name: string, v: string | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = /^\d+$/.test(v.trim()) ? Number(v.trim()) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw BackendTransferError.invalidArgument(`${name} ${v}: give a whole number from ${min} to ${max}`);
  return n;
}

export function formatDemo(r: DemoReport): string {
  const out: string[] = [];
  out.push(`backend-transfer demo: old owner (pid ${r.oldPid}) -> new owner (pid ${r.newPid})`);
  out.push('');
  out.push('  moved         kind             fds  on the new owner');
  for (const m of r.moved) out.push(`  ${m.id.padEnd(13)} ${m.kind.padEnd(16)} ${String(m.fds).padStart(3)}  ${m.how}`);
  out.push('');
  out.push(`  state         ${size(r.stateBytes)}`);
  out.push(`  fds           ${r.fds}`);
  const ph = r.phases ?? {};
  const part = (name: string) => (typeof ph[name] === 'number' ? `${name} ${ph[name].toFixed(1)}` : null);
  const b = r.breakdown;
  const parts = b
    ? `freeze ${b.freezeMs.toFixed(2)}, switch-over state ${b.switchOverMs.toFixed(2)}, adopt and ACK ${b.adoptMs.toFixed(2)}`
    : [part('freeze'), part('transfer'), part('verify')].filter(Boolean).join(', ');
  out.push(
    `  downtime      ${r.downtimeMs === null ? '-' : `${r.downtimeMs.toFixed(2)} ms`} (freeze to adopted${parts ? `: ${parts} ms` : ''})   total ${r.totalMs === null ? '-' : `${r.totalMs.toFixed(1)} ms`}`,
  );
  if (r.staged !== undefined)
    out.push(
      `  staging       ${r.staged ? `on: the backends were staged and verified before the freeze${typeof ph.stage === 'number' ? ` (${ph.stage.toFixed(1)} ms, no downtime)` : ''}` : 'off: the old order (fds moved and verified inside the downtime)'}`,
    );
  if (r.throughputMBps !== null) out.push(`  throughput    ${r.throughputMBps.toFixed(0)} MB/s of state during the ${r.staged ? 'switch-over' : 'transfer phase'}`);
  for (const x of r.reconnects) out.push(`  reconnects    ${String(x.reconnects)} seen by ${x.peer}: ${x.detail}`);
  out.push('');
  out.push('  traffic after the handover (new owner):');
  for (const [name, s] of Object.entries(r.traffic.afterLater)) {
    const t = s as Record<string, number>;
    const desc =
      t.echoed !== undefined
        ? `${size(t.echoed)} echoed in order`
        : t.requests !== undefined
          ? `${t.requests} vhost-user requests answered`
          : `${t.answered}/${t.flows} TCP SYNs answered by the kernel`;
    out.push(`    ${name.padEnd(10)} ${desc}`);
  }
  if (r.skipped.length) {
    out.push('');
    for (const s of r.skipped) out.push(`  skipped       ${s.backend}: ${escapeText(s.reason)}. To include it: ${s.enable}.`);
  }
  out.push('');
  out.push(r.ok ? '  OK: every backend moved live, no peer saw a reconnect, traffic kept flowing.' : `  PROBLEMS:\n${r.problems.map((p) => `    - ${escapeText(p)}`).join('\n')}`);
  return out.join('\n');
}

export const demoCommand: Command = {
  summary: 'hand live backends from an old to a new owner process, with traffic (--json)',
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        json: { type: 'boolean' },
        chardevs: { type: 'string' },
        'vhost-devices': { type: 'string' },
        'tap-queues': { type: 'string' },
        'state-mib': { type: 'string' },
        without: { type: 'string', multiple: true },
        'no-staging': { type: 'boolean' },
        precopy: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      console.log(
        [
          'usage: backend-transfer demo [--json] [--chardevs 1-64] [--vhost-devices 0-8] [--tap-queues 1-64] [--state-mib 0-1024] [--without tap|vhost-user]... [--no-staging] [--precopy]',
          '',
          'Starts an "old" and a "new" owner process. The old one sets up real backends and keeps traffic',
          'flowing through them: a chardev socket to an echo peer (always), vhost-user-blk connections to',
          'qemu-storage-daemon (when installed), a multi-queue TAP in a private network namespace (with',
          'CAP_NET_ADMIN). Then it hands everything to the new one and the report says what moved, how long',
          'the switch took, and whether any peer saw a reconnect. The backends are staged (sent and verified)',
          'before the freeze unless --no-staging gives the old order (everything after the freeze); --precopy',
          'hands the VMM state over before the freeze too.',
        ].join('\n'),
      );
      return 0;
    }
    const without = values.without ?? [];
    for (const w of without) if (w !== 'tap' && w !== 'vhost-user') throw BackendTransferError.invalidArgument(`--without ${w}: give tap or vhost-user (the chardev is always part of the demo)`);
    const chardevs = count('--chardevs', values.chardevs, 1, 64);
    const vhostDevices = count('--vhost-devices', values['vhost-devices'], 0, 8);
    const tapQueues = count('--tap-queues', values['tap-queues'], 1, 64);
    const stateMib = count('--state-mib', values['state-mib'], 0, 1024);
    const tty = process.stderr.isTTY && !values.json;
    const phases: string[] = [];
    const r = await runDemo({
      chardevs,
      vhostDevices,
      tapQueues,
      stateBytes: stateMib === undefined ? undefined : stateMib * 1024 * 1024,
      ...(values['no-staging'] ? { staging: false } : {}),
      ...(values.precopy ? { precopy: true } : {}),
      without: without as ('tap' | 'vhost-user')[],
      onProgress: (e) => {
        if (e.event !== 'phase' || !tty) return;
        phases.push(String(e.phase));
        process.stderr.write(`\r  handover: ${phases.slice(-6).join(' > ')}\x1b[K`);
      },
    });
    if (tty) process.stderr.write('\n');
    console.log(values.json ? JSON.stringify(r, null, 2) : formatDemo(r));
    return r.ok ? 0 : 1;
  },
};
