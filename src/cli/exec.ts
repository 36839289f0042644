// `receive --exec`: everything that could keep the program from starting is
// checked before a source is accepted, because after the commit the backends are
// this process's alone and a failed exec would lose them.
import { accessSync, constants, readFileSync, statSync, writeSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { BackendTransferError } from '../errors.js';
import { closeFd } from '../fd/index.js';
import { createMemfd, sealMemfd } from '../fd/create.js';

/** Linux's limit on one argv or environment string, its NUL included (MAX_ARG_STRLEN, 32 pages). */
export const MAX_ARG_STRLEN = 128 * 1024;
/** Room kept free in ARG_MAX for what this estimate does not count (auxv, alignment, the program path). */
const ARG_MARGIN = 64 * 1024;

function bad(message: string): BackendTransferError {
  return BackendTransferError.invalidArgument(message);
}

/**
 * execve's limit on argv + envp together: a quarter of the soft stack limit (from
 * /proc/self/limits), at least 128 KiB and at most 6 MiB (3/4 of _STK_LIM), as
 * the kernel bounds it.
 */
export function argMax(): number {
  let stack = 8 * 1024 * 1024;
  try {
    const m = /^Max stack size\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m) stack = m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1]);
  } catch {
    /* the default */
  }
  return Math.max(MAX_ARG_STRLEN, Math.min(stack / 4, 6 * 1024 * 1024));
}

/** Bytes argv and env take on the new program's stack: each string with its NUL, and a pointer each. */
function argBytes(strings: string[]): number {
  let n = 0;
  for (const s of strings) n += Buffer.byteLength(s) + 1 + 8;
  return n + 16;
}

function envStrings(env: NodeJS.ProcessEnv): string[] {
  return Object.entries(env)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
}

/** The program `cmd` names: a path with a slash as is, else the first executable match on PATH. */
export function resolveProgram(cmd: string, path = process.env.PATH ?? ''): string {
  const candidates = cmd.includes('/') ? [cmd] : path.split(delimiter).map((dir) => join(dir || '.', cmd));
  let why = 'not found';
  for (const c of candidates) {
    try {
      const st = statSync(c);
      if (!st.isFile()) {
        why = `${c} is not a regular file`;
        continue;
      }
      accessSync(c, constants.X_OK);
      return c;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'EACCES') why = `${c} is not executable`;
      else if (code !== 'ENOENT' && code !== 'ENOTDIR') why = `${c}: ${(err as Error).message}`;
    }
  }
  throw bad(`--exec: cannot run ${cmd}: ${cmd.includes('/') ? why : `${why} on PATH`}`);
}

/**
 * Checks before any source is accepted that `program args` can be started with
 * `env` plus BT_HANDOVER_FD: each string under MAX_ARG_STRLEN and all of them
 * under ARG_MAX. The description itself does not need to fit: it goes in a memfd.
 */
export function checkExecSize(program: string, args: string[], env: NodeJS.ProcessEnv): void {
  const strings = [program, ...args, ...envStrings(env), 'BT_HANDOVER_FD=2147483647'];
  const long = strings.find((s) => Buffer.byteLength(s) + 1 > MAX_ARG_STRLEN);
  if (long !== undefined) throw bad(`--exec: an argument or environment string of ${Buffer.byteLength(long)} bytes is over Linux's limit of ${MAX_ARG_STRLEN - 1} (MAX_ARG_STRLEN)`);
  const total = argBytes(strings);
  if (total + ARG_MARGIN > argMax()) throw bad(`--exec: arguments and environment take ${total} bytes, over the ${argMax() - ARG_MARGIN} that execve allows here (ARG_MAX, from the stack limit)`);
}

/**
 * The environment for the program: BT_HANDOVER_FD always (the description in a
 * sealed memfd, read from offset 0), and BT_HANDOVER too when the description fits
 * in one environment string and in ARG_MAX beside the rest (it is left out, not
 * cut, when it does not: read BT_HANDOVER_FD then).
 */
export function execEnv(program: string, args: string[], base: NodeJS.ProcessEnv, description: string, descriptionFd: number): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base, BT_HANDOVER_FD: String(descriptionFd) };
  delete env.BT_HANDOVER;
  const withIt = `BT_HANDOVER=${description}`;
  const rest = argBytes([program, ...args, ...envStrings(env)]);
  if (Buffer.byteLength(withIt) + 1 <= MAX_ARG_STRLEN && rest + argBytes([withIt]) + ARG_MARGIN <= argMax()) env.BT_HANDOVER = description;
  return env;
}

/** A memfd holding `text`, sealed against any change. The caller closes it. */
export function descriptionMemfd(text: string): number {
  const fd = createMemfd('bt-handover');
  try {
    const b = Buffer.from(text);
    let off = 0;
    // pwrite: the file offset stays 0, so the program reads from the start.
    while (off < b.length) off += writeSync(fd, b, off, b.length - off, off);
    sealMemfd(fd);
    return fd;
  } catch (err) {
    closeFd(fd);
    throw BackendTransferError.fromSystem(err, 'writing the description to a memfd');
  }
}
