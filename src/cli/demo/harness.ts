// Orchestration shared by the demo, the fault tests and the benchmarks: owner
// processes, an echo peer that counts its connections, and a TAP's namespace.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { closeFds } from '../../fd/index.js';
import { FdServer } from '../../transport/server.js';
import type { FdSocket } from '../../transport/fd-socket.js';
import type { OwnerConfig } from './owner.js';
import { createNetns, deleteNetns, ip } from './netns.js';
import { peerMac } from './traffic.js';

export interface OwnerEvent {
  event: string;
  [key: string]: unknown;
}

/** An owner process (`backend-transfer _owner <config>`), optionally inside a network namespace. */
export class OwnerProcess {
  readonly proc: ChildProcess;
  readonly events: OwnerEvent[] = [];
  stderr = '';
  #listeners: ((e: OwnerEvent) => void)[] = [];
  #exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(config: OwnerConfig & { tapMac?: string }, options: { netns?: string; cli?: string[]; prefix?: string[] } = {}) {
    // Run the same CLI this process runs (under tsx in tests, compiled after npm install).
    const cli = options.cli ?? [...process.execArgv, process.argv[1]!];
    let cmd = process.execPath;
    let argv = [...cli, '_owner', JSON.stringify(config)];
    if (options.prefix?.length) {
      // e.g. prlimit --nofile=N:N --
      argv = [...options.prefix.slice(1), cmd, ...argv];
      cmd = options.prefix[0]!;
    }
    if (options.netns) {
      argv = ['netns', 'exec', options.netns, cmd, ...argv];
      cmd = 'ip';
    }
    this.proc = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.exited = new Promise((resolve) => {
      this.proc.on('close', (code, signal) => {
        this.#exit = { code, signal };
        for (const l of this.#listeners.splice(0)) l({ event: '__exit__', code, signal });
        resolve({ code, signal });
      });
    });
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      let ev: OwnerEvent;
      try {
        ev = JSON.parse(line) as OwnerEvent;
      } catch {
        this.stderr += `(stdout) ${line}\n`;
        return;
      }
      this.events.push(ev);
      for (const l of [...this.#listeners]) l(ev);
    });
    this.proc.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.proc.stdin!.on('error', () => undefined);
  }

  get pid(): number {
    return this.proc.pid ?? -1;
  }

  get exitInfo(): { code: number | null; signal: NodeJS.Signals | null } | null {
    return this.#exit;
  }

  /** The next event (after `from` events) whose name is one of `names`. */
  waitFor(names: string | string[], timeoutMs = 30_000, from = 0): Promise<OwnerEvent> {
    const want = Array.isArray(names) ? names : [names];
    const seen = this.events.slice(from).find((e) => want.includes(e.event));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#listeners = this.#listeners.filter((l) => l !== listener);
        const last = this.events
          .slice(-6)
          .map((e) => (e.event === 'phase' ? `phase ${String(e.phase)}` : e.event))
          .join(', ');
        reject(new Error(`timed out waiting for ${want.join('/')} from owner ${this.pid} (its last events: ${last || 'none'}); stderr:\n${this.stderr}`));
      }, timeoutMs);
      const listener = (e: OwnerEvent) => {
        if (e.event === '__exit__') {
          clearTimeout(timer);
          reject(new Error(`owner ${this.pid} exited (code ${String(e.code)}, signal ${String(e.signal)}) before ${want.join('/')}; stderr:\n${this.stderr}`));
          return;
        }
        if (e.event === 'fatal') {
          clearTimeout(timer);
          this.#listeners = this.#listeners.filter((l) => l !== listener);
          reject(new Error(`owner ${this.pid} failed: ${String(e.message)}`));
          return;
        }
        if (!want.includes(e.event)) return;
        clearTimeout(timer);
        this.#listeners = this.#listeners.filter((l) => l !== listener);
        resolve(e);
      };
      if (this.#exit) return listener({ event: '__exit__', ...this.#exit });
      this.#listeners.push(listener);
    });
  }

  command(cmd: Record<string, unknown>): void {
    if (!this.#exit) this.proc.stdin!.write(JSON.stringify(cmd) + '\n');
  }

  /** Sends a command and waits for one of the events that answer it. */
  ask(cmd: Record<string, unknown>, answers: string | string[], timeoutMs = 30_000): Promise<OwnerEvent> {
    const p = this.waitFor(answers, timeoutMs, this.events.length);
    this.command(cmd);
    return p;
  }

  onEvent(f: (e: OwnerEvent) => void): void {
    this.#listeners.push(f);
  }

  async kill(): Promise<void> {
    if (!this.#exit) this.proc.kill('SIGKILL');
    await this.exited;
  }

  /** Asks the owner to exit (so that it runs its exit hooks, a --cpu-prof say); kills it after `graceMs`. */
  async stop(graceMs = 2000): Promise<void> {
    if (this.#exit) return;
    this.command({ cmd: 'exit' });
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

export interface EchoStats {
  connections: number;
  received: number;
  mismatches: number;
  perConnection: { received: number; mismatches: number; open: boolean }[];
}

/**
 * A chardev peer: accepts connections on `path`, echoes every byte, counts its
 * connections, and checks each connection's bytes are the sequence 0, 1, 2, ...
 */
export function startEchoPeer(path: string): { stats(): EchoStats; close(): void } {
  const server = FdServer.listen(path, { peer: 'any' });
  const conns: { sock: FdSocket; received: number; mismatches: number; open: boolean }[] = [];
  void (async () => {
    for await (const sock of server) {
      const c = { sock, received: 0, mismatches: 0, open: true };
      conns.push(c);
      sock
        .consume((chunk) => {
          closeFds(chunk.fds);
          for (let i = 0; i < chunk.data.length; i++) if (chunk.data[i] !== ((c.received + i) & 0xff)) c.mismatches++;
          c.received += chunk.data.length;
          void sock.send(Buffer.from(chunk.data)).catch(() => undefined);
        })
        .then(
          () => void (c.open = false),
          () => void (c.open = false),
        )
        .finally(() => sock.close());
    }
  })().catch(() => undefined);
  return {
    stats: () => ({
      connections: conns.length,
      received: conns.reduce((n, c) => n + c.received, 0),
      mismatches: conns.reduce((n, c) => n + c.mismatches, 0),
      perConnection: conns.map((c) => ({ received: c.received, mismatches: c.mismatches, open: c.open })),
    }),
    close: () => {
      server.close();
      for (const c of conns) c.sock.close();
    },
  };
}

/** A private network namespace for a TAP, configured once the TAP exists. */
export class TapNamespace {
  readonly name: string;
  readonly ifname: string;
  constructor(ifname = 'bt0') {
    this.name = createNetns('demo');
    this.ifname = ifname;
  }
  /** Address, link up, and static neighbours for the traffic's peers (one per queue). */
  configure(queues: number): void {
    ip('-n', this.name, 'addr', 'add', '10.9.0.1/24', 'dev', this.ifname);
    ip('-n', this.name, 'link', 'set', this.ifname, 'up');
    for (let q = 0; q < queues; q++) ip('-n', this.name, 'neigh', 'replace', `10.9.0.${10 + q}`, 'lladdr', peerMac(q), 'dev', this.ifname);
  }
  link(): { ifindex: number; up: boolean; rx: number; tx: number } {
    const j = JSON.parse(ip('-n', this.name, '-s', '-j', 'link', 'show', 'dev', this.ifname)) as {
      ifindex: number;
      flags: string[];
      stats64: { rx: { packets: number }; tx: { packets: number } };
    }[];
    const l = j[0]!;
    return { ifindex: l.ifindex, up: l.flags.includes('UP') && l.flags.includes('LOWER_UP'), rx: l.stats64.rx.packets, tx: l.stats64.tx.packets };
  }
  /**
   * Watches the interface until stopped: did it ever go down or change ifindex?
   * Event-driven (`ip monitor link`, netlink), so it costs nothing while the
   * handover runs, and a carrier drop of any length is seen, however short.
   */
  async watch(): Promise<{ stop: () => Promise<{ events: string[]; alwaysUp: boolean; ifindexes: number[] }> }> {
    const first = this.link();
    const mon = spawn('ip', ['-n', this.name, '-o', 'monitor', 'link'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    mon.stdout.on('data', (d: Buffer) => (out += d.toString()));
    // ip prints nothing when it is ready: give it a moment to subscribe.
    await new Promise((r) => setTimeout(r, 100));
    return {
      stop: async () => {
        await new Promise((r) => setTimeout(r, 50)); // late netlink messages
        mon.kill();
        await new Promise((r) => (mon.exitCode !== null || mon.signalCode !== null ? r(null) : mon.once('close', r)));
        const events = out
          .split('\n')
          .filter((l) => l.includes(`: ${this.ifname}:`) || l.includes(`: ${this.ifname}@`))
          .map((l) => l.trim());
        let last: { ifindex: number; up: boolean } | null = null;
        try {
          last = this.link();
        } catch {
          events.push(`${this.ifname} is gone`);
        }
        const downs = events.filter((l) => /NO-CARRIER|state DOWN|Deleted|is gone/.test(l) || !/LOWER_UP/.test(l));
        return { events, alwaysUp: first.up && !!last?.up && downs.length === 0, ifindexes: [...new Set([first.ifindex, ...(last ? [last.ifindex] : [])])] };
      },
    };
  }
  delete(): void {
    deleteNetns(this.name);
  }
}
