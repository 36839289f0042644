// A sealed memfd's bytes without reading them: a private mapping (mmap
// MAP_PRIVATE) as a Buffer. Its pages are the memfd's own pages (the page cache),
// counted in RSS only once touched; nothing is copied. A write through the Buffer
// copies that page for this process (copy on write): the sender's pages never
// change. (PROT_READ alone would turn such a write into SIGSEGV: JavaScript has
// no read-only Buffer.)
//
// Safety rests on two rules:
// - Only a memfd that cannot shrink is mapped (F_SEAL_SHRINK, with GROW and WRITE
//   as the stream requires them), and only when it holds exactly the bytes
//   expected: a peer that cut its memfd shorter under a mapping would turn reads
//   past the new end into SIGBUS, a crash of this process. Both are checked here,
//   before mmap, and the seals cannot be taken off later.
// - releaseMapping() detaches the Buffer's ArrayBuffer before unmapping: from then
//   on every view of it (the Buffer, its subarrays) has length 0, so a later use
//   finds nothing (index reads are undefined, readUInt32LE & co. throw a
//   RangeError), never the unmapped pages. A mapping not released is unmapped when
//   its Buffer is collected. Do not release a mapping while an asynchronous
//   operation (fs.write, socket.write) still uses it: that operation holds the
//   address, not the Buffer.
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { native } from '../native.js';

const F_SEAL_SHRINK = 0x0002;
const F_SEAL_GROW = 0x0004;
const F_SEAL_WRITE = 0x0008;
const SEALS_REQUIRED = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

const EMPTY = Buffer.alloc(0);

/**
 * Maps a sealed memfd of `length` bytes privately (MAP_PRIVATE, copy on write): a
 * Buffer over the memfd's pages, no copy. Refused before anything is mapped:
 * a file that is not a memfd (ERR_STREAM_FD_KIND), a memfd without
 * F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE (ERR_STREAM_MEMFD_UNSEALED), one whose size
 * is not `length` (ERR_STREAM_MEMFD_SIZE). The fd stays the caller's (the mapping
 * does not need it open). Release the Buffer with releaseMapping() when done.
 */
export function mapSealedMemfd(fd: number, length: number): Buffer {
  if (!Number.isSafeInteger(length) || length < 0) throw BackendTransferError.invalidArgument(`length must be a safe integer >= 0, not ${String(length)}`);
  let seals: number;
  try {
    seals = native.fcntl_get_seals(fd);
  } catch (err) {
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_KIND, `fd ${fd} is not a memfd (F_GET_SEALS: ${(err as { code?: string }).code ?? String(err)})`, { details: { fd } });
  }
  if ((seals & SEALS_REQUIRED) !== SEALS_REQUIRED) {
    throw new BackendTransferError(ErrorCodes.ERR_STREAM_MEMFD_UNSEALED, `memfd lacks seals: has 0x${seals.toString(16)}, needs F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE before it is mapped`, {
      details: { fd, seals },
    });
  }
  const size = native.fstat(fd).size;
  if (size !== length) throw new BackendTransferError(ErrorCodes.ERR_STREAM_MEMFD_SIZE, `memfd holds ${size} bytes, expected ${length}`, { details: { fd, size, length } });
  if (length === 0) return EMPTY;
  return native.mmap_memfd(fd, length);
}

/**
 * Unmaps a Buffer from mapSealedMemfd() now, after detaching it (every view of it
 * then has length 0). true if it was unmapped by this call, false if it had been
 * released before (or is the empty Buffer of a 0-byte memfd). Anything else that
 * is not such a mapping is ERR_INVALID_ARGUMENT.
 */
export function releaseMapping(buf: Buffer): boolean {
  if (buf === EMPTY) return false;
  return native.munmap_buffer(buf);
}

/** Whether a Buffer's memory is gone (released mapping: its ArrayBuffer is detached). */
export function isReleased(buf: Uint8Array): boolean {
  return buf.buffer.byteLength === 0 && buf !== EMPTY;
}

/** Mappings made by mapSealedMemfd() and not yet unmapped: count and bytes. */
export function mappingStats(): { mappings: number; bytes: number } {
  return native.mapping_stats();
}
