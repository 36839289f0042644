// Closing fds without throwing and without blocking the event loop.
import { native } from '../native.js';
import { MISC_MAJOR, TUN_MINOR, VHOST_NET_MINOR } from './kind.js';

// Closing never blocks the event loop. close(2) itself can block for as long as
// whoever shares the file likes: the last close of a TCP socket with SO_LINGER
// {on, N s} and unsent data waits up to N s (the peer that sent it chose N, or set
// it later on its own copy: the option lives on the shared socket); a tty waits
// for its output to drain; a FUSE or NFS file flushes to its server. So every fd
// is first told apart (fstat, one more syscall for sockets and regular files):
// those whose close cannot block are closed here at once (close_range for runs),
// all others go to the addon's closer thread (native.close_deferred), which closes
// them off the loop and off the libuv threadpool. No socket option is changed.

/** How an fd may be closed. */
type CloseHow = 'now' | 'deferred' | 'not-open';

const MEM_MAJOR = 1; // /dev/null, /dev/zero, /dev/urandom ...

/**
 * Whether closing `fd` can block: 'now' only for kinds whose last close never
 * waits (AF_UNIX sockets, pipes, anon inodes such as eventfd and pidfd, memfd and
 * other shmem files, tun/tap and vhost-net, /dev/null and friends). Everything
 * else, a TCP socket first of all, is 'deferred'.
 */
function closeHow(fd: number): CloseHow {
  let mode: number;
  try {
    mode = native.fstat_mode(fd);
  } catch {
    return 'not-open';
  }
  return closeHowByMode(fd, mode, null);
}

/**
 * closeHow from an st_mode already known (fstat_modes gives a batch of them in
 * one call, with SO_DOMAIN for sockets as `domain`; null: ask getsockopt).
 */
function closeHowByMode(fd: number, mode: number, domain: number | null): CloseHow {
  switch (mode & native.S_IFMT) {
    case 0: // anon inode: eventfd, pidfd, epoll, timerfd, signalfd
    case native.S_IFIFO:
      return 'now';
    case native.S_IFSOCK:
      if (domain !== null) return domain === native.AF_UNIX ? 'now' : 'deferred';
      try {
        return native.getsockopt(fd, native.SOL_SOCKET, native.SO_DOMAIN) === native.AF_UNIX ? 'now' : 'deferred';
      } catch {
        return 'deferred';
      }
    case native.S_IFCHR: {
      let st;
      try {
        st = native.fstat(fd);
      } catch {
        return 'deferred';
      }
      if (st.rdevMajor === MEM_MAJOR) return 'now';
      // misc character devices whose release never waits on anyone: tun/tap, vhost-net
      if (st.rdevMajor === MISC_MAJOR && (st.rdevMinor === TUN_MINOR || st.rdevMinor === VHOST_NET_MINOR)) return 'now';
      return 'deferred';
    }
    case native.S_IFREG:
      // F_GET_SEALS answers for shmem files only (memfd, tmpfs): their close never waits.
      try {
        native.fcntl_get_seals(fd);
        return 'now';
      } catch {
        return 'deferred';
      }
    default:
      return 'deferred';
  }
}

/**
 * Closes an fd without blocking the caller. Returns false (never throws) when it
 * was not open. An fd whose close could block goes to the closer thread: it is
 * closed shortly after, off the loop.
 */
export function closeFd(fd: number): boolean {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) return false;
  const how = closeHow(fd);
  if (how === 'not-open') return false;
  if (how === 'deferred') {
    native.close_deferred([fd]);
    return true;
  }
  try {
    native.close(fd);
    return true;
  } catch {
    return false;
  }
}

/** A run at least this long is closed with one close_range(2) instead of one close(2) per fd. */
const RANGE_MIN = 4;
let haveCloseRange = true;

/**
 * Closes every fd in the list, never blocking the caller; errors (an fd not open,
 * not an fd at all) are ignored. Fds whose close could block (see closeFd) go to
 * the closer thread.
 *
 * Fds received together usually have consecutive numbers (the kernel hands out the
 * lowest free ones), so runs of RANGE_MIN or more consecutive listed fds go in one
 * close_range(first, last) each. Only listed fds are ever in such a range, so the
 * effect is exactly that of closing them one by one; it costs one syscall (and one
 * call into the addon) per run instead of per fd. Without close_range (Linux < 5.9)
 * it falls back to close(2).
 */
export function closeFds(fds: Iterable<number>): void {
  const all = Array.isArray(fds) ? (fds as number[]) : [...fds];
  if (all.length === 0) return;
  // Sorted, so that repeats are neighbours and runs are found in one pass.
  const sorted = new Int32Array(all.length);
  let n = 0;
  for (const fd of all) if (Number.isInteger(fd) && fd >= 0 && fd <= 0x7fffffff) sorted[n++] = fd;
  const list = n === all.length ? sorted.sort() : sorted.subarray(0, n).sort();
  let deferred: number[] | null = null;
  let now = 0; // list[0, now) are the fds to close here, deduplicated, in order
  // Every fd's st_mode (and a socket's domain) in one call into the addon, not one per fd.
  const facts = list.length >= BATCH_MIN ? modesOf(list) : null;
  for (let i = 0; i < list.length; i++) {
    const fd = list[i]!;
    if (i > 0 && fd === list[i - 1]) continue;
    let how: CloseHow;
    if (facts === null) how = closeHow(fd);
    else {
      const mode = facts[2 * i]!;
      const aux = facts[2 * i + 1]!;
      how = mode < 0 ? 'not-open' : closeHowByMode(fd, mode, aux < 0 ? null : aux);
    }
    if (how === 'now') list[now++] = fd;
    else if (how === 'deferred') (deferred ??= []).push(fd);
  }
  if (deferred !== null) native.close_deferred(deferred);
  if (now < RANGE_MIN || !haveCloseRange) {
    for (let i = 0; i < now; i++) closeNow(list[i]!);
    return;
  }
  let i = 0;
  while (i < now) {
    const first = list[i]!;
    let j = i + 1;
    let last = first;
    // extend over consecutive numbers
    while (j < now && list[j] === last + 1) last = list[j++]!;
    if (last - first + 1 >= RANGE_MIN && closeRange(first, last)) {
      i = j;
      continue;
    }
    for (let k = i; k < j; k++) closeNow(list[k]!);
    i = j;
  }
}

/** From this many fds on, closeFds asks their modes in one fstat_modes call. */
const BATCH_MIN = 4;
let modesBuf = new Int32Array(2 * 256);

/** st_mode (or -errno) and, for sockets, SO_DOMAIN (or -errno) of each fd, in one call. */
function modesOf(list: Int32Array): Int32Array {
  if (modesBuf.length < 2 * list.length) modesBuf = new Int32Array(2 * list.length);
  native.fstat_modes(list, modesBuf);
  return modesBuf;
}

function closeNow(fd: number): void {
  try {
    native.close(fd);
  } catch {
    /* not open */
  }
}

function closeRange(first: number, last: number): boolean {
  if (first < 0 || !haveCloseRange) return false;
  try {
    native.close_range(first, last);
    return true;
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOSYS') haveCloseRange = false;
    return false;
  }
}
