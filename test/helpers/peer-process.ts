// What the peer fixtures (test/fixtures/*-peer.ts, plain processes run by
// test/helpers/child.ts) do alike: events out as JSON lines on stdout, commands in
// as JSON lines on stdin, one listening socket for one connection, and the
// scenario named in argv[2] run with its failure reported. No vitest here.
import { createInterface, type Interface } from 'node:readline';
import { FdServer, type BackendTransferError, type FdSocket } from '../../src/index.js';

export type Emit = (event: string, data?: Record<string, unknown>) => void;

/** An emitter whose every event also carries `stamp` (after the event name, before its data); bigints go out as decimal strings. */
export function makeEmit(stamp: Record<string, unknown> = {}): Emit {
  return (event, data = {}) => {
    process.stdout.write(JSON.stringify({ event, ...stamp, ...data }, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
  };
}

/** One event as a JSON line on stdout. */
export const emit: Emit = makeEmit();

/** The stable parts of a BackendTransferError, as the tests compare them. */
export function errInfo(err: unknown): { code: string; message: string; details: unknown } {
  const e = err as BackendTransferError;
  return { code: e.code, message: e.message, details: e.details ?? null };
}

export type CommandHandler = (cmd: Record<string, unknown>) => Promise<void> | void;

/**
 * Reads commands ({"cmd": name, ...}) from stdin and runs the handler set under that
 * name; a handler's failure is a 'fatal' event. A command with no handler is a
 * 'fatal' event too when `unknown` is 'fatal', else ignored.
 */
export function readCommands(options: { emit?: Emit; unknown?: 'fatal' | 'ignore' } = {}): { handlers: Map<string, CommandHandler>; lines: Interface } {
  const say = options.emit ?? emit;
  const handlers = new Map<string, CommandHandler>();
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    const cmd = JSON.parse(line) as Record<string, unknown>;
    const h = handlers.get(String(cmd.cmd));
    if (!h) {
      if (options.unknown === 'fatal') say('fatal', { message: `unknown command ${String(cmd.cmd)}` });
      return;
    }
    Promise.resolve(h(cmd)).catch((err: unknown) => say('fatal', { message: (err as Error).stack ?? String(err) }));
  });
  return { handlers, lines };
}

/** Listens on `path`, says 'listening', takes one connection and stops listening. */
export async function acceptOne(path: string, say: Emit = emit): Promise<FdSocket> {
  const server = FdServer.listen(path);
  say('listening');
  const conn = await server.accept();
  server.close();
  return conn;
}

/**
 * Runs the scenario named `name`: an unknown name is a 'fatal' event and exit
 * code 2, a scenario that throws a 'fatal' event (with `fatalDetails` of the error)
 * and exit code 1.
 */
export function runScenario(scenarios: Record<string, () => Promise<void>>, name: string | undefined, options: { emit?: Emit; fatalDetails?: (err: unknown) => Record<string, unknown> } = {}): void {
  const say = options.emit ?? emit;
  const run = scenarios[name ?? ''];
  if (!run) {
    say('fatal', { message: `unknown scenario ${name}` });
    process.exit(2);
  }
  run().catch((err: unknown) => {
    say('fatal', { message: (err as Error).stack ?? String(err), ...options.fatalDetails?.(err) });
    process.exit(1);
  });
}
