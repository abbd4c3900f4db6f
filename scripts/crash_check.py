#!/usr/bin/env python3
"""Kill -9 check of DESIGN.md invariant 4: an acknowledged push survives a crash.

16 client threads push 1 to 5 ops at a time to one user while the server is killed
with SIGKILL at random moments and restarted, KILLS times. A push that got no
answer (the server died under it) is retried with the same op ids and content
until it is answered, as a real client does. Then the log is read back and checked:

- seqs are exactly 1..head, with no gap and no repeat;
- every op id is stored exactly once, at the seq its (first) answer gave it;
- every op of a retried push that had committed before the kill is answered
  `duplicate` with its original seq; every pushed op is stored.

    cargo build && python3 scripts/crash_check.py --kills 50
    python3 scripts/crash_check.py --kills 50 --db postgres://postgres@127.0.0.1:5432/somedb

Exits non-zero, saying why, if an invariant is broken. `.ci/run` runs it on both
backends with the debug binary.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def uuid7():
    ms = int(time.time() * 1000)
    rand = random.getrandbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


class Server:
    def __init__(self, binary, data, port, db):
        # Rate limits off: 16 threads push to one user as fast as the server answers.
        self.args = [binary, "--data-dir", data, "--listen", f"127.0.0.1:{port}", "--rate-limits", "false"] + (
            ["--db", db] if db else [])
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args + ["serve"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 30
        for line in self.proc.stdout:
            if "listening" in line:
                return
            if time.time() > deadline:
                break
        raise SystemExit("the server did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()


def request(url, token, body=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "opsync"))
    parser.add_argument("--db", default=os.environ.get("DB"))
    parser.add_argument("--port", type=int, default=18300 + random.randint(0, 600))
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    data = tempfile.mkdtemp(prefix="opsync-crash-")
    server = Server(args.binary, data, args.port, args.db)
    base = f"http://127.0.0.1:{args.port}"
    token = subprocess.run([args.binary, "--data-dir", data] + (["--db", args.db] if args.db else [])
                           + ["token", "issue", "--user", "crash"], capture_output=True, text=True, check=True).stdout.strip()

    lock = threading.Lock()
    first_answer = {}   # op id -> seq from the first answer that named it
    pushed = set()      # every op id a client tried to push
    retried_duplicates = []  # (op id, seq, status) from answers to retries
    stop = threading.Event()
    errors = []

    def pusher():
        while not stop.is_set():
            ops = [{"id": uuid7(), "payload": "eA=="} for _ in range(random.randint(1, 5))]
            with lock:
                pushed.update(op["id"] for op in ops)
            attempt = 0
            while True:
                try:
                    answer = request(f"{base}/v1/ops", token, {"ops": ops})
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    attempt += 1
                    time.sleep(0.05)
                    continue
                with lock:
                    for result in answer["results"]:
                        if attempt > 0:
                            retried_duplicates.append((result["id"], result["seq"], result["status"]))
                        first_answer.setdefault(result["id"], result["seq"])
                        if first_answer[result["id"]] != result["seq"]:
                            errors.append(f"op {result['id']} answered with seq {first_answer[result['id']]} and later {result['seq']}")
                break

    server.start()
    threads = [threading.Thread(target=pusher) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    started = time.time()
    for _ in range(args.kills):
        time.sleep(random.uniform(0.1, 0.5))
        server.kill()
        server.start()
    stop.set()
    for thread in threads:
        thread.join()

    log, since = [], 0
    while True:
        page = request(f"{base}/v1/ops?since={since}&limit=10000", token)
        log.extend(page["ops"])
        if not page["has_more"]:
            head = page["head"]
            break
        since = page["ops"][-1]["seq"]
    server.stop()
    shutil.rmtree(data, ignore_errors=True)

    seqs = [op["seq"] for op in log]
    if seqs != list(range(1, head + 1)):
        errors.append(f"seqs are not 1..{head} without gaps or repeats")
    stored = {}
    for op in log:
        if op["id"] in stored:
            errors.append(f"op {op['id']} stored twice")
        stored[op["id"]] = op["seq"]
    for op_id, seq in first_answer.items():
        if stored.get(op_id) != seq:
            errors.append(f"acknowledged op {op_id} (seq {seq}) is {'at ' + str(stored.get(op_id)) if op_id in stored else 'missing'}")
    missing = pushed - set(stored)
    if missing:
        errors.append(f"{len(missing)} pushed ops were never stored")
    duplicates = sum(1 for _, _, status in retried_duplicates if status == "duplicate")
    backend = "postgres" if args.db else "sqlite"
    print(f"crash check ({backend}): {args.kills} kills in {time.time() - started:.1f}s, {len(log)} ops, "
          f"{len(retried_duplicates)} retried ops answered ({duplicates} as duplicate of a commit the kill hid)")
    if errors:
        for error in errors[:20]:
            print("BROKEN:", error, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
