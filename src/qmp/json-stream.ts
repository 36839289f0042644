// Splits a byte stream into top-level JSON objects, as QEMU's own json-streamer
// does: QMP puts no framing around its messages (QEMU ends each with "\r\n", but
// `-mon pretty=on` spreads one over many lines). Scans bytes, not text: the
// structural characters are ASCII and never occur inside a multi-byte UTF-8
// sequence, so a chunk may end anywhere.

export class JsonStreamError extends Error {
  constructor(
    readonly kind: 'unexpected-byte' | 'too-large',
    message: string,
    /** The first bytes where it went wrong, for error messages. */
    readonly sample: string,
  ) {
    super(message);
  }
}

const EMPTY = Buffer.alloc(0);

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

export class JsonObjectSplitter {
  readonly maxBytes: number;
  #buf: Buffer = EMPTY;
  /** Next byte of #buf to scan. */
  #pos = 0;
  /** Where the object being scanned starts in #buf, or -1 between objects. */
  #start = -1;
  #depth = 0;
  #inString = false;
  #escape = false;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  /** Bytes held for an object not complete yet. */
  get pending(): number {
    return this.#start < 0 ? 0 : this.#buf.length - this.#start;
  }

  /**
   * Feeds bytes; returns the complete objects they finish, each as its own bytes.
   * Throws JsonStreamError for anything but whitespace between objects, or an
   * object over maxBytes. After a throw the splitter is unusable.
   */
  push(chunk: Uint8Array): Buffer[] {
    const out: Buffer[] = [];
    if (chunk.length === 0) return out;
    const data = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    // Keep only the unfinished object, then append (the chunk's memory is the socket's).
    if (this.#start < 0) {
      this.#buf = Buffer.from(data);
      this.#pos = 0;
    } else {
      const kept = this.#buf.subarray(this.#start);
      this.#buf = Buffer.concat([kept, data]);
      this.#pos -= this.#start;
      this.#start = 0;
    }
    const buf = this.#buf;
    const n = buf.length;
    let i = this.#pos;
    while (i < n) {
      const b = buf[i]!;
      if (this.#start < 0) {
        if (isSpace(b)) {
          i++;
          continue;
        }
        if (b !== 0x7b /* { */) {
          throw new JsonStreamError('unexpected-byte', `expected a JSON object, got byte 0x${b.toString(16).padStart(2, '0')}`, sample(buf, i));
        }
        this.#start = i;
        this.#depth = 1;
        this.#inString = false;
        this.#escape = false;
        i++;
        continue;
      }
      if (this.#inString) {
        if (this.#escape) this.#escape = false;
        else if (b === 0x5c /* \ */) this.#escape = true;
        else if (b === 0x22 /* " */) this.#inString = false;
      } else if (b === 0x22) this.#inString = true;
      else if (b === 0x7b || b === 0x5b /* [ */) this.#depth++;
      else if (b === 0x7d /* } */ || b === 0x5d /* ] */) {
        if (--this.#depth === 0) {
          out.push(buf.subarray(this.#start, i + 1));
          this.#start = -1;
        }
      }
      i++;
      if (this.#start >= 0 && i - this.#start > this.maxBytes) {
        throw new JsonStreamError('too-large', `a message is larger than ${this.maxBytes} bytes`, sample(buf, this.#start));
      }
    }
    this.#pos = i;
    if (this.#start < 0) {
      this.#buf = EMPTY;
      this.#pos = 0;
    }
    return out;
  }
}

function sample(buf: Buffer, at: number): string {
  return JSON.stringify(buf.subarray(at, at + 48).toString('latin1'));
}
