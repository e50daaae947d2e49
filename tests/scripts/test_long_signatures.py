"""scripts/long_signatures.py: what it counts, and that the packages listed here stay within six
parameters a function (pruning/planning, pruning/recovery/stages.py, orchestrator/sweeps,
orchestrator/studies and orchestrator/cli are checked by their own owners' tests once theirs are
regrouped)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import long_signatures  # noqa: E402

#: the paths held to the limit: every package of the product
CHECKED = ["pruning", "orchestrator", "search_spaces"]


def test_the_checked_packages_have_no_function_over_six_parameters():
    found = long_signatures.scan([str(ROOT / path) for path in CHECKED])
    assert found == [], "\n".join(f"{file}:{line}: {name} takes {count}" for file, line, name, count in found)


SOURCE = '''
def six(a, b, c, d, e, f): ...
def seven(a, b, c, d, e, f, g): ...
def stars(a, b, c, d, e, *args, **kwargs): ...
def keywords(a, b, c, d, *, e, f, g=1): ...
class Thing:
    def method(self, a, b, c, d, e, f): ...
    @classmethod
    def build(cls, a, b, c, d, e, f, g): ...
    def nested(self):
        def inner(a, b, c, d, e, f, g): ...
# long signature: a reason
@staticmethod
def excused(a, b, c, d, e, f, g): ...
def excused_inline(a, b, c, d, e, f, g): ...  # long signature: a reason
'''


def test_counts_parameters_without_self_and_stars_as_one(tmp_path):
    path = tmp_path / "module.py"
    path.write_text(SOURCE)
    found = {name: count for _, _, name, count in long_signatures.offenders(path)}
    assert found == {"seven": 7, "stars": 7, "keywords": 7, "Thing.build": 7, "Thing.nested.inner": 7}


@pytest.mark.parametrize("source, code", [("def ok(a, b): ...\n", 0), ("def bad(a, b, c, d, e, f, g): ...\n", 1)])
def test_exits_1_when_anything_is_over_the_limit(tmp_path, source, code):
    (tmp_path / "m.py").write_text(source)
    run = subprocess.run([sys.executable, str(ROOT / "scripts/long_signatures.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == code
    assert ("bad takes 7 parameters" in run.stdout) == bool(code)
