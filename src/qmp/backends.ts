// Handing backends to QEMU over QMP, the way libvirt does it: every fd goes with
// its own getfd under a unique name, then the command that uses the names
// (netdev_add, chardev-add) takes them over. Each helper reads back what QEMU made
// of it, and on any failure closes in QEMU every fd it had passed (closefd), and
// removes a half-made netdev, before it throws: nothing stays behind in either
// process. The caller's fds are never closed: QEMU works on duplicates.
import { randomBytes } from 'node:crypto';
import { BackendTransferError, ErrorCodes, type CleanupReport } from '../errors.js';
import { inspectFd, type FdInfo } from '../fd/index.js';
import { peerName } from '../fd/socket-info.js';
import { tapIsMultiQueue } from '../fd/tap.js';
import type { QmpClient } from './client.js';
import { QmpErrorCodes, qmpError } from './errors.js';

// Defined with the error codes (its home is the error's details); re-exported here, where it is made.
export type { CleanupReport } from '../errors.js';

/** Array.isArray without its narrowing (which would turn a readonly number[] into any[]). */
const isList = (v: unknown): boolean => Array.isArray(v);

/** One line of HMP `info network`. */
export interface NetworkInfoEntry {
  /** The netdev id, the NIC's device id, or a hub port name. */
  name: string;
  /** Queue index. */
  index: number;
  /** 'tap', 'nic', 'user', 'hubport', ... */
  type: string;
  /** What follows the type ("fd=17", "model=virtio-net-pci,macaddr=..."). */
  info: string;
  /** For a backend printed under a NIC: the NIC's name. */
  peerOf?: string;
  /** QEMU's fd number, when the info says fd=N. */
  fd?: number;
}

/**
 * Parses HMP `info network` (QEMU prints "<name>: index=<i>,type=<type>,<info>"
 * per net client, a NIC's backend indented under it with " \ "). HMP output is
 * not a stable interface; QEMU 7.2 has no query-netdev, so this is the read-back.
 */
export function parseNetworkInfo(text: string): NetworkInfoEntry[] {
  const out: NetworkInfoEntry[] = [];
  let lastTop: string | undefined;
  for (const raw of text.split(/\r?\n/)) {
    const nested = /^\s*\\\s/.test(raw);
    const line = raw.replace(/^\s*\\\s*/, '').trim();
    const m = /^(\S+): index=(\d+),type=([\w-]+),?(.*)$/.exec(line);
    if (!m) continue;
    const e: NetworkInfoEntry = { name: m[1]!, index: Number(m[2]), type: m[3]!, info: m[4]! };
    const fd = /(?:^|,)fd=(\d+)(?:,|$)/.exec(e.info);
    if (fd) e.fd = Number(fd[1]);
    if (nested && lastTop !== undefined) e.peerOf = lastTop;
    else lastTop = e.name;
    out.push(e);
  }
  return out;
}

/** `info network` through human-monitor-command, parsed. */
export async function readNetworkInfo(qmp: QmpClient, options: { timeout?: number } = {}): Promise<NetworkInfoEntry[]> {
  return parseNetworkInfo(await qmp.humanMonitorCommand('info network', options));
}

export interface ChardevInfo {
  label: string;
  filename: string;
  frontendOpen: boolean;
}

/** query-chardev. */
export async function queryChardevs(qmp: QmpClient, options: { timeout?: number } = {}): Promise<ChardevInfo[]> {
  const r = await qmp.execute<{ label: string; filename: string; 'frontend-open': boolean }[]>('query-chardev', undefined, options);
  return r.map((c) => ({ label: c.label, filename: c.filename, frontendOpen: c['frontend-open'] }));
}

// ------------------------------------------------------------------ TAP

export interface AttachTapOptions {
  /** The netdev id (QEMU's rule: a letter, then letters, digits, '-', '.', '_'). */
  id: string;
  /** One TAP fd per queue (IFF_TAP; IFF_MULTI_QUEUE when more than one, all of one interface). */
  queueFds: readonly number[];
  /**
   * One /dev/vhost-net fd per queue: sets vhost=on with vhostfd(s), and
   * vhostforce=on unless netdevOptions says otherwise (QEMU 7.2 aborts on a vhost
   * failure without it instead of returning an error).
   */
  vhostFds?: readonly number[];
  /** More netdev_add arguments (sndbuf, vnet_hdr, poll-us, ...). Not the ones this helper sets. */
  netdevOptions?: Record<string, unknown>;
  /** Time limit of each QMP command. Default: the client's. */
  timeout?: number;
}

export interface AttachedTap {
  id: string;
  queues: number;
  vhost: boolean;
  /** The TAP interface name (TUNGETIFF). */
  ifname: string;
  /** QEMU's own fd number for each queue, in queue order (from info network). */
  qemuFds: number[];
}

const RESERVED_NETDEV_KEYS = new Set(['type', 'id', 'fd', 'fds', 'vhostfd', 'vhostfds', 'vhost', 'ifname', 'script', 'downscript', 'helper', 'queues', 'br']);
const RESERVED_SOCKET_KEYS = new Set(['addr', 'server', 'wait', 'reconnect', 'websocket']);

function checkId(id: string, what: string): void {
  if (typeof id !== 'string' || !/^[A-Za-z][A-Za-z0-9._-]*$/.test(id) || id.length > 127) {
    throw BackendTransferError.invalidArgument(`${what} id must start with a letter and hold only letters, digits, '-', '.', '_' (QEMU's rule), got ${JSON.stringify(id)}`);
  }
}

function inspect(fd: number, what: string): FdInfo {
  if (!Number.isInteger(fd) || fd < 0) throw BackendTransferError.invalidArgument(`${what} must be a non-negative integer fd, got ${String(fd)}`);
  try {
    return inspectFd(fd);
  } catch (err) {
    throw new BackendTransferError(ErrorCodes.ERR_INVALID_ARGUMENT, `${what} (fd ${fd}) is not an open fd: ${(err as Error).message}`, { cause: err });
  }
}

function uniquePrefix(id: string): string {
  // getfd replaces (and closes) an fd QEMU already holds under the same name, so
  // names must not collide with anyone else's on this monitor, past or present.
  return `bt-${id}-${randomBytes(4).toString('hex')}`;
}

function newReport(): CleanupReport {
  return { closed: [], alreadyGone: [], removed: [], failed: [] };
}

/** closefd for every name; "not found" means the failed command had consumed it. */
async function closeNames(qmp: QmpClient, names: readonly string[], report: CleanupReport, timeout: number | undefined): Promise<void> {
  for (const name of names) {
    try {
      await qmp.closefd(name, { timeout });
      report.closed.push(name);
    } catch (err) {
      const e = err as BackendTransferError;
      if (e.code === QmpErrorCodes.ERR_QMP_ERROR && e.details?.class === 'GenericError' && /not found/i.test(String(e.details?.desc))) report.alreadyGone.push(name);
      else report.failed.push({ step: `closefd ${name}`, error: e.message });
    }
  }
}

/** The original error, with the cleanup report added to its details. */
function withCleanup(err: unknown, report: CleanupReport): Error {
  if (!(err instanceof BackendTransferError)) return err as Error;
  const message = err.message.startsWith(`${err.code}: `) ? err.message.slice(err.code.length + 2) : err.message;
  const out = new BackendTransferError(err.code, message, { cause: err.cause, details: { ...err.details, cleanup: report } });
  if (err.stack) out.stack = `${out.name}: ${out.message}\n${err.stack.split('\n').slice(1).join('\n')}`;
  return out;
}

/**
 * Gives TAP queues (and their vhost-net fds) to QEMU as a tap netdev: getfd for
 * each fd, then netdev_add type=tap with fd/fds (and vhostfd/vhostfds), then
 * `info network` to check that QEMU has one tap client per queue under `id`.
 * The caller keeps its fds. On failure every fd passed is closed in QEMU (closefd),
 * a netdev QEMU half-made under this id is deleted, and the error (ERR_QMP_ERROR
 * with the QMP class, ERR_QMP_CLOSED, ERR_QMP_TIMEOUT, ERR_QMP_VERIFY_FAILED)
 * carries details.cleanup. Bad arguments throw ERR_INVALID_ARGUMENT before
 * anything is sent.
 */
export async function attachTapToQemu(qmp: QmpClient, options: AttachTapOptions): Promise<AttachedTap> {
  const { id, queueFds, vhostFds, netdevOptions = {}, timeout } = options;
  checkId(id, 'netdev');
  if (!isList(queueFds) || queueFds.length === 0) throw BackendTransferError.invalidArgument('queueFds must list at least one TAP fd');
  if (queueFds.length > 1024) throw BackendTransferError.invalidArgument('QEMU takes at most 1024 queues');
  if (new Set(queueFds).size !== queueFds.length) throw BackendTransferError.invalidArgument('queueFds lists an fd twice');
  let ifname = '';
  queueFds.forEach((fd, i) => {
    const info = inspect(fd, `queueFds[${i}]`);
    if (info.kind !== 'tap' || !info.tun) throw BackendTransferError.invalidArgument(`queueFds[${i}] (fd ${fd}) is ${info.kind}, not a TAP queue`);
    if (queueFds.length > 1 && !tapIsMultiQueue(info.tun.flags)) {
      throw BackendTransferError.invalidArgument(`queueFds[${i}] (fd ${fd}): ${queueFds.length} queues need a TAP opened with IFF_MULTI_QUEUE`);
    }
    if (i === 0) ifname = info.tun.name;
    else if (info.tun.name !== ifname) throw BackendTransferError.invalidArgument(`queueFds[${i}] (fd ${fd}) is a queue of ${info.tun.name}, not of ${ifname}`);
  });
  if (vhostFds !== undefined) {
    if (!isList(vhostFds) || vhostFds.length !== queueFds.length) {
      throw BackendTransferError.invalidArgument(`vhostFds must have one fd per queue (${queueFds.length}), got ${Array.isArray(vhostFds) ? vhostFds.length : typeof vhostFds}`);
    }
    vhostFds.forEach((fd, i) => {
      const info = inspect(fd, `vhostFds[${i}]`);
      if (info.kind !== 'vhost-net') throw BackendTransferError.invalidArgument(`vhostFds[${i}] (fd ${fd}) is ${info.kind}, not /dev/vhost-net`);
    });
  }
  if (typeof netdevOptions !== 'object' || netdevOptions === null) throw BackendTransferError.invalidArgument('netdevOptions must be an object');
  for (const key of Object.keys(netdevOptions)) {
    if (RESERVED_NETDEV_KEYS.has(key)) throw BackendTransferError.invalidArgument(`netdevOptions may not set '${key}': attachTapToQemu sets it`);
  }

  const prefix = uniquePrefix(id);
  const queueNames = queueFds.map((_, i) => `${prefix}-q${i}`);
  const vhostNames = vhostFds ? vhostFds.map((_, i) => `${prefix}-v${i}`) : [];
  const passed: string[] = [];
  let existedBefore = true;
  let netdevAddSent = false;
  const multi = queueFds.length > 1;
  const args: Record<string, unknown> = { ...netdevOptions, type: 'tap', id };
  if (multi) args.fds = queueNames.join(':');
  else args.fd = queueNames[0];
  if (vhostFds) {
    args.vhost = true;
    if (multi) args.vhostfds = vhostNames.join(':');
    else args.vhostfd = vhostNames[0];
    if (!('vhostforce' in netdevOptions)) args.vhostforce = true;
  }

  try {
    existedBefore = (await readNetworkInfo(qmp, { timeout })).some((e) => e.name === id && e.type !== 'nic');
    for (let i = 0; i < queueFds.length; i++) {
      passed.push(queueNames[i]!); // before the await: a getfd that times out may still land, and closefd runs after it
      await qmp.getfd(queueNames[i]!, queueFds[i]!, { timeout });
    }
    for (let i = 0; i < vhostNames.length; i++) {
      passed.push(vhostNames[i]!);
      await qmp.getfd(vhostNames[i]!, vhostFds![i]!, { timeout });
    }
    netdevAddSent = true;
    await qmp.execute('netdev_add', args, { timeout });
  } catch (err) {
    const report = newReport();
    if (!qmp.closed) {
      await closeNames(qmp, passed, report, timeout);
      // QEMU 7.2 leaves the queues it made before a later one failed; remove them,
      // unless the id was somebody else's to begin with.
      if (!existedBefore && netdevAddSent) {
        try {
          if ((await readNetworkInfo(qmp, { timeout })).some((e) => e.name === id && e.type === 'tap')) {
            await qmp.execute('netdev_del', { id }, { timeout });
            report.removed.push(id);
          }
        } catch (e) {
          report.failed.push({ step: `netdev_del ${id}`, error: (e as Error).message });
        }
      }
    } else if (passed.length > 0) {
      report.failed.push({ step: 'closefd', error: 'the QMP connection is closed' });
    }
    throw withCleanup(err, report);
  }

  // QEMU took the names over with netdev_add. Read back what it made.
  let entries: NetworkInfoEntry[];
  try {
    entries = (await readNetworkInfo(qmp, { timeout })).filter((e) => e.name === id && e.type === 'tap');
  } catch (err) {
    const report = newReport();
    await removeNetdev(qmp, id, report, timeout);
    throw withCleanup(err, report);
  }
  entries.sort((a, b) => a.index - b.index);
  const qemuFds = entries.map((e) => e.fd);
  if (entries.length !== queueFds.length || qemuFds.some((fd) => fd === undefined)) {
    const report = newReport();
    await removeNetdev(qmp, id, report, timeout);
    throw withCleanup(
      qmpError(
        QmpErrorCodes.ERR_QMP_VERIFY_FAILED,
        `netdev_add ${id} succeeded, but info network shows ${entries.length} tap queue(s) for it (${entries.map((e) => e.info).join('; ') || 'none'}), not ${queueFds.length} fd-backed ones`,
        { details: { id, expected: queueFds.length, found: entries.map((e) => ({ index: e.index, info: e.info })) } },
      ),
      report,
    );
  }
  return { id, queues: queueFds.length, vhost: vhostFds !== undefined, ifname, qemuFds: qemuFds as number[] };
}

async function removeNetdev(qmp: QmpClient, id: string, report: CleanupReport, timeout: number | undefined): Promise<void> {
  try {
    await qmp.execute('netdev_del', { id }, { timeout });
    report.removed.push(id);
  } catch (e) {
    report.failed.push({ step: `netdev_del ${id}`, error: (e as Error).message });
  }
}

/** netdev_del: QEMU closes the netdev's fds (a NIC still using it keeps a dangling peer until it is unplugged). */
export async function detachTapFromQemu(qmp: QmpClient, id: string, options: { timeout?: number } = {}): Promise<void> {
  await qmp.execute('netdev_del', { id }, options);
}

// ------------------------------------------------------------------ chardev

export interface AttachChardevSocketOptions {
  /** The chardev id. */
  id: string;
  /** A connected stream socket (AF_UNIX or TCP): its peer keeps talking to whoever holds it, QEMU from now on. */
  fd: number;
  /** More members of the socket backend (telnet, tn3270, nodelay, tls-creds, ...). Not addr/server/wait/reconnect/websocket. */
  socketOptions?: Record<string, unknown>;
  /** Time limit of each QMP command. Default: the client's. */
  timeout?: number;
}

export interface AttachedChardev {
  id: string;
  /** QEMU's description of the connection (query-chardev), "unix:..." or "tcp:...". */
  filename: string;
  /** Whether a frontend (device, gdbstub, ...) uses the chardev yet. */
  frontendOpen: boolean;
}

/**
 * Gives a connected socket to QEMU as a chardev: getfd, then chardev-add with a
 * socket backend whose address is {type: 'fd'} (QEMU takes the fd over as a
 * connected client socket: no reconnect, the peer sees nothing change), then
 * query-chardev to check that it is there and connected. A device or another
 * frontend can then use it by id. The caller keeps its fd (close it once QEMU has
 * its own). On failure the fd is closed in QEMU and the error carries
 * details.cleanup.
 */
export async function attachChardevSocketToQemu(qmp: QmpClient, options: AttachChardevSocketOptions): Promise<AttachedChardev> {
  const { id, fd, socketOptions = {}, timeout } = options;
  checkId(id, 'chardev');
  const info = inspect(fd, 'fd');
  if (info.fileType !== 'socket' || !info.socket) throw BackendTransferError.invalidArgument(`fd ${fd} is ${info.kind}, not a socket`);
  if (info.socket.listening) throw BackendTransferError.invalidArgument(`fd ${fd} is a listening socket; attachChardevSocketToQemu takes a connected one`);
  if (info.socket.type !== 'stream') throw BackendTransferError.invalidArgument(`fd ${fd} is a ${info.socket.type} socket; a chardev needs a stream socket`);
  try {
    peerName(fd);
  } catch (err) {
    throw new BackendTransferError(ErrorCodes.ERR_INVALID_ARGUMENT, `fd ${fd} is not a connected socket: ${(err as Error).message}`, { cause: err });
  }
  if (typeof socketOptions !== 'object' || socketOptions === null) throw BackendTransferError.invalidArgument('socketOptions must be an object');
  for (const key of Object.keys(socketOptions)) {
    if (RESERVED_SOCKET_KEYS.has(key)) throw BackendTransferError.invalidArgument(`socketOptions may not set '${key}': attachChardevSocketToQemu sets it`);
  }

  const name = `${uniquePrefix(id)}-s`;
  let passed = false;
  try {
    passed = true;
    await qmp.getfd(name, fd, { timeout });
    await qmp.execute('chardev-add', { id, backend: { type: 'socket', data: { ...socketOptions, addr: { type: 'fd', data: { str: name } }, server: false } } }, { timeout });
  } catch (err) {
    const report = newReport();
    if (!qmp.closed) await closeNames(qmp, passed ? [name] : [], report, timeout);
    else report.failed.push({ step: 'closefd', error: 'the QMP connection is closed' });
    throw withCleanup(err, report);
  }

  let found: ChardevInfo | undefined;
  try {
    found = (await queryChardevs(qmp, { timeout })).find((c) => c.label === id);
  } catch (err) {
    const report = newReport();
    await removeChardev(qmp, id, report, timeout);
    throw withCleanup(err, report);
  }
  if (!found || found.filename.startsWith('disconnected')) {
    const report = newReport();
    await removeChardev(qmp, id, report, timeout);
    throw withCleanup(
      qmpError(QmpErrorCodes.ERR_QMP_VERIFY_FAILED, `chardev-add ${id} succeeded, but query-chardev shows ${found ? `it ${found.filename}` : 'no such chardev'}`, {
        details: { id, found },
      }),
      report,
    );
  }
  return { id, filename: found.filename, frontendOpen: found.frontendOpen };
}

async function removeChardev(qmp: QmpClient, id: string, report: CleanupReport, timeout: number | undefined): Promise<void> {
  try {
    await qmp.execute('chardev-remove', { id }, { timeout });
    report.removed.push(id);
  } catch (e) {
    report.failed.push({ step: `chardev-remove ${id}`, error: (e as Error).message });
  }
}

/** chardev-remove: QEMU closes the socket (refused while a frontend still uses the chardev). */
export async function detachChardevFromQemu(qmp: QmpClient, id: string, options: { timeout?: number } = {}): Promise<void> {
  await qmp.execute('chardev-remove', { id }, options);
}
