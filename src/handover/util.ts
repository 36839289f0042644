import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { FdPoller, READABLE } from '../transport/poller.js';
import { closeFd, closeFds } from '../fd/index.js';
import type { StreamItem } from '../stream/reader.js';

export function closeSectionItem(it: StreamItem): void {
  if (it.type !== 'section') return;
  closeFds(it.attachments.map((a) => a.fd));
  if (it.payloadFd !== undefined) closeFd(it.payloadFd);
}

export function randomProbe(): Buffer {
  return randomBytes(16);
}

export const now = (): number => performance.now();

/**
 * Whether the process behind `pidfd` has exited, waiting up to `ms` for it (a
 * pidfd polls readable once its process is gone). Without a pidfd: whether
 * /proc/<pid> is gone (racy only if the pid was reused in the meantime).
 */
export function processGone(pidfd: number | null, pid: number | null, ms: number): Promise<boolean> {
  if (pidfd === null || pidfd < 0) {
    if (pid === null) return Promise.resolve(false);
    return new Promise((resolve) => {
      const deadline = Date.now() + ms;
      const check = () => {
        if (!existsSync(`/proc/${pid}`)) return resolve(true);
        if (Date.now() >= deadline) return resolve(false);
        setTimeout(check, 10);
      };
      check();
    });
  }
  return new Promise((resolve) => {
    let done = false;
    const finish = (v: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      poller.close();
      resolve(v);
    };
    const poller = new FdPoller(pidfd, (_ev, err) => finish(!err));
    const timer = setTimeout(() => finish(false), ms);
    poller.set(READABLE);
  });
}
