// Benchmark peer: streams TOTAL bytes of state in 1 MiB parts (one reused buffer)
// through StreamWriter and FdSocket on fd 3, and reports its RSS. argv[3] 'memfd':
// each part goes in its own sealed memfd.
import { readFileSync } from 'node:fs';
import { FdSocket, Features, StreamWriter, fdSocketChannel } from '../../src/index.js';
import { stateOnlyHandshake } from '../../test/helpers/stream.js';

const total = Number(process.argv[2]);
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
const hwm = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]) * 1024;
const sock = FdSocket.fromFd(3);
const memfd = process.argv[3] === 'memfd';
const w = new StreamWriter(fdSocketChannel(sock), { partSize: 1 << 20, memfdThreshold: memfd ? 1 : Number.MAX_SAFE_INTEGER });
const features = Features.BODY_CRC | (memfd ? Features.MEMFD_PAYLOAD | Features.FDS : 0);
const { hello, plan } = stateOnlyHandshake(features);
await w.hello(hello);
await w.plan(plan);
const before = rss();
let peak = before;
const timer = setInterval(() => (peak = Math.max(peak, rss())), 20);
function* parts(): Generator<Uint8Array> {
  const part = Buffer.alloc(1 << 20, 3);
  for (let sent = 0; sent < total; sent += part.length) yield part;
}
await w.section({ id: 'ram', instance: 0, version: 1 }, [], parts());
await w.endOfState();
await w.eof();
clearInterval(timer);
const ack = await sock.read();
process.stdout.write(JSON.stringify({ side: 'source', before, peak: Math.max(peak, rss()), hwm: hwm(), ack: ack?.data.toString() }) + '\n');
sock.close();
