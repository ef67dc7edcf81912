"""`switchboard batches list|show|cancel` as real subprocesses against a real Redis.

Batches are stored with `BatchStore.create` and moved along by writing their hash as
the workers do (tests/batch_states.py); `show` is followed through a pipe and through a
pseudo-terminal while the test moves the batch, each step waiting for what the command
printed (never for a time).
"""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ingress.cli_batches import Rate, bar, figures, final
from schemas import names
from schemas.batch import BatchRecord, BatchState
from tests.batch_states import ENDPOINT, advance, make_batch
from tests.test_cli import SWITCHBOARD, run, write_config
from workers.connection import connect


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    async with connect(redis_url) as client:
        yield client


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a `switchboard` subprocess: the config through SWITCHBOARD_CONFIG."""
    config = write_config(tmp_path / "sb.toml", redis_url, "http://127.0.0.1:9/v1")
    return {**os.environ, "REDIS_URL": redis_url, "SWITCHBOARD_CONFIG": str(config)}


async def test_list_is_every_orgs_batches_newest_first_and_filters_by_org(
        redis: Any, env: dict[str, str]) -> None:
    await make_batch(redis, "batch_old", "acme", 4, created_at=1_764_000_000)
    await make_batch(redis, "batch_mid", "globex", 3, created_at=1_764_000_100)
    await make_batch(redis, "batch_new", "acme", 10, created_at=1_764_000_200)
    await advance(redis, "batch_new", completed=6, failed=1, status="in_progress")
    await advance(redis, "batch_old", completed=4, status="completed")

    listed = run("batches", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:4] == ["BATCH", "ID", "ORG", "STATUS"]
    assert [row.split()[:4] for row in rows] == [
        ["batch_new", "acme", "in_progress", "6/1/10"],
        ["batch_mid", "globex", "validating", "0/0/3"],
        ["batch_old", "acme", "completed", "4/0/4"]]
    assert rows[0].split()[4] == "2025-11-24T16:03:20Z"  # created, UTC

    only = run("batches", "list", "--org", "globex", env=env)
    assert [row.split()[0] for row in only.stdout.splitlines()[1:]] == ["batch_mid"]
    first = run("batches", "list", "--limit", "2", env=env)
    assert [row.split()[0] for row in first.stdout.splitlines()[1:3]] == ["batch_new", "batch_mid"]
    assert "--limit" in first.stdout.splitlines()[-1]
    none = run("batches", "list", "--org", "initech", env=env)
    assert none.returncode == 0 and len(none.stdout.splitlines()) == 1


async def test_show_once_and_cancel_print_the_figures_and_the_status_after(
        redis: Any, env: dict[str, str]) -> None:
    await make_batch(redis, "batch_a", "acme", 10)
    await advance(redis, "batch_a", completed=5, failed=1, status="in_progress")
    shown = run("batches", "show", "batch_a", "--once", env=env)
    assert shown.returncode == 0, shown.stderr
    head, line = shown.stdout.splitlines()
    assert head.startswith("batch_a  org acme  /v1/chat/completions")
    assert line.startswith("in_progress  done 5  failed 1  remaining 4 of 10  rate ")

    cancelled = run("batches", "cancel", "batch_a", env=env)
    assert (cancelled.returncode, cancelled.stdout) == (0, "batch_a cancelling\n")
    assert (await redis.hget(names.batch("batch_a"), "status")) == b"cancelling"
    again = run("batches", "cancel", "batch_a", env=env)
    assert again.stdout == "batch_a cancelling\n"
    await advance(redis, "batch_a", status="cancelled")
    after = run("batches", "cancel", "batch_a", env=env)
    assert (after.returncode, after.stdout) == (0, "batch_a cancelled\n")  # left as it was
    assert (await redis.hget(names.batch("batch_a"), "status")) == b"cancelled"
    finished = run("batches", "show", "batch_a", "--once", env=env)
    assert finished.stdout.splitlines()[-1].startswith(
        "batch_a cancelled: 5 done, 1 failed, 4 not run, of 10 in ")

    await make_batch(redis, "batch_bad", "globex", 0, status="failed", created_at=1_764_000_000)
    await advance(redis, "batch_bad", failed_at="1764000002",
                  errors='[{"code": "model_not_found", "line": 3, '
                  '"message": "no model \'gpt-9\'", "param": "body.model"}, '
                  '{"code": "invalid_url", "line": 4, "message": "wrong url", "param": "url"}]')
    failed = run("batches", "show", "batch_bad", env=env)  # finished: returns at once
    assert failed.returncode == 3, failed.stderr
    assert failed.stdout.splitlines()[-1] == (
        "batch_bad failed: 0 done, 0 failed, of 0 in 2s; 2 validation errors, first: "
        "line 3: no model 'gpt-9'")

    for verb in (["show", "batch_nope"], ["show", "batch_nope", "--once"], ["cancel", "batch_nope"]):
        unknown = run("batches", *verb, env=env)
        assert unknown.returncode == 1, verb
        assert unknown.stderr.strip() == "switchboard: no batch 'batch_nope'" and not unknown.stdout


def test_every_batches_verb_needs_a_config(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SWITCHBOARD_CONFIG", "REDIS_URL")}
    for verb in (["list"], ["show", "batch_x"], ["cancel", "batch_x"]):
        result = subprocess.run([SWITCHBOARD, "batches", *verb], env=env, capture_output=True,
                                text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 2, verb
        assert "switchboard.toml" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # Redis away: one line naming it (without a password in the URL), exit status 2.
    away = tmp_path / "away.toml"
    away.write_text('redis_url = "redis://user:hush@127.0.0.1:1/0"\n')
    for verb in (["list"], ["show", "batch_x"], ["cancel", "batch_x"]):
        result = run("batches", *verb, "--config", str(away), env=env)
        assert result.returncode == 2, verb
        assert result.stderr.startswith("switchboard: Redis at 127.0.0.1:1/0 failed")
        assert len(result.stderr.strip().splitlines()) == 1 and "hush" not in result.stderr


class Output:
    """What a running `switchboard` printed so far, read as it comes."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.text = stream, ""

    async def until(self, piece: str) -> str:
        """Read until `piece` has been printed (bounded), return everything so far."""
        with trio.fail_after(20):
            while piece not in self.text:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:  # a pty master reads EIO once the child is gone
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{piece!r} never printed; got {self.text!r}")
                self.text += chunk.decode()
        return self.text

    async def rest(self) -> str:
        """Read to the end (the command has exited), return everything printed."""
        with trio.fail_after(20):
            while True:
                try:
                    chunk = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    return self.text
                self.text += chunk.decode()


@asynccontextmanager
async def following(batch_id: str, env: dict[str, str], terminal: bool, columns: int = 200
                    ) -> AsyncIterator[tuple[trio.Process, Output]]:
    """`switchboard batches show ID` running, its stdout a pipe or a pseudo-terminal
    `columns` wide."""
    args = [SWITCHBOARD, "batches", "show", batch_id, "--interval", "0.05"]
    env = {**env, "COLUMNS": str(columns)}  # what the terminal's size is read as first
    if terminal:
        master, slave = pty.openpty()
        process = await trio.lowlevel.open_process(args, env=env, stdout=slave,
                                                   stderr=subprocess.DEVNULL)
        os.close(slave)
        stream: Any = trio.lowlevel.FdStream(master)
    else:
        process = await trio.lowlevel.open_process(args, env=env, stdout=subprocess.PIPE,
                                                   stderr=subprocess.DEVNULL)
        stream = process.stdout
    try:
        yield process, Output(stream)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await stream.aclose()


async def test_show_follows_a_batch_line_by_line_until_it_has_finished(
        redis: Any, env: dict[str, str]) -> None:
    await make_batch(redis, "batch_f", "acme", 10)
    async with following("batch_f", env, terminal=False) as (process, out):
        await out.until("validating  done 0  failed 0  remaining 10 of 10")
        await advance(redis, "batch_f", status="in_progress")
        await out.until("in_progress  done 0  failed 0  remaining 10 of 10")
        await advance(redis, "batch_f", completed=3)
        await out.until("done 3  failed 0  remaining 7 of 10")
        await advance(redis, "batch_f", completed=6, failed=1, status="finalizing")
        await out.until("finalizing  done 9  failed 1  remaining 0 of 10")
        await advance(redis, "batch_f", status="completed", output_file_id="file-out",
                      error_file_id="file-err")
        text = await out.until("errors file-err\n")
        with trio.fail_after(20):
            assert await process.wait() == 0
    lines = text.splitlines()
    assert lines[0].startswith("batch_f  org acme  /v1/chat/completions")
    assert lines[-1].startswith("batch_f completed: 9 done, 1 failed, of 10 in ")
    assert "; output file-out; errors file-err" in lines[-1]
    changes = [line.split(" ", 1)[1] for line in lines[1:-1]]  # less the time stamp
    assert len(changes) == 5  # one line per change, none while nothing changed
    assert all("\r" not in line and "\x1b" not in line for line in lines)


async def test_show_on_a_terminal_redraws_a_bar_in_place(redis: Any, env: dict[str, str]) -> None:
    await make_batch(redis, "batch_t", "acme", 4)
    await advance(redis, "batch_t", completed=1, status="in_progress")
    async with following("batch_t", env, terminal=True) as (process, out):
        await out.until("\r" + "in_progress [" + "#" * 7 + "." * 23 + "]  25.0%  done 1")
        await advance(redis, "batch_t", completed=1, status="cancelling")
        await out.until("\rcancelling  [" + "#" * 15 + "." * 15 + "]  50.0%  done 2")
        await advance(redis, "batch_t", status="cancelled")
        with trio.fail_after(20):
            assert await process.wait() == 3  # finished, not completed
        text = (await out.rest()).replace("\r\n", "\n")
    assert "\x1b[K" in text  # each redraw clears the rest of the line
    # The bar stays on one line: the header, the bar (redrawn), the final line.
    head, drawn, last, end = text.split("\n")
    assert head.startswith("batch_t  org acme") and end == ""
    assert drawn.startswith("\rin_progress [") and drawn.count("\r") >= 3
    assert drawn.rsplit("\r", 1)[-1].startswith("cancelled   [" + "#" * 15)
    assert last.startswith("batch_t cancelled: 2 done, 0 failed, 2 not run, of 4 in ")


async def test_the_bar_fits_a_narrow_terminal(redis: Any, env: dict[str, str]) -> None:
    await make_batch(redis, "batch_n", "acme", 4)
    await advance(redis, "batch_n", completed=2, status="in_progress")
    async with following("batch_n", env, terminal=True, columns=60) as (process, out):
        await out.until("\rin_progress [")
        await advance(redis, "batch_n", completed=2, status="completed")
        with trio.fail_after(20):
            assert await process.wait() == 0
        text = (await out.rest()).replace("\r\n", "\n")
    drawn = text.split("\n")[1]
    redraws = [part.removesuffix("\x1b[K") for part in drawn.split("\r")[1:]]
    assert redraws and all(len(part) == 59 for part in redraws)  # never wraps
    assert redraws[0].startswith("in_progress [#####.....]  50.0%  done 2")


def test_rate_is_the_last_minutes_lines_and_the_eta_what_remains_at_it() -> None:
    def state(completed: int, failed: int = 0) -> BatchState:
        return BatchState(org="o", status="in_progress", total=1000, completed=completed,
                          failed=failed, in_progress_at=1, record=BatchRecord(
                              id="batch_r", endpoint=ENDPOINT, input_file_id="f",
                              completion_window="24h", created_at=1, expires_at=2))

    rate = Rate()
    assert rate.add(100.0, state(0)) is not None  # the average since start, before two reads
    assert rate.add(130.0, state(50, 10)) == pytest.approx(120.0)  # 60 lines in 30 s
    assert rate.add(160.0, state(100, 20)) == pytest.approx(120.0)
    assert rate.add(220.0, state(130, 20)) == pytest.approx(30.0)  # the minute 160..220 alone
    assert figures(state(700, 20), 140.0) == \
        "done 700  failed 20  remaining 280 of 1000  rate 140.0/min  ETA 2m00s"
    assert figures(state(0), None).endswith("rate -  ETA -")
    assert bar(state(500), 1.0).startswith("in_progress [" + "#" * 15 + "." * 15 + "]  50.0%")
    done = state(990, 10)
    done.status, done.completed_at = "completed", 3601
    assert final(done) == "batch_r completed: 990 done, 10 failed, of 1000 in 1h00m"
