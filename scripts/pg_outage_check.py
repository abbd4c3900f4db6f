#!/usr/bin/env python3
"""Postgres outage check: the database dies under load, opsync says so fast and heals itself.

A private Postgres cluster (made with pg_createcluster on a free port, so the
machine's main cluster and the tests using it are untouched) serves one opsync
node while 8 client threads push 1 to 5 ops at a time. CYCLES times, the cluster
is stopped with `pg_ctlcluster … stop -m immediate` (a crash: no checkpoint, every
backend killed), left down for a few seconds, and started again. Checked:

- while the database is down, every push, pull and `GET /readyz` is answered
  within 2 s, with 503 and the code `unavailable` (no 30 s pool timeout, no 500),
  or served after all if the database came back within those 2 s;
- after the database is back, pushes succeed again within 5 s, with no restart
  of opsync;
- nothing acknowledged is lost: seqs are exactly 1..head, every acknowledged op is
  stored once at the seq its answer gave, and every push that failed during the
  outage, retried with the same op ids, is stored exactly once.

    cargo build && python3 scripts/pg_outage_check.py --cycles 3

Needs root (or the postgres user) for pg_createcluster. Exits non-zero, saying
why, if a check fails. `.ci/run` runs it with the debug binary.
"""
import argparse
import json
import os
import random
import shutil
import socket
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
CLUSTER = "opsync_outage"
ANSWER_WITHIN = 2.0   # seconds: a request during the outage must be answered this fast
RECOVER_WITHIN = 5.0  # seconds after the database is back


def uuid7():
    ms = int(time.time() * 1000)
    rand = random.getrandbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args):
    subprocess.run(list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


class Cluster:
    """A throw-away Postgres cluster managed with Debian's pg_*cluster tools."""

    def __init__(self, port):
        self.version = sorted(os.listdir("/etc/postgresql"))[-1]
        self.port = port
        self.url = f"postgres://postgres@127.0.0.1:{port}/postgres"

    def create(self):
        self.drop()  # a leftover of an interrupted run
        run("pg_createcluster", self.version, CLUSTER, "-p", str(self.port), "--",
            "--auth=trust", "--no-sync")
        conf = f"/etc/postgresql/{self.version}/{CLUSTER}/postgresql.conf"
        with open(conf, "a") as f:
            f.write("\nlisten_addresses = '127.0.0.1'\nfsync = on\n")
        self.start()

    def start(self):
        run("pg_ctlcluster", "--skip-systemctl-redirect", self.version, CLUSTER, "start")

    def crash(self):
        run("pg_ctlcluster", "--skip-systemctl-redirect", self.version, CLUSTER, "stop", "-m", "immediate")

    def drop(self):
        subprocess.run(["pg_dropcluster", "--stop", self.version, CLUSTER],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def request(url, token=None, body=None, timeout=15):
    """(status, decoded body or None, seconds taken); never raises for HTTP errors."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET", headers=headers)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.load(response), time.monotonic() - started
    except urllib.error.HTTPError as e:
        try:
            decoded = json.load(e)
        except ValueError:
            decoded = None
        return e.code, decoded, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--down", type=float, default=5.0, help="seconds the database stays down")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "opsync"))
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    cluster = Cluster(free_port())
    data = tempfile.mkdtemp(prefix="opsync-outage-")
    server = None
    try:
        cluster.create()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        db = ["--data-dir", data, "--db", cluster.url]
        token = subprocess.run([args.binary, *db, "token", "issue", "--user", "outage"],
                               capture_output=True, text=True, check=True).stdout.strip()
        # Rate limits off: 8 threads push as fast as they can to one user.
        server = subprocess.Popen([args.binary, *db, "--listen", f"127.0.0.1:{port}", "--rate-limits", "false", "serve"],
                                  stdout=subprocess.PIPE, stderr=open(os.path.join(data, "serve.log"), "w"), text=True)
        for line in server.stdout:
            if "listening" in line:
                break
        else:
            raise SystemExit("the server did not start")

        lock = threading.Lock()
        acked = {}          # op id -> seq
        pushed = set()
        outcomes = []       # (sent at, seconds, status, code)
        errors = []
        stop = threading.Event()

        def pusher():
            while not stop.is_set():
                ops = [{"id": uuid7(), "payload": "eA=="} for _ in range(random.randint(1, 5))]
                with lock:
                    pushed.update(op["id"] for op in ops)
                while True:  # the same ops until they are answered 200, as a real client retries
                    sent = time.monotonic()
                    try:
                        status, answer, took = request(f"{base}/v1/ops", token, {"ops": ops})
                    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                        status, answer, took = 0, {"code": f"no answer: {e}"}, time.monotonic() - sent
                    code = (answer or {}).get("error") if status != 200 else None
                    with lock:
                        outcomes.append((sent, took, status, code))
                        if status == 200:
                            for result in answer["results"]:
                                previous = acked.setdefault(result["id"], result["seq"])
                                if previous != result["seq"]:
                                    errors.append(f"op {result['id']} answered seq {previous}, later {result['seq']}")
                    if status == 200:
                        break
                    time.sleep(0.1)

        reads = []  # (sent at, seconds, status, code) of pulls

        def reader():
            since = 0
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status, answer, took = request(f"{base}/v1/ops?since={since}&limit=1000", token)
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                    status, answer, took = 0, {"error": f"no answer: {e}"}, time.monotonic() - sent
                with lock:
                    reads.append((sent, took, status, (answer or {}).get("error") if status != 200 else None))
                if status == 200 and answer["ops"]:
                    since = answer["ops"][-1]["seq"]
                time.sleep(0.02)

        threads = [threading.Thread(target=pusher, daemon=True) for _ in range(args.threads)]
        threads += [threading.Thread(target=reader, daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()

        report = []
        for cycle in range(1, args.cycles + 1):
            time.sleep(1.5)
            cluster.crash()
            down_from = time.monotonic()
            # Probe readiness while the database is down.
            ready_probes = []
            while time.monotonic() - down_from < args.down:
                status, answer, took = request(f"{base}/readyz")
                ready_probes.append((status, took))
                time.sleep(0.25)
            restarting = time.monotonic()
            cluster.start()
            back = time.monotonic()
            recovered = None
            while time.monotonic() - back < 30:
                with lock:
                    ok_after = [sent + took for sent, took, status, _ in outcomes if status == 200 and sent >= back]
                if ok_after:
                    recovered = min(ok_after) - back
                    break
                time.sleep(0.05)
            with lock:
                # Requests sent while the database was certainly down (after the
                # crash command returned, before the start command ran).
                during = [o for o in outcomes if down_from <= o[0] < restarting]
                reads_during = [o for o in reads if down_from <= o[0] < restarting]
            slow = [o for o in during if o[1] > ANSWER_WITHIN]
            wrong = [o for o in during if not (o[2] == 503 and o[3] == "unavailable")
                     and not (o[2] == 200 and o[0] + o[1] >= restarting)]
            slow_reads = [o for o in reads_during if o[1] > ANSWER_WITHIN]
            # A pull may also be served once the database is back, if that is within the 2 s.
            wrong_reads = [o for o in reads_during if not (o[2] == 503 and o[3] == "unavailable")
                           and not (o[2] == 200 and o[0] + o[1] >= restarting)]
            if not reads_during:
                errors.append(f"cycle {cycle}: no pull was made while the database was down")
            if slow_reads or wrong_reads:
                errors.append(f"cycle {cycle}: pulls while down: {len(slow_reads)} slower than {ANSWER_WITHIN}s "
                              f"(worst {max(o[1] for o in reads_during):.1f}s), other answers than 503 unavailable: "
                              f"{sorted(set((o[2], o[3]) for o in wrong_reads))}")
            bad_ready = [p for p in ready_probes[1:] if p[0] != 503 or p[1] > ANSWER_WITHIN]
            worst = max((o[1] for o in during), default=0.0)
            slowest = max([worst] + [o[1] for o in reads_during])
            report.append(f"cycle {cycle}: {len(during)} pushes and {len(reads_during)} pulls while down, "
                          f"slowest answer {slowest * 1000:.0f} ms, "
                          f"pushes succeed again {recovered * 1000:.0f} ms after the database is back"
                          if recovered is not None else f"cycle {cycle}: never recovered")
            if not during:
                errors.append(f"cycle {cycle}: no push was made while the database was down")
            if slow:
                errors.append(f"cycle {cycle}: {len(slow)} pushes took longer than {ANSWER_WITHIN}s (worst {worst:.1f}s)")
            if wrong:
                errors.append(f"cycle {cycle}: answers other than 503 unavailable while down: "
                              f"{sorted(set((o[2], o[3]) for o in wrong))}")
            if bad_ready:
                errors.append(f"cycle {cycle}: /readyz while down answered {bad_ready[:3]}")
            if recovered is None or recovered > RECOVER_WITHIN:
                errors.append(f"cycle {cycle}: pushes did not succeed within {RECOVER_WITHIN}s of the database's return")

        stop.set()
        for thread in threads:
            thread.join(timeout=60)

        log, since = [], 0
        while True:
            status, page, _ = request(f"{base}/v1/ops?since={since}&limit=10000", token)
            if status != 200:
                raise SystemExit(f"the final pull failed: {status} {page}")
            log.extend(page["ops"])
            if not page["has_more"]:
                head = page["head"]
                break
            since = page["ops"][-1]["seq"]

        errors.extend(log_errors(log, head, acked, pushed))

        refused = sum(1 for o in outcomes if o[2] == 503)
        for line in report:
            print("pg outage check:", line)
        print(f"pg outage check: {args.cycles} crashes, {len(log)} ops stored, {len(acked)} acknowledged, "
              f"{refused} pushes answered 503 and retried")
        if errors:
            for error in errors[:20]:
                print("BROKEN:", error, file=sys.stderr)
            with open(os.path.join(data, "serve.log")) as log_file:
                tail = log_file.readlines()[-15:]
            print("server log, last lines:", *tail, sep="\n  ", file=sys.stderr)
            sys.exit(1)
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        cluster.drop()
        if not os.environ.get("KEEP_OUTAGE_DATA"):
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
