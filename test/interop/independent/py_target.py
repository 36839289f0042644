#!/usr/bin/env python3
"""A live TARGET of the backend-transfer stream, written from docs/stream-format.md.

usage:
  py_target.py --listen PATH [--accept generic:gen0 ...]      wait for any source
  py_target.py --spawn-node [--state-bytes N]                  self-test against the
        library's real source: create a memfd + eventfd, start
        `node bin/backend-transfer.js send` with them inherited, receive them here.

Prints one JSON summary on stdout. Exit 0 when the handover committed and the
fds were proven to work.
"""
import argparse
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
OUR_FEATURES = bt.F_FDS | bt.F_MEMFD_PAYLOAD | bt.F_BODY_CRC


class Refuse(Exception):
    def __init__(self, code, reason):
        super().__init__("%s: %s" % (code, reason))
        self.code, self.reason = code, reason


def fd_budget():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return bt.UNKNOWN_BUDGET
    return max(0, soft - len(os.listdir("/proc/self/fd")))


class Target:
    def __init__(self, conn, accept, log):
        self.conn = conn
        self.accept = accept  # {(kind,id): (minV, maxV)}; plus vmm-state always
        self.log = log
        self.dec = bt.Decoder("main", "target", with_fds=True)
        self.ret_features = None
        self.sent_magic = False
        self.acks = []
        self.sections = {}     # device key -> {"payload": bytearray, "fds": [...], "atts": [...]}
        self.received_pongs = 0
        self.pings_answered = 0
        self.state = "hello"
        self.committed = False
        self.source_eof = False

    # ---- return path writing
    def send(self, ftype, body=b"", first=False):
        crc = True if ftype in (bt.WELCOME,) or self.ret_features is None else bool(self.ret_features & bt.F_BODY_CRC)
        data = bt.frame_bytes(ftype, body, body_crc=crc)
        if not self.sent_magic:
            data = bt.MAGIC + data
            self.sent_magic = True
        self.conn.sendall(data)  # one write: magic goes with the first frame

    def nack(self, code, reason, section=bt.WHOLE_STREAM):
        try:
            self.send(bt.NACK, bt.enc_nack(code, reason, section))
            self.send(bt.EOF)
        except OSError:
            pass

    # ---- reading
    def pump(self, timeout):
        """One recvmsg; returns the frames decoded, [] on timeout; raises on EOF of the channel."""
        r, _, _ = select.select([self.conn], [], [], timeout)
        if not r:
            return None
        data, fds = bt.recv_chunk(self.conn)
        if not data and not fds:
            self.dec.end()  # raises ERR_STREAM_TRUNCATED unless EOF was read
            return []
        return self.dec.feed(data, fds)

    def on_hello(self, hello):
        answers = []
        can_fds = hello["canPassFds"] == 1 and self.dec.probe_status == "ok"
        for o in hello["offers"]:
            key = (o["kind"], o["id"])
            if o["id"] == "vmm-state":
                win = (1, 1) if (o["kind"] == "state" and o["instance"] == 0) else None
            else:
                win = self.accept.get(key)
            a = {"id": o["id"], "instance": o["instance"], "decision": 0, "reason": 0,
                 "minVersion": 0, "maxVersion": 0}
            if win is None:
                a["reason"] = 1
            else:
                a["minVersion"], a["maxVersion"] = win
                if o["version"] > win[1]:
                    a["reason"] = 2
                elif o["version"] < win[0]:
                    a["reason"] = 3
                elif o["flags"] & bt.OFFER_WANTS_FDS and o["fdCount"] > 0:
                    if can_fds:
                        a["decision"] = bt.DECISION_WITH_FDS
                    else:
                        a["decision"], a["reason"] = bt.DECISION_STATE_ONLY, 6
                else:
                    a["decision"] = bt.DECISION_STATE_ONLY
            answers.append(a)
        welcome = {"version": max(v for v in bt.SPOKEN_VERSIONS if hello["minVersion"] <= v <= hello["maxVersion"]),
                   "features": hello["features"] & OUR_FEATURES,
                   "canPassFds": 1 if can_fds else 0,
                   "fdBudget": fd_budget(), "answers": answers,
                   "info": {"pid": os.getpid(), "probe": self.dec.probe_status}}
        self.welcome = welcome
        self.dec.set_welcome(welcome)
        self.send(bt.WELCOME, bt.enc_welcome(welcome))
        self.ret_features = welcome["features"]
        self.log("sent WELCOME %s" % json.dumps(welcome))

    def on_frame(self, f):
        t = f["type"]
        self.log("read %s @%d fds=%d %s" % (t, f["offset"], len(f["_fds"]), json.dumps(bt.public(f)["body"])[:200]))
        if t == "HELLO":
            self.hello = f["body"]
            self.on_hello(f["body"])
        elif t == "PING":
            b = f["body"]
            self.send(bt.PONG, bt.enc_ping(int(b["token"]), time.monotonic_ns()))
            self.pings_answered += 1
        elif t.startswith("SECTION_"):
            key = f["_device"]
            s = self.sections.setdefault(key, {"payload": bytearray(), "fds": [], "atts": []})
            s["payload"] += f["_extra"].get("payload", b"")
            devatts = [a for a in f["body"]["attachments"] if a["role"] == 0]
            s["atts"] += devatts
            s["fds"] += f["_fds"]
        elif t == "END_OF_STATE":
            self.send(bt.ACK, bt.enc_ack(bt.ACK_LOADED, "%d section(s), %d fd(s)" % (
                int(f["body"]["sectionCount"]), int(f["body"]["totalFds"]))))
            self.acks.append("LOADED")
            self.verify()
            self.send(bt.ACK, bt.enc_ack(bt.ACK_VERIFIED, "ok"))
            self.acks.append("VERIFIED")
            self.send(bt.ACK, bt.enc_ack(bt.ACK_ADOPTED, "ok"))
            self.acks.append("ADOPTED")
            self.state = "adopted"
        elif t == "COMMIT":
            if self.state != "adopted":
                raise Refuse("ERR_STREAM_PROTOCOL", "COMMIT before ADOPTED")
            self.committed = True
            self.send(bt.ACK, bt.enc_ack(bt.ACK_COMMITTED, "ok"))
            self.acks.append("COMMITTED")
        elif t == "ABORT":
            raise Refuse("ERR_HANDOVER_ABORTED", "%s: %s" % (f["body"]["code"], f["body"]["reason"]))
        elif t == "EOF":
            self.source_eof = True

    def verify(self):
        """Conventions above the stream: generic payload = JSON [NUL blob]."""
        self.devices = {}
        for key, s in self.sections.items():
            dev = self.dec.planned[key]
            payload = bytes(s["payload"])
            if dev["kind"] == "state":
                self.devices[key] = {"kind": "state", "state": payload}
                continue
            nul = payload.find(b"\0")
            js, blob = (payload, b"") if nul < 0 else (payload[:nul], payload[nul + 1:])
            try:
                desc = json.loads(js.decode("utf-8"))
            except ValueError:
                raise Refuse("ERR_STREAM_PROTOCOL", "device %s payload is not JSON" % (key,))
            if dev["kind"] == "generic":
                names = desc.get("names")
                if dev["withFds"] and [a["name"] for a in s["atts"]] != names:
                    raise Refuse("ERR_STREAM_PROTOCOL", "generic %s fd names %r != %r" % (
                        key, [a["name"] for a in s["atts"]], names))
            self.devices[key] = {"kind": dev["kind"], "desc": desc, "blob": blob,
                                 "fds": list(zip([a["name"] for a in s["atts"]], [a["kind"] for a in s["atts"]], s["fds"]))}

    def run(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        try:
            while not (self.source_eof and (self.committed or True)):
                if time.monotonic() > deadline:
                    raise Refuse("ERR_TIMEOUT", "source too slow")
                frames = self.pump(1.0)
                for f in frames or []:
                    self.on_frame(f)
                if self.source_eof:
                    break
            if self.committed:
                self.send(bt.EOF)
            return True
        except bt.StreamError as e:
            self.log("stream error %s" % e)
            self.error = e.code
            if not self.committed:
                if self.dec.nframes == 0 and not self.sent_magic:
                    self.nack(e.code, e.message)      # refusing the HELLO: MAGIC NACK EOF
                else:
                    self.nack(e.code, e.message)
            self.release()
            return False
        except Refuse as e:
            self.log("refused %s" % e)
            self.error = e.code
            self.error_reason = e.reason  # for ABORT: the source's "code: reason"
            if e.code != "ERR_HANDOVER_ABORTED":
                self.nack(e.code, e.reason)
            self.release()
            return False

    def release(self):
        for s in self.sections.values():
            for fd in s["fds"]:
                bt._close(fd)
            s["fds"] = []
        self.dec.close_all()


def prove_fds(dev, originals=None):
    """Use the fds: read the memfd, write/read the eventfd."""
    out = []
    for name, kind, fd in dev["fds"]:
        r = {"name": name, "kind": kind, "fd": fd, "link": bt.fd_target(fd)}
        if bt.fd_is_memfd(fd):
            size = os.fstat(fd).st_size
            data = bt.read_fd_all(fd, size)
            r["memfdSize"] = size
            r["memfdHead"] = data[:32].decode("utf-8", "replace")
            if originals and name in originals:
                r["sameFileAsSent"] = os.fstat(fd).st_ino == os.fstat(originals[name]).st_ino
        elif bt.fd_is_eventfd(fd):
            os.eventfd_write(fd, 7)
            r["eventfdWrote"] = 7
            if originals and name in originals:
                # the source's original eventfd sees what we wrote on ours: the very same object
                r["eventfdReadViaOriginal"] = os.eventfd_read(originals[name])
                os.eventfd_write(originals[name], 42)
            r["eventfdRead"] = os.eventfd_read(fd)
        out.append(r)
    return out


def serve(path, accept, log, on_listening=None, timeout=30.0, originals=None):
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    if on_listening:
        on_listening()
    srv.settimeout(timeout)
    conn, _ = srv.accept()
    srv.close()
    conn.setblocking(True)
    t = Target(conn, accept, log)
    ok = t.run(timeout)
    # after our EOF, wait a little for the peer to close
    summary = {"ok": bool(ok and t.committed), "committed": t.committed, "acksSent": t.acks,
               "probe": t.dec.probe_status, "error": getattr(t, "error", None), "errorReason": getattr(t, "error_reason", None),
               "pingsAnswered": t.pings_answered}
    if ok and t.committed:
        summary["plan"] = t.dec.plan
        summary["welcome"] = {k: v for k, v in t.welcome.items() if k != "answers"}
        devs = []
        for key, d in t.devices.items():
            e = {"id": key[0], "instance": key[1], "kind": d["kind"]}
            if d["kind"] == "state":
                e["stateBytes"] = len(d["state"])
                e["stateSha256"] = __import__("hashlib").sha256(d["state"]).hexdigest()
            else:
                e["payloadJson"] = d["desc"]
                e["blobBytes"] = len(d["blob"])
                e["fds"] = prove_fds(d, originals)
            devs.append(e)
        summary["devices"] = devs
        summary["framesRead"] = [f["type"] for f in t.dec.frames]
    conn.close()
    return summary, t


def spawn_node(args, log):
    tmp = tempfile.mkdtemp(prefix="pytarget-")
    sock = os.path.join(tmp, "h.sock")
    memfd = os.memfd_create("guest-ram", os.MFD_ALLOW_SEALING)
    ram = b"guest ram from python, handed to node, back to python\n" * 64
    os.write(memfd, ram)
    evfd = os.eventfd(0)
    os.eventfd_write(evfd, 5)
    state = os.urandom(args.state_bytes)
    state_file = os.path.join(tmp, "state.bin")
    open(state_file, "wb").write(state)
    devices = {"socket": sock, "backendTransfer": True, "devices": [
        {"kind": "generic", "id": "gen0", "transfer": True,
         "fds": [{"name": "ram", "fd": memfd, "kind": "memfd"}, {"name": "irq", "fd": evfd, "kind": "eventfd"}],
         "metadata": {"from": "python", "note": "spawned by py_target.py"}}]}
    dev_file = os.path.join(tmp, "devices.json")
    json.dump(devices, open(dev_file, "w"))
    proc = {}

    def start():
        cmd = [NODE, BIN, "send", "--devices", dev_file, "--socket", sock, "--state", state_file, "--json"] + args.node_arg
        log("spawn %s (pass_fds %d %d)" % (" ".join(cmd), memfd, evfd))
        proc["p"] = subprocess.Popen(cmd, pass_fds=(memfd, evfd), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    summary, t = serve(sock, {("generic", "gen0"): (1, 1)}, log, on_listening=start,
                       originals={"ram": memfd, "irq": evfd})
    out, err = proc["p"].communicate(timeout=30)
    summary["nodeExit"] = proc["p"].returncode
    try:
        summary["nodeReport"] = json.loads(out.decode() or "null")
    except ValueError:
        summary["nodeReport"] = out.decode()[-2000:]
    if err:
        summary["nodeStderr"] = err.decode()[-2000:]
    if summary.get("devices"):
        st = [d for d in summary["devices"] if d["kind"] == "state"]
        summary["stateMatches"] = bool(st) and st[0]["stateSha256"] == __import__("hashlib").sha256(state).hexdigest()
        g = [d for d in summary["devices"] if d["id"] == "gen0"]
        if g:
            m = [f for f in g[0]["fds"] if f["kind"] == "memfd"]
            summary["memfdContentMatches"] = bool(m) and m[0]["memfdSize"] == len(ram) and m[0]["memfdHead"] == ram[:32].decode()
            e = [f for f in g[0]["fds"] if f["kind"] == "eventfd"]
            summary["eventfdWorks"] = bool(e) and e[0].get("eventfdReadViaOriginal") == 5 + 7 and e[0]["eventfdRead"] == 42
    summary["ok"] = bool(summary["ok"] and summary["nodeExit"] == 0 and summary.get("stateMatches")
                         and summary.get("memfdContentMatches") and summary.get("eventfdWorks"))
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen")
    ap.add_argument("--accept", action="append", default=[], help="kind:id[:min:max]")
    ap.add_argument("--spawn-node", action="store_true")
    ap.add_argument("--state-bytes", type=int, default=1 << 20)
    ap.add_argument("--node-arg", action="append", default=[], help="extra argument for `node ... send`")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    log = (lambda m: print("[py_target] " + m, file=sys.stderr)) if args.v else (lambda m: None)
    if args.spawn_node:
        summary = spawn_node(args, log)
    else:
        accept = {}
        for a in args.accept:
            p = a.split(":")
            accept[(p[0], p[1])] = (int(p[2]), int(p[3])) if len(p) > 3 else (1, 1)
        summary, _ = serve(args.listen, accept, log)
    print(json.dumps(summary, indent=1))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
