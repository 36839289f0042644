// A section whose payload (an iterable) fails: the writer lets nothing of the
// state follow (no later section, no END_OF_STATE), only ABORT, then EOF, and a
// reader of those bytes reports the ABORT, also when it comes inside the open
// section (docs/stream-format.md, "Order" and "The session", step 7).
import { describe, expect, it } from 'vitest';
import { Features, MemoryChannel, StreamReader, StreamWriter, type Hello, type Plan } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();

const hello: Hello = {
  minVersion: 1,
  maxVersion: 1,
  features: Features.BODY_CRC,
  canPassFds: false,
  fdBudget: 0xffffffff,
  offers: [
    { kind: 'state', id: 'a', instance: 0, version: 1, fdCount: 0, wantsFds: false, required: true },
    { kind: 'state', id: 'b', instance: 0, version: 1, fdCount: 0, wantsFds: false, required: true },
  ],
  info: null,
};
const plan: Plan = {
  version: 1,
  features: Features.BODY_CRC,
  totalFds: 0,
  devices: [
    { kind: 'state', id: 'a', instance: 0, version: 1, withFds: false, fdCount: 0 },
    { kind: 'state', id: 'b', instance: 0, version: 1, withFds: false, fdCount: 0 },
  ],
};

async function* failing(partsBefore: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < partsBefore; i++) yield Buffer.alloc(100, i);
  throw new Error('state source broke');
}

describe('a section whose payload fails', () => {
  for (const [partsBefore, frames] of [
    [0, []],
    [1, []], // one part is held back until the next one (or the end) says whether it is the last
    [3, ['start', 'part']],
  ] as const) {
    it(`after ${partsBefore} part(s): no later section or END_OF_STATE is written, ABORT and EOF are, and a reader reports the ABORT`, async () => {
      const ch = new MemoryChannel(false);
      const w = new StreamWriter(ch, { partSize: 100 });
      await w.hello(hello);
      await w.plan(plan);
      const a = w.section({ id: 'a', instance: 0, version: 1 }, [], failing(partsBefore));
      const b = w.section({ id: 'b', instance: 0, version: 1 }, [], Buffer.from('fine'));
      const eos = w.endOfState();
      await expect(a).rejects.toThrow('state source broke');
      await expect(b).rejects.toMatchObject({ code: 'ERR_STREAM_WRITER_FAILED' });
      await expect(eos).rejects.toMatchObject({ code: 'ERR_STREAM_WRITER_FAILED' });
      await w.abort('ERR_SYSTEM', 'state source broke');
      await w.eof();
      const r = new StreamReader({ role: 'inspect' });
      const items = r.feed(ch.bytes());
      r.end();
      expect(items.map((i) => (i.type === 'section' ? i.frame : i.type))).toEqual(['hello', 'plan', ...frames, 'abort', 'eof']);
      expect(items.at(-2)).toMatchObject({ type: 'abort', abort: { code: 'ERR_SYSTEM', reason: 'state source broke' } });
    });
  }

  it('a refusal before anything is written (a device not in the plan) leaves the stream usable', async () => {
    const ch = new MemoryChannel(false);
    const w = new StreamWriter(ch);
    await w.hello(hello);
    await w.plan(plan);
    await expect(w.section({ id: 'zz', instance: 0, version: 1 }, [], Buffer.from('x'))).rejects.toMatchObject({ code: 'ERR_STREAM_NOT_NEGOTIATED' });
    await w.section({ id: 'a', instance: 0, version: 1 }, [], Buffer.from('x'));
    await w.section({ id: 'b', instance: 0, version: 1 }, [], Buffer.from('y'));
    await w.endOfState();
    await w.eof();
    const r = new StreamReader({ role: 'inspect' });
    expect(r.feed(ch.bytes()).map((i) => i.type)).toEqual(['hello', 'plan', 'section', 'section', 'end-of-state', 'eof']);
  });
});
