// Reading a device from its JSON description (the `send` / `receive` CLI's format,
// listed per kind in the README). Each kind's entry (registry.ts) uses these.
import { BackendTransferError } from '../errors.js';

export type Json = Record<string, unknown>;

/** The fields every source device has, as a JSON description gives them. */
export interface SourceCommon {
  id: string;
  instance: number;
  version: number;
  transfer: boolean;
  required: boolean;
}

/** The fields every target device has, as a JSON description gives them. */
export interface TargetCommon {
  id: string;
  instance: number;
  minVersion: number;
  maxVersion: number;
  acceptFds: boolean;
}

export function bad(message: string): BackendTransferError {
  return BackendTransferError.invalidArgument(message);
}

export function num(d: Json, key: string): number {
  const v = d[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw bad(`device ${String(d.id)}: "${key}" must be a non-negative integer (an fd number or a count)`);
  return v;
}

export function nums(d: Json, key: string): number[] {
  const v = d[key] ?? [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'number' || !Number.isInteger(x) || x < 0)) throw bad(`device ${String(d.id)}: "${key}" must be an array of fd numbers`);
  return v as number[];
}

export function big(d: Json, key: string): bigint {
  const v = d[key];
  if (typeof v === 'string' || typeof v === 'number') return BigInt(v);
  throw bad(`device ${String(d.id)}: "${key}" must be a number or a string like "0x140000000"`);
}

/** The fields common to every source device, from a JSON description. */
export function sourceCommon(d: Json): SourceCommon {
  return { id: String(d.id), instance: (d.instance as number) ?? 0, version: (d.version as number) ?? 1, transfer: d.transfer === true, required: d.required === true };
}

/** The fields common to every target device, from a JSON description. */
export function targetCommon(d: Json): TargetCommon {
  return { id: String(d.id), instance: (d.instance as number) ?? 0, minVersion: (d.minVersion as number) ?? 1, maxVersion: (d.maxVersion as number) ?? 1, acceptFds: d.acceptFds !== false };
}

/** A device's opaque state from its JSON description (base64), if any. */
export function jsonState(d: Json): Buffer | undefined {
  return typeof d.state === 'string' ? Buffer.from(d.state, 'base64') : undefined;
}

/** A string field ('' when absent; a non-string value as its JSON text). */
export function text(d: Json, key: string): string {
  const v = d[key];
  return v === undefined || v === null ? '' : typeof v === 'string' ? v : JSON.stringify(v);
}
