// Duplicating an fd (close-on-exec).
import { native } from '../native.js';
import { BackendTransferError } from '../errors.js';

/** A close-on-exec duplicate of `fd`. */
export function dupFd(fd: number): number {
  try {
    return native.dup(fd);
  } catch (err) {
    throw BackendTransferError.fromSystem(err, `dup of fd ${fd}`);
  }
}
