"""Command line: prepare | serve (stdio or HTTP) | baseline | export | tokens | agents | connect-info.

Each command is a thin layer over a documented function (trainer.prepare.prepare, Lab,
Store exports, server.auth.issue_token). Logs go to stderr: over stdio, stdout belongs to MCP.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.target import ResearchTarget
from server.lab import DEFAULT_SCALES, Lab, LabSettings, ScaleLevel
from server.refusals import check_agent_name
from server.targets import TargetMismatch, check_record, open_target, run_prepare, target_home


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        type=Path,
        default=None,
        metavar="DIR",
        help="the research target: a folder holding target.toml (default: the bundled trainer/ target; "
        "targets/digits is the second bundled one; docs/targets.md)",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    _add_target(parser)
    parser.add_argument(
        "--data-dir",
        "--home",
        dest="home",
        type=Path,
        default=None,
        help="state folder: data, history, workspaces (default $AUTORESEARCH_HOME or ~/.cache/autoresearch-mcp)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="training budget per experiment in seconds (default 60 on CPU, 300 on CUDA)",
    )
    parser.add_argument(
        "--budget-kind",
        choices=("wall", "cpu"),
        default=None,
        help="wall: seconds on the clock; cpu: CPU seconds of the run, every thread counted (robust "
        "to a busy CPU). Default: cpu on the CPU (60 s per thread), wall on a GPU",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--cpu-slots", type=int, default=1, help="experiments at once on a CPU machine (default 1)"
    )
    parser.add_argument(
        "--prepare-ahead",
        choices=("auto", "on", "off"),
        default="auto",
        help="warm a busy slot's next run while it trains, so the slot does not wait for "
        "start-up between runs (auto: on GPU slots; on: every slot; off: never)",
    )
    for flag, kind, default, text in (
        ("--baseline-repeats", int, 4, "baseline runs that measure the noise on first use"),
        ("--noise-k", float, 2.0, "drift checks and the ladder's transfer verdicts: k x sd"),
        ("--campaign-experiments", int, 700, "the campaign the error budget covers, in experiments"),
        ("--false-wins", float, 0.5, "expected false improvements per campaign of changes that do nothing"),
        ("--confirm-runs", int, 4, "fresh-seed runs the server spends on each candidate"),
        ("--holdout-reads", int, 200, "how many times the sealed holdout may be scored over the record"),
    ):  # fmt: skip
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default:g})")
    parser.add_argument(
        "--seed", type=int, default=1337, help="the server-owned seed for paired comparisons"
    )
    parser.add_argument(
        "--call-wait",
        type=float,
        default=45.0,
        help="seconds one tool call may block (clients cut long calls)",
    )
    parser.add_argument(
        "--require-isolation",
        action="store_true",
        help="refuse to run experiments without the bubblewrap jail",
    )
    parser.add_argument(
        "--max-live", type=int, default=1, help="queued + running experiments per agent"
    )
    parser.add_argument(
        "--max-experiments",
        type=int,
        default=1000,
        help="runs each agent may cause in all (experiments, confirmations, promotions); 0: no cap",
    )
    parser.add_argument(
        "--eval-timeout", type=float, default=180.0, help="seconds the evaluator may take"
    )
    parser.add_argument("--arxiv-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--eval-windows", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--scale",
        action="append",
        default=None,
        metavar="NAME=BUDGETxMODEL[@SLOT+SLOT][:quota=HOURS][:device=D][:data=DIR][:budget=S]",
        help="a promotion-ladder level, smallest first, repeatable (default: S=1x1 M=5x1 L=5x2); "
        "a level may run on its own device and data, e.g. L=1x1:device=cuda:0:data=DIR "
        "(docs/design.md, 'Levels across devices and data')",
    )
    parser.add_argument(
        "--auto-promote",
        action="store_true",
        help="promote confirmed improvements to the next scale level automatically",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this machine (default); ray: each experiment a Ray task (pip install autoresearch-mcp[ray])",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="the Ray cluster to join with --executor ray, e.g. HEAD:6379 (default: $RAY_ADDRESS)",
    )
    parser.add_argument(
        "--ray-cpus-per-slot",
        type=int,
        default=1,
        help="with --executor ray on a CPU-only cluster: CPUs per experiment (one slot each)",
    )


def parse_scales(texts: list[str] | None) -> tuple[ScaleLevel, ...]:
    if not texts:
        return DEFAULT_SCALES
    try:
        levels = tuple(ScaleLevel.parse(text) for text in texts)
    except ValueError as exc:
        raise SystemExit(f"serve: {exc}") from exc
    if levels[0].budget_factor != 1.0 or levels[0].model_scale != 1:
        raise SystemExit("serve: the first --scale level must be the default (NAME=1x1)")
    if levels[0].own_machine:
        raise SystemExit(
            "serve: the first --scale level runs on the server's own device and data: set them "
            "with --device, --budget and --home; name another device or data on a later level"
        )
    return levels


def lab_settings(args: argparse.Namespace, **overrides: Any) -> LabSettings:
    values = dict(
        scales=parse_scales(getattr(args, "scale", None)),
        auto_promote=getattr(args, "auto_promote", False),
        home=home_of(args, target_of(args)),
        device=args.device,
        budget_seconds=args.budget,
        budget_kind=args.budget_kind,
        cpu_slots=args.cpu_slots,
        prepare_ahead=args.prepare_ahead,
        baseline_repeats=args.baseline_repeats,
        noise_k=args.noise_k,
        campaign_experiments=args.campaign_experiments,
        false_wins_per_campaign=args.false_wins,
        confirm_runs=args.confirm_runs,
        holdout_max_reads=args.holdout_reads,
        seed=args.seed,
        call_wait_seconds=args.call_wait,
        require_isolation=args.require_isolation,
        max_live_per_agent=args.max_live,
        max_experiments_per_agent=args.max_experiments or None,
        eval_timeout_seconds=args.eval_timeout,
        arxiv_url_format=args.arxiv_url,
        eval_windows=args.eval_windows,
        executor=args.executor,
        ray_address=args.ray_address,
        ray_cpus_per_slot=args.ray_cpus_per_slot,
    )
    values.update(overrides)
    return LabSettings(**values)


def target_of(args: argparse.Namespace) -> ResearchTarget:
    """The research target `--target` names (a folder holding target.toml), or the bundled one."""
    try:
        return open_target(getattr(args, "target", None))
    except (ValueError, OSError, KeyError) as exc:
        raise SystemExit(f"--target: {exc}") from exc


def home_of(args: argparse.Namespace, target: ResearchTarget) -> Path:
    return target_home(target, args.home)


def ensure_prepared(target: ResearchTarget, home: Path) -> None:
    """The record is the target's (checked first: nothing is prepared over another's data),
    and the data is prepared."""
    try:
        check_record(home, target)
    except TargetMismatch as exc:
        raise SystemExit(f"serve: {exc}") from exc
    if run_prepare(target, home / "data", []) != 0:
        raise SystemExit(2)


def cmd_prepare(args: argparse.Namespace) -> int:
    target = target_of(args)
    extra = list(args.target_args) + (["--force"] if args.force else [])
    return run_prepare(target, home_of(args, target) / "data", extra)


def cmd_serve(args: argparse.Namespace) -> int:
    target = target_of(args)
    home = home_of(args, target)
    ensure_prepared(target, home)
    lab = open_lab(args, target, home)
    if lab.isolation.value != "bwrap":
        logging.warning(
            "experiments run WITHOUT the bubblewrap jail (isolation: %s); install bubblewrap or pass --require-isolation",
            lab.isolation.value,
        )
    queued = lab.ensure_baseline()
    if queued:
        logging.info("measuring the baseline noise: queued baseline runs %s", queued)
    for line in lab.machines.own_machine_lines():
        logging.info("%s", line)
    try:
        if args.http:
            import uvicorn

            from server.web import build_app

            try:
                app = build_app(
                    lab,
                    host=args.host,
                    port=args.port,
                    auth=not args.no_auth,
                    allowed_hosts=args.allowed_host or (),
                    mcp_sessions_per_token=args.mcp_sessions_per_token,
                    mcp_session_idle_seconds=args.mcp_session_idle,
                )
            except ValueError as exc:
                print(f"serve: {exc}", file=sys.stderr)
                return 2
            print(
                f"autoresearch-mcp: dashboard http://{args.host}:{args.port}/  MCP http://{args.host}:{args.port}/mcp",
                file=sys.stderr,
                flush=True,
            )
            uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
        else:
            import anyio

            from server.app import build_server
            from server.request_limits import serve_stdio

            agent = check_agent_name(args.agent or os.environ.get("AUTORESEARCH_AGENT") or "agent")
            anyio.run(serve_stdio, build_server(lab, default_agent=agent))
    finally:
        lab.close()
    return 0


def open_lab(args: argparse.Namespace, target: ResearchTarget, home: Path) -> Lab:
    """The lab for `target` in `home`; a record bound to another target is refused, clearly."""
    try:
        return Lab(lab_settings(args, home=home, target_file=target.target_dir / "target.toml"))
    except TargetMismatch as exc:
        raise SystemExit(f"serve: {exc}") from exc


def cmd_baseline(args: argparse.Namespace) -> int:
    target = target_of(args)
    home = home_of(args, target)
    ensure_prepared(target, home)
    lab = open_lab(args, target, home)
    metric = target.metric
    print(
        f"baseline: {args.repeats} run(s) of {target.name}'s {', '.join(target.editable)}, budget {lab.budget_seconds:g} s ({lab.settings.budget_kind}), "
        f"device {lab.device}, isolation {lab.isolation.value}",
        file=sys.stderr,
    )
    try:
        ids = [
            lab.submit(
                "server",
                f"baseline run {n + 1}/{args.repeats} (seed {lab.settings.seed + n})",
                kind="baseline",
                files=dict(lab.baseline_files),
                seed=lab.settings.seed + n,
                check_quota=False,
                reuse=False,
            )[0]
            for n in range(args.repeats)
        ]
        values = []
        for experiment_id in ids:
            while lab.experiment(experiment_id)["status"] in ("queued", "running"):
                time.sleep(0.5)
            row = lab.experiment(experiment_id)
            if row["status"] == "ok" and row["metric_value"] is not None:
                values.append(row["metric_value"])
                metrics = row.get("metrics") or {}
                print(
                    f"#{experiment_id}: {metric} {row['metric_value']:.{target.metric_decimals}f}  (train {row['train_seconds']:.1f} s, "
                    f"eval {row['eval_seconds']:.1f} s, cpu share {row['cpu_share']:.2f}, seed {row['seed']}, "
                    f"probes {(metrics.get('causality') or metrics.get('probes') or {}).get('probes')})"
                )
            else:
                print(
                    f"#{experiment_id}: {row['status']}: {row['failure_reason']}\n{row.get('log_tail') or ''}"
                )
        if values:
            import statistics

            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            decimals = target.metric_decimals
            print(
                f"{metric} {statistics.fmean(values):.{decimals}f} +- {sd:.{decimals}f} "
                f"over {len(values)} run(s) ({target.metric_label})"
            )
        return 0 if len(values) == len(ids) else 1
    finally:
        lab.close()


def cmd_export(args: argparse.Namespace) -> int:
    from server.store import Store

    home = home_of(args, target_of(args))
    store = Store(home / "history.sqlite")
    if args.patches:
        from server.patch_export import export_command

        shipped = {k: v.decode() for k, v in target_of(args).baseline_files().items()}
        return export_command(store, args.patches, git=args.git, baseline_files=shipped)
    text = {"tsv": store.export_results_tsv, "csv": store.export_csv, "json": store.export_json}[
        args.format
    ]()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _refused_name(command: str, name: str | None) -> bool:
    """Print why `name` cannot be an agent's (invalid, or the server's own) and say so."""
    from server.lab import LabError, check_agent_name

    try:
        check_agent_name(name or "")
    except LabError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return True
    return False


def cmd_tokens(args: argparse.Namespace) -> int:
    from server.auth import issue_token
    from server.store import Store

    home = home_of(args, target_of(args))
    store = Store(home / "history.sqlite")
    if args.action == "add":
        if _refused_name("tokens add", args.name):
            return 2
        print(issue_token(store, args.name, args.role))
    elif args.action == "revoke":
        count = store.revoke_tokens(args.name)
        print(f"revoked {count} token(s) of {args.name}")
    else:
        for row in store.list_tokens():
            print(
                f"{row['agent']:<20} {row['role']:<7} {row['fingerprint']}  created {row['created_at']}"
                + (f"  REVOKED {row['revoked_at']}" if row["revoked_at"] else "")
            )
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    """Operator quotas per agent (read by Lab._check_quota): `agents quota NAME [...]` | `agents list`."""
    from server.lab import AGENT_NAME
    from server.store import Store

    home = home_of(args, target_of(args))
    store = Store(home / "history.sqlite")
    if args.action == "quota":
        if not args.name or not AGENT_NAME.fullmatch(args.name):
            print(
                "agents quota: give a NAME of 1-64 letters, digits, '.', '_' or '-'",
                file=sys.stderr,
            )
            return 2
        quota = {
            key: value
            for key, value in (
                ("max_queued", args.max_queued),
                ("max_experiments", args.max_experiments),
                ("max_device_hours", args.max_device_hours),
            )
            if value is not None
        }
        if any(value < 0 for value in quota.values()):
            print("agents quota: limits must be >= 0 (0 = the server default)", file=sys.stderr)
            return 2
        if quota:
            store.set_quota(args.name, **{k: (v or None) for k, v in quota.items()})
        else:
            store.ensure_agent(args.name)
        rows = [store.agent(args.name) or {}]
    else:
        rows = store.list_agents()
    for row in rows:
        print(
            f"{row.get('name'):<20} max_queued={row.get('max_queued') or 'default'} "
            f"max_experiments={row.get('max_experiments') or 'default'} "
            f"max_device_hours={row.get('max_device_hours') or 'unlimited'}"
        )
    return 0


def cmd_connect_info(args: argparse.Namespace) -> int:
    """Print the exact lines that connect Claude Code (HTTP and stdio) and the dashboard address."""
    from server.auth import issue_token
    from server.store import Store

    if _refused_name("connect-info", args.name):
        return 2
    target = target_of(args)
    home = home_of(args, target)
    store = Store(home / "history.sqlite")
    token = issue_token(store, args.name, "agent")
    chosen = f" --target {target.target_dir}" if getattr(args, "target", None) else ""
    beside = Path(sys.executable).parent / "autoresearch-mcp"  # the venv's console script
    exe = (
        str(beside)
        if beside.exists()
        else shutil.which("autoresearch-mcp") or f"{sys.executable} -m server.cli"
    )
    url = f"http://{args.host}:{args.port}"
    print(f"""
Connect an agent (a fresh token for agent '{args.name}'):

  claude mcp add -t http autoresearch {url}/mcp --header "Authorization: Bearer {token}"

or over stdio (Claude Code starts the server itself):

  claude mcp add autoresearch -- {exe} serve{chosen} --agent {args.name} --data-dir {home}

Dashboard: {url}/?token={token}
""")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch-mcp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "prepare",
        help="prepare the research target's data (offline for the bundled targets; cached)",
        description="Run the target's trusted prepare step. Options this command does not know "
        "go to the target's own prepare: for the bundled trainer/ target --corpus PATH, --source "
        "climbmix|fineweb-edu, --shards N, --split-secret HEX and more (python -m "
        "trainer.prepare --help; docs/data.md).",
    )
    p.add_argument("--data-dir", "--home", dest="home", type=Path, default=None)
    _add_target(p)
    p.add_argument("--force", action="store_true", help="prepare again even if the data checks out")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "serve",
        help="run the MCP server (stdio by default; --http for streamable HTTP + dashboard)",
    )
    _add_common(p)
    p.add_argument(
        "--http", action="store_true", help="serve streamable HTTP at /mcp and the dashboard at /"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-auth", action="store_true", help="no tokens (loopback only)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME[:PORT]",
        help="with --http: another name clients use for this server (e.g. behind a proxy); "
        "requests for any other Host are refused (loopback names and the bind address always work)",
    )
    p.add_argument(
        "--mcp-sessions-per-token",
        type=int,
        default=8,
        help="with --http: live MCP sessions one token may hold at once (default 8)",
    )
    p.add_argument(
        "--mcp-session-idle",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with --http: an MCP session with no request for this long is closed (default 600)",
    )
    p.add_argument("--agent", default=None, help="agent name over stdio (default 'agent')")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "baseline", help="run the baseline end to end without a server and print its metric"
    )
    _add_common(p)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs with seeds seed, seed+1, ...; stored as the noise baseline",
    )
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser(
        "export", help="export the history: results.tsv (autoresearch's columns), csv or json"
    )
    p.add_argument("--data-dir", "--home", dest="home", type=Path, default=None)
    _add_target(p)
    p.add_argument("--format", choices=("tsv", "csv", "json"), default="tsv")
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--patches", type=Path, metavar="DIR", help="each confirmed win as a patch")
    p.add_argument("--git", action="store_true", help="with --patches: also a git repo, DIR/repo")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("tokens", help="manage bearer tokens: add NAME | revoke NAME | list")
    p.add_argument("action", choices=("add", "revoke", "list"))
    p.add_argument("name", nargs="?")
    p.add_argument("--role", choices=("agent", "viewer"), default="agent")
    p.add_argument("--data-dir", "--home", dest="home", type=Path, default=None)
    _add_target(p)
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("agents", help="per-agent quotas: quota NAME [--max-queued N] [...] | list")
    p.add_argument("action", choices=("quota", "list"))
    p.add_argument("name", nargs="?")
    p.add_argument(
        "--max-queued", type=int, default=None, help="live (queued + running) runs; 0: default"
    )
    p.add_argument(
        "--max-experiments",
        type=int,
        default=None,
        help="experiments in all; 0: the server default (--max-experiments)",
    )
    p.add_argument(
        "--max-device-hours", type=float, default=None, help="device-hours in all; 0: no limit"
    )
    p.add_argument("--data-dir", "--home", dest="home", type=Path, default=None)
    _add_target(p)
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser("connect-info", help="issue a token and print the claude mcp add lines")
    p.add_argument("--name", default="researcher")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--data-dir", "--home", dest="home", type=Path, default=None)
    _add_target(p)
    p.set_defaults(func=cmd_connect_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("rustbpe").setLevel(logging.WARNING)  # its per-merge progress floods the log
    args, unknown = build_parser().parse_known_args(argv)
    if args.command != "prepare" and unknown:
        build_parser().parse_args(argv)  # the usual error for an unknown option
    args.target_args = unknown
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
