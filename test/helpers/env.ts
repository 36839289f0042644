// Honest skips: a test that cannot run here says why, on the console and in the report.
import { hasCommand } from '../../src/cli/demo/process.js';
import { existsSync } from 'node:fs';

export const isRoot = process.getuid?.() === 0;

export { hasCommand };

/** null when network namespaces with TAP devices can be made here, else the reason they cannot. */
export function netnsUnavailable(): string | null {
  if (!isRoot) return 'needs root (CAP_NET_ADMIN) to create a network namespace and a TAP device';
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun does not exist on this machine';
  if (!hasCommand('ip')) return "the 'ip' command (Debian package iproute2) is not installed";
  return null;
}

/** Skips the running test with a printed reason when `reason` is not null. */
export function skipUnless(ctx: { skip: (note?: string) => void; task: { name: string } }, reason: string | null): void {
  if (reason === null) return;
  console.warn(`SKIP "${ctx.task.name}": ${reason}`);
  ctx.skip(reason);
}
