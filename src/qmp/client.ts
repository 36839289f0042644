// (Over 450 lines: one client, its request queue, fd passing and reply matching
// share one connection state; qmp/backends.ts and json-stream.ts are already apart.)
//
// A small QMP client over FdSocket, so that commands can carry file descriptors
// (SCM_RIGHTS) the way libvirt passes TAP and socket fds to QEMU.
//
// Protocol (QEMU docs/interop/qmp-spec): on connect the server sends a greeting
// {"QMP": {"version": ..., "capabilities": [...]}}; the client answers with
// qmp_capabilities and may then send {"execute": name, "arguments": {...}, "id": x}.
// Replies are {"return": ..., "id": x} or {"error": {"class", "desc"}, "id": x};
// events {"event", "data", "timestamp"} come at any time. Without out-of-band
// execution (not enabled here) QEMU runs commands one at a time, in order.
//
// fds: QEMU's socket chardev keeps the fds of the latest recvmsg that brought
// some (closing older ones nobody claimed), and getfd / add-fd take them when the
// command runs. Without 'oob' QEMU reads the next command only after it has run
// the current one, but with 'oob' enabled it reads up to 8 commands ahead, and a
// second fd-carrying command would then replace the fds of a first one still
// queued. So, like libvirt, this client keeps at most one fd-carrying command (or
// getfd/add-fd) in flight: the next waits for the reply, even one that comes
// after its caller's timeout.
import { EventEmitter } from 'node:events';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFds } from '../fd/index.js';
import { FdSocket, type FdSocketOptions } from '../transport/fd-socket.js';
import type { PeerPolicy } from '../transport/peer.js';
import { QmpErrorCodes, qmpError } from './errors.js';
import { JsonObjectSplitter, JsonStreamError } from './json-stream.js';

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpGreeting {
  version: QmpVersion;
  capabilities: string[];
}

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpClientOptions {
  /** Time for the greeting and qmp_capabilities (and, in connect(), the connection). Default 10000 ms. */
  timeout?: number;
  /** Default time limit of each command. Default 30000 ms; 0 for none. */
  commandTimeout?: number;
  /** Largest message accepted from the server. Default 64 MiB. */
  maxMessageBytes?: number;
  /**
   * Enable the 'oob' capability when the server offers it. QEMU then reads up to
   * 8 commands ahead instead of one at a time (commands still run in order; this
   * client sends no exec-oob). Default false.
   */
  oob?: boolean;
}

export interface QmpConnectOptions extends QmpClientOptions {
  /** Who the QMP server may be (SO_PEERCRED). Default: a process with our uid. */
  peer?: PeerPolicy;
  /** Passed to the FdSocket. */
  socket?: FdSocketOptions;
}

export interface ExecuteOptions {
  /**
   * An fd sent with the command's bytes (SCM_RIGHTS), for getfd, add-fd and the
   * like. QEMU duplicates it: the caller keeps its own, and must keep it open
   * until the promise settles.
   */
  fd?: number;
  /** Time limit for this command (ms, from the call). Default: the client's commandTimeout. 0 for none. */
  timeout?: number;
}

export interface QmpFdsetInfo {
  fdsetId: number;
  fds: { fd: number; opaque?: string }[];
}

interface Pending {
  id: string;
  command: string;
  /** Holds the fd lane (carries an fd, or is getfd/add-fd). */
  lane: boolean;
  /** The caller got its answer (a reply, a timeout or a failure); a late reply is dropped. */
  settled: boolean;
  sent: boolean;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout | null;
  bytes: Buffer;
  fd: number | undefined;
}

type State = 'greeting' | 'negotiating' | 'ready' | 'closed';

/** Commands that take the fd QEMU holds for the connection even when none is attached. */
const FD_TAKING_COMMANDS = new Set(['getfd', 'add-fd']);

let clientCounter = 0;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function parseGreeting(msg: Record<string, unknown>): QmpGreeting | null {
  const q = msg.QMP;
  if (!isObject(q)) return null;
  const v = q.version;
  if (!isObject(v) || !isObject(v.qemu) || !Array.isArray(q.capabilities)) return null;
  const qemu = v.qemu;
  return {
    version: {
      qemu: { major: Number(qemu.major), minor: Number(qemu.minor), micro: Number(qemu.micro) },
      package: typeof v.package === 'string' ? v.package : '',
    },
    capabilities: q.capabilities.filter((c): c is string => typeof c === 'string'),
  };
}

/**
 * A QMP connection. Create it with QmpClient.connect(path) (or fromSocket for a
 * connected FdSocket); it is ready once the promise resolves.
 *
 * Events: 'event' (QmpEvent) for every QMP event; 'close' (error, or null after
 * close()) once the connection ends; 'command' ({id, command, fd}) as each command
 * is written, for tracing; 'unexpected' (message) for a message that is neither a
 * reply to a pending command nor an event.
 */
export class QmpClient extends EventEmitter {
  readonly #sock: FdSocket;
  readonly #splitter: JsonObjectSplitter;
  readonly #commandTimeout: number;
  readonly #idPrefix: string;
  readonly #wantOob: boolean;
  #capabilities: string[] = [];
  #seq = 0;
  #state: State = 'greeting';
  #greeting: QmpGreeting | null = null;
  #greetingWaiter: { resolve: () => void; reject: (e: Error) => void } | null = null;
  #pending = new Map<string, Pending>();
  /** Commands waiting for the fd lane, in call order. */
  #laneQueue: Pending[] = [];
  #laneHolder: Pending | null = null;
  #closeError: BackendTransferError | null = null;
  #closedByUs = false;
  #peerPid: number | undefined;

  private constructor(sock: FdSocket, options: QmpClientOptions) {
    super();
    this.#sock = sock;
    this.#splitter = new JsonObjectSplitter(options.maxMessageBytes ?? 64 * 1024 * 1024);
    this.#commandTimeout = options.commandTimeout ?? 30_000;
    this.#wantOob = options.oob ?? false;
    this.#idPrefix = `bt${process.pid.toString(36)}.${(clientCounter++).toString(36)}.`;
    this.#peerPid = sock.peer?.pid;
    sock
      .consume((chunk) => this.#onChunk(chunk.data, chunk.fds))
      .then(
        () => this.#shutdown(qmpError(QmpErrorCodes.ERR_QMP_CLOSED, 'the QMP server closed the connection')),
        (err: unknown) => this.#shutdown(qmpError(QmpErrorCodes.ERR_QMP_CLOSED, `the QMP connection broke (QEMU gone?): ${(err as Error).message}`, { cause: err })),
      );
  }

  /**
   * Connects to a QMP unix socket (a path, or "\0name"), reads the greeting and
   * negotiates capabilities. Rejects with ERR_QMP_NOT_QMP for a peer that does not
   * greet like QMP, ERR_QMP_TIMEOUT when nothing comes, ERR_CONNECT_FAILED /
   * ERR_PEER_REJECTED from the transport.
   */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeout = options.timeout ?? 10_000;
    const started = Date.now();
    const sock = await FdSocket.connect(path, { ...options.socket, peer: options.peer, timeout });
    return QmpClient.fromSocket(sock, { ...options, timeout: Math.max(1, timeout - (Date.now() - started)) });
  }

  /** Runs the QMP handshake on a connected FdSocket, which the client then owns (closed on failure). */
  static async fromSocket(sock: FdSocket, options: QmpClientOptions = {}): Promise<QmpClient> {
    const client = new QmpClient(sock, options);
    try {
      await client.#handshake(options.timeout ?? 10_000);
    } catch (err) {
      client.close();
      throw err;
    }
    return client;
  }

  async #handshake(timeout: number): Promise<void> {
    const deadline = Date.now() + timeout;
    if (this.#greeting === null) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.#greetingWaiter = null;
          reject(
            qmpError(
              QmpErrorCodes.ERR_QMP_TIMEOUT,
              `no QMP greeting within ${timeout} ms (not a QMP socket, or another client holds QEMU's monitor: QEMU serves one connection per monitor at a time)`,
              { details: { ms: timeout } },
            ),
          );
        }, timeout);
        this.#greetingWaiter = {
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
        if (this.#closeError) this.#greetingWaiter.reject(this.#closeError);
      });
    }
    this.#state = 'negotiating';
    const enable = this.#wantOob && this.#greeting!.capabilities.includes('oob') ? { enable: ['oob'] } : undefined;
    await this.#execute('qmp_capabilities', enable, { timeout: Math.max(1, deadline - Date.now()) });
    this.#capabilities = enable ? ['oob'] : [];
    this.#state = 'ready';
  }

  // ---------------------------------------------------------------- state

  /** The server's greeting: QEMU version and capabilities. */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw qmpError(QmpErrorCodes.ERR_QMP_CLOSED, 'no greeting yet');
    return this.#greeting;
  }

  /** Capabilities enabled with qmp_capabilities. */
  get enabledCapabilities(): readonly string[] {
    return this.#capabilities;
  }

  get version(): QmpVersion {
    return this.greeting.version;
  }

  /** pid of the QMP server (SO_PEERCRED at connect), when known. */
  get peerPid(): number | undefined {
    return this.#peerPid;
  }

  get closed(): boolean {
    return this.#state === 'closed';
  }

  /** Commands sent or queued and not yet answered (including ones whose caller timed out). */
  get pendingCommands(): number {
    return this.#pending.size + this.#laneQueue.length;
  }

  // ---------------------------------------------------------------- commands

  /**
   * Runs a QMP command and resolves with its "return" value. Rejects with
   * ERR_QMP_ERROR (details.class = the QMP error class), ERR_QMP_TIMEOUT,
   * ERR_QMP_CLOSED, or ERR_INVALID_ARGUMENT (including an fd that is not open).
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: ExecuteOptions = {}): Promise<T> {
    if (this.#state !== 'ready') {
      return Promise.reject(this.#state === 'closed' ? this.#closedError(command) : qmpError(QmpErrorCodes.ERR_QMP_CLOSED, 'the QMP handshake has not finished'));
    }
    return this.#execute(command, args, options) as Promise<T>;
  }

  #execute(command: string, args: Record<string, unknown> | undefined, options: ExecuteOptions): Promise<unknown> {
    if (typeof command !== 'string' || command.length === 0) return Promise.reject(BackendTransferError.invalidArgument('command must be a non-empty string'));
    if (args !== undefined && !isObject(args)) return Promise.reject(BackendTransferError.invalidArgument('arguments must be an object'));
    const fd = options.fd;
    if (fd !== undefined && !(Number.isInteger(fd) && fd >= 0)) return Promise.reject(BackendTransferError.invalidArgument(`fd must be a non-negative integer, got ${String(fd)}`));
    if (this.#state === 'closed') return Promise.reject(this.#closedError(command));
    const timeout = options.timeout ?? this.#commandTimeout;
    if (!(timeout >= 0)) return Promise.reject(BackendTransferError.invalidArgument('timeout must be >= 0'));

    const id = this.#idPrefix + (++this.#seq).toString(36);
    const message: Record<string, unknown> = { execute: command };
    if (args !== undefined) message.arguments = args;
    message.id = id;
    let bytes: Buffer;
    try {
      bytes = Buffer.from(JSON.stringify(message) + '\n');
    } catch (err) {
      return Promise.reject(BackendTransferError.invalidArgument(`arguments of ${command} cannot be serialized: ${(err as Error).message}`));
    }
    return new Promise<unknown>((resolve, reject) => {
      const p: Pending = {
        id,
        command,
        lane: fd !== undefined || FD_TAKING_COMMANDS.has(command),
        settled: false,
        sent: false,
        resolve,
        reject,
        timer: null,
        bytes,
        fd,
      };
      if (timeout > 0) {
        p.timer = setTimeout(() => this.#onTimeout(p, timeout), timeout);
      }
      if (p.lane && this.#laneHolder !== null) this.#laneQueue.push(p);
      else this.#send(p);
    });
  }

  #send(p: Pending): void {
    if (p.lane) this.#laneHolder = p;
    p.sent = true;
    this.#pending.set(p.id, p);
    this.emit('command', { id: p.id, command: p.command, fd: p.fd });
    this.#sock.send(p.bytes, p.fd === undefined ? [] : [p.fd]).then(
      () => {
        p.bytes = Buffer.alloc(0);
      },
      (err: unknown) => {
        // The connection failing rejects everything through #shutdown; here only
        // a message the kernel refused outright (an fd not open): nothing of it went.
        const e = err as BackendTransferError;
        if (this.#sock.closed || this.#state === 'closed') {
          this.#shutdown(qmpError(QmpErrorCodes.ERR_QMP_CLOSED, `sending ${p.command} failed: ${e.message}`, { cause: err }));
          return;
        }
        this.#pending.delete(p.id);
        this.#releaseLane(p);
        const mapped =
          e instanceof BackendTransferError && e.code === ErrorCodes.ERR_INVALID_ARGUMENT
            ? new BackendTransferError(ErrorCodes.ERR_INVALID_ARGUMENT, `${p.command}: ${e.message}`, { cause: err, details: { command: p.command, fd: p.fd } })
            : qmpError(QmpErrorCodes.ERR_QMP_CLOSED, `sending ${p.command} failed: ${e.message}`, { cause: err });
        this.#settle(p, mapped);
      },
    );
  }

  #releaseLane(p: Pending): void {
    if (this.#laneHolder !== p) return;
    this.#laneHolder = null;
    while (this.#laneQueue.length > 0 && this.#state !== 'closed') {
      const next = this.#laneQueue.shift()!;
      if (next.settled) continue; // timed out while waiting: never sent
      this.#send(next);
      return;
    }
  }

  #onTimeout(p: Pending, ms: number): void {
    p.timer = null;
    if (p.settled) return;
    const i = this.#laneQueue.indexOf(p);
    if (i >= 0) this.#laneQueue.splice(i, 1);
    // A sent command stays in #pending: its reply is still due and is dropped
    // when it comes (and releases the fd lane then, not now).
    this.#settle(
      p,
      qmpError(QmpErrorCodes.ERR_QMP_TIMEOUT, `${p.command} got no reply within ${ms} ms${p.sent ? '' : ' (it was still waiting to be sent after an earlier fd-carrying command)'}`, {
        details: { command: p.command, id: p.id, ms, sent: p.sent },
      }),
    );
  }

  #settle(p: Pending, err: Error | null, value?: unknown): void {
    if (p.settled) return;
    p.settled = true;
    if (p.timer) clearTimeout(p.timer);
    p.timer = null;
    if (err) p.reject(err);
    else p.resolve(value);
  }

  // ---------------------------------------------------------------- fd commands

  /** getfd: QEMU keeps a duplicate of `fd` under `name` (replacing, and closing, one it had by that name). */
  async getfd(name: string, fd: number, options: Omit<ExecuteOptions, 'fd'> = {}): Promise<void> {
    checkFdName(name);
    await this.execute('getfd', { fdname: name }, { ...options, fd });
  }

  /** closefd: QEMU closes the fd it holds under `name` (ERR_QMP_ERROR when it has none, e.g. after a command consumed it). */
  async closefd(name: string, options: Omit<ExecuteOptions, 'fd'> = {}): Promise<void> {
    await this.execute('closefd', { fdname: name }, options);
  }

  /** add-fd: QEMU adds a duplicate of `fd` to an fd set (a new one unless fdsetId is given); resolves with the set and QEMU's fd number. */
  async addFd(fd: number, options: Omit<ExecuteOptions, 'fd'> & { fdsetId?: number; opaque?: string } = {}): Promise<{ fdsetId: number; fd: number }> {
    const args: Record<string, unknown> = {};
    if (options.fdsetId !== undefined) args['fdset-id'] = options.fdsetId;
    if (options.opaque !== undefined) args.opaque = options.opaque;
    const r = await this.execute<{ 'fdset-id': number; fd: number }>('add-fd', args, { timeout: options.timeout, fd });
    return { fdsetId: r['fdset-id'], fd: r.fd };
  }

  /**
   * remove-fd: marks one fd (or, without `fd`, every fd) of an fd set as removed.
   * QEMU closes it once nothing uses it; QEMU 7.2 defers that while the guest has
   * not run yet (prelaunch, -S) or is paused.
   */
  async removeFd(fdsetId: number, fd?: number, options: Omit<ExecuteOptions, 'fd'> = {}): Promise<void> {
    const args: Record<string, unknown> = { 'fdset-id': fdsetId };
    if (fd !== undefined) args.fd = fd;
    await this.execute('remove-fd', args, options);
  }

  /** query-fdsets. */
  async queryFdsets(options: Omit<ExecuteOptions, 'fd'> = {}): Promise<QmpFdsetInfo[]> {
    const r = await this.execute<{ 'fdset-id': number; fds: { fd: number; opaque?: string }[] }[]>('query-fdsets', undefined, options);
    return r.map((s) => ({ fdsetId: s['fdset-id'], fds: s.fds.map((f) => (f.opaque === undefined ? { fd: f.fd } : { fd: f.fd, opaque: f.opaque })) }));
  }

  /** human-monitor-command: an HMP command line; resolves with its output. */
  async humanMonitorCommand(commandLine: string, options: Omit<ExecuteOptions, 'fd'> = {}): Promise<string> {
    return this.execute<string>('human-monitor-command', { 'command-line': commandLine }, options);
  }

  // ---------------------------------------------------------------- events

  /**
   * The next event called `name` (that `filter` accepts), arriving after this call.
   * Rejects with ERR_QMP_TIMEOUT, or ERR_QMP_CLOSED when the connection ends first.
   */
  waitForEvent(name: string, options: { timeout?: number; filter?: (ev: QmpEvent) => boolean } = {}): Promise<QmpEvent> {
    if (this.#state === 'closed') return Promise.reject(this.#closedError(`waiting for ${name}`));
    const timeout = options.timeout ?? this.#commandTimeout;
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | null = null;
      const done = (): void => {
        if (timer) clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (ev: QmpEvent): void => {
        if (ev.event !== name) return;
        try {
          if (options.filter && !options.filter(ev)) return;
        } catch (err) {
          done();
          reject(err);
          return;
        }
        done();
        resolve(ev);
      };
      const onClose = (): void => {
        done();
        reject(this.#closedError(`waiting for ${name}`));
      };
      if (timeout > 0) {
        timer = setTimeout(() => {
          done();
          reject(qmpError(QmpErrorCodes.ERR_QMP_TIMEOUT, `no ${name} event within ${timeout} ms`, { details: { event: name, ms: timeout } }));
        }, timeout);
      }
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  // ---------------------------------------------------------------- input

  #onChunk(data: Buffer, fds: number[]): void {
    if (fds.length > 0) closeFds(fds); // QEMU sends none; never keep what we did not ask for
    if (this.#state === 'closed') return;
    let messages: Buffer[];
    try {
      messages = this.#splitter.push(data);
    } catch (err) {
      const e = err as JsonStreamError;
      this.#protocolFailure(e instanceof JsonStreamError ? `${e.message}: ${e.sample}` : String(err), err);
      return;
    }
    for (const raw of messages) {
      if (this.closed) return; // a message before this one ended the connection
      let msg: unknown;
      try {
        msg = JSON.parse(raw.toString('utf8'));
      } catch (err) {
        this.#protocolFailure(`malformed JSON: ${(err as Error).message}: ${JSON.stringify(raw.subarray(0, 48).toString('latin1'))}`, err);
        return;
      }
      if (!isObject(msg)) {
        this.#protocolFailure('a message that is not a JSON object', null);
        return;
      }
      this.#onMessage(msg);
    }
  }

  #protocolFailure(what: string, cause: unknown): void {
    const err =
      this.#state === 'greeting'
        ? qmpError(QmpErrorCodes.ERR_QMP_NOT_QMP, `the peer does not speak QMP (${what})`, { cause: cause ?? undefined })
        : qmpError(QmpErrorCodes.ERR_QMP_PROTOCOL, `QMP protocol error: ${what}`, { cause: cause ?? undefined });
    this.#shutdown(err);
  }

  #onMessage(msg: Record<string, unknown>): void {
    if (this.#state === 'greeting') {
      const greeting = parseGreeting(msg);
      if (greeting === null) {
        this.#protocolFailure(`its first message is not a QMP greeting: ${JSON.stringify(msg).slice(0, 120)}`, null);
        return;
      }
      this.#greeting = greeting;
      const w = this.#greetingWaiter;
      this.#greetingWaiter = null;
      w?.resolve();
      return;
    }
    if ('return' in msg || 'error' in msg) {
      this.#onReply(msg);
      return;
    }
    if (typeof msg.event === 'string') {
      const ev: QmpEvent = { event: msg.event };
      if (isObject(msg.data)) ev.data = msg.data;
      if (isObject(msg.timestamp)) ev.timestamp = msg.timestamp as QmpEvent['timestamp'];
      this.emit('event', ev);
      return;
    }
    this.emit('unexpected', msg);
  }

  #onReply(msg: Record<string, unknown>): void {
    let p: Pending | undefined;
    if (typeof msg.id === 'string') p = this.#pending.get(msg.id);
    else if (msg.id === undefined) {
      // QEMU leaves out the id only when it could not parse the request; requests
      // run in order, so it belongs to the oldest one in flight.
      p = this.#pending.values().next().value;
    }
    if (p === undefined) {
      this.emit('unexpected', msg);
      return;
    }
    this.#pending.delete(p.id);
    this.#releaseLane(p);
    if ('error' in msg) {
      const e = isObject(msg.error) ? msg.error : {};
      const cls = typeof e.class === 'string' ? e.class : 'GenericError';
      const desc = typeof e.desc === 'string' ? e.desc : JSON.stringify(msg.error);
      this.#settle(p, qmpError(QmpErrorCodes.ERR_QMP_ERROR, `${p.command}: ${cls}: ${desc}`, { details: { class: cls, desc, command: p.command, id: p.id } }));
    } else {
      this.#settle(p, null, msg.return);
    }
  }

  // ---------------------------------------------------------------- lifecycle

  #closedError(what: string): BackendTransferError {
    const cause = this.#closeError;
    return qmpError(QmpErrorCodes.ERR_QMP_CLOSED, `${what}: the QMP connection is closed${cause ? ` (${cause.message})` : ''}`, cause ? { cause } : {});
  }

  /** Ends the connection: every pending command rejects with `err`. */
  #shutdown(err: BackendTransferError): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#closeError = err;
    this.#sock.close();
    const w = this.#greetingWaiter;
    this.#greetingWaiter = null;
    w?.reject(err);
    const all = [...this.#pending.values(), ...this.#laneQueue];
    this.#pending.clear();
    this.#laneQueue = [];
    this.#laneHolder = null;
    for (const p of all) {
      if (p.settled) continue;
      // A closed connection keeps its code; protocol failures keep theirs.
      const e =
        err.code === QmpErrorCodes.ERR_QMP_CLOSED
          ? qmpError(QmpErrorCodes.ERR_QMP_CLOSED, `${p.command} got no reply: ${err.message.replace(/^ERR_QMP_CLOSED: /, '')}`, {
              cause: err.cause ?? err,
              details: { command: p.command, id: p.id, sent: p.sent },
            })
          : err;
      this.#settle(p, e);
    }
    this.emit('close', this.#closedByUs ? null : err);
  }

  /** Closes the connection; pending commands reject with ERR_QMP_CLOSED. */
  close(): void {
    if (this.#state !== 'closed') this.#closedByUs = true;
    this.#shutdown(qmpError(QmpErrorCodes.ERR_QMP_CLOSED, 'the QMP client was closed by us'));
  }
}

/** getfd names: QEMU refuses (and closes the fd for) names starting with a digit. */
export function checkFdName(name: string): void {
  if (typeof name !== 'string' || name.length === 0 || /^[0-9]/.test(name)) {
    throw BackendTransferError.invalidArgument(`an fd name must be a non-empty string not starting with a digit, got ${JSON.stringify(name)}`);
  }
}
