// The package root (src/public.ts) is what a VMM manager needs: no addon, no
// wire internals (those are the subpaths backend-transfer/native, /stream and
// /vhost-user, see package.json "exports"); and importing it loads no addon.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import * as root from '../src/public.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));

describe('public surface', () => {
  it('the root leaves the addon and the stream internals to subpaths', () => {
    for (const name of ['native', 'loadNative', 'StreamWriter', 'StreamReader', 'FrameType', 'VhostUserFrontend']) expect(name in root).toBe(false);
    for (const name of ['sendHandover', 'receiveHandover', 'FdSocket', 'FdServer', 'TapSource', 'GenericTarget', 'QmpClient', 'BackendTransferError', 'ErrorCodes', 'inspectFd'])
      expect(name in root).toBe(true);
  });

  it('package.json exports the root and each subpath with types, import and require', () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { exports: Record<string, unknown> };
    for (const sub of ['.', './native', './stream', './vhost-user']) expect(Object.keys(pkg.exports[sub] as object).sort()).toEqual(['import', 'require', 'types']);
    expect((pkg.exports['.'] as { import: string }).import).toBe('./dist/public.js');
  });

  it('importing the root loads no addon (a missing one is not noticed until used)', async () => {
    const code = "const r = await import('./src/public.ts'); console.log(Object.keys(r).length > 0 ? 'ok' : 'empty');";
    const env = { ...process.env, BACKEND_TRANSFER_NATIVE: '/nonexistent/backend_transfer.node' };
    const { stdout } = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, env });
    expect(stdout.trim()).toBe('ok');
  });
});
