// The package's root export (`import ... from 'backend-transfer'`): what a VMM
// manager needs to hand backends over and take them over. The addon and the wire
// internals are subpath exports: 'backend-transfer/native' (src/native.ts),
// 'backend-transfer/stream' (src/stream/index.ts), and the vhost-user front-end
// is 'backend-transfer/vhost-user' (src/vhost-user/index.ts). See package.json
// "exports" and docs/architecture.md.
export { BackendTransferError, ErrorCodes, VhostUserErrorCodes, isBackendTransferError, isErrorCode } from './errors.js';
export type { BackendTransferErrorOptions, ErrorCode, ErrorContextDetails, ErrorDetails, ErrorDetailsMap, NoOwnDetails, QmpErrorCode, VhostUserErrorCode } from './errors.js';
export * from './transport/index.js';
export { FD_KINDS, closeFd, closeFds, dupFd, findSameFile, inspectFd, sameFileMethod } from './fd/index.js';
export { mapSealedMemfd, releaseMapping, isReleased, mappingStats } from './fd/mapping.js';
export type { FdInfo, FdKind, SameFileMethod } from './fd/index.js';
// One name for what kind an fd is: FdKind (inspectFd, `expect`); an fd's attachment kind on the wire is
// its FdKind's name where the wire knows it (FdAttachmentKind), else a role (docs/architecture.md, "Kinds of fd").
export { attachmentKindOf, isFdAttachmentKind } from './stream/wire.js';
export type { AttachmentKind, FdAttachmentKind, RoleAttachmentKind } from './stream/wire.js';
export type { PeerCred } from './native.js';
export * from './backends/index.js';
export * from './handover/index.js';
export * from './qmp/index.js';
