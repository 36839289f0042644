// Who may connect: checked with SO_PEERCRED at connect and accept.
import type { PeerCred } from '../native.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';

/**
 * The default policy admits a peer with this process's uid. Give `uids` and/or
 * `pids` for an explicit allow-list (every list given must match), or 'any' to
 * accept every peer (for example when the socket's path permissions already
 * decide who can connect).
 */
export type PeerPolicy = { uids?: readonly number[]; pids?: readonly number[] } | 'any';

export function checkPeer(cred: PeerCred, policy: PeerPolicy | undefined, where: string): void {
  if (policy === 'any') return;
  const uids = policy?.uids;
  const pids = policy?.pids;
  const myUid = process.getuid?.() ?? -1;
  let reason: string | null = null;
  if (uids === undefined && pids === undefined) {
    if (cred.uid !== myUid) reason = `peer uid ${cred.uid} is not this process's uid ${myUid}`;
  } else {
    if (uids !== undefined && !uids.includes(cred.uid)) reason = `peer uid ${cred.uid} is not in the allowed uids [${uids.join(', ')}]`;
    else if (pids !== undefined && !pids.includes(cred.pid)) reason = `peer pid ${cred.pid} is not in the allowed pids [${pids.join(', ')}]`;
  }
  if (reason !== null) {
    throw new BackendTransferError(ErrorCodes.ERR_PEER_REJECTED, `${where}: ${reason}`, { details: { pid: cred.pid, uid: cred.uid, gid: cred.gid } });
  }
}
