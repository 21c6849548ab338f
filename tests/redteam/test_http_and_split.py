"""Red team, issue 15 (items 4, 5, 7): the secret split, the HTTP surface's Host/Origin checks,
MCP session exhaustion, and deeply nested arguments.

Everything is real: prepare on the real default corpus, the real training jail through the MCP
tools (mallory), the real app under uvicorn on a loopback port with real MCP clients over HTTP,
and the real `autoresearch-mcp serve` process over stdio.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from support import connect_over_http, free_port, serve_app

from server.app import build_server
from server.auth import issue_token
from server.lab import Lab, LabSettings
from server.web import build_app
from trainer import prepare as prepare_module
from trainer.prepare import EOT, default_documents, load_encoding

from . import patches
from .mallory import experiment_log, make_lab, run_hack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.anyio]

EXE = str(Path(sys.executable).with_name("autoresearch-mcp"))
OLD_SALT = "autoresearch-mcp/split/v1"  # the constant salt of 0dfea74, public in git history
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "mallory", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
DEADLINE_S = 60.0


# ---------------------------------------------------------------- helpers


@contextmanager
def served(lab: Lab, **options: Any) -> Iterator[str]:
    """build_app(lab, **options) under uvicorn on a free loopback port; yields its URL."""
    port = free_port()
    with serve_app(build_app(lab, host="127.0.0.1", port=port, **options), port) as url:
        yield url


@pytest.fixture(scope="module")
def web_lab(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Lab]:
    """A lab with no scheduler (nothing runs): only the HTTP surface is under test."""
    home = tmp_path_factory.mktemp("redteam-http") / "home"
    shutil.copytree(data_dir, home / "data")
    lab = Lab(LabSettings(home=home, budget_seconds=4, baseline_repeats=0, start_scheduler=False))
    yield lab
    lab.close()


def split_texts(tokens: np.ndarray, encoding: Any) -> list[str]:
    """The documents of a token file, in stored order."""
    return encoding.decode(tokens.tolist()).split(EOT)[1:]


def val_texts(folder: Path) -> set[str]:
    encoding = load_encoding(folder)
    return set(split_texts(np.fromfile(folder / "val" / "tokens.bin", dtype="<u2"), encoding))


def nested(depth: int) -> Any:
    value: Any = "train.py"
    for _ in range(depth):
        value = [value]
    return value


async def mcp_client(stack: AsyncExitStack, url: str, token: str | None) -> Client:
    return await connect_over_http(stack, url, token, timeout=60)


# ---------------------------------------------------------------- 4. the split


async def test_val_split_differs_per_installation_and_is_not_computable_from_the_repository(
    tmp_path: Path, data_dir: Path
) -> None:
    """Hack: the split rule and its salt were constants in trainer/prepare.py (readable through
    read_file), so anyone could list the ~35 val documents (named Bible chapters and Shakespeare
    scenes) of every installation and have an LLM recite them into train.py; or read the secret
    from the data folder inside the training jail or through read_file.
    Defence: prepare draws a random secret per data folder (secrets.token_bytes), keeps it in
    data/split.key (0600, outside train/, val/ and tokenizer/, the only folders a jail mounts) and
    splits by an HMAC of each document key under it. Nothing in the repository reproduces the
    split; the key is invisible in the training jail and read_file serves only target files."""
    other = tmp_path / "other-installation" / "data"
    prepare_module.prepare(other, quiet=True)
    mine, theirs = val_texts(data_dir), val_texts(other)
    assert mine != theirs, "two installations hold out the same val documents"

    # Everything the repository offers an attacker: the old public rule, and the split code with
    # every constant of trainer/prepare.py (or nothing) as its secret.
    documents = [d for d in default_documents() if d.text.strip()]
    old_rule = {
        d.text
        for d in documents
        if int.from_bytes(hashlib.sha256(f"{OLD_SALT}/{d.key}".encode()).digest()[:4], "big") % 1000
        < prepare_module.VAL_PERMILLE
    }
    candidates: list[set[str]] = [old_rule]
    constants = [b""] + [
        value.encode() if isinstance(value, str) else value
        for name, value in vars(prepare_module).items()
        if name.isupper() and isinstance(value, str | bytes)
    ]
    for constant in constants:
        candidates.append({d.text for d in prepare_module.split_documents(documents, constant)[1]})
    for folder_val in (mine, theirs):
        for candidate in candidates:
            assert candidate != folder_val, "the repository's code and constants give the val set"
            assert len(candidate & folder_val) < len(folder_val) // 2

    # The secret is not visible to training (the real jail) ...
    secret = (data_dir / "split.key").read_text().strip()
    lab = make_lab(tmp_path / "home", data_dir)
    try:
        key_host = str(lab.data_dir / "split.key")
        probe = patches.after(
            patches.AFTER_CONTRACT,
            f"""
_seen = []
for _p in (os.path.join(DATA_DIR, "split.key"), {key_host!r},
           os.path.join(DATA_DIR, "train", "..", "split.key")):
    try:
        with open(_p) as _f:
            _seen.append(_f.read().strip())
    except OSError as _e:
        pass
print("SPLITKEY read:", _seen or "nothing", flush=True)
raise SystemExit(0)
""",
        )
        _, row = await run_hack(lab, "mallory-split-key", "read the split secret", [probe])
        log = await experiment_log(lab, "mallory-split-key", row["id"])
        assert "SPLITKEY read: nothing" in log, log
        assert secret not in log

        # ... nor through read_file, by any path an agent would try.
        async with Client(build_server(lab, default_agent="mallory-split-key")) as client:
            for path in (
                "split.key",
                "../data/split.key",
                "../../data/split.key",
                key_host,
                "prepare.py",
                "../prepare.py",
            ):
                result = await client.call_tool("read_file", {"path": path})
                text = json.dumps(result.structured_content) + str(result.content)
                assert secret not in text, f"read_file({path!r}) served the split secret"
                assert (lab.data_dir / "split.key").read_text().strip() not in text
    finally:
        lab.close()


def test_train_order_and_manifest_do_not_name_the_val_documents(data_dir: Path) -> None:
    """Hack: with the secret unknown, look for side doors: train documents stored in corpus order
    (the gaps are the val documents), manifest.json listing the val keys, or a prepare log naming
    them. Defence: train documents are stored in an order drawn from the secret; the manifest and
    the log give counts only."""
    documents = [d for d in default_documents() if d.text.strip()]
    index = {d.text: n for n, d in enumerate(documents)}
    encoding = load_encoding(data_dir)
    train = split_texts(np.fromfile(data_dir / "train" / "tokens.bin", dtype="<u2"), encoding)
    order = [index[text] for text in train]
    assert len(order) > 1000
    ascending = sum(1 for a, b in itertools.pairwise(order) if b > a)
    # Corpus order would be 100% ascending; a random order is ~50%.
    assert 0.4 < ascending / (len(order) - 1) < 0.6, "train documents are stored in corpus order"

    in_val = val_texts(data_dir)
    val_keys = {d.key for d in documents if d.text in in_val}
    assert val_keys
    manifest = (data_dir / "manifest.json").read_text()
    named = [key for key in val_keys if json.dumps(key) in manifest or key in manifest]
    assert not named, f"manifest.json names val documents: {named}"


# ---------------------------------------------------------------- 7. Host and Origin


@pytest.mark.parametrize("auth", [True, False], ids=["auth", "no-auth"])
def test_foreign_host_is_refused_on_every_route(web_lab: Lab, auth: bool) -> None:
    """Hack: DNS rebinding. A web page on evil.example re-resolves its name to 127.0.0.1 and reads
    the dashboard and JSON API of a --no-auth server (the browser sends Host: evil.example), or
    posts to /mcp; a page of another origin sends requests with its own Origin.
    Defence: HostAndOriginGuard, outermost in the app, answers 421 to any Host that is not a name
    the server was started for (loopback names, the bind address, --allowed-host) and 403 to a
    foreign Origin, before any route runs, in both auth modes."""
    token = issue_token(web_lab.store, "http-reader", role="agent")
    with served(web_lab, auth=auth) as url:
        port = url.rsplit(":", 1)[1]
        app_paths = ["/", "/healthz", "/results.tsv", "/progress.png", "/openapi.json", "/mcp"]
        schema = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {token}"})
        assert schema.status_code == 200
        app_paths += [p for p in schema.json()["paths"] if "{" not in p]
        assert any(p.startswith("/api/") for p in app_paths), app_paths
        bearer = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=bearer, timeout=30) as client:
            for path in app_paths:
                honest = client.get(path)
                assert honest.status_code not in (403, 421), (path, honest.text)
                for host in (
                    f"evil.example:{port}",
                    "evil.example",
                    f"127.0.0.1.evil.example:{port}",
                    f"localhost.evil.example:{port}",
                ):
                    answer = client.get(path, headers={"Host": host})
                    assert answer.status_code == 421, (path, host, answer.status_code)
                    assert "--allowed-host" in answer.text
                answer = client.get(path, headers={"Origin": "http://evil.example"})
                assert answer.status_code == 403, (path, answer.status_code)
                answer = client.get(path, headers={"Origin": f"http://localhost:{port}"})
                assert answer.status_code not in (403, 421), (path, answer.text)
            for headers in ({"Host": f"evil.example:{port}"}, {"Origin": "http://evil.example"}):
                answer = client.post("/mcp", json=INIT, headers={**MCP_HEADERS, **headers})
                assert answer.status_code in (403, 421), answer.text
            answer = client.post("/mcp", json=INIT, headers=MCP_HEADERS)
            assert answer.status_code == 200, answer.text


# ---------------------------------------------------------------- 5. session exhaustion


async def test_one_token_cannot_exhaust_sessions(web_lab: Lab) -> None:
    """Hack: one agent token opens MCP sessions without end (and never closes them) until the
    SDK's global cap of 10,000 answers 503 to every other agent.
    Defence: McpGate caps the live sessions of one token (default 8; the next is refused with 429
    saying the limit and what to do), and sessions with no request in flight expire after an
    idle timeout (default 600 s, --mcp-session-idle); other tokens are never affected."""
    flooder = issue_token(web_lab.store, "mallory-flood", role="agent")
    honest = issue_token(web_lab.store, "honest-agent", role="agent")
    with served(web_lab) as url:
        statuses: list[int] = []
        refusal = ""
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for _ in range(40):
                answer = await http.post(
                    "/mcp", json=INIT, headers={**MCP_HEADERS, "Authorization": f"Bearer {flooder}"}
                )
                statuses.append(answer.status_code)
                if answer.status_code != 200:
                    refusal = answer.text
        assert statuses.count(200) == 8, statuses
        assert set(statuses[8:]) == {429}, statuses
        assert "--mcp-sessions-per-token 8" in refusal and "DELETE /mcp" in refusal, refusal
        async with AsyncExitStack() as stack:
            client = await mcp_client(stack, url, honest)
            listed = await client.call_tool("list_files", {})
            assert not listed.is_error, listed.content

    # Idle sessions expire: a short idle timeout gives the flooding token its room back.
    with served(web_lab, mcp_sessions_per_token=2, mcp_session_idle_seconds=2) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            auth = {**MCP_HEADERS, "Authorization": f"Bearer {flooder}"}
            opened = [(await http.post("/mcp", json=INIT, headers=auth)).status_code for _ in "abc"]
            assert opened == [200, 200, 429], opened
            deadline = time.monotonic() + DEADLINE_S
            while (await http.post("/mcp", json=INIT, headers=auth)).status_code != 200:
                assert time.monotonic() < deadline, "idle sessions never expired"
                await anyio.sleep(0.25)


# ---------------------------------------------------------------- the timings table


async def test_invented_tool_names_cannot_grow_or_bend_the_timings(web_lab: Lab) -> None:
    """Hack: an agent calls 300 tools that do not exist (names of its choosing, some long), and
    posts bodies that are not JSON-RPC, to grow the server's per-tool timings table
    (server/timings.py) without bound, or to plant its own rows beside the real tools' figures.
    Defence: only the server's own tool names get a row; everything else (a malformed tools/call
    too) is one row, "other"; a body that is not a tools/call is not timed at all."""
    mallory = issue_token(web_lab.store, "mallory-timings", role="agent")
    with served(web_lab) as url:
        async with AsyncExitStack() as stack:
            client = await mcp_client(stack, url, mallory)
            for n in range(300):
                result = await client.call_tool(f"get_history_{n}" + "x" * (n % 7) * 40, {})
                assert result.is_error
            assert not (await client.call_tool("read_file", {"path": "train.py"})).is_error
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            auth = {**MCP_HEADERS, "Authorization": f"Bearer {mallory}"}
            for body in (b"not json", b'{"method": "tools/call", "params": 7}', b"[1, 2]"):
                await http.post("/mcp", content=body, headers=auth)
            figures = (await http.get("/api/timings", headers=auth)).json()
    rows = {row["tool"]: row["calls"] for row in figures["tools"]}
    assert set(rows) == {"other", "read_file"}, rows
    assert rows["other"] == 301 and rows["read_file"] == 1  # 300 names + the params-less call


# ---------------------------------------------------------------- 7. deep nesting


async def test_deeply_nested_arguments_get_an_answer(web_lab: Lab, tmp_path: Path) -> None:
    """Hack: tool arguments nested ~200 deep (and deeper). Past the SDK parser's recursion limit
    the request failed inside the SDK: over stdio no answer came at all (the client hung), over
    HTTP an error with `id: null` and a bare "Parse error"; below it, the nesting reached pydantic
    and the tools. Defence: every incoming message is measured on its raw bytes (linear,
    no recursion) before the SDK parses it: McpGate for HTTP, serve_stdio's line filter for stdio;
    deeper than 64 levels gets a JSON-RPC error with the request's own id naming the maximum."""
    token = issue_token(web_lab.store, "mallory-deep", role="agent")
    with served(web_lab) as url:
        async with AsyncExitStack() as stack:
            client = await mcp_client(stack, url, token)
            with anyio.fail_after(DEADLINE_S):
                with pytest.raises(MCPError, match="maximum depth is 64"):
                    await client.call_tool("read_file", {"path": nested(200)})
                fine = await client.call_tool("read_file", {"path": "train.py", "limit": 1})
            assert not fine.is_error, fine.content
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            auth = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
            opened = await http.post("/mcp", json=INIT, headers=auth)
            session = {
                **auth,
                "mcp-session-id": opened.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-06-18",
            }
            await http.post(
                "/mcp",
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers=session,
            )
            deep = "[" * 5000 + '"x"' + "]" * 5000
            body = (
                '{"jsonrpc": "2.0", "id": "deep-1", "method": "tools/call", '
                f'"params": {{"name": "read_file", "arguments": {{"path": {deep}}}}}}}'
            )
            answer = await http.post("/mcp", content=body, headers=session)
            reply = answer.json()
            assert reply["id"] == "deep-1", reply
            assert "maximum depth is 64" in reply["error"]["message"], reply

    home = tmp_path / "stdio-home"
    shutil.copytree(web_lab.data_dir, home / "data")
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=EXE,
        args=[
            "serve",
            "--agent",
            "mallory-deep",
            "--data-dir",
            str(home),
            "--baseline-repeats",
            "0",
        ],
    )
    async with Client(stdio_client(params)) as client:
        with anyio.fail_after(DEADLINE_S):
            with pytest.raises(MCPError, match="maximum depth is 64"):
                await client.call_tool("read_file", {"path": nested(200)})
            fine = await client.call_tool("read_file", {"path": "train.py", "limit": 1})
        assert not fine.is_error, fine.content
