// The memfd syscalls of the stream (its payload memfds and HELLO's probe), so that
// the stream layer makes none itself: a memfd's seals, its size and identity
// (fstat), a private mapping of it and its release, and a sealed memfd filled
// with bytes. Each function is the addon's call as it is: errors are the addon's
// (`.code`, `.errno`, `.syscall`), except fillMemfd, which closes what it created
// and says what failed.
import { writeSync } from 'node:fs';
import { BackendTransferError } from '../errors.js';
import { native, type NativeStat } from '../native.js';
import { closeFd } from './index.js';

const F_SEAL_SHRINK = 0x0002;
const F_SEAL_GROW = 0x0004;
const F_SEAL_WRITE = 0x0008;

/** The seals of a memfd (fcntl F_GET_SEALS); throws for a file that is not a memfd. */
export function getSeals(fd: number): number {
  return native.fcntl_get_seals(fd);
}

/** Adds seals to a memfd (fcntl F_ADD_SEALS). */
export function addSeals(fd: number, seals: number): void {
  native.fcntl_add_seals(fd, seals);
}

/** fstat(2) of an fd: its size, and the file's identity (device, inode). */
export function fileStat(fd: number): NativeStat {
  return native.fstat(fd);
}

/**
 * A private mapping (MAP_PRIVATE) of `length` >= 1 bytes of a memfd, no check:
 * the caller checked that it is sealed against shrinking and of that size (see
 * mapSealedMemfd in mapping.ts for the checked form). Release it with unmapBuffer.
 */
export function mapMemfd(fd: number, length: number): Buffer {
  return native.mmap_memfd(fd, length);
}

/** Unmaps a Buffer of mapMemfd (detached first): true; false when released already. */
export function unmapBuffer(buf: Uint8Array): boolean {
  return native.munmap_buffer(buf);
}

/** A sealed memfd holding `data` (F_SEAL_SHRINK | GROW | WRITE | SEAL). */
export function fillMemfd(data: Uint8Array, name = 'bt-payload'): number {
  const fd = native.memfd_create(name);
  try {
    let off = 0;
    // writeSync takes at most 2 GiB - 1 at a time.
    while (off < data.length) off += writeSync(fd, data, off, Math.min(data.length - off, 1 << 30), off);
    native.fcntl_add_seals(fd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | native.F_SEAL_SEAL);
    return fd;
  } catch (err) {
    closeFd(fd);
    throw BackendTransferError.fromSystem(err, 'filling a payload memfd');
  }
}
