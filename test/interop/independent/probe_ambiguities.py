#!/usr/bin/env python3
"""Edge cases the spec leaves open (see AMBIGUITIES.md): craft recorded streams with
bt_stream's encoder, decode them with bt_stream and with the library's public CLI
`backend-transfer inspect --json`, and print both outcomes side by side."""
import json
import os
import struct
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bt_stream as bt  # noqa: E402

# The repository this file sits in (test/interop/independent/); BT_NODE: the node to run.
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bin", "backend-transfer.js")
NODE = os.environ.get("BT_NODE", "node")
F = bt.frame_bytes


def hello(features=bt.F_BODY_CRC, offers=None, vmin=1, vmax=1, info=None, kind="state", oid="cpu0"):
    h = {"minVersion": vmin, "maxVersion": vmax, "features": features, "canPassFds": 0,
         "fdBudget": bt.UNKNOWN_BUDGET, "probe": b"",
         "offers": offers if offers is not None else [{"kind": kind, "id": oid, "instance": 0, "version": 1,
                                                      "fdCount": 0, "flags": 2}], "info": info}
    return F(bt.HELLO, bt.enc_hello(h))


def plan(version=1, features=bt.F_BODY_CRC, with_fds=0, kind="state", did="cpu0"):
    body = struct.pack("<HIII", version, features, 0, 1) + bt.enc_str(kind) + bt.enc_str(did) + struct.pack("<IIBI", 0, 1, with_fds, 0)
    return F(bt.PLAN, body)


def full(payload=b"regs!", idstr="cpu0", sid=1):
    return F(bt.SECTION_FULL, bt.enc_section(bt.SECTION_FULL, sid, [], payload, 0, 1, idstr))


def start(payload=b"ab", sid=1):
    return F(bt.SECTION_START, bt.enc_section(bt.SECTION_START, sid, [], payload, 0, 1, "cpu0"))


def eos(n=1, p=5):
    return F(bt.END_OF_STATE, bt.enc_eos(n, 0, p))


EOFF = F(bt.EOF)
M = bt.MAGIC


def cases():
    base_tail = full() + eos() + EOFF
    yield "baseline", M + hello() + plan() + base_tail
    yield "EOF inside an open section", M + hello() + plan() + start() + EOFF
    yield "no END_OF_STATE (HELLO PLAN EOF)", M + hello() + plan() + EOFF
    yield "EOF right after the magic", M + EOFF
    yield "HELLO then EOF", M + hello() + EOFF
    yield "COMMIT before END_OF_STATE", M + hello() + plan() + F(bt.COMMIT) + base_tail
    yield "section after ABORT", M + hello() + plan() + F(bt.ABORT, bt.enc_abort("X", "y")) + base_tail
    yield "section after COMMIT (post-EOS)", M + hello() + plan() + full() + eos() + F(bt.COMMIT) + full(sid=2) + EOFF
    yield "PLAN version 2 (HELLO window 1..2)", M + hello(vmax=2) + plan(version=2) + base_tail
    yield "PLAN features not in HELLO's", M + hello(features=bt.F_BODY_CRC) + plan(features=bt.F_BODY_CRC | bt.F_MEMFD_PAYLOAD) + base_tail
    yield "PLAN withFds = 2 (boolean not 0/1)", M + hello() + plan(with_fds=2) + base_tail
    yield "HELLO minVersion > maxVersion (2..1)", M + hello(vmin=2, vmax=1) + plan() + base_tail
    yield "offer kind unknown ('banana') planned", M + hello(kind="banana") + plan(kind="banana") + base_tail
    yield "str with a NUL byte (device id)", M + hello(oid="cp\0u") + plan(did="cp\0u") + full(idstr="cp\0u") + eos() + EOFF
    yield "JSON info with NaN", M + F(bt.HELLO, bt.enc_hello({"minVersion": 1, "maxVersion": 1, "features": 4, "canPassFds": 0, "fdBudget": 1, "probe": b"", "offers": []})[:-4] + bt.enc_blob(b'{"a":NaN}')) + EOFF
    yield "offerCount over limit (70000) in a small body", M + F(bt.HELLO, struct.pack("<HHIBBI", 1, 1, 4, 0, 0, 1) + bt.enc_blob(b"") + struct.pack("<I", 70000) + bt.enc_blob(b"")) + EOFF
    yield "str length 5000 with no bytes behind it", M + F(bt.HELLO, struct.pack("<HHIBBI", 1, 1, 4, 0, 0, 1) + bt.enc_blob(b"") + struct.pack("<I", 1) + struct.pack("<H", 5000) + b"x" * 16) + EOFF
    yield "PING before PLAN with bodyCrc 0 (BODY_CRC offered)", M + hello() + F(bt.PING, bt.enc_ping(1, 2), body_crc=False) + plan() + base_tail
    yield "HELLO canPassFds = 2", M + F(bt.HELLO, struct.pack("<HHIBBI", 1, 1, 4, 2, 0, 1) + bt.enc_blob(b"") + struct.pack("<I", 0) + bt.enc_blob(b"")) + plan() + base_tail
    yield "garbage shorter than the magic ('abc')", b"abc"
    yield "magic prefix wrong, 3 bytes ('\\x89BX')", b"\x89BX"
    yield "PONG as first frame after HELLO, no PING", M + hello() + F(bt.PONG, bt.enc_ping(1, 2)) + plan() + base_tail
    yield "HELLO offers 2 devices, PLAN plans 1 (recorded)", M + hello(offers=[{"kind": "state", "id": "cpu0", "instance": 0, "version": 1, "fdCount": 0, "flags": 2}, {"kind": "state", "id": "cpu1", "instance": 0, "version": 1, "fdCount": 0, "flags": 2}]) + plan() + base_tail
    yield "ABORT inside an open section", M + hello() + plan() + start() + F(bt.ABORT, bt.enc_abort("ERR_X", "source failed mid-section")) + EOFF
    yield "COMMIT inside an open section", M + hello() + plan() + start() + F(bt.COMMIT) + EOFF
    yield "PING inside an open section", M + hello() + plan() + start(b"regs!") + F(bt.PING, bt.enc_ping(1, 2)) + F(bt.SECTION_END, bt.enc_section(bt.SECTION_END, 1, [], b"", 0, 1, "")) + eos() + EOFF
    yield "str not UTF-8 (offer id 0xff)", M + F(bt.HELLO, struct.pack("<HHIBBI", 1, 1, 4, 0, 0, 1) + bt.enc_blob(b"") + struct.pack("<I", 1) + bt.enc_str("state") + struct.pack("<H", 1) + b"\xff" + struct.pack("<IIIB", 0, 1, 0, 2) + bt.enc_blob(b"")) + EOFF
    yield "JSON info with a duplicate key", M + F(bt.HELLO, bt.enc_hello({"minVersion": 1, "maxVersion": 1, "features": 4, "canPassFds": 0, "fdBudget": 1, "probe": b"", "offers": []})[:-4] + bt.enc_blob(b'{"a":1,"a":2}')) + EOFF
    yield "info JSON text 'null' (4 bytes)", M + F(bt.HELLO, bt.enc_hello({"minVersion": 1, "maxVersion": 1, "features": 4, "canPassFds": 0, "fdBudget": 1, "probe": b"", "offers": []})[:-4] + bt.enc_blob(b'null')) + EOFF
    yield "1 byte after EOF", M + hello() + plan() + base_tail + b"\x00"
    yield "END_OF_STATE then a PING", M + hello() + plan() + full() + eos() + F(bt.PING, bt.enc_ping(1, 2)) + EOFF
    yield "SECTION_END with sectionId of another section", M + hello() + plan() + start() + F(bt.SECTION_END, bt.enc_section(bt.SECTION_END, 2, [], b"cde", 0, 1, "")) + eos() + EOFF


def ours(data):
    d = bt.Decoder("main", "inspect", with_fds=False)
    try:
        d.feed(data)
        d.end()
        return "ok"
    except bt.StreamError as e:
        return "%s@%s" % (e.code, e.offset)


def node(path):
    r = subprocess.run([NODE, BIN, "inspect", path, "--json"], capture_output=True, timeout=60)
    try:
        rep = json.loads(r.stdout.decode())
    except ValueError:
        return "exit %d %s" % (r.returncode, r.stderr.decode()[-200:])
    err = rep.get("error")
    if not err:
        return "ok" if r.returncode == 0 else "exit %d" % r.returncode
    return "%s (%s)" % (err["code"], err.get("message", "")[:150])


def main():
    tmp = tempfile.mkdtemp(prefix="btprobe-")
    try:
        return _main(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(tmp):
    rows = []
    for i, (name, data) in enumerate(c for c in cases() if c[1] is not None):
        p = os.path.join(tmp, "c%02d.bin" % i)
        open(p, "wb").write(data)
        a, b = ours(data), node(p)
        same = a.split("@")[0] == b.split(" ")[0]
        rows.append({"case": name, "python": a, "library": b, "agree": same})
        print("%-5s %-50s python=%-32s library=%s" % ("same" if same else "DIFF", name, a, b))
    # --json FILE: also write the rows as JSON (the original run kept probe_results.json; the vectors now pin these cases)
    if "--json" in sys.argv:
        json.dump(rows, open(sys.argv[sys.argv.index("--json") + 1], "w"), indent=1)


if __name__ == "__main__":
    main()
