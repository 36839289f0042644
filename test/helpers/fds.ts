// fd leak checks: after every test, the set of open fds in /proc/self/fd must be
// what it was before.
import { readSync } from 'node:fs';
import { afterEach, beforeEach } from 'vitest';
import { native } from '../../src/index.js';
import { leakedSince, openFds } from './fd-list.js';

export { leakedSince, openFds };

export function countOpenFds(): number {
  return openFds().size;
}

/** Waits a few loop turns so that closes queued on the loop (uv_close, child stdio) finish. */
export async function settle(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
}

/** Registers a beforeEach/afterEach pair that fails a test which leaves fds open. */
export function trackFdLeaks(): void {
  let before: Map<number, string> = new Map();
  beforeEach(async () => {
    await settle();
    before = openFds();
  });
  afterEach(async () => {
    let leaked: string[] = [];
    // Child stdio pipes close when their 'close' events run; give them a moment.
    for (let i = 0; i < 50; i++) {
      await settle();
      leaked = leakedSince(before);
      if (leaked.length === 0) return;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`fd leak: ${leaked.length} fd(s) left open by this test:\n  ${leaked.slice(0, 20).join('\n  ')}`);
  });
}

/** Reads an eventfd's counter (and resets it): proves the fd is the one that was signalled. */
export function counter(fd: number): number {
  const b = Buffer.alloc(8);
  readSync(fd, b, 0, 8, null);
  return Number(b.readBigUInt64LE(0));
}

/** Whether `fd` is an open fd of this process (fcntl(F_GETFD) succeeds). */
export function isOpen(fd: number): boolean {
  try {
    native.fcntl_getfd(fd);
    return true;
  } catch {
    return false;
  }
}
