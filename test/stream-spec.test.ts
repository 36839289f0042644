// The spec and the code agree: the examples in docs/stream-format.md (laid out by
// hand from the spec's tables) decode with the library, and the library's writer
// produces the very same bytes for the same frames.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { AckStage, Features, MemoryChannel, StreamReader, StreamWriter, closeFds, inspectFd, native, type SectionItem, type StreamItem } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { decodeHeader } from '../src/stream/codec.js';

trackFdLeaks();

const doc = readFileSync(fileURLToPath(new URL('../docs/stream-format.md', import.meta.url)), 'utf8');

function example(name: string): Buffer {
  const m = new RegExp(`<!-- example: ${name} -->\\n\`\`\`hex\\n([\\s\\S]*?)\`\`\``).exec(doc);
  if (!m) throw new Error(`example ${name} not found in docs/stream-format.md`);
  const bytes: number[] = [];
  for (const line of m[1]!.split('\n')) {
    const hex = line.split(/\s{2,}/)[0]!.trim();
    if (!hex) continue;
    for (const tok of hex.split(' ')) bytes.push(parseInt(tok, 16));
  }
  return Buffer.from(bytes);
}

/**
 * Feeds an example's bytes to `r` in two reads, as a socket delivers them: `fd`
 * arrives with the bytes of the frame that declares fds, and the first read ends
 * with that frame.
 */
function feedWithFd(r: StreamReader, bytes: Buffer, fd: number): StreamItem[] {
  let end = 8;
  for (let off = 8; off < bytes.length;) {
    const h = decodeHeader(bytes, off);
    off += 20 + h.bodyLength + 4;
    if (h.fdCount > 0) end = off;
  }
  return [...r.feed(bytes.subarray(0, end), [fd]), ...r.feed(bytes.subarray(end))];
}

describe('docs/stream-format.md examples', () => {
  it('recorded-state-only: decodes, and the writer reproduces it byte for byte', async () => {
    const bytes = example('recorded-state-only');
    const items = new StreamReader({ role: 'inspect' }).feed(bytes);
    expect(items.map((i) => i.type)).toEqual(['hello', 'plan', 'section', 'end-of-state', 'eof']);
    const hello = (items[0] as Extract<(typeof items)[0], { type: 'hello' }>).hello;
    expect(hello).toEqual({
      minVersion: 1,
      maxVersion: 1,
      features: Features.BODY_CRC,
      canPassFds: false,
      fdBudget: 0xffffffff,
      probe: null,
      offers: [{ kind: 'state', id: 'cpu0', instance: 0, version: 1, fdCount: 0, wantsFds: false, required: true }],
      info: null,
    });
    const plan = (items[1] as Extract<(typeof items)[0], { type: 'plan' }>).plan;
    expect(plan).toEqual({ version: 1, features: Features.BODY_CRC, totalFds: 0, devices: [{ kind: 'state', id: 'cpu0', instance: 0, version: 1, withFds: false, fdCount: 0 }] });
    const s = items[2] as SectionItem;
    expect([s.frame, s.sectionId, s.idstr, s.versionId, s.payload.toString()]).toEqual(['full', 1, 'cpu0', 1, 'regs!']);

    const ch = new MemoryChannel(false);
    const w = new StreamWriter(ch);
    await w.hello(hello);
    await w.plan(plan);
    await w.section({ id: 'cpu0', instance: 0, version: 1 }, [], Buffer.from('regs!'));
    await w.endOfState();
    await w.eof();
    expect(ch.bytes().toString('hex')).toBe(bytes.toString('hex'));
  });

  it('section-with-fd: the eventfd rides on the section frame and comes out with it', async () => {
    const bytes = example('section-with-fd');
    const efd = native.eventfd(7);
    const r = new StreamReader({ role: 'inspect' });
    const items = feedWithFd(r, bytes, native.dup(efd));
    const s = items.find((i): i is SectionItem => i.type === 'section')!;
    expect(s.attachments.map((a) => ({ kind: a.kind, name: a.name, meta: a.meta }))).toEqual([{ kind: 'eventfd', name: 'kick0', meta: { queue: 0 } }]);
    expect(inspectFd(s.attachments[0]!.fd).kind).toBe('eventfd');
    r.end();

    const plan = (items[1] as Extract<(typeof items)[0], { type: 'plan' }>).plan;
    const ch = new MemoryChannel(true);
    const w = new StreamWriter(ch);
    await w.hello((items[0] as Extract<(typeof items)[0], { type: 'hello' }>).hello);
    await w.plan(plan);
    await w.section({ id: 'kick', instance: 0, version: 1 }, [{ kind: 'eventfd', name: 'kick0', meta: { queue: 0 }, fd: efd }]);
    await w.endOfState();
    await w.eof();
    expect(ch.bytes().toString('hex')).toBe(bytes.toString('hex'));
    // The fd went with the section frame (the third write), and with no other.
    expect(ch.writes.map((x) => x.fds.length)).toEqual([0, 0, 1, 0, 0]);
    closeFds([efd, s.attachments[0]!.fd]);
    ch.close();
  });

  it('return-path: decodes, and the writer reproduces it', async () => {
    const bytes = example('return-path');
    const items = new StreamReader({ role: 'source' }).feed(bytes);
    expect(items.map((i) => i.type)).toEqual(['welcome', 'ack', 'nack', 'eof']);
    const welcome = (items[0] as Extract<(typeof items)[0], { type: 'welcome' }>).welcome;
    expect(welcome.answers).toEqual([{ id: 'cpu0', instance: 0, decision: 1, reason: 0, minVersion: 1, maxVersion: 2 }]);
    expect(items[2]).toMatchObject({ nack: { code: 'ERR_STREAM_CRC', reason: 'bad', sectionId: 1 } });
    const ch = new MemoryChannel();
    const w = new StreamWriter(ch);
    await w.welcome(welcome);
    await w.ack(AckStage.LOADED, 'ok');
    await w.nack('ERR_STREAM_CRC', 'bad', 1);
    await w.eof();
    expect(ch.bytes().toString('hex')).toBe(bytes.toString('hex'));
  });
  it('staged: the eventfd rides on the STAGE frame before FREEZE; the section after it carries only state', async () => {
    const bytes = example('staged');
    const efd = native.eventfd(3);
    const r = new StreamReader({ role: 'inspect' });
    const items = feedWithFd(r, bytes, native.dup(efd));
    expect(items.map((i) => i.type)).toEqual(['hello', 'plan', 'stage', 'freeze', 'section', 'end-of-state', 'eof']);
    const st = items[2] as Extract<(typeof items)[0], { type: 'stage' }>;
    expect(st).toMatchObject({ sectionId: 1, restage: false, afterFreeze: false });
    expect(st.payload.toString()).toBe('cfg');
    expect(st.attachments.map((a) => ({ kind: a.kind, name: a.name, meta: a.meta }))).toEqual([{ kind: 'eventfd', name: 'kick0', meta: { queue: 0 } }]);
    expect(inspectFd(st.attachments[0]!.fd).kind).toBe('eventfd');
    expect(items[3]).toMatchObject({ freeze: { dropped: [] } });
    const sec = items[4] as SectionItem;
    expect(sec.attachments).toEqual([]);
    expect(sec.payload.toString()).toBe('idx=7');
    r.end();

    const ch = new MemoryChannel(true);
    const w = new StreamWriter(ch);
    await w.hello((items[0] as Extract<(typeof items)[0], { type: 'hello' }>).hello);
    await w.plan((items[1] as Extract<(typeof items)[0], { type: 'plan' }>).plan);
    await w.stage({ id: 'kick', instance: 0, version: 1 }, [{ kind: 'eventfd', name: 'kick0', meta: { queue: 0 }, fd: efd }], Buffer.from('cfg'));
    await w.freeze([]);
    await w.section({ id: 'kick', instance: 0, version: 1 }, [], Buffer.from('idx=7'));
    await w.endOfState();
    await w.eof();
    expect(ch.bytes().toString('hex')).toBe(bytes.toString('hex'));
    expect(ch.writes.map((x) => x.fds.length)).toEqual([0, 0, 1, 0, 0, 0, 0]);
    closeFds([efd, st.attachments[0]!.fd]);
    ch.close();
  });

  it('staged-return-path: ACK(STAGED) names the STAGE frame; decodes, and the writer reproduces it', async () => {
    const bytes = example('staged-return-path');
    const items = new StreamReader({ role: 'source' }).feed(bytes);
    expect(items.map((i) => i.type)).toEqual(['welcome', 'ack', 'ack', 'eof']);
    expect(items[1]).toMatchObject({ ack: { stage: AckStage.STAGED, sectionId: 1 } });
    expect(items[2]).toMatchObject({ ack: { stage: AckStage.ADOPTED, sectionId: 0xffffffff } });
    const ch = new MemoryChannel();
    const w = new StreamWriter(ch);
    await w.welcome((items[0] as Extract<(typeof items)[0], { type: 'welcome' }>).welcome);
    await w.ack(AckStage.STAGED, '', 1);
    await w.ack(AckStage.ADOPTED);
    await w.eof();
    expect(ch.bytes().toString('hex')).toBe(bytes.toString('hex'));
    // Without STAGED in WELCOME an ACK(STAGED) is a protocol error.
    expect(() => new StreamReader({ role: 'source' }).feed(Buffer.concat([example('return-path').subarray(0, 8 + 20 + 40 + 4), bytes.subarray(8 + 20 + 40 + 4)]))).toThrow(
      /ACK\(STAGED\) without the STAGED feature/,
    );
  });
});
