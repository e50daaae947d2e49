"""A study's computation log: a last line cut short by a full disk or a kill is skipped (its
scores file, written atomically, is what counts); any other broken line is one error naming the log."""
from __future__ import annotations

import pytest

from orchestrator.studies.scores import COMPUTATIONS_FILE, read_computations
from pruning.errors import InputError


def test_a_last_line_cut_short_is_skipped(tmp_path):
    (tmp_path / COMPUTATIONS_FILE).write_text('{"key": "a"}\n{"key": "b"}\n{"ke')
    assert read_computations(tmp_path) == [{"key": "a"}, {"key": "b"}]


@pytest.mark.parametrize("text", ['{"key": "a"}\nnot json\n{"key": "b"}\n', b'\xff\xfe{"key"'],
                         ids=["a broken line", "not text"])
def test_a_corrupt_log_is_one_line_naming_it(tmp_path, text):
    path = tmp_path / COMPUTATIONS_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=rf"^{path} is corrupt") as error:
        read_computations(tmp_path)
    assert "\n" not in str(error.value)


def test_no_log_is_no_computation(tmp_path):
    assert read_computations(tmp_path) == []
