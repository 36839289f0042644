export * from './types.js';
export { BACKEND_REGISTRY, BACKEND_KINDS, backendKind, sourceFromJson, targetFromJson, describeBackend } from './registry.js';
export type { Json as DeviceJson, SourceCommon, TargetCommon } from './json.js';
export { supported, offersFor, acceptFor } from './policy.js';
export type { Supported } from './policy.js';
export { TapSource, TapTarget, TapBackend, openTap, describeTap, tapKind } from './tap.js';
export type { TapMeta, TapSourceOptions, TapTargetOptions } from './tap.js';
export { VhostUserSource, VhostUserTarget, VhostUserBackend, vhostUserKind } from './vhost-user.js';
export type { VhostUserMeta, VhostUserSourceOptions, VhostUserTargetOptions, InflightInfo } from './vhost-user.js';
export { ChardevSocketSource, ChardevSocketTarget, ChardevBackend, chardevSocketKind } from './chardev-socket.js';
export type { ChardevMeta, ChardevRole, ChardevSourceOptions, ChardevTargetOptions } from './chardev-socket.js';
export { GenericSource, GenericTarget, GenericBackend, genericKind } from './generic.js';
export type { GenericFd, GenericSourceOptions, GenericTargetOptions } from './generic.js';
export {
  VhostUserFrontend,
  VhostUserErrorCodes,
  VhostUserRequest,
  VhostFeatureBit,
  VirtioBlkFeatureBit,
  VhostUserProtocolFeatureBit,
  featureBit,
  hasFeature,
  requestName,
  decodeVirtioBlkConfig,
} from '../vhost-user/index.js';
export type { VhostUserSession, VhostUserFrontendOptions, VhostUserConnectOptions, VhostUserReply, VirtioBlkConfig } from '../vhost-user/index.js';
export { SourceBase, TargetBase } from './base.js';
export type { SourceOptionsBase, TargetOptionsBase } from './base.js';
