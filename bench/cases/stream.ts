// Stream benchmarks: the codec alone, and device state through the full stack
// (sections, CRC, FdSocket) between two processes, inline and by sealed memfd.
import { Features, StreamReader, StreamWriter, fdSocketChannel, type StreamChannel } from '../../src/index.js';
import { writeSync } from 'node:fs';
import { closeFd, native } from '../../src/index.js';
import { lastCpu, perfWindow, startPeer } from '../lib/harness.js';
import { stateOnlyHandshake } from '../../test/helpers/stream.js';
import type { Case, Scale } from './types.js';

const MiB = 1 << 20;

/** `total` bytes of state as `part`-sized pieces of one reused buffer (memory stays flat). */
function* parts(total: number, part: number): Generator<Uint8Array> {
  const buf = Buffer.alloc(part);
  for (let i = 0; i < part; i++) buf[i] = (i * 7) & 0xff;
  for (let sent = 0; sent < total; sent += part) yield total - sent >= part ? buf : buf.subarray(0, total - sent);
}

const discard: StreamChannel = { canPassFds: true, writeFrame: () => Promise.resolve() };

/** Encoding only (frames built and CRC'd, then dropped): GB/s. */
async function encodeOnly(total: number, part: number, crc: boolean): Promise<number> {
  const { hello, plan } = stateOnlyHandshake(crc ? Features.BODY_CRC : 0);
  const w = new StreamWriter(discard, { partSize: part });
  await w.hello(hello);
  await w.plan(plan);
  const t0 = performance.now();
  await w.section({ id: 'ram', instance: 0, version: 1 }, [], parts(total, part));
  return total / ((performance.now() - t0) / 1000) / 1e9;
}

/** Decoding only (header checks, CRC, payload slices) of frames fed whole: GB/s. */
async function decodeOnly(total: number, part: number, crc: boolean): Promise<number> {
  const { hello, plan } = stateOnlyHandshake(crc ? Features.BODY_CRC : 0);
  // Record one START, one PART and one END frame, then feed START, PART x n, END.
  const frames: Buffer[] = [];
  const rec: StreamChannel = { canPassFds: true, writeFrame: async (h, rest) => void frames.push(Buffer.concat([h, ...rest])) };
  const w = new StreamWriter(rec, { partSize: part });
  await w.hello(hello);
  await w.plan(plan);
  await w.section({ id: 'ram', instance: 0, version: 1 }, [], parts(3 * part, part));
  const [helloF, planF, start, middle, end] = frames as [Buffer, Buffer, Buffer, Buffer, Buffer];
  const r = new StreamReader({ role: 'inspect' });
  r.feed(helloF);
  r.feed(planF);
  const n = Math.max(3, Math.round(total / part));
  let bytes = 0;
  const t0 = performance.now();
  for (const it of r.feed(start)) if (it.type === 'section') bytes += it.payload.length;
  for (let i = 0; i < n - 2; i++) for (const it of r.feed(middle)) if (it.type === 'section') bytes += it.payload.length;
  for (const it of r.feed(end)) if (it.type === 'section') bytes += it.payload.length;
  const s = (performance.now() - t0) / 1000;
  r.close();
  return bytes / s / 1e9;
}

/** A sealed memfd holding `total` bytes: state that already lives in a memfd (guest RAM, say). */
function stateMemfd(total: number): number {
  const fd = native.memfd_create('bench-state');
  const chunk = Buffer.alloc(4 * MiB, 0x5a);
  for (let off = 0; off < total; off += chunk.length) writeSync(fd, chunk, 0, Math.min(chunk.length, total - off), off);
  native.fcntl_add_seals(fd, native.F_SEAL_SHRINK | native.F_SEAL_GROW | native.F_SEAL_WRITE);
  return fd;
}

/**
 * The whole state in one sealed memfd, sent by descriptor (no CRC: computing one
 * means reading all of it). The target either keeps the fd (its bytes are there
 * to map or read) or reads every byte out of it. GB/s of state handed over.
 */
async function oneMemfd(total: number, target: 'keep' | 'read' | 'map' | 'map-touch'): Promise<number> {
  const { hello, plan } = stateOnlyHandshake(Features.MEMFD_PAYLOAD | Features.FDS);
  const memfd = stateMemfd(total); // made before the clock starts, like the VMM's own memory
  const peer = await startPeer('stream-sink.ts', [target], 'stream');
  try {
    const w = new StreamWriter(fdSocketChannel(peer.sock));
    const t0 = performance.now();
    await w.hello(hello);
    await w.plan(plan);
    await w.section({ id: 'ram', instance: 0, version: 1 }, [], { memfd, length: total });
    await w.endOfState();
    await w.eof();
    const ack = await peer.sock.read();
    const t1 = performance.now();
    const got = Number(ack!.data.toString().split(' ')[0]);
    if (got !== total) throw new Error(`stream sink got ${got} of ${total} bytes`);
    return total / ((t1 - t0) / 1000) / 1e9;
  } finally {
    closeFd(memfd);
    peer.sock.close();
    await peer.exited;
  }
}

/** The full stack between two processes: StreamWriter → FdSocket → StreamReader. GB/s. */
async function fullStack(total: number, part: number, opts: { crc: boolean; memfd?: boolean; type?: 'stream' | 'seqpacket'; sink?: 'read' | 'map' }): Promise<number> {
  const features = (opts.crc ? Features.BODY_CRC : 0) | (opts.memfd ? Features.MEMFD_PAYLOAD | Features.FDS : 0);
  const { hello, plan } = stateOnlyHandshake(features);
  const peer = await startPeer('stream-sink.ts', [opts.sink ?? 'map'], opts.type ?? 'stream');
  const w = new StreamWriter(fdSocketChannel(peer.sock), { partSize: part, memfdThreshold: opts.memfd ? 1 : Number.MAX_SAFE_INTEGER });
  perfWindow(true);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await w.hello(hello);
  await w.plan(plan);
  await w.section({ id: 'ram', instance: 0, version: 1 }, [], parts(total, part));
  await w.endOfState();
  await w.eof();
  const ack = await peer.sock.read();
  const t1 = performance.now();
  const cpu = process.cpuUsage(cpu0);
  perfWindow(false);
  const answer = ack!.data.toString().trim().split(' ');
  const got = Number(answer[0]);
  Object.assign(lastCpu, { source: cpu.user + cpu.system, target: Number(answer[3] ?? 0), bytes: total });
  peer.sock.close();
  await peer.exited;
  if (got !== total) throw new Error(`stream sink got ${got} of ${total} bytes`);
  return total / ((t1 - t0) / 1000) / 1e9;
}

/**
 * Copies of each state byte (kernel copies included; a CRC pass reads without
 * copying and is not counted): 'source' from the state's buffer to the socket or
 * memfd, 'target' from the socket or memfd to where the target holds it. A mapped
 * memfd is 0: the target reads the sender's pages.
 */
const copies = (source: number, target: number, crcPasses: number) => () => ({ 'copies per byte (source + target)': `${source} + ${target}`, 'CRC passes per side': crcPasses });

export function streamCases(s: Scale): Case[] {
  const G1 = 'bulk: stream socket, 1 MiB writes';
  const GS = 'bulk: seqpacket socket, 64 KiB records';
  return [
    // Inline: the writer's buffer -> socket (sendmsg), socket -> the reader's frame buffer (recvmsg straight into it).
    { group: G1, name: 'migration stream, 1 MiB parts, CRC', unit: 'GB/s', target: 0.8, run: () => fullStack(s.bulkBytes, MiB, { crc: true }), extra: copies(1, 1, 1) },
    { group: G1, name: 'migration stream, 1 MiB parts, no CRC', unit: 'GB/s', target: 0.9, run: () => fullStack(s.bulkBytes, MiB, { crc: false }), extra: copies(1, 1, 0) },
    // By memfd: the writer's buffer -> a new memfd (one pwrite); the target maps it.
    { group: G1, name: 'migration stream, 1 MiB parts by sealed memfd, CRC', unit: 'GB/s', target: 1.0, run: () => fullStack(s.bulkBytes, MiB, { crc: true, memfd: true }), extra: copies(1, 0, 1) },
    {
      group: G1,
      name: 'migration stream, 1 MiB parts by sealed memfd, no CRC',
      unit: 'GB/s',
      target: 1.0,
      run: () => fullStack(s.bulkBytes, MiB, { crc: false, memfd: true }),
      extra: copies(1, 0, 0),
    },
    {
      group: G1,
      name: 'migration stream, 1 MiB parts by sealed memfd, no CRC, target reads them',
      unit: 'GB/s',
      run: () => fullStack(s.bulkBytes, MiB, { crc: false, memfd: true, sink: 'read' }),
      extra: copies(1, 1, 0),
    },
    { group: G1, name: 'migration stream, all in one sealed memfd, target keeps the fd', unit: 'GB/s', run: () => oneMemfd(s.bulkBytes, 'keep'), extra: copies(0, 0, 0) },
    { group: G1, name: 'migration stream, all in one sealed memfd, target maps it', unit: 'GB/s', target: 1.5, run: () => oneMemfd(s.bulkBytes, 'map'), extra: copies(0, 0, 0) },
    { group: G1, name: 'migration stream, all in one sealed memfd, target maps it and reads every byte (CRC-32)', unit: 'GB/s', run: () => oneMemfd(s.bulkBytes, 'map-touch'), extra: copies(0, 0, 0) },
    { group: G1, name: 'migration stream, all in one sealed memfd, target reads it', unit: 'GB/s', run: () => oneMemfd(s.bulkBytes, 'read'), extra: copies(0, 1, 0) },
    { group: GS, name: 'migration stream, 1 MiB parts, CRC', unit: 'GB/s', target: 0.9, run: () => fullStack(s.bulkBytes, MiB, { crc: true, type: 'seqpacket' }), extra: copies(1, 1, 1) },
    { group: 'codec alone (no socket), 1 MiB parts', name: 'encode, CRC', unit: 'GB/s', run: () => encodeOnly(s.bulkBytes, MiB, true) },
    { group: 'codec alone (no socket), 1 MiB parts', name: 'encode, no CRC', unit: 'GB/s', run: () => encodeOnly(s.bulkBytes, MiB, false) },
    { group: 'codec alone (no socket), 1 MiB parts', name: 'decode, CRC', unit: 'GB/s', run: () => decodeOnly(s.bulkBytes, MiB, true) },
    { group: 'codec alone (no socket), 1 MiB parts', name: 'decode, no CRC', unit: 'GB/s', run: () => decodeOnly(s.bulkBytes, MiB, false) },
  ];
}
