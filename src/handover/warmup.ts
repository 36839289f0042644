// A handover's first run in a process is slow: V8 compiles each function the
// first time it is called, Node loads some of its internals lazily, and the
// buffers' pages are not there yet. Cold, that adds several ms to the downtime
// (the freeze-to-adopt window) of a handover that is otherwise a few ms long.
//
// warmUpHandover() runs one tiny handover inside this process, over a socketpair
// (a generic, a chardev-socket and a vhost-user device, 256 KiB of state, CRC
// on), before the real one, so that the real one runs on compiled code. sendHandover and receiveHandover call it in
// their 'prepare' phase, before the freeze, unless `warmUp: false`.
import { writeSync } from 'node:fs';
import { ChardevSocketSource, ChardevSocketTarget } from '../backends/chardev-socket.js';
import { GenericSource, GenericTarget } from '../backends/generic.js';
import { VhostUserSource, VhostUserTarget } from '../backends/vhost-user.js';
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
    // Backends of the kinds whose checks need no privilege: an eventfd, a chardev
    // connection, a vhost-user connection with its eventfds and inflight memfd
    // (socketpairs stand in for the connections). A TAP needs CAP_NET_ADMIN: not here.
    const own: number[] = [];
    try {
      const e = native.eventfd(0);
      own.push(e);
      const [c1, c2] = native.socketpair(native.SOCK_STREAM);
      own.push(c1, c2);
      const [v1, v2] = native.socketpair(native.SOCK_STREAM);
      own.push(v1, v2);
      const kick = native.eventfd(0);
      const call = native.eventfd(0);
      const inflight = native.memfd_create('bt-warm-up');
      own.push(kick, call, inflight);
      writeSync(inflight, Buffer.alloc(4096), 0, 4096, 0);
      const sources = [
        new GenericSource({ id: 'warm-generic', transfer: true, required: true, fds: [{ name: 'e', fd: e, kind: 'eventfd' }], closeOnRelease: false }),
        new ChardevSocketSource({ id: 'warm-chardev', transfer: true, required: true, fd: c1, role: 'client', address: 'warm-up', closeOnRelease: false }),
        new VhostUserSource({
          id: 'warm-vhost',
          transfer: true,
          required: true,
          socket: v1,
          kickFds: [kick],
          callFds: [call],
          inflight: { fd: inflight, size: 4096, offset: 0, queueSize: 0 },
          socketPath: 'warm-up',
          features: 0n,
          protocolFeatures: 0n,
          numQueues: 1,
          closeOnRelease: false,
        }),
      ];
      const targets = [new GenericTarget({ id: 'warm-generic' }), new ChardevSocketTarget({ id: 'warm-chardev' }), new VhostUserTarget({ id: 'warm-vhost' })];
      const state = Buffer.alloc(256 * 1024, 0x5a);
      const [, r] = await Promise.all([
        sendHandover({ socket: a, devices: sources, state, partSize: 64 * 1024, backendTransfer: true, warmUp: false, collectGarbage: false }),
        receiveHandover({ socket: b, accept: targets, backendTransfer: true, warmUp: false, collectGarbage: false }),
      ]);
      for (const d of r.devices.values()) (d.backend as { close?: () => void } | null)?.close?.();
    } finally {
      a.close();
      b.close();
      closeFds(own);
    }
  })().catch(() => undefined); // a failed warm-up costs speed, nothing else
  return warm;
}
