// `backend-transfer send` / `receive`: a handover scripted from JSON descriptions.
// The fds named in the description are fds this process inherited (a VMM manager
// starts `backend-transfer send` with them open); `receive --exec` hands what came
// to a program, as inherited fds 3, 4, ...
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import cliProgress from 'cli-progress';
import { BackendTransferError } from '../errors.js';
import { closeFds } from '../fd/index.js';
import { escapeText, safeJson } from './escape.js';
import { checkExecSize, descriptionMemfd, execEnv, resolveProgram } from './exec.js';
import { checkSendFds } from './fd-check.js';
import { handoverOptionSpecs, handoverOptions, handoverOptionsUsage } from './options.js';
import { ChardevSocketSource, ChardevSocketTarget, type ChardevBackend } from '../backends/chardev-socket.js';
import { GenericSource, GenericTarget, type GenericBackend } from '../backends/generic.js';
import { TapSource, TapTarget, type TapBackend } from '../backends/tap.js';
import { VhostUserSource, VhostUserTarget, type VhostUserBackend } from '../backends/vhost-user.js';
import type { SourceDevice, TargetDevice } from '../backends/types.js';
import { recordHandover } from '../handover/record.js';
import { sendHandover } from '../handover/source.js';
import { receiveHandover } from '../handover/target.js';
import type { HandoverEvent, ReceiveHandoverOptions, SendHandoverOptions } from '../handover/types.js';
import type { AttachmentKind } from '../stream/wire.js';
import type { Command } from './main.js';

type Json = Record<string, unknown>;

function bad(message: string): BackendTransferError {
  return BackendTransferError.invalidArgument(message);
}

function num(d: Json, key: string): number {
  const v = d[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw bad(`device ${String(d.id)}: "${key}" must be a non-negative integer (an fd number or a count)`);
  return v;
}

function nums(d: Json, key: string): number[] {
  const v = d[key] ?? [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'number' || !Number.isInteger(x) || x < 0)) throw bad(`device ${String(d.id)}: "${key}" must be an array of fd numbers`);
  return v as number[];
}

function big(d: Json, key: string): bigint {
  const v = d[key];
  if (typeof v === 'string' || typeof v === 'number') return BigInt(v);
  throw bad(`device ${String(d.id)}: "${key}" must be a number or a string like "0x140000000"`);
}

/** A source device from its JSON description (the fds are this process's). */
export function sourceDevice(d: Json): SourceDevice {
  const common = { id: String(d.id), instance: (d.instance as number) ?? 0, version: (d.version as number) ?? 1, transfer: d.transfer === true, required: d.required === true };
  const state = typeof d.state === 'string' ? Buffer.from(d.state, 'base64') : undefined;
  switch (d.kind) {
    case 'tap':
      return new TapSource({ ...common, queues: nums(d, 'queues'), vhostFds: nums(d, 'vhostFds'), offloads: d.offloads as number | undefined, ifindex: d.ifindex as number | undefined, state });
    case 'vhost-user': {
      const inflight = d.inflight as Json | undefined;
      return new VhostUserSource({
        ...common,
        socket: num(d, 'socket'),
        backendChannel: d.backendChannel as number | undefined,
        kickFds: nums(d, 'kickFds'),
        callFds: nums(d, 'callFds'),
        inflight: inflight ? { fd: num(inflight, 'fd'), size: num(inflight, 'size'), offset: (inflight.offset as number) ?? 0, queueSize: (inflight.queueSize as number) ?? 0 } : undefined,
        socketPath: String(d.socketPath ?? ''),
        features: big(d, 'features'),
        protocolFeatures: big(d, 'protocolFeatures'),
        numQueues: num(d, 'numQueues'),
        deviceState: state,
      });
    }
    case 'chardev-socket':
      return new ChardevSocketSource({
        ...common,
        fd: num(d, 'fd'),
        role: (d.role as 'client' | 'server' | 'listener') ?? 'client',
        address: String(d.address ?? ''),
        tls: d.tls === true,
        telnet: d.telnet === true,
        websocket: d.websocket === true,
        neverMove: d.neverMove === true,
        state,
      });
    case 'generic': {
      const fds = (d.fds as Json[] | undefined) ?? [];
      return new GenericSource({
        ...common,
        fds: fds.map((f) => ({ name: String(f.name), fd: num(f, 'fd'), kind: (f.kind as AttachmentKind | undefined) ?? 'generic', meta: f.meta as Json | undefined })),
        metadata: d.metadata as Json | undefined,
        state,
      });
    }
    default:
      throw bad(`device ${String(d.id)}: unknown kind ${String(d.kind)} (tap, vhost-user, chardev-socket, generic)`);
  }
}

export function targetDevice(d: Json): TargetDevice {
  const common = { id: String(d.id), instance: (d.instance as number) ?? 0, minVersion: (d.minVersion as number) ?? 1, maxVersion: (d.maxVersion as number) ?? 1, acceptFds: d.acceptFds !== false };
  switch (d.kind) {
    case 'tap':
      return new TapTarget(common);
    case 'vhost-user':
      return new VhostUserTarget(common);
    case 'chardev-socket':
      return new ChardevSocketTarget(common);
    case 'generic':
      return new GenericTarget({ ...common, expect: d.expect as Record<string, never> | undefined });
    default:
      throw bad(`device ${String(d.id)}: unknown kind ${String(d.kind)} (tap, vhost-user, chardev-socket, generic)`);
  }
}

/** The fds of a received backend, in a fixed order, with what they are. */
function backendFds(kind: string, b: unknown): { name: string; fd: number }[] {
  if (!b) return [];
  switch (kind) {
    case 'tap': {
      const t = b as TapBackend;
      return [...t.queues.map((fd, i) => ({ name: `queue${i}`, fd })), ...t.vhostFds.map((fd, i) => ({ name: `vhost${i}`, fd }))];
    }
    case 'vhost-user': {
      const v = b as VhostUserBackend;
      return [
        { name: 'socket', fd: v.socket },
        ...(v.backendChannel !== null ? [{ name: 'backend-channel', fd: v.backendChannel }] : []),
        ...v.kickFds.map((fd, i) => ({ name: `kick${i}`, fd })),
        ...v.callFds.map((fd, i) => ({ name: `call${i}`, fd })),
        ...(v.inflightFd !== null ? [{ name: 'inflight', fd: v.inflightFd }] : []),
      ];
    }
    case 'chardev-socket':
      return [{ name: 'socket', fd: (b as ChardevBackend).fd }];
    default:
      return [...(b as GenericBackend).fds].map(([name, fd]) => ({ name, fd }));
  }
}

function meta(kind: string, b: unknown): unknown {
  if (!b) return null;
  switch (kind) {
    case 'tap':
      return (b as TapBackend).meta;
    case 'vhost-user':
      return (b as VhostUserBackend).meta;
    case 'chardev-socket':
      return (b as ChardevBackend).meta;
    default:
      return (b as GenericBackend).metadata;
  }
}

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
      options: { devices: { type: 'string' }, socket: { type: 'string' }, state: { type: 'string' }, json: { type: 'boolean' }, 'no-backend-transfer': { type: 'boolean' }, 'no-staging': { type: 'boolean' }, record: { type: 'string' }, ...handoverOptionSpecs, help: { type: 'boolean', short: 'h' } },
    });
    if (values.help || !values.devices) {
      console.log(
        [
          'usage: backend-transfer send --devices FILE.json [--socket PATH | --record FILE] [--state FILE] [--json] [--no-backend-transfer] [--no-staging] [shared options]',
          '',
          'FILE.json: { "socket": "/run/vmm/handover.sock", "backendTransfer": true, "devices": [',
          '  { "kind": "tap", "id": "net0", "transfer": true, "queues": [3, 4], "vhostFds": [] },',
          '  { "kind": "chardev-socket", "id": "serial0", "transfer": true, "fd": 5, "role": "client", "address": "/run/s.sock" }, ... ] }',
          'fd numbers are fds this process inherited; each is checked (open, not the event loop\'s own, of its',
          'declared kind) before connecting. npx passes only fds 0-2: run node_modules/.bin/backend-transfer.',
          'The README lists every kind\'s fields.',
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
      console.log(values.json ? safeJson({ file: values.record, bytes: r.bytes, sections: r.sections, payloadBytes: Number(r.payloadBytes), plan: r.plan }) : `${escapeText(values.record)}: ${r.bytes} bytes, ${r.sections} section(s), ${r.payloadBytes} bytes of state (state only, no fds)`);
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
      } as SendHandoverOptions);
      bar.stop();
      if (values.json) console.log(safeJson({ ...r, warnings: sink.warnings }));
      else {
        for (const d of r.devices) console.log(`${escapeText(d.id).padEnd(12)} ${escapeText(d.kind).padEnd(15)} ${d.outcome.padEnd(11)} ${d.fds} fd(s)`);
        const b = r.timings.breakdown;
        const parts = b ? ` (freeze ${b.freezeMs.toFixed(2)}, switch-over state ${b.switchOverMs.toFixed(2)}, adopt and ACK ${b.adoptMs.toFixed(2)})` : '';
        console.log(`state ${r.stateBytes} bytes, ${r.fds} fds, ${r.staged ? 'staged' : 'not staged'}, downtime ${r.timings.downtimeMs?.toFixed(2) ?? '-'} ms${parts}, total ${r.timings.totalMs.toFixed(1)} ms`);
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
      options: { listen: { type: 'string' }, accept: { type: 'string' }, exec: { type: 'boolean' }, json: { type: 'boolean' }, 'no-backend-transfer': { type: 'boolean' }, ...handoverOptionSpecs, help: { type: 'boolean', short: 'h' } },
    });
    if (values.help || !values.listen || !values.accept) {
      console.log(
        [
          'usage: backend-transfer receive --listen PATH --accept FILE.json [--json] [shared options] [--exec -- CMD ARGS...]',
          '',
          'FILE.json: { "backendTransfer": true, "devices": [ { "kind": "tap", "id": "net0" }, { "kind": "chardev-socket", "id": "serial0" } ] }',
          'Prints what came (each backend\'s fds, in order, with its metadata). With --exec, CMD runs with those',
          'fds inherited as 3, 4, ..., BT_HANDOVER_FD naming one more inherited fd (a sealed memfd) that holds',
          'the same description with the child\'s fd numbers as JSON, and BT_HANDOVER set to that JSON when it',
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
      } as ReceiveHandoverOptions);
    } catch (err) {
      bar.stop();
      return failed('receive', err, values.json === true, sink.warnings);
    }
    bar.stop();
    const out: Json[] = [];
    const all: number[] = [];
    for (const d of r.devices.values()) {
      const fds = backendFds(d.kind, d.backend);
      out.push({ id: d.id, kind: d.kind, how: d.how, fds: fds.map((f) => ({ name: f.name, fd: f.fd })), meta: meta(d.kind, d.backend) });
      all.push(...fds.map((f) => f.fd));
    }
    const report = { outcome: r.outcome, complete: r.complete, devices: out, stateBytes: r.stateBytes, timings: r.timings, warnings: sink.warnings };
    if (!exec) {
      console.log(
        values.json
          ? safeJson(report)
          : out.map((d) => `${escapeText(d.id).padEnd(12)} ${escapeText(d.kind).padEnd(15)} ${String(d.how).padEnd(9)} fds ${(d.fds as { fd: number }[]).map((f) => f.fd).join(',') || '-'}`).join('\n'),
      );
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
