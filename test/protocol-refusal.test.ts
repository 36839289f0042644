// docs/stream-format.md, "Refusing a HELLO": a target that cannot accept a HELLO
// answers with its magic and a NACK in place of WELCOME, then EOF; the source
// reports the target's code and reason (ERR_HANDOVER_REFUSED), not a protocol error.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GenericSource, GenericTarget, MAGIC, StreamReader, native, receiveHandover, sendHandover, type StreamItem } from '../src/index.js';
import { encodeHeader } from '../src/stream/codec.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'bt-refusal-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('a target refuses a HELLO with NACK in place of WELCOME', () => {
  it("the source reports the target's code and reason", async () => {
    const path = join(dir, 'a.sock');
    const target = receiveHandover({ socket: path, accept: [new GenericTarget({ id: 'x' })], backendTransfer: true, warmUp: false, collectGarbage: false });
    target.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
    const efd = native.eventfd(0);
    try {
      // A device id longer than the target's 4096-byte str limit: the target's reader rejects the HELLO.
      const source = sendHandover({
        socket: path,
        backendTransfer: true,
        warmUp: false,
        collectGarbage: false,
        devices: [new GenericSource({ id: 'd'.repeat(5000), transfer: true, fds: [{ name: 'ev', fd: efd, kind: 'eventfd' }] })],
      });
      await expect(source).rejects.toMatchObject({ code: 'ERR_HANDOVER_REFUSED', details: { code: 'ERR_STREAM_TOO_LARGE', phase: 'handshake' } });
      await expect(target).rejects.toMatchObject({ code: 'ERR_STREAM_TOO_LARGE' });
    } finally {
      native.close(efd);
    }
  });

  it('the return path reader takes MAGIC NACK EOF as a refusal, and nothing but EOF after it', () => {
    const nack = (code: string): Buffer => {
      const c = Buffer.from(code);
      const body = Buffer.alloc(2 + c.length + 2 + 4);
      body.writeUInt16LE(c.length, 0);
      c.copy(body, 2);
      body.writeUInt16LE(0, 2 + c.length);
      body.writeUInt32LE(0xffffffff, 4 + c.length);
      const trailer = Buffer.alloc(4);
      return Buffer.concat([encodeHeader({ type: 0x31, flags: 0, bodyLength: body.length, fdCount: 0, firstFdSeq: 0 }), body, trailer]);
    };
    const eof = Buffer.concat([encodeHeader({ type: 0x7f, flags: 0, bodyLength: 0, fdCount: 0, firstFdSeq: 0 }), Buffer.alloc(4)]);
    const ok = new StreamReader({ role: 'source' });
    const items: StreamItem[] = ok.feed(Buffer.concat([MAGIC, nack('ERR_STREAM_VERSION'), eof]));
    expect(items.map((i) => i.type)).toEqual(['nack', 'eof']);
    expect(items[0]).toMatchObject({ nack: { code: 'ERR_STREAM_VERSION' } });
    const twice = new StreamReader({ role: 'source' });
    expect(() => twice.feed(Buffer.concat([MAGIC, nack('A'), nack('B')]))).toThrow(expect.objectContaining({ code: 'ERR_STREAM_PROTOCOL' }));
  });
});
