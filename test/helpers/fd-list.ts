// The open fds of this process, by number and what they point to. No vitest here:
// the peer fixtures (plain processes) use it too.
import { readdirSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';

export function openFds(): Map<number, string> {
  const out = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    try {
      out.set(fd, readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      /* the fd readdir itself used, already closed */
    }
  }
  return out;
}

/**
 * Describes fds open now that were not open in `before` (or were another file
 * then). Compared by identity, not by count: fds that the runtime closes by
 * itself meanwhile cannot hide a leak. (Under tsx on Node 22 and later, tsx's
 * connection attempt to a parent's IPC socket is still open when a module's top
 * level runs and closes a moment later; a count taken then comes out negative.)
 */
const TSX_CACHE = new RegExp(`^${tmpdir().replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/tsx-\\d+(/|$)`);

export function leakedSince(before: Map<number, string>): string[] {
  const now = openFds();
  const leaked: string[] = [];
  for (const [fd, link] of now) {
    // tsx (the loader these peers run under) opens its cache folder, /tmp/tsx-<uid>,
    // when it first compiles a module, which may be during a handover: its, not ours.
    if (TSX_CACHE.test(link)) continue;
    if (before.get(fd) !== link) leaked.push(`${fd} -> ${link}`);
  }
  return leaked;
}
