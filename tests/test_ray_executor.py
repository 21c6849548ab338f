"""The Ray executor end to end: a Ray cluster on loopback, 4 experiments through MCP, one node lost.

pytest's own process stays normal: the test re-executes this file under `unshare -n` (a
private network namespace with only `lo`, so all Ray traffic stays on loopback). Inside it:
a Ray head on 127.0.0.1 (no CPUs), two worker nodes on 127.0.0.2 and 127.0.0.3 (one CPU
each, their own AUTORESEARCH_HOME, so each prepares its own data), a real Lab with the Ray
executor and the MCP server over an in-memory client. The target is the template
(targets/template, numpy): what Ray adds is the same for every target, and a GPT run costs
~11 CPU-s of torch imports, export and evaluation besides its budget; each experiment raises
its STEPS so that it trains for its whole budget. Four experiments go in through the
MCP tools; the node running the first one is killed (SIGKILL of all its processes) while it
trains; that experiment must end `interrupted` and its retry complete on the other node.
Every wait is bounded and every Ray process is stopped at the end (`ray stop --force`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAD_PORT = 6390
WORKER_IPS = ("127.0.0.2", "127.0.0.3")
SCENARIO_TIMEOUT = 540
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Notice a dead node within a few seconds instead of ~30 (GCS health checks).
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def _unshare_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("this test needs util-linux `unshare` (network namespaces)")
    return [unshare, "-n"] if os.geteuid() == 0 else [unshare, "-r", "-n"]


def test_ray_cluster_loses_a_node_and_the_experiment_is_requeued(tmp_path: Path) -> None:
    import ray  # noqa: F401 - installed by make test (requirements-test.lock); fails loudly if missing

    report_path = tmp_path / "report.json"
    log_path = tmp_path / "scenario.log"
    argv = [
        *_unshare_prefix(),
        sys.executable,
        str(Path(__file__).resolve()),
        "--work",
        str(tmp_path),
        "--report",
        str(report_path),
    ]
    started = time.monotonic()
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=SCENARIO_TIMEOUT + 60,
                cwd=REPO_ROOT,
            )
        except subprocess.TimeoutExpired:
            proc = None
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-80:])
    assert proc is not None, f"the scenario did not finish in time:\n{tail}"
    assert report_path.exists(), f"the scenario wrote no report (rc {proc.returncode}):\n{tail}"
    report = json.loads(report_path.read_text())
    assert proc.returncode == 0 and not report.get("error"), f"{report.get('error')}\n{tail}"

    rows = {row["id"]: row for row in report["rows"]}
    submitted = report["submitted"]
    killed = report["killed_experiment"]
    assert len(submitted) == 4 and killed in submitted
    # 4 experiments + 1 retry row; no duplicates.
    assert len(rows) == 5, rows
    assert len({row["code_hash"] for row in rows.values()}) == 4
    assert rows[killed]["status"] == "interrupted", rows[killed]
    assert rows[killed]["attempt"] == 1
    retries = [row for row in rows.values() if row["retry_of"] is not None]
    assert len(retries) == 1, retries
    retry = retries[0]
    assert retry["retry_of"] == killed and retry["attempt"] == 2
    assert retry["code_hash"] == rows[killed]["code_hash"]
    assert retry["status"] == "ok", retry
    ok = [row for row in rows.values() if row["status"] == "ok"]
    assert len(ok) == 4, rows
    assert all(row["metric_value"] is not None and row["metric_value"] > 0 for row in ok)
    # The retry ran on the node that survived; every run ran on a worker node.
    assert retry["ray_node"] != report["killed_node"]
    assert {row["ray_node"] for row in ok} <= set(report["worker_nodes"].values())
    # The MCP history shows the same record: 4 ok and 1 interrupted.
    statuses = sorted(row["status"] for row in report["mcp_history"])
    assert statuses == ["interrupted", "ok", "ok", "ok", "ok"], report["mcp_history"]
    # Progress came from the worker through the board: the training phase (seconds long) is seen
    # by the poll. The evaluating phase lasts about a second on a prewarmed evaluator, so a poll
    # on a loaded machine may miss it: where it did, every ok run's evaluation is on record.
    assert "training" in report["phases_seen"], report["phases_seen"]
    assert "evaluating" in report["phases_seen"] or all(
        (row["eval_seconds"] or 0) > 0 for row in ok
    ), (report["phases_seen"], ok)
    # Slots followed the cluster: 2 with both workers, 1 after the loss.
    assert report["slots_before"] == 2 and report["slots_after"] == 1
    assert time.monotonic() - started < SCENARIO_TIMEOUT + 60


# ---------------------------------------------------------------- the scenario (inside unshare -n)


def _ray_bin() -> str:
    return str(Path(sys.executable).parent / "ray")


def _run(argv: list[str], env: dict[str, str], timeout: float) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, env=env, timeout=timeout, check=True)


def _session_pids(sid: int) -> list[int]:
    """Every process in session `sid` (a worker node started with setsid: its raylet and workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid:  # state ppid pgrp session
                pids.append(int(entry.name))
    return pids


def _kill_node(proc: subprocess.Popen[bytes]) -> None:
    for pid in _session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def scenario(work: Path, report_path: Path) -> int:
    report: dict[str, Any] = {"error": None}
    env = {**os.environ, **RAY_ENV}
    os.environ.update(RAY_ENV)
    workers: dict[str, subprocess.Popen[bytes]] = {}
    # Ray's socket paths must stay under 107 bytes: a short folder for its temp dirs.
    ray_tmp = Path(tempfile.mkdtemp(prefix="ar-ray-", dir="/tmp"))
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=30)
        common = ["--disable-usage-stats", "--object-store-memory", "80000000"]
        _run(
            [
                _ray_bin(),
                "start",
                "--head",
                "--port",
                str(HEAD_PORT),
                "--num-cpus",
                "0",
                "--node-ip-address",
                "127.0.0.1",
                "--include-dashboard=false",
                "--temp-dir",
                str(ray_tmp / "h"),
                *common,
            ],
            env,
            120,
        )
        for ip in WORKER_IPS:
            home = work / f"worker-{ip}"
            home.mkdir()
            log = (work / f"worker-{ip}.log").open("wb")
            workers[ip] = subprocess.Popen(
                [
                    _ray_bin(),
                    "start",
                    "--address",
                    f"127.0.0.1:{HEAD_PORT}",
                    "--num-cpus",
                    "1",
                    "--node-ip-address",
                    ip,
                    "--temp-dir",
                    str(ray_tmp / ip.rsplit(".", 1)[-1]),
                    "--block",
                    *common,
                ],
                env={**env, "AUTORESEARCH_HOME": str(home)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one session per node: killing it kills the node
            )
        import anyio
        import ray

        ray.init(address=f"127.0.0.1:{HEAD_PORT}", log_to_driver=False)
        deadline = time.monotonic() + 120
        while True:
            alive = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")]
            if len(alive) == 2:
                break
            assert time.monotonic() < deadline, f"worker nodes did not join: {ray.nodes()}"
            time.sleep(0.5)
        report["worker_nodes"] = {n["NodeManagerAddress"]: n["NodeID"] for n in alive}
        anyio.run(_drive, work, report, workers)
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        report["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        for proc in workers.values():
            _kill_node(proc)
        with contextlib.suppress(Exception):
            subprocess.run(
                [_ray_bin(), "stop", "--force"],
                env=env,
                timeout=60,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        report_path.write_text(json.dumps(report, indent=2, default=str))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return 0 if report["error"] is None else 1


async def _drive(
    work: Path, report: dict[str, Any], workers: dict[str, subprocess.Popen[bytes]]
) -> None:
    import anyio
    import ray
    from mcp import Client
    from support import TEMPLATE_TARGET  # tests/ is on sys.path: pytest's and this script's

    from sandbox.target import load_target
    from server.app import build_server
    from server.lab import Lab, LabSettings
    from server.ray_executor import RayExecutor
    from server.targets import run_prepare

    home = work / "server"
    home.mkdir()
    assert run_prepare(load_target(TEMPLATE_TARGET), home / "data", [], quiet=True) == 0
    lab = Lab(
        LabSettings(
            home=home,
            target_file=TEMPLATE_TARGET,
            device="cpu",
            budget_seconds=4,
            budget_kind="cpu",  # robust to the neighbours on a shared CI machine
            eval_windows=2,
            eval_timeout_seconds=120,
            max_live_per_agent=4,
            executor="ray",
            ray_address=f"127.0.0.1:{HEAD_PORT}",
        )
    )
    executor = lab.executor
    assert isinstance(executor, RayExecutor)
    try:
        report["slots_before"] = len(lab.scheduler.slots())
        baseline = lab.baseline_files["train.py"]
        submitted = []
        async with Client(build_server(lab, default_agent="ray-agent")) as client:
            for n in range(4):
                # Each trains until its budget (the kill below must find one training), and each
                # has a code hash of its own.
                code = baseline.replace("STEPS = 500 ", f"STEPS = 10**9 + {n} ", 1)
                assert code != baseline
                result = await client.call_tool("write_file", {"path": "train.py", "content": code})
                assert not result.is_error, result
                result = await client.call_tool(
                    "run_experiment", {"description": f"ray variant {n}", "wait": False}
                )
                assert not result.is_error, result
                submitted.append(int(result.structured_content["id"]))
            report["submitted"] = submitted
            phases: set[str] = set()
            # Wait (bounded) for any of them to be seen training on a worker, then kill that node.
            # Any, not the first: on a loaded CI machine the poll once never saw the first run
            # train before it ended (the later ones are as good a victim).
            target, node = await _first_seen_training(lab, executor, submitted, phases)
            by_id = {v: k for k, v in report["worker_nodes"].items()}
            report["killed_experiment"], report["killed_node"] = target, node
            print(f"killing node {by_id[node]} ({node}) running #{target}", flush=True)
            _kill_node(workers[by_id[node]])
            # Bounded: all 4 experiments (and the retry) reach a final status.
            with anyio.fail_after(300):
                while True:
                    # Every running run (the retry too): a prewarmed evaluation lasts ~1 s.
                    for eid in {*submitted, *lab.scheduler.running()}:
                        live = lab.scheduler.progress(eid)
                        if live:
                            phases.add(live.phase)
                    rows = lab.store.list_experiments(order="oldest", limit=100)
                    if len(rows) >= 5 and all(
                        r["status"] not in ("queued", "running") for r in rows
                    ):
                        break
                    await anyio.sleep(0.1)
            report["phases_seen"] = sorted(phases)
            deadline = time.monotonic() + 60
            while len(lab.scheduler.slots()) != 1 and time.monotonic() < deadline:
                await anyio.sleep(1)
            report["slots_after"] = len(lab.scheduler.slots())
            result = await client.call_tool("get_history", {"scope": "all", "limit": 20})
            assert not result.is_error, result
            report["mcp_history"] = result.structured_content["rows"]
        report["rows"] = [
            {
                "id": r["id"],
                "status": r["status"],
                "attempt": r.get("attempt") or 1,
                "retry_of": r.get("retry_of"),
                "code_hash": r["code_hash"],
                "metric_value": r.get("metric_value"),
                "eval_seconds": r.get("eval_seconds"),
                "failure_reason": r.get("failure_reason"),
                "ray_node": (r.get("metrics") or {}).get("ray_node"),
            }
            for r in lab.store.list_experiments(order="oldest", limit=100)
        ]
        print(json.dumps(report["rows"], indent=1), flush=True)
    finally:
        lab.close()
        executor.close()
        del ray


async def _first_seen_training(
    lab: Any, executor: Any, submitted: list[int], phases: set[str]
) -> tuple[int, str]:
    """The first experiment seen training (a second of its budget used) on a worker node, and that
    node; fails with every row's status if none was seen before all of them ended, or in 240 s."""
    import anyio

    deadline = time.monotonic() + 240
    while True:
        for eid in submitted:
            live = lab.scheduler.progress(eid)
            if live is None:
                continue
            phases.add(live.phase)
            node = executor.node_of(eid)
            if live.phase == "training" and live.done >= 1 and node:
                return eid, node
        rows = lab.store.list_experiments(order="oldest", limit=100)
        ended = [r for r in rows if r["status"] not in ("queued", "running")]
        if len(ended) >= len(submitted) or time.monotonic() > deadline:
            summary = [(r["id"], r["status"], r.get("failure_reason")) for r in rows]
            raise AssertionError(
                f"no experiment was seen training on a worker node before "
                f"{'they all ended' if len(ended) >= len(submitted) else 'the 240 s deadline'}: "
                f"rows {summary}, phases seen {sorted(phases)}"
            )
        await anyio.sleep(0.2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args()
    sys.exit(scenario(args.work, args.report))
