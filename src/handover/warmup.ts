// A handover's first run in a process is slow: V8 compiles each function the
// first time it is called, Node loads some of its internals lazily, and the
// buffers' pages are not there yet. Cold, that adds several ms to the downtime
// (the freeze-to-adopt window) of a handover that is otherwise a few ms long.
//
// warmUpHandover() runs one tiny handover inside this process, over a socketpair
// (one eventfd and 256 KiB of state, CRC on), before the real one, so that the
// real one runs on compiled code. sendHandover and receiveHandover call it in
// their 'prepare' phase, before the freeze, unless `warmUp: false`.
import { GenericSource, GenericTarget } from '../backends/generic.js';
import { closeFds } from '../fd/index.js';
import { native } from '../native.js';
import { FdSocket } from '../transport/fd-socket.js';
import { sendHandover } from './source.js';
import { receiveHandover } from './target.js';

let warm: Promise<void> | null = null;

/** Warms the handover path once per process; later calls return the same promise. It never rejects. */
export function warmUpHandover(): Promise<void> {
  warm ??= (async () => {
    const [a, b] = FdSocket.pair();
    const fd = native.eventfd(0);
    try {
      const device = new GenericSource({ id: 'warm-up', transfer: true, required: true, fds: [{ name: 'e', fd, kind: 'eventfd' }], closeOnRelease: false });
      const state = Buffer.alloc(256 * 1024, 0x5a);
      const [, r] = await Promise.all([
        sendHandover({ socket: a, devices: [device], state, partSize: 64 * 1024, backendTransfer: true, warmUp: false }),
        receiveHandover({ socket: b, accept: [new GenericTarget({ id: 'warm-up' })], backendTransfer: true, warmUp: false }),
      ]);
      for (const d of r.devices.values()) (d.backend as { close?: () => void } | null)?.close?.();
    } finally {
      a.close();
      b.close();
      closeFds([fd]);
    }
  })().catch(() => undefined); // a failed warm-up costs speed, nothing else
  return warm;
}
