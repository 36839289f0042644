// Benchmark peer: ping-pong over FdSocket on fd 3. Says "ready"; then for each
// one-byte message with one fd, closes the fd and answers with one byte and one fd.
import { FdSocket, closeFd, native } from '../../src/index.js';

const n = Number(process.argv[2]);
const sock = FdSocket.fromFd(3);
const efd = native.eventfd(0);
const reply = Buffer.from([1]);
const fds = [efd];
await sock.send(Buffer.from('R'));
let i = 0;
await new Promise<void>((resolve, reject) => {
  sock
    .consume((c) => {
      for (const fd of c.fds) closeFd(fd);
      for (let k = 0; k < c.data.length; k++) void sock.send(reply, fds);
      i += c.data.length;
      if (i >= n) resolve();
    })
    .then(resolve, reject);
});
closeFd(efd);
await sock.end();
sock.close();
