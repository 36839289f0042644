// The stream between two real processes over an FdSocket: the handshake both
// ways, sections with many fds and a multi-MiB state in parts (inline and by
// memfd), the return path, commit and EOF.
import { afterEach, describe, expect, it } from 'vitest';
import { AckStage, Features, StreamReader, StreamWriter, answerOffers, closeFds, fdBudget, fdSocketChannel, pumpFdSocket, type SectionItem } from '../src/index.js';
import { counter, trackFdLeaks } from './helpers/fds.js';
import { Peers } from './helpers/child.js';

trackFdLeaks();
const peers = new Peers();
afterEach(() => peers.disposeAll());

describe.each([['inline'], ['memfd']])('a stream from a child process (%s payloads)', (mode) => {
  it('arrives whole: every fd in order, the state intact, commit and EOF', async () => {
    const devices = 4;
    const fdsEach = 60;
    const stateBytes = 3 << 20;
    const peer = peers.spawn('stream-source', [String(devices), String(fdsEach), String(stateBytes), ...(mode === 'memfd' ? ['memfd'] : [])], { socket: 'stream' });
    const sock = peer.sock!;
    const reader = new StreamReader({ role: 'target' });
    const back = new StreamWriter(fdSocketChannel(sock));
    const counters: number[] = [];
    const state: Buffer[] = [];
    const seen: string[] = [];
    let memfdParts = 0;
    const pending: Promise<void>[] = [];
    await pumpFdSocket(sock, reader, (items) => {
      for (const it of items) {
        seen.push(it.type === 'section' ? it.frame : it.type);
        if (it.type === 'hello') {
          const welcome = answerOffers(it.hello, () => ({ minVersion: 1, maxVersion: 1, acceptFds: true }), {
            canPassFds: true,
            features: Features.FDS | Features.BODY_CRC | Features.MEMFD_PAYLOAD,
            fdBudget: fdBudget(),
          });
          reader.setWelcome(welcome);
          pending.push(back.welcome(welcome));
        } else if (it.type === 'section') {
          const s = it as SectionItem;
          for (const a of s.attachments) counters.push(counter(a.fd));
          closeFds(s.attachments.map((a) => a.fd));
          if (s.idstr === 'dev0') state.push(Buffer.from(s.payload));
          if (s.payloadInMemfd) memfdParts++;
        } else if (it.type === 'end-of-state') {
          pending.push(back.ack(AckStage.LOADED, 'all sections read'));
        } else if (it.type === 'eof') {
          pending.push(back.eof());
        }
      }
    });
    await Promise.all(pending);
    expect(counters.length).toBe(devices * fdsEach);
    expect(counters.every((v, i) => v === i + 1)).toBe(true);
    const st = Buffer.concat(state);
    expect(st.length).toBe(stateBytes);
    let ok = true;
    for (let i = 0; i < st.length; i += 997) if (st[i] !== ((i * 13) & 0xff)) ok = false;
    expect(ok).toBe(true);
    if (mode === 'memfd') expect(memfdParts).toBeGreaterThan(5);
    else expect(memfdParts).toBe(0);
    expect(seen.slice(0, 2)).toEqual(['hello', 'plan']);
    expect(seen.slice(-3)).toEqual(['end-of-state', 'commit', 'eof']);
    const done = await peer.waitFor('done');
    expect(done.events).toEqual(['welcome', 'ack', 'eof']);
  });
});
