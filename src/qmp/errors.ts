// Error codes of the QMP client and the QEMU attach helpers. They are
// BackendTransferErrors like everything else in the library (the code is also at
// the start of the message); bad arguments use the library's ERR_INVALID_ARGUMENT.
import { BackendTransferError, QmpErrorCodes, type BackendTransferErrorOptions, type QmpErrorCode } from '../errors.js';

export { QmpErrorCodes } from '../errors.js';

export type { QmpErrorCode } from '../errors.js';

/** QMP error classes QEMU uses (qapi/error.json); any other string may come from a newer QEMU. */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap' | (string & { readonly __class?: never });

export function qmpError<C extends QmpErrorCode>(code: C, message: string, options: BackendTransferErrorOptions<C> = {}): BackendTransferError<C> {
  return new BackendTransferError(code, message, options);
}

/** True for an ERR_QMP_ERROR of the given QMP class (any class when omitted). */
export function isQmpCommandError(err: unknown, errorClass?: QmpErrorClass): err is BackendTransferError<'ERR_QMP_ERROR'> {
  return err instanceof BackendTransferError && err.code === QmpErrorCodes.ERR_QMP_ERROR && (errorClass === undefined || err.details?.class === errorClass);
}
