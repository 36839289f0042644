// Benchmark peer: reads a stream from fd 3 (recycled receive memory, reused
// assembly buffer), counts the state, answers with its RSS growth.
import { readFileSync } from 'node:fs';
import { FdSocket, StreamReader, pumpFdSocket } from '../../src/index.js';

const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
const sock = FdSocket.fromFd(3, { recycleReadBuffers: true });
const reader = new StreamReader({ role: 'inspect', reuseBuffers: true });
const before = rss();
let peak = before;
const timer = setInterval(() => (peak = Math.max(peak, rss())), 20);
let bytes = 0;
await pumpFdSocket(sock, reader, (items) => {
  for (const it of items) if (it.type === 'section') bytes += it.payload.length;
});
clearInterval(timer);
sock.resume();
await sock.send(Buffer.from(JSON.stringify({ before, peak: Math.max(peak, rss()), bytes })));
await sock.end();
sock.close();
