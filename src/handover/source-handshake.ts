// The source's side before anything moves: the devices checked before a byte is
// sent, the socket's send buffer, HELLO built from the devices, WELCOME's verdict
// on the channel, and a warning for each device whose fds will not move.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { offersFor } from '../backends/policy.js';
import type { SourceDevice } from '../backends/types.js';
import { sendBufferSize } from '../fd/handover-io.js';
import { fdKindOf, type FdKindInfo } from '../fd/index.js';
import { openFdCount } from '../fd/probe.js';
import { fdBudget } from '../stream/budget.js';
import { kindMatches } from '../stream/reader.js';
import { Features, REASON_NAMES, STREAM_VERSION, type Hello, type Plan, type Welcome } from '../stream/wire.js';
import type { FdSocket } from '../transport/fd-socket.js';
import { STATE_DEVICE_ID, type SendHandoverOptions } from './types.js';
import { byDevice, deviceKey, randomProbe } from './util.js';

/** A payload's size when known without reading it (bytes, a memfd payload), else null. */
export function payloadSize(p: unknown): number | null {
  if (p instanceof Uint8Array) return p.length;
  if (p && typeof p === 'object' && 'length' in p && 'memfd' in p) return Number((p as { length: number }).length);
  return null;
}

/** The automatic SO_SNDBUF goes up to this (the state of a typical VM fits). */
const MAX_AUTO_SNDBUF = 4 * 1024 * 1024;

/** Raises SO_SNDBUF to hold the state (o.sendBufferSize, else room for the state up to 4 MiB; never lowers it; 0 leaves it alone). The kernel caps it at wmem_max. */
export function growSendBuffer(sock: FdSocket, o: SendHandoverOptions): void {
  // The state after the freeze, or a precopy (streamed before it: a small buffer
  // costs the writer a wait for POLLOUT several times per MiB), whichever is larger.
  const pre = o.precopy === undefined ? 0 : o.precopy instanceof Uint8Array ? o.precopy.length : MAX_AUTO_SNDBUF;
  const bytes = o.sendBufferSize ?? Math.min(MAX_AUTO_SNDBUF, Math.max(payloadSize(o.state) ?? MAX_AUTO_SNDBUF, pre) + 256 * 1024);
  if (!(bytes > 0)) return;
  // Linux reports twice what was set (its bookkeeping overhead).
  if (sendBufferSize(sock.fd) / 2 < bytes) sock.setBufferSizes({ send: bytes });
}

/** Fails up front, before anything is sent: a device that may never move, an fd not open or not of its declared kind, a device twice. */
export function checkDevices(o: SendHandoverOptions): void {
  if (o.backendTransfer) for (const d of o.devices) if (d.transfer) d.check();
  // Every fd a device would move is open and of its declared kind, checked before
  // anything is sent (else a closed fd is found only after the freeze).
  if (o.backendTransfer) for (const d of o.devices) if (d.transfer) checkDeviceFds(d);
  const ids = new Set<string>();
  for (const d of o.devices) {
    if (ids.has(deviceKey(d)) || d.id === STATE_DEVICE_ID) throw BackendTransferError.invalidArgument(`device ${d.id}/${d.instance} appears twice (or uses the reserved id ${STATE_DEVICE_ID})`);
    ids.add(deviceKey(d));
  }
}

/** ERR_BACKEND_INVALID unless each fd the device would attach is open and of its declared kind. */
function checkDeviceFds(d: SourceDevice): void {
  for (const a of d.capture(true).attachments) {
    let info: FdKindInfo;
    try {
      info = fdKindOf(a.fd);
    } catch (err) {
      throw new BackendTransferError(ErrorCodes.ERR_BACKEND_INVALID, `device ${d.id}: fd ${a.fd} (${a.name}) is not open (${(err as Error).message}); nothing was sent`, {
        cause: err,
        details: { device: d.id, attachment: a.name, fd: a.fd },
      });
    }
    if (!kindMatches(a.kind, info)) {
      throw new BackendTransferError(
        ErrorCodes.ERR_BACKEND_INVALID,
        `device ${d.id}: fd ${a.fd} (${a.name}) is declared ${a.kind} but is ${info.kind}${info.link ? ` (${info.link})` : ''}; nothing was sent`,
        {
          details: { device: d.id, attachment: a.name, fd: a.fd, declared: a.kind, actual: info.kind },
        },
      );
    }
  }
}

/** HELLO: one offer per device (and the VMM state), the features this handover can use, a probe fd when fds are to move. */
export function buildHello(o: SendHandoverOptions): Hello {
  const offers = offersFor(o.devices, { backendTransfer: o.backendTransfer });
  if (o.state !== undefined || o.precopy !== undefined) offers.push({ kind: 'state', id: STATE_DEVICE_ID, instance: 0, version: o.stateVersion ?? 1, fdCount: 0, wantsFds: false, required: true });
  const wantsFds = offers.some((x) => x.wantsFds);
  const features =
    (o.crc === false ? 0 : Features.BODY_CRC) |
    (wantsFds ? Features.FDS : 0) |
    (o.memfdPayloads ? Features.MEMFD_PAYLOAD | Features.FDS : 0) |
    // Staging: only when something could be staged, or state precopied.
    (o.staging !== false && (wantsFds || o.precopy !== undefined) ? Features.STAGED : 0);
  return {
    minVersion: STREAM_VERSION,
    maxVersion: STREAM_VERSION,
    features,
    canPassFds: true,
    fdBudget: fdBudget(openFdCount),
    probe: wantsFds || o.memfdPayloads ? randomProbe() : null,
    offers,
    // The state's size lets the target make room for it before the freeze.
    info: { pid: process.pid, program: 'backend-transfer', stateBytes: announcedState(o) },
  };
}

/** The VMM state's size when known (precopy and final part together). */
function announcedState(o: SendHandoverOptions): number | null {
  const a = o.state === undefined ? 0 : payloadSize(o.state);
  const b = o.precopy === undefined ? 0 : o.precopy instanceof Uint8Array ? o.precopy.length : null;
  return a === null || b === null ? null : a + b;
}

/** ERR_CHANNEL_DROPS_FDS when fds were to move and the target says HELLO's probe fd did not arrive. */
export function checkProbe(hello: Hello, welcome: Welcome): void {
  const probe = (welcome.info as { probe?: string } | null)?.probe;
  if ((hello.features & Features.FDS) !== 0 && !welcome.canPassFds && probe === 'missing') {
    throw new BackendTransferError(
      ErrorCodes.ERR_CHANNEL_DROPS_FDS,
      'the target did not receive the probe fd sent with HELLO: something between the two processes (a relay, a proxy) drops SCM_RIGHTS, so no backend can move over this channel',
      { details: { probe: 'missing' } },
    );
  }
}

/** A `warning` event for each device whose fds will not move, with why (else nothing says so). */
export function warnUnmoved(o: SendHandoverOptions, plan: Plan, welcome: Welcome): void {
  if (!o.onEvent) return;
  const planned = byDevice(plan.devices);
  const answers = byDevice(welcome.answers);
  for (const d of o.devices) {
    const p = planned.get(deviceKey(d));
    const n = d.fdCount();
    const answer = answers.get(deviceKey(d));
    let why: string | null = null;
    if (!p) why = `the target did not take it (${answer ? (REASON_NAMES[answer.reason] ?? `reason ${answer.reason}`) : 'no answer'}; does it accept this id and kind?): nothing of it moves`;
    else if (!p.withFds && n > 0) {
      if (!o.backendTransfer) why = `its ${n} fd(s) stay here: backendTransfer is off, only its state moves`;
      else if (!d.transfer) why = `its ${n} fd(s) stay here: the device does not have transfer: true, only its state moves`;
      else if (!welcome.canPassFds) why = `its ${n} fd(s) stay here: the target cannot receive fds on this channel, only its state moves`;
      else why = `its ${n} fd(s) stay here: the target takes only its state`;
    }
    if (why) o.onEvent({ type: 'warning', message: `device ${d.id}: ${why}` });
  }
}
