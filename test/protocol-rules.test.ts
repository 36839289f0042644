// Rules of docs/stream-format.md that live above the reader: the fd budget's
// reserve, HELLO's canPassFds, the ACK order the source requires, and the source
// closing after ABORT without waiting for the target's EOF. The source is the
// library's sendHandover; the target is written here by hand from the spec, on
// a real socket.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ALL_FEATURES,
  AckStage,
  FD_BUDGET_RESERVE,
  FdServer,
  GenericSource,
  StreamReader,
  StreamWriter,
  answerOffers,
  computePlan,
  fdSocketChannel,
  native,
  sendHandover,
  type Hello,
  type StreamItem,
} from '../src/index.js';
import { ItemQueue } from '../src/handover/items.js';
import { closeSectionItem } from '../src/handover/util.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();
const dir = mkdtempSync(join(tmpdir(), 'bt-rules-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

describe('the fd budget', () => {
  const hello: Hello = {
    minVersion: 1,
    maxVersion: 1,
    features: ALL_FEATURES,
    canPassFds: true,
    fdBudget: 0xffffffff,
    offers: [{ kind: 'generic', id: 'g', instance: 0, version: 1, fdCount: 2, wantsFds: true, required: false }],
    info: null,
  };
  const welcomeWith = (fdBudget: number) => answerOffers(hello, () => ({ minVersion: 1, maxVersion: 1, acceptFds: true }), { canPassFds: true, features: ALL_FEATURES, fdBudget });

  it(`needs totalFds + ${FD_BUDGET_RESERVE} free slots at the target (0xffffffff: unknown, no check)`, () => {
    expect(FD_BUDGET_RESERVE).toBe(16);
    expect(computePlan(hello, welcomeWith(2 + 16)).totalFds).toBe(2);
    expect(() => computePlan(hello, welcomeWith(2 + 15))).toThrow(expect.objectContaining({ code: 'ERR_FD_BUDGET' }));
    expect(computePlan(hello, welcomeWith(0xffffffff)).totalFds).toBe(2);
  });

  it('a plan without fds needs no budget at all', () => {
    const stateOnly = { ...hello, offers: [{ ...hello.offers[0]!, wantsFds: false }] };
    const w = answerOffers(stateOnly, () => ({ minVersion: 1, maxVersion: 1, acceptFds: true }), { canPassFds: true, features: ALL_FEATURES, fdBudget: 0 });
    expect(computePlan(stateOnly, w).totalFds).toBe(0);
  });
});

/** A target written from the spec: answers HELLO, reads to END_OF_STATE, then runs `then`. */
async function handTarget(path: string, then: (w: StreamWriter, q: ItemQueue, seen: StreamItem[]) => Promise<void>): Promise<StreamItem[]> {
  const server = FdServer.listen(path);
  const sock = await server.accept();
  server.close();
  const reader = new StreamReader({ role: 'target' });
  const seen: StreamItem[] = [];
  const q = new ItemQueue(sock, reader, (it) => seen.push(it));
  const w = new StreamWriter(fdSocketChannel(sock));
  try {
    const h = await q.next(5000, 'HELLO');
    if (h.type !== 'hello') throw new Error(`got ${h.type}`);
    const welcome = answerOffers(h.hello, (o) => ({ kind: o.kind, minVersion: 1, maxVersion: 1, acceptFds: true }), {
      canPassFds: h.probe === 'ok',
      features: ALL_FEATURES,
      fdBudget: 1000,
      info: { probe: h.probe },
    });
    reader.setWelcome(welcome);
    await w.welcome(welcome);
    for (;;) {
      const it = await q.next(5000, 'sections');
      if (it.type === 'end-of-state') break;
    }
    await then(w, q, seen);
    return seen;
  } finally {
    q.drain();
    for (const it of seen) closeSectionItem(it);
    reader.close();
    sock.close();
  }
}

describe('a live source, as the spec describes it', () => {
  it('sets canPassFds 1 in HELLO also with backendTransfer: false (no offer wants fds, no probe)', async () => {
    const path = join(dir, `t${n++}.sock`);
    const efd = native.eventfd(0);
    try {
      const target = handTarget(path, async (w, q) => {
        await w.ack(AckStage.LOADED);
        await w.ack(AckStage.VERIFIED);
        await w.ack(AckStage.ADOPTED);
        expect((await q.next(5000, 'COMMIT')).type).toBe('commit');
        await w.ack(AckStage.COMMITTED);
        expect((await q.next(5000, 'EOF')).type).toBe('eof');
        await w.eof();
      });
      await new Promise((r) => setTimeout(r, 30));
      const res = await sendHandover({
        socket: path,
        backendTransfer: false,
        warmUp: false,
        collectGarbage: false,
        devices: [new GenericSource({ id: 'g', transfer: true, fds: [{ name: 'ev', fd: efd, kind: 'eventfd' }] })],
      });
      expect(res.devices[0]).toMatchObject({ id: 'g', outcome: 'state-only', fds: 0 });
      const hello = (await target).find((i) => i.type === 'hello') as Extract<StreamItem, { type: 'hello' }>;
      expect(hello.hello.canPassFds).toBe(true);
      expect(hello.hello.offers[0]).toMatchObject({ id: 'g', fdCount: 1, wantsFds: false });
      expect(hello.probe).toBe('none');
    } finally {
      native.close(efd);
    }
  });

  it('requires ACK(LOADED) before ACK(VERIFIED): out of order it fails, sends ABORT and EOF, and closes without waiting for the target', async () => {
    const path = join(dir, `t${n++}.sock`);
    let sawAbort: StreamItem | null = null;
    let sawEof = false;
    const target = handTarget(path, async (w, q) => {
      await w.ack(AckStage.VERIFIED); // LOADED skipped
      // The source must now abort and hang up, although this side sends no EOF and keeps its socket open.
      const a = await q.next(5000, 'ABORT');
      sawAbort = a;
      const e = await q.next(5000, 'EOF').catch((err: { code: string }) => err);
      sawEof = (e as StreamItem).type === 'eof';
      // The source closes its side: this side's wait ends with the peer gone, not a timeout.
      const end = await q.next(5000, 'the end').catch((err: { code: string }) => err.code);
      expect(end).toBe('ERR_PEER_CLOSED');
    });
    await new Promise((r) => setTimeout(r, 30));
    const source = sendHandover({ socket: path, backendTransfer: true, warmUp: false, collectGarbage: false, devices: [], state: Buffer.from('state') });
    await expect(source).rejects.toMatchObject({ code: 'ERR_STREAM_PROTOCOL', message: expect.stringContaining('ACK(LOADED)') });
    await target;
    expect(sawAbort).toMatchObject({ type: 'abort', abort: { code: 'ERR_STREAM_PROTOCOL' } });
    expect(sawEof).toBe(true);
  });
});
