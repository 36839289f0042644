// ErrorCode is one closed union of every code (the library's, QMP's, vhost-user's):
// a typo does not compile (`npm run typecheck` covers this file), and a code from
// outside (a peer's NACK) can be checked with isErrorCode.
import { describe, expect, it } from 'vitest';
import { BackendTransferError, ErrorCodes, QmpErrorCodes, VhostUserErrorCodes, isErrorCode, type ErrorCode } from '../src/public.js';

describe('ErrorCode', () => {
  it('takes every table and refuses anything else at compile time', () => {
    const codes: ErrorCode[] = [ErrorCodes.ERR_TIMEOUT, QmpErrorCodes.ERR_QMP_TIMEOUT, VhostUserErrorCodes.ERR_VHOST_USER_TIMEOUT];
    for (const c of codes) expect(new BackendTransferError(c, 'x').code).toBe(c);
    // @ts-expect-error: not a code of this library
    const typo: ErrorCode = 'ERR_DEMO';
    expect(isErrorCode(typo)).toBe(false);
  });

  it('isErrorCode knows every code of the three tables and nothing else', () => {
    for (const table of [ErrorCodes, QmpErrorCodes, VhostUserErrorCodes]) for (const c of Object.values(table)) expect(isErrorCode(c)).toBe(true);
    for (const c of ['ERR_TIMEOUTS', 'toString', '__proto__', '', 42, null]) expect(isErrorCode(c)).toBe(false);
  });

  it("the addon's codes that are not errnos are codes of the table, and fromSystem keeps them", () => {
    // native/mmap.cc throws ERR_NATIVE when a Node-API call fails; argument errors are ERR_INVALID_ARGUMENT.
    for (const code of ['ERR_NATIVE', 'ERR_INVALID_ARGUMENT'] as const) {
      expect(isErrorCode(code)).toBe(true);
      const fromAddon = Object.assign(new Error('napi_detach_arraybuffer failed'), { code });
      const e = BackendTransferError.fromSystem(fromAddon, 'munmap_buffer');
      expect(e.code).toBe(code);
      expect(e.cause).toBe(fromAddon);
    }
  });
});
