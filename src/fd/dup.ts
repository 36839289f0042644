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

/** A close-on-exec duplicate of `fd` the caller owns, or null where none can be had (EMFILE, a closed fd). */
export function dupOrNull(fd: number): number | null {
  try {
    return native.dup(fd);
  } catch {
    return null;
  }
}
