// The demo owner's traffic: it keeps every backend it owns in use, so a handover
// that loses or mixes up a byte, a request or a frame shows in the counts.
// Chardev bytes echoed by a peer, vhost-user GET_CONFIG requests to a
// qemu-storage-daemon, TCP SYN/RST exchanges through a TAP's queues.
import { closeFds } from '../../fd/index.js';
import type { TapBackend } from '../../backends/tap.js';
import type { VhostUserFrontend } from '../../vhost-user/index.js';
import type { FdSocket } from '../../transport/fd-socket.js';
import { parseRst, tcpSyn } from './frames.js';

export const TAP_IP = '10.9.0.1';
export const peerIp = (q: number): string => `10.9.0.${10 + q}`;
export const peerMac = (q: number): string => `02:00:00:00:00:${(0x10 + q).toString(16).padStart(2, '0')}`;

export interface Traffic {
  /** Stops using the backend (at freeze). */
  stop(): Promise<void>;
  /** Uses it again (after a failed handover), from where it stopped. */
  resume(): void;
  stats(): Record<string, unknown>;
}

/** Writes the byte sequence (byte i = i & 0xff) and checks the echoes come back in order. */
export function chardevTraffic(sock: FdSocket, start: { sent: number; echoed: number }): Traffic & { st: { sent: number; echoed: number; bad: number } } {
  const st = { sent: start.sent, echoed: start.echoed, bad: 0 };
  const chunk = 61;
  const write = () => {
    const b = Buffer.alloc(chunk);
    for (let i = 0; i < chunk; i++) b[i] = (st.sent + i) & 0xff;
    st.sent += chunk;
    void sock.send(b).catch(() => undefined);
  };
  let timer = setInterval(write, 2);
  sock
    .consume((c) => {
      closeFds(c.fds);
      for (let i = 0; i < c.data.length; i++) if (c.data[i] !== ((st.echoed + i) & 0xff)) st.bad++;
      st.echoed += c.data.length;
    })
    .catch(() => undefined);
  return {
    st,
    stop: async () => {
      clearInterval(timer);
      sock.pause();
    },
    resume: () => {
      sock.resume();
      timer = setInterval(write, 2);
    },
    stats: () => ({ ...st }),
  };
}

/** vhost-user control traffic: GET_CONFIG every few ms (the device's capacity, answered by the back-end). */
export function vhostTraffic(fe: VhostUserFrontend): Traffic {
  const st = { requests: 0, errors: 0, capacity: '' };
  let inFlight: Promise<unknown> = Promise.resolve();
  let running = true;
  // Each run loop has its own generation, so a stopped loop never restarts itself.
  let generation = 0;
  const tick = (gen: number) => {
    if (!running || gen !== generation) return;
    inFlight = fe.getBlkConfig().then(
      (c) => {
        st.requests++;
        st.capacity = c.capacity.toString();
      },
      () => void st.errors++,
    );
    void inFlight.then(() => running && setTimeout(() => tick(gen), 5));
  };
  tick(generation);
  return {
    stop: async () => {
      running = false;
      generation++;
      await inFlight;
    },
    resume: () => {
      running = true;
      tick(generation);
    },
    stats: () => ({ ...st }),
  };
}

/** TAP traffic: rounds of TCP SYNs written round robin on the queues, RSTs read back on whatever queue they come. */
export function tapTraffic(tap: TapBackend, tapMac: string, firstRound: number): Traffic {
  const st = { rounds: 0, flows: 0, answered: 0, written: new Array<number>(tap.queues.length).fill(0), read: new Array<number>(tap.queues.length).fill(0) };
  let running = true;
  let round = firstRound;
  // Stopping aborts the waits, so that the freeze does not wait for a poll to time out.
  let abort = new AbortController();
  const sleep = (ms: number, signal: AbortSignal) =>
    new Promise<void>((r) => {
      if (signal.aborted) return r();
      const onAbort = () => {
        clearTimeout(t);
        r();
      };
      const t = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        r();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  const run = async (signal: AbortSignal): Promise<void> => {
    while (running) {
      const flows = 16;
      const want = new Set<number>();
      for (let i = 0; i < flows; i++) {
        const q = i % tap.queues.length;
        const srcPort = 10000 + ((round * flows + i) % 50000);
        want.add(srcPort);
        try {
          tap.writeFrame(q, tcpSyn({ vnetHdrSize: tap.meta.vnetHdrSize, srcMac: peerMac(q), dstMac: tapMac, srcIp: peerIp(q), dstIp: TAP_IP, srcPort, dstPort: 9, seq: round }));
          st.written[q]!++;
        } catch {
          /* a full queue drops a frame, like a NIC would */
        }
      }
      st.flows += flows;
      const deadline = Date.now() + 1000;
      while (want.size > 0 && Date.now() < deadline && running) {
        const got = await Promise.all(tap.queues.map((_, q) => tap.readFrame(q, 20, undefined, signal).catch(() => null)));
        got.forEach((f, q) => {
          if (!f) return;
          const r = parseRst(f, tap.meta.vnetHdrSize);
          if (r && want.delete(r.dstPort)) {
            st.answered++;
            st.read[q]!++;
          }
        });
      }
      st.rounds++;
      round++;
      await sleep(10, signal);
    }
  };
  let loop = run(abort.signal);
  return {
    stop: async () => {
      running = false;
      // A plain reason: abort() without one builds a DOMException (and its stack), inside the downtime.
      abort.abort('stopped');
      await loop;
    },
    resume: () => {
      running = true;
      abort = new AbortController();
      loop = run(abort.signal);
    },
    stats: () => ({ ...st, nextRound: round }),
  };
}
