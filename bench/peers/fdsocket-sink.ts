// Benchmark peer: FdSocket on fd 3 in push mode with recycled receive memory.
// Says "ready" (one byte), then takes everything until TOTAL bytes and FDS fds have
// arrived, closing fds as they come, and answers with one byte.
import { FdSocket, closeFd } from '../../src/index.js';

const total = Number(process.argv[2]);
const wantFds = Number(process.argv[3] ?? 0);
const sock = FdSocket.fromFd(3, { recycleReadBuffers: true });
let bytes = 0;
let fds = 0;
await sock.send(Buffer.from('R'));
await new Promise<void>((resolve, reject) => {
  sock
    .consume((c) => {
      bytes += c.data.length;
      for (const fd of c.fds) closeFd(fd);
      fds += c.fds.length;
      if (bytes >= total && fds >= wantFds) {
        sock.pause();
        resolve();
      }
    })
    .then(resolve, reject);
});
await sock.send(Buffer.from([1]));
await sock.end();
sock.close();
