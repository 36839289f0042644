// The qemu-storage-daemon harness lives in src/cli/demo (the demo uses it too);
// what only the tests use is here.
import { StorageDaemon, socketFds, type StorageDaemonOptions } from '../../src/cli/demo/storage-daemon.js';
import { hasCommand } from '../../src/cli/demo/process.js';
import { Tracked } from './tracked.js';

export * from '../../src/cli/demo/storage-daemon.js';

const QSD = 'qemu-storage-daemon';

/** null when qemu-storage-daemon can run here, else why not. */
export function qsdUnavailable(): string | null {
  if (!hasCommand(QSD)) return 'qemu-storage-daemon is not installed (Debian package qemu-system-common)';
  return null;
}

/** null when `ss` (iproute2) can show unix socket peers, else why not. */
export function ssUnavailable(): string | null {
  return hasCommand('ss') ? null : "the 'ss' command (Debian package iproute2) is not installed";
}

/** Inodes of the sockets this process has open (e.g. to check that a handed-over connection left it). */
export function ownSocketInodes(): Set<number> {
  return new Set(socketFds(process.pid).keys());
}

/** Tracks daemons so that afterEach disposes of them even when a test fails. */
export class StorageDaemons extends Tracked<StorageDaemonOptions, StorageDaemon> {
  constructor() {
    super((options) => StorageDaemon.start(options));
  }
}
