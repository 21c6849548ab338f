"""Dashboard benchmark: page load with 1,000 experiments, the JSON API and progress.png.

    .venv/bin/python bench/dashboard.py [--experiments 1000] [--loads 5]

Builds a lab in a temporary home, inserts synthetic finished experiments for three agents
(through Store.create_experiment / update_experiment), serves the real app under uvicorn on
loopback and measures, with Debian's chromium driven by playwright:
  page load = navigation start -> the load event, and -> every dot of the chart drawn.
The reference in the same run is the same page at 100 experiments. Figures are printed and
written to bench/results/dashboard.json. Timings depend on the machine's load: compare only
figures from one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import httpx

from server.auth import issue_token
from server.lab import Lab, LabSettings
from server.web import build_app
from tests.support import free_port, serve_app
from trainer import prepare as prepare_module

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AGENTS = ("claude", "codex", "gemini")
IDEAS = (
    "warmdown 0.5 -> 0.7",
    "RoPE base 10k -> 50k",
    "batch 8 -> 12",
    "matrix lr 0.02 -> 0.025",
    "GELU instead of ReLU^2",
    "depth 5, width 224",
    "embed lr 0.01 -> 0.02",
    "learnable QK-norm scale",
    "weight decay 0.01",
    "2% warmup",
)


def add_experiments(lab: Lab, count: int, rng: random.Random) -> None:
    """`count` finished experiments, round-robin over three agents, slowly improving."""
    best = lab.store.db.execute(
        "SELECT MIN(metric_value) FROM experiments WHERE status = 'ok'"
    ).fetchone()[0]
    best = best if best is not None else 1.0
    for n in range(count):
        agent = AGENTS[n % len(AGENTS)]
        failed = rng.random() < 0.06
        value = None if failed else best + rng.gauss(0.004, 0.006)
        verdict = (
            "failed"
            if value is None
            else "improved"
            if value < best - 0.002
            else "within_noise"
            if value < best + 0.002
            else "worse"
        )
        idea = f"{IDEAS[n % len(IDEAS)]} (variant {n})"
        diff = f"--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-# old\n+# {idea}\n"
        experiment_id = lab.store.create_experiment(
            agent=agent,
            kind="experiment",
            status="ok" if value is not None else "crash",
            description=idea,
            code_hash=f"bench{n}-{rng.random()}",
            diff_parent=diff,
            diff_baseline=diff,
            budget_seconds=lab.budget_seconds,
            budget_kind=lab.settings.budget_kind,
            hardware=lab.hardware,
            seed=1337,
            scale="S",
        )
        lab.store.update_experiment(
            experiment_id,
            metric_value=value,
            verdict=verdict,
            train_seconds=300.0,
            eval_seconds=20.0,
            finished_at="2026-01-01T00:00:00.000Z",
            log_tail="step 1\nstep 2",
        )
        if verdict == "improved" and value is not None:
            best = value


def page_loads(
    url: str, token: str, dots: int, loads: int, screenshot: Path | None = None
) -> dict[str, float]:
    """Median and best of `loads` cold page loads: to the load event, and to the whole chart drawn."""
    from playwright.sync_api import sync_playwright

    to_load: list[float] = []
    to_chart: list[float] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(loads):
                context = browser.new_context(viewport={"width": 1500, "height": 1000})
                page = context.new_page()
                page.goto(f"{url}/?token={token}", wait_until="load")
                page.wait_for_function(
                    f"document.querySelectorAll('#chart .dot').length === {dots}", timeout=60_000
                )
                chart_ms = page.evaluate("performance.now()")
                load_ms = page.evaluate(
                    "(() => { const n = performance.getEntriesByType('navigation')[0];"
                    " return n.loadEventEnd - n.startTime; })()"
                )
                to_load.append(load_ms)
                to_chart.append(chart_ms)
                if screenshot is not None:
                    page.screenshot(path=str(screenshot), full_page=True)
                context.close()
        finally:
            browser.close()
    return {
        "load_event_ms_median": statistics.median(to_load),
        "chart_drawn_ms_median": statistics.median(to_chart),
        "chart_drawn_ms_best": min(to_chart),
    }


def api_timings(url: str, token: str, experiment_id: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per GET, over `repeats` requests each."""
    paths = [
        "/api/chart",
        "/api/experiments?limit=50",
        f"/api/experiments/{experiment_id}",
        "/api/leaderboard",
        "/api/queue",
        "/api/noise",
        "/results.tsv",
        "/progress.png",
    ]
    out: dict[str, float] = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        for path in paths:
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                response = client.get(path)
                samples.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
            if path == "/progress.png":
                out["/progress.png (first render)"] = samples[0]
                out["/progress.png (cached)"] = statistics.median(samples[1:] or samples)
            else:
                label = path.replace(str(experiment_id), "{id}")
                out[label] = statistics.median(samples)
    return out


def measure(
    lab: Lab, url: str, token: str, loads: int, repeats: int, screenshot: Path | None = None
) -> dict[str, Any]:
    dots = lab.store.count_experiments()
    last = lab.store.list_experiments(limit=1, columns=["id"])[0]["id"]
    return {
        "experiments": dots,
        "page": page_loads(url, token, dots, loads, screenshot),
        "api_ms": api_timings(url, token, last, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1000)
    parser.add_argument("--reference", type=int, default=100)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--screenshot", type=Path, help="save the page and progress.png at the largest size here"
    )
    args = parser.parse_args()
    logging.disable(logging.INFO)  # request logs would bury the figures
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        home = Path(tmp)
        prepare_module.prepare(home / "data", quiet=True)
        lab = Lab(LabSettings(home=home, budget_seconds=300, start_scheduler=False))
        token = issue_token(lab.store, "bench", role="viewer")
        port = free_port()
        try:
            with serve_app(build_app(lab, host="127.0.0.1", port=port), port) as url:
                results = []
                add_experiments(lab, args.reference, rng)
                results.append(measure(lab, url, token, args.loads, args.repeats))
                add_experiments(lab, args.experiments - args.reference, rng)
                results.append(measure(lab, url, token, args.loads, args.repeats, args.screenshot))
                if args.screenshot:
                    png = httpx.get(
                        f"{url}/progress.png", headers={"Authorization": f"Bearer {token}"}
                    )
                    args.screenshot.with_name(args.screenshot.stem + "-progress.png").write_bytes(
                        png.content
                    )
        finally:
            lab.close()
    print(f"dashboard benchmark ({len(AGENTS)} agents; medians over {args.loads} cold loads)")
    header = "".join(f"{r['experiments']:>14} exp" for r in results)
    print(f"{'':34}{header}")
    rows = [
        ("page: navigation -> load event", lambda r: r["page"]["load_event_ms_median"]),
        ("page: navigation -> chart drawn", lambda r: r["page"]["chart_drawn_ms_median"]),
        ("page: chart drawn, best load", lambda r: r["page"]["chart_drawn_ms_best"]),
    ] + [(f"GET {path}", lambda r, p=path: r["api_ms"][p]) for path in results[0]["api_ms"]]
    for label, get in rows:
        print(f"{label:34}" + "".join(f"{get(r):>15.1f} ms" for r in results))
    out = REPO_ROOT / "bench" / "results" / "dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {out.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
