// backend-transfer CLI entry: dispatches subcommands (node:util parseArgs).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { escapeText } from './escape.js';

export interface Command {
  summary: string;
  run(argv: string[]): Promise<number>;
}

const commands = new Map<string, Command>();

export function registerCommand(name: string, cmd: Command): void {
  commands.set(name, cmd);
}

function version(): string {
  const pkg = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string };
  return pkg.version;
}

function usage(): string {
  const lines = ['usage: backend-transfer <command> [options]', '', 'commands:'];
  for (const [name, c] of commands) if (!name.startsWith('_')) lines.push(`  ${name.padEnd(10)} ${c.summary}`);
  lines.push('', "Run 'backend-transfer <command> --help' for a command's options.");
  return lines.join('\n');
}

export async function run(argv: string[]): Promise<number> {
  // Loaded here, not imported at the top: commands.ts imports this file's Command type.
  const { COMMANDS } = await import('./commands.js');
  for (const [n, c] of COMMANDS) if (!commands.has(n)) registerCommand(n, c);
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === '--version' || name === '-V') {
    console.log(version());
    return 0;
  }
  const cmd = commands.get(name);
  if (!cmd) {
    console.error(`backend-transfer: unknown command '${escapeText(name)}'\n\n${usage()}`);
    return 2;
  }
  try {
    return await cmd.run(rest);
  } catch (err) {
    const e = err as { code?: string; message?: string };
    // Messages can carry peer text (reasons, ids): escaped, multi-line layout kept.
    console.error(
      `backend-transfer ${name}: ${String(e.message ?? err)
        .split('\n')
        .map(escapeText)
        .join('\n')}`,
    );
    return e.code === 'ERR_INVALID_ARGUMENT' || e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' ? 2 : 1;
  }
}
