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

With `--nodes 2` (Postgres only), two servers share the database: the pushers are
spread over both, a push that loses its node is retried on the other one (as a
client behind a load balancer would), only the first node is killed, and a
long-polling reader on each node tails the log, checking that it never sees seq
n+1 before n (every page continues exactly where the last one ended) and that
it ends with the whole log.

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

from logcheck import log_errors

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
    parser.add_argument("--nodes", type=int, default=1, help="servers on one Postgres database (the first is killed)")
    args = parser.parse_args()
    if args.nodes > 1 and not args.db:
        raise SystemExit("--nodes needs --db postgres://…: SQLite serves one node")

    data = tempfile.mkdtemp(prefix="opsync-crash-")
    servers = [Server(args.binary, data, args.port + i, args.db) for i in range(args.nodes)]
    server = servers[0]
    bases = [f"http://127.0.0.1:{args.port + i}" for i in range(args.nodes)]
    base = bases[-1]  # a node that is never killed when there are several
    token = subprocess.run([args.binary, "--data-dir", data] + (["--db", args.db] if args.db else [])
                           + ["token", "issue", "--user", "crash"], capture_output=True, text=True, check=True).stdout.strip()

    lock = threading.Lock()
    first_answer = {}   # op id -> seq from the first answer that named it
    pushed = set()      # every op id a client tried to push
    retried_duplicates = []  # (op id, seq, status) from answers to retries
    stop = threading.Event()
    errors = []

    def pusher(node):
        while not stop.is_set():
            ops = [{"id": uuid7(), "payload": "eA=="} for _ in range(random.randint(1, 5))]
            with lock:
                pushed.update(op["id"] for op in ops)
            attempt = 0
            while True:
                try:
                    answer = request(f"{bases[(node + attempt) % len(bases)]}/v1/ops", token, {"ops": ops})
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    attempt += 1  # the next try goes to the next node, if there are several
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

    tailed = [[] for _ in bases]  # the seqs each node's tailing reader saw, in order

    def tailer(node):
        since = 0
        while True:
            try:
                page = request(f"{bases[node]}/v1/ops?since={since}&limit=500&wait=1", token)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.05)  # its node was killed: resume from the same seq
                continue
            seqs = [op["seq"] for op in page["ops"]]
            if seqs != list(range(since + 1, since + 1 + len(seqs))):
                with lock:
                    errors.append(f"node {node}'s reader asked for ops after {since} and got seqs {seqs[:5]}…")
                return
            tailed[node].extend(seqs)
            if seqs:
                since = seqs[-1]
            elif stop.is_set() and tail_until.is_set():
                return

    tail_until = threading.Event()
    for s in servers:
        s.start()
    threads = [threading.Thread(target=pusher, args=(i % len(bases),)) for i in range(args.threads)]
    tailers = [threading.Thread(target=tailer, args=(i,)) for i in range(len(bases))] if args.nodes > 1 else []
    for thread in threads + tailers:
        thread.start()
    started = time.time()
    for _ in range(args.kills):
        time.sleep(random.uniform(0.1, 0.5))
        server.kill()
        server.start()
    stop.set()
    for thread in threads:
        thread.join()
    tail_until.set()
    for thread in tailers:
        thread.join(timeout=60)

    log, since = [], 0
    while True:
        page = request(f"{base}/v1/ops?since={since}&limit=10000", token)
        log.extend(page["ops"])
        if not page["has_more"]:
            head = page["head"]
            break
        since = page["ops"][-1]["seq"]
    for s in servers:
        s.stop()
    shutil.rmtree(data, ignore_errors=True)

    errors.extend(log_errors(log, head, first_answer, pushed))
    for node, seen in enumerate(tailed if tailers else []):
        if seen != list(range(1, head + 1)):
            errors.append(f"node {node}'s tailing reader saw {len(seen)} seqs, not exactly 1..{head} in order")
    duplicates = sum(1 for _, _, status in retried_duplicates if status == "duplicate")
    backend = "postgres" if args.db else "sqlite"
    if args.nodes > 1:
        backend += f", {args.nodes} nodes, readers tailing each"
    print(f"crash check ({backend}): {args.kills} kills in {time.time() - started:.1f}s, {len(log)} ops, "
          f"{len(retried_duplicates)} retried ops answered ({duplicates} as duplicate of a commit the kill hid)")
    if errors:
        for error in errors[:20]:
            print("BROKEN:", error, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
