// Channels a stream is written to and read from: an FdSocket (bytes and fds), or
// any byte channel (a file, a TCP socket, a pipe) for a state-only stream.
import type { Writable, Readable } from 'node:stream';
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFds, dupFd } from '../fd/index.js';
import type { FdSocket } from '../transport/fd-socket.js';
import type { StreamItem, StreamReader } from './reader.js';

/** Where a StreamWriter puts frames. */
export interface StreamChannel {
  /** Whether fds can ride on the bytes (an AF_UNIX socket). */
  readonly canPassFds: boolean;
  /**
   * Writes `head` with `fds` on its bytes, then `rest` (no fds), in order.
   * Resolves when all of it was taken by the channel.
   */
  writeFrame(head: Uint8Array, rest: readonly Uint8Array[], fds: readonly number[]): Promise<void>;
}

/** A stream over an FdSocket: fds ride on each frame's own bytes. */
export function fdSocketChannel(sock: FdSocket): StreamChannel {
  return {
    canPassFds: true,
    writeFrame(head, rest, fds) {
      // A frame with fds is one message: if the kernel refuses the fds (EBADF,
      // ETOOMANYREFS), none of the frame goes, instead of its rest without its head.
      // Without fds too, the header and the body go as one gather list: one
      // sendmsg per frame rather than one for the 20-byte header and one for the
      // body (which also woke the receiver for the header alone).
      if (rest.length > 0) return sock.send([head, ...rest], fds);
      return sock.send(head, fds);
    },
  };
}

/** A state-only stream over a Node writable (fs.WriteStream, net.Socket, a pipe). */
export function writableChannel(w: Writable): StreamChannel {
  return {
    canPassFds: false,
    async writeFrame(head, rest, fds) {
      if (fds.length > 0) {
        throw new BackendTransferError(ErrorCodes.ERR_CHANNEL_CANNOT_PASS_FDS, `this channel cannot carry fds (${fds.length} to send)`);
      }
      for (const part of [head, ...rest]) {
        if (part.length === 0) continue;
        if (!w.write(part)) {
          await new Promise<void>((resolve, reject) => {
            const onDrain = () => {
              w.off('error', onError);
              resolve();
            };
            const onError = (e: Error) => {
              w.off('drain', onDrain);
              reject(e);
            };
            w.once('drain', onDrain);
            w.once('error', onError);
          });
        }
      }
    },
  };
}

/**
 * A channel that keeps everything in memory, each frame's fds (its own duplicates,
 * as SCM_RIGHTS would make) with its bytes: for tests and captures. close() closes them.
 */
export class MemoryChannel implements StreamChannel {
  readonly canPassFds: boolean;
  readonly writes: { bytes: Buffer; fds: number[] }[] = [];
  constructor(canPassFds = true) {
    this.canPassFds = canPassFds;
  }
  async writeFrame(head: Uint8Array, rest: readonly Uint8Array[], fds: readonly number[]): Promise<void> {
    if (fds.length > 0 && !this.canPassFds) throw new BackendTransferError(ErrorCodes.ERR_CHANNEL_CANNOT_PASS_FDS, 'this channel cannot carry fds');
    this.writes.push({ bytes: Buffer.concat([head, ...rest]), fds: fds.map((fd) => dupFd(fd)) });
  }
  /** All bytes written so far. */
  bytes(): Buffer {
    return Buffer.concat(this.writes.map((w) => w.bytes));
  }
  /** Closes the duplicated fds it still holds. */
  close(): void {
    for (const w of this.writes) closeFds(w.fds.splice(0));
  }
}

/** Feeds a Node readable (a file, a TCP socket) into `feed` chunk by chunk; resolves at its end. */
export async function pumpReadable(r: Readable, feed: (chunk: Buffer) => void): Promise<void> {
  for await (const chunk of r) feed(chunk as Buffer);
}

/**
 * Reads a stream from an FdSocket into `reader`, in push mode: each chunk's bytes
 * and fds go to reader.feed(), the items to `onItems` (synchronously, in order).
 * Resolves after the stream's EOF frame (or at the socket's EOF, if reader.end()
 * accepts it there); rejects with the first error (the reader's, the socket's, or what onItems threw), having closed
 * the reader's fds. onItems may return 'stop' to stop reading (the socket stays open).
 */
export function pumpFdSocket(sock: FdSocket, reader: StreamReader, onItems: (items: StreamItem[]) => void | 'stop'): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let done = false;
    const finish = (err: unknown) => {
      if (done) return;
      done = true;
      if (err) {
        reader.close();
        reject(err);
      } else resolve();
    };
    sock
      .consume(
        (chunk) => {
          if (done) {
            closeFds(chunk.fds);
            return;
          }
          let items: StreamItem[];
          try {
            items = reader.feed(chunk.data, chunk.fds);
          } catch (err) {
            finish(err);
            sock.pause();
            return;
          }
          let verdict: void | 'stop';
          try {
            verdict = onItems(items);
          } catch (err) {
            finish(err);
            sock.pause();
            return;
          }
          // The EOF frame ends this direction; the socket may still carry the other one.
          if (verdict === 'stop' || reader.finished) {
            sock.pause();
            finish(null);
          }
        },
        { target: () => reader.readTarget() },
      )
      .then(
        () => {
          if (done) return;
          try {
            reader.end();
            finish(null);
          } catch (err) {
            finish(err);
          }
        },
        (err: unknown) => finish(err),
      );
  });
}
