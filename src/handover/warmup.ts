// A handover's first run in a process is slow: V8 compiles each function the
// first time it is called, Node loads some of its internals lazily, and the
// buffers' pages are not there yet. Cold, that adds several ms to the downtime
// (the freeze-to-adopt window) of a handover that is otherwise a few ms long.
//
// warmUpHandover() runs one tiny handover inside this process, over a socketpair
// (one device of each kind whose registry entry has a warm-up part, 256 KiB of state, CRC
// on), before the real one, so that the real one runs on compiled code. sendHandover and receiveHandover call it in
// their 'prepare' phase, before the freeze, unless `warmUp: false`.
import { BACKEND_REGISTRY } from '../backends/registry.js';
import type { BackendKindEntry } from '../backends/types.js';
import { closeFds } from '../fd/index.js';
import { FdSocket } from '../transport/fd-socket.js';

let warm: Promise<void> | null = null;

/** Warms the handover path once per process; later calls return the same promise. It never rejects. */
export function warmUpHandover(): Promise<void> {
  warm ??= (async () => {
    const [a, b] = FdSocket.pair();
    // Each kind's warm-up part (registry entries): real fds of the kinds whose
    // checks need no privilege (a TAP needs CAP_NET_ADMIN: not here).
    const own: number[] = [];
    try {
      // Loaded when first called, not at import: source.ts and target.ts import this file (no import cycle).
      const [{ sendHandover }, { receiveHandover }] = await Promise.all([import('./source.js'), import('./target.js')]);
      const parts = (BACKEND_REGISTRY as readonly BackendKindEntry[]).flatMap((k) => (k.warmUp ? [k.warmUp(own)] : []));
      const sources = parts.map((p) => p.source);
      const targets = parts.map((p) => p.target);
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

/** Whether this process has started its warm-up (warmUpHandover() was called, by a handover or by hand). */
export function warmUpStarted(): boolean {
  return warm !== null;
}
