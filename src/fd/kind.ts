// The one vocabulary for "what kind of fd this is", as the kernel describes it.
// No addon here: the stream (which runs without it) names these kinds too.

/**
 * Every kind inspectFd() tells apart, in one list (FdKind is its element type).
 * Four of them are also attachment kinds of the wire with the same meaning
 * ('tap', 'vhost-net', 'eventfd', 'memfd'; see FdAttachmentKind in
 * src/stream/wire.ts and docs/architecture.md, "Kinds of fd").
 */
export const FD_KINDS = [
  'tap',
  'tun',
  'tun-unattached',
  'vhost-net',
  'eventfd',
  'memfd',
  'pidfd',
  'unix-stream',
  'unix-seqpacket',
  'unix-dgram',
  'unix-listener',
  'socket',
  'pipe',
  'file',
  'directory',
  'char-device',
  'block-device',
  'anon-inode',
  'unknown',
] as const;

/** What kind of fd this is, as inspectFd() tells it from the kernel; what GenericTarget's `expect` and expectFd() ask for. */
export type FdKind = (typeof FD_KINDS)[number];

/** The misc character devices (include/linux/miscdevice.h) a backend fd can be: /dev/net/tun and /dev/vhost-net. */
export const MISC_MAJOR = 10;
export const TUN_MINOR = 200;
export const VHOST_NET_MINOR = 238;
