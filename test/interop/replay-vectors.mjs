// Replays docs/vectors (the bytes alone, as a file is read) through the
// StreamReader of the build at LIBROOT: node replay-vectors.mjs LIBROOT [--release-0.1.0].
// Checks the error code, the frame it comes with, and the types of the frames
// decoded before it. With --release-0.1.0 the vectors of behaviour added after
// that release are expected to differ, as the spec says (a NACK in place of
// WELCOME: a 0.1.0 source reads it as ERR_STREAM_PROTOCOL).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const [libRoot, flag] = process.argv.slice(2);
if (!libRoot) {
  console.error('usage: replay-vectors.mjs LIBROOT [--release-0.1.0]');
  process.exit(2);
}
const { StreamReader } = await import(pathToFileURL(join(libRoot, 'dist', 'index.js')).href);
const DIR = fileURLToPath(new URL('../../docs/vectors/', import.meta.url));
// What a 0.1.0 reader does instead (docs/stream-format.md, "Refusing a HELLO" and
// "Behaviour clarified since 0.1.0"): `types` are the frames it decodes, then the
// error (or none). Looser since: a NACK in place of WELCOME, ABORT inside a section.
// Stricter since, on bytes no 0.1.0 writer writes: the rest (0.1.0 reads them whole,
// then misses an EOF that the vector, cut at the failing frame, does not have).
const OLD = {
  'valid-return-refusal': { code: 'ERR_STREAM_PROTOCOL', offset: 8 },
  'bad-return-welcome-after-refusal': { code: 'ERR_STREAM_PROTOCOL', offset: 8 },
  'valid-abort-inside-section': { code: 'ERR_STREAM_PROTOCOL', offset: 200, types: ['HELLO', 'PLAN', 'SECTION_START'] },
  'bad-section-after-abort': { truncated: true, types: ['HELLO', 'PLAN', 'ABORT', 'SECTION_FULL'] },
  'bad-eof-before-end-of-state': { ok: true, types: ['HELLO', 'PLAN', 'EOF'] },
  'bad-commit-before-end-of-state': { truncated: true, types: ['HELLO', 'PLAN', 'SECTION_FULL', 'COMMIT'] },
  'bad-abort-after-commit': { truncated: true, types: ['HELLO', 'PLAN', 'SECTION_FULL', 'END_OF_STATE', 'COMMIT', 'ABORT'] },
  'bad-eof-before-hello': { ok: true, types: ['EOF'] },
  'bad-plan-version': { truncated: true, types: ['HELLO', 'PLAN'] },
  'bad-plan-features': { truncated: true, types: ['HELLO', 'PLAN'] },
  'bad-str-utf8': { truncated: true, types: ['HELLO'] },
  'bad-str-surrogate': { truncated: true, types: ['HELLO'] },
  'bad-bool-with-fds': { truncated: true, types: ['HELLO', 'PLAN'] },
  'bad-bool-can-pass-fds': { truncated: true, types: ['HELLO'] },
  'bad-return-bool': { truncated: true, types: ['WELCOME'] },
  'bad-json-utf8': { truncated: true, types: ['HELLO'] },
};
// STAGED came after 0.1.0: its reader refuses a STAGE or FREEZE frame (unknown
// type) and an ACK(STAGED) (unknown stage). A source never sends them to it:
// 0.1.0 does not negotiate the feature.
const STAGED_VECTOR = /stage/;
const TYPES = {
  hello: 'HELLO',
  welcome: 'WELCOME',
  plan: 'PLAN',
  stage: 'STAGE',
  freeze: 'FREEZE',
  'end-of-state': 'END_OF_STATE',
  ack: 'ACK',
  nack: 'NACK',
  ping: 'PING',
  pong: 'PONG',
  commit: 'COMMIT',
  abort: 'ABORT',
  eof: 'EOF',
};
const SECTIONS = { start: 'SECTION_START', part: 'SECTION_PART', end: 'SECTION_END', full: 'SECTION_FULL' };

function frameStarts(bytes) {
  const out = [];
  for (let pos = 8; pos + 8 <= bytes.length; pos += 24 + bytes.readUInt32LE(pos + 4)) out.push(pos);
  return out;
}

let bad = 0;
const index = JSON.parse(readFileSync(join(DIR, 'index.json'), 'utf8'));
for (const { name } of index) {
  const v = JSON.parse(readFileSync(join(DIR, `${name}.json`), 'utf8'));
  const bytes = readFileSync(join(DIR, v.file));
  let exp = v.expectWithoutFds;
  const old = flag === '--release-0.1.0' ? OLD[name] : undefined;
  if (old?.types) {
    const frames = old.types.map((type) => ({ type }));
    exp = old.ok ? { ok: true, frames } : old.truncated ? { ok: false, code: 'ERR_STREAM_TRUNCATED', offset: bytes.length, frames } : { ok: false, code: old.code, offset: old.offset, frames };
  } else if (old) exp = { ok: false, ...old, frames: exp.frames.filter((f) => f.offset < old.offset) };
  const reader = v.direction === 'return' ? new StreamReader({ role: 'source' }) : new StreamReader({ role: 'inspect', fdsAbsent: true, verifyFdKinds: false });
  const cuts = [...new Set([0, ...frameStarts(bytes), ...(exp.ok ? [] : [exp.offset]), bytes.length])].filter((x) => x <= bytes.length).sort((a, b) => a - b);
  const types = [];
  let error = null;
  for (let i = 0; i + 1 < cuts.length && !error; i++) {
    try {
      for (const it of reader.feed(bytes.subarray(cuts[i], cuts[i + 1]))) types.push(it.type === 'section' ? SECTIONS[it.frame] : TYPES[it.type]);
    } catch (e) {
      error = { code: e.code, at: cuts[i] };
    }
  }
  if (!error) {
    try {
      reader.end();
    } catch (e) {
      error = { code: e.code, at: bytes.length };
    }
  }
  reader.close();
  const next = [...frameStarts(bytes), bytes.length].find((x) => x > (exp.offset ?? 0)) ?? bytes.length;
  const errOk = exp.ok ? error === null : error !== null && error.code === exp.code && error.at >= exp.offset && (error.at < next || exp.offset === bytes.length);
  let typesOk = JSON.stringify(types) === JSON.stringify(exp.frames.map((f) => f.type));
  if (flag === '--release-0.1.0' && STAGED_VECTOR.test(name)) {
    const refused = error !== null && ['ERR_STREAM_UNKNOWN_FRAME', 'ERR_STREAM_PROTOCOL'].includes(error.code);
    if (!refused) console.log(`  MISMATCH ${name}: release 0.1.0 should refuse a STAGED stream, got ${JSON.stringify(error)}`);
    if (!refused) bad++;
    continue;
  }
  if (!errOk || !typesOk) {
    bad++;
    console.log(`  MISMATCH ${name}: got ${JSON.stringify(error)} ${types.join(' ')}; expected ${exp.ok ? 'ok' : `${exp.code} at ${exp.offset}`} ${exp.frames.map((f) => f.type).join(' ')}`);
  }
}
console.log(`  ${index.length} vectors through ${libRoot}: ${bad} mismatch(es)`);
process.exit(bad ? 1 : 0);
