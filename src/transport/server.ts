// FdServer: a listening AF_UNIX socket (filesystem path or abstract address) that
// accepts FdSockets, checking each peer with SO_PEERCRED before handing it out.
import { EventEmitter } from 'node:events';
import { unlinkSync, statSync } from 'node:fs';
import { native, type PeerCred } from '../native.js';
import { BackendTransferError } from '../errors.js';
import { closeFd } from '../fd/index.js';
import { FdPoller, READABLE } from './poller.js';
import { FdSocket, type FdSocketOptions } from './fd-socket.js';
import { withDefaults } from './unix-socket.js';
import type { SocketType } from './types.js';
import { checkPeer, type PeerPolicy } from './peer.js';
import { printable } from './types.js';

export interface ListenOptions extends FdSocketOptions {
  type?: SocketType;
  backlog?: number;
  /** Who may connect. Default: peers with this process's uid. */
  peer?: PeerPolicy;
}

export interface RejectedPeer {
  cred: PeerCred | null;
  error: BackendTransferError;
}

const EMFILE_RETRY_MS = 100;

/**
 * Events: 'connection' (FdSocket) when nobody waits in accept(), 'reject'
 * (RejectedPeer) for a peer the policy refused (already closed), 'error' for accept
 * failures such as EMFILE (accepting resumes after a pause), 'close'.
 */
export class FdServer extends EventEmitter {
  readonly fd: number;
  readonly type: SocketType;
  /** The bound address ("\0name" for abstract). */
  readonly address: string;
  #options: ListenOptions;
  #poller: FdPoller;
  #closed = false;
  #ownsPath: boolean;
  #ino = -1;
  #accepted: FdSocket[] = [];
  #waiters: { resolve: (s: FdSocket) => void; reject: (e: Error) => void }[] = [];
  #retryTimer: NodeJS.Timeout | null = null;
  /** Peers refused by the policy so far. */
  rejected = 0;

  private constructor(fd: number, type: SocketType, address: string, ownsPath: boolean, options: ListenOptions) {
    super();
    this.fd = fd;
    this.type = type;
    this.address = address;
    this.#ownsPath = ownsPath;
    this.#options = options;
    if (ownsPath) {
      try {
        this.#ino = statSync(address).ino;
      } catch {
        this.#ino = -1;
      }
    }
    this.#poller = new FdPoller(fd, (_events, err) => this.#onReadable(err), options.poller);
    this.#poller.set(READABLE);
  }

  /** Binds and listens on `address` (a path, or "\0name" for an abstract address). */
  static listen(address: string, options: ListenOptions = {}): FdServer {
    const type = options.type ?? 'stream';
    let fd: number;
    try {
      fd = native.socket(type === 'seqpacket' ? native.SOCK_SEQPACKET : native.SOCK_STREAM);
    } catch (err) {
      throw BackendTransferError.fromSystem(err, 'socket');
    }
    try {
      native.bind(fd, address);
      native.listen(fd, options.backlog ?? 128);
    } catch (err) {
      closeFd(fd);
      throw BackendTransferError.fromSystem(err, `listen on ${printable(address)}`);
    }
    return new FdServer(fd, type, address, !address.startsWith('\0'), options);
  }

  /** Wraps a listening AF_UNIX socket fd (taking ownership). The path is not unlinked on close. */
  static fromFd(fd: number, options: ListenOptions = {}): FdServer {
    const st = native.fstat(fd);
    if (st.type !== native.S_IFSOCK || native.getsockopt(fd, native.SOL_SOCKET, native.SO_DOMAIN) !== native.AF_UNIX) {
      throw new BackendTransferError('ERR_NOT_UNIX_SOCKET', `fd ${fd} is not an AF_UNIX socket`);
    }
    if (native.getsockopt(fd, native.SOL_SOCKET, native.SO_ACCEPTCONN) === 0) {
      throw BackendTransferError.invalidArgument(`fd ${fd} is not a listening socket`);
    }
    const t = native.getsockopt(fd, native.SOL_SOCKET, native.SO_TYPE);
    const type: SocketType = t === native.SOCK_SEQPACKET ? 'seqpacket' : 'stream';
    return new FdServer(fd, type, native.getsockname(fd) ?? '', false, options);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The next accepted peer that passed the peer check. */
  accept(): Promise<FdSocket> {
    const s = this.#accepted.shift();
    if (s) return Promise.resolve(s);
    if (this.#closed) return Promise.reject(BackendTransferError.socketClosed('server'));
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<FdSocket, void, undefined> {
    for (;;) {
      let s: FdSocket;
      try {
        s = await this.accept();
      } catch (err) {
        if (this.#closed) return;
        throw err;
      }
      yield s;
    }
  }

  #onReadable(err?: BackendTransferError): void {
    if (this.#closed) return;
    if (err) {
      this.#failWaiters(err);
      return;
    }
    for (let i = 0; i < 64 && !this.#closed; i++) {
      let c: number;
      try {
        c = native.accept4(this.fd);
      } catch (e) {
        const mapped = BackendTransferError.fromSystem(e, `accept4 on ${printable(this.address)}`);
        const code = (e as { code?: string }).code;
        if (code === 'ECONNABORTED') continue;
        // EMFILE/ENFILE leave the connection in the backlog: pause, tell, retry later.
        this.#poller.set(0);
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = null;
          if (!this.#closed) this.#poller.set(READABLE);
        }, EMFILE_RETRY_MS);
        this.#failWaiters(mapped);
        if (this.listenerCount('error') > 0) this.emit('error', mapped);
        return;
      }
      if (c < 0) return; // EAGAIN
      let cred: PeerCred | null = null;
      try {
        cred = native.getpeercred(c);
        checkPeer(cred, this.#options.peer, `accept on ${printable(this.address)}`);
      } catch (e) {
        closeFd(c);
        this.rejected++;
        const error = BackendTransferError.fromSystem(e, 'peer check');
        this.emit('reject', { cred, error } satisfies RejectedPeer);
        continue;
      }
      const sock = new FdSocket(c, this.type, withDefaults(this.#options));
      sock.peer = cred;
      const w = this.#waiters.shift();
      if (w) w.resolve(sock);
      else if (this.listenerCount('connection') > 0) this.emit('connection', sock);
      else this.#accepted.push(sock);
    }
  }

  #failWaiters(err: Error): void {
    for (const w of this.#waiters.splice(0)) w.reject(err);
  }

  ref(): this {
    this.#poller.ref();
    return this;
  }

  unref(): this {
    this.#poller.unref();
    return this;
  }

  /** Stops listening, closes accepted-but-unclaimed sockets, unlinks the path it bound. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#retryTimer) clearTimeout(this.#retryTimer);
    this.#poller.close();
    closeFd(this.fd);
    if (this.#ownsPath) {
      try {
        // Only remove the path if it is still our socket.
        if (statSync(this.address).ino === this.#ino) unlinkSync(this.address);
      } catch {
        /* gone already */
      }
    }
    for (const s of this.#accepted.splice(0)) s.close();
    this.#failWaiters(BackendTransferError.socketClosed('server'));
    this.emit('close');
  }
}

export { printable };

// FdSocket.listen is FdServer.listen: defined here, so that fd-socket.ts needs no
// import of this file (no fd-socket <-> server cycle).
FdSocket.listen = (address: string, options: ListenOptions = {}): FdServer => FdServer.listen(address, options);
