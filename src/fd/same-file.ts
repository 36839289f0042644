// Whether two fds are one open file: kcmp(KCMP_FILE), or a fallback where kcmp is not allowed.
import { readFileSync } from 'node:fs';
import { native } from '../native.js';
import { BackendTransferError } from '../errors.js';

/** How sameFile() tells open files apart: kcmp(KCMP_FILE), or the fallback. */
export type SameFileMethod = 'kcmp' | 'fallback';
// BACKEND_TRANSFER_NO_KCMP=1 uses the fallback as if kcmp were not allowed (to test it,
// or where a seccomp filter kills rather than refuses the syscall).
let kcmpWorks: boolean | undefined = process.env.BACKEND_TRANSFER_NO_KCMP === '1' ? false : undefined;

const KCMP_UNAVAILABLE = new Set(['EPERM', 'EACCES', 'ENOSYS', 'EINVAL']);

/**
 * kcmp(KCMP_FILE) of two fds of this process: <0, 0, >0 as their open file
 * descriptions order (0: the same one). null when kcmp cannot be used here
 * (ENOSYS without CONFIG_KCMP, EPERM under some YAMA/seccomp settings).
 */
function kcmpFiles(a: number, b: number): number | null {
  if (kcmpWorks === false) return null;
  let r: number;
  try {
    r = native.kcmp(process.pid, process.pid, native.KCMP_FILE, a, b);
  } catch (err) {
    const code = (err as { code?: string }).code ?? '';
    if (KCMP_UNAVAILABLE.has(code)) {
      kcmpWorks = false;
      return null;
    }
    throw BackendTransferError.fromSystem(err, `kcmp(KCMP_FILE) of fds ${a} and ${b}`);
  }
  kcmpWorks = true;
  return r === 0 ? 0 : r === 1 ? -1 : 1;
}

/** Which method sameFile()/findSameFile() use on this machine (probed once). */
export function sameFileMethod(): SameFileMethod {
  if (kcmpWorks === undefined) {
    const fd = native.eventfd(0);
    try {
      kcmpFiles(fd, fd);
    } finally {
      native.close(fd);
    }
  }
  return kcmpWorks ? 'kcmp' : 'fallback';
}

/**
 * The fallback identity of an open file where kcmp is not available: exact for
 * sockets (a socket has exactly one open file, so its inode names it) and for
 * eventfds (the eventfd-id of /proc/self/fdinfo); null for every other kind,
 * which is then not compared (two opens of one inode are different files, and
 * nothing but kcmp tells them from one file twice).
 */
function fallbackKey(fd: number): string | null {
  let st;
  try {
    st = native.fstat(fd);
  } catch {
    return null;
  }
  if (st.type === native.S_IFSOCK) return `sock:${st.devMajor}:${st.devMinor}:${st.ino}`;
  if (st.type === 0) {
    try {
      const m = /^eventfd-id:\s*(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      if (m) return `eventfd:${m[1]}`;
    } catch {
      /* no /proc */
    }
  }
  return null;
}

/**
 * Positions [i, j] (i < j) of two fds in `fds` that refer to the same open file
 * description, or null if all are distinct. With kcmp the fds are sorted by
 * kcmp's order (O(n log n) syscalls) and neighbours compared; without it, see
 * fallbackKey (sockets and eventfds only).
 */
export function findSameFile(fds: readonly number[]): [number, number] | null {
  if (fds.length < 2) return null;
  if (kcmpWorks !== false) {
    const idx = fds.map((_, i) => i);
    try {
      idx.sort((i, j) => {
        const r = kcmpFiles(fds[i]!, fds[j]!);
        if (r === null) throw KCMP_GONE;
        return r;
      });
      for (let k = 0; k + 1 < idx.length; k++) {
        if (kcmpFiles(fds[idx[k]!]!, fds[idx[k + 1]!]!) === 0) {
          const [a, b] = [idx[k]!, idx[k + 1]!];
          return a < b ? [a, b] : [b, a];
        }
      }
      return null;
    } catch (err) {
      if (err !== KCMP_GONE) throw err;
    }
  }
  const seen = new Map<string, number>();
  for (let i = 0; i < fds.length; i++) {
    const key = fallbackKey(fds[i]!);
    if (key === null) continue;
    const j = seen.get(key);
    if (j !== undefined) return [j, i];
    seen.set(key, i);
  }
  return null;
}
const KCMP_GONE = new Error('kcmp unavailable');
