"""Red team, second look: what our own review found after the first round of fixes.

- The prewarmed evaluator used to mount training's `code/out` by path while training, beside
  it, could swap that folder for a link to another run's model; it now mounts a folder only the
  runner writes, holding the runner's own copy of the artifact.
- The corpus packages were hidden from training only under their real path: a venv reached
  through a symlink left them readable under the other name.
- `aten.empty` and friends handed the model uninitialised memory (the evaluator's freed
  buffers, or a stash of its own from an earlier call).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sandbox.jail import _aliases_in_jail
from sandbox.runner import ARTIFACT_DIR, ArtifactRefused, hand_over_artifact
from trainer import evaluate as evaluate_module

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the evaluator reads the runner's copy


def test_evaluator_never_mounts_trainings_folder(tmp_path: Path, data_dir: Path) -> None:
    """Hack: while the prewarmed evaluator's jail is being set up beside training, train.py swaps
    `code/out` for a link to another run's folder (run names are predictable), so the evaluator
    mounts and scores that run's model, then restores a real folder before it exits.
    Defence: the evaluator's jail mounts `<run>/artifact`, which training cannot reach, and the
    runner copies the artifact there after training exited, opening folder and file without
    following links. Checked on the jail spec the runner really builds."""
    from sandbox.runner import ExperimentRunner, RunSettings
    from sandbox.target import load_target

    runner = ExperimentRunner(load_target(), data_dir, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "exp"
    for sub in ("code/out", "eval", ARTIFACT_DIR):
        (run_dir / sub).mkdir(parents=True)
    started: list = []

    def capture(argv, spec, log_path):
        started.append((argv, spec))
        raise RuntimeError("captured")

    from sandbox import runner as runner_module

    original = runner_module.JailedProcess.start
    runner_module.JailedProcess.start = capture  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="captured"):
            runner._start_evaluator(run_dir, RunSettings(budget_seconds=5), wait=True)
    finally:
        runner_module.JailedProcess.start = original  # type: ignore[method-assign]
    ((argv, spec),) = started
    code = (run_dir / "code").resolve()
    mounted = [Path(p).resolve() for p in spec.readonly_paths]
    assert not any(p.is_relative_to(code) for p in mounted), mounted
    assert (run_dir / ARTIFACT_DIR).resolve() in mounted
    artifact = argv[argv.index("--artifact") + 1]
    assert Path(artifact).resolve().parent == (run_dir / ARTIFACT_DIR).resolve()


def test_artifact_handover_refuses_links_and_copies_bytes(tmp_path: Path) -> None:
    """Hack: leave `$AR_OUT_DIR` or `model.pt2` as a link (to another run's model) or a FIFO.
    Defence: the hand-over opens both with O_NOFOLLOW and copies a regular file's bytes only."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "model.pt2").write_bytes(b"the victim's model")
    into = tmp_path / "artifact"

    linked_folder = tmp_path / "out-link"
    linked_folder.symlink_to(victim)
    linked_file = tmp_path / "out-file-link"
    linked_file.mkdir()
    (linked_file / "model.pt2").symlink_to(victim / "model.pt2")
    fifo = tmp_path / "out-fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "model.pt2")
    for out in (linked_folder, linked_file, fifo):
        into.mkdir()
        with pytest.raises(ArtifactRefused):
            hand_over_artifact(out, "model.pt2", into)
        assert list(into.iterdir()) == []
        into.rmdir()

    honest = tmp_path / "out"
    honest.mkdir()
    (honest / "model.pt2").write_bytes(b"my own model")
    into.mkdir()
    copied = hand_over_artifact(honest, "model.pt2", into)
    (honest / "model.pt2").write_bytes(b"rewritten later")
    assert copied.read_bytes() == b"my own model"


# ---------------------------------------------------------------- hidden packages under every name


def test_corpus_packages_hidden_under_a_symlinked_venv(tmp_path: Path, data_dir: Path) -> None:
    """Hack: the server's venv is reached through a symlink (a common layout), so the jail binds
    it under both names; train.py reads the corpus packages (the whole default corpus: with it,
    the val documents are the ones missing from train/) under the name that was not hidden.
    Defence: each hidden package is covered under every name the jail binds it at."""
    from sandbox.jail import IsolationLevel, detect_isolation

    if detect_isolation() is not IsolationLevel.NAMESPACES:
        pytest.fail("bubblewrap is required for this test (make test installs it)")
    link = tmp_path / "venvlink"
    link.symlink_to(Path(sys.prefix).resolve())
    script = tmp_path / "server_side.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            from pathlib import Path
            sys.path.insert(0, {str(REPO)!r})
            from sandbox.runner import ExperimentRunner, RunSettings
            from sandbox.target import load_target
            target = load_target()
            runner = ExperimentRunner(target, Path({str(data_dir)!r}), Path({str(tmp_path / "runs")!r}),
                                      keep_run_dirs="always")
            names = [str(p) for p in target.hidden_paths()]
            real = [str(Path(p).resolve()) for p in names]
            code = "import glob, json\\nprint(json.dumps({{p: len(glob.glob(p + '/*')) for p in %r}}))\\n" % (names + real)
            code += "raise SystemExit(1)\\n"
            result = runner.run({{"train.py": code.encode()}},
                                RunSettings(budget_seconds=20, require_isolation=True, prewarm_evaluator=False))
            print("RESULT", json.dumps({{"names": names, "log": result.log_tail}}))
            """
        )
    )
    done = subprocess.run(
        [str(link / "bin" / "python"), str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, done.stdout + done.stderr
    outcome = json.loads(line[len("RESULT ") :])
    assert all(name.startswith(str(link)) for name in outcome["names"]), outcome["names"]
    counts = json.loads(next(ln for ln in outcome["log"].splitlines() if ln.startswith("{")))
    assert len(counts) == 2 * len(outcome["names"])
    assert all(count == 0 for count in counts.values()), counts


def test_aliases_cover_every_bound_name(tmp_path: Path) -> None:
    """The alias rule itself: a hidden folder is covered under its real path and under each
    bound path that reaches it through a link, and nowhere else."""
    real = tmp_path / "real" / "venv"
    (real / "lib" / "pkg").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    other = tmp_path / "other"
    other.mkdir()
    aliases = _aliases_in_jail(link / "lib" / "pkg", [link, real, other])
    assert aliases == [real / "lib" / "pkg", link / "lib" / "pkg"]


# ---------------------------------------------------------------- uninitialised memory


class _ReadsFreedMemory(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(16, 16)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.embed(idx)
        return logits + 0 * torch.empty_like(logits)  # whatever the allocator last freed


def test_uninitialised_allocations_are_refused() -> None:
    """Hack: `torch.empty_like` gives the model uninitialised memory: the evaluator's freed
    buffers (val windows, scoring temporaries) or a stash the model left there in an earlier
    call, so a "stateless" program carries state from scoring to probing.
    Defence: empty, empty_like, empty_strided, new_empty... are refused before loading."""
    program = torch.export.export(
        _ReadsFreedMemory().eval(),
        (torch.zeros(2, 4, dtype=torch.long),),
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
    )
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any("empty" in t for t in targets), targets  # the attack is really in the graph
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    with pytest.raises(evaluate_module.InvalidArtifact, match="empty"):
        evaluate_module.load_program(buffer)


# ---------------------------------------------------------------- paper searches and the thread pool


@pytest.mark.anyio
async def test_paper_searches_cannot_hold_every_worker_thread(
    tmp_path: Path, data_dir: Path
) -> None:
    """Hack: fire 48 concurrent search_papers calls while arXiv (here: a loopback server that
    never answers) keeps each one waiting on the shared rate-limit gate; in anyio's shared pool of
    40 worker threads they held every thread, so every other agent's edits and runs waited.
    Defence: the paper tools run on a few threads of their own; the rest wait without a thread.
    Checked by order, not by time: Alice's write_file returns before any search has returned
    (with the shared pool it could only run once a search had freed a thread)."""
    import shutil

    import anyio
    from arxiv_fake import FakeArxiv
    from mcp import Client

    from server.app import build_server
    from server.lab import Lab, LabSettings

    fake = FakeArxiv()
    fake.mode = "stall"
    shutil.copytree(data_dir, tmp_path / "data")
    lab = Lab(
        LabSettings(
            home=tmp_path,
            budget_seconds=60,
            start_scheduler=False,
            arxiv_url_format=fake.url_format,
            arxiv_min_interval_s=0.1,
        )
    )
    finished: list[str] = []
    try:
        server = build_server(lab, default_agent="agent")
        async with Client(server) as mallory, Client(server) as alice:

            async def search(i: int) -> None:
                await mallory.call_tool("search_papers", {"query": f"stall {i}"})
                finished.append("search")

            async with anyio.create_task_group() as group:
                for i in range(48):
                    group.start_soon(search, i)
                with anyio.fail_after(120):
                    while fake.count < 1:  # the searches are under way
                        await anyio.sleep(0.05)
                result = await alice.call_tool(
                    "write_file", {"path": "train.py", "content": "print(1)\n"}
                )
                finished.append("alice")
                assert not result.is_error, result.content
                # Let the stalled requests end now: the cancelled searches return only once
                # arXiv answers (else the group waited out the fake's 30 s stall).
                fake.release.set()
                group.cancel_scope.cancel()
    finally:
        fake.stop()
        lab.close()
    assert finished and finished[0] == "alice", finished
