// Shared pieces of the backend kinds: verification failures, fd checks, state encoding.
import { BackendTransferError, ErrorCodes, type ErrorDetails } from '../errors.js';
import { closeFds, inspectFd, type FdInfo, type FdKind } from '../fd/index.js';
import { tooLarge } from '../stream/codec.js';
import { DEFAULT_STATE_JSON_LIMITS, type Arrival, type StateJsonLimits } from './types.js';
import type { ReceivedAttachment } from '../stream/reader.js';

export function verifyError(deviceId: string, what: string, details: Omit<ErrorDetails<'ERR_BACKEND_VERIFY'>, 'device'> = {}): BackendTransferError {
  return new BackendTransferError(ErrorCodes.ERR_BACKEND_VERIFY, `device ${deviceId}: ${what}`, { details: { device: deviceId, ...details } });
}

export function invalid(deviceId: string, what: string): BackendTransferError {
  return new BackendTransferError(ErrorCodes.ERR_BACKEND_INVALID, `device ${deviceId}: ${what}`);
}

/** inspectFd, expecting one of `kinds`. */
export function expectFd(deviceId: string, a: ReceivedAttachment, kinds: FdKind[]): FdInfo {
  let info: FdInfo;
  try {
    info = inspectFd(a.fd);
  } catch (err) {
    throw verifyError(deviceId, `attachment ${a.name} cannot be inspected (${(err as Error).message})`, { attachment: a.name });
  }
  if (!kinds.includes(info.kind)) {
    throw verifyError(deviceId, `attachment ${a.name} should be ${kinds.join(' or ')} but is ${info.kind}${info.link ? ` (${info.link})` : ''}`, {
      attachment: a.name,
      expected: kinds,
      actual: info.kind,
    });
  }
  return info;
}

/** The attachments named by role, each required exactly once unless optional. */
export function byName(arrival: Arrival): Map<string, ReceivedAttachment> {
  const m = new Map<string, ReceivedAttachment>();
  for (const a of arrival.attachments) {
    if (m.has(a.name)) throw verifyError(arrival.device.id, `attachment name ${a.name} appears twice`);
    m.set(a.name, a);
  }
  return m;
}

export function takeFds(arrival: Arrival): number[] {
  return arrival.attachments.map((a) => a.fd);
}

export function closeArrival(arrival: Arrival): void {
  closeFds(takeFds(arrival));
}

/** State as JSON bytes (+ an optional opaque blob after a NUL). */
export function encodeState(meta: Record<string, unknown>, blob?: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify(meta), 'utf8');
  return blob && blob.length ? Buffer.concat([json, Buffer.from([0]), blob]) : json;
}

export interface DecodedState {
  meta: Record<string, unknown>;
  blob: Buffer;
}

/** Each state buffer is parsed once: verify() and adopt() (and an opener) get the same result. */
const decoded = new WeakMap<Buffer, DecodedState>();

/**
 * The JSON metadata and the blob of a device's state. The JSON is checked against
 * `limits` (its size, and its nesting by a linear scan) before it is parsed, and
 * parsed once per state buffer. Over a limit: ERR_STREAM_TOO_LARGE.
 */
export function decodeState(deviceId: string, state: Buffer, limits: StateJsonLimits = DEFAULT_STATE_JSON_LIMITS): DecodedState {
  const known = decoded.get(state);
  if (known) return known;
  const nul = state.indexOf(0);
  const json = nul < 0 ? state : state.subarray(0, nul);
  const blob = nul < 0 ? Buffer.alloc(0) : state.subarray(nul + 1);
  if (json.length > limits.maxJsonBytes) throw tooLarge(`JSON of device ${deviceId} state`, json.length, limits.maxJsonBytes);
  const depth = jsonDepthOver(json, limits.maxJsonDepth);
  if (depth !== null) throw tooLarge(`JSON nesting of device ${deviceId} state`, depth, limits.maxJsonDepth);
  let meta: unknown;
  try {
    meta = json.length ? JSON.parse(json.toString('utf8')) : {};
  } catch {
    throw verifyError(deviceId, 'its state is not the JSON this backend kind writes');
  }
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta)) throw verifyError(deviceId, 'its state is not a JSON object');
  const out = { meta: meta as Record<string, unknown>, blob };
  decoded.set(state, out);
  return out;
}

/**
 * The first nesting depth over `limit` that JSON text reaches, or null: one pass
 * over the bytes counting { and [ outside strings (no parse, no recursion). Text
 * that is not JSON at all is left to JSON.parse to refuse.
 */
export function jsonDepthOver(b: Uint8Array, limit: number): number | null {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (inString) {
      if (c === 0x5c)
        i++; // a backslash escapes the next byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > limit) return depth;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return null;
}

export function requireNumber(deviceId: string, meta: Record<string, unknown> | null, key: string): number {
  const v = meta?.[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw verifyError(deviceId, `metadata ${key} is missing or not a number`);
  return v;
}

export function requireString(deviceId: string, meta: Record<string, unknown> | null, key: string): string {
  const v = meta?.[key];
  if (typeof v !== 'string') throw verifyError(deviceId, `metadata ${key} is missing or not a string`);
  return v;
}

/** The largest count (queues, eventfds, vhost fds) a device's metadata may declare. */
export const MAX_META_COUNT = 1024;

/**
 * A count or an index from device metadata: a whole number from `min` to `max`
 * (a fraction such as 0.5 would make a loop check one fd that a list of that
 * length then drops). Decoding (the target) refuses with ERR_BACKEND_VERIFY,
 * encoding (the source) with ERR_BACKEND_INVALID.
 */
export function checkCount(deviceId: string, key: string, v: unknown, side: 'encode' | 'decode', max = MAX_META_COUNT, min = 0): number {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max) return v;
  const what = `metadata ${key} is ${typeof v === 'number' || typeof v === 'boolean' ? String(v) : v === undefined ? 'missing' : typeof v}, not a whole number from ${min} to ${max}`;
  throw side === 'decode' ? verifyError(deviceId, what, { key }) : invalid(deviceId, what);
}

/** checkCount() of meta[key], decoding. */
export function requireCount(deviceId: string, meta: Record<string, unknown> | null, key: string, max = MAX_META_COUNT, min = 0): number {
  return checkCount(deviceId, key, meta?.[key], 'decode', max, min);
}

/** Device state given as bytes, or as a function read at capture time (after freeze). */
export function stateOf(s: Uint8Array | (() => Uint8Array) | undefined): Uint8Array | undefined {
  return typeof s === 'function' ? s() : s;
}
