"""What crash_check.py and pg_outage_check.py both check of a log read back after the run."""


def log_errors(log, head, acked, pushed):
    """The broken promises of `log` (every op of a full pull, in order) whose head is `head`:
    seqs must be exactly 1..head (DESIGN.md invariant 1), each op id stored once (2), every
    acknowledged op (`acked`: id -> seq from its answer) at that seq (4), and every op a
    client tried to push (`pushed`, retried until answered) stored."""
    errors = []
    if [op["seq"] for op in log] != list(range(1, head + 1)):
        errors.append(f"seqs are not 1..{head} without gaps or repeats")
    stored = {}
    for op in log:
        if op["id"] in stored:
            errors.append(f"op {op['id']} stored twice")
        stored[op["id"]] = op["seq"]
    for op_id, seq in acked.items():
        if stored.get(op_id) != seq:
            errors.append(f"acknowledged op {op_id} (seq {seq}) is {stored.get(op_id, 'missing')}")
    missing = pushed - set(stored)
    if missing:
        errors.append(f"{len(missing)} pushed ops were never stored")
    return errors
