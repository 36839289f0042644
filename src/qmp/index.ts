// QMP: a client that can pass fds to QEMU, and helpers that hand backends (TAP
// queues, connected chardev sockets) to a running QEMU. See docs/qmp.md.
export { QmpClient, checkFdName } from './client.js';
export type { QmpClientOptions, QmpConnectOptions, ExecuteOptions, QmpEvent, QmpGreeting, QmpVersion, QmpFdsetInfo } from './client.js';
export { QmpErrorCodes, isQmpCommandError } from './errors.js';
export type { QmpErrorCode, QmpErrorClass } from './errors.js';
export { attachTapToQemu, detachTapFromQemu, attachChardevSocketToQemu, detachChardevFromQemu, readNetworkInfo, parseNetworkInfo, queryChardevs } from './backends.js';
export type { AttachTapOptions, AttachedTap, AttachChardevSocketOptions, AttachedChardev, NetworkInfoEntry, ChardevInfo, CleanupReport } from './backends.js';
export { JsonObjectSplitter, JsonStreamError } from './json-stream.js';
