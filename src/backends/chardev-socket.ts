// chardev-socket backends: a connected client or accepted socket, or the
// listening socket of a server-mode chardev. Chardevs whose protocol state cannot
// travel (TLS, telnet, websocket) are refused, and so are sockets marked never to
// move (a management/QMP connection): both before anything is sent.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFd, inspectFd } from '../fd/index.js';
import { FdSocket } from '../transport/fd-socket.js';
import { FdServer } from '../transport/server.js';
import { decodeState, encodeState, expectFd, requireString, verifyError, stateOf } from './common.js';
import type { Arrival, Captured } from './types.js';
import { SourceBase, TargetBase, type SourceOptionsBase, type TargetOptionsBase } from './base.js';
import { num, text, type Json } from './json.js';
import type { BackendKindEntry } from './types.js';
import { streamSocketPair } from '../fd/create.js';

export type ChardevRole = 'client' | 'server' | 'listener';

export interface ChardevMeta {
  id: string;
  /** The chardev's address: a socket path, "\0name", or host:port. */
  address: string;
  role: ChardevRole;
}

export interface ChardevSourceOptions extends SourceOptionsBase {
  /** The connected socket ('client', 'server' = an accepted connection) or the listener ('listener'). */
  fd: number;
  role: ChardevRole;
  address: string;
  /** Protocol layers whose state lives in this process and cannot travel. */
  tls?: boolean;
  telnet?: boolean;
  websocket?: boolean;
  /** A socket that must never move (a management/QMP connection): always refused. */
  neverMove?: boolean;
  /** Opaque chardev state (buffered bytes, options). */
  state?: Uint8Array | (() => Uint8Array);
}

export class ChardevSocketSource extends SourceBase<ChardevSourceOptions> {
  readonly kind = 'chardev-socket' as const;

  protected fds(): number[] {
    return [this.o.fd];
  }

  /** Refuses what may never move; checks the fd is the socket its role says. */
  check(): void {
    const o = this.o;
    if (o.transfer) {
      const layers = [o.tls && 'TLS', o.telnet && 'telnet', o.websocket && 'websocket'].filter((l): l is string => typeof l === 'string');
      if (layers.length) {
        throw new BackendTransferError(
          ErrorCodes.ERR_BACKEND_NOT_MOVABLE,
          `chardev ${o.id} uses ${layers.join('+')}: that protocol state lives in this process and cannot travel with the socket; refused (move it state-only and let the target reconnect)`,
          { details: { id: o.id, layers } },
        );
      }
      if (o.neverMove) {
        throw new BackendTransferError(ErrorCodes.ERR_BACKEND_NOT_MOVABLE, `chardev ${o.id} is marked never to move (a management connection stays with its process); refused`, {
          details: { id: o.id },
        });
      }
    }
    const info = inspectFd(o.fd);
    const listening = info.socket?.listening === true;
    if (info.fileType !== 'socket') throw new BackendTransferError(ErrorCodes.ERR_BACKEND_INVALID, `chardev ${o.id}: fd ${o.fd} is ${info.kind}, not a socket`);
    if ((o.role === 'listener') !== listening) {
      throw new BackendTransferError(ErrorCodes.ERR_BACKEND_INVALID, `chardev ${o.id}: role ${o.role} but the fd is ${listening ? 'a listening' : 'a connected'} socket`);
    }
  }

  capture(withFds: boolean): Captured {
    this.check();
    const o = this.o;
    const meta: ChardevMeta = { id: o.id, address: o.address, role: o.role };
    return {
      attachments: withFds ? [{ kind: o.role === 'listener' ? 'listener' : 'chardev-socket', name: 'socket', meta: { role: o.role }, fd: o.fd }] : [],
      state: encodeState({ ...meta }, stateOf(o.state)),
    };
  }
}

export class ChardevBackend {
  #fd: number;
  constructor(
    readonly meta: ChardevMeta,
    fd: number,
    readonly state: Buffer,
  ) {
    this.#fd = fd;
  }

  get fd(): number {
    return this.#fd;
  }

  /** A connected unix chardev as an FdSocket (which takes the fd over; flags untouched). */
  toFdSocket(): FdSocket {
    if (this.meta.role === 'listener') throw BackendTransferError.invalidArgument(`chardev ${this.meta.id} is a listener; use toServer()`);
    const s = FdSocket.fromFd(this.#fd);
    this.#fd = -1;
    return s;
  }

  /** A listening unix chardev as an FdServer (which takes the fd over). */
  toServer(): FdServer {
    if (this.meta.role !== 'listener') throw BackendTransferError.invalidArgument(`chardev ${this.meta.id} is not a listener`);
    const s = FdServer.fromFd(this.#fd);
    this.#fd = -1;
    return s;
  }

  close(): void {
    if (this.#fd >= 0) closeFd(this.#fd);
    this.#fd = -1;
  }
}

export type ChardevTargetOptions = TargetOptionsBase<ChardevMeta, ChardevBackend>;

export class ChardevSocketTarget extends TargetBase<ChardevMeta, ChardevBackend> {
  readonly kind = 'chardev-socket' as const;

  constructor(o: ChardevTargetOptions) {
    super(o);
  }

  verify(arrival: Arrival): void {
    const meta = decodeState(this.id, arrival.state, arrival.jsonLimits).meta;
    const role = requireString(this.id, meta, 'role');
    if (arrival.attachments.length !== 1) throw verifyError(this.id, `${arrival.attachments.length} fds arrived, a chardev socket has one`);
    const a = arrival.attachments[0]!;
    const info = expectFd(this.id, a, role === 'listener' ? ['unix-listener', 'socket'] : ['unix-stream', 'unix-seqpacket', 'socket']);
    const listening = info.socket?.listening === true;
    if ((role === 'listener') !== listening) {
      throw verifyError(this.id, `the socket is ${listening ? 'listening' : 'connected'}, the source declared a ${role}`, { attachment: a.name });
    }
  }

  adopt(arrival: Arrival): ChardevBackend {
    const { meta, blob } = decodeState(this.id, arrival.state, arrival.jsonLimits);
    return new ChardevBackend(meta as unknown as ChardevMeta, arrival.attachments[0]!.fd, blob);
  }
}

/** The chardev-socket kind's registry entry. */
export const chardevSocketKind: BackendKindEntry<'chardev-socket', ChardevBackend> = {
  kind: 'chardev-socket',
  Source: ChardevSocketSource,
  Target: ChardevSocketTarget,
  sourceFromJson: (d: Json, common, state) =>
    new ChardevSocketSource({
      ...common,
      fd: num(d, 'fd'),
      role: (d.role as ChardevRole | undefined) ?? 'client',
      address: text(d, 'address'),
      tls: d.tls === true,
      telnet: d.telnet === true,
      websocket: d.websocket === true,
      neverMove: d.neverMove === true,
      state,
    }),
  targetFromJson: (_d, common) => new ChardevSocketTarget(common),
  describe: (b) => ({ fds: [{ name: 'socket', fd: b.fd }], meta: b.meta }),
  warmUp: (own) => {
    // A socketpair stands in for the connection.
    const [c1, c2] = streamSocketPair();
    own.push(c1, c2);
    return {
      source: new ChardevSocketSource({ id: 'warm-chardev', transfer: true, required: true, fd: c1, role: 'client', address: 'warm-up', closeOnRelease: false }),
      target: new ChardevSocketTarget({ id: 'warm-chardev' }),
    };
  },
};
