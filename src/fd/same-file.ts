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
 * Whether two fds of this process are one open file description, by
 * kcmp(KCMP_FILE): exact for every kind. null where kcmp cannot be used here
 * (see sameFileMethod()); a BackendTransferError when either fd is not open.
 */
export function sameOpenFile(a: number, b: number): boolean | null {
  const r = kcmpFiles(a, b);
  return r === null ? null : r === 0;
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
 * kcmp's order (O(n log n) syscalls, each about 0.9 µs: the syscall's own cost);
 * two that are one file meet in a comparison (a sort compares every pair that
 * ends up adjacent). Without it, see fallbackKey (sockets and eventfds only).
 */
export function findSameFile(fds: readonly number[]): [number, number] | null {
  return findSameFileIn(fds);
}

/**
 * findSameFile, for a check repeated as fds arrive (a handover's devices: each
 * checked alone as it comes, then all together). `runs` (optional) split the
 * positions of `fds` into lists, each (with kcmp) sorted, then merged with the
 * others: a list already in kcmp's order costs one comparison per fd, and
 * merging k lists at most log2(k) per fd, where sorting them all again costs
 * about log2(n). `order` (optional) receives, when kcmp was used and no two were
 * one file, every position in kcmp's order: the run to give for these fds later.
 */
export function findSameFileIn(fds: readonly number[], o: { runs?: readonly (readonly number[])[]; order?: number[] } = {}): [number, number] | null {
  if (fds.length < 2) {
    if (fds.length === 1) o.order?.push(0);
    return null;
  }
  if (kcmpWorks !== false) {
    let same: [number, number] | null = null;
    const cmp = (i: number, j: number): number => {
      const r = kcmpFiles(fds[i]!, fds[j]!);
      if (r === null) throw KCMP_GONE;
      if (r === 0 && same === null) same = i < j ? [i, j] : [j, i];
      return r;
    };
    try {
      let lists = (o.runs ?? [fds.map((_, i) => i)]).map((run) => run.slice().sort(cmp));
      while (same === null && lists.length > 1) {
        const next: number[][] = [];
        for (let k = 0; k < lists.length && same === null; k += 2) next.push(k + 1 < lists.length ? mergeRuns(lists[k]!, lists[k + 1]!, cmp) : lists[k]!);
        lists = next;
      }
      if (same === null && o.order) for (const i of lists[0] ?? []) o.order.push(i);
      return same;
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

/** Two sorted lists as one; stops at the first pair `cmp` finds equal (it records it). */
function mergeRuns(a: readonly number[], b: readonly number[], cmp: (i: number, j: number) => number): number[] {
  const out = new Array<number>(a.length + b.length);
  let i = 0;
  let j = 0;
  let k = 0;
  while (i < a.length && j < b.length) {
    const r = cmp(a[i]!, b[j]!);
    if (r === 0) return out;
    out[k++] = r < 0 ? a[i++]! : b[j++]!;
  }
  while (i < a.length) out[k++] = a[i++]!;
  while (j < b.length) out[k++] = b[j++]!;
  return out;
}
const KCMP_GONE = new Error('kcmp unavailable');
