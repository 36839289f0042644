// The conformance vectors of docs/vectors/ (written by scripts/conformance-vectors.ts
// from the spec's tables): the committed files are up to date, and every vector
// replays through StreamReader — with real fds riding on the bytes the vector
// says, and from the bytes alone — and through `backend-transfer inspect`, with
// the expected frames or the expected error code at the expected frame.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { SEALS_REQUIRED, StreamReader, closeFds, inspectFd, native, type StreamItem, type Welcome } from '../src/index.js';
import { inspectFile, type InspectReport } from '../src/cli/inspect.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();
const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIR = fileURLToPath(new URL('../docs/vectors/', import.meta.url));

type Frame = { offset: number; type: string; flags: number; fdCount: number; firstFdSeq: number; body: Record<string, unknown> };
type Expect = { ok: boolean; code?: string; offset?: number; frames: Frame[] };
interface VectorMeta {
  name: string;
  file: string;
  direction: 'main' | 'return';
  reader: 'inspect' | 'target' | 'source';
  welcome?: Record<string, unknown>;
  fds: ({ seq: number; kind: 'memfd'; content: string; sealed: boolean } | { seq: number; kind: 'eventfd'; value: number })[];
  fdBatches: { start: number; end: number; fds: number[] }[];
  expect: Expect;
  expectWithoutFds: Expect;
}

const index = JSON.parse(readFileSync(`${DIR}index.json`, 'utf8')) as { name: string }[];
const vectors = index.map((v) => JSON.parse(readFileSync(`${DIR}${v.name}.json`, 'utf8')) as VectorMeta);
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function welcomeOf(w: Record<string, unknown>): Welcome {
  return { ...(w as unknown as Welcome), canPassFds: w.canPassFds === 1 };
}

const TYPE_OF: Record<string, string> = {
  hello: 'HELLO',
  welcome: 'WELCOME',
  plan: 'PLAN',
  'end-of-state': 'END_OF_STATE',
  ack: 'ACK',
  nack: 'NACK',
  ping: 'PING',
  pong: 'PONG',
  commit: 'COMMIT',
  abort: 'ABORT',
  eof: 'EOF',
};
const SECTION_TYPE = { start: 'SECTION_START', part: 'SECTION_PART', end: 'SECTION_END', full: 'SECTION_FULL' } as const;

/** An item as the vector's expected frame describes it (the fields the item carries). */
function asFrame(it: StreamItem, withFds: boolean): { type: string; body: Record<string, unknown> } {
  switch (it.type) {
    case 'hello': {
      const h = it.hello;
      return {
        type: 'HELLO',
        body: {
          minVersion: h.minVersion,
          maxVersion: h.maxVersion,
          features: h.features,
          canPassFds: h.canPassFds ? 1 : 0,
          fdBudget: h.fdBudget,
          probe: h.probe ? Buffer.from(h.probe).toString('hex') : null,
          offers: h.offers.map((o) => ({ kind: o.kind, id: o.id, instance: o.instance, version: o.version, fdCount: o.fdCount, flags: (o.wantsFds ? 1 : 0) | (o.required ? 2 : 0) })),
          info: h.info,
        },
      };
    }
    case 'welcome':
      return { type: 'WELCOME', body: { ...it.welcome, canPassFds: it.welcome.canPassFds ? 1 : 0 } };
    case 'plan':
      return { type: 'PLAN', body: { ...it.plan, devices: it.plan.devices.map((d) => ({ ...d, withFds: d.withFds ? 1 : 0 })) } };
    case 'section': {
      const body: Record<string, unknown> = { sectionId: it.sectionId };
      if (it.frame === 'start' || it.frame === 'full') Object.assign(body, { instanceId: it.instanceId, versionId: it.versionId, idstr: it.idstr });
      body.attachments = it.attachments.map((a) => ({ kind: a.kind, role: a.role, name: a.name, meta: a.meta }));
      if (it.payloadInMemfd) body.payloadLength = withFds ? it.payload.length : undefined;
      else Object.assign(body, { payloadLength: it.payload.length, payloadSha256: sha256(it.payload) });
      return { type: SECTION_TYPE[it.frame], body };
    }
    case 'stage':
      return {
        type: 'STAGE',
        body: {
          sectionId: it.sectionId,
          instanceId: it.device.instance,
          versionId: it.versionId,
          idstr: it.device.id,
          attachments: it.attachments.map((a) => ({ kind: a.kind, role: a.role, name: a.name, meta: a.meta })),
          payloadLength: it.payload.length,
          payloadSha256: sha256(it.payload),
        },
      };
    case 'freeze':
      return { type: 'FREEZE', body: { dropped: it.freeze.dropped } };
    case 'end-of-state':
      return { type: 'END_OF_STATE', body: { ...it.summary, payloadBytes: String(it.summary.payloadBytes) } };
    case 'ping':
    case 'pong':
      return { type: TYPE_OF[it.type]!, body: { token: String(it.ping.token), timeNs: String(it.ping.timeNs) } };
    case 'ack':
      return { type: 'ACK', body: { ...it.ack } };
    case 'nack':
      return { type: 'NACK', body: { ...it.nack } };
    case 'abort':
      return { type: 'ABORT', body: { ...it.abort } };
    default:
      return { type: TYPE_OF[it.type]!, body: {} };
  }
}

/** The expected frame, reduced to what a StreamItem carries. */
function expectedFrame(f: Frame, withFds: boolean): { type: string; body: Record<string, unknown> } {
  const body = { ...f.body };
  if (f.type.startsWith('SECTION_')) {
    body.attachments = (body.attachments as { role: number }[]).filter((a) => a.role === 0);
    if ('payloadCrc' in body) {
      delete body.payloadCrc;
      body.payloadLength = withFds ? body.payloadLength : undefined;
    }
  }
  return { type: f.type, body };
}

function makeFd(d: VectorMeta['fds'][number]): number {
  if (d.kind === 'eventfd') return native.eventfd(d.value);
  const fd = native.memfd_create(`vec${d.seq}`);
  const content = Buffer.from(d.content, 'hex');
  if (content.length) writeSync(fd, content, 0, content.length, 0);
  if (d.sealed) native.fcntl_add_seals(fd, SEALS_REQUIRED | native.F_SEAL_SEAL);
  return fd;
}

/** Where each frame starts, by walking the headers' bodyLength (garbage after a bad header only adds harmless cuts). */
function frameStarts(bytes: Buffer): number[] {
  const out: number[] = [];
  for (let pos = 8; pos + 8 <= bytes.length; pos += 24 + bytes.readUInt32LE(pos + 4)) out.push(pos);
  return out;
}

/** Replays a vector into a fresh reader; returns the items and the error (with the offset of the chunk that raised it). */
function replay(v: VectorMeta, bytes: Buffer, withFds: boolean): { items: StreamItem[]; error: { code: string; at: number } | null } {
  const exp = withFds ? v.expect : v.expectWithoutFds;
  const role = v.direction === 'return' ? 'source' : withFds ? v.reader : 'inspect';
  const reader = new StreamReader(role === 'inspect' ? { role, fdsAbsent: !withFds } : { role });
  const created = new Map<number, number>();
  if (withFds) for (const d of v.fds) created.set(d.seq, makeFd(d));
  const cuts = new Set<number>([0, bytes.length, ...frameStarts(bytes)]);
  if (exp.offset !== undefined) cuts.add(exp.offset);
  if (withFds) for (const b of v.fdBatches) cuts.add(b.start).add(b.end);
  const points = [...cuts].filter((x) => x <= bytes.length).sort((a, b) => a - b);
  const items: StreamItem[] = [];
  let error: { code: string; at: number } | null = null;
  try {
    for (let i = 0; i + 1 < points.length && !error; i++) {
      const [a, b] = [points[i]!, points[i + 1]!];
      const fds: number[] = [];
      if (withFds) {
        for (const batch of v.fdBatches) {
          if (batch.start !== a) continue;
          for (const seq of batch.fds) {
            fds.push(created.get(seq)!);
            created.delete(seq);
          }
        }
      }
      try {
        const got = reader.feed(bytes.subarray(a, b), fds);
        for (const it of got) {
          if (it.type === 'hello' && role === 'target') reader.setWelcome(welcomeOf(v.welcome!));
          items.push(it);
        }
      } catch (e) {
        error = { code: (e as { code: string }).code, at: a };
      }
    }
    if (!error) {
      try {
        reader.end();
      } catch (e) {
        error = { code: (e as { code: string }).code, at: bytes.length };
      }
    }
  } finally {
    reader.close();
    closeFds([...created.values()]);
  }
  return { items, error };
}

function check(v: VectorMeta, withFds: boolean): void {
  const exp = withFds ? v.expect : v.expectWithoutFds;
  const bytes = readFileSync(`${DIR}${v.file}`);
  const { items, error } = replay(v, bytes, withFds);
  try {
    if (exp.ok) expect(error).toBeNull();
    else {
      expect(error?.code).toBe(exp.code);
      // Nothing before the frame at `offset` fails; the frames before it decode (below), none after it.
      expect(error!.at).toBeGreaterThanOrEqual(exp.offset!);
      const frameEnd = [...frameStarts(bytes), bytes.length].find((x) => x > exp.offset!) ?? bytes.length;
      if (exp.offset! < bytes.length) expect(error!.at).toBeLessThan(frameEnd);
    }
    expect(items.map((it) => asFrame(it, withFds))).toEqual(exp.frames.map((f) => expectedFrame(f, withFds)));
    if (withFds) {
      // Every fd handed out is a real fd of the kind its attachment declares.
      for (const it of items) {
        if (it.type !== 'section' && it.type !== 'stage') continue;
        for (const a of it.attachments) {
          const info = inspectFd(a.fd);
          if (a.kind === 'eventfd' || a.kind === 'memfd') expect(info.kind).toBe(a.kind);
        }
      }
    }
  } finally {
    for (const it of items) if (it.type === 'section' || it.type === 'stage') closeFds(it.attachments.map((a) => a.fd).filter((fd) => fd >= 0));
  }
}

describe('docs/vectors', () => {
  it('are what scripts/conformance-vectors.ts writes (up to date)', async () => {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'scripts/conformance-vectors.ts', '--check'], { cwd: ROOT });
    expect(stdout).toMatch(/up to date/);
  });

  it('cover every rule family: valid and invalid, main stream and return path, with fds', () => {
    expect(vectors.filter((v) => v.expect.ok).length).toBeGreaterThanOrEqual(8);
    expect(new Set(vectors.filter((v) => !v.expect.ok).map((v) => v.expect.code)).size).toBeGreaterThanOrEqual(14);
    expect(vectors.some((v) => v.direction === 'return' && !v.expect.ok)).toBe(true);
    expect(vectors.some((v) => v.fdBatches.length > 1)).toBe(true);
  });

  for (const v of vectors) {
    it(`${v.name}: StreamReader with the fds replayed`, () => check(v, true));
    it(`${v.name}: StreamReader from the bytes alone`, () => check(v, false));
  }

  // inspect reports a section's bad CRC (and goes on) rather than failing: count that as ERR_STREAM_CRC.
  const verdict = (r: InspectReport) => ({ code: r.sections.some((x) => x.crc === 'bad') ? 'ERR_STREAM_CRC' : (r.error?.code ?? null), complete: r.complete && !r.error });
  const wanted = (v: VectorMeta) => ({ code: v.expectWithoutFds.ok ? null : v.expectWithoutFds.code, complete: v.expectWithoutFds.ok });

  it("every main-stream vector through inspect (the CLI command's reader)", async () => {
    for (const v of vectors.filter((x) => x.direction === 'main')) {
      const r = await inspectFile(`${DIR}${v.file}`);
      expect({ name: v.name, ...verdict(r) }).toEqual({ name: v.name, ...wanted(v) });
    }
  });

  it('backend-transfer inspect --json, as a process, on a valid, a damaged, an fd-carrying and a truncated vector', async () => {
    for (const name of ['valid-recorded-parts', 'bad-body-crc', 'valid-live-handover', 'bad-truncated-mid-frame']) {
      const v = vectors.find((x) => x.name === name)!;
      let stdout: string;
      let code = 0;
      try {
        stdout = (await run(process.execPath, ['--import', 'tsx', 'src/cli/bin.ts', 'inspect', '--json', `${DIR}${v.file}`], { cwd: ROOT })).stdout;
      } catch (e) {
        stdout = (e as { stdout: string }).stdout;
        code = (e as { code: number }).code;
      }
      expect({ name, ...verdict(JSON.parse(stdout) as InspectReport) }).toEqual({ name, ...wanted(v) });
      expect(code).toBe(v.expectWithoutFds.ok ? 0 : 1);
    }
  }, 60_000);
});
