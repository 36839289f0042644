// README.md's TypeScript snippets type-check against the package's API, so they
// cannot rot: every ```ts block is compiled (strict, no emit) as its own module,
// with 'backend-transfer' resolving to src/public.ts (and its subpaths as package.json maps them). The names a snippet leaves to
// the reader (the fds, the VMM object) are declared once below with the types a
// caller would have; everything else must come from the snippet's own imports.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'bt-readme-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** What the snippets take as given (a caller's own fds, objects, values), declared where a snippet does not bind the name itself. */
const GIVEN: [string, string][] = [
  ['tapQueueFds', 'number[]'],
  ['vhostFds', 'number[]'],
  ['socket', 'number'],
  ['callFds', 'number[]'],
  ['kickFds', 'number[]'],
  ['inflight', "{ fd: number } & import('backend-transfer').InflightInfo"],
  ['socketPath', 'string'],
  ['features', 'bigint'],
  ['protocolFeatures', 'bigint'],
  ['numQueues', 'number'],
  ['conn', 'number'],
  ['address', 'string'],
  ['vmmState', 'Buffer'],
  ['tapFd', 'number'],
  ['eventFd', 'number'],
  ['vmm', '{ stop(): Promise<void>; cont(): Promise<void> }'],
  ['ui', '{ update(e: unknown): void }'],
  ['sock', "import('backend-transfer').FdSocket"],
  ['hello', "import('backend-transfer/stream').Hello"],
  ['attachments', "import('backend-transfer/stream').OutgoingAttachment[]"],
  ['payload', 'Buffer'],
];

function given(code: string): string {
  return GIVEN.filter(([name]) => new RegExp(`\\b${name}\\b`).test(code) && !new RegExp(`\\b(const|let|var)\\s+${name}\\b`).test(code))
    .map(([name, type]) => `declare const ${name}: ${type};`)
    .join('\n');
}

export function snippets(markdown: string): { line: number; code: string }[] {
  const out: { line: number; code: string }[] = [];
  const re = /^```ts\n([\s\S]*?)^```/gm;
  for (let m = re.exec(markdown); m; m = re.exec(markdown)) out.push({ line: markdown.slice(0, m.index).split('\n').length, code: m[1]! });
  return out;
}

describe('README.md snippets', () => {
  const list = snippets(readFileSync(join(ROOT, 'README.md'), 'utf8'));

  it('there are snippets to check', () => {
    expect(list.length).toBeGreaterThanOrEqual(4);
  });

  it('each ```ts block compiles (strict) against the package', () => {
    const files = list.map((s) => {
      const f = join(dir, `readme-line-${s.line}.mts`);
      // `export {}` makes each one a module; GIVEN goes last so that snippet line numbers stay right.
      writeFileSync(f, `${s.code}\nexport {};\n${given(s.code)}\n`);
      return f;
    });
    const program = ts.createProgram(files, {
      strict: true,
      noEmit: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      lib: ['lib.es2023.d.ts'],
      types: ['node'],
      typeRoots: [join(ROOT, 'node_modules/@types')],
      skipLibCheck: true,
      paths: {
        // As package.json "exports" maps them.
        'backend-transfer': [join(ROOT, 'src/public.ts')],
        'backend-transfer/native': [join(ROOT, 'src/native.ts')],
        'backend-transfer/stream': [join(ROOT, 'src/stream/index.ts')],
        'backend-transfer/vhost-user': [join(ROOT, 'src/vhost-user/index.ts')],
      },
    });
    const problems = ts
      .getPreEmitDiagnostics(program)
      .filter((d) => d.file === undefined || files.includes(d.file.fileName))
      .map((d) => {
        const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
        if (!d.file || d.start === undefined) return text;
        const { line } = d.file.getLineAndCharacterOfPosition(d.start);
        const at = Number(/readme-line-(\d+)/.exec(d.file.fileName)![1]) + line + 1;
        return `README.md:${at}: ${text}`;
      });
    expect(problems).toEqual([]);
  }, 120_000);
});
