// Framed messages over an FdSocket: each message is a 12-byte header
// (u32 LE payload length, u32 LE fd count, u32 LE padding length), the padding and
// the payload, with its fds riding on the header bytes. The reader hands out whole
// messages with exactly their fds, and says so when a message ends early or
// carries the wrong number of fds.
//
// Which message an fd batch belongs to: a recvmsg on a unix socket stops right
// after the skb whose fds it detached (or inside it, when the buffer is full), so
// the fds of a chunk belong to the message holding the chunk's last byte.
import { BackendTransferError, ErrorCodes, type ErrorCode } from '../errors.js';
import { closeFds } from '../fd/index.js';
import { SCM_MAX_FD, type FdSocket, type ReceivedChunk } from './fd-socket.js';

export const MESSAGE_HEADER_SIZE = 12;

export interface Message {
  data: Buffer;
  /** Owned by the caller. */
  fds: number[];
}

export interface MessageLimits {
  /** Largest payload accepted. Default 64 MiB. */
  maxBytes?: number;
  /** Most fds accepted in one message. Default 65536. */
  maxFds?: number;
}

/** Sends one framed message: the payload is not copied, the fds ride on the header. */
export function sendMessage(sock: FdSocket, data: Uint8Array, fds: readonly number[] = []): Promise<void> {
  const pieces = Math.ceil(fds.length / SCM_MAX_FD);
  const pad = Math.max(0, pieces - MESSAGE_HEADER_SIZE);
  const head = Buffer.alloc(MESSAGE_HEADER_SIZE + pad);
  head.writeUInt32LE(data.length, 0);
  head.writeUInt32LE(fds.length, 4);
  head.writeUInt32LE(pad, 8);
  const first = sock.send(head, fds);
  if (data.length === 0) return first;
  const second = sock.send(data);
  return Promise.all([first, second]).then(() => undefined);
}

/** Reads framed messages from an FdSocket. Errors are sticky: a failed reader stays failed. */
export class MessageReader {
  readonly #sock: FdSocket;
  readonly #maxBytes: number;
  readonly #maxFds: number;
  #error: BackendTransferError | null = null;

  constructor(sock: FdSocket, limits: MessageLimits = {}) {
    this.#sock = sock;
    this.#maxBytes = limits.maxBytes ?? 64 * 1024 * 1024;
    this.#maxFds = limits.maxFds ?? 65536;
  }

  /** The next message, or null at a clean EOF between messages. */
  async read(): Promise<Message | null> {
    if (this.#error) throw this.#error;
    const head = Buffer.alloc(MESSAGE_HEADER_SIZE);
    let headLen = 0;
    let length = -1;
    let nfds = 0;
    let skip = 0; // padding still to drop
    let body: Buffer | null = null;
    let bodyLen = 0;
    const fds: number[] = [];
    const fail = (code: ErrorCode, message: string): never => {
      closeFds(fds);
      fds.length = 0;
      this.#error = new BackendTransferError(code, message);
      throw this.#error;
    };

    for (;;) {
      let chunk: ReceivedChunk | null;
      try {
        chunk = await this.#sock.read();
      } catch (err) {
        closeFds(fds);
        this.#error = BackendTransferError.fromSystem(err, 'reading a message');
        throw this.#error;
      }
      if (chunk === null) {
        if (headLen === 0) return null;
        return fail(
          ErrorCodes.ERR_MESSAGE_INCOMPLETE,
          length < 0
            ? `peer closed after ${headLen} of ${MESSAGE_HEADER_SIZE} header bytes`
            : `peer closed mid-message: ${bodyLen} of ${length} bytes and ${fds.length} of ${nfds} fds arrived (closed)`,
        );
      }
      const data = chunk.data;
      let pos = 0;
      if (length < 0) {
        const take = Math.min(MESSAGE_HEADER_SIZE - headLen, data.length);
        data.copy(head, headLen, 0, take);
        headLen += take;
        pos = take;
        if (headLen === MESSAGE_HEADER_SIZE) {
          length = head.readUInt32LE(0);
          nfds = head.readUInt32LE(4);
          skip = head.readUInt32LE(8);
          if (length > this.#maxBytes || nfds > this.#maxFds || skip > Math.ceil(nfds / SCM_MAX_FD)) {
            closeFds(chunk.fds);
            fail(ErrorCodes.ERR_MESSAGE_INVALID, `message header out of limits: ${length} bytes (max ${this.#maxBytes}), ${nfds} fds (max ${this.#maxFds}), ${skip} padding`);
          }
          body = length > 0 ? Buffer.allocUnsafe(length) : null;
        }
      }
      if (length >= 0 && skip > 0) {
        const drop = Math.min(skip, data.length - pos);
        skip -= drop;
        pos += drop;
      }
      if (length >= 0 && skip === 0 && bodyLen < length) {
        const take = Math.min(length - bodyLen, data.length - pos);
        data.copy(body!, bodyLen, pos, pos + take);
        bodyLen += take;
        pos += take;
      }
      if (pos < data.length) {
        // The rest belongs to the next message, and so do this chunk's fds.
        this.#sock.unshift({ data: data.subarray(pos), fds: chunk.fds, fdSeq: chunk.fdSeq, offset: chunk.offset + pos });
      } else {
        for (const fd of chunk.fds) fds.push(fd);
        if (fds.length > nfds && length >= 0) {
          fail(ErrorCodes.ERR_MESSAGE_INVALID, `message declared ${nfds} fds but ${fds.length} arrived (extra fds closed)`);
        }
      }
      if (length >= 0 && skip === 0 && bodyLen === length) {
        if (fds.length !== nfds) {
          fail(ErrorCodes.ERR_MESSAGE_INVALID, `message declared ${nfds} fds but ${fds.length} arrived with it (closed)`);
        }
        return { data: body ?? Buffer.alloc(0), fds };
      }
    }
  }
}
