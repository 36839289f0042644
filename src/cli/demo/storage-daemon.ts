// A real vhost-user back-end for the demo and the tests: qemu-storage-daemon
// exporting a raw image as vhost-user-blk on a unix socket, and ways to see the
// connections it has.
//
// Connections, two independent views:
// - live: the daemon's own fds (/proc/<pid>/fd → socket:[inode]) that /proc/<pid>/net/unix
//   lists as connected stream sockets bound to the export path (an accepted socket
//   carries its listener's address; the listener itself has __SO_ACCEPTCON). Their
//   peers' inodes come from `ss -x`, so a test can check that the daemon-side socket
//   is connected to the very socket a front-end holds.
// - ever accepted: the daemon runs with QEMU's `qio_channel_socket_*` trace events
//   (log backend, on stderr); every `qio_channel_socket_accept_complete` on the
//   export's listening channel is one connection accepted. The listening channel is
//   told apart from the QMP monitor's by the fd of its `listen_complete` event.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasCommand, run } from './process.js';

const QSD = 'qemu-storage-daemon';
const SO_ACCEPTCON = 0x10000;
const SS_CONNECTED = 3;
const SOCK_STREAM = 1;

export interface StorageDaemonOptions {
  /** Image size in bytes (a multiple of 512). Default 64 MiB. */
  sizeBytes?: number;
  /** num-queues of the export. Default: QEMU's (1). */
  numQueues?: number;
  /** writable=on|off. Default true. */
  writable?: boolean;
  /** logical-block-size of the export. Default: QEMU's (512). */
  logicalBlockSize?: number;
  /** Also open a QMP monitor on <dir>/qmp.sock. Default false. */
  qmp?: boolean;
  /** ms to wait for the export socket. Default 10000. */
  startTimeout?: number;
}

/** A connection as the daemon holds it. */
export interface ExportConnection {
  /** Inode of the daemon's socket (stable for the connection's life). */
  inode: number;
  /** The daemon's fd number for it. */
  fd: number;
}

export interface AcceptEvent {
  /** The daemon's fd for the accepted connection at the time. */
  fd: number;
  /** QEMU's channel object for it. */
  channel: string;
}

interface UnixEntry {
  inode: number;
  flags: number;
  type: number;
  state: number;
  path: string;
}

/** /proc/<pid>/net/unix: Num RefCount Protocol Flags Type St Inode [Path]. */
function unixTable(pid: number): UnixEntry[] {
  const out: UnixEntry[] = [];
  const lines = readFileSync(`/proc/${pid}/net/unix`, 'utf8').split('\n').slice(1);
  for (const line of lines) {
    const f = line.trim().split(/\s+/);
    if (f.length < 7) continue;
    out.push({
      flags: parseInt(f[3]!, 16),
      type: parseInt(f[4]!, 16),
      state: parseInt(f[5]!, 16),
      inode: Number(f[6]),
      path: f.slice(7).join(' '),
    });
  }
  return out;
}

/** Socket inode → fd, over the fds of process `pid`. */
export function socketFds(pid: number): Map<number, number> {
  const out = new Map<number, number>();
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const name of names) {
    let link: string;
    try {
      link = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m) out.set(Number(m[1]), Number(name));
  }
  return out;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class StorageDaemon {
  readonly proc: ChildProcess;
  readonly dir: string;
  readonly imagePath: string;
  readonly socketPath: string;
  readonly qmpPath: string | null;
  readonly sizeBytes: number;
  readonly options: Readonly<StorageDaemonOptions>;
  #stderr = '';
  #lineBuf = '';
  #listens = new Map<number, string>(); // fd → channel
  #accepts: { listener: string; channel: string; fd: number }[] = [];
  #exportChannel: string | null = null;
  #exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  #closed: Promise<void>;

  private constructor(dir: string, options: StorageDaemonOptions) {
    this.options = { ...options };
    this.dir = dir;
    this.imagePath = join(dir, 'disk.raw');
    this.socketPath = join(dir, 'vhost-user-blk.sock');
    this.qmpPath = options.qmp ? join(dir, 'qmp.sock') : null;
    this.sizeBytes = options.sizeBytes ?? 64 * 1024 * 1024;
    const exp = ['type=vhost-user-blk', 'id=exp0', 'node-name=disk0', 'addr.type=unix', `addr.path=${this.socketPath}`, `writable=${options.writable === false ? 'off' : 'on'}`];
    if (options.numQueues !== undefined) exp.push(`num-queues=${options.numQueues}`);
    if (options.logicalBlockSize !== undefined) exp.push(`logical-block-size=${options.logicalBlockSize}`);
    const args = [
      '--trace',
      'qio_channel_socket_listen_complete',
      '--trace',
      'qio_channel_socket_accept_complete',
      '--blockdev',
      `driver=file,node-name=file0,filename=${this.imagePath}`,
      '--blockdev',
      'driver=raw,node-name=disk0,file=file0',
      '--export',
      exp.join(','),
    ];
    if (this.qmpPath) args.push('--chardev', `socket,id=mon0,path=${this.qmpPath},server=on,wait=off`, '--monitor', 'chardev=mon0');
    // setpriv --pdeathsig: the daemon dies with this process even if no cleanup runs.
    const [cmd, argv] = hasCommand('setpriv') ? ['setpriv', ['--pdeathsig', 'KILL', '--', QSD, ...args]] : [QSD, args];
    this.proc = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr!.setEncoding('utf8');
    this.proc.stderr!.on('data', (d: string) => this.#onStderr(d));
    this.#closed = new Promise((resolve) => {
      this.proc.on('close', (code, signal) => {
        this.#exit = { code, signal };
        resolve();
      });
    });
    this.proc.on('error', (err) => {
      this.#stderr += `(spawn error) ${err.message}\n`;
    });
  }

  /** Creates the image and starts the daemon; resolves once the export listens. */
  static async start(options: StorageDaemonOptions = {}): Promise<StorageDaemon> {
    const size = options.sizeBytes ?? 64 * 1024 * 1024;
    if (!Number.isInteger(size) || size <= 0 || size % 512 !== 0) throw new Error(`sizeBytes must be a positive multiple of 512, got ${size}`);
    const dir = mkdtempSync(join(tmpdir(), 'bt-qsd-'));
    // A raw image is just its bytes: a sparse file of the right size.
    writeFileSync(join(dir, 'disk.raw'), '');
    truncateSync(join(dir, 'disk.raw'), size);
    const d = new StorageDaemon(dir, options);
    try {
      await d.#waitReady(options.startTimeout ?? 10_000);
    } catch (err) {
      await d.dispose();
      throw err;
    }
    return d;
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** Everything the daemon wrote on stderr (trace lines included). */
  get stderr(): string {
    return this.#stderr;
  }

  get exitInfo(): { code: number | null; signal: NodeJS.Signals | null } | null {
    return this.#exit;
  }

  #onStderr(d: string): void {
    this.#stderr += d;
    this.#lineBuf += d;
    let nl: number;
    while ((nl = this.#lineBuf.indexOf('\n')) >= 0) {
      const line = this.#lineBuf.slice(0, nl);
      this.#lineBuf = this.#lineBuf.slice(nl + 1);
      let m = /qio_channel_socket_listen_complete\b.*\bioc=(\S+) fd=(\d+)/.exec(line);
      if (m) this.#listens.set(Number(m[2]), m[1]!);
      m = /qio_channel_socket_accept_complete\b.*\bioc=(\S+) cioc=(\S+) fd=(\d+)/.exec(line);
      if (m) this.#accepts.push({ listener: m[1]!, channel: m[2]!, fd: Number(m[3]) });
    }
  }

  async #waitReady(timeout: number): Promise<void> {
    const deadline = Date.now() + timeout;
    for (;;) {
      if (this.#exit) throw new Error(`qemu-storage-daemon exited (code ${this.#exit.code}, signal ${this.#exit.signal}) before its export listened:\n${this.#stderr}`);
      if (existsSync(this.socketPath) && (!this.qmpPath || existsSync(this.qmpPath))) {
        const listener = this.listenerInode();
        const fd = listener === null ? undefined : socketFds(this.pid).get(listener);
        const channel = fd === undefined ? undefined : this.#listens.get(fd);
        if (channel !== undefined) {
          this.#exportChannel = channel;
          return;
        }
      }
      if (Date.now() > deadline) throw new Error(`qemu-storage-daemon: the export did not listen within ${timeout} ms:\n${this.#stderr}`);
      await sleep(10);
    }
  }

  /** Inode of the export's listening socket, or null. */
  listenerInode(): number | null {
    for (const e of unixTable(this.pid)) {
      if (e.path === this.socketPath && e.type === SOCK_STREAM && (e.flags & SO_ACCEPTCON) !== 0) return e.inode;
    }
    return null;
  }

  /**
   * The export connections the daemon holds now (connected, not the listener), by
   * inode. Two sources: the daemon's own /proc/<pid>/net/unix, and the fds its
   * trace says it accepted that are still open sockets. The second matters when
   * the front-end lives in another network namespace: an accepted unix socket
   * belongs to the connecting socket's namespace, so the daemon's table omits it.
   */
  connections(): ExportConnection[] {
    if (this.#exit) return [];
    const fds = socketFds(this.pid);
    const byInode = new Map<number, ExportConnection>();
    for (const e of unixTable(this.pid)) {
      if (e.path !== this.socketPath || e.type !== SOCK_STREAM || (e.flags & SO_ACCEPTCON) !== 0 || e.state !== SS_CONNECTED) continue;
      const fd = fds.get(e.inode);
      if (fd !== undefined) byInode.set(e.inode, { inode: e.inode, fd });
    }
    const inodeOfFd = new Map([...fds].map(([inode, fd]) => [fd, inode]));
    const latest = new Map<number, number>(); // fd -> index of its last accept
    this.accepted().forEach((a, i) => latest.set(a.fd, i));
    const listener = this.listenerInode();
    for (const fd of latest.keys()) {
      const inode = inodeOfFd.get(fd);
      if (inode !== undefined && inode !== listener && !byInode.has(inode)) byInode.set(inode, { inode, fd });
    }
    return [...byInode.values()].sort((a, b) => a.inode - b.inode);
  }

  /** Connections the export ever accepted, from the daemon's trace, in order. */
  accepted(): AcceptEvent[] {
    return this.#accepts.filter((a) => a.listener === this.#exportChannel).map((a) => ({ fd: a.fd, channel: a.channel }));
  }

  acceptedCount(): number {
    return this.accepted().length;
  }

  /** The inode of the socket at the other end of the daemon's socket `inode` (from `ss -x`), or null. */
  async peerInode(inode: number): Promise<number | null> {
    const { stdout } = await run('ss', ['-xHna', 'src', this.socketPath]);
    for (const line of stdout.split('\n')) {
      // u_str ESTAB 0 0 /path 177761 * 178308
      const f = line.trim().split(/\s+/);
      if (f.length < 8) continue;
      if (Number(f[5]) === inode) return Number(f[7]);
    }
    return null;
  }

  /** Polls until `probe` returns non-undefined. */
  async waitFor<T>(what: string, probe: () => T | undefined, timeout = 5000): Promise<T> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const v = probe();
      if (v !== undefined) return v;
      if (this.#exit) throw new Error(`qemu-storage-daemon exited while waiting for ${what}:\n${this.#stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}; daemon stderr:\n${this.#stderr}`);
      await sleep(10);
    }
  }

  /** Waits until the daemon holds exactly `n` export connections. */
  waitForConnections(n: number, timeout = 5000): Promise<ExportConnection[]> {
    return this.waitFor(
      `${n} export connection(s) (have ${this.connections().length})`,
      () => {
        const c = this.connections();
        return c.length === n ? c : undefined;
      },
      timeout,
    );
  }

  /** Waits until the trace shows `n` accepted export connections. */
  waitForAccepted(n: number, timeout = 5000): Promise<AcceptEvent[]> {
    return this.waitFor(
      `${n} accepted export connection(s) (have ${this.acceptedCount()})`,
      () => {
        const a = this.accepted();
        return a.length >= n ? a : undefined;
      },
      timeout,
    );
  }

  /** SIGTERM (SIGKILL after 3 s), wait for it, remove the temp dir. */
  async dispose(): Promise<void> {
    if (this.#exit === null && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      const killer = setTimeout(() => this.proc.kill('SIGKILL'), 3000);
      await this.#closed;
      clearTimeout(killer);
    } else {
      await this.#closed;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
