// Opening and checking AF_UNIX sockets, below FdSocket: connect with the listener's
// backlog retried and its credentials checked, and what fromFd() checks of an fd.
import { native, type PeerCred } from '../native.js';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFds } from '../fd/index.js';
import { checkPeer, type PeerPolicy } from './peer.js';
import { printable, type SocketType } from './types.js';

export function typeOf(t: SocketType): number {
  return t === 'seqpacket' ? native.SOCK_SEQPACKET : native.SOCK_STREAM;
}

/**
 * Connects a new socket of `type` to `address` (retrying while the listener's
 * backlog is full, up to `timeout` ms) and checks the listener against `peer`.
 * Returns the connected fd (the caller's) and the listener's credentials.
 */
export async function dial(address: string, type: SocketType, timeout: number, peer: PeerPolicy | undefined): Promise<{ fd: number; cred: PeerCred }> {
  let fd: number;
  try {
    fd = native.socket(typeOf(type));
  } catch (err) {
    throw BackendTransferError.fromSystem(err, 'socket');
  }
  let cred: PeerCred;
  try {
    const deadline = Date.now() + timeout;
    for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
      let r: number;
      try {
        r = native.connect(fd, address);
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === 'EISCONN') break;
        if (code === 'EMFILE' || code === 'ENFILE') throw BackendTransferError.fromSystem(err, `connect to ${printable(address)}`);
        throw new BackendTransferError(ErrorCodes.ERR_CONNECT_FAILED, `connect to ${printable(address)}: ${(err as Error).message}`, { cause: err });
      }
      if (r === 0) break;
      // -EAGAIN: the listener's backlog is full (or -EINPROGRESS): try again shortly.
      if (Date.now() >= deadline) throw BackendTransferError.timeout(`connect to ${printable(address)}`, timeout);
      await new Promise((res) => setTimeout(res, delay));
    }
    cred = native.getpeercred(fd);
    checkPeer(cred, peer, `connect to ${printable(address)}`);
  } catch (err) {
    closeFds([fd]);
    throw BackendTransferError.fromSystem(err, `connect to ${printable(address)}`);
  }
  return { fd, cred };
}

/** Options for sockets this library creates itself. */
export function withDefaults<O extends { sendBufferSize?: number }>(options: O): O {
  return options.sendBufferSize === undefined ? { ...options, sendBufferSize: DEFAULT_SEND_BUFFER } : options;
}

const DEFAULT_SEND_BUFFER = 1024 * 1024;

/** Throws ERR_NOT_UNIX_SOCKET unless fd is a connected AF_UNIX stream or seqpacket socket; returns its type. */
export function checkUnixSocket(fd: number): SocketType {
  let st;
  try {
    st = native.fstat(fd);
  } catch (err) {
    throw BackendTransferError.fromSystem(err, `fstat of fd ${fd}`);
  }
  if (st.type !== native.S_IFSOCK) {
    throw new BackendTransferError(ErrorCodes.ERR_NOT_UNIX_SOCKET, `fd ${fd} is not a socket, so it cannot carry fds (SCM_RIGHTS needs AF_UNIX)`);
  }
  const domain = native.getsockopt(fd, native.SOL_SOCKET, native.SO_DOMAIN);
  if (domain !== native.AF_UNIX) {
    throw new BackendTransferError(ErrorCodes.ERR_NOT_UNIX_SOCKET, `fd ${fd} is a socket of address family ${domain}, not AF_UNIX, so it cannot carry fds`, { details: { domain } });
  }
  const t = native.getsockopt(fd, native.SOL_SOCKET, native.SO_TYPE);
  if (t === native.SOCK_STREAM) return 'stream';
  if (t === native.SOCK_SEQPACKET) return 'seqpacket';
  throw new BackendTransferError(ErrorCodes.ERR_NOT_UNIX_SOCKET, `fd ${fd} is an AF_UNIX socket of type ${t}; only stream and seqpacket are supported`);
}
