// Benchmark peer: reads a migration stream from fd 3 (an FdSocket, push mode,
// recycled receive memory) with a StreamReader in inspect role, counting the state
// bytes, and answers after the EOF frame. argv[2] 'keep': memfd payloads stay fds
// (counted by their size); 'read' (default): their bytes are read out.
import { closeFd, FdSocket, StreamReader, closeFds, native, pumpFdSocket } from '../../src/index.js';

const sock = FdSocket.fromFd(3, { recycleReadBuffers: true });
const memfdPayload = process.argv[2] === 'keep' ? 'keep' : 'read';
const reader = new StreamReader({ role: 'inspect', verifyFdKinds: process.env.BT_VERIFY_KINDS !== '0', reuseBuffers: true, memfdPayload });
let payload = 0;
let fds = 0;
await sock.send(Buffer.from('R'));
await pumpFdSocket(sock, reader, (items) => {
  for (const it of items) {
    if (it.type === 'section') {
      if (it.payloadFd !== undefined) {
        payload += native.fstat(it.payloadFd).size; // kept: the bytes are there, behind the fd
        closeFd(it.payloadFd);
      } else payload += it.payload.length;
      fds += it.attachments.length;
      closeFds(it.attachments.map((a) => a.fd));
    }
  }
});
sock.resume();
await sock.send(Buffer.from(`${payload} ${fds}\n`));
await sock.end();
sock.close();
