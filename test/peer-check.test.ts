// The peer check at connect and accept (SO_PEERCRED): by default the peer must
// have our uid; allow-lists of uids or pids widen or narrow that.
import { afterEach, describe, expect, it } from 'vitest';
import { FdServer, FdSocket, type RejectedPeer } from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';
import { Peers } from './helpers/child.js';
import { isRoot, skipUnless } from './helpers/env.js';

trackFdLeaks();
const peers = new Peers();
afterEach(() => peers.disposeAll());

const NOBODY = 65534;
const needRoot = isRoot ? null : 'needs root to start a peer under another uid (nobody)';
let n = 0;
const address = () => `\0bt-peer-check-${process.pid}-${n++}`;
/** The same address as a child's argument ('@' for the leading NUL). */
const arg = (addr: string) => `@${addr.slice(1)}`;

describe('peer credentials', () => {
  it('a peer with another uid is refused at accept; the server goes on', async (ctx) => {
    skipUnless(ctx, needRoot);
    const addr = address();
    const server = FdServer.listen(addr);
    const rejected = new Promise<RejectedPeer>((res) => server.once('reject', res));
    const peer = peers.spawn('connect', [arg(addr), '"any"'], { uid: NOBODY, gid: NOBODY });
    const r = await rejected;
    expect(r.error.code).toBe('ERR_PEER_REJECTED');
    expect(r.cred?.uid).toBe(NOBODY);
    expect(r.error.message).toMatch(/uid 65534/);
    // The child got in at the kernel level and then saw the connection closed on it.
    await peer.waitFor('connected');
    const ev = await Promise.race([peer.waitFor('eof'), peer.waitFor('read-error')]);
    expect(['eof', 'read-error']).toContain(ev.event);
    expect(server.rejected).toBe(1);
    // Our own uid still gets in.
    const [c, s] = await Promise.all([FdSocket.connect(addr), server.accept()]);
    c.close();
    s.close();
    server.close();
  });

  it('the connecting side refuses a listener with another uid', async (ctx) => {
    skipUnless(ctx, needRoot);
    const addr = address();
    const server = FdServer.listen(addr, { peer: 'any' });
    const peer = peers.spawn('connect', [arg(addr)], { uid: NOBODY, gid: NOBODY }); // default policy: own uid only
    const ev = await peer.waitFor('error');
    expect(ev.code).toBe('ERR_PEER_REJECTED');
    expect(String(ev.message)).toMatch(/peer uid 0 is not this process's uid 65534/);
    server.close();
  });

  it('an allow-list of uids admits that uid', async (ctx) => {
    skipUnless(ctx, needRoot);
    const addr = address();
    const server = FdServer.listen(addr, { peer: { uids: [NOBODY] } });
    const peer = peers.spawn('connect', [arg(addr), '"any"'], { uid: NOBODY, gid: NOBODY });
    const s = await server.accept();
    expect(s.peer?.uid).toBe(NOBODY);
    expect(s.peer?.pid).toBe(peer.proc.pid);
    await peer.waitFor('connected');
    s.close();
    await peer.waitFor('eof');
    server.close();
  });

  it('an allow-list of pids admits exactly that process', async () => {
    const addr = address();
    const server = FdServer.listen(addr, { peer: { pids: [process.pid] } });
    const [c, s] = await Promise.all([FdSocket.connect(addr), server.accept()]);
    expect(s.peer?.pid).toBe(process.pid);
    c.close();
    s.close();
    // A child is another pid: refused, even with our uid.
    const rejected = new Promise<RejectedPeer>((res) => server.once('reject', res));
    const peer = peers.spawn('connect', [arg(addr)]);
    const r = await rejected;
    expect(r.error.code).toBe('ERR_PEER_REJECTED');
    expect(r.cred?.pid).toBe(peer.proc.pid);
    server.close();
  });

  it('connect checks pids of the listener too', async () => {
    const addr = address();
    const server = FdServer.listen(addr);
    await expect(FdSocket.connect(addr, { peer: { pids: [1] } })).rejects.toMatchObject({ code: 'ERR_PEER_REJECTED' });
    server.close();
  });
});
