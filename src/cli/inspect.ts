// `backend-transfer inspect FILE`: prints the sections of a recorded stream (our
// counterpart to QEMU's analyze-migration.py). A file holds the bytes only, so fd
// attachments are shown by kind and name from the frames that declare them.
import { accessSync, constants, createReadStream, statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { BackendTransferError } from '../errors.js';
import { StreamReader, type SectionItem, type StreamItem } from '../stream/reader.js';
import { Features, type EndOfState, type Hello, type Plan } from '../stream/wire.js';
import type { Command } from './main.js';
import { escapeText as esc, safeJson } from './escape.js';

export interface InspectedSection {
  sectionId: number;
  device: string;
  instance: number;
  kind: string;
  version: number;
  frames: number;
  payloadBytes: number;
  memfdParts: number;
  attachments: { kind: string; name: string; meta: Record<string, unknown> | null }[];
  crc: 'ok' | 'bad' | 'unchecked';
  badFrames: number;
}

export interface InspectReport {
  file: string;
  bytes: number;
  hello: Hello | null;
  plan: Plan | null;
  sections: InspectedSection[];
  endOfState: (Omit<EndOfState, 'payloadBytes'> & { payloadBytes: number }) | null;
  control: string[];
  complete: boolean;
  error: { code: string; message: string } | null;
}

/** Reads a recorded stream and describes it. Never throws for a bad stream: the error is in the report. */
export async function inspectFile(file: string): Promise<InspectReport> {
  const reader = new StreamReader({ role: 'inspect', crc: 'report', fdsAbsent: true, verifyFdKinds: false });
  const report: InspectReport = { file, bytes: 0, hello: null, plan: null, sections: [], endOfState: null, control: [], complete: false, error: null };
  const byId = new Map<number, InspectedSection>();
  const take = (items: StreamItem[]) => {
    for (const it of items) {
      switch (it.type) {
        case 'hello':
          report.hello = it.hello;
          break;
        case 'plan':
          report.plan = it.plan;
          break;
        case 'section':
          addSection(it);
          break;
        case 'end-of-state':
          report.endOfState = { ...it.summary, payloadBytes: Number(it.summary.payloadBytes) };
          break;
        case 'eof':
          report.complete = true;
          break;
        default:
          report.control.push(it.type);
      }
    }
  };
  const addSection = (it: SectionItem) => {
    let s = byId.get(it.sectionId);
    if (!s) {
      s = {
        sectionId: it.sectionId,
        device: it.idstr,
        instance: it.instanceId,
        kind: it.device.kind,
        version: it.versionId,
        frames: 0,
        payloadBytes: 0,
        memfdParts: 0,
        attachments: [],
        crc: report.plan && (report.plan.features & Features.BODY_CRC) !== 0 ? 'ok' : 'unchecked',
        badFrames: 0,
      };
      byId.set(it.sectionId, s);
      report.sections.push(s);
    }
    s.frames++;
    s.payloadBytes += it.payloadInMemfd ? 0 : it.payload.length;
    if (it.payloadInMemfd) s.memfdParts++;
    for (const a of it.attachments) s.attachments.push({ kind: a.kind, name: a.name, meta: a.meta });
    if (!it.crcOk) {
      s.crc = 'bad';
      s.badFrames++;
    }
  };
  try {
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) {
      report.bytes += (chunk as Buffer).length;
      take(reader.feed(chunk as Buffer));
    }
    reader.end();
  } catch (err) {
    const e = err instanceof BackendTransferError ? err : BackendTransferError.fromSystem(err, `reading ${file}`);
    report.error = { code: e.code, message: e.message };
  } finally {
    reader.close();
  }
  return report;
}

function size(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

function featureNames(f: number): string {
  const names = Object.entries(Features)
    .filter(([, bit]) => (f & bit) !== 0)
    .map(([k]) => k);
  return names.length ? names.join('|') : 'none';
}

export function formatReport(r: InspectReport): string {
  const out: string[] = [];
  out.push(`${esc(r.file)}: ${size(r.bytes)}`);
  if (r.hello) out.push(`HELLO  versions ${r.hello.minVersion}..${r.hello.maxVersion}, features ${featureNames(r.hello.features)}, ${r.hello.offers.length} device(s) offered`);
  if (r.plan) {
    const withFds = r.plan.devices.filter((d) => d.withFds);
    out.push(`PLAN   version ${r.plan.version}, features ${featureNames(r.plan.features)}, ${r.plan.devices.length} device(s), ${withFds.length} with fds (${r.plan.totalFds} fds)`);
  }
  if (r.sections.length) {
    out.push('');
    const rows = r.sections.map((s) => [
      String(s.sectionId),
      `${esc(s.device)}/${s.instance}`,
      esc(s.kind),
      String(s.version),
      String(s.frames),
      size(s.payloadBytes) + (s.memfdParts ? ` +${s.memfdParts} memfd part(s)` : ''),
      s.attachments.length ? s.attachments.map((a) => `${esc(a.kind)}:${esc(a.name)}`).join(' ') : '-',
      s.crc === 'bad' ? `BAD (${s.badFrames} frame(s))` : s.crc,
    ]);
    const head = ['id', 'device', 'kind', 'ver', 'frames', 'payload', 'fd attachments', 'crc'];
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const line = (cols: string[]) =>
      cols
        .map((c, i) => (i === 6 || i === 7 ? c : c.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd();
    out.push(line(head));
    for (const row of rows) out.push(line(row));
  }
  out.push('');
  if (r.endOfState) out.push(`END_OF_STATE  ${r.endOfState.sectionCount} section(s), ${r.endOfState.totalFds} fd(s), ${size(r.endOfState.payloadBytes)} of state`);
  if (r.control.length) out.push(`control  ${r.control.map(esc).join(', ')}`);
  if (r.error) out.push(`ERROR  ${esc(r.error.message)}`);
  else out.push(r.complete ? 'complete (EOF frame seen)' : 'incomplete');
  return out.join('\n');
}

export const inspectCommand: Command = {
  summary: 'print the sections of a recorded stream (--json)',
  async run(argv) {
    const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
    if (values.help || positionals.length !== 1) {
      console.log(
        'usage: backend-transfer inspect FILE [--json]\n\nPrints each section of a recorded migration stream: id, device, version, sizes,\nfd attachments by kind and name, and CRC status. Exit status 1 when the stream is damaged,\n2 when FILE cannot be read.',
      );
      return values.help ? 0 : 2;
    }
    const file = positionals[0]!;
    // A file that cannot be read is bad input (exit 2), not a damaged stream (exit 1).
    try {
      if (!statSync(file).isFile()) throw Object.assign(new Error('not a regular file'), { code: 'EISDIR' });
      accessSync(file, constants.R_OK);
    } catch (err) {
      throw BackendTransferError.invalidArgument(`cannot read ${file}: ${(err as Error).message}`);
    }
    const report = await inspectFile(file);
    if (values.json) console.log(safeJson(report));
    else console.log(formatReport(report));
    return report.error || !report.complete || report.sections.some((s) => s.crc === 'bad') ? 1 : 0;
  },
};
