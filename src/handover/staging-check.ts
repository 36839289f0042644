// Staged, then changed: what identifies each staged device's backend, recorded
// when it is staged and checked again right after the caller's freeze(), inside
// the downtime. A device whose fds are no longer what was staged is staged again
// (or dropped when an fd was closed).
import { closeFds, sameFileMethod } from '../fd/index.js';
import { dupFd } from '../fd/dup.js';
import { openFdCount } from '../fd/probe.js';
import { sameOpenFile } from '../fd/same-file.js';
import { fdBudget } from '../stream/budget.js';
import { UNKNOWN_BUDGET } from '../stream/wire.js';
import type { OutgoingAttachment } from '../stream/writer.js';
import { fileInode, fileMode } from '../fd/identity.js';

/**
 * One staged device's print: every attachment's fd, kind, name and metadata, and
 * the open file behind each fd.
 *
 * The open file is told by a close-on-exec duplicate taken at staging, compared
 * at the freeze with kcmp(KCMP_FILE): one syscall per fd, and exact for every
 * kind (an eventfd or a TAP queue replaced by another of its kind under the same
 * fd number is found; they share one inode). Where kcmp is not available, or the
 * duplicates would take more than half of the free fd slots, the print falls back
 * to the file type (fstat's st_mode) and, for sockets and regular files (memfds),
 * their device and inode: a same-kind replacement of an eventfd or a TAP queue
 * then goes unseen.
 */
interface Print {
  fds: Int32Array;
  /** Duplicates of fds[i] taken at staging (kcmp mode), else empty. */
  dups: Int32Array;
  /** st_mode of fds[i] (fallback mode), else empty. */
  modes: Float64Array;
  atts: readonly OutgoingAttachment[];
  /** Fallback mode: inodes of sockets and files, by attachment index. */
  ids: Map<number, string>;
}

/** How the check tells open files apart: 'kcmp' (exact) or 'inode' (sockets and files only). */
export type StagedCheckMethod = 'kcmp' | 'inode';

/** The prints of one handover's staged devices; close() releases the duplicates. */
export class StagedPrints<K> {
  readonly method: StagedCheckMethod;
  readonly #prints = new Map<K, Print>();
  #closed = false;

  /** `fdCount`: how many fds will be staged (for the duplicates' budget). */
  constructor(fdCount: number) {
    this.method = sameFileMethod() === 'kcmp' && fitsTwice(fdCount) ? 'kcmp' : 'inode';
  }

  get size(): number {
    return this.#prints.size;
  }

  keys(): IterableIterator<K> {
    return this.#prints.keys();
  }

  /** Records what `key` staged (right after capturing it). */
  record(key: K, atts: readonly OutgoingAttachment[]): void {
    if (this.#closed) throw new Error('StagedPrints used after close()');
    const old = this.#prints.get(key);
    if (old) closeFds(old.dups);
    this.#prints.set(key, this.method === 'kcmp' ? withDups(atts) : withInodes(atts));
    // Once now, outside the downtime: its first run inside the window would be cold code.
    this.changed(key, atts);
  }

  /**
   * Whether `key`'s backend changed since record() (`atts`: captured again now).
   * Throws (EBADF and kin) when one of its fds is no longer open.
   */
  changed(key: K, atts: readonly OutgoingAttachment[]): boolean {
    const p = this.#prints.get(key);
    if (!p) return true;
    if (atts.length !== p.fds.length) return true;
    for (let i = 0; i < atts.length; i++) {
      const a = atts[i]!;
      const fd = a.fd;
      if (fd !== p.fds[i]) {
        fileMode(fd); // closed: throws, as for an fd kept
        return true;
      }
      if (this.method === 'kcmp') {
        if (sameOpenFile(fd, p.dups[i]!) !== true) return true;
      } else {
        const mode = fileMode(fd);
        if (mode !== p.modes[i]) return true;
        const id = p.ids.get(i);
        if (id !== undefined && fileInode(fd) !== id) return true;
      }
      const b = p.atts[i]!;
      if (a.kind !== b.kind || a.name !== b.name) return true;
      if ((a.meta ?? null) !== (b.meta ?? null) && JSON.stringify(a.meta ?? null) !== JSON.stringify(b.meta ?? null)) return true;
    }
    return false;
  }

  /** Closes every duplicate (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const p of this.#prints.values()) closeFds(p.dups);
    this.#prints.clear();
  }
}

/** Whether `n` more fds fit in half of this process's free fd slots (read before the freeze). */
function fitsTwice(n: number): boolean {
  if (n === 0) return true;
  const free = fdBudget(openFdCount);
  return free === UNKNOWN_BUDGET || 2 * n <= free;
}

function withDups(atts: readonly OutgoingAttachment[]): Print {
  const fds = new Int32Array(atts.length);
  const dups = new Int32Array(atts.length);
  let i = 0;
  try {
    for (; i < atts.length; i++) {
      fds[i] = atts[i]!.fd;
      dups[i] = dupFd(atts[i]!.fd);
    }
  } catch (err) {
    closeFds(dups.subarray(0, i));
    throw err;
  }
  return { fds, dups, modes: new Float64Array(0), atts, ids: new Map() };
}

function withInodes(atts: readonly OutgoingAttachment[]): Print {
  const fds = new Int32Array(atts.length);
  const modes = new Float64Array(atts.length);
  const ids = new Map<number, string>();
  for (let i = 0; i < atts.length; i++) {
    const fd = atts[i]!.fd;
    const mode = fileMode(fd);
    fds[i] = fd;
    modes[i] = mode;
    const type = mode & 0o170000;
    if (type === 0o140000 || type === 0o100000) ids.set(i, fileInode(fd));
  }
  return { fds, dups: new Int32Array(0), modes, atts, ids };
}
