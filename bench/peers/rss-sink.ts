// Benchmark peer: reads a stream from fd 3 (recycled receive memory, reused
// assembly buffer), counts the state, answers with its RSS growth. memfd parts are
// mapped, read once (a CRC over the mapping: every page touched) and released,
// as the handover target does around onState.
import { readFileSync } from 'node:fs';
import { FdSocket, StreamReader, crc32, pumpFdSocket, releaseMapping } from '../../src/index.js';

const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
const sock = FdSocket.fromFd(3, { recycleReadBuffers: true });
const reader = new StreamReader({ role: 'inspect', reuseBuffers: true, memfdPayload: 'map' });
const before = rss();
let peak = before;
const timer = setInterval(() => (peak = Math.max(peak, rss())), 20);
let bytes = 0;
let mapped = 0;
let sum = 0;
await pumpFdSocket(sock, reader, (items) => {
  for (const it of items) {
    if (it.type !== 'section') continue;
    bytes += it.payload.length;
    if (it.payloadMapped) {
      mapped++;
      sum ^= crc32(it.payload);
      releaseMapping(it.payload);
    }
  }
});
clearInterval(timer);
sock.resume();
await sock.send(Buffer.from(JSON.stringify({ before, peak: Math.max(peak, rss()), bytes, mapped, sum })));
await sock.end();
sock.close();
