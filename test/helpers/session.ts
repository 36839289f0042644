// The session-API tests between real processes (test/handover.test.ts,
// test/handover-staging.test.ts): the source runs in a child
// (test/fixtures/session-peer.ts), the target in the test's process.
import { createHash } from 'node:crypto';
import { mkdtempSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach } from 'vitest';
import { GenericTarget, receiveHandover, type HandoverEvent, type ReceiveHandoverOptions } from '../../src/index.js';
import { Peers, type Peer } from './child.js';

export const MiB = 1 << 20;
export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
export const phasesOf = (events: HandoverEvent[]): string[] => events.filter((e) => e.type === 'phase').map((e) => (e as { phase: string }).phase);

/** The first `length` bytes of a memfd (or any file fd), read at offset 0. */
export function readMemfd(fd: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  readSync(fd, b, 0, length, 0);
  return b;
}

export interface SessionHarness {
  peers: Peers;
  /** A fresh socket path in this file's temporary folder. */
  sockPath: () => string;
  /** Starts a session-peer source with `spec` (its `path` defaults to a fresh sockPath()) and waits for its 'ready'. */
  source: (spec: Record<string, unknown>) => Promise<{ peer: Peer; sha: string; path: string }>;
  /**
   * Starts receiveHandover on `path` for one generic device vm0 (ram: memfd, irq:
   * eventfd) unless `more` says otherwise, recording its events (and passing them
   * on to more.onEvent).
   */
  receive: (path: string, more?: Partial<ReceiveHandoverOptions>) => { events: HandoverEvent[]; done: ReturnType<typeof receiveHandover> };
}

/** Registers the hooks that dispose of the peers (afterEach) and remove the temporary folder (afterAll). */
export function sessionHarness(dirPrefix: string, sockPrefix: string): SessionHarness {
  const peers = new Peers();
  const dir = mkdtempSync(join(tmpdir(), dirPrefix));
  let n = 0;
  const sockPath = () => join(dir, `${sockPrefix}${n++}.sock`);
  afterEach(() => peers.disposeAll());
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function source(spec: Record<string, unknown>): Promise<{ peer: Peer; sha: string; path: string }> {
    const path = String(spec.path ?? sockPath());
    // `env`: extra environment for the source's process (not part of its spec).
    const { env, ...rest } = spec as { env?: Record<string, string> };
    const peer = peers.spawn('source', [JSON.stringify({ ...rest, path })], { fixture: 'session-peer.ts', env });
    const ready = await peer.waitFor('ready');
    return { peer, sha: String(ready.sha), path };
  }

  function receive(path: string, more: Partial<ReceiveHandoverOptions> = {}): { events: HandoverEvent[]; done: ReturnType<typeof receiveHandover> } {
    const events: HandoverEvent[] = [];
    const done = receiveHandover({
      socket: path,
      accept: [new GenericTarget({ id: 'vm0', expect: { ram: 'memfd', irq: 'eventfd' } })],
      backendTransfer: true,
      ...more,
      onEvent: (e) => {
        events.push(e);
        more.onEvent?.(e);
      },
    });
    done.catch(() => undefined); // handled where the test awaits it; not an unhandled rejection meanwhile
    return { events, done };
  }

  return { peers, sockPath, source, receive };
}
