export { FdSocket, checkUnixSocket, SCM_MAX_FD } from './fd-socket.js';
export type { SocketType, FdSocketOptions, ConnectOptions, ReceivedChunk, FdSocketStats } from './fd-socket.js';
export { FdServer } from './server.js';
export type { ListenOptions, RejectedPeer } from './server.js';
export { checkPeer } from './peer.js';
export type { PeerPolicy } from './peer.js';
export { FdPoller } from './poller.js';
export { sendMessage, MessageReader } from './message.js';
export type { Message, MessageLimits } from './message.js';
