// vhost-user message codec: the constants and encode/decode helpers of QEMU's
// docs/interop/vhost-user.rst. No I/O here; the client is in frontend.ts.
//
// A minimal vhost-user front-end (the side QEMU plays): the message codec of
// QEMU's docs/interop/vhost-user.rst and a client over an FdSocket that sends
// requests and reads their replies from the byte stream.
//
// Wire format: a 12-byte header — u32 request, u32 flags (bits 0-1 version = 1,
// bit 2 REPLY, bit 3 NEED_REPLY), u32 payload size — then the payload. Numbers
// are in the host's byte order; fds ride on the message as SCM_RIGHTS.
//
// The session is strictly request/reply: one request at a time (calls are queued),
// and only the requests the spec lists (GET_*) or those sent with NEED_REPLY get a
// reply. Replies are read from the stream however the kernel splits or merges
// them. A reply that does not fit (not a reply, another request, wrong version or
// size) or that does not come in time leaves the session out of step, so the
// front-end then closes the connection (as the spec says a front-end does) and
// every later call fails with that first error.
//
// Handover: a process that received an already-connected socket continues the same
// session with VhostUserFrontend.fromFd / fromSocket (pass it the negotiated
// `session` so it knows, e.g., whether REPLY_ACK is on). The sending side calls
// detach() once idle: it gets a duplicate of the connection's fd and its own
// reader stops, so no reply meant for the new owner is consumed here.
import { endianness } from 'node:os';
import { BackendTransferError } from '../errors.js';

// ---------------------------------------------------------------- constants

export { VhostUserErrorCodes } from '../errors.js';

export type { VhostUserErrorCode } from '../errors.js';

/** Front-end request types (vhost-user.rst, "Front-end message types"). */
export const VhostUserRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

const REQUEST_NAMES = new Map<number, string>(Object.entries(VhostUserRequest).map(([k, v]) => [v, k]));

/** "GET_FEATURES (1)", or "request 99" for a code we do not know. */
export function requestName(code: number): string {
  const n = REQUEST_NAMES.get(code);
  return n === undefined ? `request ${code}` : `${n} (${code})`;
}

/** Requests the back-end always answers (the spec's list, plus those whose reply payload is defined). */
export const ALWAYS_REPLIED = new Set<number>([
  VhostUserRequest.GET_FEATURES,
  VhostUserRequest.GET_PROTOCOL_FEATURES,
  VhostUserRequest.GET_VRING_BASE,
  VhostUserRequest.GET_QUEUE_NUM,
  VhostUserRequest.IOTLB_MSG,
  VhostUserRequest.GET_CONFIG,
  VhostUserRequest.CREATE_CRYPTO_SESSION,
  VhostUserRequest.POSTCOPY_ADVISE,
  VhostUserRequest.POSTCOPY_END,
  VhostUserRequest.GET_INFLIGHT_FD,
  VhostUserRequest.GET_MAX_MEM_SLOTS,
  VhostUserRequest.GET_STATUS,
]);

export const VHOST_USER_HEADER_SIZE = 12;
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_FLAG_REPLY = 0x4;
export const VHOST_USER_FLAG_NEED_REPLY = 0x8;
/** Most fds one message may carry (libvhost-user's VHOST_MEMORY_BASELINE_NREGIONS). */
export const VHOST_USER_MAX_FDS = 8;
/** Bits 0-7 of a vring fd message's u64: the ring index; bit 8: no fd (poll instead). */
export const VHOST_USER_VRING_INDEX_MASK = 0xff;
export const VHOST_USER_VRING_NOFD_MASK = 0x100;
/** Offset, size and flags in front of the bytes of a GET_CONFIG / SET_CONFIG payload. */
export const VHOST_USER_CONFIG_HEADER_SIZE = 12;
/** The config space a vhost-user message can carry at most (QEMU's VHOST_USER_MAX_CONFIG_SIZE). */
export const VHOST_USER_MAX_CONFIG_SIZE = 256;

/** Feature bits of GET_FEATURES / SET_FEATURES (bit numbers). */
export const VhostFeatureBit = {
  /** The back-end speaks GET/SET_PROTOCOL_FEATURES (reuses the reserved virtio bit 30). */
  VHOST_USER_F_PROTOCOL_FEATURES: 30,
  VHOST_F_LOG_ALL: 26,
  VIRTIO_F_NOTIFY_ON_EMPTY: 24,
  VIRTIO_RING_F_INDIRECT_DESC: 28,
  VIRTIO_RING_F_EVENT_IDX: 29,
  VIRTIO_F_VERSION_1: 32,
  VIRTIO_F_ACCESS_PLATFORM: 33,
  VIRTIO_F_RING_PACKED: 34,
} as const;

/** virtio-blk device feature bits. */
export const VirtioBlkFeatureBit = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Protocol feature bits of GET/SET_PROTOCOL_FEATURES. */
export const VhostUserProtocolFeatureBit = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** The mask of one feature bit. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

export function hasFeature(features: bigint, bit: number): boolean {
  return (features & featureBit(bit)) !== 0n;
}

// ---------------------------------------------------------------- codec

const LE = endianness() === 'LE';
const U64_MAX = (1n << 64n) - 1n;

function writeU32(b: Buffer, v: number, at: number): void {
  if (LE) b.writeUInt32LE(v >>> 0, at);
  else b.writeUInt32BE(v >>> 0, at);
}
function readU32(b: Buffer, at: number): number {
  return LE ? b.readUInt32LE(at) : b.readUInt32BE(at);
}
function writeU64(b: Buffer, v: bigint, at: number): void {
  if (LE) b.writeBigUInt64LE(v, at);
  else b.writeBigUInt64BE(v, at);
}
function readU64(b: Buffer, at: number): bigint {
  return LE ? b.readBigUInt64LE(at) : b.readBigUInt64BE(at);
}

export interface VhostUserHeader {
  request: number;
  flags: number;
  size: number;
}

export function checkU32(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw BackendTransferError.invalidArgument(`${name} must be a u32, got ${String(v)}`);
}

/** Header and payload of one message, ready to send. */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Buffer {
  checkU32('request', request);
  checkU32('flags', flags);
  const b = Buffer.alloc(VHOST_USER_HEADER_SIZE + payload.length);
  writeU32(b, request, 0);
  writeU32(b, flags, 4);
  writeU32(b, payload.length, 8);
  b.set(payload, VHOST_USER_HEADER_SIZE);
  return b;
}

/** Reads a 12-byte header. */
export function decodeHeader(b: Uint8Array): VhostUserHeader {
  if (b.length < VHOST_USER_HEADER_SIZE) throw BackendTransferError.invalidArgument(`a vhost-user header is ${VHOST_USER_HEADER_SIZE} bytes, got ${b.length}`);
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  return { request: readU32(buf, 0), flags: readU32(buf, 4), size: readU32(buf, 8) };
}

export function encodeU64(v: bigint): Buffer {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) throw BackendTransferError.invalidArgument(`a u64 payload must be a bigint in 0..2^64-1, got ${String(v)}`);
  const b = Buffer.alloc(8);
  writeU64(b, v, 0);
  return b;
}

export function decodeU64(payload: Uint8Array): bigint {
  if (payload.length !== 8) throw BackendTransferError.invalidArgument(`a u64 payload is 8 bytes, got ${payload.length}`);
  return readU64(Buffer.from(payload.buffer, payload.byteOffset, 8), 0);
}

/** struct vhost_vring_state: u32 index, u32 num. */
export function encodeVringState(index: number, num: number): Buffer {
  checkU32('index', index);
  checkU32('num', num);
  const b = Buffer.alloc(8);
  writeU32(b, index, 0);
  writeU32(b, num, 4);
  return b;
}

export function decodeVringState(payload: Uint8Array): { index: number; num: number } {
  if (payload.length !== 8) throw BackendTransferError.invalidArgument(`a vring state payload is 8 bytes, got ${payload.length}`);
  const b = Buffer.from(payload.buffer, payload.byteOffset, 8);
  return { index: readU32(b, 0), num: readU32(b, 4) };
}

export interface VhostUserConfigPayload {
  offset: number;
  size: number;
  flags: number;
  /** `size` bytes of config space (zeroes in a GET_CONFIG request). */
  data: Buffer;
}

/** GET_CONFIG / SET_CONFIG payload: u32 offset, u32 size, u32 flags, then `size` bytes. */
export function encodeConfig(offset: number, size: number, flags = 0, data?: Uint8Array): Buffer {
  checkU32('offset', offset);
  checkU32('flags', flags);
  if (!Number.isInteger(size) || size < 1 || size > VHOST_USER_MAX_CONFIG_SIZE) throw BackendTransferError.invalidArgument(`config size must be 1..${VHOST_USER_MAX_CONFIG_SIZE}, got ${String(size)}`);
  if (data !== undefined && data.length !== size) throw BackendTransferError.invalidArgument(`config data is ${data.length} bytes, size says ${size}`);
  const b = Buffer.alloc(VHOST_USER_CONFIG_HEADER_SIZE + size);
  writeU32(b, offset, 0);
  writeU32(b, size, 4);
  writeU32(b, flags, 8);
  if (data) b.set(data, VHOST_USER_CONFIG_HEADER_SIZE);
  return b;
}

export function decodeConfig(payload: Uint8Array): VhostUserConfigPayload {
  const b = Buffer.from(payload.buffer, payload.byteOffset, payload.length);
  if (b.length < VHOST_USER_CONFIG_HEADER_SIZE) throw BackendTransferError.invalidArgument(`a config payload is at least ${VHOST_USER_CONFIG_HEADER_SIZE} bytes, got ${b.length}`);
  const size = readU32(b, 4);
  if (b.length !== VHOST_USER_CONFIG_HEADER_SIZE + size)
    throw BackendTransferError.invalidArgument(`a config payload of size ${size} is ${VHOST_USER_CONFIG_HEADER_SIZE + size} bytes, got ${b.length}`);
  return { offset: readU32(b, 0), size, flags: readU32(b, 8), data: Buffer.from(b.subarray(VHOST_USER_CONFIG_HEADER_SIZE)) };
}

/** sizeof(struct virtio_blk_config) up to write_zeroes_may_sleep and its padding (as in QEMU 7.2). */
export const VIRTIO_BLK_CONFIG_SIZE = 60;

/** struct virtio_blk_config (little-endian, virtio 1.x). Fields past the bytes given are absent. */
export interface VirtioBlkConfig {
  /** In 512-byte sectors, whatever the logical block size. */
  capacity: bigint;
  sizeMax?: number;
  segMax?: number;
  geometry?: { cylinders: number; heads: number; sectors: number };
  blkSize?: number;
  physicalBlockExp?: number;
  alignmentOffset?: number;
  minIoSize?: number;
  optIoSize?: number;
  wce?: number;
  numQueues?: number;
  maxDiscardSectors?: number;
  maxDiscardSeg?: number;
  discardSectorAlignment?: number;
  maxWriteZeroesSectors?: number;
  maxWriteZeroesSeg?: number;
  writeZeroesMaySleep?: number;
}

export function decodeVirtioBlkConfig(data: Uint8Array): VirtioBlkConfig {
  const b = Buffer.from(data.buffer, data.byteOffset, data.length);
  if (b.length < 8) throw BackendTransferError.invalidArgument(`virtio_blk_config needs at least the 8-byte capacity, got ${b.length} bytes`);
  const c: VirtioBlkConfig = { capacity: b.readBigUInt64LE(0) };
  const has = (end: number): boolean => b.length >= end;
  if (has(12)) c.sizeMax = b.readUInt32LE(8);
  if (has(16)) c.segMax = b.readUInt32LE(12);
  if (has(20)) c.geometry = { cylinders: b.readUInt16LE(16), heads: b.readUInt8(18), sectors: b.readUInt8(19) };
  if (has(24)) c.blkSize = b.readUInt32LE(20);
  if (has(25)) c.physicalBlockExp = b.readUInt8(24);
  if (has(26)) c.alignmentOffset = b.readUInt8(25);
  if (has(28)) c.minIoSize = b.readUInt16LE(26);
  if (has(32)) c.optIoSize = b.readUInt32LE(28);
  if (has(33)) c.wce = b.readUInt8(32);
  if (has(36)) c.numQueues = b.readUInt16LE(34);
  if (has(40)) c.maxDiscardSectors = b.readUInt32LE(36);
  if (has(44)) c.maxDiscardSeg = b.readUInt32LE(40);
  if (has(48)) c.discardSectorAlignment = b.readUInt32LE(44);
  if (has(52)) c.maxWriteZeroesSectors = b.readUInt32LE(48);
  if (has(56)) c.maxWriteZeroesSeg = b.readUInt32LE(52);
  if (has(57)) c.writeZeroesMaySleep = b.readUInt8(56);
  return c;
}
