// closeFds asks the kinds of a batch of fds in one call (fstat_modes) and sorts
// them as closeFd would: those whose close cannot block are closed at once, the
// rest go to the closer thread. The same result as closing them one by one.
import { openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { closeFds, native } from '../src/index.js';
import { isOpen, trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();

describe('closeFds over a batch of mixed kinds', () => {
  it('closes eventfds, pipes, unix sockets, a memfd at once and a file on disk on the closer thread; repeats and closed numbers are ignored', async () => {
    // A regular file on a disk (not tmpfs: its close could flush): deferred.
    const diskDir = fileURLToPath(new URL('..', import.meta.url));
    const diskPath = join(diskDir, `.close-batch-${process.pid}`);
    const file = openSync(diskPath, 'w');
    rmSync(diskPath);
    const efds = Array.from({ length: 10 }, () => native.eventfd(0));
    const [p0, p1] = native.pipe2();
    const [s0, s1] = native.socketpair(native.SOCK_STREAM);
    const memfd = native.memfd_create('batch');
    const gone = native.eventfd(0);
    native.close(gone);
    const all = [...efds, p0, p1, s0, s1, memfd, file];
    const before = native.closer_stats().closed;
    const modes = new Int32Array(2 * all.length);
    native.fstat_modes(Int32Array.from(all), modes);
    // st_mode for each, SO_DOMAIN (AF_UNIX) for the sockets only.
    expect(modes[2 * all.indexOf(s0) + 1]).toBe(native.AF_UNIX);
    expect(modes[2 * all.indexOf(p0) + 1]).toBe(0);
    const one = new Int32Array(2);
    native.fstat_modes(Int32Array.of(gone), one);
    expect(one[0]).toBe(-9); // -EBADF

    closeFds([...all, efds[3]!, gone, s1]);
    // Everything but the disk file is closed already, on this thread.
    expect(all.filter((fd) => fd !== file && isOpen(fd))).toEqual([]);
    for (let i = 0; i < 200 && isOpen(file); i++) await new Promise((r) => setTimeout(r, 10));
    expect(isOpen(file)).toBe(false);
    expect(native.closer_stats().closed).toBe(before + 1);
  });
});
