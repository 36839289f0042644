// Live update, the whole path: old owner → new owner (a handover session) → QEMU (QMP).
//
//   npx tsx examples/handover-to-qemu.ts [--json]
//
// An "old owner" process, inside a private network namespace, opens a 4-queue
// vnet_hdr TAP and connects to a backend service (a unix socket server this
// example runs; it counts its connections). It hands both to the "new owner"
// (this process) with sendHandover / receiveHandover, and exits. The new owner
// gives them to a running QEMU (getfd + netdev_add + device_add virtio-net-pci;
// getfd + chardev-add) and closes its own copies. Nothing reconnects: the TAP
// keeps its ifindex and its carrier, and the backend keeps talking on its one
// connection, to QEMU now (QEMU's gdbstub, attached to the chardev, answers it).
//
// Needs root, /dev/net/tun, ip (iproute2) and qemu-system-x86_64 (KVM when
// usable, else TCG; BT_QEMU_ACCEL=tcg forces TCG, BT_QEMU names another binary).
// Exit code 0: every check passed; 1: something failed (the report says what);
// 2: something it needs is missing here. Whatever happens, QEMU is killed, the
// namespace deleted, the temporary directory removed.
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  ChardevSocketSource,
  ChardevSocketTarget,
  FdServer,
  FdSocket,
  QmpClient,
  TapSource,
  TapTarget,
  attachChardevSocketToQemu,
  attachTapToQemu,
  closeFds,
  openTap,
  queryChardevs,
  readNetworkInfo,
  receiveHandover,
  sendHandover,
  type ChardevBackend,
  type TapBackend,
} from '../src/index.js';

const QUEUES = 4;
const IFNAME = 'bt-tap0';
const HELLO = 'hello from the old owner\n';
const QEMU = process.env.BT_QEMU ?? 'qemu-system-x86_64';

interface OldOwnerConfig {
  ifname: string;
  queues: number;
  backendPath: string;
  handoverPath: string;
}

/** What --json prints. */
export interface Report {
  ok: boolean;
  /** Why it could not run here (exit code 2). */
  unavailable: string | null;
  error: string | null;
  checks: { check: string; ok: boolean; detail: string }[];
  accel?: string;
  qemuPid?: number;
  netns?: string;
  /** old owner → new owner: what the session moved; downtime and total as the old owner measured them. */
  handover?: { outcome: string; fds: number; devices: { id: string; kind: string; how: string }[]; downtimeMs: number; totalMs: number };
  tap?: {
    ifname: string;
    queues: number;
    /** QEMU's fd numbers of the queues (info network), and how many of its fds are queues of the TAP (/proc). */
    qemuFds: number[];
    qemuFdsInProc: number;
    ifindexBefore: number;
    ifindexAfter: number;
    /** UP and LOWER_UP at the end; `ip monitor link` lines seen meanwhile, and those that showed it down. */
    up: boolean;
    linkEvents: number;
    linkDownEvents: string[];
  };
  chardev?: {
    id: string;
    /** query-chardev: QEMU's description, connected (not "disconnected:"), used by a frontend (the gdbstub). */
    filename: string | null;
    connected: boolean;
    frontendOpen: boolean;
    /** QEMU holds the socket the old owner connected ("socket:[inode]"). */
    sameSocket: boolean;
    /** Connections the backend service ever accepted, bytes QEMU wrote to it, and QEMU's gdb reply. */
    peerConnections: number;
    bytesFromQemu: number;
    gdbReply: string;
  };
  timings: { qemuStartMs?: number; attachMs?: number; totalMs?: number };
  fdsLeftOpen: string[];
}

const ip = (...args: string[]): string => execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const fdLink = (pid: number | 'self', fd: number | string): string => readlinkSync(`/proc/${pid}/fd/${fd}`);
/** gdb remote protocol: $<body>#<byte sum mod 256, two hex digits>. */
const gdbPacket = (body: string) => `$${body}#${(Buffer.from(body).reduce((a, b) => a + b, 0) & 0xff).toString(16).padStart(2, '0')}`;

// ------------------------------------------------------------------ the old owner

/** Runs inside the namespace (under `ip netns exec`); talks to the new owner in JSON lines. */
async function oldOwner(c: OldOwnerConfig): Promise<void> {
  const say = (event: string, data: object = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n');
  const stdin = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const tap = openTap(c.ifname, { queues: c.queues, vnetHdr: true });
  ip('link', 'set', 'dev', c.ifname, 'up');
  const chardev = await FdSocket.connect(c.backendPath);
  await chardev.send(Buffer.from(HELLO));
  say('ready', { ifindex: tap.meta.ifindex, chardevSocket: fdLink('self', chardev.fd) });
  if ((await stdin.next()).done) return; // the new owner is gone: keep nothing, hand nothing over
  const r = await sendHandover({
    socket: c.handoverPath,
    backendTransfer: true, // the session's promise that this is a local handover: fds may move
    devices: [
      new TapSource({ id: 'net0', queues: tap.queues, transfer: true, required: true, closeOnRelease: false }),
      new ChardevSocketSource({ id: 'ch0', fd: chardev.fd, role: 'client', address: c.backendPath, transfer: true, required: true, closeOnRelease: false }),
    ],
    // A real VMM stops its device emulation in freeze() and resumes it in thaw() (on failure).
  });
  tap.close(); // committed: the new owner has them; let go of ours
  chardev.close();
  say('handed-over', { fds: r.fds, downtimeMs: r.timings.downtimeMs, totalMs: r.timings.totalMs });
}

// ------------------------------------------------------------------ what the new owner uses

class Unavailable extends Error {}

function unavailable(): string | null {
  const has = (cmd: string) => {
    try {
      execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  };
  if (process.platform !== 'linux') return 'runs on Linux only';
  if (process.getuid?.() !== 0) return 'needs root (CAP_NET_ADMIN) for a network namespace and a TAP';
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun does not exist (no tun driver)';
  if (!has('ip')) return "the 'ip' command is missing (Debian package iproute2)";
  if (!has(QEMU)) return `${QEMU} is not installed (Debian package qemu-system-x86)`;
  return null;
}

/** A child process and a promise of its end. */
function child(cmd: string, args: string[], stdio: ('pipe' | 'ignore')[]) {
  const proc = spawn(cmd, args, { stdio });
  const gone = new Promise<{ code: number | null; signal: string | null }>((r) => proc.once('close', (code, signal) => r({ code, signal })));
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return { proc, gone, stderr: () => stderr.trim(), kill: () => (proc.kill('SIGKILL'), gone) };
}

/** QEMU with no devices, stopped (-S), and a QMP socket: a VMM about to take the backends over. */
function startQemu(dir: string) {
  let accel = 'tcg';
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    if (process.env.BT_QEMU_ACCEL !== 'tcg') accel = 'kvm';
  } catch {
    /* TCG it is */
  }
  const qmpPath = join(dir, 'qmp.sock');
  const accelArgs = accel === 'kvm' ? ['-accel', 'kvm', '-accel', 'tcg'] : ['-accel', 'tcg'];
  const args = ['-nodefaults', '-no-user-config', '-nographic', '-S', '-machine', 'pc', '-m', '64', ...accelArgs, '-qmp', `unix:${qmpPath},server=on,wait=off`];
  return { ...child(QEMU, args, ['ignore', 'ignore', 'pipe']), qmpPath, accel };
}

async function connectQmp(q: ReturnType<typeof startQemu>): Promise<QmpClient> {
  for (const deadline = Date.now() + 15_000; ; await sleep(20)) {
    if (q.proc.exitCode !== null || q.proc.signalCode !== null) throw new Error(`QEMU exited at startup: ${q.stderr()}`);
    try {
      if (existsSync(q.qmpPath)) return await QmpClient.connect(q.qmpPath);
    } catch (err) {
      if (Date.now() > deadline) throw err; // the socket file appears just before QEMU listens
    }
    if (Date.now() > deadline) throw new Error(`QEMU made no QMP socket within 15 s: ${q.stderr()}`);
  }
}

/** The service at the other end of the chardev: counts its connections and keeps what each one receives. */
function startBackendService(path: string) {
  const server = FdServer.listen(path, { peer: 'any' });
  const conns: { sock: FdSocket; received: Buffer }[] = [];
  void (async () => {
    for await (const sock of server) {
      const c = { sock, received: Buffer.alloc(0) };
      conns.push(c);
      sock
        .consume((chunk) => {
          closeFds(chunk.fds);
          c.received = Buffer.concat([c.received, chunk.data]);
        })
        .catch(() => undefined);
    }
  })().catch(() => undefined);
  return {
    conns,
    /** Waits until connection `i` has received something matching `re` past byte `from`. */
    async until(i: number, from: number, re: RegExp, ms = 5000): Promise<string> {
      for (const deadline = Date.now() + ms; ; await sleep(5)) {
        const m = re.exec(conns[i]?.received.subarray(from).toString('latin1') ?? '');
        if (m) return m[0];
        if (Date.now() > deadline) throw new Error(`the backend service saw no ${String(re)} on connection ${i}`);
      }
    },
    close: () => (server.close(), conns.forEach((c) => c.sock.close())),
  };
}

/** `ip link` of the TAP in its namespace, and `ip monitor link` to see any change in between. */
function link(ns: string, ifname: string): { ifindex: number; up: boolean } {
  const [l] = JSON.parse(ip('-n', ns, '-j', 'link', 'show', 'dev', ifname)) as { ifindex: number; flags: string[] }[];
  return { ifindex: l!.ifindex, up: l!.flags.includes('UP') && l!.flags.includes('LOWER_UP') };
}

function watchLink(ns: string, ifname: string) {
  const mon = child('ip', ['-n', ns, '-o', 'monitor', 'link'], ['ignore', 'pipe', 'ignore']);
  let out = '';
  mon.proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const lines = () => out.split('\n').filter((l) => l.includes(`: ${ifname}:`));
  return {
    ...mon,
    events: () => lines().length,
    /** Lines that show the interface deleted, or without carrier. */
    downs: () => lines().filter((l) => /Deleted|NO-CARRIER|state DOWN/.test(l) || !l.includes('LOWER_UP')),
  };
}

/** QEMU's fds that are queues of TAP `ifname` (fdinfo says "iff:", whatever namespace the TAP is in). */
function qemuTapFds(pid: number, ifname: string): number[] {
  return readdirSync(`/proc/${pid}/fd`)
    .map(Number)
    .filter((fd) => {
      try {
        return new RegExp(`^iff:\\s*${ifname}$`, 'm').test(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
      } catch {
        return false;
      }
    });
}

function openFds(pid: number | 'self' = 'self'): Map<number, string> {
  const m = new Map<number, string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      m.set(Number(fd), fdLink(pid, fd));
    } catch {
      /* closed meanwhile (readdir's own) */
    }
  }
  return m;
}

// ------------------------------------------------------------------ the new owner

async function run(report: Report, defer: (undo: () => unknown) => void): Promise<void> {
  const t0 = performance.now();
  const check = (check: string, ok: boolean, detail: string) => report.checks.push({ check, ok, detail });
  const missing = unavailable();
  if (missing) throw new Unavailable(missing);
  const dir = mkdtempSync(join(tmpdir(), 'bt-example-'));
  defer(() => rmSync(dir, { recursive: true, force: true }));
  const ns = (report.netns = `bt-example-${process.pid}`);
  try {
    ip('netns', 'add', ns);
  } catch (err) {
    throw new Unavailable(`cannot create a network namespace: ${(err as Error).message}`);
  }
  defer(() => ip('netns', 'del', ns));
  const backendPath = join(dir, 'backend.sock');
  const handoverPath = join(dir, 'handover.sock');
  const backend = startBackendService(backendPath);
  defer(backend.close);
  const qemu = startQemu(dir);
  defer(qemu.kill);
  const qmp = await connectQmp(qemu);
  defer(() => qmp.close());
  const qemuPid = qemu.proc.pid!;
  report.accel = qemu.accel;
  report.qemuPid = qemuPid;
  report.timings.qemuStartMs = Math.round(performance.now() - t0);

  // The new owner listens; then the old owner starts in the namespace, opens the backends, says "ready".
  const stop = new AbortController();
  const receiving = receiveHandover({
    socket: handoverPath,
    backendTransfer: true,
    accept: [new TapTarget({ id: 'net0' }), new ChardevSocketTarget({ id: 'ch0' })],
    signal: stop.signal,
  });
  defer(() => (stop.abort(), receiving.catch(() => undefined)));
  const config: OldOwnerConfig = { ifname: IFNAME, queues: QUEUES, backendPath, handoverPath };
  const self = fileURLToPath(import.meta.url);
  const old = child('ip', ['netns', 'exec', ns, process.execPath, ...process.execArgv, self, 'old-owner', JSON.stringify(config)], ['pipe', 'pipe', 'pipe']);
  defer(old.kill);
  const said = createInterface({ input: old.proc.stdout! })[Symbol.asyncIterator]();
  const oldSays = async (event: string): Promise<Record<string, unknown>> => {
    const { value } = await said.next();
    const e = value ? (JSON.parse(value as string) as Record<string, unknown>) : null;
    if (e?.event !== event) throw new Error(`the old owner did not say '${event}' (exit ${JSON.stringify(await old.gone)}): ${old.stderr()}`);
    return e;
  };
  const ready = await oldSays('ready');
  const before = link(ns, IFNAME);
  const watch = watchLink(ns, IFNAME);
  defer(watch.kill);
  await sleep(100); // ip monitor prints nothing once it listens: give it a moment

  // 1. old owner → new owner: one handover session, the TAP's queues and the chardev socket with it.
  old.proc.stdin!.write('go\n');
  const received = await receiving;
  const sent = await oldSays('handed-over');
  const tap = received.devices.get('net0')!.backend as TapBackend;
  const ch = received.devices.get('ch0')!.backend as ChardevBackend;
  defer(() => (tap.close(), ch.close()));
  report.handover = {
    outcome: received.outcome,
    fds: received.fds,
    devices: [...received.devices.values()].map((d) => ({ id: d.id, kind: d.kind, how: d.how })),
    downtimeMs: Number(sent.downtimeMs),
    totalMs: Number(sent.totalMs),
  };

  // 2. new owner → QEMU: the TAP as a netdev under a multi-queue virtio-net NIC, the socket as a chardev.
  const tAttach = performance.now();
  const attachedTap = await attachTapToQemu(qmp, { id: 'net0', queueFds: tap.queues });
  await qmp.execute('device_add', { driver: 'virtio-net-pci', id: 'nic0', netdev: 'net0', mq: true, vectors: 2 * QUEUES + 2 });
  const attachedCh = await attachChardevSocketToQemu(qmp, { id: 'ch0', fd: ch.fd });
  report.timings.attachMs = Math.round(performance.now() - tAttach);
  const chardevSocket = fdLink('self', ch.fd); // "socket:[inode]": the same in every process that holds it
  tap.close(); // QEMU works on duplicates: from now on it alone holds the backends
  ch.close();
  const oldExit = await old.gone;

  // 3. What QEMU holds, what the namespace and the backend service saw.
  const net = (await readNetworkInfo(qmp)).filter((e) => e.name === 'net0' && e.type === 'tap');
  const inProc = qemuTapFds(qemuPid, IFNAME);
  check(
    'QEMU holds every TAP queue',
    net.length === QUEUES && inProc.length === QUEUES && net.every((e) => e.peerOf === 'nic0'),
    `info network: ${net.length} tap queues of net0, under ${[...new Set(net.map((e) => e.peerOf))].join(',')}; /proc/${qemuPid}/fd: ${inProc.length} queues of ${IFNAME}`,
  );
  const after = link(ns, IFNAME);
  await sleep(50); // late netlink messages
  const downs = watch.downs();
  check('the TAP kept its ifindex', ready.ifindex === before.ifindex && after.ifindex === before.ifindex, `ifindex ${String(ready.ifindex)} → ${after.ifindex}`);
  check('the TAP stayed up', before.up && after.up && downs.length === 0, downs.join(' | ') || `UP,LOWER_UP before and after, no carrier drop in ${watch.events()} link events`);
  check('the old owner exited cleanly', oldExit.code === 0, `exit code ${String(oldExit.code)}`);
  report.tap = {
    ifname: IFNAME,
    queues: tap.queues.length,
    qemuFds: attachedTap.qemuFds,
    qemuFdsInProc: inProc.length,
    ifindexBefore: before.ifindex,
    ifindexAfter: after.ifindex,
    up: after.up,
    linkEvents: watch.events(),
    linkDownEvents: downs,
  };

  // A frontend that writes into the chardev: QEMU's gdbstub answers gdb packets (no guest needed).
  await qmp.humanMonitorCommand('gdbserver chardev:ch0');
  const info = (await queryChardevs(qmp)).find((c) => c.label === 'ch0');
  await backend.until(0, 0, /\n/); // the old owner's hello came on connection 0
  await backend.conns[0]!.sock.send(Buffer.from(gdbPacket('?'))); // "why did you stop?"
  const reply = await backend.until(0, HELLO.length, /\$[^#]*#[0-9a-f]{2}/);
  const fromQemu = backend.conns[0]!.received.subarray(HELLO.length).toString('latin1');
  const sameSocket = ready.chardevSocket === chardevSocket && [...openFds(qemuPid).values()].includes(chardevSocket);
  const connected = !!info && !info.filename.startsWith('disconnected');
  check('the chardev is connected in QEMU', connected && info.filename === attachedCh.filename, `query-chardev: ${info?.filename ?? 'no ch0'}`);
  check("QEMU holds the old owner's very socket", sameSocket, chardevSocket);
  check("QEMU's bytes reach the backend on its first connection", reply.startsWith('$T05') && reply === gdbPacket(reply.slice(1, -3)), `sent ${gdbPacket('?')}, got ${fromQemu}`);
  check('the backend saw exactly one connection', backend.conns.length === 1, `${backend.conns.length} connection(s)`);
  report.chardev = {
    id: 'ch0',
    filename: info?.filename ?? null,
    connected,
    frontendOpen: info?.frontendOpen ?? false,
    sameSocket,
    peerConnections: backend.conns.length,
    bytesFromQemu: Buffer.byteLength(fromQemu, 'latin1'),
    gdbReply: reply,
  };
}

async function main(): Promise<number> {
  const t0 = performance.now();
  const fdsAtStart = openFds();
  const report: Report = { ok: false, unavailable: null, error: null, checks: [], timings: {}, fdsLeftOpen: [] };
  // Cleanup steps, run last-in first-out whatever happens; once cleaning up (Ctrl-C), a step is run at once.
  const undo: (() => unknown)[] = [];
  let cleaning = false;
  const run1 = async (f: () => unknown) => {
    try {
      await f(); // called at once, awaited after
    } catch {
      /* best effort: the other steps still run */
    }
  };
  const defer = (f: () => unknown) => void (cleaning ? run1(f) : undo.push(f));
  const cleanUp = async () => {
    cleaning = true;
    while (undo.length) await run1(undo.pop()!);
  };
  const onSignal = () => void cleanUp().finally(() => (console.error('interrupted; cleaned up'), process.exit(130)));
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  try {
    await run(report, defer);
  } catch (err) {
    if (err instanceof Unavailable) report.unavailable = err.message;
    else report.error = err instanceof Error ? (err.stack ?? err.message) : String(err);
  } finally {
    await cleanUp();
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r)); // closes queued on the loop
  // Our fds now vs. at the start (Node's own epoll/eventfd/pipes aside).
  report.fdsLeftOpen = [...openFds()].filter(([fd, l]) => fdsAtStart.get(fd) !== l && !/^(anon_inode|pipe):/.test(l)).map(([fd, l]) => `${fd} -> ${l}`);
  if (!report.unavailable) {
    const nsLeft = report.netns !== undefined && ip('netns', 'list').includes(report.netns);
    report.checks.push({
      check: 'nothing left behind',
      ok: report.fdsLeftOpen.length === 0 && !nsLeft,
      detail: nsLeft ? `namespace ${report.netns} still exists` : report.fdsLeftOpen.join(', ') || 'QEMU killed, namespace deleted, temp dir removed, no fd of ours open',
    });
  }
  report.ok = !report.unavailable && !report.error && report.checks.every((c) => c.ok);
  report.timings.totalMs = Math.round(performance.now() - t0);
  print(report);
  return report.unavailable ? 2 : report.ok ? 0 : 1;
}

function print(r: Report): void {
  if (process.argv.includes('--json')) return console.log(JSON.stringify(r, null, 2));
  if (r.unavailable) return console.error(`handover-to-qemu: cannot run here: ${r.unavailable}`);
  console.log(`old owner → new owner → QEMU (${r.accel ?? '?'}): ${QUEUES}-queue TAP ${IFNAME} in namespace ${r.netns ?? '?'}, chardev ch0`);
  if (r.handover) console.log(`  handover: ${r.handover.fds} fds, downtime ${r.handover.downtimeMs.toFixed(1)} ms; attach to QEMU ${r.timings.attachMs ?? '?'} ms; all ${r.timings.totalMs} ms`);
  for (const c of r.checks) console.log(`  ${c.ok ? 'ok  ' : 'FAIL'} ${c.check}: ${c.detail}`);
  if (r.error) console.log(`  error: ${r.error}`);
  console.log(r.ok ? 'OK' : 'FAILED');
}

if (process.argv[2] === 'old-owner') {
  oldOwner(JSON.parse(process.argv[3]!) as OldOwnerConfig).then(
    () => process.exit(0),
    (err: unknown) => (process.stderr.write(`old owner: ${(err as Error).stack ?? String(err)}\n`), process.exit(1)),
  );
} else {
  process.exitCode = await main();
}
