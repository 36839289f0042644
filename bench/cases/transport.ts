// Transport benchmarks: bulk bytes and fd passing through FdSocket, next to raw C,
// Node's net module, Node's IPC handle passing and the usocket package.
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFd, native, type SocketType } from '../../src/index.js';
import { BENCH, TSX, lastCpu, perfWindow, runC, startPeer } from '../lib/harness.js';
import type { Case, Scale } from './types.js';

const require = createRequire(import.meta.url);

/** FdSocket → FdSocket between two processes: GB/s. */
async function fdsocketBulk(type: SocketType, total: number, part: number): Promise<number> {
  const peer = await startPeer('fdsocket-sink.ts', [total, 0], type);
  const buf = Buffer.alloc(part, 0x5a);
  perfWindow(true);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let sent = 0; sent < total; sent += part) await peer.sock.send(part <= total - sent ? buf : buf.subarray(0, total - sent));
  const ack = await peer.sock.read(); // the sink's ack: its CPU time
  const t1 = performance.now();
  const cpu = process.cpuUsage(cpu0);
  perfWindow(false);
  Object.assign(lastCpu, { source: cpu.user + cpu.system, target: Number(ack!.data.toString()), bytes: total });
  peer.sock.close();
  await peer.exited;
  return total / ((t1 - t0) / 1000) / 1e9;
}

/** Pipelined: `messages` writes of one byte and k fds (one eventfd, repeated), waiting for drain() at the high-water mark. fds/s. */
async function fdsocketFds(messages: number, k: number, close: 'batch' | 'each' = 'batch'): Promise<number> {
  const peer = await startPeer('fdsocket-sink.ts', [messages, messages * k, close]);
  const efd = native.eventfd(0);
  const fds = new Array<number>(k).fill(efd);
  const one = Buffer.from([7]);
  perfWindow(true);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < messages; i++) {
    if (!peer.sock.write(one, fds)) await peer.sock.drain(); // bounded queue
  }
  await peer.sock.drain();
  const ack = await peer.sock.read(); // the sink's ack: its CPU time
  const t1 = performance.now();
  const cpu = process.cpuUsage(cpu0);
  perfWindow(false);
  // bytes: one per message; pick.ts prints CPU per MiB, i.e. per 1 Mi messages.
  Object.assign(lastCpu, { source: cpu.user + cpu.system, target: Number(ack!.data.toString()), bytes: messages });
  closeFd(efd);
  peer.sock.close();
  await peer.exited;
  return (messages * k) / ((t1 - t0) / 1000);
}

/** Round trips of one byte + one fd each way. Round trips/s. */
async function fdsocketPingPong(n: number): Promise<number> {
  const peer = await startPeer('fdsocket-echo.ts', [n]);
  const efd = native.eventfd(0);
  const fds = [efd];
  const one = Buffer.from([1]);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    await peer.sock.send(one, fds);
    const c = await peer.sock.read();
    for (const fd of c!.fds) closeFd(fd);
  }
  const t1 = performance.now();
  closeFd(efd);
  peer.sock.close();
  await peer.exited;
  return n / ((t1 - t0) / 1000);
}

/** Node's net module over a unix socket: GB/s. */
async function netBulk(total: number, part: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'bt-bench-'));
  const path = join(dir, 'net.sock');
  const server = net.createServer();
  await new Promise<void>((res) => server.listen(path, res));
  const { spawn } = await import('node:child_process');
  const proc = spawn(process.execPath, ['--import', TSX, join(BENCH, 'peers/net-sink.ts'), path, String(total)], { stdio: 'inherit' });
  const conn = await new Promise<net.Socket>((res) => server.once('connection', res));
  await new Promise<void>((res) => conn.once('data', () => res())); // "ready"
  const buf = Buffer.alloc(part, 0x5a);
  const t0 = performance.now();
  const acked = new Promise<void>((res) => conn.once('data', () => res()));
  for (let sent = 0; sent < total; sent += part) {
    if (!conn.write(part <= total - sent ? buf : buf.subarray(0, total - sent))) await new Promise((r) => conn.once('drain', r));
  }
  await acked;
  const t1 = performance.now();
  conn.destroy();
  await new Promise((r) => proc.on('close', r));
  server.close();
  rmSync(dir, { recursive: true, force: true });
  return total / ((t1 - t0) / 1000) / 1e9;
}

/** Node's child_process IPC: `subprocess.send(msg, server)` n times. Handles/s. */
async function ipcHandles(n: number): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
  const child = fork(join(BENCH, 'peers/ipc-sink.ts'), [String(n)], { execArgv: ['--import', TSX], stdio: 'inherit' });
  await new Promise<void>((res) => child.once('message', () => res()));
  const t0 = performance.now();
  const done = new Promise<void>((res) => child.once('message', () => res()));
  for (let i = 0; i < n; i++) child.send('h', server);
  await done;
  const t1 = performance.now();
  await new Promise((r) => child.on('exit', r));
  server.close();
  return n / ((t1 - t0) / 1000);
}

interface USocketLike {
  write(x: Buffer | { data?: Buffer; fds?: number[]; callback?: () => void }): boolean;
  once(ev: string, cb: (...a: unknown[]) => void): void;
  on(ev: string, cb: (...a: unknown[]) => void): void;
  read(n: number | null, count?: number | null): Buffer | { data: Buffer | null; fds: number[] } | null;
  end(): void;
  destroy(): void;
}

/** usocket ↔ usocket. Returns [rate, delivered fds]. */
async function usocketRun(total: number, part: number, messages: number): Promise<{ rate: number; fdsDelivered: number; fdsSent: number }> {
  const { USocket } = require('usocket') as { USocket: new (o: { fd: number }) => USocketLike };
  const { spawn } = await import('node:child_process');
  const [a, b] = native.socketpair(native.SOCK_STREAM);
  const fdsSent = messages;
  const proc = spawn(process.execPath, ['--import', TSX, join(BENCH, 'peers/usocket-sink.ts'), String(total + messages), String(fdsSent)], {
    stdio: ['ignore', 'inherit', 'inherit', b],
  });
  closeFd(b);
  const sock = new USocket({ fd: a });
  let text = '';
  const readyOrReport = () =>
    new Promise<string>((res) => {
      const onReadable = () => {
        for (;;) {
          const d = sock.read(null) as Buffer | null;
          if (!d) break;
          text += d.toString();
        }
        res(text);
      };
      sock.once('readable', onReadable);
    });
  await readyOrReport();
  text = '';
  const report = new Promise<string>((res) => {
    sock.on('readable', () => {
      for (;;) {
        const d = sock.read(null) as Buffer | null;
        if (!d) break;
        text += d.toString();
      }
      if (text.includes('\n')) res(text);
    });
  });
  const t0 = performance.timeOrigin + performance.now();
  const buf = Buffer.alloc(part, 0x5a);
  for (let sent = 0; sent < total; sent += part) {
    // usocket's write() returns undefined, or false when its buffer is full
    if (sock.write(part <= total - sent ? buf : buf.subarray(0, total - sent)) === false) await new Promise((r) => sock.once('drain', r));
  }
  const efd = native.eventfd(0);
  let pending = 0;
  let drained: (() => void) | null = null;
  for (let i = 0; i < messages; i++) {
    pending++;
    const ok = sock.write({
      data: Buffer.from([1]),
      fds: [efd],
      callback: () => {
        if (--pending === 0 && drained) drained();
      },
    });
    if (ok === false) await new Promise((r) => sock.once('drain', r));
  }
  if (pending > 0) await new Promise<void>((r) => (drained = r));
  // usocket may drop fds: if the sink still waits for some, EOF ends its count.
  // end() is a half-close: what is already in the socket still arrives before EOF.
  const timer = setTimeout(() => sock.end(), 100);
  const line = await report;
  clearTimeout(timer);
  closeFd(efd);
  sock.destroy();
  await new Promise((r) => proc.on('close', r));
  // Timed to the last arrival, so the wait for fds that never came does not count.
  const [, fdsDelivered, last] = line.trim().split(' ').map(Number);
  const seconds = (last! - t0) / 1000;
  return { rate: total > 0 ? total / seconds / 1e9 : fdsDelivered! / seconds, fdsDelivered: fdsDelivered!, fdsSent };
}

export function transportCases(s: Scale): Case[] {
  const MiB = 1 << 20;
  const KiB = 1 << 10;
  const usocketFds = { sent: 0, delivered: 0 };
  return [
    // bulk, stream, 1 MiB writes
    { group: 'bulk: stream socket, 1 MiB writes', name: 'C write/read', unit: 'GB/s', baseline: true, run: async () => s.bulkBytes / runC('bulk', ['stream', s.bulkBytes, MiB])['seconds']! / 1e9 },
    { group: 'bulk: stream socket, 1 MiB writes', name: 'FdSocket', unit: 'GB/s', target: 0.9, run: () => fdsocketBulk('stream', s.bulkBytes, MiB) },
    { group: 'bulk: stream socket, 1 MiB writes', name: 'Node net (unix socket)', unit: 'GB/s', run: () => netBulk(s.bulkBytes, MiB) },
    { group: 'bulk: stream socket, 1 MiB writes', name: 'usocket', unit: 'GB/s', run: async () => (await usocketRun(s.bulkBytes / 4, MiB, 0)).rate },
    // bulk, stream, 64 KiB writes
    {
      group: 'bulk: stream socket, 64 KiB writes',
      name: 'C write/read',
      unit: 'GB/s',
      baseline: true,
      run: async () => s.bulkBytes / runC('bulk', ['stream', s.bulkBytes, 64 * KiB])['seconds']! / 1e9,
    },
    { group: 'bulk: stream socket, 64 KiB writes', name: 'FdSocket', unit: 'GB/s', target: 0.9, run: () => fdsocketBulk('stream', s.bulkBytes, 64 * KiB) },
    // bulk, seqpacket, 64 KiB records
    {
      group: 'bulk: seqpacket socket, 64 KiB records',
      name: 'C write/read',
      unit: 'GB/s',
      baseline: true,
      run: async () => s.bulkBytes / runC('bulk', ['seqpacket', s.bulkBytes, 64 * KiB])['seconds']! / 1e9,
    },
    { group: 'bulk: seqpacket socket, 64 KiB records', name: 'FdSocket', unit: 'GB/s', target: 0.9, run: () => fdsocketBulk('seqpacket', s.bulkBytes, 64 * KiB) },
    // fds, 1 per message
    {
      group: 'fd passing: 1 fd per message, pipelined',
      name: 'C sendmsg/recvmsg',
      unit: 'fds/s',
      baseline: true,
      run: async () => {
        const r = runC('fdpass', ['pipelined', s.fdMessages1, 1]);
        return r['fds']! / r['seconds']!;
      },
    },
    { group: 'fd passing: 1 fd per message, pipelined', name: 'FdSocket', unit: 'fds/s', target: 0.6, run: () => fdsocketFds(s.fdMessages1, 1) },
    { group: 'fd passing: 1 fd per message, pipelined', name: 'Node IPC handle passing', unit: 'fds/s', run: () => ipcHandles(s.ipcHandles) },
    {
      group: 'fd passing: 1 fd per message, pipelined',
      name: 'usocket',
      unit: 'fds/s',
      run: async () => {
        const r = await usocketRun(0, MiB, s.usocketFds);
        usocketFds.sent += r.fdsSent;
        usocketFds.delivered += r.fdsDelivered;
        return r.rate;
      },
      extra: () => ({ fdsSent: usocketFds.sent, fdsDelivered: usocketFds.delivered, fdsLost: usocketFds.sent - usocketFds.delivered }),
    },
    // fds, 253 per message
    {
      group: 'fd passing: 253 fds per message, pipelined',
      name: 'C sendmsg/recvmsg',
      unit: 'fds/s',
      baseline: true,
      run: async () => {
        const r = runC('fdpass', ['pipelined', s.fdMessages253, 253]);
        return r['fds']! / r['seconds']!;
      },
    },
    { group: 'fd passing: 253 fds per message, pipelined', name: 'FdSocket', unit: 'fds/s', target: 0.8, run: () => fdsocketFds(s.fdMessages253, 253) },
    // the C program with close_range per batch: what closeFds does, done in C
    {
      group: 'fd passing: 253 fds per message, pipelined',
      name: 'C, close_range per batch',
      unit: 'fds/s',
      run: async () => {
        const r = runC('fdpass', ['pipelined', s.fdMessages253, 253, 'range']);
        return r['fds']! / r['seconds']!;
      },
    },
    // the same, with the receiver closing each fd by itself (closeFd per fd, as the C program does) instead of closeFds (close_range over runs)
    { group: 'fd passing: 253 fds per message, pipelined', name: 'FdSocket, closeFd per fd', unit: 'fds/s', run: () => fdsocketFds(s.fdMessages253, 253, 'each') },
    // ping-pong
    {
      group: 'ping-pong: 1 byte + 1 fd each way',
      name: 'C sendmsg/recvmsg',
      unit: 'round trips/s',
      baseline: true,
      run: async () => {
        const r = runC('fdpass', ['pingpong', s.pingpongs]);
        return r['fds']! / r['seconds']!;
      },
    },
    { group: 'ping-pong: 1 byte + 1 fd each way', name: 'FdSocket', unit: 'round trips/s', run: () => fdsocketPingPong(s.pingpongs) },
  ];
}
