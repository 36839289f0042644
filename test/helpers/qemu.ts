// A real QEMU for the QMP tests: qemu-system-x86_64 -nodefaults -nographic -S with
// a QMP unix socket (and optionally an HMP one) in a fresh temporary directory,
// KVM where /dev/kvm is usable (falling back to TCG), killed and cleaned up by
// dispose(). Also reads QEMU's fd table from /proc to see what it holds.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { BackendTransferError, ErrorCodes, FdSocket } from '../../src/index.js';
import { QmpClient, type QmpConnectOptions } from '../../src/qmp/index.js';
import { hasCommand } from './env.js';
import { Peers, type Peer } from './child.js';
import { Tracked } from './tracked.js';

export const QEMU_BINARY = process.env.BT_QEMU ?? 'qemu-system-x86_64';

/** null when a QEMU can be started here, else why not. */
export function qemuUnavailable(): string | null {
  if (!hasCommand(QEMU_BINARY)) return `${QEMU_BINARY} is not installed (Debian package qemu-system-x86)`;
  if (process.platform !== 'linux') return 'QEMU fd passing is tested on Linux only';
  return null;
}

export function kvmUsable(): boolean {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export interface QemuStartOptions {
  /** Also open an HMP monitor on a unix socket (hmpPath). */
  hmp?: boolean;
  /** Extra command-line arguments. */
  args?: string[];
  /** How long to wait for the QMP socket. Default 15000 ms. */
  startTimeout?: number;
}

export interface QemuFd {
  fd: number;
  /** readlink of /proc/<pid>/fd/<fd>: "socket:[123]", "/dev/net/tun", "/memfd:x (deleted)". */
  link: string;
  /** For TAP fds: the interface name (fdinfo "iff:"). */
  iff?: string;
}

export class QemuProcess {
  readonly dir: string;
  readonly qmpPath: string;
  readonly hmpPath: string | null;
  readonly accel: 'kvm' | 'tcg';
  readonly proc: ChildProcess;
  readonly stderr: string[] = [];
  readonly #exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  readonly #clients: QmpClient[] = [];

  private constructor(options: QemuStartOptions) {
    this.dir = mkdtempSync(join(tmpdir(), 'bt-qemu-'));
    this.qmpPath = join(this.dir, 'qmp.sock');
    this.hmpPath = options.hmp ? join(this.dir, 'hmp.sock') : null;
    // BT_QEMU_ACCEL=tcg forces TCG (to try the tests as a machine without KVM runs them).
    this.accel = process.env.BT_QEMU_ACCEL !== 'tcg' && kvmUsable() ? 'kvm' : 'tcg';
    const argv = [
      '-nodefaults',
      '-no-user-config',
      '-nographic',
      '-S',
      '-name',
      `bt-test-${process.pid}`,
      '-machine',
      'pc',
      // KVM first; QEMU falls back to TCG by itself if KVM cannot start.
      ...(this.accel === 'kvm' ? ['-accel', 'kvm', '-accel', 'tcg'] : ['-accel', 'tcg']),
      '-m',
      '32',
      '-qmp',
      `unix:${this.qmpPath},server=on,wait=off`,
      ...(this.hmpPath ? ['-monitor', `unix:${this.hmpPath},server=on,wait=off`] : []),
      ...(options.args ?? []),
    ];
    this.proc = spawn(QEMU_BINARY, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc.stderr!.on('data', (d: Buffer) => this.stderr.push(d.toString()));
    this.#exited = new Promise((resolve) => {
      this.proc.on('close', (code, signal) => {
        this.#exitInfo = { code, signal };
        resolve({ code, signal });
      });
    });
  }

  /** Starts QEMU and waits until its QMP socket exists. */
  static async start(options: QemuStartOptions = {}): Promise<QemuProcess> {
    const q = new QemuProcess(options);
    const deadline = Date.now() + (options.startTimeout ?? 15_000);
    const wanted = [q.qmpPath, ...(q.hmpPath ? [q.hmpPath] : [])];
    while (!wanted.every((p) => existsSync(p))) {
      if (q.#exitInfo !== null || q.proc.exitCode !== null) {
        await q.dispose();
        throw new Error(`QEMU exited during startup (${JSON.stringify(q.#exitInfo)}): ${q.stderr.join('')}`);
      }
      if (Date.now() > deadline) {
        await q.dispose();
        throw new Error(`QEMU did not create its QMP socket within ${options.startTimeout ?? 15_000} ms: ${q.stderr.join('')}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    return q;
  }

  get pid(): number {
    return this.proc.pid!;
  }

  get running(): boolean {
    return this.#exitInfo === null;
  }

  exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.#exited;
  }

  /**
   * A QMP client on the QMP socket (closed by dispose()). Retries a refused
   * connect briefly: the socket file appears just before QEMU listens on it.
   */
  async connect(options: QmpConnectOptions = {}): Promise<QmpClient> {
    const deadline = Date.now() + 5_000;
    for (;;) {
      try {
        const c = await QmpClient.connect(this.qmpPath, options);
        this.#clients.push(c);
        return c;
      } catch (err) {
        const refused = err instanceof BackendTransferError && err.code === ErrorCodes.ERR_CONNECT_FAILED;
        if (!refused || Date.now() > deadline || !this.running) throw err;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  /** QEMU's open fds, read from /proc. */
  fds(): QemuFd[] {
    const out: QemuFd[] = [];
    const base = `/proc/${this.pid}`;
    for (const name of readdirSync(`${base}/fd`)) {
      const fd = Number(name);
      let link: string;
      try {
        link = readlinkSync(`${base}/fd/${name}`);
      } catch {
        continue; // closed meanwhile
      }
      const e: QemuFd = { fd, link };
      // The link of a TAP fd depends on the mount namespace it was opened in
      // ("/dev/net/tun", or "/net/tun" under ip netns exec); fdinfo says "iff:".
      if (!link.startsWith('socket:') && !link.startsWith('anon_inode:') && !link.startsWith('pipe:')) {
        try {
          const m = /^iff:\s*(\S+)/m.exec(readFileSync(`${base}/fdinfo/${name}`, 'utf8'));
          if (m) e.iff = m[1]!;
        } catch {
          /* closed meanwhile */
        }
      }
      out.push(e);
    }
    return out.sort((a, b) => a.fd - b.fd);
  }

  /** QEMU's fds that are queues of TAP interface `ifname`. */
  tapFds(ifname: string): number[] {
    return this.fds()
      .filter((f) => f.iff === ifname)
      .map((f) => f.fd);
  }

  /** QEMU's fds whose /proc link is exactly `link` (e.g. "socket:[123]"). */
  fdsLinkedTo(link: string): number[] {
    return this.fds()
      .filter((f) => f.link === link)
      .map((f) => f.fd);
  }

  /** SIGSTOP: QEMU stays alive but reads nothing, so commands stay in flight. */
  pause(): void {
    this.proc.kill('SIGSTOP');
  }

  resume(): void {
    this.proc.kill('SIGCONT');
  }

  async kill(): Promise<void> {
    if (this.#exitInfo === null) this.proc.kill('SIGKILL');
    await this.#exited;
  }

  /** Closes the clients, kills QEMU, waits for it and removes its directory. */
  async dispose(): Promise<void> {
    for (const c of this.#clients.splice(0)) c.close();
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Tracks QEMUs so that afterEach can dispose of them even when a test fails. */
export class QemuInstances extends Tracked<QemuStartOptions, QemuProcess> {
  constructor() {
    super((options) => QemuProcess.start(options));
  }
}

/** The /proc/self/fd link of one of our fds ("socket:[123]"). */
export function ownFdLink(fd: number): string {
  return readlinkSync(`/proc/self/fd/${fd}`);
}

/** gdb remote protocol checksum of a packet body. */
export function gdbChecksum(body: string): string {
  let sum = 0;
  for (const b of Buffer.from(body, 'latin1')) sum = (sum + b) & 0xff;
  return sum.toString(16).padStart(2, '0');
}

// ------------------------------------------------------------------ the old owner

/**
 * test/fixtures/qmp-peer.ts in its own process (inside a network namespace when
 * asked), with one end of a stream socketpair as its fd 3; the other end is `sock`.
 */
export class QmpPeers {
  readonly #peers = new Peers();
  spawn(scenario: string, args: string[] = [], options: { netns?: string } = {}): Peer & { sock: FdSocket } {
    return this.#peers.spawn(scenario, args, { fixture: 'qmp-peer.ts', socket: 'stream', ...options }) as Peer & { sock: FdSocket };
  }
  disposeAll(): Promise<void> {
    return this.#peers.disposeAll();
  }
}

/** Resolves with the rejection of `p` (fails if it resolves). */
export async function rejection(p: Promise<unknown>): Promise<BackendTransferError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(BackendTransferError);
    return err as BackendTransferError;
  }
  throw new Error('expected a rejection');
}
