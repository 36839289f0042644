// Error codes of the QMP client and the QEMU attach helpers. They are
// BackendTransferErrors like everything else in the library (the code is also at
// the start of the message); bad arguments use the library's ERR_INVALID_ARGUMENT.
import { BackendTransferError } from '../errors.js';

export const QmpErrorCodes = {
  /**
   * QEMU answered a command with an error. `.details.class` is the QMP error
   * class ('GenericError', 'CommandNotFound', 'DeviceNotFound', 'DeviceNotActive',
   * 'KVMMissingCap'), `.details.desc` QEMU's text, `.details.command` the command.
   */
  ERR_QMP_ERROR: 'ERR_QMP_ERROR',
  /** No greeting, or no reply to a command, within its time limit. */
  ERR_QMP_TIMEOUT: 'ERR_QMP_TIMEOUT',
  /** The peer does not speak QMP: its first bytes are not a QMP greeting (an HMP monitor, a QGA socket that talked, anything else). */
  ERR_QMP_NOT_QMP: 'ERR_QMP_NOT_QMP',
  /** The connection ended (QEMU exited or closed it, or we closed the client) before the reply came; or a command was issued after that. */
  ERR_QMP_CLOSED: 'ERR_QMP_CLOSED',
  /** The peer broke the protocol after the greeting (malformed JSON, a message over the size limit). The connection is closed. */
  ERR_QMP_PROTOCOL: 'ERR_QMP_PROTOCOL',
  /** QEMU accepted netdev_add / chardev-add, but reading it back (info network, query-chardev) does not show what was asked; it was removed again. */
  ERR_QMP_VERIFY_FAILED: 'ERR_QMP_VERIFY_FAILED',
} as const;

export type QmpErrorCode = (typeof QmpErrorCodes)[keyof typeof QmpErrorCodes];

/** QMP error classes QEMU uses (qapi/error.json); any other string may come from a newer QEMU. */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap' | (string & { readonly __class?: never });

export function qmpError(code: QmpErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}): BackendTransferError {
  return new BackendTransferError(code, message, options);
}

/** True for an ERR_QMP_ERROR of the given QMP class (any class when omitted). */
export function isQmpCommandError(err: unknown, errorClass?: QmpErrorClass): err is BackendTransferError {
  return err instanceof BackendTransferError && err.code === QmpErrorCodes.ERR_QMP_ERROR && (errorClass === undefined || err.details?.class === errorClass);
}
