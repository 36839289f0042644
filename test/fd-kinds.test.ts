// One vocabulary for "what kind of fd this is": FdKind (inspectFd, GenericTarget's
// `expect`), and the wire's attachment kinds, of which four are FdKinds by the same
// name (FdAttachmentKind) and the rest roles. attachmentKindOf maps the first onto
// the second; the reader's own check (kindMatches) must accept what it gives, for
// real fds of every kind this process can make.
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  ATTACHMENT_KINDS,
  FD_ATTACHMENT_KINDS,
  FD_KINDS,
  attachmentKindCode,
  attachmentKindOf,
  closeFds,
  inspectFd,
  isFdAttachmentKind,
  kindMatches,
  native,
  type AttachmentKind,
  type FdKind,
  type GenericFd,
} from '../src/index.js';
import { trackFdLeaks } from './helpers/fds.js';

trackFdLeaks();

/** Real fds of every kind this process can make without privileges, with the FdKind inspectFd must name. */
function makeFds(dir: string): { fd: number; want: FdKind }[] {
  const out: { fd: number; want: FdKind }[] = [];
  out.push({ fd: native.eventfd(0), want: 'eventfd' });
  out.push({ fd: native.memfd_create('bt-kinds'), want: 'memfd' });
  for (const [type, want] of [
    [native.SOCK_STREAM, 'unix-stream'],
    [native.SOCK_SEQPACKET, 'unix-seqpacket'],
    [native.SOCK_DGRAM, 'unix-dgram'],
  ] as const) {
    const [a, b] = native.socketpair(type);
    out.push({ fd: a, want }, { fd: b, want });
  }
  const l = native.socket(native.SOCK_STREAM);
  out.push({ fd: l, want: 'unix-listener' });
  native.bind(l, join(dir, 'l.sock'));
  native.listen(l, 1);
  const [r, w] = native.pipe2();
  out.push({ fd: r, want: 'pipe' }, { fd: w, want: 'pipe' });
  out.push({ fd: native.pidfd_open(process.pid), want: 'pidfd' });
  out.push({ fd: openSync(join(dir, 'f'), 'w'), want: 'file' });
  out.push({ fd: openSync(dir, 'r'), want: 'directory' });
  out.push({ fd: openSync('/dev/null', 'r'), want: 'char-device' });
  return out;
}

describe('fd kinds', () => {
  it('the attachment kinds that are fd kinds are exactly FD_ATTACHMENT_KINDS, and the wire codes stay', () => {
    const fdKinds = new Set<string>(FD_KINDS);
    expect(ATTACHMENT_KINDS.filter((k) => fdKinds.has(k))).toEqual([...FD_ATTACHMENT_KINDS]);
    for (const k of FD_KINDS) expect(isFdAttachmentKind(k)).toBe((FD_ATTACHMENT_KINDS as readonly string[]).includes(k));
    // docs/stream-format.md: the codes are positions + 1 and never change.
    const codes: Record<AttachmentKind, number> = { tap: 1, 'vhost-net': 2, 'vhost-user': 3, eventfd: 4, memfd: 5, 'chardev-socket': 6, listener: 7, generic: 8 };
    for (const k of ATTACHMENT_KINDS) expect(attachmentKindCode(k)).toBe(codes[k]);
  });

  it('attachmentKindOf(inspectFd(fd).kind) passes the reader check for a real fd of every kind', () => {
    const dir = mkdtempSync(join(tmpdir(), 'bt-kinds-'));
    const made = makeFds(dir);
    try {
      for (const { fd, want } of made) {
        const info = inspectFd(fd);
        expect(info.kind, `fd ${fd} (${info.link})`).toBe(want);
        expect(FD_KINDS).toContain(info.kind);
        const declared = attachmentKindOf(info.kind);
        expect(kindMatches(declared, info), `${info.kind} declared as ${declared}`).toBe(true);
        if (isFdAttachmentKind(info.kind)) expect(declared).toBe(info.kind);
        else expect(declared).toBe('generic');
        // The same name serves both sides of a generic device: the source's declared kind and the target's expect.
        const g: GenericFd = { name: 'x', fd, kind: declared };
        expect(g.kind).toBe(declared);
      }
      // A role is not an fd kind: an eventfd is no chardev socket, a socketpair end is no listener.
      const ev = made.find((m) => m.want === 'eventfd')!;
      const sp = made.find((m) => m.want === 'unix-stream')!;
      expect(kindMatches('chardev-socket', inspectFd(ev.fd))).toBe(false);
      expect(kindMatches('listener', inspectFd(sp.fd))).toBe(false);
      expect(kindMatches('memfd', inspectFd(ev.fd))).toBe(false);
    } finally {
      closeFds(made.map((m) => m.fd));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
