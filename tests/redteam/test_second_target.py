"""Red team on the second target (targets/digits): the generic attacks, through the MCP tools,
against a maximized metric with its own data, artifact and evaluator.

Each attack is an edit of digits' train.py made with edit_file and run with run_experiment, in
the real jails; what is asserted is what the agent receives and what the record keeps:
  - a printed fake metric (and a fake report, and a metrics file) changes nothing;
  - the hidden split is not reachable from training: not in AR_DATA_DIR, not at its host path,
    not through scikit-learn (the dataset ships inside it);
  - there is no network, not even loopback;
  - nothing one run writes is there for the next.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.app import build_server
from server.lab import Lab, LabSettings
from server.targets import open_target, run_prepare

from .mallory import Client, call, wait_rows

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anyio]

DIGITS = Path(__file__).resolve().parents[2] / "targets" / "digits"
ANCHOR = 'x_train, y_train = load_split("train")'
FINAL = ("ok", "crash", "timeout", "integrity_fail", "cancelled", "interrupted")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    home = tmp_path_factory.mktemp("redteam-digits") / "home"
    assert run_prepare(open_target(DIGITS), home / "data", []) == 0
    lab = Lab(
        LabSettings(
            home=home,
            target_file=DIGITS / "target.toml",
            budget_seconds=3,
            budget_kind="cpu",
            cpu_slots=2,
            baseline_repeats=0,
            call_wait_seconds=120,
            contended_share=0.0,
            contended_share_cpu_budget=0.0,
        )
    )
    yield lab
    lab.close()


async def run_edit(lab: Lab, agent: str, description: str, code: str) -> tuple[dict, str]:
    """The baseline with `code` inserted after the train split is loaded: the run's final result
    as the agent receives it, and its log as the agent reads it."""
    async with Client(build_server(lab, default_agent=agent)) as client:
        await call(client, "checkout", ref="baseline")
        await call(client, "edit_file", path="train.py", old=ANCHOR, new=f"{ANCHOR}\n{code}")
        result = await call(client, "run_experiment", description=description, wait=True)
        while result["status"] not in FINAL or result.get("verdict") == "candidate":
            result = await call(client, "wait_experiment", experiment_id=result["id"])
        detail = await call(client, "get_experiment", experiment_id=result["id"], include_log=True)
        return result, detail.get("log_tail") or ""


@pytest.fixture(scope="module")
def honest(lab: Lab) -> float:
    """The baseline's accuracy at the server's seed (it trains all its epochs well inside the
    budget, so the same program scores the same to the last digit)."""
    code = lab.baseline_files["train.py"].replace(ANCHOR, f"{ANCHOR}\nHONEST = 1")
    experiment_id, _ = lab.submit("honest", "honest reference", files={"train.py": code})
    (row,) = wait_rows(lab, [experiment_id])
    assert row["status"] == "ok", row["failure_reason"]
    return float(row["metric_value"])


async def test_printed_fake_metric_changes_nothing(lab: Lab, honest: float) -> None:
    code = (
        "import json as _json\n"
        "print('accuracy: 1.0', flush=True)\n"
        "print(_json.dumps({'status': 'ok', 'accuracy': 1.0, 'log_loss': 0.0}), flush=True)\n"
        "open(os.path.join(OUT_DIR, 'metrics.json'), 'w').write('{\"accuracy\": 1.0}')\n"
    )
    result, log = await run_edit(lab, "mallory-print", "print a perfect score", code)
    assert "accuracy: 1.0" in log  # printed, and ignored
    assert result["status"] == "ok" and result["metric_value"] == honest, (result, honest)


async def test_hidden_split_is_out_of_reach(lab: Lab) -> None:
    val = lab.data_dir / "val" / "x.npy"
    assert val.is_file()
    spec = importlib.util.find_spec("sklearn")  # where the whole dataset lies on the host
    assert spec is not None and spec.submodule_search_locations
    sklearn_csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    assert sklearn_csv.is_file()
    code = (
        "import glob, sys\n"
        "print('PROBE lists', sorted(os.listdir(DATA_DIR)), flush=True)\n"
        f"print('PROBE host val', os.path.exists({str(val)!r}), flush=True)\n"
        f"print('PROBE host data', os.path.exists({str(lab.data_dir / 'split.key')!r}), flush=True)\n"
        "try:\n"
        "    from sklearn.datasets import load_digits\n"
        "    print('PROBE sklearn rows', len(load_digits().data), flush=True)\n"
        "except Exception as exc:\n"
        "    print('PROBE sklearn failed', type(exc).__name__, flush=True)\n"
        f"print('PROBE host csv', os.path.exists({str(sklearn_csv)!r}), flush=True)\n"
        "found = glob.glob(os.path.join(sys.prefix, '**', 'digits.csv*'), recursive=True)\n"
        "print('PROBE csv', found, flush=True)\n"
        "sys.exit(0)\n"
    )
    result, log = await run_edit(lab, "mallory-val", "look for the hidden split", code)
    assert "PROBE lists ['train']" in log, log
    assert "PROBE host val False" in log and "PROBE host data False" in log, log
    assert "PROBE sklearn failed" in log and "PROBE sklearn rows" not in log, log
    assert "PROBE host csv False" in log and "PROBE csv []" in log, log
    assert result["status"] == "crash" and "saved no model.npz" in result["failure_reason"]


async def test_no_network_even_on_loopback(lab: Lab) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted: list[Any] = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    port = server.getsockname()[1]
    code = (
        "import socket as _socket\n"
        "try:\n"
        f"    _socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "    print('NET connected', flush=True)\n"
        "except OSError as exc:\n"
        "    print('NET refused', type(exc).__name__, flush=True)\n"
    )
    try:
        result, log = await run_edit(lab, "mallory-net", "phone home", code)
    finally:
        server.close()
    assert "NET refused" in log and "NET connected" not in log, log
    assert not accepted
    assert result["status"] == "ok"  # it trained on: only the network was missing


async def test_nothing_survives_between_runs(lab: Lab) -> None:
    places = ["/tmp/answer.txt", os.path.expanduser("~") + "/answer.txt", "../answer.txt"]
    write = (
        f"for _p in {places!r} + [os.path.join(DATA_DIR, 'train', 'answer.txt')]:\n"
        "    try:\n"
        "        open(os.path.expanduser(_p), 'w').write('0.999')\n"
        "        print('STATE wrote', _p, flush=True)\n"
        "    except OSError as exc:\n"
        "        print('STATE blocked', _p, type(exc).__name__, flush=True)\n"
    )
    first, log1 = await run_edit(lab, "mallory-state", "leave an answer", write)
    assert first["status"] == "ok" and "STATE wrote /tmp/answer.txt" in log1, log1
    assert "STATE blocked" in log1 and "train', 'answer.txt'" not in log1  # data is read-only
    read = (
        f"for _p in {places!r} + [os.path.join(DATA_DIR, 'train', 'answer.txt')]:\n"
        "    print('STATE found' if os.path.exists(os.path.expanduser(_p)) else 'STATE none', _p, flush=True)\n"
    )
    second, log2 = await run_edit(lab, "mallory-state", "read the answer", read)
    assert second["status"] == "ok"
    assert "STATE found" not in log2 and log2.count("STATE none") == 4, log2
    assert not list(lab.data_dir.rglob("answer.txt"))
