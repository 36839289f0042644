// npm run bench [-- --quick] [--runs N] [--only substring] [--render bench/results/FILE.json]
// Runs every case interleaved (run 1 of every case, then run 2, ...), so that a
// noisy machine hurts all of them alike, and reports medians, min–max and ratios to
// the baseline measured in the same run.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH, ROOT, buildC, machine, stats, type Stats } from './lib/harness.js';
import { renderMarkdown, renderSvg, type Report, type ReportRow } from './lib/report.js';
import { transportCases } from './cases/transport.js';
import { streamCases } from './cases/stream.js';
import { handoverCases } from './cases/handover.js';
import type { Case, Scale } from './cases/types.js';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    runs: { type: 'string' },
    only: { type: 'string' },
    'no-docs': { type: 'boolean', default: false },
    /** Re-render docs/benchmarks.md and the chart from a saved report (after editing bench/analysis.md). */
    render: { type: 'string' },
  },
});
if (values.render) {
  const saved = JSON.parse(readFileSync(values.render, 'utf8')) as Report;
  writeFileSync(join(ROOT, 'docs', 'benchmarks-ratios.svg'), renderSvg(saved));
  writeFileSync(join(ROOT, 'docs', 'benchmarks.md'), renderMarkdown(saved));
  console.log(`wrote docs/benchmarks.md and docs/benchmarks-ratios.svg from ${values.render}`);
  process.exit(0);
}
const quick = values.quick!;
const runs = Number(values.runs ?? (quick ? 3 : 5));
const MiB = 1 << 20;
const scale: Scale = quick
  ? { quick, bulkBytes: 256 * MiB, fdMessages1: 50_000, fdMessages253: 2_000, pingpongs: 5_000, ipcHandles: 1_000, usocketFds: 10_000, daemonFds: 3_000, daemonState: 64 * MiB, rssBytes: 512 * MiB }
  : {
      quick,
      bulkBytes: 1024 * MiB,
      fdMessages1: 200_000,
      fdMessages253: 10_000,
      pingpongs: 20_000,
      ipcHandles: 10_000,
      usocketFds: 50_000,
      daemonFds: 30_000,
      daemonState: 1024 * MiB,
      rssBytes: 4096 * MiB,
    };

buildC();
let cases: Case[] = [...transportCases(scale), ...streamCases(scale), ...handoverCases(scale)];
// Keep each group together in the report, whatever file its cases come from.
const groupOrder = [...new Set(cases.map((c) => c.group))];
cases.sort((a, b) => groupOrder.indexOf(a.group) - groupOrder.indexOf(b.group));
if (values.only) cases = cases.filter((c) => `${c.group} ${c.name}`.includes(values.only!));

const results = new Map<Case, number[]>();
const started = Date.now();
for (let r = 0; r < runs; r++) {
  for (const c of cases) {
    const t0 = performance.now();
    const v = await c.run();
    if (!results.has(c)) results.set(c, []);
    results.get(c)!.push(v);
    process.stderr.write(`run ${r + 1}/${runs}  ${c.group} / ${c.name}: ${fmt(v)} ${c.unit}  (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
  }
}

const rows: ReportRow[] = [];
for (const c of cases) {
  const st: Stats = stats(results.get(c)!);
  const base = cases.find((b) => b.group === c.group && b.baseline);
  const baseSt = base && base !== c ? stats(results.get(base)!) : null;
  const ratio = baseSt ? (c.lowerIsBetter ? baseSt.median / st.median : st.median / baseSt.median) : null;
  rows.push({
    group: c.group,
    name: c.name,
    unit: c.unit,
    baseline: !!c.baseline,
    ...st,
    ratio,
    target: c.target ?? null,
    absoluteTarget: c.absoluteTarget ?? null,
    lowerIsBetter: !!c.lowerIsBetter,
    met: c.target !== undefined && ratio !== null ? ratio >= c.target : c.absoluteTarget !== undefined ? (c.lowerIsBetter ? st.median <= c.absoluteTarget : st.median >= c.absoluteTarget) : null,
    extra: c.extra?.() ?? null,
  });
}

const report: Report = { date: new Date().toISOString(), quick, runs, seconds: Math.round((Date.now() - started) / 1000), machine: machine(), rows };

// Terminal table
console.log(
  `\nbackend-transfer benchmarks (${quick ? 'quick' : 'full'}, ${runs} runs, medians; ratio = this / baseline of the group; CRC-32 by ${String(report.machine.crc32)}; load average at the end ${String(report.machine.load)})\n`,
);
let group = '';
const nameWidth = Math.max(...rows.map((r) => r.name.length));
const rangeWidth = Math.max(...rows.map((r) => `[${fmt(r.min)} – ${fmt(r.max)}]`.length));
for (const row of rows) {
  if (row.group !== group) {
    group = row.group;
    console.log(group);
  }
  const ratio = row.ratio === null ? '' : `${row.ratio.toFixed(2)}x`;
  const target =
    row.target !== null
      ? ` (target ${Number(row.target.toFixed(2))}x: ${row.met ? 'met' : 'MISSED'})`
      : row.absoluteTarget !== null
        ? ` (target ${row.lowerIsBetter ? '<=' : '>='} ${row.absoluteTarget}: ${row.met ? 'met' : 'MISSED'})`
        : '';
  const extra = row.extra ? `  ${JSON.stringify(row.extra)}` : '';
  console.log(
    `  ${row.name.padEnd(nameWidth)} ${fmt(row.median).padStart(10)} ${row.unit.padEnd(14)} ${`[${fmt(row.min)} – ${fmt(row.max)}]`.padEnd(rangeWidth)} ${ratio.padStart(6)}${target}${extra}`,
  );
}

mkdirSync(join(BENCH, 'results'), { recursive: true });
const stamp = report.date.replace(/[:.]/g, '-');
// A run of some cases only (--only) is kept apart from the full and quick runs.
const kind = values.only ? 'partial' : quick ? 'quick' : 'full';
writeFileSync(join(BENCH, 'results', `${kind}-${stamp}.json`), JSON.stringify(report, null, 2));
if (kind !== 'partial') writeFileSync(join(BENCH, 'results', `latest-${kind}.json`), JSON.stringify(report, null, 2));
if (!quick && !values['no-docs'] && !values.only) {
  writeFileSync(join(ROOT, 'docs', 'benchmarks-ratios.svg'), renderSvg(report));
  writeFileSync(join(ROOT, 'docs', 'benchmarks.md'), renderMarkdown(report));
  console.log('\nwrote docs/benchmarks.md and docs/benchmarks-ratios.svg');
}
console.log(`results in bench/results/ (${report.seconds} s)`);

function fmt(v: number): string {
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  if (v >= 100) return v.toFixed(0);
  return v.toFixed(2);
}
