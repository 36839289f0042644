#!/usr/bin/env python3
"""A live SOURCE of the backend-transfer stream, written from docs/stream-format.md.

usage:
  py_source.py --socket PATH [--state-bytes N] [--memfd-payload] [--parts N]
        hand a generic device (memfd 'ram' + eventfd 'irq') and N bytes of VMM
        state to any target listening on PATH.
  py_source.py --spawn-node [--exec] [...]
        self-test against the library's real target: start
        `node bin/backend-transfer.js receive --listen ... --accept ... --json`
        (with --exec: a child program that receives the fds and uses them),
        hand over, and check the target's report.
Prints one JSON summary on stdout; exit 0 on success.
"""
import argparse
import fcntl
import hashlib
import json
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bt_stream as bt  # noqa: E402

# The repository this file sits in (test/interop/independent/); BT_NODE: the node to run.
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bin", "backend-transfer.js")
NODE = os.environ.get("BT_NODE", "node")


class Fail(Exception):
    def __init__(self, code, reason, details=None):
        super().__init__("%s: %s" % (code, reason))
        self.code, self.reason, self.details = code, reason, details


def sealed_memfd(name, data):
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    fcntl.fcntl(fd, bt.F_ADD_SEALS, bt.F_SEAL_SHRINK | bt.F_SEAL_GROW | bt.F_SEAL_WRITE | bt.F_SEAL_SEAL)
    return fd


class Source:
    def __init__(self, sock, devices_fds, state, memfd_payload=False, parts=3, log=print, crc=True,
                 ping=False, drop_probe=False, versions=(1, 1), commit_early=False):
        self.ping = ping
        self.drop_probe = drop_probe
        self.commit_early = commit_early  # test: COMMIT right after END_OF_STATE (breaks the commit rule)
        self.versions = versions
        self.pongs = []
        self.sock = sock
        self.ram_fd, self.irq_fd = devices_fds
        self.state = state
        self.memfd_payload = memfd_payload
        self.parts = max(1, parts)
        self.log = log
        self.crc = crc
        self.seq = 0            # fds sent on this direction so far
        self.first = True
        self.features = None    # main-stream features once PLAN is sent
        self.dec = None
        self.pings_answered = 0

    def write(self, ftype, body=b"", flags=0, fds=(), declare=None):
        if ftype in (bt.HELLO, bt.WELCOME, bt.PLAN) or self.features is None:
            crc = True
        else:
            crc = bool(self.features & bt.F_BODY_CRC)
        data = bt.frame_bytes(ftype, body, flags, len(fds) if declare is None else declare, self.seq, body_crc=crc)
        head_len = 20
        if self.first:
            data = bt.MAGIC + data
            head_len += 8
            self.first = False
        if fds:
            # the head: (magic +) 20 header bytes + the start of the body, in one sendmsg
            # with the fds (batches of 253 on its first bytes); then the rest of the frame
            head_len = min(len(data), head_len + 64)
            bt.send_with_fds(self.sock, data[:head_len], data[head_len:], list(fds))
        else:
            self.sock.sendall(data)
        self.seq += len(fds)

    def read_frames(self, timeout):
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            raise Fail("ERR_TIMEOUT", "the target took too long")
        data, fds = bt.recv_chunk(self.sock)
        if not data and not fds:
            self.dec.end()
            return []
        return self.dec.feed(data, fds)

    def next_frame(self, timeout=10.0):
        while not self.pending:
            self.pending += self.read_frames(timeout)
        return self.pending.pop(0)

    def abort(self, code, reason):
        try:
            self.sock.settimeout(0.5)
            self.write(bt.ABORT, bt.enc_abort(code, reason))
            self.write(bt.EOF)
        except OSError:
            pass

    def run(self):
        self.pending = []
        probe = os.urandom(16)
        probe_fd = sealed_memfd("probe", probe)
        offers = [
            {"kind": "generic", "id": "gen0", "instance": 0, "version": 1, "fdCount": 2,
             "flags": bt.OFFER_WANTS_FDS | bt.OFFER_REQUIRED},
            {"kind": "state", "id": "vmm-state", "instance": 0, "version": 1, "fdCount": 0,
             "flags": bt.OFFER_REQUIRED},
        ]
        feats = bt.F_FDS | (bt.F_BODY_CRC if self.crc else 0) | (bt.F_MEMFD_PAYLOAD if self.memfd_payload else 0)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        hello = {"minVersion": self.versions[0], "maxVersion": self.versions[1], "features": feats, "canPassFds": 1,
                 "fdBudget": max(0, soft - len(os.listdir("/proc/self/fd"))), "probe": probe,
                 "offers": offers,
                 "info": {"pid": os.getpid(), "program": "py_source.py", "stateBytes": len(self.state)}}
        self.hello = hello
        self.dec = bt.Decoder("return", "source", with_fds=True,
                              hello=dict(hello, probe=probe.hex()))
        # 1. MAGIC HELLO in one sendmsg, the probe fd on the first magic byte
        if self.drop_probe:
            # test: behave like a relay that drops SCM_RIGHTS on HELLO (the probe is
            # declared, fdCount 1, but no fd travels); it still counts as fd #0
            self.write(bt.HELLO, bt.enc_hello(hello), fds=[], declare=1)
            self.seq = 1
        else:
            self.write(bt.HELLO, bt.enc_hello(hello), fds=[probe_fd])
        os.close(probe_fd)
        self.log("sent HELLO")
        # 2. WELCOME or NACK
        try:
            w = self.next_frame()
        except bt.StreamError as e:
            raise Fail(e.code, e.message)
        self.log("read %s %s" % (w["type"], json.dumps(w["body"])))
        if w["type"] == "NACK":
            raise Fail("ERR_HANDOVER_REFUSED", w["body"]["reason"], {"code": w["body"]["code"]})
        if w["type"] != "WELCOME":
            raise Fail("ERR_STREAM_PROTOCOL", "expected WELCOME, got %s" % w["type"])
        welcome = w["body"]
        self.welcome = welcome
        info = welcome.get("info") or {}
        if feats & bt.F_FDS and welcome["canPassFds"] == 0 and info.get("probe") == "missing":
            self.abort("ERR_CHANNEL_DROPS_FDS", "the probe fd did not arrive")
            raise Fail("ERR_CHANNEL_DROPS_FDS", "the probe fd did not arrive")
        for o, a in zip(offers, welcome["answers"]):
            if a["decision"] == bt.DECISION_REFUSE and o["flags"] & bt.OFFER_REQUIRED:
                self.abort("ERR_DEVICE_REFUSED", "%s refused (reason %d)" % (o["id"], a["reason"]))
                raise Fail("ERR_DEVICE_REFUSED", "%s refused (reason %d)" % (o["id"], a["reason"]))
        h = dict(hello)
        plan = bt.compute_plan(h, welcome)
        if (welcome["fdBudget"] != bt.UNKNOWN_BUDGET and plan["totalFds"] > 0
                and plan["totalFds"] + 16 > welcome["fdBudget"]):
            self.abort("ERR_FD_BUDGET", "fds do not fit")
            raise Fail("ERR_FD_BUDGET", "fds do not fit")
        self.plan = plan
        # 3. PLAN, sections, END_OF_STATE without waiting
        self.write(bt.PLAN, bt.enc_plan(plan))
        self.features = plan["features"]
        sid = 0
        total_fds = 0
        payload_bytes = 0
        count = 0
        for dev in plan["devices"]:
            sid += 1
            count += 1
            if dev["id"] == "gen0":
                payload = json.dumps({"metadata": {"from": "py_source.py"}, "names": ["ram", "irq"]},
                                     separators=(",", ":")).encode()
                atts, fds = [], []
                if dev["withFds"]:
                    atts = [{"kind": "memfd", "role": 0, "name": "ram", "meta": None},
                            {"kind": "eventfd", "role": 0, "name": "irq", "meta": None}]
                    fds = [self.ram_fd, self.irq_fd]
                body = bt.enc_section(bt.SECTION_FULL, sid, atts, payload, 0, dev["version"], dev["id"])
                self.write(bt.SECTION_FULL, body, fds=fds)
                total_fds += len(fds)
                payload_bytes += len(payload)
            else:  # vmm-state
                if self.memfd_payload and self.features & bt.F_MEMFD_PAYLOAD:
                    pfd = sealed_memfd("payload", self.state)
                    crc = bt.crc32(self.state) if self.features & bt.F_BODY_CRC else 0
                    att = [{"kind": "memfd", "role": 1, "name": "payload", "meta": None}]
                    body = bt.enc_section(bt.SECTION_FULL, sid, att, b"", 0, dev["version"], dev["id"],
                                          payload_crc=crc, payload_len=len(self.state))
                    self.write(bt.SECTION_FULL, body, flags=bt.FLAG_PAYLOAD_IN_MEMFD, fds=[pfd])
                    os.close(pfd)
                else:
                    n = self.parts
                    step = -(-len(self.state) // n) if self.state else 0
                    chunks = [self.state[i * step:(i + 1) * step] for i in range(n)] if n > 1 else [self.state]
                    if n == 1:
                        self.write(bt.SECTION_FULL, bt.enc_section(bt.SECTION_FULL, sid, [], chunks[0], 0, dev["version"], dev["id"]))
                    else:
                        for i, c in enumerate(chunks):
                            t = bt.SECTION_START if i == 0 else (bt.SECTION_END if i == n - 1 else bt.SECTION_PART)
                            self.write(t, bt.enc_section(t, sid, [], c, 0, dev["version"], dev["id"]))
                            if self.ping and i == 0:
                                # a PING inside an open section (allowed by "Order")
                                self.write(bt.PING, bt.enc_ping(0x1234, time.monotonic_ns()))
                payload_bytes += len(self.state)
        self.write(bt.END_OF_STATE, bt.enc_eos(count, total_fds, payload_bytes))
        self.log("sent PLAN, %d section(s), END_OF_STATE" % count)
        if self.commit_early:
            self.write(bt.COMMIT)
        # 4. ACK LOADED, VERIFIED, ADOPTED in order
        acks = []
        for want in (bt.ACK_LOADED, bt.ACK_VERIFIED, bt.ACK_ADOPTED):
            f = self.next_ack()
            if f["type"] == "NACK":
                self.abort("ERR_HANDOVER_REFUSED", f["body"]["reason"])
                raise Fail("ERR_HANDOVER_REFUSED", f["body"]["reason"], {"code": f["body"]["code"]})
            if f["type"] != "ACK" or f["body"]["stage"] != want:
                self.abort("ERR_STREAM_PROTOCOL", "unexpected %s" % f["type"])
                raise Fail("ERR_STREAM_PROTOCOL", "expected ACK %d, got %s" % (want, json.dumps(bt.public(f))))
            acks.append(f["body"])
        # 5. the commit rule
        if not self.commit_early:
            self.write(bt.COMMIT)
        f = self.next_ack()
        if f["type"] != "ACK" or f["body"]["stage"] != bt.ACK_COMMITTED:
            raise Fail("ERR_COMMIT_UNCERTAIN", "expected ACK(COMMITTED), got %s" % f["type"])
        acks.append(f["body"])
        # release our copies, then EOF
        os.close(self.ram_fd)
        os.close(self.irq_fd)
        self.write(bt.EOF)
        # the target's EOF
        target_eof = False
        try:
            while True:
                f = self.next_frame(3.0)
                if f["type"] == "EOF":
                    target_eof = True
                    break
        except (Fail, bt.StreamError, OSError):
            pass
        return {"acks": acks, "targetEof": target_eof, "pongs": self.pongs, "plan": plan,
                "welcome": welcome, "returnFrames": [x["type"] for x in self.dec.frames]}

    def next_ack(self):
        while True:
            try:
                f = self.next_frame()
            except bt.StreamError as e:
                self.abort(e.code, e.message)
                raise Fail(e.code, e.message)
            if f["type"] == "PONG":
                if not self.ping or int(f["body"]["token"]) != 0x1234:
                    self.abort("ERR_STREAM_PROTOCOL", "unsolicited PONG")
                    raise Fail("ERR_STREAM_PROTOCOL", "unsolicited PONG")
                self.pongs.append(f["body"])
                continue
            if f["type"] == "PING":
                self.write(bt.PONG, bt.enc_ping(int(f["body"]["token"]), time.monotonic_ns()))
                self.pings_answered += 1
                continue
            return f


CHILD = r'''
import json, os, sys
desc = json.loads(os.environ.get("BT_HANDOVER", "null"))
out = {"BT_HANDOVER": desc, "fds": []}
for fd in range(3, 3 + 16):
    try:
        link = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        continue
    e = {"fd": fd, "link": link}
    if link.startswith("/memfd:"):
        size = os.fstat(fd).st_size
        e["size"] = size
        e["head"] = os.pread(fd, 40, 0).decode("utf-8", "replace")
    elif link == "anon_inode:[eventfd]":
        e["read"] = os.eventfd_read(fd)      # what the source wrote before the handover
        os.eventfd_write(fd, 1000)           # the source (same object) can read it back
        e["wrote"] = 1000
    out["fds"].append(e)
print("CHILD " + json.dumps(out), flush=True)
'''


def spawn_node(args, log):
    tmp = tempfile.mkdtemp(prefix="pysource-")
    sock_path = os.path.join(tmp, "h.sock")
    accept = {"backendTransfer": True, "devices": [{"kind": "generic", "id": "gen0"}]}
    acc_file = os.path.join(tmp, "accept.json")
    json.dump(accept, open(acc_file, "w"))
    cmd = [NODE, BIN, "receive", "--listen", sock_path, "--accept", acc_file, "--json"]
    if args.exec:
        cmd += ["--exec", "--", sys.executable, "-c", CHILD]
    log("spawn " + " ".join(cmd[:8]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ram = b"guest ram written by py_source.py for the node target\n" * 32
    ram_fd = os.memfd_create("guest-ram", os.MFD_ALLOW_SEALING)
    os.write(ram_fd, ram)
    irq_fd = os.eventfd(0)
    os.eventfd_write(irq_fd, 3)
    spy_irq = os.dup(irq_fd)  # a second reference to the same eventfd, to see the child's write
    state = os.urandom(args.state_bytes)
    # The path exists from bind() on, before listen(): connect until it is accepted
    # (refused or missing: not listening yet), for at most 30 s or until the target exits.
    deadline = time.monotonic() + 30
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock_path)
            break
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    src = Source(s, (ram_fd, irq_fd), state, args.memfd_payload, args.parts, log, crc=not args.no_crc,
                 ping=args.ping, drop_probe=args.drop_probe, versions=tuple(int(x) for x in args.versions.split(":")),
                 commit_early=args.commit_early)
    summary = {}
    try:
        summary["source"] = src.run()
        summary["committed"] = True
    except Fail as e:
        summary["committed"] = False
        summary["error"] = {"code": e.code, "reason": e.reason, "details": e.details}
        summary["returnFrames"] = [bt.public(f) for f in (src.dec.frames if src.dec else [])]
    s.close()
    out, err = proc.communicate(timeout=30)
    summary["nodeExit"] = proc.returncode
    text = out.decode()
    child = [l for l in text.splitlines() if l.startswith("CHILD ")]
    rest = "\n".join(l for l in text.splitlines() if not l.startswith("CHILD "))
    try:
        summary["nodeReport"] = json.loads(rest) if rest.strip() else None
    except ValueError:
        summary["nodeReport"] = rest[-3000:]
    if err.strip():
        summary["nodeStderr"] = err.decode()[-2000:]
    if child:
        summary["child"] = json.loads(child[0][6:])
        # the child wrote 1000 on the received eventfd: the same object as ours
        try:
            os.set_blocking(spy_irq, False)
            summary["eventfdReadBackBySource"] = os.eventfd_read(spy_irq)
        except OSError as e:
            summary["eventfdReadBackBySource"] = str(e)
    summary["stateSha256"] = hashlib.sha256(state).hexdigest()
    summary["stateBytes"] = len(state)
    summary["ramBytes"] = len(ram)
    return summary


def judge(summary):
    """The target's report must say the fds and the state arrived."""
    rep = summary.get("nodeReport")
    if not isinstance(rep, dict):
        rep = (summary.get("child") or {}).get("BT_HANDOVER")
    checks = {}
    checks["sourceCommitted"] = bool(summary.get("committed"))
    checks["nodeExit0"] = summary.get("nodeExit") == 0
    checks["reportCommitted"] = isinstance(rep, dict) and rep.get("outcome") == "committed"
    checks["stateBytesArrived"] = isinstance(rep, dict) and rep.get("stateBytes") == summary.get("stateBytes")
    # the target's report carries the state's SHA-256 (resolution C2): the content arrived, not only its size
    checks["stateContentArrived"] = isinstance(rep, dict) and rep.get("stateSha256") == summary.get("stateSha256")
    gen = [d for d in (rep or {}).get("devices", []) if d.get("id") == "gen0"]
    checks["fdsArrived"] = bool(gen) and [f.get("name") for f in gen[0].get("fds", [])] == ["ram", "irq"]
    if "child" in summary:
        fds = summary["child"]["fds"]
        mem = [f for f in fds if f["link"].startswith("/memfd:")]
        ev = [f for f in fds if f["link"] == "anon_inode:[eventfd]"]
        checks["childReadMemfd"] = bool(mem) and mem[0]["size"] == summary["ramBytes"] and mem[0]["head"].startswith("guest ram written by py_source")
        checks["childEventfdRoundTrip"] = bool(ev) and ev[0].get("read") == 3 and summary.get("eventfdReadBackBySource") == 1000
    summary["checks"] = checks
    return all(checks.values())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket")
    ap.add_argument("--spawn-node", action="store_true")
    ap.add_argument("--exec", action="store_true")
    ap.add_argument("--state-bytes", type=int, default=1 << 20)
    ap.add_argument("--memfd-payload", action="store_true")
    ap.add_argument("--no-crc", action="store_true")
    ap.add_argument("--parts", type=int, default=3)
    ap.add_argument("--ping", action="store_true", help="send a PING inside the open state section")
    ap.add_argument("--drop-probe", action="store_true", help="declare the probe but send no fd")
    ap.add_argument("--versions", default="1:1", help="HELLO's version window min:max")
    ap.add_argument("--commit-early", action="store_true", help="send COMMIT right after END_OF_STATE (a broken source)")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    log = (lambda m: print("[py_source] " + m, file=sys.stderr)) if args.v else (lambda m: None)
    if args.spawn_node:
        summary = spawn_node(args, log)
        summary["ok"] = judge(summary)
    else:
        ram_fd = os.memfd_create("guest-ram")
        os.write(ram_fd, b"guest ram\n")
        irq_fd = os.eventfd(0)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(args.socket)
        src = Source(s, (ram_fd, irq_fd), os.urandom(args.state_bytes), args.memfd_payload, args.parts, log,
                     crc=not args.no_crc, ping=args.ping, drop_probe=args.drop_probe,
                     versions=tuple(int(x) for x in args.versions.split(":")))
        try:
            summary = {"ok": True, "source": src.run()}
        except Fail as e:
            summary = {"ok": False, "error": {"code": e.code, "reason": e.reason, "details": e.details}}
    print(json.dumps(summary, indent=1))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
