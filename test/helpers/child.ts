// Real peers in real processes: spawns test/fixtures/peer.ts (through tsx) with one
// end of a socketpair as its fd 3, and reads the JSON lines it prints.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { FdSocket, native, type SocketType } from '../../src/index.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/peer.ts', import.meta.url));
const TSX = fileURLToPath(new URL('../../node_modules/tsx/dist/esm/index.mjs', import.meta.url));

export interface PeerEvent {
  event: string;
  [key: string]: unknown;
}

export interface SpawnOptions {
  /** The fixture file under test/fixtures (default peer.ts). */
  fixture?: string;
  /** Give the child one end of a socketpair of this type as fd 3; the other end is `peer.sock`. */
  socket?: SocketType | false;
  uid?: number;
  gid?: number;
  /** Run under `prlimit --nofile=N:N`. */
  nofile?: number;
  /** Run inside this network namespace (ip netns exec). */
  netns?: string;
  env?: Record<string, string>;
}

export class Peer {
  readonly proc: ChildProcess;
  readonly sock: FdSocket | null;
  readonly events: PeerEvent[] = [];
  readonly stderr: string[] = [];
  #waiters: { name: string; match: (e: PeerEvent) => boolean; resolve: (e: PeerEvent) => void; reject: (e: Error) => void }[] = [];
  #exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;

  constructor(scenario: string, args: string[] = [], options: SpawnOptions = {}) {
    let childFd = -1;
    let sock: FdSocket | null = null;
    if (options.socket) {
      const [a, b] = native.socketpair(options.socket === 'seqpacket' ? native.SOCK_SEQPACKET : native.SOCK_STREAM);
      sock = new FdSocket(a, options.socket);
      childFd = b;
    }
    let cmd = process.execPath;
    const fixture = options.fixture ? fileURLToPath(new URL(`../fixtures/${options.fixture}`, import.meta.url)) : FIXTURE;
    let argv = ['--import', TSX, fixture, scenario, ...args];
    if (options.nofile !== undefined) {
      argv = [`--nofile=${options.nofile}:${options.nofile}`, '--', cmd, ...argv];
      cmd = 'prlimit';
    }
    if (options.netns !== undefined) {
      argv = ['netns', 'exec', options.netns, cmd, ...argv];
      cmd = 'ip';
    }
    this.proc = spawn(cmd, argv, {
      stdio: ['pipe', 'pipe', 'pipe', childFd >= 0 ? childFd : 'ignore'],
      uid: options.uid,
      gid: options.gid,
      env: { ...process.env, ...options.env },
    });
    if (childFd >= 0) native.close(childFd);
    this.sock = sock;
    this.#exited = new Promise((resolve) => {
      this.proc.on('close', (code, signal) => {
        this.#exitInfo = { code, signal };
        for (const w of this.#waiters.splice(0)) {
          w.reject(new Error(`peer '${scenario}' exited (code ${code}, signal ${signal}) before '${w.name}'; stderr:\n${this.stderr.join('')}`));
        }
        resolve({ code, signal });
      });
    });
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      let ev: PeerEvent;
      try {
        ev = JSON.parse(line) as PeerEvent;
      } catch {
        this.stderr.push(`(stdout) ${line}\n`);
        return;
      }
      this.events.push(ev);
      const i = this.#waiters.findIndex((w) => w.match(ev));
      if (i >= 0) this.#waiters.splice(i, 1)[0]!.resolve(ev);
    });
    this.proc.stderr!.on('data', (d: Buffer) => this.stderr.push(d.toString()));
  }

  /** Sends a command line (JSON) to the child's stdin. */
  command(cmd: Record<string, unknown>): void {
    this.proc.stdin!.write(JSON.stringify(cmd) + '\n');
  }

  /** Sends a command and waits for the event it answers with (the first of several, given a list). */
  async ask(cmd: Record<string, unknown>, answer: string | string[], timeoutMs = 30_000): Promise<PeerEvent> {
    const names = Array.isArray(answer) ? answer : [answer];
    const seen = this.events.length;
    const p = new Promise<PeerEvent>((resolve, reject) => {
      const started = Date.now();
      const check = (): void => {
        const ev = this.events.slice(seen).find((e) => names.includes(e.event) || e.event === 'fatal');
        if (ev) return ev.event === 'fatal' ? reject(new Error(`peer failed: ${String(ev.message)}`)) : resolve(ev);
        if (this.#exitInfo) return reject(new Error(`peer exited before '${names.join("' or '")}'; stderr:\n${this.stderr.join('')}`));
        if (Date.now() - started > timeoutMs) return reject(new Error(`timed out waiting for '${names.join("' or '")}'; stderr:\n${this.stderr.join('')}`));
        setTimeout(check, 5);
      };
      check();
    });
    this.command(cmd);
    return p;
  }

  /** The first event called `name` (already printed or still to come). */
  waitFor(name: string, timeoutMs = 30_000): Promise<PeerEvent> {
    return this.#wait(name, timeoutMs, (e) => e.event === name);
  }

  /** The next event called `name` that no earlier next(name) returned: for events that repeat. */
  next(name: string, timeoutMs = 30_000): Promise<PeerEvent> {
    const taken = this.#taken.get(name) ?? new Set<PeerEvent>();
    this.#taken.set(name, taken);
    return this.#wait(name, timeoutMs, (e) => e.event === name && !taken.has(e)).then((e) => (taken.add(e), e));
  }

  #taken = new Map<string, Set<PeerEvent>>();

  #wait(name: string, timeoutMs: number, match: (e: PeerEvent) => boolean): Promise<PeerEvent> {
    const seen = this.events.find(match);
    if (seen) return Promise.resolve(seen);
    if (this.#exitInfo) return Promise.reject(new Error(`peer exited before '${name}'; stderr:\n${this.stderr.join('')}`));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timed out waiting for '${name}'; stderr:\n${this.stderr.join('')}`)), timeoutMs);
      this.#waiters.push({
        name,
        match,
        resolve: (e) => {
          clearTimeout(t);
          resolve(e);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
    });
  }

  exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.#exited;
  }

  /** Kills the child if it still runs, waits for it, and closes our socket end. */
  async dispose(): Promise<void> {
    if (this.#exitInfo === null) this.proc.kill('SIGKILL');
    await this.#exited;
    this.sock?.close();
  }
}

/** Tracks peers so that afterEach can dispose of them even when a test fails. */
export class Peers {
  #all: Peer[] = [];
  spawn(scenario: string, args: string[] = [], options: SpawnOptions = {}): Peer {
    const p = new Peer(scenario, args, options);
    this.#all.push(p);
    return p;
  }
  async disposeAll(): Promise<void> {
    await Promise.all(this.#all.splice(0).map((p) => p.dispose()));
  }
}
