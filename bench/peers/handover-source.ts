// Benchmark peer: a "management daemon" that hands DEVICES generic devices of
// FDS_EACH fds each (distinct eventfds: the target refuses one file sent twice)
// and STATE bytes of state (streamed in
// parts, memory stays flat; or, in mode 'memfd', in one sealed memfd made before
// the handover) over fd 3, and reports the timings as one JSON line.
import { writeSync } from 'node:fs';
import { FdSocket, GenericSource, closeFds, native, sendHandover } from '../../src/index.js';

const devices = Number(process.argv[2]);
const fdsEach = Number(process.argv[3]);
const stateBytes = Number(process.argv[4]);
const crc = process.argv[5] !== 'nocrc';
/**
 * 'staged' (default: backends staged, the state after the freeze), 'precopy' (staged, the state before the freeze),
 * 'memfd' (staged, the state in a sealed memfd that moves by descriptor after the freeze), 'old' (staging off).
 */
const mode = process.argv[6] ?? 'staged';
const owned: number[] = [];
const list = Array.from({ length: devices }, (_, d) => {
  const fds = Array.from({ length: fdsEach }, (_, k) => {
    const fd = native.eventfd(0);
    owned.push(fd);
    return { name: `f${k}`, fd, kind: 'eventfd' as const };
  });
  return new GenericSource({ id: `vm${d}`, transfer: true, required: true, fds, closeOnRelease: false });
});
// Made before the handover: the state a VMM hands over exists before its freeze.
const part = Buffer.alloc(1 << 20, 7);
function* state(): Generator<Uint8Array> {
  for (let sent = 0; sent < stateBytes; sent += part.length) yield stateBytes - sent >= part.length ? part : part.subarray(0, stateBytes - sent);
}
// A daemon that keeps its state in a memfd: written before the handover, sealed, sent as it is.
let stateFd = -1;
if (mode === 'memfd') {
  stateFd = native.memfd_create('daemon-state');
  for (let off = 0; off < stateBytes; off += part.length) writeSync(stateFd, part, 0, Math.min(part.length, stateBytes - off));
  native.fcntl_add_seals(stateFd, native.F_SEAL_SHRINK | native.F_SEAL_GROW | native.F_SEAL_WRITE | native.F_SEAL_SEAL);
  owned.push(stateFd);
}
const sock = FdSocket.fromFd(3);
const t0 = performance.now();
const r = await sendHandover({
  socket: sock,
  devices: list,
  ...(mode === 'precopy' ? { precopy: state(), state: Buffer.alloc(0) } : mode === 'memfd' ? { state: { memfd: stateFd, length: stateBytes }, memfdPayloads: true } : { state: state() }),
  staging: mode !== 'old',
  backendTransfer: true,
  crc,
  timeouts: { stage: 120_000, verify: 120_000, adopt: 120_000, commit: 120_000 },
});
const wall = performance.now() - t0;
process.stdout.write(
  JSON.stringify({
    downtimeMs: r.timings.downtimeMs,
    totalMs: r.timings.totalMs,
    wallMs: wall,
    fds: r.fds,
    stateBytes,
    staged: r.staged,
    phases: r.timings.phases,
    breakdown: r.timings.breakdown ?? null,
  }) + '\n',
);
closeFds(owned);
sock.close();
