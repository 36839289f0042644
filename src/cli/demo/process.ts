// Child-process helpers of the demo (and of the tests, which import them): one
// place that asks whether a command exists and runs one, with its stderr in the error.
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';

/** Whether `cmd` is found on PATH (sh's `command -v`). */
export function hasCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Runs a program and returns its stdout; a failure throws with the program's own stderr (nothing is printed). */
export function runSync(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const raw = (err as { stderr?: string | Buffer }).stderr;
    const stderr = (raw === undefined ? '' : raw.toString()).trim();
    throw new Error(`${cmd} ${args.join(' ')}: ${stderr || (err as Error).message}`, { cause: err });
  }
}

/** Runs a program without blocking the event loop; resolves with its stdout and stderr. */
export const run = promisify(execFile);
