// The handshake's logic: the target answers each offer, and both sides derive the
// same PLAN from HELLO and WELCOME alone (docs/stream-format.md, "PLAN").
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { Decision, Features, Reason, REASON_NAMES, STREAM_VERSION, UNKNOWN_BUDGET, type Answer, type Hello, type Offer, type Plan, type PlannedDevice, type Welcome } from './wire.js';

/** fd slots a target keeps free beyond the planned fds (payload memfds, a new socket). */
export const FD_BUDGET_RESERVE = 16;

/** What a target supports for one offered device. */
export interface DeviceSupport {
  /** The device kind the target expects under this id (a different offered kind is refused). */
  kind?: string;
  minVersion: number;
  maxVersion: number;
  /** Take the device's backend fds (the per-device opt-in on the target). */
  acceptFds: boolean;
}

/** Decides per offer: the support the target has for it, or null (unknown device), or 'not-wanted'. */
export type AcceptFn = (offer: Offer) => DeviceSupport | null | 'not-wanted';

/** The stream version both sides speak, or ERR_STREAM_VERSION. */
export function chooseVersion(minVersion: number, maxVersion: number, ours: [number, number] = [STREAM_VERSION, STREAM_VERSION]): number {
  const v = Math.min(maxVersion, ours[1]);
  if (v < Math.max(minVersion, ours[0])) {
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_VERSION, `no stream version in common: the peer speaks ${minVersion}..${maxVersion}, this side ${ours[0]}..${ours[1]}`, {
      details: { peer: [minVersion, maxVersion], ours },
    });
  }
  return v;
}

/** The target's side: one answer per offer. */
export function answerOffers(hello: Hello, accept: AcceptFn, local: { canPassFds: boolean; features: number; fdBudget: number; info?: Record<string, unknown> | null }): Welcome {
  const version = chooseVersion(hello.minVersion, hello.maxVersion);
  const features = hello.features & local.features;
  const fdsPossible = hello.canPassFds && local.canPassFds && (features & Features.FDS) !== 0;
  const answers: Answer[] = hello.offers.map((offer) => {
    const support = accept(offer);
    const base = { id: offer.id, instance: offer.instance, minVersion: 0, maxVersion: 0 };
    if (support === null) return { ...base, decision: Decision.REFUSE, reason: Reason.UNKNOWN_DEVICE };
    if (support === 'not-wanted') return { ...base, decision: Decision.REFUSE, reason: Reason.NOT_WANTED };
    const win = { ...base, minVersion: support.minVersion, maxVersion: support.maxVersion };
    if (support.kind !== undefined && support.kind !== offer.kind) return { ...win, decision: Decision.REFUSE, reason: Reason.KIND_UNSUPPORTED };
    if (offer.version > support.maxVersion) return { ...win, decision: Decision.REFUSE, reason: Reason.VERSION_TOO_NEW };
    if (offer.version < support.minVersion) return { ...win, decision: Decision.REFUSE, reason: Reason.VERSION_TOO_OLD };
    if (offer.wantsFds && offer.fdCount > 0) {
      if (support.acceptFds && fdsPossible) return { ...win, decision: Decision.WITH_FDS, reason: Reason.NONE };
      return { ...win, decision: Decision.STATE_ONLY, reason: Reason.FDS_NOT_ACCEPTED };
    }
    return { ...win, decision: Decision.STATE_ONLY, reason: Reason.NONE };
  });
  return { version, features, canPassFds: local.canPassFds, fdBudget: local.fdBudget, answers, info: local.info ?? null };
}

/**
 * Both sides: the negotiated layout, from HELLO and WELCOME only. Throws
 * ERR_DEVICE_REFUSED for a required device that was refused and ERR_FD_BUDGET when
 * the fds do not fit the target's budget; ERR_STREAM_PROTOCOL when WELCOME does not
 * answer HELLO.
 */
export function computePlan(hello: Hello, welcome: Welcome): Plan {
  if (welcome.answers.length !== hello.offers.length) {
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `WELCOME has ${welcome.answers.length} answers for ${hello.offers.length} offers`);
  }
  chooseVersion(hello.minVersion, hello.maxVersion, [welcome.version, welcome.version]);
  if ((welcome.features & ~hello.features) !== 0) {
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `WELCOME agrees to features ${welcome.features} that HELLO did not offer (${hello.features})`);
  }
  const features = welcome.features;
  const passFds = hello.canPassFds && welcome.canPassFds && (features & Features.FDS) !== 0;
  const devices: PlannedDevice[] = [];
  hello.offers.forEach((offer, i) => {
    const a = welcome.answers[i]!;
    if (a.id !== offer.id || a.instance !== offer.instance) {
      throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `answer ${i} is for ${a.id}/${a.instance}, the offer was ${offer.id}/${offer.instance}`);
    }
    if (a.decision === Decision.REFUSE) {
      if (offer.required) {
        throw new BackendTransferError(
          ErrorCodes.ERR_DEVICE_REFUSED,
          `required device ${offer.id} (${offer.kind} v${offer.version}) was refused by the target: ${REASON_NAMES[a.reason] ?? a.reason}` +
            (a.reason === Reason.VERSION_TOO_NEW || a.reason === Reason.VERSION_TOO_OLD ? ` (target window ${a.minVersion}..${a.maxVersion})` : ''),
          { details: { id: offer.id, reason: REASON_NAMES[a.reason], minVersion: a.minVersion, maxVersion: a.maxVersion } },
        );
      }
      return;
    }
    if (offer.version < a.minVersion || offer.version > a.maxVersion) {
      throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `device ${offer.id} v${offer.version} was accepted outside the target's own window ${a.minVersion}..${a.maxVersion}`);
    }
    const withFds = a.decision === Decision.WITH_FDS && offer.wantsFds && passFds && offer.fdCount > 0;
    devices.push({ kind: offer.kind, id: offer.id, instance: offer.instance, version: offer.version, withFds, fdCount: withFds ? offer.fdCount : 0 });
  });
  const totalFds = devices.reduce((n, d) => n + d.fdCount, 0);
  if (welcome.fdBudget !== UNKNOWN_BUDGET && totalFds > 0 && totalFds + FD_BUDGET_RESERVE > welcome.fdBudget) {
    throw new BackendTransferError(
      ErrorCodes.ERR_FD_BUDGET,
      `the target has room for ${welcome.fdBudget} more fds (RLIMIT_NOFILE), but ${totalFds} would move (plus a reserve of ${FD_BUDGET_RESERVE})`,
      { details: { totalFds, fdBudget: welcome.fdBudget, reserve: FD_BUDGET_RESERVE } },
    );
  }
  return { version: welcome.version, features, totalFds, devices };
}

/** Two plans describe the same layout. */
export function samePlan(a: Plan, b: Plan): boolean {
  if (a.version !== b.version || a.features !== b.features || a.totalFds !== b.totalFds || a.devices.length !== b.devices.length) return false;
  return a.devices.every((d, i) => {
    const e = b.devices[i]!;
    return d.kind === e.kind && d.id === e.id && d.instance === e.instance && d.version === e.version && d.withFds === e.withFds && d.fdCount === e.fdCount;
  });
}
