// What this machine's kernel offers, probed once per call with throwaway fds.
import { readFileSync } from 'node:fs';
import { native } from '../native.js';

/** Whether SO_PEERPIDFD works here (Linux 6.5+): probed on a socketpair. False also when the addon cannot make one. */
export function peerPidfdAvailable(): boolean {
  try {
    const [a, b] = native.socketpair(native.SOCK_STREAM);
    try {
      native.close(native.getpeerpidfd(a));
      return true;
    } catch {
      return false;
    } finally {
      native.close(a);
      native.close(b);
    }
  } catch {
    return false;
  }
}

/** Whether memfd_create works here. */
export function memfdAvailable(): boolean {
  try {
    native.close(native.memfd_create('bt-supported'));
    return true;
  } catch {
    return false;
  }
}

/** SCM_MAX_FD as the addon was built with: the most fds one sendmsg carries. Loads the addon (throws, saying how to build it, when it cannot). */
export function scmMaxFd(): number {
  return native.SCM_MAX_FD;
}

/** Above this many slots in the fd table, openFdCount() leaves the count to a listing of /proc/self/fd. */
const MAX_SCANNED_SLOTS = 65536;

/**
 * How many fds this process has open: every slot of its fd table (FDSize in
 * /proc/self/status: all open fds are below it) asked with one fstat each, in
 * one call into the addon (fstat_modes), about 0.3 µs per slot. Listing
 * /proc/self/fd costs about 3 µs per open fd (60 ms at 19 500), so this is
 * cheaper unless the table is large and nearly empty. null where /proc cannot
 * tell or the table has more than 65 536 slots (then list /proc/self/fd).
 */
export function openFdCount(): number | null {
  let slots: number;
  try {
    const m = /^FDSize:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (!m) return null;
    slots = Number(m[1]);
  } catch {
    return null;
  }
  if (!(slots > 0) || slots > MAX_SCANNED_SLOTS) return null;
  const fds = new Int32Array(slots);
  for (let i = 0; i < slots; i++) fds[i] = i;
  const out = new Int32Array(2 * slots);
  native.fstat_modes(fds, out);
  let open = 0;
  for (let i = 0; i < slots; i++) if (out[2 * i]! >= 0) open++;
  return open;
}
