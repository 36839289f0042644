// Runs chosen benchmark cases, alternating, for profiling and A/B work:
//   node --import tsx bench/pick.ts [--quick] [--runs N] 'substring' ['substring' ...]
// Each substring picks the cases whose "group name" contains it; prints each run's
// value and the medians (no report, no docs). The C baselines are ordinary cases:
// pick them too ('C write/read') to get ratios within the same run.
import { parseArgs } from 'node:util';
import { transportCases } from './cases/transport.js';
import { streamCases } from './cases/stream.js';
import { buildC, lastCpu, stats } from './lib/harness.js';
import type { Case, Scale } from './cases/types.js';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { quick: { type: 'boolean', default: false }, runs: { type: 'string', default: '3' }, mib: { type: 'string' } } });
const MiB = 1 << 20;
const bulk = Number(values.mib ?? (values.quick ? 256 : 1024)) * MiB;
const s: Scale = {
  quick: values.quick!,
  bulkBytes: bulk,
  fdMessages1: values.quick ? 50_000 : 200_000,
  fdMessages253: values.quick ? 2_000 : 10_000,
  pingpongs: 5_000,
  ipcHandles: 1_000,
  usocketFds: 10_000,
  daemonFds: 3_000,
  daemonState: 64 * MiB,
  rssBytes: 512 * MiB,
};
buildC();
const all: Case[] = [...transportCases(s), ...streamCases(s)];
const picked = all.filter((c) => positionals.some((p) => `${c.group} ${c.name}`.includes(p)));
const res = new Map<Case, number[]>();
const cpu = new Map<Case, { source: number[]; target: number[] }>();
for (let r = 0; r < Number(values.runs); r++) {
  for (const c of picked) {
    lastCpu.bytes = 0;
    const v = await c.run();
    (res.get(c) ?? res.set(c, []).get(c)!).push(v);
    let per = '';
    if (lastCpu.bytes > 0) {
      // CPU ms per MiB of each side: robust against a loaded machine, where throughput is not.
      const mib = lastCpu.bytes / MiB;
      const e = cpu.get(c) ?? cpu.set(c, { source: [], target: [] }).get(c)!;
      e.source.push(lastCpu.source / 1000 / mib);
      e.target.push(lastCpu.target / 1000 / mib);
      per = `  CPU ms/MiB source ${e.source.at(-1)!.toFixed(3)} target ${e.target.at(-1)!.toFixed(3)}`;
    }
    process.stderr.write(`run ${r + 1}  ${c.group} / ${c.name}: ${v.toPrecision(4)} ${c.unit}${per}\n`);
  }
}
for (const c of picked) {
  const st = stats(res.get(c)!);
  const base = picked.find((b) => b.group === c.group && b.baseline);
  const ratio = base && base !== c ? st.median / stats(res.get(base)!).median : null;
  const e = cpu.get(c);
  const per = e ? `  CPU ms/MiB source ${stats(e.source).median.toFixed(3)} target ${stats(e.target).median.toFixed(3)}` : '';
  console.log(`${c.group} / ${c.name}: median ${st.median.toPrecision(4)} [${st.min.toPrecision(3)}-${st.max.toPrecision(3)}] ${c.unit}${ratio ? `  ${ratio.toFixed(2)}x` : ''}${per}`);
}
