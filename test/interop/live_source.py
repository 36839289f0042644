#!/usr/bin/env python3
"""A handover source written from docs/stream-format.md, in Python (standard
library only), that hands a live handover to the library's receiveHandover.

    live_source.py SOCKET_PATH [--memfd-payload]

It connects to SOCKET_PATH and follows "The session": MAGIC HELLO with a probe
memfd (the fd on the first magic byte), reads MAGIC WELCOME, computes PLAN from
the two, sends a `generic` device `gen0` with a memfd (`mem`) and an eventfd
(`ev`) on its section, then 1 MiB of VMM state (in SECTION_START/PART/END, or
in a sealed payload memfd), END_OF_STATE, waits for ACK(LOADED),
ACK(VERIFIED), ACK(ADOPTED) in that order, sends COMMIT, waits for
ACK(COMMITTED), sends EOF and reads the target's. It prints one JSON line; exit
0 when the handover committed.
"""
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
from live_target import Peer, s16, blob  # noqa: E402

F_ADD_SEALS = 1033
SEAL_ALL = 0x0001 | 0x0002 | 0x0004 | 0x0008  # SEAL, SHRINK, GROW, WRITE
MEM_CONTENT = b"guest memory from a Python source"


def state_bytes():
    return b"".join(hashlib.sha256(b"py-state-%d" % i).digest() for i in range(32768))  # 1 MiB


def sealed_memfd(name, data):
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING)
    os.pwrite(fd, data, 0)
    fcntl.fcntl(fd, F_ADD_SEALS, SEAL_ALL)
    return fd


class Sender:
    def __init__(self, sock):
        self.sock = sock
        self.magic = False
        self.seq = 0            # fds sent so far (the numbering)
        self.crc = True         # before PLAN every frame carries its real CRC

    def frame(self, typ, body, fds=(), flags=0):
        head = struct.pack("<BBHIII", typ, flags, 0, len(body), len(fds), self.seq if fds else 0)
        crc_on = self.crc or typ in (0x01, 0x02, 0x03)
        data = head + struct.pack("<I", zlib.crc32(head)) + body + struct.pack("<I", zlib.crc32(body) if crc_on else 0)
        if not self.magic:
            data, self.magic = ds.MAGIC + data, True
        if fds:
            # at most 253 fds per sendmsg, on the frame's first bytes; here always one batch
            assert len(fds) <= 253
            n = socket.send_fds(self.sock, [data], list(fds))
            if n < len(data):
                self.sock.sendall(data[n:])
        else:
            self.sock.sendall(data)
        self.seq += len(fds)


def main():
    path = sys.argv[1]
    memfd_payload = "--memfd-payload" in sys.argv
    for _ in range(500):
        if os.path.exists(path):
            break
        time.sleep(0.02)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    out = Sender(sock)
    back = Peer(sock)
    mem = os.memfd_create("py-mem")
    os.pwrite(mem, MEM_CONTENT, 0)
    ev = os.eventfd(0)
    state = state_bytes()
    result = dict(ok=False)
    try:
        features = ds.FDS | ds.BODY_CRC | (ds.MEMFD_PAYLOAD if memfd_payload else 0)
        probe = os.urandom(16)
        offers = [dict(kind="generic", id="gen0", instance=0, version=1, fdCount=2, flags=1),
                  dict(kind="state", id="vmm-state", instance=0, version=1, fdCount=0, flags=2)]
        info = {"pid": os.getpid(), "program": "live_source.py", "stateBytes": len(state)}
        hello = dict(minVersion=1, maxVersion=1, features=features, canPassFds=1, fdBudget=0xFFFFFFFF, probe=probe.hex(), offers=offers, info=info)
        body = struct.pack("<HHIBBI", 1, 1, features, 1, 0, 0xFFFFFFFF) + blob(probe) + struct.pack("<I", len(offers))
        for o in offers:
            body += s16(o["kind"]) + s16(o["id"]) + struct.pack("<IIIB", o["instance"], o["version"], o["fdCount"], o["flags"])
        body += blob(json.dumps(info).encode())
        probe_fd = sealed_memfd("py-probe", probe)
        try:
            out.frame(0x01, body, [probe_fd])
        finally:
            os.close(probe_fd)

        # The return path, read as a source reads it.
        st = dict(phase="hello", hello=None, welcome=None, plan=None, features=None, devices={}, section_ids=set(),
                  open=None, sections=0, device_fds=0, payload=0, refused=False, finished=False, received=0)

        def expect(*names):
            while True:
                name, flags, fdc, first, b, fds, at = back.frame()
                fail = lambda code, msg: (_ for _ in ()).throw(ds.StreamError(code, at, msg))
                ds.check_order(name, "source", st, fail)
                d = ds.decode_body(name, ds.Body(b, fail), flags, fdc, [], "source", None, st, fail)
                if name == "PING":
                    out.frame(0x33, struct.pack("<QQ", int(d["token"]), time.monotonic_ns()))
                    continue
                if name == "NACK":
                    raise ds.StreamError("ERR_HANDOVER_REFUSED", at, f"{d['code']}: {d['reason']}")
                if name not in names:
                    raise ds.StreamError("ERR_STREAM_PROTOCOL", at, f"expected {names}, got {name} {d}")
                return d

        welcome = expect("WELCOME")
        back.features = welcome["features"]  # the return path's settled features
        if welcome["features"] & ~features:
            raise ds.StreamError("ERR_STREAM_PROTOCOL", -1, "WELCOME agrees to features HELLO did not offer")
        if features & ds.FDS and not welcome["canPassFds"] and (welcome["info"] or {}).get("probe") == "missing":
            raise ds.StreamError("ERR_CHANNEL_DROPS_FDS", -1, "the probe did not arrive")
        plan = ds.compute_plan(hello, welcome)
        if welcome["fdBudget"] != 0xFFFFFFFF and plan["totalFds"] > 0 and plan["totalFds"] + 16 > welcome["fdBudget"]:
            raise ds.StreamError("ERR_FD_BUDGET", -1, "no room at the target")
        body = struct.pack("<HII", plan["version"], plan["features"], plan["totalFds"]) + struct.pack("<I", len(plan["devices"]))
        for d in plan["devices"]:
            body += s16(d["kind"]) + s16(d["id"]) + struct.pack("<IIBI", d["instance"], d["version"], d["withFds"], d["fdCount"])
        out.frame(0x03, body)
        out.crc = bool(plan["features"] & ds.BODY_CRC)

        section_id = 0
        payload_bytes = 0
        device_fds = 0
        for d in plan["devices"]:
            section_id += 1
            head = lambda: struct.pack("<III", section_id, d["instance"], d["version"]) + s16(d["id"])
            if d["id"] == "gen0":
                names = ["mem", "ev"]
                payload = json.dumps({"metadata": {"from": "python"}, "names": names}).encode() + b"\0blob"
                atts, fds = b"", []
                if d["withFds"]:
                    atts = bytes([5, 0]) + s16("mem") + blob(b"") + bytes([4, 0]) + s16("ev") + blob(b"")
                    fds = [mem, ev]
                    device_fds += 2
                out.frame(0x13, head() + struct.pack("<H", len(fds)) + atts + struct.pack("<I", len(payload)) + payload, fds)
                payload_bytes += len(payload)
            elif d["id"] == "vmm-state" and memfd_payload and plan["features"] & ds.MEMFD_PAYLOAD:
                pfd = sealed_memfd("py-state", state)
                try:
                    att = bytes([5, 1]) + s16("payload") + blob(b"")
                    crc = zlib.crc32(state) if plan["features"] & ds.BODY_CRC else 0
                    out.frame(0x13, head() + struct.pack("<H", 1) + att + struct.pack("<II", len(state), crc), [pfd], flags=1)
                finally:
                    os.close(pfd)
                payload_bytes += len(state)
            elif d["id"] == "vmm-state":
                part = 256 * 1024
                chunks = [state[i:i + part] for i in range(0, len(state), part)]
                for i, c in enumerate(chunks):
                    if i == 0:
                        out.frame(0x10, head() + struct.pack("<HI", 0, len(c)) + c)
                    else:
                        typ = 0x12 if i == len(chunks) - 1 else 0x11
                        out.frame(typ, struct.pack("<I", section_id) + struct.pack("<HI", 0, len(c)) + c)
                payload_bytes += len(state)
        out.frame(0x20, struct.pack("<IIQ", section_id, device_fds, payload_bytes))

        for stage in (1, 2, 3):
            a = expect("ACK")
            if a["stage"] != stage:
                raise ds.StreamError("ERR_STREAM_PROTOCOL", -1, f"ACK stage {a['stage']}, expected {stage}")
        out.frame(0x40, b"")  # COMMIT: the target owns the backends once it confirms
        a = expect("ACK")
        if a["stage"] != 4:
            raise ds.StreamError("ERR_STREAM_PROTOCOL", -1, f"ACK stage {a['stage']}, expected COMMITTED")
        out.frame(0x7F, b"")
        expect("EOF")
        result = dict(ok=True, plan=plan, stateSha256=hashlib.sha256(state).hexdigest(), memContent=MEM_CONTENT.decode(), fdsSent=out.seq)
    except (ds.StreamError, OSError) as e:
        result = dict(ok=False, code=getattr(e, "code", type(e).__name__), message=str(e))
        try:
            out.frame(0x41, s16(result["code"]) + s16(result["message"][:2000]))
            out.frame(0x7F, b"")
        except OSError:
            pass
    finally:
        os.close(mem)
        os.close(ev)
        for fd, _ in back.fdq:
            os.close(fd)
        sock.close()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
