// One side of a cross-version handover (run by .ci/steps/10-cross-version.sh and
// test/interop/cross-version.mjs): the library is loaded from the build given on
// the command line, so that a source of one release meets a target of another.
//
//   node cross-version-peer.mjs source LIBROOT SOCKET
//   node cross-version-peer.mjs target LIBROOT SOCKET
//   node cross-version-peer.mjs source-refused|target-refusing LIBROOT SOCKET
//
// The source moves one generic device with a memfd and an eventfd, plus 1 MiB of
// VMM state. The target checks that the fds work (it reads the memfd's contents,
// writes and reads the eventfd) and that the state's hash is intact. Both print
// one JSON line and exit 0 only when everything checked out.
import { createHash } from 'node:crypto';
import { readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [role, libRoot, socketPath] = process.argv.slice(2);
if (!role || !libRoot || !socketPath) {
  console.error('usage: cross-version-peer.mjs source|target LIBROOT SOCKET');
  process.exit(2);
}
const lib = await import(pathToFileURL(join(libRoot, 'dist', 'index.js')).href);
const { version } = (await import(pathToFileURL(join(libRoot, 'package.json')).href, { with: { type: 'json' } })).default;

/** 1 MiB of state that is not all one byte: SHA-256 in counter mode. */
function stateBytes() {
  const parts = [];
  for (let i = 0; i < 32768; i++) parts.push(createHash('sha256').update(`bt-state-${i}`).digest());
  return Buffer.concat(parts);
}
const MEMFD_CONTENT = Buffer.from('memfd contents from the source: backend-transfer cross-version\n');
const sha = (b) => createHash('sha256').update(b).digest('hex');

function report(ok, extra) {
  console.log(JSON.stringify({ role, build: process.env.BT_LABEL ?? version, ok, ...extra }));
  process.exit(ok ? 0 : 1);
}

try {
  if (role === 'source') {
    const memfd = lib.native.memfd_create('bt-xver');
    writeSync(memfd, MEMFD_CONTENT, 0, MEMFD_CONTENT.length, 0);
    const efd = lib.native.eventfd(0);
    const state = stateBytes();
    const res = await lib.sendHandover({
      socket: socketPath,
      backendTransfer: true,
      devices: [
        new lib.GenericSource({
          id: 'gen0',
          transfer: true,
          required: true,
          fds: [
            { name: 'mem', fd: memfd, kind: 'memfd' },
            { name: 'ev', fd: efd, kind: 'eventfd' },
          ],
          metadata: { from: version },
          state: Buffer.from('generic-blob'),
        }),
      ],
      state,
      timeouts: { connect: 20000 },
    });
    const moved = res.devices.find((d) => d.id === 'gen0');
    // The peer is always the other version here: a 0.1.0 target does not echo STAGED,
    // so a HEAD source runs the old order (res.staged false; 0.1.0 has no such field).
    const orderOk = res.staged === undefined || res.staged === false;
    report(moved?.outcome === 'moved' && res.fds === 2 && orderOk, { outcome: moved?.outcome, fds: res.fds, staged: res.staged ?? null, stateSha256: sha(state) });
  } else if (role === 'target') {
    const res = await lib.receiveHandover({
      socket: socketPath,
      backendTransfer: true,
      accept: [new lib.GenericTarget({ id: 'gen0', expect: { mem: 'memfd', ev: 'eventfd' } })],
    });
    const dev = res.devices.get('gen0');
    const problems = [];
    if (res.outcome !== 'committed') problems.push(`outcome ${res.outcome}`);
    // A 0.1.0 source does not offer STAGED: the old order (0.1.0 targets have no such field).
    if (res.staged === true) problems.push('staged with a 0.1.0 source');
    if (dev?.how !== 'received') problems.push(`gen0 was ${dev?.how}`);
    const b = dev?.backend;
    if (b) {
      const got = Buffer.alloc(MEMFD_CONTENT.length + 16);
      const n = readSync(b.fd('mem'), got, 0, got.length, 0);
      if (!got.subarray(0, n).equals(MEMFD_CONTENT)) problems.push(`memfd holds ${JSON.stringify(got.subarray(0, n).toString())}`);
      const eight = Buffer.alloc(8);
      eight.writeBigUInt64LE(5n);
      writeSync(b.fd('ev'), eight);
      writeSync(b.fd('ev'), eight);
      const back = Buffer.alloc(8);
      readSync(b.fd('ev'), back, 0, 8, null);
      if (back.readBigUInt64LE() !== 10n) problems.push(`eventfd read ${back.readBigUInt64LE()} after writing 5 twice`);
      if (b.state.toString() !== 'generic-blob') problems.push(`generic blob ${JSON.stringify(b.state.toString())}`);
      if (b.metadata?.from === undefined) problems.push('generic metadata lost');
      b.close();
    }
    const stateSha256 = res.state ? sha(res.state) : null;
    const expected = sha(stateBytes());
    if (stateSha256 !== expected) problems.push(`state hash ${stateSha256}, expected ${expected} (${res.stateBytes} bytes)`);
    report(problems.length === 0, { problems, stateBytes: res.stateBytes, stateSha256, fds: res.fds });
  } else if (role === 'source-refused') {
    // A device id over the target's 4096-byte limit: the target refuses the HELLO
    // with MAGIC NACK EOF (0.1.0 targets too). A source since 0.1.0 reports the
    // target's code; a 0.1.0 source reads the early NACK as ERR_STREAM_PROTOCOL.
    try {
      await lib.sendHandover({ socket: socketPath, backendTransfer: true, devices: [new lib.GenericSource({ id: 'd'.repeat(5000), fds: [] })], timeouts: { connect: 20000 } });
      report(false, { problems: ['the handover succeeded'] });
    } catch (err) {
      const expected = process.env.BT_LABEL === '0.1.0' ? { code: 'ERR_STREAM_PROTOCOL' } : { code: 'ERR_HANDOVER_REFUSED', target: 'ERR_STREAM_TOO_LARGE' };
      const got = { code: err?.code, ...(err?.details?.code ? { target: err.details.code } : {}) };
      report(JSON.stringify(got) === JSON.stringify(expected), { got, expected });
    }
  } else if (role === 'target-refusing') {
    try {
      await lib.receiveHandover({ socket: socketPath, backendTransfer: true, accept: [] });
      report(false, { problems: ['the handover succeeded'] });
    } catch (err) {
      report(err?.code === 'ERR_STREAM_TOO_LARGE', { got: err?.code });
    }
  } else {
    report(false, { problems: [`unknown role ${role}`] });
  }
} catch (err) {
  report(false, { error: { code: err?.code, message: err?.message } });
}
