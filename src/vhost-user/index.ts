// vhost-user front-end: the message codec (protocol.ts) and the client over an FdSocket (frontend.ts).
export * from './protocol.js';
export * from './frontend.js';
