// Benchmark peer: the new management daemon. Accepts DEVICES generic devices and
// counts the state as it arrives (onState: nothing of it is kept).
import { FdSocket, GenericTarget, receiveHandover } from '../../src/index.js';

const devices = Number(process.argv[2]);
const sock = FdSocket.fromFd(3);
let state = 0;
const r = await receiveHandover({
  socket: sock,
  accept: Array.from({ length: devices }, (_, d) => new GenericTarget({ id: `vm${d}` })),
  backendTransfer: true,
  onState: (p) => void (state += p.length),
  timeouts: { stage: 120_000, verify: 120_000, adopt: 120_000, commit: 120_000 },
});
for (const d of r.devices.values()) (d.backend as { close?: () => void } | null)?.close?.();
process.stdout.write(JSON.stringify({ fds: r.fds, state, downtimeMs: r.timings.downtimeMs, totalMs: r.timings.totalMs, phases: r.timings.phases }) + '\n');
sock.close();
