// Benchmark peer: the usocket package on fd 3. Says "ready", reads until TOTAL
// bytes and FDS fds came or the sender closes (usocket can drop fds, so EOF ends
// the count too), closes fds, then reports "bytes fds lastArrivalMs" as text.
import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const usocket = require('usocket') as { USocket: new (opts: { fd: number }) => any };
const total = Number(process.argv[2]);
const wantFds = Number(process.argv[3] ?? 0);
const sock = new usocket.USocket({ fd: 3 });
let bytes = 0;
let fds = 0;
let done = false;
let last = 0; // wall-clock ms of the last byte or fd (EOF may come much later when fds were lost)
const finish = () => {
  if (done) return;
  done = true;
  sock.write(Buffer.from(`${bytes} ${fds} ${last}\n`));
  sock.end();
};
sock.on('readable', () => {
  for (;;) {
    const m = sock.read(null, null) as { data: Buffer | null; fds: number[] } | null;
    if (!m || ((!m.data || m.data.length === 0) && (!m.fds || m.fds.length === 0))) break;
    last = performance.timeOrigin + performance.now();
    if (m.data) bytes += m.data.length;
    for (const fd of m.fds ?? []) closeSync(fd);
    fds += (m.fds ?? []).length;
  }
  if (bytes >= total && fds >= wantFds) finish();
});
sock.on('end', finish);
sock.on('error', finish);
sock.write(Buffer.from('R'));
