"""Every ``batchserve ...`` command the README and docs/ show parses with the CLI's own parser, as written
(issue 26, item 16: ``models rollback ... -m`` and ``profile ... --filter`` failed for a reader who typed
them). Parsing checks every command, group, option and value type without running anything, so it holds
for commands that name S3 buckets or servers the suite does not have; the tutorials' runs are tested where
their features are."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from batchserve.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented(text: str) -> list[tuple[int, str]]:
    """(line, command) for every line of a fenced code block that starts with ``batchserve ``, with its
    backslash continuations joined."""
    out: list[tuple[int, str]] = []
    lines = text.splitlines()
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            fenced = not fenced
        elif fenced and line.lstrip().startswith("batchserve "):
            start, cmd = i + 1, line
            while cmd.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd.rstrip()[:-1] + " " + lines[i]
            out.append((start, cmd.strip()))
        i += 1
    return out


def words(cmd: str) -> list[str]:
    """The shell's words of a command, without its trailing ``# comment`` or what it is piped to, and
    without the docs' two notations: ``[--json]`` (optional: checked as if given) and ``...`` (elided)."""
    lex = shlex.shlex(cmd, posix=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    out: list[str] = []
    for word in list(lex)[1:]:
        if word == "|":
            break
        if word in ("...", "[options]"):
            continue
        out.append(word[1:-1] if word.startswith("[") and word.endswith("]") else word)
    return out


def parse(cmd: Any, args: list[str], name: str = "batchserve") -> None:
    ctx = cmd.make_context(name, list(args), resilient_parsing=False)
    if hasattr(cmd, "list_commands"):  # a group (Typer's own copy of click: no isinstance on click.Group)
        sub_name, sub, rest = cmd.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        parse(sub, rest, sub_name or "")


CASES = [(f"{page.name}:{line}", cmd) for page in PAGES for line, cmd in documented(page.read_text())]


def test_the_docs_show_commands_to_check() -> None:
    assert len(CASES) >= 20 and any(c.startswith("batchserve models rollback") for _, c in CASES)


@pytest.mark.parametrize(("where", "cmd"), CASES, ids=[w for w, _ in CASES])
def test_every_documented_command_parses_as_written(where: str, cmd: str) -> None:
    cli = typer.main.get_command(app)
    try:
        parse(cli, words(cmd))
    except Exception as exc:  # click's usage errors, or Exit for --help
        if type(exc).__name__ != "Exit":
            pytest.fail(f"{where}: {cmd}\n  {type(exc).__name__}: {exc}")


@pytest.mark.heavy  # two real runs; every command above is parsed in make test
def test_the_recipes_the_red_team_typed_now_run(tmp_path: Path, model_dir: dict) -> None:
    """The two that failed as written, run for real: a rollback with --message, a profile with --filter
    over hive folders (as the request-log recipe profiles a week of logs)."""
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from batchserve import registry
    from tests.conftest import make_table

    repo = tmp_path / "fraud"
    data = Path(model_dir["logreg"][0]).read_bytes()
    for v in (1, 2):
        registry.register(str(repo), data, {}, actor="t", message=None)
        registry.promote(str(repo), v, "production", {}, actor="t", message=None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "batchserve", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=300)

    done = run("models", "rollback", str(repo), "--alias", "production", "--message", "scores drifted high")
    assert done.returncode == 0, done.stderr
    assert registry.events(str(repo), {})[-1].message == "scores drifted high"
    for day, n in (("2026-11-26", 50), ("2026-11-27", 70), ("2026-11-28", 90)):
        (tmp_path / "logs" / f"log_date={day}").mkdir(parents=True)
        pq.write_table(make_table(n, seed=n), tmp_path / "logs" / f"log_date={day}" / "part-0.parquet")
    done = run("profile", "-m", f"{repo}@production", "-i", str(tmp_path / "logs"), "--filter",
               "log_date>=2026-11-27", "-o", str(tmp_path / "ref.json"), "--workers", "1", "-q")
    assert done.returncode == 0, done.stderr
    import json

    assert json.loads((tmp_path / "ref.json").read_text())["source"]["rows"] == 160
