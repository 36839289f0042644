// `.details` is typed per code (ErrorDetailsMap in src/errors.ts). The first part
// is compile-time only: `npm run typecheck` covers this file, and each
// `@ts-expect-error` line fails it if the wrong details it holds ever compile.
// The second part makes real failures (a timeout, a NACK from a target process, a
// QMP error from a real QEMU) and checks that the details they carry are the
// declared ones: every field declared (own or context), of its declared type,
// and every required field present. The field table the runtime check uses is
// itself checked against ErrorDetailsMap at compile time.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, expectTypeOf, it } from 'vitest';
import {
  BackendTransferError,
  ErrorCodes,
  GenericTarget,
  isBackendTransferError,
  isQmpCommandError,
  receiveHandover,
  sendHandover,
  type ErrorCode,
  type ErrorContextDetails,
  type ErrorDetails,
  type ErrorDetailsMap,
} from '../src/public.js';
import { Peers } from './helpers/child.js';
import { skipUnless } from './helpers/env.js';
import { trackFdLeaks } from './helpers/fds.js';
import { QemuInstances, qemuUnavailable, rejection } from './helpers/qemu.js';

trackFdLeaks();

describe('typed details (compile time)', () => {
  it('the constructor checks the details against the code; a guard narrows them', () => {
    const typed = (e: unknown): void => {
      // Every code has an entry in ErrorDetailsMap (a new code without one fails here: add it there).
      expectTypeOf<Exclude<ErrorCode, keyof ErrorDetailsMap>>().toEqualTypeOf<never>();

      new BackendTransferError(ErrorCodes.ERR_TIMEOUT, 'x', { details: { ms: 5 } });
      new BackendTransferError('ERR_HANDOVER_REFUSED', 'x', { details: { phase: 'stage', code: 'ERR_X', reason: 'no', commitSent: false } });
      // @ts-expect-error: ERR_TIMEOUT has no field `msec`
      new BackendTransferError(ErrorCodes.ERR_TIMEOUT, 'x', { details: { msec: 5 } });
      // @ts-expect-error: `ms` is a number
      new BackendTransferError(ErrorCodes.ERR_TIMEOUT, 'x', { details: { ms: '5' } });
      // @ts-expect-error: `ms` is required
      new BackendTransferError(ErrorCodes.ERR_TIMEOUT, 'x', { details: {} });
      // @ts-expect-error: ERR_SOCKET_CLOSED carries no fields of its own
      new BackendTransferError(ErrorCodes.ERR_SOCKET_CLOSED, 'x', { details: { ms: 5 } });
      // A code known only at run time (a union): any record, as before.
      const some: ErrorCode = Math.random() > 0.5 ? 'ERR_TIMEOUT' : 'ERR_SYSTEM';
      new BackendTransferError(some, 'x', { details: { anything: 1 } });
      expectTypeOf(BackendTransferError.timeout('x', 1).details).toEqualTypeOf<ErrorDetails<'ERR_TIMEOUT'> | undefined>();

      // instanceof: an error of any code, details a plain record (not BackendTransferError<any>).
      if (e instanceof BackendTransferError) {
        expectTypeOf(e.code).toEqualTypeOf<ErrorCode>();
        expectTypeOf(e.details).toEqualTypeOf<Record<string, unknown> | undefined>();
      }
      if (isBackendTransferError(e)) expectTypeOf(e.code).toEqualTypeOf<ErrorCode>();
      const maybe = Math.random() > 0.5 ? ErrorCodes.ERR_TIMEOUT : undefined; // a code that may be absent still compiles (as before)
      if (isBackendTransferError(e, maybe)) expectTypeOf(e.code).toEqualTypeOf<ErrorCode>();

      // The guard with a code narrows .code and .details.
      if (isBackendTransferError(e, 'ERR_HANDOVER_REFUSED')) {
        expectTypeOf(e.code).toEqualTypeOf<'ERR_HANDOVER_REFUSED'>();
        expectTypeOf(e.details!.code).toEqualTypeOf<string>();
        expectTypeOf(e.details!.phase).toEqualTypeOf<string>();
        expectTypeOf(e.details!.commitSent).toEqualTypeOf<boolean | undefined>(); // a context field
        // @ts-expect-error: ERR_HANDOVER_REFUSED has no `ms`
        void e.details?.ms;
      }
      if (isBackendTransferError(e, ErrorCodes.ERR_TIMEOUT)) {
        const ms: number | undefined = e.details?.ms;
        void ms;
        // @ts-expect-error: `ms` is a number, not a string
        const wrong: string | undefined = e.details?.ms;
        void wrong;
      }
      if (isQmpCommandError(e, 'DeviceNotFound')) expectTypeOf(e.details!.desc).toEqualTypeOf<string>();
    };
    expect(typeof typed).toBe('function');
  });
});

// ---- the runtime check of real errors against the declared types

type TypeName<T> = T extends string ? 'string' : T extends number ? 'number' : T extends boolean ? 'boolean' : T extends readonly unknown[] ? 'array' : 'object';
/** Each field of T: its type's name, with a '?' when the field is optional. The table below must list every field of its code. */
type FieldTable<T> = { [K in keyof T]-?: object extends Pick<T, K> ? `${TypeName<NonNullable<T[K]>>}?` : TypeName<NonNullable<T[K]>> };

const contextFields: FieldTable<ErrorContextDetails> = { phase: 'string?', commitSent: 'boolean?', targetGone: 'boolean?', committed: 'boolean?', cleanup: 'object?' };
type Checked = 'ERR_TIMEOUT' | 'ERR_HANDOVER_REFUSED' | 'ERR_QMP_ERROR';
const ownFields: { [C in Checked]: FieldTable<ErrorDetailsMap[C]> } = {
  ERR_TIMEOUT: { ms: 'number' },
  ERR_HANDOVER_REFUSED: { phase: 'string', code: 'string', reason: 'string' },
  ERR_QMP_ERROR: { class: 'string', desc: 'string', command: 'string', id: 'string' },
};

const typeName = (v: unknown): string => (Array.isArray(v) ? 'array' : typeof v);

/** `err` is a BackendTransferError of `code` whose details are exactly of the declared type. */
function expectDeclaredDetails<C extends Checked>(err: unknown, code: C): asserts err is BackendTransferError<C> {
  expect(isBackendTransferError(err, code), String(err)).toBe(true);
  const details = (err as BackendTransferError).details;
  expect(details).toBeTypeOf('object');
  const declared: Record<string, string> = { ...contextFields, ...ownFields[code] };
  for (const [field, value] of Object.entries(details!)) {
    expect(declared[field], `${code}: details.${field} is not declared`).toBeDefined();
    expect(typeName(value), `${code}: details.${field}`).toBe(declared[field]!.replace('?', ''));
  }
  for (const [field, type] of Object.entries(ownFields[code] as Record<string, string>)) if (!type.endsWith('?')) expect(details, `${code}: details.${field} is required`).toHaveProperty(field);
}

const dir = mkdtempSync(join(tmpdir(), 'bt-details-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const peers = new Peers();
const qemus = new QemuInstances();
afterEach(async () => {
  peers.disposeAll();
  await qemus.disposeAll();
});

describe('real failures carry the declared details', () => {
  it('ERR_TIMEOUT: a target that no source connects to within timeouts.connect', async () => {
    const err = await receiveHandover({ socket: join(dir, 'timeout.sock'), accept: [new GenericTarget({ id: 'vm0' })], backendTransfer: true, warmUp: false, timeouts: { connect: 200 } }).then(
      () => null,
      (e: unknown) => e,
    );
    expectDeclaredDetails(err, 'ERR_TIMEOUT');
    expect(err.details).toMatchObject({ ms: 200, phase: 'accept', committed: false });
  });

  it('ERR_HANDOVER_REFUSED: the NACK of a target process (state over its limit), with the target code and reason', async () => {
    const path = join(dir, 'nack.sock');
    const target = peers.spawn('target', [path, JSON.stringify({ limits: { maxStateBytes: 1024 } })], { fixture: 'limits-peer.ts' });
    await target.waitFor('listening');
    const err = await sendHandover({ socket: path, devices: [], backendTransfer: true, warmUp: false, state: Buffer.alloc(64 * 1024, 7) }).then(
      () => null,
      (e: unknown) => e,
    );
    expectDeclaredDetails(err, 'ERR_HANDOVER_REFUSED');
    expect(err.details).toMatchObject({ code: 'ERR_STREAM_TOO_LARGE', commitSent: false });
    expect(err.details!.reason).toMatch(/over the limit of 1024/);
    const t = await target.waitFor('receive-failed');
    expect(t.code).toBe('ERR_STREAM_TOO_LARGE');
  });

  it('ERR_QMP_ERROR: a command a real QEMU does not know', async (ctx) => {
    skipUnless(ctx, qemuUnavailable());
    const q = await qemus.start();
    const qmp = await q.connect();
    const err = await rejection(qmp.execute('no-such-command'));
    expectDeclaredDetails(err, 'ERR_QMP_ERROR');
    expect(err.details).toMatchObject({ class: 'CommandNotFound', command: 'no-such-command' });
  });
});
