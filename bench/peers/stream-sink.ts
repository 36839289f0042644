// Benchmark peer: reads a migration stream from fd 3 (an FdSocket, push mode,
// recycled receive memory) with a StreamReader in inspect role, counting the state
// bytes, and answers one byte after the EOF frame.
import { FdSocket, StreamReader, closeFds, pumpFdSocket } from '../../src/index.js';

const sock = FdSocket.fromFd(3, { recycleReadBuffers: true });
const reader = new StreamReader({ role: 'inspect', verifyFdKinds: process.env.BT_VERIFY_KINDS !== '0', reuseBuffers: true });
let payload = 0;
let fds = 0;
await sock.send(Buffer.from('R'));
await pumpFdSocket(sock, reader, (items) => {
  for (const it of items) {
    if (it.type === 'section') {
      payload += it.payload.length;
      fds += it.attachments.length;
      closeFds(it.attachments.map((a) => a.fd));
    }
  }
});
sock.resume();
await sock.send(Buffer.from(`${payload} ${fds}\n`));
await sock.end();
sock.close();
