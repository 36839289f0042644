// Handover options shared by `send` and `receive`: phase timeouts, the peer policy,
// and a generic pass-through for any other option of sendHandover/receiveHandover.
import { BackendTransferError } from '../errors.js';
import { DEFAULT_TIMEOUTS, type PhaseTimeouts } from '../handover/types.js';
import type { PeerPolicy } from '../transport/peer.js';

/** parseArgs option definitions for the shared options. */
export const handoverOptionSpecs = {
  timeout: { type: 'string', multiple: true },
  timeouts: { type: 'string' },
  'peer-uid': { type: 'string', multiple: true },
  'peer-pid': { type: 'string', multiple: true },
  'peer-any': { type: 'boolean' },
  option: { type: 'string', multiple: true },
} as const;

export const handoverOptionsUsage = [
  'Shared options (send and receive):',
  '  --timeout NAME=SECONDS   a phase time limit (repeatable; 0 = no limit). NAME is a field of the',
  `                           library's timeouts: ${Object.keys(DEFAULT_TIMEOUTS).join(', ')}`,
  '  --timeouts JSON          several at once, e.g. \'{"connect": 60, "commit": 120}\' (seconds)',
  "  --peer-uid UID           allow only peers with this uid (repeatable; default: this process's uid)",
  '  --peer-pid PID           allow only peers with this pid (repeatable; with --peer-uid both must match)',
  "  --peer-any               allow every peer (the socket's permissions decide who can connect)",
  '  --option NAME=JSON       any other option of sendHandover/receiveHandover, e.g. --option warmUp=false',
].join('\n');

function bad(message: string): BackendTransferError {
  return BackendTransferError.invalidArgument(message);
}

/** Options the CLI sets itself (or that are functions): not for --option. */
const RESERVED = new Set(['socket', 'devices', 'accept', 'state', 'backendTransfer', 'peer', 'timeouts', 'onEvent', 'onState', 'signal', 'freeze', 'thaw']);

function seconds(name: string, v: unknown): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : Number.NaN;
  // setTimeout's limit is 2^31-1 ms (about 24.8 days).
  if (!Number.isFinite(n) || n < 0 || n * 1000 > 0x7fffffff) throw bad(`timeout ${name}: "${String(v)}" is not a number of seconds from 0 (no limit) to 2147483`);
  return Math.round(n * 1000);
}

function timeoutName(name: string): string {
  if (!Object.hasOwn(DEFAULT_TIMEOUTS, name)) throw bad(`unknown timeout "${name}" (known: ${Object.keys(DEFAULT_TIMEOUTS).join(', ')})`);
  return name;
}

function ids(what: string, list: string[] | undefined): number[] | undefined {
  if (!list?.length) return undefined;
  return list.map((s) => {
    const n = /^\d+$/.test(s) ? Number(s) : Number.NaN;
    if (!Number.isSafeInteger(n) || n > 0xffffffff) throw bad(`--${what} ${s}: not a number`);
    return n;
  });
}

export interface HandoverCliOptions {
  timeouts?: PhaseTimeouts;
  peer?: PeerPolicy;
  /** From --option NAME=JSON. */
  extra: Record<string, unknown>;
}

/** The shared options from parseArgs values; bad values throw ERR_INVALID_ARGUMENT. */
export function handoverOptions(values: { timeout?: string[]; timeouts?: string; 'peer-uid'?: string[]; 'peer-pid'?: string[]; 'peer-any'?: boolean; option?: string[] }): HandoverCliOptions {
  const timeouts: Record<string, number> = {};
  if (values.timeouts !== undefined) {
    let obj: unknown;
    try {
      obj = JSON.parse(values.timeouts);
    } catch (err) {
      throw bad(`--timeouts: not JSON (${(err as Error).message})`);
    }
    if (!obj || typeof obj !== 'object' || Array.isArray(obj)) throw bad('--timeouts: give an object of NAME: SECONDS');
    for (const [k, v] of Object.entries(obj)) timeouts[timeoutName(k)] = seconds(k, v);
  }
  for (const t of values.timeout ?? []) {
    const eq = t.indexOf('=');
    if (eq <= 0) throw bad(`--timeout ${t}: give NAME=SECONDS`);
    const name = timeoutName(t.slice(0, eq));
    timeouts[name] = seconds(name, t.slice(eq + 1));
  }
  const uids = ids('peer-uid', values['peer-uid']);
  const pids = ids('peer-pid', values['peer-pid']);
  if (values['peer-any'] && (uids || pids)) throw bad('--peer-any cannot be combined with --peer-uid or --peer-pid');
  const peer: PeerPolicy | undefined = values['peer-any'] ? 'any' : uids || pids ? { ...(uids ? { uids } : {}), ...(pids ? { pids } : {}) } : undefined;
  const extra: Record<string, unknown> = {};
  for (const o of values.option ?? []) {
    const eq = o.indexOf('=');
    const name = eq > 0 ? o.slice(0, eq) : '';
    if (!/^[A-Za-z][A-Za-z0-9]*$/.test(name)) throw bad(`--option ${o}: give NAME=JSON`);
    if (RESERVED.has(name)) throw bad(`--option ${name}: set by the command itself or by its own flag; not allowed here`);
    try {
      extra[name] = JSON.parse(o.slice(eq + 1));
    } catch (err) {
      throw bad(`--option ${name}: the value is not JSON (${(err as Error).message}); a string needs quotes, e.g. ${name}='"text"'`);
    }
  }
  return { timeouts: Object.keys(timeouts).length ? timeouts : undefined, peer, extra };
}
