// Runs real handovers between two builds of the library, each side in its own
// process: node cross-version.mjs SOURCE_ROOT TARGET_ROOT. Exit 0 when both sides
// reported success.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const [sourceRoot, targetRoot, sourceLabel = 'source build', targetLabel = 'target build'] = process.argv.slice(2);
if (!sourceRoot || !targetRoot) {
  console.error('usage: cross-version.mjs SOURCE_ROOT TARGET_ROOT [SOURCE_LABEL TARGET_LABEL]');
  process.exit(2);
}
const peer = fileURLToPath(new URL('./cross-version-peer.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'bt-xver-'));
const sock = join(dir, 'handover.sock');

function run(role, root, label) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [peer, role, root, sock], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, BT_LABEL: label } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ role, code, signal, out: out.trim(), err: err.trim() });
    });
  });
}

const mode = process.env.BT_XVER_MODE === 'refuse' ? 'refuse' : 'handover';
const target = run(mode === 'refuse' ? 'target-refusing' : 'target', targetRoot, targetLabel);
// The target listens first (its socket file appears); then the source connects.
for (const t0 = Date.now(); !existsSync(sock) && Date.now() - t0 < 30_000;) await new Promise((r) => setTimeout(r, 20));
const source = run(mode === 'refuse' ? 'source-refused' : 'source', sourceRoot, sourceLabel);
const results = await Promise.all([source, target]);
rmSync(dir, { recursive: true, force: true });
let ok = true;
for (const r of results) {
  console.log(`  ${r.role}: exit ${r.code ?? r.signal} ${r.out}`);
  if (r.err) console.log(`  ${r.role} stderr: ${r.err.split('\n').slice(0, 20).join('\n    ')}`);
  if (r.code !== 0) ok = false;
}
process.exit(ok ? 0 : 1);
