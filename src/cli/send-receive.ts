// `backend-transfer send` / `receive`: a handover scripted from JSON descriptions.
// The fds named in the description are fds this process inherited (a VMM manager
// starts `backend-transfer send` with them open); `receive --exec` hands what came
// to a program, as inherited fds 3, 4, ...
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { BackendTransferError } from '../errors.js';
import { closeFds } from '../fd/index.js';
import { escapeText, safeJson } from './escape.js';
import { checkExecSize, descriptionMemfd, execEnv, resolveProgram } from './exec.js';
import { checkSendFds } from './fd-check.js';
import { handoverOptionSpecs, handoverOptions, handoverOptionsUsage } from './options.js';
import { describeBackend, sourceFromJson, targetFromJson } from '../backends/registry.js';
import { recordHandover } from '../handover/record.js';
import { sendHandover } from '../handover/source.js';
import { receiveHandover } from '../handover/target.js';
import type { HandoverEvent } from '../handover/types.js';
import type { Command } from './main.js';

type Json = Record<string, unknown>;

function bad(message: string): BackendTransferError {
  return BackendTransferError.invalidArgument(message);
}

/** A source device from its JSON description (the fds are this process's). */
export const sourceDevice = sourceFromJson;
/** A target device from its JSON description. */
export const targetDevice = targetFromJson;

function progressBar(enabled: boolean): { onEvent: (e: HandoverEvent) => void; stop: () => void } {
  if (!enabled) return { onEvent: () => undefined, stop: () => undefined };
  const bar = new cliProgress.SingleBar(
    { format: '{phase} |{bar}| {percentage}% {value}/{total} bytes, {fds} fds, eta {eta}s', stream: process.stderr, hideCursor: true, clearOnComplete: true },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  let phase = 'connect';
  return {
    onEvent: (e) => {
      if (e.type === 'phase') phase = e.phase;
      if (e.type !== 'progress' || e.totalBytes === null) return;
      if (!started) {
        bar.start(e.totalBytes, 0, { phase, fds: 0 });
        started = true;
      }
      bar.update(Math.min(e.bytes, e.totalBytes), { phase, fds: e.fds });
    },
    stop: () => {
      if (started) bar.stop();
    },
  };
}

function readJson(path: string): Json {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Json;
  } catch (err) {
    throw bad(`cannot read ${path}: ${(err as Error).message}`);
  }
}

/** Prints a failed handover (peer text escaped) and gives its exit status. */
function failed(command: string, err: unknown, json: boolean, warnings: string[]): number {
  const e = err as BackendTransferError;
  if (json) console.log(safeJson({ error: { code: e.code, message: e.message, details: e.details ?? null }, warnings }));
  else console.error(`backend-transfer ${command}: ${escapeText(e.message)}`);
  return e.code === 'ERR_INVALID_ARGUMENT' ? 2 : 1;
}

/** Collects the session's warnings; prints each (escaped) to stderr unless the output is JSON. */
function warningSink(command: string, json: boolean): { warnings: string[]; onEvent: (e: HandoverEvent) => void } {
  const warnings: string[] = [];
  return {
    warnings,
    onEvent: (e) => {
      if (e.type !== 'warning') return;
      warnings.push(e.message);
      if (!json) console.error(`backend-transfer ${command}: warning: ${escapeText(e.message)}`);
    },
  };
}

export const sendCommand: Command = {
  summary: 'hand the backends of a JSON description over a unix socket (--json)',
  async run(argv) {
    const { values } = parseArgs({
      args: argv,
      options: {
        devices: { type: 'string' },
        socket: { type: 'string' },
        state: { type: 'string' },
        json: { type: 'boolean' },
        'no-backend-transfer': { type: 'boolean' },
        'no-staging': { type: 'boolean' },
        record: { type: 'string' },
        ...handoverOptionSpecs,
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help || !values.devices) {
      console.log(
        [
          'usage: backend-transfer send --devices FILE.json [--socket PATH | --record FILE] [--state FILE] [--json] [--no-backend-transfer] [--no-staging] [shared options]',
          '',
          'FILE.json: { "socket": "/run/vmm/handover.sock", "backendTransfer": true, "devices": [',
          '  { "kind": "tap", "id": "net0", "transfer": true, "queues": [3, 4], "vhostFds": [] },',
          '  { "kind": "chardev-socket", "id": "serial0", "transfer": true, "fd": 5, "role": "client", "address": "/run/s.sock" }, ... ] }',
          "fd numbers are fds this process inherited; each is checked (open, not the event loop's own, of its",
          'declared kind) before connecting. npx passes only fds 0-2: run node_modules/.bin/backend-transfer.',
          "The README lists every kind's fields.",
          'With --record FILE, no handover: the state-only stream is written to FILE (for backend-transfer inspect).',
          '',
          handoverOptionsUsage,
        ].join('\n'),
      );
      return values.help ? 0 : 2;
    }
    const opts = handoverOptions(values);
    const desc = readJson(values.devices);
    const devices = ((desc.devices as Json[]) ?? []).map(sourceDevice);
    const backendTransfer = values['no-backend-transfer'] ? false : desc.backendTransfer !== false;
    if (backendTransfer && !values.record) checkSendFds(devices);
    const state = values.state ? readFileSync(values.state) : typeof desc.state === 'string' ? Buffer.from(desc.state, 'base64') : undefined;
    if (values.record) {
      const r = await recordHandover({ to: values.record, devices, state });
      console.log(
        values.json
          ? safeJson({ file: values.record, bytes: r.bytes, sections: r.sections, payloadBytes: Number(r.payloadBytes), plan: r.plan })
          : `${escapeText(values.record)}: ${r.bytes} bytes, ${r.sections} section(s), ${r.payloadBytes} bytes of state (state only, no fds)`,
      );
      return 0;
    }
    const socket = values.socket ?? (desc.socket as string | undefined);
    if (!socket) throw bad('no socket: give --socket or "socket" in the description');
    const bar = progressBar(process.stderr.isTTY === true && !values.json);
    const sink = warningSink('send', values.json === true);
    try {
      const r = await sendHandover({
        ...opts.extra,
        socket,
        devices,
        state,
        backendTransfer,
        // Staging (the backends verified before the freeze) is the default; the target decides with its version.
        ...(values['no-staging'] ? { staging: false } : {}),
        peer: opts.peer,
        timeouts: opts.timeouts,
        onEvent: (e) => {
          bar.onEvent(e);
          sink.onEvent(e);
        },
      });
      bar.stop();
      if (values.json) console.log(safeJson({ ...r, warnings: sink.warnings }));
      else {
        for (const d of r.devices) console.log(`${escapeText(d.id).padEnd(12)} ${escapeText(d.kind).padEnd(15)} ${d.outcome.padEnd(11)} ${d.fds} fd(s)`);
        const b = r.timings.breakdown;
        const parts = b ? ` (freeze ${b.freezeMs.toFixed(2)}, switch-over state ${b.switchOverMs.toFixed(2)}, adopt and ACK ${b.adoptMs.toFixed(2)})` : '';
        console.log(
          `state ${r.stateBytes} bytes, ${r.fds} fds, ${r.staged ? 'staged' : 'not staged'}, downtime ${r.timings.downtimeMs?.toFixed(2) ?? '-'} ms${parts}, total ${r.timings.totalMs.toFixed(1)} ms`,
        );
      }
      return 0;
    } catch (err) {
      bar.stop();
      return failed('send', err, values.json === true, sink.warnings);
    }
  },
};

export const receiveCommand: Command = {
  summary: 'receive backends on a unix socket; --exec hands them to a program (--json)',
  async run(argv) {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        listen: { type: 'string' },
        accept: { type: 'string' },
        exec: { type: 'boolean' },
        json: { type: 'boolean' },
        'no-backend-transfer': { type: 'boolean' },
        ...handoverOptionSpecs,
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help || !values.listen || !values.accept) {
      console.log(
        [
          'usage: backend-transfer receive --listen PATH --accept FILE.json [--json] [shared options] [--exec -- CMD ARGS...]',
          '',
          'FILE.json: { "backendTransfer": true, "devices": [ { "kind": "tap", "id": "net0" }, { "kind": "chardev-socket", "id": "serial0" } ] }',
          "Prints what came (each backend's fds, in order, with its metadata). With --exec, CMD runs with those",
          'fds inherited as 3, 4, ..., BT_HANDOVER_FD naming one more inherited fd (a sealed memfd) that holds',
          "the same description with the child's fd numbers as JSON, and BT_HANDOVER set to that JSON when it",
          'fits in the environment (128 KiB). CMD is checked (found, executable, arguments within limits)',
          'before a source is accepted. Without --exec the fds are closed when this command exits.',
          '',
          handoverOptionsUsage,
        ].join('\n'),
      );
      return values.help ? 0 : 2;
    }
    const opts = handoverOptions(values);
    const desc = readJson(values.accept);
    const accept = ((desc.devices as Json[]) ?? []).map(targetDevice);
    // --exec: a program that cannot start is found now, not after the commit.
    let exec: { program: string; args: string[] } | null = null;
    if (values.exec) {
      const [cmd, ...args] = positionals;
      if (!cmd) throw bad('--exec needs a command after --');
      exec = { program: resolveProgram(cmd), args };
      checkExecSize(exec.program, args, process.env);
    } else if (positionals.length) throw bad(`unexpected argument ${positionals[0]} (a command to run needs --exec --)`);
    const bar = progressBar(process.stderr.isTTY === true && !values.json);
    const sink = warningSink('receive', values.json === true);
    let r;
    try {
      r = await receiveHandover({
        ...opts.extra,
        socket: values.listen,
        accept,
        backendTransfer: values['no-backend-transfer'] ? false : desc.backendTransfer !== false,
        peer: opts.peer,
        timeouts: opts.timeouts,
        onEvent: (e) => {
          bar.onEvent(e);
          sink.onEvent(e);
        },
      });
    } catch (err) {
      bar.stop();
      return failed('receive', err, values.json === true, sink.warnings);
    }
    bar.stop();
    const out: Json[] = [];
    const all: number[] = [];
    for (const d of r.devices.values()) {
      const { fds, meta } = describeBackend(d.kind, d.backend);
      out.push({ id: d.id, kind: d.kind, how: d.how, fds: fds.map((f) => ({ name: f.name, fd: f.fd })), meta });
      all.push(...fds.map((f) => f.fd));
    }
    // The state's hash lets a peer check the content arrived, not only its size.
    const stateSha256 = r.state ? createHash('sha256').update(r.state).digest('hex') : null;
    const report = { outcome: r.outcome, complete: r.complete, devices: out, stateBytes: r.stateBytes, stateSha256, timings: r.timings, warnings: sink.warnings };
    if (!exec) {
      const lines = out.map((d) => `${escapeText(d.id).padEnd(12)} ${escapeText(d.kind).padEnd(15)} ${String(d.how).padEnd(9)} fds ${(d.fds as { fd: number }[]).map((f) => f.fd).join(',') || '-'}`);
      if (stateSha256) lines.push(`state ${r.stateBytes} bytes, sha256 ${stateSha256}`);
      console.log(values.json ? safeJson(report) : lines.join('\n'));
      closeFds(all);
      return 0;
    }
    // The child gets the fds as 3, 4, ...: rewrite the description with its numbers.
    const childFd = new Map(all.map((fd, i) => [fd, 3 + i]));
    const forChild = { ...report, devices: out.map((d) => ({ ...d, fds: (d.fds as { name: string; fd: number }[]).map((f) => ({ name: f.name, fd: childFd.get(f.fd) })) })) };
    const text = JSON.stringify(forChild);
    const descFd = 3 + all.length;
    let memfd: number;
    try {
      memfd = descriptionMemfd(text);
    } catch (err) {
      closeFds(all);
      throw err;
    }
    // With --json the report (the child's fd numbers) goes to stdout first, one line,
    // before the child writes anything there (stdout is shared with it).
    if (values.json) console.log(safeJson(forChild, 0));
    const { program, args } = exec;
    const child = spawn(program, args, { stdio: ['inherit', 'inherit', 'inherit', ...all, memfd], env: execEnv(program, args, process.env, text, descFd) });
    closeFds([...all, memfd]); // the child has its copies
    return await new Promise<number>((resolve) => {
      child.on('error', (e) => {
        console.error(`backend-transfer receive: cannot run ${escapeText(program)}: ${escapeText(e.message)}`);
        resolve(127);
      });
      child.on('close', (code) => resolve(code ?? 1));
    });
  },
};
