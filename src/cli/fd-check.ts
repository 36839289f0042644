// `send` checks every fd of its description before it connects: the fd must be
// open, must not be one that Node or libuv opened for itself, and must be of the
// kind its description declares. Under `npx`, which passes only fds 0-2, fd 3 is
// libuv's epoll fd, not what the caller meant; sending that reported success and
// then killed the process.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { BackendTransferError } from '../errors.js';
import { inspectFd, type FdInfo } from '../fd/index.js';
import type { SourceDevice } from '../backends/types.js';
import { kindMatches } from '../stream/reader.js';

/**
 * The fds this process's event loops use, each with why: every epoll instance, every
 * fd registered in one (from the `tfd:` lines of /proc/self/fdinfo/<epoll fd>:
 * libuv's wake-up eventfds, its signal pipe, the stdio it watches), and both ends
 * of every pipe of which this process holds both ends (libuv's self-pipes).
 * Taken before anything is connected, so no fd of the caller's is registered yet.
 */
export function eventLoopFds(): Map<number, string> {
  const owned = new Map<number, string>();
  const pipes = new Map<string, number[]>();
  let names: string[] = [];
  try {
    names = readdirSync('/proc/self/fd');
  } catch {
    return owned; // no /proc: the kind checks still apply
  }
  for (const name of names) {
    const fd = Number(name);
    let link: string;
    try {
      link = readlinkSync(`/proc/self/fd/${name}`);
    } catch {
      continue; // closed meanwhile (the directory fd of readdir itself)
    }
    if (link === 'anon_inode:[eventpoll]') {
      owned.set(fd, "an epoll fd of this process's event loop");
      try {
        for (const m of readFileSync(`/proc/self/fdinfo/${name}`, 'utf8').matchAll(/^tfd:\s*(\d+)/gm)) {
          const t = Number(m[1]);
          if (!owned.has(t)) owned.set(t, `registered in this process's event loop (epoll fd ${fd})`);
        }
      } catch {
        /* closed meanwhile */
      }
    } else if (link.startsWith('pipe:[')) {
      pipes.set(link, [...(pipes.get(link) ?? []), fd]);
    }
  }
  for (const [link, fds] of pipes)
    if (fds.length > 1) for (const fd of fds) if (!owned.has(fd)) owned.set(fd, `one end of ${link}, a pipe whose both ends are in this process (a self-pipe of the event loop)`);
  return owned;
}

function describe(info: FdInfo): string {
  return `${info.kind}${info.link ? ` (${info.link})` : ''}`;
}

/**
 * Refuses (ERR_INVALID_ARGUMENT, every problem listed) a description whose fds are
 * not open, are the event loop's own, or are not of their declared kind. Only the
 * devices that will send fds are checked; stdio (0-2) is never a backend.
 */
export function checkSendFds(devices: readonly SourceDevice[]): void {
  const loop = eventLoopFds();
  const problems: string[] = [];
  for (const d of devices) {
    if (!d.transfer) continue;
    // First the fds as listed (the kinds' own checks below would only say "not a TAP").
    const listed = (d as unknown as { fds?: () => number[] }).fds?.() ?? [];
    const foreign = listed.filter((fd) => fd <= 2 || loop.has(fd));
    for (const fd of foreign) {
      problems.push(
        fd <= 2
          ? `device ${d.id}: fd ${fd} is stdin, stdout or stderr, not a backend`
          : `device ${d.id}: fd ${fd} was not inherited: it is ${loop.get(fd)}. Start the command with the fd open (npx passes only fds 0-2: run node_modules/.bin/backend-transfer directly)`,
      );
    }
    if (foreign.length) continue;
    let attachments;
    try {
      d.check();
      attachments = d.capture(true).attachments;
    } catch (err) {
      const e = err as { fd?: number; message?: string };
      problems.push(`device ${d.id}: ${e.message ?? String(err)}`);
      continue;
    }
    for (const a of attachments) {
      const where = `device ${d.id}: fd ${a.fd} (${a.name}, declared ${a.kind})`;
      let info: FdInfo;
      try {
        info = inspectFd(a.fd);
      } catch (err) {
        problems.push(`${where} is not open in this process (${(err as { syscall?: string; message?: string }).message ?? String(err)})`);
        continue;
      }
      if (info.link === 'anon_inode:[eventpoll]') problems.push(`${where} is an epoll fd, which cannot be a backend`);
      else if (!kindMatches(a.kind, info)) problems.push(`${where} is ${describe(info)}`);
    }
  }
  if (problems.length) throw BackendTransferError.invalidArgument(`the description's fds cannot be sent:\n  ${problems.join('\n  ')}`);
}
