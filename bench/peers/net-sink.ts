// Benchmark peer: Node's net module over a unix socket. Connects to PATH, says
// "ready", reads TOTAL bytes, answers with one byte.
import net from 'node:net';

const path = process.argv[2]!;
const total = Number(process.argv[3]);
const sock = net.connect(path);
let got = 0;
sock.on('connect', () => sock.write('R'));
sock.on('data', (d: Buffer) => {
  got += d.length;
  if (got >= total) sock.end(Buffer.from([1]));
});
