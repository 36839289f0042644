// This process's fd budget: free slots under RLIMIT_NOFILE (soft limit minus open fds).
import { readFileSync, readdirSync } from 'node:fs';
import { UNKNOWN_BUDGET } from './wire.js';

/** The soft RLIMIT_NOFILE of this process, or null when /proc cannot tell. */
export function nofileLimit(): number | null {
  try {
    const text = readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
    if (!m) return null;
    return m[1] === 'unlimited' ? null : Number(m[1]);
  } catch {
    return null;
  }
}

/**
 * Free fd slots now, or UNKNOWN_BUDGET (0xffffffff). `countOpen` (optional: the
 * stream runs without the addon) counts the open fds more cheaply than a listing
 * of /proc/self/fd, or says null (then the listing counts).
 */
export function fdBudget(countOpen?: () => number | null): number {
  const limit = nofileLimit();
  if (limit === null) return UNKNOWN_BUDGET;
  let open = countOpen?.() ?? null;
  try {
    open ??= readdirSync('/proc/self/fd').length - 1; // the directory fd readdir itself used
  } catch {
    return UNKNOWN_BUDGET;
  }
  return Math.max(0, Math.min(UNKNOWN_BUDGET - 1, limit - open));
}
