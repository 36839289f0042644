import { randomBytes } from 'node:crypto';
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
