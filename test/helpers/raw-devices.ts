// Hand-made source devices for the peer fixtures: a vhost-user device declared
// with whatever fds a test wants on it (true ones, too few, the wrong kinds, one
// fd twice), which the library's own VhostUserSource would not let be made. No
// vitest here.
import type { SourceDevice } from '../../src/index.js';

export type RawAttachment = ReturnType<SourceDevice['capture']>['attachments'][number];

/**
 * A vhost-user SourceDevice (instance 0, version 1, transferred, required, no
 * check of its own, nothing to release) that declares `fdCount` fds, captures
 * `attachments()` when asked for fds (none otherwise), and as its state the
 * metadata of a one-queue connection with `meta` over it.
 */
export function rawVhostUserSource(options: { id: string; fdCount: number; attachments: () => RawAttachment[]; meta?: Record<string, unknown> }): SourceDevice {
  const state = { socketPath: '', features: '0', protocolFeatures: '0', numQueues: 1, kick: 1, call: 1, backendChannel: false, inflight: null, ...options.meta };
  return {
    kind: 'vhost-user',
    id: options.id,
    instance: 0,
    version: 1,
    transfer: true,
    required: true,
    fdCount: () => options.fdCount,
    check: () => undefined,
    capture: (withFds) => ({
      attachments: withFds ? options.attachments() : [],
      state: Buffer.from(JSON.stringify(state)),
    }),
    release: () => undefined,
  };
}
