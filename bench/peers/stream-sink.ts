// Benchmark peer: reads a migration stream from fd 3 (an FdSocket, push mode,
// recycled receive memory) with a StreamReader in inspect role, counting the state
// bytes, and answers after the EOF frame. argv[2] says what becomes of memfd
// payloads: 'keep': they stay fds (counted by their size); 'read': their bytes are
// read out into a buffer; 'map' (default): mapped (no copy), counted, released;
// 'map-touch': mapped, every byte read once (a CRC-32 over the mapping), released.
// Its answer also says how much CPU time it spent (bench/pick.ts prints it per MiB).
import { closeFd, FdSocket, StreamReader, closeFds, crc32, native, pumpFdSocket, releaseMapping } from '../../src/index.js';

const sock = FdSocket.fromFd(3, { recycleReadBuffers: true });
const mode = (process.argv[2] ?? 'map') as 'keep' | 'read' | 'map' | 'map-touch';
const reader = new StreamReader({
  role: 'inspect',
  verifyFdKinds: process.env.BT_VERIFY_KINDS !== '0',
  reuseBuffers: true,
  memfdPayload: mode === 'map-touch' ? 'map' : mode,
});
let payload = 0;
let fds = 0;
let touched = 0;
let cpu0: NodeJS.CpuUsage | null = null;
await sock.send(Buffer.from('R'));
await pumpFdSocket(sock, reader, (items) => {
  cpu0 ??= process.cpuUsage();
  for (const it of items) {
    if (it.type === 'section') {
      if (it.payloadFd !== undefined) {
        payload += native.fstat(it.payloadFd).size; // kept: the bytes are there, behind the fd
        closeFd(it.payloadFd);
      } else payload += it.payload.length;
      if (mode === 'map-touch') touched ^= crc32(it.payload);
      if (it.payloadMapped) releaseMapping(it.payload);
      fds += it.attachments.length;
      closeFds(it.attachments.map((a) => a.fd));
    }
  }
});
sock.resume();
// The fourth number: CPU time (user + system, µs) of this process from the first frame on.
const cpu = process.cpuUsage(cpu0 ?? undefined);
await sock.send(Buffer.from(`${payload} ${fds} ${touched} ${cpu.user + cpu.system}\n`));
await sock.end();
sock.close();
