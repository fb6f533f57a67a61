#!/usr/bin/env python3
"""What storing one outcome record costs nats-server, three ways.

The must-keep "an event is acked only after its outcome record is stored"
costs a stored message per event. This measures nats-server's CPU per
record on a stream shaped like evoke's invocation records (file storage,
one message per subject), storing 20 000 records each way, twice:

  one ack each   every record published with a reply subject (as evoke does)
  atomic batch   records in atomic batches (nats-server 2.12+, allow_atomic),
                 one ack per batch
  no ack         records published without a reply: nothing acknowledged,
                 the floor any client-side batching of acks could reach

    pip install nats-py
    python3 benches/record_cost.py [records] [batch]

It starts its own nats-server (EVOKE_NATS_SERVER, else `nats-server` on
PATH) on a free port. The CPU figures are nats-server's (utime + stime
from /proc, Linux); the rates include this Python client's own slowness.
"""
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import nats

RECORDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
BATCH = int(sys.argv[2]) if len(sys.argv) > 2 else 256
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(port, pid):
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    config = dict(name="KV_records", subjects=["$KV.records.>"], max_msgs_per_subject=1,
                  storage="file", allow_rollup_hdrs=True, deny_delete=True, allow_direct=True,
                  discard="new", num_replicas=1, allow_atomic=True)
    reply = await nc.request("$JS.API.STREAM.CREATE.KV_records", json.dumps(config).encode(), timeout=5)
    if b'"error"' in reply.data:
        sys.exit(f"cannot create the stream: {reply.data.decode()}")
    record = json.dumps({"id": uuid.uuid4().hex, "function": "noop", "status": "succeeded",
                         "attempts": [{"number": 1, "started_at": "2026-12-07T18:00:00.000000Z",
                                       "duration_ms": 0.05}]}).encode()
    keys = [uuid.uuid4().hex for _ in range(RECORDS)]
    state = {"acks": 0, "want": 0, "errors": []}
    done = asyncio.Event()

    async def on_ack(msg):
        if b'"error"' in msg.data:
            state["errors"].append(msg.data.decode())
        state["acks"] += 1
        if state["acks"] == state["want"]:
            done.set()

    await nc.subscribe("_INBOX.records.*", cb=on_ack)

    def expect(want):
        state["acks"], state["want"] = 0, want
        done.clear()

    async def one_ack_each(prefix):
        expect(RECORDS)
        for i, key in enumerate(keys):
            await nc.publish(f"$KV.records.{prefix}{key}", record, reply=f"_INBOX.records.{i}")
            if i - state["acks"] > 512:
                await asyncio.sleep(0)
        await done.wait()

    async def atomic_batches(prefix):
        batches = (RECORDS + BATCH - 1) // BATCH
        expect(batches)
        for b in range(batches):
            batch_id = uuid.uuid4().hex
            chunk = keys[b * BATCH:(b + 1) * BATCH]
            for j, key in enumerate(chunk):
                headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(j + 1)}
                last = j == len(chunk) - 1
                if last:
                    headers["Nats-Batch-Commit"] = "1"
                await nc.publish(f"$KV.records.{prefix}{key}", record, headers=headers,
                                 reply=f"_INBOX.records.{b}" if last else "")
            while b - state["acks"] > 20:  # the server takes 50 batches in flight per stream
                await asyncio.sleep(0.001)
        await done.wait()

    async def no_ack(prefix):
        for key in keys:
            await nc.publish(f"$KV.records.{prefix}{key}", record)
        await nc.flush()
        while True:
            info = json.loads((await nc.request("$JS.API.STREAM.INFO.KV_records", b"", timeout=5)).data)
            if info["state"]["messages"] >= stored + RECORDS:
                break
            await asyncio.sleep(0.01)

    stored = 0
    print(f"{RECORDS} records a run, nats-server CPU per stored record")
    for run in range(2):
        for name, way in (("one ack each", one_ack_each), (f"atomic batches of {BATCH}", atomic_batches),
                          ("no ack", no_ack)):
            prefix = f"{run}{name[0]}."
            before, start = cpu_seconds(pid), time.time()
            await way(prefix)
            elapsed, used = time.time() - start, cpu_seconds(pid) - before
            stored += RECORDS
            print(f"  {name:24} {RECORDS / elapsed:8.0f} records/s   nats-server {1e6 * used / RECORDS:5.1f} us/record"
                  + (f"   errors: {state['errors'][:1]}" if state["errors"] else ""))
    await nc.close()


def main():
    server = os.environ.get("EVOKE_NATS_SERVER") or shutil.which("nats-server")
    if not server:
        sys.exit("no nats-server: set EVOKE_NATS_SERVER or put nats-server on PATH (scripts/setup installs it)")
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        proc = subprocess.Popen([server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            asyncio.run(measure(port, proc.pid))
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
