// Public exports only.
export { BackendTransferError, ErrorCodes, isBackendTransferError } from './errors.js';
export type { ErrorCode } from './errors.js';
export * from './transport/index.js';
export { closeFd, closeFds, dupFd, findSameFile, inspectFd, sameFileMethod } from './fd/index.js';
export { mapSealedMemfd, releaseMapping, isReleased, mappingStats } from './fd/mapping.js';
export type { FdInfo, FdKind, SameFileMethod } from './fd/index.js';
export { native } from './native.js';
export type { NativeBinding, PeerCred, NativeStat, IfReq } from './native.js';
export * from './stream/index.js';
export * from './backends/index.js';
export * from './handover/index.js';
export * from './qmp/index.js';
