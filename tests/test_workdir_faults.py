"""A workdir that cannot be one, and a damaged metrics.jsonl (hardening issue, cases 2 and 3):
one line naming the workdir, or a repaired file; nothing trains here."""
import json
import os

import pytest

from isodiff_jax.errors import UserError
from isodiff_jax.train import lock
from isodiff_jax.train.monitor import Monitor


@pytest.mark.parametrize("where, message", [
    (lambda tmp: tmp / "f" / "run", "cannot create the workdir"),  # its parent is a file
    (lambda tmp: tmp / "f", "is a file, not a folder"),
    (lambda tmp: "/proc/isodiff_jax_run", "cannot create the workdir"),  # a file system that takes no folders
])
def test_a_workdir_that_cannot_be_one_is_one_line(tmp_path, where, message):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(UserError, match=message) as error:
        lock.acquire(str(where(tmp_path)))
    assert "\n" not in str(error.value) and str(where(tmp_path)) in str(error.value)


def test_a_truncated_metrics_file_is_repaired_on_resume(tmp_path, caplog):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (2, 4, 6)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    os.truncate(path, len(lines[0]) + 1 + len(lines[1]) // 2)  # cut inside the second line, as a full disk does
    Monitor(str(tmp_path), total_steps=8, start_step=4, progress_bar=False).close()
    assert path.read_text() == lines[0] + "\n"  # the damaged line dropped, the intact one kept
    assert "dropped 1 damaged line(s) of" in caplog.text
    path.write_text(lines[0] + "\n" + "[1, 2]\n" + lines[1] + "\n")  # a line of the wrong JSON type
    Monitor(str(tmp_path), total_steps=8, start_step=4, progress_bar=False).close()
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
