// The fd utilities, one file per job: close.ts (closing without throwing or
// blocking), dup.ts, kind.ts (FdKind, the vocabulary), inspect.ts (inspectFd:
// what an fd is), same-file.ts (kcmp: two fds, one open file). Imported as
// '../fd/index.js'. The syscalls of single topics are imported from their own
// files: tap.ts (TAP ioctls), socket-info.ts, create.ts (socketpair, eventfd,
// memfd), probe.ts (what the kernel offers), mapping.ts (mmap of sealed memfds).
export { closeFd, closeFds } from './close.js';
export { dupFd } from './dup.js';
export { FD_KINDS, type FdKind } from './kind.js';
export { fdKindOf, inspectFd, type FdInfo, type FdKindInfo } from './inspect.js';
export { findSameFile, findSameFileIn, sameFileMethod, type SameFileMethod } from './same-file.js';
