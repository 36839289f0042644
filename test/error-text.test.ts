// Error text: a code appears once, inspectFd's argument check, the caller's abort
// reason in both sides' errors (it travels in the ABORT / NACK frame's reason),
// a TAP error names the device. The source runs in a child (session-peer.ts).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { BackendTransferError, GenericTarget, TapSource, inspectFd, native, receiveHandover, type ReceiveHandoverOptions } from '../src/index.js';
import { withoutCode } from '../src/errors.js';
import { trackFdLeaks } from './helpers/fds.js';
import { Peers } from './helpers/child.js';

trackFdLeaks();
const peers = new Peers();
const dir = mkdtempSync(join(tmpdir(), 'bt-errtext-'));
let n = 0;
afterEach(() => peers.disposeAll());
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const REPEATED_CODE = /(ERR_[A-Z0-9_]+): \1\b/;

async function handover(spec: Record<string, unknown>, signal?: AbortSignal, onPhase?: (p: string) => void, more: Partial<ReceiveHandoverOptions> = {}) {
  const path = join(dir, `h-${n++}.sock`);
  const peer = peers.spawn('source', [JSON.stringify({ stateBytes: 1 << 16, ...spec, path })], { fixture: 'session-peer.ts' });
  await peer.waitFor('ready');
  const target = receiveHandover({
    socket: path,
    accept: [new GenericTarget({ id: 'vm0', expect: { ram: 'memfd', irq: 'eventfd' } })],
    backendTransfer: true,
    signal,
    onEvent: (e) => e.type === 'phase' && onPhase?.(e.phase),
    ...more,
  }).then(
    () => null,
    (e: BackendTransferError) => e,
  );
  const s = await peer.ask({ cmd: 'handover' }, ['handover-done', 'handover-failed']);
  return { source: s as { event: string; code?: string; message?: string }, target: await target };
}

describe('error text', () => {
  it('a code is never repeated: not by the constructor, not through a NACK reason', async () => {
    const e = new BackendTransferError('ERR_BACKEND_VERIFY', 'ERR_BACKEND_VERIFY: device x: bad');
    expect(e.message).toBe('ERR_BACKEND_VERIFY: device x: bad');
    expect(withoutCode(e.message)).toBe('device x: bad');
    // The target refuses a state over its limit and says why in a NACK. (A source that
    // declares a memfd as an eventfd is refused before it connects now.)
    const { source, target } = await handover({}, undefined, undefined, { limits: { maxStateBytes: 1024 } });
    expect(target?.code).toBe('ERR_STREAM_TOO_LARGE');
    expect(source.code).toBe('ERR_HANDOVER_REFUSED');
    expect(source.message).toContain('ERR_STREAM_TOO_LARGE');
    expect(source.message).not.toMatch(REPEATED_CODE);
    expect(target!.message).not.toMatch(REPEATED_CODE);
  });

  it("the source caller's abort reason reaches both sides' errors", async () => {
    const { source, target } = await handover({ abortAt: 'freeze', abortReason: 'operator cancelled ticket 4711' });
    expect(source.code).toBe('ERR_HANDOVER_ABORTED');
    expect(source.message).toContain('operator cancelled ticket 4711');
    expect(target?.code).toBe('ERR_HANDOVER_ABORTED');
    expect(target!.message).toContain('operator cancelled ticket 4711');
    expect(target!.message).not.toMatch(REPEATED_CODE);
  });

  it("the target caller's abort reason reaches both sides' errors", async () => {
    const ac = new AbortController();
    const { source, target } = await handover({}, ac.signal, (p) => p === 'stage' && ac.abort(new Error('disk quota on the new host')));
    expect(target?.code).toBe('ERR_HANDOVER_ABORTED');
    expect(target!.message).toContain('disk quota on the new host');
    expect(source.code).toBe('ERR_HANDOVER_REFUSED');
    expect(source.message).toContain('disk quota on the new host');
    expect(source.message).not.toMatch(REPEATED_CODE);
  });

  it('inspectFd refuses a number that cannot be an fd with ERR_INVALID_ARGUMENT', () => {
    for (const bad of [-1, 1.5, 2 ** 31, Number.NaN]) expect(() => inspectFd(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    // A closed fd is still a system error (EBADF).
    const fd = native.eventfd(0);
    native.close(fd);
    expect(() => inspectFd(fd)).toThrow(expect.objectContaining({ code: 'ERR_SYSTEM' }));
  });

  it('a TAP error names the device id, not the kind', () => {
    const efd = native.eventfd(0);
    try {
      const src = new TapSource({ id: 'net7', transfer: true, queues: [efd] });
      expect(() => src.check()).toThrow(/device net7: queue 0/);
    } finally {
      native.close(efd);
    }
  });
});
