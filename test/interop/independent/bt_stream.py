"""Decoder/encoder of the backend-transfer migration stream, version 1.

Written from docs/stream-format.md only (Python standard library only).
Push API:  d = Decoder(...); d.feed(bytes, fds); ...; d.end()
Each complete, checked frame is appended to d.frames (and returned by feed).
Errors are raised as StreamError(code, offset, message).
"""
import fcntl
import hashlib
import json
import os
import socket
import stat
import struct
import zlib

MAGIC = b"\x89BTM\r\n\x1a\n"
HEADER = struct.Struct("<BBHIIII")  # type flags reserved bodyLength fdCount firstFdSeq headerCrc

HELLO, WELCOME, PLAN = 0x01, 0x02, 0x03
SECTION_START, SECTION_PART, SECTION_END, SECTION_FULL = 0x10, 0x11, 0x12, 0x13
END_OF_STATE = 0x20
ACK, NACK, PING, PONG = 0x30, 0x31, 0x32, 0x33
COMMIT, ABORT, EOF = 0x40, 0x41, 0x7F
TYPE_NAMES = {
    HELLO: "HELLO", WELCOME: "WELCOME", PLAN: "PLAN",
    SECTION_START: "SECTION_START", SECTION_PART: "SECTION_PART",
    SECTION_END: "SECTION_END", SECTION_FULL: "SECTION_FULL",
    END_OF_STATE: "END_OF_STATE", ACK: "ACK", NACK: "NACK", PING: "PING",
    PONG: "PONG", COMMIT: "COMMIT", ABORT: "ABORT", EOF: "EOF",
}
SECTION_TYPES = (SECTION_START, SECTION_PART, SECTION_END, SECTION_FULL)
FLAG_PAYLOAD_IN_MEMFD = 1

F_FDS, F_MEMFD_PAYLOAD, F_BODY_CRC = 1, 2, 4
OFFER_WANTS_FDS, OFFER_REQUIRED = 1, 2
DECISION_REFUSE, DECISION_STATE_ONLY, DECISION_WITH_FDS = 0, 1, 2
ACK_LOADED, ACK_VERIFIED, ACK_ADOPTED, ACK_COMMITTED = 1, 2, 3, 4
WHOLE_STREAM = 0xFFFFFFFF
UNKNOWN_BUDGET = 0xFFFFFFFF

ATT_KINDS = {1: "tap", 2: "vhost-net", 3: "vhost-user", 4: "eventfd", 5: "memfd",
             6: "chardev-socket", 7: "listener", 8: "generic"}
ATT_KIND_IDS = {v: k for k, v in ATT_KINDS.items()}

SPOKEN_VERSIONS = (1,)

DEFAULT_LIMITS = {
    "body": 64 * 1024 * 1024,
    "fdsPerFrame": 4096,
    "fdsPerStream": 1048576,
    "sections": 65536,
    "counts": 65536,
    "json": 64 * 1024,
    "str": 4096,
    "memfdPayload": 4 * 1024 * 1024 * 1024,
}

F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
F_GET_SEALS = 1034
F_ADD_SEALS = 1033


class StreamError(Exception):
    def __init__(self, code, offset, message=""):
        super().__init__("%s at offset %s: %s" % (code, offset, message))
        self.code = code
        self.offset = offset
        self.message = message


def crc32(b):
    return zlib.crc32(b) & 0xFFFFFFFF


# ---------------------------------------------------------------- fd kinds

def fd_target(fd):
    try:
        return os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        return ""


def fd_is_memfd(fd):
    return fd_target(fd).startswith("/memfd:")


def fd_is_eventfd(fd):
    return fd_target(fd) == "anon_inode:[eventfd]"


def _sock_opts(fd):
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        fam = s.family
        typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        acc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        try:
            s.getpeername()
            connected = True
        except OSError:
            connected = False
        return fam, typ, acc, connected
    finally:
        s.close()


def fd_kind_ok(fd, kind):
    """'as far as the kernel can tell' (spec: Sections)."""
    if kind == "generic":
        return True
    if kind == "eventfd":
        return fd_is_eventfd(fd)
    if kind == "memfd":
        return fd_is_memfd(fd)
    if kind == "tap":
        return fd_target(fd) == "/dev/net/tun"
    if kind == "vhost-net":
        return fd_target(fd) == "/dev/vhost-net"
    o = _sock_opts(fd)
    if kind == "vhost-user":
        return o is not None and o[0] == socket.AF_UNIX and o[1] == socket.SOCK_STREAM and o[3] and not o[2]
    if kind == "chardev-socket":
        return o is not None and not o[2]
    if kind == "listener":
        return o is not None and bool(o[2])
    return False


def memfd_seals(fd):
    try:
        return fcntl.fcntl(fd, F_GET_SEALS)
    except OSError:
        return 0


def read_fd_all(fd, size):
    out = bytearray()
    while len(out) < size:
        b = os.pread(fd, min(size - len(out), 1 << 20), len(out))
        if not b:
            break
        out += b
    return bytes(out)


# ---------------------------------------------------------------- body reader

def _no_constant(name):
    raise ValueError("%s is not JSON" % name)  # NaN, Infinity: Python extensions, not JSON


class Body:
    def __init__(self, buf, limits):
        self.b = buf
        self.p = 0
        self.limits = limits

    def need(self, n):
        if self.p + n > len(self.b):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "field runs past bodyLength")

    def left(self):
        return len(self.b) - self.p

    def u8(self):
        self.need(1); v = self.b[self.p]; self.p += 1; return v

    def bool(self):
        # resolution A5: a boolean is 0 or 1, anything else is malformed
        v = self.u8()
        if v > 1:
            raise StreamError("ERR_STREAM_PROTOCOL", None, "boolean byte %d" % v)
        return v

    def u16(self):
        self.need(2); v = struct.unpack_from("<H", self.b, self.p)[0]; self.p += 2; return v

    def u32(self):
        self.need(4); v = struct.unpack_from("<I", self.b, self.p)[0]; self.p += 4; return v

    def u64(self):
        self.need(8); v = struct.unpack_from("<Q", self.b, self.p)[0]; self.p += 8; return v

    def raw(self, n):
        self.need(n); v = bytes(self.b[self.p:self.p + n]); self.p += n; return v

    def str(self):
        n = self.u16()
        if n > self.limits["str"]:
            raise StreamError("ERR_STREAM_TOO_LARGE", None, "str of %d bytes" % n)
        raw = self.raw(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StreamError("ERR_STREAM_PROTOCOL", None, "str is not UTF-8")

    def blob(self):
        n = self.u32()
        return self.raw(n)

    def json(self):
        n = self.u32()
        if n > self.limits["json"]:
            raise StreamError("ERR_STREAM_TOO_LARGE", None, "json of %d bytes" % n)
        raw = self.raw(n)
        if n == 0:
            return None
        try:
            v = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "bad JSON")
        if not isinstance(v, dict):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "JSON is not an object")
        return v

    def count(self, n, min_size):
        if n > self.limits["counts"]:
            raise StreamError("ERR_STREAM_TOO_LARGE", None, "count %d over limit" % n)
        if n * min_size > self.left():
            raise StreamError("ERR_STREAM_PROTOCOL", None, "count %d does not fit" % n)

    def done(self):
        if self.p != len(self.b):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "%d bytes left over in body" % self.left())


def decode_body(ftype, flags, fd_count, raw, limits):
    """Decode a body exactly. Returns (body dict, extra dict) -- extra holds the
    inline payload bytes etc. Layout rules are checked here."""
    b = Body(raw, limits)
    extra = {}
    if ftype == HELLO:
        body = {"minVersion": b.u16(), "maxVersion": b.u16(), "features": b.u32(),
                "canPassFds": b.bool()}
        b.u8()  # reserved, ignored
        body["fdBudget"] = b.u32()
        probe = b.blob()
        if len(probe) not in (0, 16):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "probe of %d bytes" % len(probe))
        body["probe"] = probe.hex() if probe else None
        n = b.u32()
        b.count(n, 17)
        offers = []
        for _ in range(n):
            offers.append({"kind": b.str(), "id": b.str(), "instance": b.u32(), "version": b.u32(),
                           "fdCount": b.u32(), "flags": b.u8()})
        body["offers"] = offers
        body["info"] = b.json()
        extra["probe"] = probe
    elif ftype == WELCOME:
        body = {"version": b.u16(), "features": b.u32(), "canPassFds": b.bool()}
        b.u8()
        body["fdBudget"] = b.u32()
        n = b.u32()
        b.count(n, 16)
        answers = []
        for _ in range(n):
            a = {"id": b.str(), "instance": b.u32(), "decision": b.u8(), "reason": b.u8(),
                 "minVersion": b.u32(), "maxVersion": b.u32()}
            if a["decision"] > 2 or a["reason"] > 6:
                raise StreamError("ERR_STREAM_PROTOCOL", None, "bad decision/reason")
            answers.append(a)
        body["answers"] = answers
        body["info"] = b.json()
    elif ftype == PLAN:
        body = {"version": b.u16(), "features": b.u32(), "totalFds": b.u32()}
        n = b.u32()
        if n > limits["sections"]:
            raise StreamError("ERR_STREAM_TOO_LARGE", None, "too many planned devices")
        b.count(n, 17)
        devs = []
        for _ in range(n):
            devs.append({"kind": b.str(), "id": b.str(), "instance": b.u32(), "version": b.u32(),
                         "withFds": b.bool(), "fdCount": b.u32()})
        body["devices"] = devs
    elif ftype in SECTION_TYPES:
        body = {"sectionId": b.u32()}
        if ftype in (SECTION_START, SECTION_FULL):
            body["instanceId"] = b.u32()
            body["versionId"] = b.u32()
            body["idstr"] = b.str()
        n = b.u16()
        if n != fd_count:
            raise StreamError("ERR_STREAM_PROTOCOL", None, "attachmentCount %d != fdCount %d" % (n, fd_count))
        atts = []
        for _ in range(n):
            k = b.u8()
            r = b.u8()
            if k not in ATT_KINDS or r not in (0, 1):
                raise StreamError("ERR_STREAM_PROTOCOL", None, "attachment kind %d role %d" % (k, r))
            atts.append({"kind": ATT_KINDS[k], "role": r, "name": b.str(), "meta": b.json()})
        body["attachments"] = atts
        in_memfd = bool(flags & FLAG_PAYLOAD_IN_MEMFD)
        roles1 = [i for i, a in enumerate(atts) if a["role"] == 1]
        if in_memfd:
            if len(roles1) != 1 or roles1[0] != len(atts) - 1 or atts[-1]["kind"] != "memfd":
                raise StreamError("ERR_STREAM_PROTOCOL", None, "bad payload attachment")
        elif roles1:
            raise StreamError("ERR_STREAM_PROTOCOL", None, "role-1 attachment without PAYLOAD_IN_MEMFD")
        plen = b.u32()
        body["payloadLength"] = plen
        if in_memfd:
            if plen > limits["memfdPayload"]:
                raise StreamError("ERR_STREAM_TOO_LARGE", None, "memfd payload too large")
            body["payloadCrc"] = b.u32()
        else:
            if plen != b.left():
                raise StreamError("ERR_STREAM_PROTOCOL", None, "payloadLength %d != %d bytes left" % (plen, b.left()))
            payload = b.raw(plen)
            extra["payload"] = payload
            body["payloadSha256"] = hashlib.sha256(payload).hexdigest()
    elif ftype == END_OF_STATE:
        body = {"sectionCount": b.u32(), "totalFds": b.u32(), "payloadBytes": str(b.u64())}
    elif ftype == ACK:
        body = {"stage": b.u8(), "sectionId": b.u32(), "detail": b.str()}
        if body["stage"] not in (1, 2, 3, 4):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "ACK stage %d" % body["stage"])
    elif ftype == NACK:
        body = {"code": b.str(), "reason": b.str(), "sectionId": b.u32()}
    elif ftype in (PING, PONG):
        body = {"token": str(b.u64()), "timeNs": str(b.u64())}
    elif ftype == ABORT:
        body = {"code": b.str(), "reason": b.str()}
    else:  # COMMIT, EOF
        body = {}
    b.done()
    return body, extra


# ---------------------------------------------------------------- plan

def compute_plan(hello, welcome):
    """The intersection (spec: PLAN)."""
    devs = []
    for offer, ans in zip(hello["offers"], welcome["answers"]):
        if ans["decision"] not in (DECISION_STATE_ONLY, DECISION_WITH_FDS):
            continue
        with_fds = (ans["decision"] == DECISION_WITH_FDS and (offer["flags"] & OFFER_WANTS_FDS)
                    and offer["fdCount"] > 0 and hello["canPassFds"] == 1 and welcome["canPassFds"] == 1
                    and (welcome["features"] & F_FDS))
        devs.append({"kind": offer["kind"], "id": offer["id"], "instance": offer["instance"],
                     "version": offer["version"], "withFds": 1 if with_fds else 0,
                     "fdCount": offer["fdCount"] if with_fds else 0})
    return {"version": welcome["version"], "features": welcome["features"],
            "totalFds": sum(d["fdCount"] for d in devs), "devices": devs}


# ---------------------------------------------------------------- decoder

class Decoder:
    """direction: 'main' or 'return'.  reader: 'inspect', 'target' or 'source'.
    with_fds: False = bytes alone (a file): no fd checks, attachments without fds.
    welcome: for reader 'target', the WELCOME body this side sent (may also be set
    later with set_welcome() before PLAN arrives).  hello: for reader 'source'
    (optional), the HELLO body this side sent, to check WELCOME against it."""

    def __init__(self, direction="main", reader="inspect", with_fds=True, welcome=None,
                 hello=None, limits=None):
        self.direction = direction
        self.reader = reader
        self.with_fds = with_fds
        self.welcome = welcome
        self.sent_hello = hello
        self.limits = dict(DEFAULT_LIMITS, **(limits or {}))
        self.buf = bytearray()
        self.base = 0            # stream offset of buf[0]
        self.received = 0        # total bytes received
        self.magic_ok = False
        self.hdr = None          # parsed header of the frame in progress
        self.frames = []
        self.fdq = []            # [(fd, mark)]
        self.fds_taken = 0       # numbering: fds taken (+ a missing probe)
        self.fds_received = 0
        self.owned = []          # fds handed out in frames (the caller's to close/keep)
        self.failed = None
        # order state
        self.seen_hello = self.seen_plan = self.seen_eos = self.seen_eof = False
        self.seen_welcome = self.nack_first = False
        self.nframes = 0
        self.hello = None
        self.plan = None
        self.features = None     # settled features for this direction
        self.probe_status = "none"
        # section state
        self.planned = {}        # (id, instance) -> device
        self.dev_sections = {}   # (id, instance) -> {'fds': n}
        self.section_ids = set()
        self.open = None         # (sectionId, key)
        self.ended = None        # resolution A1/A2: "COMMIT" or "ABORT" seen on the main stream
        self.n_sections = 0
        self.total_dev_fds = 0
        self.payload_bytes = 0

    # -- public
    def set_welcome(self, welcome):
        self.welcome = welcome

    def feed(self, data, fds=()):
        if self.failed:
            raise self.failed
        start = len(self.frames)
        self.received += len(data)
        for fd in fds:
            self.fdq.append((fd, self.received))
        self.fds_received += len(fds)
        try:
            if self.seen_eof and data:
                raise StreamError("ERR_STREAM_PROTOCOL", self.received - len(data), "bytes after EOF")
            if self.fds_received > self.limits["fdsPerStream"]:
                raise StreamError("ERR_STREAM_TOO_LARGE", self.base, "too many fds in the stream")
            self.buf += data
            self._run()
        except StreamError as e:
            self._fail(e)
        return self.frames[start:]

    def end(self):
        """The channel ended."""
        if self.failed:
            raise self.failed
        if not self.seen_eof:
            self._fail(StreamError("ERR_STREAM_TRUNCATED", self.received, "channel ended before EOF"))

    def close_all(self):
        for fd, _ in self.fdq:
            _close(fd)
        self.fdq = []

    # -- internals
    def _fail(self, e):
        if e.offset is None:
            e.offset = self.base
        self.failed = e
        self.close_all()
        raise e

    def _run(self):
        if not self.magic_ok:
            if len(self.buf) < 8:
                return
            if bytes(self.buf[:8]) != MAGIC:
                raise StreamError("ERR_STREAM_BAD_MAGIC", 0, "bad magic")
            del self.buf[:8]
            self.base = 8
            self.magic_ok = True
        while True:
            if self.seen_eof:
                if self.buf:
                    raise StreamError("ERR_STREAM_PROTOCOL", self.base, "bytes after EOF")
                return
            if self.hdr is None:
                if len(self.buf) < 20:
                    return
                self.hdr = self._check_header(bytes(self.buf[:20]))
            t, fl, bl, fc, seq = self.hdr
            total = 20 + bl + 4
            if len(self.buf) < total:
                return
            raw = bytes(self.buf[20:20 + bl])
            bcrc = struct.unpack_from("<I", self.buf, 20 + bl)[0]
            self._frame(t, fl, bl, fc, seq, raw, bcrc, self.base + total)
            del self.buf[:total]
            self.base += total
            self.hdr = None

    def _check_header(self, h):
        t, fl, res, bl, fc, seq, hcrc = HEADER.unpack(h)
        if crc32(h[:16]) != hcrc:
            raise StreamError("ERR_STREAM_CRC", None, "header CRC")
        if res != 0:
            raise StreamError("ERR_STREAM_PROTOCOL", None, "reserved header field not 0")
        if t not in TYPE_NAMES:
            raise StreamError("ERR_STREAM_UNKNOWN_FRAME", None, "frame type 0x%02x" % t)
        if bl > self.limits["body"] or fc > self.limits["fdsPerFrame"]:
            raise StreamError("ERR_STREAM_TOO_LARGE", None, "bodyLength %d fdCount %d" % (bl, fc))
        if fl & ~FLAG_PAYLOAD_IN_MEMFD or (fl and t not in SECTION_TYPES):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "flags 0x%02x" % fl)
        if t not in SECTION_TYPES and fc > (1 if t == HELLO else 0):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "fds on a %s" % TYPE_NAMES[t])
        self._check_order(t)
        return t, fl, bl, fc, seq

    def _check_order(self, t):
        bad = lambda why: StreamError("ERR_STREAM_PROTOCOL", None, "%s: %s" % (TYPE_NAMES[t], why))
        if t == EOF and self.direction != "main":
            return
        if self.direction == "main":
            if t == HELLO:
                if self.nframes:
                    raise bad("HELLO not first")
                return
            if not self.seen_hello:
                raise bad("before HELLO")
            # resolution A1: ABORT may come inside an open section (it ends it)
            if self.open is not None and t not in (SECTION_PART, SECTION_END, PING, PONG, ABORT):
                raise bad("inside an open section")
            # resolution A2: after COMMIT or ABORT only PING, PONG, EOF; EOF only after
            # END_OF_STATE or ABORT; COMMIT only after END_OF_STATE
            if self.ended is not None and t not in (PING, PONG, EOF):
                raise bad("after " + self.ended)
            if t == EOF:
                if not self.seen_eos and self.ended is None:
                    raise bad("EOF before END_OF_STATE without ABORT")
                return
            if t == ABORT:
                self.ended = "ABORT"
                self.open = None
                return
            if t == COMMIT:
                if not self.seen_eos:
                    raise bad("COMMIT before END_OF_STATE")
                self.ended = "COMMIT"
                return
            if t == PLAN:
                if self.seen_plan:
                    raise bad("second PLAN")
                if self.reader == "target" and self.welcome is None:
                    raise bad("PLAN before WELCOME was sent")
            elif t in SECTION_TYPES:
                if not self.seen_plan or self.seen_eos:
                    raise bad("section outside PLAN..END_OF_STATE")
                if t in (SECTION_PART, SECTION_END) and self.open is None:
                    raise bad("no open section")
            elif t == END_OF_STATE:
                if not self.seen_plan or self.seen_eos:
                    raise bad("END_OF_STATE out of place")
            elif t in (PING, PONG):
                pass
            else:
                raise bad("never on the main stream")
        else:
            if t == WELCOME:
                if self.nframes:
                    raise bad("WELCOME not first")
                return
            if t == NACK:
                if self.nframes == 0:
                    return
                if not self.seen_welcome:
                    raise bad("after a NACK in place of WELCOME only EOF")
                return
            if t in (ACK, PING, PONG):
                if not self.seen_welcome:
                    raise bad("before WELCOME")
                return
            raise bad("never on the return path")

    def _frame(self, t, fl, bl, fc, seq, raw, bcrc, end):
        # 1. body CRC
        always = t in (HELLO, WELCOME, PLAN)
        if always or (self.features is not None and self.features & F_BODY_CRC):
            if crc32(raw) != bcrc:
                raise StreamError("ERR_STREAM_CRC", None, "body CRC")
        # 2. fds
        fds = []
        probe_missing = False
        if self.with_fds and fc > 0:
            eligible = [x for x in self.fdq]
            if t == HELLO and not eligible:
                probe_missing = True
            else:
                if seq != self.fds_taken:
                    raise StreamError("ERR_STREAM_FD_SEQUENCE", None,
                                      "firstFdSeq %d, expected %d" % (seq, self.fds_taken))
                if len(self.fdq) < fc:
                    raise StreamError("ERR_STREAM_FD_MISSING", None, "%d fds declared, %d queued" % (fc, len(self.fdq)))
                fds = [fd for fd, _ in self.fdq[:fc]]
                del self.fdq[:fc]
        if self.with_fds:
            self.fds_taken += fc
        try:
            # 3. body
            body, extra = decode_body(t, fl, fc, raw, self.limits)
            frame = {"offset": self.base, "type": TYPE_NAMES[t], "flags": fl, "fdCount": fc,
                     "firstFdSeq": seq, "body": body}
            self._rules(t, fl, frame, extra, fds, probe_missing)
        except BaseException:
            for fd in fds:
                _close(fd)
            raise
        # 4. extra fds
        if self.with_fds and any(mark <= end for _, mark in self.fdq):
            for fd in fds:
                _close(fd)
            raise StreamError("ERR_STREAM_FD_EXTRA", None, "an fd no frame declared")
        if t == EOF and self.with_fds and self.fdq:
            raise StreamError("ERR_STREAM_FD_EXTRA", None, "fds queued at EOF")
        frame["_fds"] = fds
        frame["_extra"] = extra
        self.frames.append(frame)
        self.nframes += 1

    def _rules(self, t, fl, frame, extra, fds, probe_missing):
        body = frame["body"]
        if t == HELLO:
            if not (body["minVersion"] <= 1 <= body["maxVersion"]) and not any(
                    body["minVersion"] <= v <= body["maxVersion"] for v in SPOKEN_VERSIONS):
                raise StreamError("ERR_STREAM_VERSION", None, "no common stream version")
            if (frame["fdCount"] != 1) if body["probe"] else (frame["fdCount"] != 0):
                raise StreamError("ERR_STREAM_PROTOCOL", None, "probe/fdCount mismatch")
            if body["probe"] is None:
                self.probe_status = "none"
            elif not self.with_fds or probe_missing:
                self.probe_status = "missing"
            else:
                fd = fds[0]
                ok = fd_is_memfd(fd) and read_fd_all(fd, 17) == extra["probe"]
                self.probe_status = "ok" if ok else "bad"
                _close(fd)
                fds.clear()
            self.seen_hello = True
            self.hello = body
        elif t == WELCOME:
            if body["version"] not in SPOKEN_VERSIONS:
                raise StreamError("ERR_STREAM_VERSION", None, "WELCOME version %d" % body["version"])
            h = self.sent_hello
            if h is not None:
                if len(body["answers"]) != len(h["offers"]) or any(
                        a["id"] != o["id"] or a["instance"] != o["instance"]
                        for a, o in zip(body["answers"], h["offers"])):
                    raise StreamError("ERR_STREAM_PROTOCOL", None, "answers do not match offers")
                if body["features"] & ~h["features"]:
                    raise StreamError("ERR_STREAM_PROTOCOL", None, "features not a subset of HELLO's")
                for a, o in zip(body["answers"], h["offers"]):
                    if a["decision"] != 0 and not (a["minVersion"] <= o["version"] <= a["maxVersion"]):
                        raise StreamError("ERR_STREAM_PROTOCOL", None, "accepted version outside window")
            self.seen_welcome = True
            self.features = body["features"]
            self.welcome = body
        elif t == NACK:
            if not self.seen_welcome:
                self.nack_first = True
        elif t == PLAN:
            self._plan_rules(body)
        elif t in SECTION_TYPES:
            self._section_rules(t, fl, frame, extra, fds)
        elif t == END_OF_STATE:
            missing = [k for k in self.planned if k not in self.dev_sections]
            if missing:
                raise StreamError("ERR_STREAM_PROTOCOL", None, "no section for %s" % (missing,))
            if (body["sectionCount"] != self.n_sections or body["totalFds"] != self.total_dev_fds
                    or int(body["payloadBytes"]) != self.payload_bytes):
                raise StreamError("ERR_STREAM_PROTOCOL", None, "END_OF_STATE totals %s, read %d/%d/%d" % (
                    body, self.n_sections, self.total_dev_fds, self.payload_bytes))
            self.seen_eos = True
        elif t == EOF:
            self.seen_eof = True

    def _plan_rules(self, p):
        # resolution A3: PLAN's version is one this reader speaks, within HELLO's window;
        # its features a subset of HELLO's
        h = self.hello
        if p["version"] not in SPOKEN_VERSIONS or not (h["minVersion"] <= p["version"] <= h["maxVersion"]):
            raise StreamError("ERR_STREAM_VERSION", None, "PLAN version %d" % p["version"])
        if p["features"] & ~h["features"]:
            raise StreamError("ERR_STREAM_PROTOCOL", None, "PLAN features not offered in HELLO")
        if p["totalFds"] > self.limits["fdsPerStream"]:
            raise StreamError("ERR_STREAM_TOO_LARGE", None, "totalFds over limit")
        keys = set()
        for d in p["devices"]:
            if d["withFds"] == 0 and d["fdCount"] != 0:
                raise StreamError("ERR_STREAM_PROTOCOL", None, "withFds 0 with fdCount")
            k = (d["id"], d["instance"])
            if k in keys:
                raise StreamError("ERR_STREAM_PROTOCOL", None, "device planned twice")
            keys.add(k)
        if p["totalFds"] != sum(d["fdCount"] for d in p["devices"]):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "totalFds is not the sum")
        if self.reader == "target":
            want = compute_plan(self.hello, self.welcome)
            if p != want:
                raise StreamError("ERR_STREAM_PROTOCOL", None, "PLAN differs from the negotiated one")
        elif p["version"] not in SPOKEN_VERSIONS:
            raise StreamError("ERR_STREAM_VERSION", None, "PLAN version %d" % p["version"])
        self.plan = p
        self.features = p["features"]
        self.planned = {(d["id"], d["instance"]): d for d in p["devices"]}
        self.seen_plan = True
        if self.reader == "target":
            self.windows = {(a["id"], a["instance"]): (a["minVersion"], a["maxVersion"])
                            for a in self.welcome["answers"]}

    def _section_rules(self, t, fl, frame, extra, fds):
        b = frame["body"]
        in_memfd = bool(fl & FLAG_PAYLOAD_IN_MEMFD)
        if in_memfd and not (self.features & F_MEMFD_PAYLOAD):
            raise StreamError("ERR_STREAM_PROTOCOL", None, "PAYLOAD_IN_MEMFD without MEMFD_PAYLOAD")
        if t in (SECTION_START, SECTION_FULL):
            key = (b["idstr"], b["instanceId"])
            dev = self.planned.get(key)
            if dev is None:
                raise StreamError("ERR_STREAM_NOT_NEGOTIATED", None, "section for %s" % (key,))
            if b["sectionId"] in self.section_ids or key in self.dev_sections:
                raise StreamError("ERR_STREAM_DUPLICATE_SECTION", None, "section %d" % b["sectionId"])
            if self.n_sections + 1 > self.limits["sections"]:
                raise StreamError("ERR_STREAM_TOO_LARGE", None, "too many sections")
            lo, hi = (self.windows.get(key, (dev["version"], dev["version"])) if self.reader == "target"
                      else (dev["version"], dev["version"]))
            if b["versionId"] > hi:
                raise StreamError("ERR_DEVICE_VERSION_TOO_NEW", None, "version %d" % b["versionId"])
            if b["versionId"] < lo:
                raise StreamError("ERR_DEVICE_VERSION_TOO_OLD", None, "version %d" % b["versionId"])
            state = {"fds": 0, "sectionId": b["sectionId"]}
        else:
            if self.open is None or b["sectionId"] != self.open[0]:
                raise StreamError("ERR_STREAM_PROTOCOL", None, "PART/END does not name the open section")
            key = self.open[1]
            dev = self.planned[key]
            state = self.dev_sections[key]
        atts = b["attachments"]
        ndev = sum(1 for a in atts if a["role"] == 0)
        if state["fds"] + ndev > dev["fdCount"]:
            raise StreamError("ERR_STREAM_FD_EXTRA", None, "device %s gets more fds than planned" % (key,))
        if fds:
            for a, fd in zip(atts, fds):
                if a["role"] == 0 and not fd_kind_ok(fd, a["kind"]):
                    raise StreamError("ERR_STREAM_FD_KIND", None, "fd for %r is not a %s" % (a["name"], a["kind"]))
        if t in (SECTION_END, SECTION_FULL) and state["fds"] + ndev != dev["fdCount"]:
            raise StreamError("ERR_STREAM_FD_MISSING", None, "device %s: fewer fds than planned" % (key,))
        if in_memfd and fds:
            fd = fds[-1]
            if not fd_is_memfd(fd):
                raise StreamError("ERR_STREAM_FD_KIND", None, "payload fd is not a memfd")
            need = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
            if memfd_seals(fd) & need != need:
                raise StreamError("ERR_STREAM_MEMFD_UNSEALED", None, "payload memfd not sealed")
            if os.fstat(fd).st_size != b["payloadLength"]:
                raise StreamError("ERR_STREAM_MEMFD_SIZE", None, "payload memfd size")
            content = read_fd_all(fd, b["payloadLength"])
            if self.features & F_BODY_CRC and crc32(content) != b["payloadCrc"]:
                raise StreamError("ERR_STREAM_CRC", None, "payload memfd CRC")
            extra["payload"] = content
            _close(fd)
            fds.pop()
        # commit the state
        state["fds"] += ndev
        if t in (SECTION_START, SECTION_FULL):
            self.section_ids.add(b["sectionId"])
            self.dev_sections[key] = state
            self.n_sections += 1
        self.total_dev_fds += ndev
        self.payload_bytes += b["payloadLength"]
        frame["_device"] = key
        self.open = (b["sectionId"], key) if t in (SECTION_START, SECTION_PART) else None


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def public(frame):
    """A frame as the vectors give it (without private fields)."""
    return {k: v for k, v in frame.items() if not k.startswith("_")}


# ---------------------------------------------------------------- encoder

def enc_str(s):
    b = s.encode("utf-8")
    return struct.pack("<H", len(b)) + b


def enc_blob(b):
    return struct.pack("<I", len(b)) + b


def enc_json(o):
    return enc_blob(b"" if o is None else json.dumps(o, separators=(",", ":")).encode())


def frame_bytes(ftype, body=b"", flags=0, fd_count=0, first_seq=0, body_crc=True):
    h = struct.pack("<BBHIII", ftype, flags, 0, len(body), fd_count, first_seq if fd_count else 0)
    h += struct.pack("<I", crc32(h))
    return h + body + struct.pack("<I", crc32(body) if body_crc else 0)


def enc_hello(h):
    out = struct.pack("<HHIBBI", h["minVersion"], h["maxVersion"], h["features"], h["canPassFds"], 0, h["fdBudget"])
    out += enc_blob(h.get("probe") or b"")
    out += struct.pack("<I", len(h["offers"]))
    for o in h["offers"]:
        out += enc_str(o["kind"]) + enc_str(o["id"]) + struct.pack("<IIIB", o["instance"], o["version"], o["fdCount"], o["flags"])
    return out + enc_json(h.get("info"))


def enc_welcome(w):
    out = struct.pack("<HIBBI", w["version"], w["features"], w["canPassFds"], 0, w["fdBudget"])
    out += struct.pack("<I", len(w["answers"]))
    for a in w["answers"]:
        out += enc_str(a["id"]) + struct.pack("<IBBII", a["instance"], a["decision"], a["reason"], a["minVersion"], a["maxVersion"])
    return out + enc_json(w.get("info"))


def enc_plan(p):
    out = struct.pack("<HIII", p["version"], p["features"], p["totalFds"], len(p["devices"]))
    for d in p["devices"]:
        out += enc_str(d["kind"]) + enc_str(d["id"]) + struct.pack("<IIBI", d["instance"], d["version"], d["withFds"], d["fdCount"])
    return out


def enc_section(ftype, section_id, attachments, payload, instance=0, version=1, idstr="",
                payload_crc=None, payload_len=None):
    out = struct.pack("<I", section_id)
    if ftype in (SECTION_START, SECTION_FULL):
        out += struct.pack("<II", instance, version) + enc_str(idstr)
    out += struct.pack("<H", len(attachments))
    for a in attachments:
        out += struct.pack("<BB", ATT_KIND_IDS[a["kind"]], a.get("role", 0)) + enc_str(a["name"]) + enc_json(a.get("meta"))
    if payload_crc is not None:
        return out + struct.pack("<II", payload_len, payload_crc)
    return out + struct.pack("<I", len(payload)) + payload


def enc_eos(count, fds, payload_bytes):
    return struct.pack("<IIQ", count, fds, payload_bytes)


def enc_ack(stage, detail="", section_id=WHOLE_STREAM):
    return struct.pack("<BI", stage, section_id) + enc_str(detail)


def enc_nack(code, reason, section_id=WHOLE_STREAM):
    return enc_str(code) + enc_str(reason) + struct.pack("<I", section_id)


def enc_abort(code, reason):
    return enc_str(code) + enc_str(reason)


def enc_ping(token, time_ns):
    return struct.pack("<QQ", token, time_ns)


# ---------------------------------------------------------------- socket helpers

def recv_chunk(sock, maxfds=253 * 4, size=1 << 16):
    """One recvmsg: (bytes, [fds])."""
    fds = []
    data, anc, flags, _ = sock.recvmsg(size, socket.CMSG_SPACE(maxfds * 4), socket.MSG_CMSG_CLOEXEC)
    for level, typ, cd in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            n = len(cd) // 4
            fds.extend(struct.unpack("<%di" % n, cd[:n * 4]))
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            _close(fd)
        raise OSError("control data truncated")
    return data, fds


def send_with_fds(sock, head, rest, fds):
    """Send a frame's head with its fds in batches of at most 253: batch i on byte i
    of the head, the last batch on the rest of the head; then the rest of the frame."""
    batches = [fds[i:i + 253] for i in range(0, len(fds), 253)] or [[]]
    pos = 0
    for i, batch in enumerate(batches):
        last = i == len(batches) - 1
        piece = head[pos:] if last else head[pos:pos + 1]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("<%di" % len(batch), *batch))] if batch else []
        sent = sock.sendmsg([piece], anc)
        pos += sent
        while pos < (len(head) if last else i + 1):  # finish the piece without fds
            pos += sock.send(head[pos:] if last else head[pos:i + 1])
    if rest:
        sock.sendall(rest)
