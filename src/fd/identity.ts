// Cheap identities of open files where kcmp is not available, for telling whether
// an fd number still names the file it named earlier (a staged backend checked
// again at the freeze): each call is one syscall. With kcmp, same-file.ts's
// sameOpenFile() compares against a duplicate (dup.ts) instead.
import { native } from '../native.js';

/** fstat's st_mode of `fd` (throws EBADF when it is not open). */
export function fileMode(fd: number): number {
  return native.fstat_mode(fd);
}

/** fstat's device and inode of `fd`, as one string. */
export function fileInode(fd: number): string {
  const st = native.fstat(fd);
  return `${st.devMajor}:${st.devMinor}:${st.ino}`;
}
