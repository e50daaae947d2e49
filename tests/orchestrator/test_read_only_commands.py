"""Commands that only read a run directory (`pareto`) write nothing: not into the run directory,
not into its database. A truncated, empty or foreign database, or a `sweep.yaml` that no longer
loads, is one `error:` line naming the file (exit status 2), and the file keeps its bytes."""
from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sweep_helpers import assert_refused, file_digests, main_json

pytestmark = pytest.mark.fashion_mnist
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def copy(finished_sweep, tmp_path) -> Path:
    """A copy of the finished sweep's run directory, for this test to damage."""
    return Path(shutil.copytree(finished_sweep.run_dir, tmp_path / "copy"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def foreign(path: Path) -> None:
    path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('not MLflow')")


DAMAGES = {"truncated": (truncate, "SQLite database"), "empty": (empty, "is empty (0 bytes)"),
           "foreign": (foreign, "is not an MLflow database")}


def test_pareto_writes_nothing_into_the_run_dir_or_its_database(copy, tmp_path):
    before = file_digests(copy)
    data = main_json(["pareto", copy, "--export", tmp_path / "onnx"])
    assert data["front"] and len(list((tmp_path / "onnx").iterdir())) == len(data["front"])
    assert file_digests(copy) == before


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_database_is_one_line_naming_it_and_stays_as_it_was(copy, capsys, damage):
    database = copy / "mlflow.db"
    make, says = DAMAGES[damage]
    make(database)
    before = file_digests(copy)
    assert_refused(capsys, ["pareto", copy], database, says)
    assert_refused(capsys, ["pareto", copy, "--tracking-uri", f"sqlite:///{database}"], database, says)
    assert file_digests(copy) == before


def test_a_truncated_database_is_one_line_from_the_command_too(copy):
    """The console entry point: no traceback, exit status 2."""
    database = copy / "mlflow.db"
    truncate(database)
    before = database.read_bytes()
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "pareto", str(copy)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and done.stdout == "" and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and str(database) in lines[0]
    assert database.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"name: [unclosed\n", b"\x89PNG\r\n\x1a\n\x00\xff"],
                         ids=["empty", "not-yaml", "binary"])
def test_a_sweep_yaml_that_no_longer_loads_is_one_line_naming_it(copy, capsys, content):
    config = copy / "sweep.yaml"
    config.write_bytes(content)
    before = file_digests(copy)
    assert_refused(capsys, ["pareto", copy], config)
    assert file_digests(copy) == before
