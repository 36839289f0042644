// Cheap identities of open files, for telling whether an fd number still names the
// file it named earlier (a staged backend checked again at the freeze): each call
// is one syscall, nothing is allocated but what is returned.
import { native } from '../native.js';

/** A close-on-exec duplicate of `fd` (throws the errno error: EBADF, EMFILE). */
export function dupForCompare(fd: number): number {
  return native.dup(fd);
}

/**
 * Whether `fd` and `other` (in this process) are the same open file description,
 * by kcmp(KCMP_FILE). Throws EBADF when either is not open, EPERM/ENOSYS where
 * kcmp is not available (see sameFileMethod()).
 */
export function isSameOpenFile(fd: number, other: number): boolean {
  return native.kcmp(process.pid, process.pid, native.KCMP_FILE, fd, other) === 0;
}

/** fstat's st_mode of `fd` (throws EBADF when it is not open). */
export function fileMode(fd: number): number {
  return native.fstat_mode(fd);
}

/** fstat's device and inode of `fd`, as one string. */
export function fileInode(fd: number): string {
  const st = native.fstat(fd);
  return `${st.devMajor}:${st.devMinor}:${st.ino}`;
}
