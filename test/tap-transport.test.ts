// TAP queue fds cross processes like any other fd: a multi-queue TAP with
// vnet_hdr opened by a child inside a network namespace this test creates.
import { writeSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { MessageReader, closeFds, inspectFd, native } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { Peers } from './helpers/child.js';
import { netnsUnavailable, skipUnless } from './helpers/env.js';
import { createNetns, deleteNetns, ip, linkInfo, testFrame } from './helpers/netns.js';

trackFdLeaks();
const peers = new Peers();
const namespaces: string[] = [];
afterEach(async () => {
  await peers.disposeAll();
  for (const ns of namespaces.splice(0)) deleteNetns(ns);
});

describe('TAP fds over FdSocket', () => {
  it('a multi-queue vnet_hdr TAP from a child in a network namespace arrives as a working TAP', async (ctx) => {
    skipUnless(ctx, netnsUnavailable());
    const ns = createNetns('tap');
    namespaces.push(ns);
    const peer = peers.spawn('send-kinds', ['tap'], { socket: 'stream', netns: ns });
    const reader = new MessageReader(peer.sock!);
    let queues: number[] = [];
    let meta: { ifname: string; ifindex: number } | null = null;
    for (;;) {
      const msg = await reader.read();
      expect(msg).not.toBeNull();
      const m = JSON.parse(msg!.data.toString()) as { kind: string; ifname: string; ifindex: number };
      if (m.kind === 'tap') {
        queues = msg!.fds;
        meta = m;
      } else closeFds(msg!.fds);
      if (m.kind === 'done') break;
    }
    expect(queues.length).toBe(2);
    for (const q of queues) {
      const info = inspectFd(q);
      expect(info.kind).toBe('tap');
      expect(info.tun!.name).toBe('bt0');
      const want = native.IFF_TAP | native.IFF_NO_PI | native.IFF_VNET_HDR | native.IFF_MULTI_QUEUE;
      expect(info.tun!.flags & want).toBe(want);
      expect(native.tungetvnethdrsz(q)).toBe(10);
    }
    // The device lives in the child's namespace; our fds drive it from outside.
    ip('-n', ns, 'link', 'set', 'bt0', 'up');
    const before = linkInfo(ns, 'bt0');
    expect(before.ifindex).toBe(meta!.ifindex);
    for (const q of queues) writeSync(q, testFrame(10, 1));
    const after = linkInfo(ns, 'bt0');
    expect(after.stats64.rx.packets - before.stats64.rx.packets).toBe(2);
    closeFds(queues);
    peer.sock!.close();
    await peer.exited();
  });
});
