// The fds a stream reader received and has not yet handed out, in arrival order,
// each with the stream offset its chunk ended at: a frame claims exactly its
// declared fds, numbered from its firstFdSeq, none late and none left behind
// (docs/stream-format.md, "fds"). The reader's fd ledger: every fd it holds is
// here until a frame claims it, or closed by drop().
import { BackendTransferError, ErrorCodes } from '../errors.js';
import { closeFd, closeFds } from '../fd/index.js';
import type { FrameHeader } from './codec.js';
import { FRAME_NAMES, FrameType } from './frames.js';

interface QueuedFd {
  fd: number;
  seq: number;
  /** Stream offset just past the chunk it arrived with. */
  chunkEnd: number;
}

export class FdQueue {
  #queue: QueuedFd[] = [];
  #head = 0;
  #rxSeq = 0; // seq of the next fd fed
  #claimedSeq = 0; // fds handed out (or consumed) so far
  #received = 0; // fds fed in all

  /** fds received so far, in all. */
  get received(): number {
    return this.#received;
  }

  /** fds received and not yet claimed. */
  get pending(): number {
    return this.#queue.length - this.#head;
  }

  /** The fds that arrived with a chunk ending at stream offset chunkEnd (the queue's from now on). */
  push(fds: readonly number[], chunkEnd: number): void {
    for (const fd of fds) this.#queue.push({ fd, seq: this.#rxSeq++, chunkEnd });
    this.#received += fds.length;
  }

  /** Closes every fd still queued. */
  drop(): void {
    for (let i = this.#head; i < this.#queue.length; i++) closeFd(this.#queue[i]!.fd);
    this.#queue = [];
    this.#head = 0;
  }

  /**
   * The fds of a whole frame (see claim): HELLO's probe fd may be missing (that is
   * what the probe finds out); a stream without its fds (fdsAbsent) gives -1 each.
   */
  forFrame(h: FrameHeader, frameStart: number, frameEnd: number, fdsAbsent: boolean): number[] {
    return h.type === FrameType.HELLO && h.fdCount === 1 && this.pending === 0 && !fdsAbsent
      ? this.skipProbe(h)
      : fdsAbsent
        ? new Array<number>(h.fdCount).fill(-1)
        : this.claim(h, frameStart, frameEnd);
  }

  /** HELLO's probe fd did not arrive: the sender counted it, so the numbering moves on. */
  skipProbe(h: FrameHeader): number[] {
    if (h.firstFdSeq !== this.#claimedSeq) {
      throw new BackendTransferError(ErrorCodes.ERR_STREAM_FD_SEQUENCE, `HELLO says its probe fd is #${h.firstFdSeq}, the reader is at #${this.#claimedSeq}`);
    }
    this.#claimedSeq += 1;
    return [-1];
  }

  /** The fds of the frame whose header is h, which spans [frameStart, frameEnd) of the stream: exactly its own, or an error (the caller's once returned). */
  claim(h: FrameHeader, frameStart: number, frameEnd: number): number[] {
    const available = this.#queue.length - this.#head;
    if (h.fdCount > 0 || available > 0) {
      if (h.fdCount > 0 && h.firstFdSeq !== this.#claimedSeq) {
        throw new BackendTransferError(
          ErrorCodes.ERR_STREAM_FD_SEQUENCE,
          `${FRAME_NAMES[h.type]} frame at offset ${frameStart} says its first fd is #${h.firstFdSeq}, but the reader's fd queue is at #${this.#claimedSeq}` +
            (h.firstFdSeq > this.#claimedSeq ? ` (${h.firstFdSeq - this.#claimedSeq} fd(s) lost before it)` : ` (${this.#claimedSeq - h.firstFdSeq} fd(s) too many before it)`),
          { details: { declared: h.firstFdSeq, reader: this.#claimedSeq } },
        );
      }
      if (available < h.fdCount) {
        throw new BackendTransferError(
          ErrorCodes.ERR_STREAM_FD_MISSING,
          `${FRAME_NAMES[h.type]} frame at offset ${frameStart} carries ${h.fdCount} fd(s) but only ${available} arrived with its bytes`,
          { details: { declared: h.fdCount, arrived: available } },
        );
      }
    }
    // Every fd of a frame arrives no later than the frame's last byte. The kernel
    // ends a recvmsg right after the bytes an fd batch was sent on, and may start
    // it with earlier bytes sent without fds: so a batch whose chunk ends past this
    // frame was sent on a later frame's bytes (the kernel merged the two writes),
    // and this frame's own fds are missing.
    if (h.fdCount > 0) {
      const last = this.#queue[this.#head + h.fdCount - 1]!;
      if (last.chunkEnd > frameEnd) {
        let late = 0;
        for (let i = this.#head; i < this.#head + h.fdCount; i++) if (this.#queue[i]!.chunkEnd > frameEnd) late++;
        throw new BackendTransferError(
          ErrorCodes.ERR_STREAM_FD_MISSING,
          `${FRAME_NAMES[h.type]} frame at offset ${frameStart} carries ${h.fdCount} fd(s) but ${late} of them arrived with bytes past its end (offset ${frameEnd}), on a later frame`,
          { details: { declared: h.fdCount, arrived: h.fdCount - late, late, frameEnd, chunkEnd: last.chunkEnd } },
        );
      }
    }
    const out: number[] = new Array<number>(h.fdCount);
    for (let i = 0; i < h.fdCount; i++) out[i] = this.#queue[this.#head++]!.fd;
    this.#claimedSeq += h.fdCount;
    // A queued fd whose chunk ended at or before this frame's end belongs to no later frame.
    const next = this.#queue[this.#head];
    if (next !== undefined && next.chunkEnd <= frameEnd) {
      closeFds(out);
      let extra = 0;
      for (let i = this.#head; i < this.#queue.length && this.#queue[i]!.chunkEnd <= frameEnd; i++) extra++;
      throw new BackendTransferError(
        ErrorCodes.ERR_STREAM_FD_EXTRA,
        `${extra} fd(s) arrived with the bytes of the ${FRAME_NAMES[h.type]} frame at offset ${frameStart}, which declares ${h.fdCount} (closed)`,
        { details: { declared: h.fdCount, extra } },
      );
    }
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else if (this.#head > 1024) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    return out;
  }
}
