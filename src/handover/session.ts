// The skeleton both sides of a handover share (source.ts, target.ts): the phase
// clock, the bounded waits, the peer's credentials and its watch, reading the
// peer's last words, telling the peer on abort, and the cleanup. Each side keeps
// its own phases (what it sends, what it waits for) and its own abort policy
// (the source thaws or reports an uncertain commit; the target takes over or
// closes what it received).
import { BackendTransferError, ErrorCodes, withoutCode } from '../errors.js';
import type { PeerCred } from '../native.js';
import type { StreamItem, StreamReader } from '../stream/reader.js';
import type { StreamWriter } from '../stream/writer.js';
import { FdSocket } from '../transport/fd-socket.js';
import { checkPeer, type PeerPolicy } from '../transport/peer.js';
import { ItemQueue, type ItemQueueOptions } from './items.js';
import { DEFAULT_TIMEOUTS, type HandoverEvent, type PhaseTimeouts } from './types.js';
import { PeerWatch, PhaseClock, SessionGuard, abortedError, closeSectionItem, limited } from './util.js';

/** The frame a peer ends with when it gives up: the target's NACK, the source's ABORT. */
type LastWordType = 'nack' | 'abort';
export type LastWord<T extends LastWordType> = Extract<StreamItem, { type: T }>;

export interface SessionOptions<P extends string, W extends LastWordType> {
  first: P;
  timeouts?: PhaseTimeouts;
  signal?: AbortSignal;
  onEvent?: (e: HandoverEvent) => void;
  /** The peer, as messages name it: 'the target', 'the source'. */
  peer: string;
  /** The peer's last word: its type, the code it fails this side with, and what it did ("the target refused"). */
  lastWord: { type: W; code: typeof ErrorCodes.ERR_HANDOVER_REFUSED | typeof ErrorCodes.ERR_HANDOVER_ABORTED; says: string };
}

export class Session<P extends string, W extends LastWordType = LastWordType> {
  readonly clock: PhaseClock<P>;
  readonly timeouts: Required<PhaseTimeouts>;
  readonly signal: AbortSignal | undefined;
  readonly #lastWord: SessionOptions<P, W>['lastWord'];
  readonly #peer: string;
  /** Past the point of no return (the source wrote COMMIT, the target read it): the caller's abort is no longer heard. */
  settled = false;
  /** The peer's last word was read (a NACK or an ABORT): it needs no answer. */
  peerGaveUp = false;
  sock: FdSocket | null = null;
  /** The socket is this session's to close (not an FdSocket the caller gave). */
  #ownsSock = false;
  cred: PeerCred | null = null;
  watch: PeerWatch | null = null;
  reader: StreamReader | null = null;
  writer: StreamWriter | null = null;
  queue: ItemQueue | null = null;
  guard: SessionGuard | null = null;
  readonly #limits: { phase: () => string; signal?: AbortSignal; abortable: () => boolean };

  constructor(o: SessionOptions<P, W>) {
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...o.timeouts };
    this.signal = o.signal;
    this.#lastWord = o.lastWord;
    this.#peer = o.peer;
    this.clock = new PhaseClock<P>(o.first, o.onEvent);
    this.#limits = { phase: () => this.clock.phase, signal: o.signal, abortable: () => !this.settled };
  }

  get phase(): P {
    return this.clock.phase;
  }

  enter(p: P): void {
    this.clock.enter(p);
  }

  /** Throws ERR_HANDOVER_ABORTED when the caller aborted (until settled). */
  checkAborted(): void {
    if (this.signal?.aborted && !this.settled) throw abortedError(this.clock.phase, this.signal);
  }

  /** `p` within `ms` (0: no limit), or the caller's abort first (until settled). */
  timed<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    return limited(p, ms, what, this.#limits);
  }

  /** timed(), and once the session runs also the stall bound (with `stall`) and a flooding peer. */
  bounded<T>(p: Promise<T>, ms: number, what: string, stall = true): Promise<T> {
    return limited(this.guard ? this.guard.guard(p, stall) : p, ms, what, this.#limits);
  }

  /** `p` within `ms`, deaf to the caller's abort (the caller's freeze(), the COMMIT write). */
  unabortable<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    return limited(p, ms, what, { phase: () => this.clock.phase, abortable: () => false });
  }

  /** The socket the session runs on; `owned`: closed when the session ends. */
  attach(sock: FdSocket, owned: boolean): FdSocket {
    this.sock = sock;
    this.#ownsSock = owned;
    return sock;
  }

  /** The socket the caller gave: an FdSocket (stays the caller's) or a connected fd (checked; this session's). */
  attachGiven(socket: FdSocket | number): FdSocket {
    return socket instanceof FdSocket ? this.attach(socket, false) : this.attach(FdSocket.fromFd(socket), true);
  }

  /** The peer's credentials against the policy, and a watch on whether its process dies holding the connection. */
  authenticate(sock: FdSocket, policy: PeerPolicy | undefined, where: string): PeerCred {
    const cred = sock.peer ?? sock.peerCredentials();
    checkPeer(cred, policy, where);
    this.cred = cred;
    this.watch = new PeerWatch(sock, cred.pid);
    return cred;
  }

  /**
   * The reader, the writer and the queue of what the peer sends: PINGs answered,
   * a flood fails every guarded wait. The guard's stall bound starts with
   * guard.watchStall().
   */
  start(sock: FdSocket, reader: StreamReader, writer: StreamWriter, onItem?: (it: StreamItem) => void, options: Omit<ItemQueueOptions, 'pong' | 'onFlood' | 'onNoise'> = {}): ItemQueue {
    this.reader = reader;
    this.writer = writer;
    const g = (this.guard = new SessionGuard(sock, () => this.clock.phase));
    this.queue = new ItemQueue(sock, reader, onItem, { ...options, pong: (token) => writer.pong(token), onFlood: (err) => g.fail(err), onNoise: (n) => (g.noise += n) });
    return this.queue;
  }

  /** The error the peer's last word (its NACK or ABORT) fails this side with. */
  peerGaveUpError(it: LastWord<W>): BackendTransferError {
    this.peerGaveUp = true;
    const x = it as LastWord<'nack'> | LastWord<'abort'>;
    const said = x.type === 'nack' ? x.nack : x.abort;
    const phase = this.clock.phase;
    return new BackendTransferError(this.#lastWord.code, `${this.#lastWord.says} in phase ${phase}: ${said.code}: ${withoutCode(said.reason, said.code)}`, {
      details: { phase, code: said.code, reason: said.reason },
    });
  }

  /**
   * The peer's next frame, within `ms` (bounded: see bounded()); its last word
   * (NACK, ABORT) fails with peerGaveUpError. When the wait gives up (a timeout,
   * the caller's abort), a frame still on its way to it is nobody's: its fds are
   * closed when it comes.
   */
  async next(what: string, ms: number, stall = true): Promise<StreamItem> {
    const pending = this.queue!.next(0, what);
    const it = await this.bounded(pending, ms, `waiting for ${what}`, stall).catch((err: unknown) => {
      pending.then(closeSectionItem, () => undefined);
      throw err;
    });
    if (it.type === this.#lastWord.type) throw this.peerGaveUpError(it as LastWord<W>);
    return it;
  }

  /** next(), which must be a frame of `type` (and pass `ok`), else ERR_STREAM_PROTOCOL ("expected WELCOME, the target sent ..."). */
  async expect<T extends StreamItem['type']>(type: T, what: string, ms: number, ok?: (it: Extract<StreamItem, { type: T }>) => boolean, stall = true): Promise<Extract<StreamItem, { type: T }>> {
    const it = await this.next(what, ms, stall);
    if (it.type !== type || (ok && !ok(it as Extract<StreamItem, { type: T }>))) throw new BackendTransferError(ErrorCodes.ERR_STREAM_PROTOCOL, `expected ${what}, ${this.#peer} sent ${it.type}`);
    return it as Extract<StreamItem, { type: T }>;
  }

  /** The caught error as a BackendTransferError; the stall watch stops. */
  failure(err: unknown): BackendTransferError {
    this.guard?.stop();
    return err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, `handover (phase ${this.clock.phase})`);
  }

  /**
   * A send failed because the peer hung up (ERR_PEER_CLOSED): it may have said why
   * first. Its last word, read within 300 ms, replaces `e`; else `e` stays.
   */
  async lastWords(e: BackendTransferError): Promise<BackendTransferError> {
    if (e.code !== ErrorCodes.ERR_PEER_CLOSED || !this.queue || this.settled) return e;
    const said = await this.queue.find(this.#lastWord.type, 300);
    return said ? this.peerGaveUpError(said) : e;
  }

  /** Tells the peer why this side gives up (its ABORT or NACK, then EOF), never waiting more than 500 ms for that. */
  async tellPeer(say: (w: StreamWriter) => Promise<void>): Promise<void> {
    const w = this.writer;
    if (!w || w.error || !this.sock || this.sock.closed) return;
    await Promise.race([
      say(w)
        .then(() => w.eof())
        .catch(() => undefined),
      new Promise((r) => setTimeout(r, 500)),
    ]);
  }

  /** Whether the peer's process died holding the connection, waiting up to `ms` for its death (false where it cannot be known). */
  async peerDied(ms: number): Promise<boolean> {
    return this.watch !== null && (await this.watch.holderGone(ms));
  }

  /** The end, success or not: the watches stop, unread frames' fds are closed, the socket is closed if it is the session's. */
  close(): void {
    this.guard?.stop();
    this.watch?.close();
    this.queue?.drain();
    this.reader?.close();
    if (this.sock && this.#ownsSock) this.sock.close();
  }
}
