#!/usr/bin/env python3
"""Recorded (state-only) streams both ways:
  1. `node backend-transfer.js send --record` -> decoded by bt_stream (reader 'inspect', bytes alone)
  2. a stream written by bt_stream's encoder (START/PART/PART/END, BODY_CRC off) -> `backend-transfer inspect --json`
Prints a JSON summary; exit 0 when both pass."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bt_stream as bt  # noqa: E402

# The repository this file sits in (test/interop/independent/); BT_NODE: the node to run.
BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bin", "backend-transfer.js")
NODE = os.environ.get("BT_NODE", "node")


def main():
    tmp = tempfile.mkdtemp(prefix="btrec-")
    try:
        return _main(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _main(tmp):
    state = os.urandom(200000)
    open(os.path.join(tmp, "state.bin"), "wb").write(state)
    json.dump({"backendTransfer": False, "devices": [
        {"kind": "generic", "id": "gen0", "transfer": False, "fds": [], "metadata": {"a": 1}}]},
        open(os.path.join(tmp, "dev.json"), "w"))
    rec = os.path.join(tmp, "node.bin")
    r = subprocess.run([NODE, BIN, "send", "--devices", os.path.join(tmp, "dev.json"), "--record", rec,
                        "--state", os.path.join(tmp, "state.bin"), "--json"], capture_output=True, timeout=60)
    out = {"nodeRecordExit": r.returncode}
    d = bt.Decoder("main", "inspect", with_fds=False)
    data = open(rec, "rb").read()
    try:
        for i in range(0, len(data), 4093):
            d.feed(data[i:i + 4093])
        d.end()
        st = b"".join(f["_extra"].get("payload", b"") for f in d.frames if f.get("_device") == ("vmm-state", 0))
        out["pythonDecodesNodeRecording"] = {"ok": True, "frames": [f["type"] for f in d.frames],
                                            "stateMatches": st == state}
    except bt.StreamError as e:
        out["pythonDecodesNodeRecording"] = {"ok": False, "error": str(e)}

    # python writes, node inspects
    feats = 0  # BODY_CRC off: HELLO and PLAN still carry their real CRC, the rest 0
    hello = {"minVersion": 1, "maxVersion": 2, "features": feats, "canPassFds": 0, "fdBudget": bt.UNKNOWN_BUDGET,
             "probe": b"", "offers": [{"kind": "state", "id": "vmm-state", "instance": 0, "version": 1,
                                       "fdCount": 0, "flags": bt.OFFER_REQUIRED}],
             "info": {"program": "record_roundtrip.py", "stateBytes": len(state)}}
    welcome = {"version": 1, "features": feats, "canPassFds": 0,
               "answers": [{"decision": 1}]}
    plan = bt.compute_plan(hello, welcome)
    s = bt.MAGIC + bt.frame_bytes(bt.HELLO, bt.enc_hello(hello)) + bt.frame_bytes(bt.PLAN, bt.enc_plan(plan))
    q = len(state) // 4
    chunks = [state[:q], state[q:2 * q], state[2 * q:3 * q], state[3 * q:]]
    types = [bt.SECTION_START, bt.SECTION_PART, bt.SECTION_PART, bt.SECTION_END]
    for t, c in zip(types, chunks):
        s += bt.frame_bytes(t, bt.enc_section(t, 77, [], c, 0, 1, "vmm-state"), body_crc=False)
        if t == bt.SECTION_START:
            s += bt.frame_bytes(bt.PING, bt.enc_ping(1, 2), body_crc=False)
    s += bt.frame_bytes(bt.END_OF_STATE, bt.enc_eos(1, 0, len(state)), body_crc=False)
    s += bt.frame_bytes(bt.EOF, body_crc=False)
    mine = os.path.join(tmp, "python.bin")
    open(mine, "wb").write(s)
    r = subprocess.run([NODE, BIN, "inspect", mine, "--json"], capture_output=True, timeout=60)
    try:
        rep = json.loads(r.stdout.decode())
    except ValueError:
        rep = r.stdout.decode()[-1000:]
    out["nodeInspectsPythonRecording"] = {"exit": r.returncode, "report": rep,
                                          "stderr": r.stderr.decode()[-500:]}
    ok = (out["pythonDecodesNodeRecording"].get("ok") and out["pythonDecodesNodeRecording"].get("stateMatches")
          and r.returncode == 0)
    out["ok"] = bool(ok)
    print(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
