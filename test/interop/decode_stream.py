#!/usr/bin/env python3
"""A second decoder of the backend-transfer migration stream, version 1.

Written from docs/stream-format.md alone (no look at src/), with the Python
standard library only (zlib.crc32). It decodes a direction's bytes into frames
and checks what the text asks a reader to check: magic, header and body CRCs,
limits, frame order, exact body layout, fd numbering (simulated from a
vector's description of fd batches), section rules, END_OF_STATE totals, and
for a live target the PLAN against HELLO and WELCOME.

    decode_stream.py docs/vectors        check every conformance vector
    decode_stream.py FILE                decode a recorded stream, print its frames as JSON

Exit status 0 when everything matched (or the file decoded cleanly).
"""
import hashlib
import json
import os
import struct
import sys
import zlib

MAGIC = bytes([0x89, 0x42, 0x54, 0x4D, 0x0D, 0x0A, 0x1A, 0x0A])
TYPES = {
    0x01: "HELLO", 0x02: "WELCOME", 0x03: "PLAN",
    0x10: "SECTION_START", 0x11: "SECTION_PART", 0x12: "SECTION_END", 0x13: "SECTION_FULL",
    0x14: "STAGE", 0x15: "FREEZE",
    0x20: "END_OF_STATE", 0x30: "ACK", 0x31: "NACK", 0x32: "PING", 0x33: "PONG",
    0x40: "COMMIT", 0x41: "ABORT", 0x7F: "EOF",
}
SECTIONS = {"SECTION_START", "SECTION_PART", "SECTION_END", "SECTION_FULL"}
HANDSHAKE = {"HELLO", "WELCOME", "PLAN"}
FDS, MEMFD_PAYLOAD, BODY_CRC, STAGED = 1, 2, 4, 8
ATT_KINDS = {1: "tap", 2: "vhost-net", 3: "vhost-user", 4: "eventfd", 5: "memfd", 6: "chardev-socket", 7: "listener", 8: "generic"}
LIMITS = dict(body=64 << 20, fds_frame=4096, fds_stream=1 << 20, sections=65536, devices=65536, meta=64 << 10, string=4096, memfd=4 << 30)
VERSION = 1  # the only stream version this decoder speaks


class StreamError(Exception):
    def __init__(self, code, offset, message):
        super().__init__(f"{code} at {offset}: {message}")
        self.code, self.offset = code, offset


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


class Body:
    """Reads a body exactly; running short or leaving bytes over is ERR_STREAM_PROTOCOL."""

    def __init__(self, data, fail):
        self.b, self.pos, self.fail = data, 0, fail

    def take(self, n, what):
        if self.pos + n > len(self.b):
            self.fail("ERR_STREAM_PROTOCOL", f"body too short for {what}")
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def u8(self, w="u8"): return self.take(1, w)[0]
    def u16(self, w="u16"): return struct.unpack("<H", self.take(2, w))[0]
    def u32(self, w="u32"): return struct.unpack("<I", self.take(4, w))[0]
    def u64(self, w="u64"): return struct.unpack("<Q", self.take(8, w))[0]

    def str(self, w):
        n = self.u16(w)
        if n > LIMITS["string"]:
            self.fail("ERR_STREAM_TOO_LARGE", f"{w} of {n} bytes")
        try:
            return self.take(n, w).decode("utf-8")
        except UnicodeDecodeError:
            self.fail("ERR_STREAM_PROTOCOL", f"{w} is not UTF-8")

    def json(self, w):
        n = self.u32(w)
        if n > LIMITS["meta"]:
            self.fail("ERR_STREAM_TOO_LARGE", f"{w} of {n} bytes")
        if n == 0:
            return None
        raw = self.take(n, w)
        try:
            # RFC 8259: no NaN/Infinity (Python's json would accept them)
            v = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except ValueError:
            self.fail("ERR_STREAM_PROTOCOL", f"{w} is not JSON")
        if not isinstance(v, dict):
            self.fail("ERR_STREAM_PROTOCOL", f"{w} is not a JSON object")
        return v

    def bool(self, w):
        v = self.u8(w)
        if v > 1:
            self.fail("ERR_STREAM_PROTOCOL", f"{w} is {v}, not 0 or 1")
        return v

    def count(self, w, min_each):
        n = self.u32(w)
        if n > LIMITS["devices"]:
            self.fail("ERR_STREAM_TOO_LARGE", f"{w} {n}")
        if n * min_each > len(self.b) - self.pos:
            self.fail("ERR_STREAM_PROTOCOL", f"{w} {n} does not fit")
        return n

    def finish(self):
        if self.pos != len(self.b):
            self.fail("ERR_STREAM_PROTOCOL", f"{len(self.b) - self.pos} trailing body bytes")


def compute_plan(hello, welcome):
    """PLAN from HELLO and WELCOME, as the spec's intersection says."""
    pass_fds = hello["canPassFds"] == 1 and welcome["canPassFds"] == 1 and (welcome["features"] & FDS) != 0
    devices = []
    for offer, ans in zip(hello["offers"], welcome["answers"]):
        if ans["decision"] == 0:
            continue
        with_fds = ans["decision"] == 2 and (offer["flags"] & 1) != 0 and offer["fdCount"] > 0 and pass_fds
        devices.append(dict(kind=offer["kind"], id=offer["id"], instance=offer["instance"], version=offer["version"],
                            withFds=1 if with_fds else 0, fdCount=offer["fdCount"] if with_fds else 0))
    return dict(version=welcome["version"], features=welcome["features"], totalFds=sum(d["fdCount"] for d in devices), devices=devices)


def decode(data, role, welcome=None, fds=None, batches=None):
    """Decodes one direction. role: 'inspect', 'target' or 'source'. fds/batches: a vector's
    description of the fds that ride on the bytes (None: the bytes alone, no fd checks).
    Returns (frames, error) with error None or (code, offset)."""
    frames = []
    with_fds = fds is not None
    by_seq = {f["seq"]: f for f in (fds or [])}
    # fd arrivals: (batch start, batch end, seq), in order
    arrivals = [(b["start"], b["end"], s) for b in (batches or []) for s in b["fds"]]
    queue = []          # [seq, chunk_end] received, not yet taken
    next_arrival = 0
    taken = 0           # fds taken from the queue so far (plus lost probes)
    st = dict(phase="hello", hello=None, welcome=None, plan=None, features=None, devices={}, section_ids=set(),
              open=None, sections=0, device_fds=0, payload=0, refused=False, finished=False, received=0, frozen=False)
    frame_at = [0]

    def fail(code, msg):
        raise StreamError(code, frame_at[0], msg)

    def arrive(upto):
        """Queues the fds of every batch that starts before `upto` (their bytes began to arrive)."""
        nonlocal next_arrival
        while next_arrival < len(arrivals) and arrivals[next_arrival][0] < upto:
            start, end, seq = arrivals[next_arrival]
            queue.append([seq, end])
            st["received"] += 1
            if st["received"] > LIMITS["fds_stream"]:
                fail("ERR_STREAM_TOO_LARGE", "too many fds")
            next_arrival += 1

    try:
        if len(data) < 8:
            frame_at[0] = len(data)
            fail("ERR_STREAM_TRUNCATED", "inside the magic")
        if data[:8] != MAGIC:
            fail("ERR_STREAM_BAD_MAGIC", data[:8].hex())
        pos = 8
        while True:
            frame_at[0] = pos
            if pos == len(data):
                if not st["finished"]:
                    fail("ERR_STREAM_TRUNCATED", "no EOF frame")
                return frames, None
            if st["finished"]:
                fail("ERR_STREAM_PROTOCOL", "bytes after EOF")
            if len(data) - pos < 20:
                frame_at[0] = len(data)
                fail("ERR_STREAM_TRUNCATED", "inside a header")
            h = data[pos:pos + 20]
            typ, flags, reserved, blen, fdc, first = struct.unpack("<BBHIII", h[:16])
            # header checks, in the spec's order
            if zlib.crc32(h[:16]) != struct.unpack("<I", h[16:20])[0]:
                fail("ERR_STREAM_CRC", "header CRC")
            if reserved != 0:
                fail("ERR_STREAM_PROTOCOL", "reserved header bits")
            name = TYPES.get(typ)
            if name is None:
                fail("ERR_STREAM_UNKNOWN_FRAME", hex(typ))
            if blen > LIMITS["body"] or fdc > LIMITS["fds_frame"]:
                fail("ERR_STREAM_TOO_LARGE", "bodyLength or fdCount")
            if flags & ~1 or (flags and name not in SECTIONS):
                fail("ERR_STREAM_PROTOCOL", f"flags {flags}")
            if name not in SECTIONS and name != "STAGE" and fdc > (1 if name == "HELLO" else 0):
                fail("ERR_STREAM_PROTOCOL", f"{name} with {fdc} fds")
            check_order(name, role, st, fail)
            end = pos + 20 + blen + 4
            if end > len(data):
                frame_at[0] = len(data)
                fail("ERR_STREAM_TRUNCATED", "inside a frame")
            body = data[pos + 20:pos + 20 + blen]
            stored = struct.unpack("<I", data[end - 4:end])[0]
            settled = st["features"]
            if name in HANDSHAKE or (settled is not None and settled & BODY_CRC):
                if zlib.crc32(body) != stored:
                    fail("ERR_STREAM_CRC", f"{name} body CRC")
            # fds
            taken_fds = []
            if with_fds:
                arrive(end)
                if name == "HELLO" and fdc == 1 and not queue:
                    if first != taken:
                        fail("ERR_STREAM_FD_SEQUENCE", "probe")
                    taken += 1  # the probe was lost on the way: it still counts
                    taken_fds = [None]
                else:
                    if fdc > 0:
                        if first != taken:
                            fail("ERR_STREAM_FD_SEQUENCE", f"firstFdSeq {first}, reader at {taken}")
                        if len(queue) < fdc:
                            fail("ERR_STREAM_FD_MISSING", f"{fdc} declared, {len(queue)} arrived")
                        taken_fds = [by_seq[q[0]] for q in queue[:fdc]]
                        del queue[:fdc]
                        taken += fdc
                    if queue and queue[0][1] <= end:
                        fail("ERR_STREAM_FD_EXTRA", "an fd no frame declared")
            else:
                taken_fds = [None] * fdc
            st["pending_fds"] = len(queue)
            c = Body(body, fail)
            decoded = decode_body(name, c, flags, fdc, taken_fds, role, welcome, st, fail)
            frames.append(dict(offset=pos, type=name, flags=flags, fdCount=fdc, firstFdSeq=first, body=decoded))
            pos = end
    except StreamError as e:
        return frames, (e.code, e.offset)


def check_order(name, role, st, fail):
    bad = lambda why: fail("ERR_STREAM_PROTOCOL", f"{name} {why}")
    staged = bool((st["features"] or 0) & STAGED) and st["plan"] is not None
    if st["open"] is not None and name not in ("SECTION_PART", "SECTION_END", "PING", "PONG", "ABORT") and not (staged and name == "FREEZE"):
        bad("inside an open section")
    if role != "source" and st.get("ended") and name not in ("PING", "PONG", "EOF"):
        bad("after " + st["ended"])
    if role == "source":
        if st["refused"] and name != "EOF":
            bad("after a NACK in place of WELCOME")
        if name == "WELCOME":
            if st["welcome"] is not None:
                bad("repeated")
        elif name == "NACK":
            if st["welcome"] is None:
                st["refused"] = True
        elif name in ("ACK", "PING", "PONG"):
            if st["welcome"] is None:
                bad("before WELCOME")
        elif name != "EOF":
            bad("on a return path")
        return
    if name == "HELLO":
        if st["hello"] is not None:
            bad("repeated")
    elif name == "PLAN":
        if st["hello"] is None or st["plan"] is not None:
            bad("before HELLO or repeated")
    elif name in SECTIONS:
        if st["plan"] is None or st["phase"] == "done":
            bad("before PLAN or after END_OF_STATE")
        if name in ("SECTION_PART", "SECTION_END") and st["open"] is None:
            bad("without SECTION_START")
    elif name in ("STAGE", "FREEZE"):
        if st["plan"] is None or not staged or st["phase"] == "done":
            bad("before PLAN, without STAGED, or after END_OF_STATE")
        if name == "FREEZE" and st["frozen"]:
            bad("repeated")
    elif name == "END_OF_STATE":
        if st["plan"] is None or st["phase"] == "done":
            bad("before PLAN or repeated")
        if staged and not st["frozen"]:
            bad("before FREEZE")
    elif name == "COMMIT":
        if st["phase"] != "done":
            bad("before END_OF_STATE")
        st["ended"] = "COMMIT"
    elif name == "ABORT":
        if st["hello"] is None:
            bad("before HELLO")
        st["ended"] = "ABORT"
        st["open"] = None  # ABORT ends an open section and the state
    elif name in ("PING", "PONG"):
        if st["hello"] is None:
            bad("before HELLO")
    elif name == "EOF":
        if st["phase"] != "done" and not st.get("ended"):
            bad("before END_OF_STATE, without ABORT")
    else:
        bad("on a main stream")


def decode_body(name, c, flags, fdc, fds, role, welcome, st, fail):
    if name == "HELLO":
        d = dict(minVersion=c.u16(), maxVersion=c.u16(), features=c.u32(), canPassFds=c.bool("canPassFds"))
        c.u8("reserved")
        d["fdBudget"] = c.u32()
        n = c.u32("probe length")
        if n not in (0, 16):
            fail("ERR_STREAM_PROTOCOL", "probe length")
        d["probe"] = c.take(n, "probe").hex() if n else None
        offers = []
        for _ in range(c.count("offers", 17)):
            offers.append(dict(kind=c.str("kind"), id=c.str("id"), instance=c.u32(), version=c.u32(), fdCount=c.u32(), flags=c.u8()))
        d["offers"] = offers
        d["info"] = c.json("info")
        c.finish()
        if not d["minVersion"] <= VERSION <= d["maxVersion"]:
            fail("ERR_STREAM_VERSION", "no common version")
        if (1 if d["probe"] else 0) != fdc:
            fail("ERR_STREAM_PROTOCOL", "probe and fdCount disagree")
        if fds and fds[0] is not None:
            f = fds[0]  # the probe must be a memfd holding the 16 bytes (a result, not an error)
            d_ok = f["kind"] == "memfd" and f["content"] == d["probe"]
            st["probe"] = "ok" if d_ok else "bad"
        st["hello"] = d
        return d
    if name == "WELCOME":
        d = dict(version=c.u16(), features=c.u32(), canPassFds=c.bool("canPassFds"))
        c.u8("reserved")
        d["fdBudget"] = c.u32()
        answers = []
        for _ in range(c.count("answers", 16)):
            a = dict(id=c.str("id"), instance=c.u32(), decision=c.u8(), reason=c.u8(), minVersion=c.u32(), maxVersion=c.u32())
            if a["decision"] > 2 or a["reason"] > 6:
                fail("ERR_STREAM_PROTOCOL", "decision or reason")
            answers.append(a)
        d["answers"] = answers
        d["info"] = c.json("info")
        c.finish()
        if d["version"] != VERSION:
            fail("ERR_STREAM_VERSION", "WELCOME version")
        st["welcome"] = d
        st["features"] = d["features"]
        return d
    if name == "PLAN":
        d = dict(version=c.u16(), features=c.u32(), totalFds=c.u32())
        if d["totalFds"] > LIMITS["fds_stream"]:
            fail("ERR_STREAM_TOO_LARGE", "totalFds")
        devs = []
        for _ in range(c.count("devices", 17)):
            dv = dict(kind=c.str("kind"), id=c.str("id"), instance=c.u32(), version=c.u32(), withFds=c.bool("withFds"), fdCount=c.u32())
            if not dv["withFds"] and dv["fdCount"]:
                fail("ERR_STREAM_PROTOCOL", "fds on a device without fds")
            devs.append(dv)
        d["devices"] = devs
        c.finish()
        if sum(x["fdCount"] for x in devs) != d["totalFds"]:
            fail("ERR_STREAM_PROTOCOL", "totalFds is not the sum")
        hl = st["hello"]
        if d["version"] != VERSION or not hl["minVersion"] <= d["version"] <= hl["maxVersion"]:
            fail("ERR_STREAM_VERSION", "PLAN version")
        if d["features"] & ~hl["features"]:
            fail("ERR_STREAM_PROTOCOL", "PLAN features not offered in HELLO")
        if role == "target" and d != compute_plan(st["hello"], welcome):
            fail("ERR_STREAM_PROTOCOL", "PLAN differs from HELLO x WELCOME")
        if len(devs) > LIMITS["sections"]:
            fail("ERR_STREAM_TOO_LARGE", "planned devices")
        st["plan"] = d
        st["features"] = d["features"]
        answers = {(a["id"], a["instance"]): a for a in (welcome or {}).get("answers", [])} if role == "target" else {}
        for dv in devs:
            key = (dv["id"], dv["instance"])
            if key in st["devices"]:
                fail("ERR_STREAM_PROTOCOL", "device planned twice")
            a = answers.get(key)
            win = (a["minVersion"], a["maxVersion"]) if a else (dv["version"], dv["version"])
            st["devices"][key] = dict(dev=dv, win=win, section=None, fds=0, staged=None, dropped=False)
        return d
    if name in SECTIONS:
        return decode_section(name, c, flags, fdc, fds, st, fail)
    if name == "STAGE":
        return decode_stage(c, fdc, fds, st, fail)
    if name == "FREEZE":
        dropped = []
        for _ in range(c.count("dropped", 8)):
            dropped.append(dict(id=c.str("id"), instance=c.u32(), reason=c.str("reason")))
        c.finish()
        seen = set()
        for x in dropped:
            dev = st["devices"].get((x["id"], x["instance"]))
            if dev is None:
                fail("ERR_STREAM_NOT_NEGOTIATED", x["id"])
            if (x["id"], x["instance"]) in seen or dev["section"] is not None:
                fail("ERR_STREAM_PROTOCOL", "dropped twice or after its section")
            seen.add((x["id"], x["instance"]))
            dev["dropped"] = True
        st["frozen"] = True
        return dict(dropped=dropped)
    if name == "END_OF_STATE":
        d = dict(sectionCount=c.u32(), totalFds=c.u32(), payloadBytes=str(c.u64()))
        c.finish()
        if any(x["section"] is None and not x["dropped"] for x in st["devices"].values()):
            fail("ERR_STREAM_PROTOCOL", "a planned device had no section")
        device_fds = st["device_fds"]
        if st["features"] & STAGED:
            live = [x for x in st["devices"].values() if x["dev"]["withFds"] and not x["dropped"]]
            if any(x["staged"] is None for x in live):
                fail("ERR_STREAM_FD_MISSING", "a device planned with fds was never staged")
            device_fds = sum(x["staged"] for x in live)
        if (d["sectionCount"], d["totalFds"], int(d["payloadBytes"])) != (st["sections"], device_fds, st["payload"]):
            fail("ERR_STREAM_PROTOCOL", "END_OF_STATE totals")
        st["phase"] = "done"
        return d
    if name == "ACK":
        d = dict(stage=c.u8(), sectionId=c.u32(), detail=c.str("detail"))
        c.finish()
        if not 1 <= d["stage"] <= 5 or (d["stage"] == 5 and not (st["features"] or 0) & STAGED):
            fail("ERR_STREAM_PROTOCOL", "ACK stage")
        return d
    if name == "NACK":
        d = dict(code=c.str("code"), reason=c.str("reason"), sectionId=c.u32())
        c.finish()
        return d
    if name in ("PING", "PONG"):
        d = dict(token=str(c.u64()), timeNs=str(c.u64()))
        c.finish()
        return d
    if name == "ABORT":
        d = dict(code=c.str("code"), reason=c.str("reason"))
        c.finish()
        return d
    c.finish()  # COMMIT, EOF
    if name == "EOF":
        if st.get("pending_fds"):
            fail("ERR_STREAM_FD_EXTRA", "fds still queued at EOF")
        st["finished"] = True
    return {}


def decode_attachments(c, fdc, fail):
    """A section's or STAGE's attachment list: as many as the header's fdCount, each kind and role known."""
    n = c.u16("attachmentCount")
    if n != fdc:
        fail("ERR_STREAM_PROTOCOL", "attachmentCount is not fdCount")
    atts = []
    for _ in range(n):
        k = c.u8()
        if k not in ATT_KINDS:
            fail("ERR_STREAM_PROTOCOL", "attachment kind")
        role = c.u8()
        if role not in (0, 1):
            fail("ERR_STREAM_PROTOCOL", "attachment role")
        atts.append(dict(kind=ATT_KINDS[k], role=role, name=c.str("name"), meta=c.json("meta")))
    return atts


def decode_inline_payload(c, length, d, fail):
    """An inline payload: the rest of the body, exactly payloadLength bytes; recorded in d by its length and SHA-256."""
    if length != len(c.b) - c.pos:
        fail("ERR_STREAM_PROTOCOL", "payloadLength")
    payload = c.take(length, "payload")
    d.update(payloadLength=length, payloadSha256=hashlib.sha256(payload).hexdigest())


def decode_section(name, c, flags, fdc, fds, st, fail):
    opens = name in ("SECTION_START", "SECTION_FULL")
    d = dict(sectionId=c.u32())
    if opens:
        d.update(instanceId=c.u32(), versionId=c.u32(), idstr=c.str("idstr"))
    atts = decode_attachments(c, fdc, fail)
    d["attachments"] = atts
    length = c.u32("payloadLength")
    in_memfd = flags & 1
    if in_memfd:
        crc = c.u32("payloadCrc")
        if not atts or atts[-1]["role"] != 1 or atts[-1]["kind"] != "memfd" or sum(a["role"] for a in atts) != 1:
            fail("ERR_STREAM_PROTOCOL", "payload attachment")
        if length > LIMITS["memfd"]:
            fail("ERR_STREAM_TOO_LARGE", "memfd payload")
        d.update(payloadLength=length, payloadCrc=crc)
    else:
        if any(a["role"] == 1 for a in atts):
            fail("ERR_STREAM_PROTOCOL", "payload attachment without the flag")
        decode_inline_payload(c, length, d, fail)
    if in_memfd and not (st["features"] & MEMFD_PAYLOAD):
        fail("ERR_STREAM_PROTOCOL", "PAYLOAD_IN_MEMFD without MEMFD_PAYLOAD")
    if opens:
        dev = st["devices"].get((d["idstr"], d["instanceId"]))
        if dev is None or dev["dropped"]:
            fail("ERR_STREAM_NOT_NEGOTIATED", d["idstr"])
        if d["sectionId"] in st["section_ids"] or dev["section"] is not None:
            fail("ERR_STREAM_DUPLICATE_SECTION", d["idstr"])
        if st["sections"] >= LIMITS["sections"]:
            fail("ERR_STREAM_TOO_LARGE", "sections")
        lo, hi = dev["win"]
        if d["versionId"] > hi:
            fail("ERR_DEVICE_VERSION_TOO_NEW", d["idstr"])
        if d["versionId"] < lo:
            fail("ERR_DEVICE_VERSION_TOO_OLD", d["idstr"])
        st["section_ids"].add(d["sectionId"])
        st["sections"] += 1
        dev["section"] = d["sectionId"]
        if name == "SECTION_START":
            st["open"] = dev
    else:
        dev = st["open"]
        if d["sectionId"] != dev["section"]:
            fail("ERR_STREAM_PROTOCOL", "PART/END of another section")
        if name == "SECTION_END":
            st["open"] = None
    device_atts = [(a, f) for a, f in zip(atts, fds) if a["role"] == 0]
    dev["fds"] += len(device_atts)
    staged = bool(st["features"] & STAGED)
    if staged and device_atts:
        fail("ERR_STREAM_FD_EXTRA", "a device fd on a section under STAGED")
    if dev["fds"] > dev["dev"]["fdCount"]:
        fail("ERR_STREAM_FD_EXTRA", "more device fds than planned")
    for a, f in device_atts:
        if f is not None and a["kind"] in ("eventfd", "memfd") and f["kind"] != a["kind"]:
            fail("ERR_STREAM_FD_KIND", f"{a['name']} is a {f['kind']}")
    if name in ("SECTION_END", "SECTION_FULL") and not staged and dev["fds"] != dev["dev"]["fdCount"]:
        fail("ERR_STREAM_FD_MISSING", "fewer device fds than planned")
    if in_memfd and fds[-1] is not None:
        f = fds[-1]
        if f["kind"] != "memfd":
            fail("ERR_STREAM_FD_KIND", "payload is not a memfd")
        if not f["sealed"]:
            fail("ERR_STREAM_MEMFD_UNSEALED", "payload memfd")
        content = bytes.fromhex(f["content"])
        if len(content) != length:
            fail("ERR_STREAM_MEMFD_SIZE", "payload memfd size")
        if st["features"] & BODY_CRC and zlib.crc32(content) != d["payloadCrc"]:
            fail("ERR_STREAM_CRC", "payload memfd CRC")
    st["payload"] += length
    st["device_fds"] += len(device_atts)
    return d


def decode_stage(c, fdc, fds, st, fail):
    """A STAGE body: as a SECTION_FULL body, every attachment a device fd, the payload inline."""
    d = dict(sectionId=c.u32(), instanceId=c.u32(), versionId=c.u32(), idstr=c.str("idstr"))
    atts = decode_attachments(c, fdc, fail)
    d["attachments"] = atts
    length = c.u32("payloadLength")
    if any(a["role"] == 1 for a in atts):
        fail("ERR_STREAM_PROTOCOL", "a payload attachment on STAGE")
    decode_inline_payload(c, length, d, fail)
    dev = st["devices"].get((d["idstr"], d["instanceId"]))
    if dev is None or dev["dropped"]:
        fail("ERR_STREAM_NOT_NEGOTIATED", d["idstr"])
    if not dev["dev"]["withFds"]:
        fail("ERR_STREAM_FD_EXTRA", "STAGE for a device planned without fds")
    if d["sectionId"] in st["section_ids"]:
        fail("ERR_STREAM_DUPLICATE_SECTION", d["idstr"])
    lo, hi = dev["win"]
    if d["versionId"] > hi:
        fail("ERR_DEVICE_VERSION_TOO_NEW", d["idstr"])
    if d["versionId"] < lo:
        fail("ERR_DEVICE_VERSION_TOO_OLD", d["idstr"])
    if fdc != dev["dev"]["fdCount"]:
        fail("ERR_STREAM_FD_EXTRA" if fdc > dev["dev"]["fdCount"] else "ERR_STREAM_FD_MISSING", "STAGE fd count")
    for a, f in zip(atts, fds):
        if f is not None and a["kind"] in ("eventfd", "memfd") and f["kind"] != a["kind"]:
            fail("ERR_STREAM_FD_KIND", f"{a['name']} is a {f['kind']}")
    st["section_ids"].add(d["sectionId"])
    dev["staged"] = fdc
    return d


def check_vectors(folder):
    index = json.load(open(os.path.join(folder, "index.json")))
    failures = 0
    for entry in index:
        v = json.load(open(os.path.join(folder, entry["name"] + ".json")))
        data = open(os.path.join(folder, v["file"]), "rb").read()
        if hashlib.sha256(data).hexdigest() != v["sha256"]:
            print(f"FAIL {v['name']}: sha256 of {v['file']} differs")
            failures += 1
            continue
        role = "source" if v["direction"] == "return" else v["reader"]
        for label, exp, kw in (
            ("with fds", v["expect"], dict(fds=v["fds"], batches=v["fdBatches"])),
            ("bytes alone", v["expectWithoutFds"], {}),
        ):
            r = role if kw or role == "source" else "inspect"
            frames, error = decode(data, r, v.get("welcome"), **kw)
            want_error = None if exp["ok"] else (exp["code"], exp["offset"])
            if error != want_error or frames != exp["frames"]:
                failures += 1
                got_types = [f["type"] for f in frames]
                want_types = [f["type"] for f in exp["frames"]]
                print(f"FAIL {v['name']} ({label}): error {error}, expected {want_error}; frames {got_types} expected {want_types}"
                      + ("" if got_types != want_types else " (fields differ)"))
    print(f"{len(index)} vectors, {failures} mismatch(es)")
    return failures == 0


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    arg = sys.argv[1]
    if os.path.isdir(arg):
        return 0 if check_vectors(arg) else 1
    frames, error = decode(open(arg, "rb").read(), "inspect")
    print(json.dumps(dict(frames=frames, error=list(error) if error else None), indent=1))
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
