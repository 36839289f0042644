#!/usr/bin/env python3
"""A handover target written from docs/stream-format.md, in Python (standard
library only), that takes a live handover from the library's sendHandover.

    live_target.py SOCKET_PATH

It listens on SOCKET_PATH, accepts one source and follows "The session": reads
MAGIC HELLO and checks the probe fd, answers MAGIC WELCOME (a `generic` device
`gen0` with its fds, the `vmm-state` device state-only), reads PLAN (checked
against HELLO and WELCOME), the sections with their fds (payload memfds
included), END_OF_STATE (totals checked), sends ACK(LOADED), ACK(VERIFIED),
ACK(ADOPTED), reads COMMIT, sends ACK(COMMITTED), reads the source's EOF and
sends its own. Then it uses what came: it reads the memfd named `mem`, writes
and reads the eventfd named `ev`, and hashes the VMM state. It prints one JSON
line with what it found; exit 0 when the handover committed.

Frame decoding and the reader's checks are those of decode_stream.py.
"""
import array
import fcntl
import hashlib
import json
import os
import socket
import struct
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decode_stream as ds  # noqa: E402

SEALS = 0x0002 | 0x0004 | 0x0008  # F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE


class Peer:
    """One direction in, one out, on an AF_UNIX stream socket with SCM_RIGHTS."""

    def __init__(self, conn):
        self.conn = conn
        self.buf = b""
        self.base = 0          # stream offset of buf[0]
        self.fdq = []          # [fd, chunk_end], in arrival order
        self.taken = 0         # fds taken (the fd numbering of the main stream)
        self.out_magic = False
        self.features = None   # settled features of the main stream (PLAN's)
        self.out_features = None  # of the return path (WELCOME's)
        self.magic_done = False
        self.eof = False

    def recv(self):
        data, fds, _flags, _addr = socket.recv_fds(self.conn, 1 << 20, 253)
        if not data:
            self.eof = True
            for fd in fds:
                os.close(fd)
            return
        self.buf += data
        end = self.base + len(self.buf)
        self.fdq.extend([fd, end] for fd in fds)

    def need(self, n):
        while len(self.buf) < n:
            if self.eof:
                raise ds.StreamError("ERR_STREAM_TRUNCATED", self.base + len(self.buf), "the source closed")
            self.recv()

    def frame(self):
        """The next frame: (name, flags, header fields, body bytes, fds, offset)."""
        if not self.magic_done:
            self.need(8)
            if self.buf[:8] != ds.MAGIC:
                raise ds.StreamError("ERR_STREAM_BAD_MAGIC", 0, "not the magic")
            self.buf, self.base, self.magic_done = self.buf[8:], self.base + 8, True
        at = self.base
        fail = lambda code, msg: (_ for _ in ()).throw(ds.StreamError(code, at, msg))
        self.need(20)
        h = self.buf[:20]
        typ, flags, reserved, blen, fdc, first = struct.unpack("<BBHIII", h[:16])
        if zlib.crc32(h[:16]) != struct.unpack("<I", h[16:])[0]:
            fail("ERR_STREAM_CRC", "header")
        if reserved:
            fail("ERR_STREAM_PROTOCOL", "reserved")
        name = ds.TYPES.get(typ) or fail("ERR_STREAM_UNKNOWN_FRAME", hex(typ))
        if blen > ds.LIMITS["body"] or fdc > ds.LIMITS["fds_frame"]:
            fail("ERR_STREAM_TOO_LARGE", "header")
        if flags & ~1 or (flags and name not in ds.SECTIONS):
            fail("ERR_STREAM_PROTOCOL", f"flags {flags}")
        if name not in ds.SECTIONS and fdc > (1 if name == "HELLO" else 0):
            fail("ERR_STREAM_PROTOCOL", f"{name} with {fdc} fds")
        self.need(20 + blen + 4)
        body = self.buf[20:20 + blen]
        stored = struct.unpack("<I", self.buf[20 + blen:24 + blen])[0]
        end = at + 24 + blen
        self.buf, self.base = self.buf[24 + blen:], end
        if name in ds.HANDSHAKE or (self.features is not None and self.features & ds.BODY_CRC):
            if zlib.crc32(body) != stored:
                fail("ERR_STREAM_CRC", f"{name} body")
        fds = []
        if name == "HELLO" and fdc == 1 and not self.fdq:
            if first != self.taken:
                fail("ERR_STREAM_FD_SEQUENCE", "probe")
            self.taken += 1  # the probe was lost: it still counts
            fds = [None]
        elif fdc:
            if first != self.taken:
                fail("ERR_STREAM_FD_SEQUENCE", f"firstFdSeq {first}, expected {self.taken}")
            if len(self.fdq) < fdc:
                fail("ERR_STREAM_FD_MISSING", f"{fdc} declared")
            fds = [q[0] for q in self.fdq[:fdc]]
            del self.fdq[:fdc]
            self.taken += fdc
        if self.fdq and self.fdq[0][1] <= end:
            fail("ERR_STREAM_FD_EXTRA", "an fd no frame declared")
        return name, flags, fdc, first, body, fds, at

    def send(self, typ, body):
        crc_on = typ in (0x01, 0x02, 0x03) or self.out_features is None or self.out_features & ds.BODY_CRC
        head = struct.pack("<BBHIII", typ, 0, 0, len(body), 0, 0)
        frame = head + struct.pack("<I", zlib.crc32(head)) + body + struct.pack("<I", zlib.crc32(body) if crc_on else 0)
        if not self.out_magic:
            frame, self.out_magic = ds.MAGIC + frame, True  # the magic goes with the first frame
        self.conn.sendall(frame)


def s16(s):
    b = s.encode()
    return struct.pack("<H", len(b)) + b


def blob(b):
    return struct.pack("<I", len(b)) + b


def welcome_for(hello, probe_ok):
    """Our answers: gen0 with its fds, vmm-state state-only, anything else refused (unknown)."""
    answers = []
    for o in hello["offers"]:
        if o["kind"] == "state" and o["id"] == "vmm-state" and o["instance"] == 0:
            answers.append(dict(id=o["id"], instance=o["instance"], decision=1, reason=0, minVersion=1, maxVersion=1))
        elif o["kind"] == "generic" and o["id"] == "gen0":
            wants = (o["flags"] & 1) and o["fdCount"] > 0
            ok = wants and probe_ok
            answers.append(dict(id=o["id"], instance=o["instance"], decision=2 if ok else 1, reason=0 if ok or not wants else 6, minVersion=1, maxVersion=1))
        else:
            answers.append(dict(id=o["id"], instance=o["instance"], decision=0, reason=1, minVersion=0, maxVersion=0))
    features = hello["features"] & (ds.FDS | ds.MEMFD_PAYLOAD | ds.BODY_CRC)
    info = {"pid": os.getpid(), "probe": "ok" if probe_ok else ("missing" if hello["probe"] else "none")}
    w = dict(version=1, features=features, canPassFds=1 if probe_ok else 0, fdBudget=1000, answers=answers, info=info)
    body = struct.pack("<HIBBII", 1, features, w["canPassFds"], 0, 1000, len(answers))
    for a in answers:
        body += s16(a["id"]) + struct.pack("<IBBII", a["instance"], a["decision"], a["reason"], a["minVersion"], a["maxVersion"])
    body += blob(json.dumps(info).encode())
    return w, body


def read_memfd(fd, length):
    if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
        raise ds.StreamError("ERR_STREAM_MEMFD_UNSEALED", -1, "payload memfd")
    if os.fstat(fd).st_size != length:
        raise ds.StreamError("ERR_STREAM_MEMFD_SIZE", -1, "payload memfd")
    return os.pread(fd, length, 0)


def main():
    path = sys.argv[1]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path + ".tmp")
    srv.listen(1)
    os.rename(path + ".tmp", path)  # the path appears only once it is listening
    conn, _ = srv.accept()
    srv.close()
    p = Peer(conn)
    st = dict(phase="hello", hello=None, welcome=None, plan=None, features=None, devices={}, section_ids=set(),
              open=None, sections=0, device_fds=0, payload=0, refused=False, finished=False, received=0)
    received = {}   # device id -> [(attachment, fd)]
    payloads = {}   # device id -> bytes
    result = dict(ok=False)
    try:
        def expect(*names):
            while True:
                name, flags, fdc, first, body, fds, at = p.frame()
                ds.check_order(name, "target", st, lambda code, msg: (_ for _ in ()).throw(ds.StreamError(code, at, msg)))
                fail = lambda code, msg: (_ for _ in ()).throw(ds.StreamError(code, at, msg))
                if name == "PING":  # answered with a PONG on the return path, then skipped
                    d = ds.decode_body(name, ds.Body(body, fail), flags, fdc, [], "target", st["welcome"], st, fail)
                    p.send(0x33, struct.pack("<QQ", int(d["token"]), time.monotonic_ns()))
                    continue
                if name == "ABORT":
                    d = ds.decode_body(name, ds.Body(body, fail), flags, fdc, [], "target", st["welcome"], st, fail)
                    raise ds.StreamError("ERR_HANDOVER_ABORTED", at, f"{d['code']}: {d['reason']}")
                if name not in names:
                    raise ds.StreamError("ERR_STREAM_PROTOCOL", at, f"expected {names}, got {name}")
                d = ds.decode_body(name, ds.Body(body, fail), flags, fdc, [None] * fdc, "target", st["welcome"], st, fail)
                return name, flags, d, fds, body

        # HELLO and its probe
        _, _, hello, fds, _ = expect("HELLO")
        probe_ok = False
        if hello["probe"] and fds and fds[0] is not None:
            try:
                probe_ok = os.pread(fds[0], 17, 0) == bytes.fromhex(hello["probe"]) and fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) >= 0
            finally:
                os.close(fds[0])
        welcome, wbody = welcome_for(hello, probe_ok)
        st["welcome"] = welcome
        p.send(0x02, wbody)
        p.out_features = welcome["features"]
        # PLAN (decode_body checks it against HELLO x WELCOME), then the sections
        _, _, plan, _, _ = expect("PLAN")
        p.features = plan["features"]
        while True:
            name, flags, d, fds, body = expect("SECTION_START", "SECTION_PART", "SECTION_END", "SECTION_FULL", "END_OF_STATE")
            if name == "END_OF_STATE":
                break
            dev = st["open"]["dev"]["id"] if st["open"] else d.get("idstr") or next(iter(k for k, v in st["devices"].items() if v["section"] == d["sectionId"]))[0]
            for a, fd in zip(d["attachments"], fds):
                if a["role"] == 0:
                    received.setdefault(dev, []).append((a, fd))
            data = b""
            if flags & 1:
                fd = fds[-1]
                try:
                    data = read_memfd(fd, d["payloadLength"])
                finally:
                    os.close(fd)
                if p.features & ds.BODY_CRC and zlib.crc32(data) != d["payloadCrc"]:
                    raise ds.StreamError("ERR_STREAM_CRC", -1, "payload memfd")
            else:
                # inline: the payload is the tail of the body (decode_body checked its length)
                data = body[len(body) - d["payloadLength"]:] if d["payloadLength"] else b""
            payloads[dev] = payloads.get(dev, b"") + data
        # verify: gen0's fds are what its attachments say, and its state names them
        gen = received.get("gen0", [])
        kinds = {a["name"]: (a["kind"], fd) for a, fd in gen}
        ack_body = lambda stage: struct.pack("<BI", stage, 0xFFFFFFFF) + s16("")
        p.send(0x30, ack_body(1))
        meta = json.loads(payloads["gen0"].split(b"\0", 1)[0])
        if sorted(meta["names"]) != sorted(kinds):
            raise ds.StreamError("ERR_BACKEND_VERIFY", -1, f"names {meta['names']} vs fds {list(kinds)}")
        p.send(0x30, ack_body(2))
        p.send(0x30, ack_body(3))  # adopted: the fds are ours once COMMIT comes
        expect("COMMIT")
        p.send(0x30, ack_body(4))
        expect("EOF")
        p.send(0x7F, b"")
        # use them
        mem_fd, ev_fd = kinds["mem"][1], kinds["ev"][1]
        memfd = os.pread(mem_fd, 4096, 0).decode(errors="replace")
        os.write(ev_fd, struct.pack("<Q", 5))
        os.write(ev_fd, struct.pack("<Q", 5))
        ev = struct.unpack("<Q", os.read(ev_fd, 8))[0]
        state = payloads.get("vmm-state", b"")
        result = dict(ok=True, memfd=memfd, eventfd=ev, stateBytes=len(state), stateSha256=hashlib.sha256(state).hexdigest(),
                      genericBlob=payloads["gen0"].split(b"\0", 1)[1].decode() if b"\0" in payloads["gen0"] else "",
                      probe=welcome["info"]["probe"], features=plan["features"], fdNumbering=p.taken)
    except ds.StreamError as e:
        result = dict(ok=False, code=e.code, offset=e.offset, message=str(e))
        try:
            p.send(0x31, s16(e.code) + s16(str(e)[:2000]) + struct.pack("<I", 0xFFFFFFFF))
            p.send(0x7F, b"")
        except OSError:
            pass
    finally:
        for lst in received.values():
            for _, fd in lst:
                os.close(fd)
        for fd, _ in p.fdq:
            os.close(fd)
        conn.close()
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
