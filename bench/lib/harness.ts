// Benchmark plumbing: building the C baselines, starting peers, statistics.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { cpus, totalmem, release } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FdSocket, closeFd, crcImplementation, native, type FdSocketOptions, type SocketType } from '../../src/index.js';
import { withDefaults } from '../../src/transport/fd-socket.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BENCH = join(ROOT, 'bench');
export const TSX = join(ROOT, 'node_modules/tsx/dist/esm/index.mjs');
const BIN = join(BENCH, 'bin');

/** Compiles bench/c/*.c with the system gcc (-O2) when the binary is missing or older. */
export function buildC(): void {
  mkdirSync(BIN, { recursive: true });
  for (const f of readdirSync(join(BENCH, 'c'))) {
    if (!f.endsWith('.c')) continue;
    const src = join(BENCH, 'c', f);
    const out = join(BIN, f.slice(0, -2));
    if (existsSync(out) && statSync(out).mtimeMs >= statSync(src).mtimeMs) continue;
    execFileSync('gcc', ['-O2', '-Wall', '-o', out, src], { stdio: 'inherit' });
  }
}

/**
 * SO_SNDBUF of the library's sockets (withDefaults) unless BENCH_SNDBUF says
 * otherwise (A/B runs); the C baselines get the same.
 */
const SNDBUF = Number(process.env.BENCH_SNDBUF ?? withDefaults<FdSocketOptions>({}).sendBufferSize);

/** Runs a C baseline and parses the JSON line it prints. */
export function runC<T = Record<string, number>>(name: string, args: (string | number)[], env: Record<string, string> = {}): T {
  // The same SO_SNDBUF as the library's own sockets, so both sides of a ratio use the same socket setup.
  const out = execFileSync(join(BIN, name), args.map(String), { encoding: 'utf8', env: { ...process.env, BT_SNDBUF: String(SNDBUF), ...env } });
  const r = JSON.parse(out.trim().split('\n').pop()!) as T & { senderCpu?: number; receiverCpu?: number; bytes?: number; messages?: number };
  // bytes, or messages for fdpass (per MiB then reads per Mi messages).
  if (r.senderCpu !== undefined) Object.assign(lastCpu, { source: r.senderCpu * 1e6, target: (r.receiverCpu ?? 0) * 1e6, bytes: r.bytes ?? r.messages ?? 0 });
  return r;
}

export interface TsPeer {
  proc: ChildProcess;
  sock: FdSocket;
  exited: Promise<number | null>;
}

/**
 * Starts bench/peers/<script> (through tsx) with one end of a socketpair as fd 3
 * and waits for its one-byte "ready", so that start-up is never timed.
 */
export async function startPeer(script: string, args: (string | number)[], type: SocketType = 'stream'): Promise<TsPeer> {
  const [a, b] = native.socketpair(type === 'seqpacket' ? native.SOCK_SEQPACKET : native.SOCK_STREAM);
  // BENCH_PEER_NODE_ARGS: extra node options for the peers (e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof'; NODE_OPTIONS refuses --cpu-prof).
  const extra = (process.env.BENCH_PEER_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const proc = spawn(process.execPath, [...extra, '--import', TSX, join(BENCH, 'peers', script), ...args.map(String)], {
    stdio: ['ignore', 'inherit', 'inherit', b],
  });
  closeFd(b);
  const exited = new Promise<number | null>((res) => proc.on('close', (code) => res(code)));
  const sock = new FdSocket(a, type, { sendBufferSize: SNDBUF }); // as FdSocket.pair() would make it
  const ready = await sock.read();
  if (!ready || ready.data[0] !== 0x52) throw new Error(`peer ${script} did not start`);
  return { proc, sock, exited };
}

export interface Stats {
  median: number;
  min: number;
  max: number;
  values: number[];
}

export function stats(values: number[]): Stats {
  const v = [...values].sort((x, y) => x - y);
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]!, values };
}

export function machine(): Record<string, unknown> {
  const c = cpus();
  let kernel = release();
  try {
    kernel = execFileSync('uname', ['-srm'], { encoding: 'utf8' }).trim();
  } catch {
    /* keep os.release() */
  }
  return {
    cpu: c[0]?.model ?? 'unknown',
    cores: c.length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel,
    node: process.version,
    wmemDefault: readSysctl('/proc/sys/net/core/wmem_default'),
    wmemMax: readSysctl('/proc/sys/net/core/wmem_max'),
    crc32: crcImplementation().impl,
    load: readSysctlText('/proc/loadavg'),
  };
}

function readSysctlText(path: string): string | null {
  try {
    return execFileSync('cat', [path], { encoding: 'utf8' }).trim().split(' ').slice(0, 3).join(' ');
  } catch {
    return null;
  }
}

function readSysctl(path: string): number | null {
  try {
    return Number(execFileSync('cat', [path], { encoding: 'utf8' }).trim());
  } catch {
    return null;
  }
}

/** CPU time (µs, user + system) of each side of the last measured transfer, for bench/pick.ts. */
export const lastCpu: { source: number; target: number; bytes: number } = { source: 0, target: 0, bytes: 0 };

/**
 * With BENCH_PERF_CTL=<fifo> (perf record -D -1 --control fifo:<fifo>), turns perf
 * sampling on at the start of a measured window and off at its end, so a profile
 * holds the transfer and not the start-up of the processes.
 */
export function perfWindow(on: boolean): void {
  const ctl = process.env.BENCH_PERF_CTL;
  if (ctl) writeFileSync(ctl, on ? 'enable\n' : 'disable\n');
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
