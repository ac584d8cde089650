"""Zoo runs on a Ray cluster: one task per model, scheduled by Ray on its CPUs (and memory, if asked).

`ray.init()` with no address starts a local cluster on this machine; `address` joins an existing one
("auto", or "ray://host:10001"). Ray re-runs a task whose worker process died (killed by the OS for
memory, or a lost node) once; a model whose worker dies again gets an error row. Rows come back in the
order models finish, exactly as the local process pool gives them, so results.jsonl, --resume and the
summary do not depend on the executor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from fxprune.runners.zoo import ZooEntry, died_row

RETRIES = 1  # re-runs of a model whose worker process died
CONNECT_SECONDS = 10.0  # how long an --address may take to accept a connection before the run gives up


def check_address(address: str | None, timeout: float = CONNECT_SECONDS) -> None:
    """Fail in one line where `address` (host:port, or ray://host:port) accepts no TCP connection within
    `timeout`: Ray itself retries such an address for a minute or more, logging all the while."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address}: write host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else e.strerror or type(e).__name__
        raise ValueError(f"--address {address}: no Ray cluster answers there ({why} within {timeout:g} s); start "
                         "one with `ray start --head`, or leave --address out to run a local one") from None


def ray_rows(todo: list[ZooEntry], work: Callable[[ZooEntry], dict], pipeline: str, *, address: str | None = None,
             memory_gb: float | None = None):
    """`work` on each entry as a Ray task (1 CPU, `memory_gb` of Ray's memory resource): (row, ids of
    the models queued or running, as many as the cluster has CPUs) as models finish."""
    try:
        import ray
    except ImportError as e:
        raise ValueError("--executor ray needs Ray: pip install 'fxprune[ray]'") from e
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        options = {"num_cpus": 1, "max_retries": RETRIES}
        if memory_gb:
            options["memory"] = int(memory_gb * 2**30)
        task = ray.remote(**options)(lambda entry: work(entry))  # Ray takes functions, not partials
        pending = {task.remote(e): e for e in todo}
        width = max(1, int(ray.cluster_resources().get("CPU", 1)))
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            entry = pending.pop(ref)
            try:
                row = ray.get(ref)
            except ray.exceptions.WorkerCrashedError:
                row = died_row(entry, pipeline, f"its Ray worker process died {RETRIES + 1} times (killed by the "
                                                "OS, most often for lack of memory)")
            yield row, [e.id for e in list(pending.values())[:width]]
    finally:
        if started:
            ray.shutdown()
