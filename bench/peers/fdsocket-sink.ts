// Benchmark peer: FdSocket on fd 3 in push mode with recycled receive memory.
// Says "ready" (one byte), then takes everything until TOTAL bytes and FDS fds have
// arrived, closing fds as they come (closeFds per message; with argv 'each', closeFd
// per fd, as the C baseline does), and answers with the CPU time it spent.
import { FdSocket, closeFd, closeFds } from '../../src/index.js';

const total = Number(process.argv[2]);
const wantFds = Number(process.argv[3] ?? 0);
const each = process.argv[4] === 'each';
const sock = FdSocket.fromFd(3, { recycleReadBuffers: true });
let bytes = 0;
let fds = 0;
let cpu0: NodeJS.CpuUsage | null = null;
await sock.send(Buffer.from('R'));
await new Promise<void>((resolve, reject) => {
  sock
    .consume((c) => {
      cpu0 ??= process.cpuUsage();
      bytes += c.data.length;
      if (each) for (const fd of c.fds) closeFd(fd);
      else if (c.fds.length > 0) closeFds(c.fds);
      fds += c.fds.length;
      if (bytes >= total && fds >= wantFds) {
        sock.pause();
        resolve();
      }
    })
    .then(resolve, reject);
});
// The answer: its CPU time (user + system, µs) from the first chunk on, as text.
const cpu = process.cpuUsage(cpu0 ?? undefined);
await sock.send(Buffer.from(`${cpu.user + cpu.system}\n`));
await sock.end();
sock.close();
