"""Every file the project writes and reads back can be damaged (hardening issue, first rule):
cut short, its final newline lost, a value of the wrong JSON type, random bytes. For each, the
reader either repairs what can be repaired, with a one-line warning saying what it did, or stops
with one line naming the file and what to do. (Checkpoints' own records are damaged in
test_checkpoint.py, which needs trained checkpoints.) Nothing trains here."""
import json
import logging
import os
import socket
import subprocess

import numpy as np
import pytest
from support import DAMAGES, RANDOM, cut, damage, load_module, lost_newline, random_bytes, wrong_type

from isodiff_jax import checkpoint, storage
from isodiff_jax.errors import UserError
from isodiff_jax.pretrained import safetensors_io
from isodiff_jax.train import lock, monitor


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and isinstance(error.value, UserError), text
    return text


# --- metrics.jsonl and evaluation.jsonl: repaired on resume, the intact records kept ---

@pytest.mark.parametrize("how", DAMAGES, ids=lambda f: f.__name__)
def test_a_damaged_log_is_repaired_on_resume_and_read_without_its_damaged_lines(tmp_path, caplog, how):
    path = tmp_path / "metrics.jsonl"
    intact = [{"step": s, "loss": 1.0 / s} for s in (2, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in intact) + json.dumps({"step": 6, "loss": 0.25}) + "\n")
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + how(lines[2]))  # the last line damaged, as a full disk or a crash leaves it
    expected = intact + ([{"step": 6, "loss": 0.25}] if how is lost_newline else [])
    assert monitor.read_records(str(path)) == expected  # what the studies read (lambda_study.trajectory)
    monitor.Monitor(str(tmp_path), total_steps=8, start_step=6, progress_bar=False).close()
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in expected)  # every line whole, ended
    assert (f"damaged line(s) of {path} (cut short, or not a JSON object)" in caplog.text) == (how is not lost_newline)


# --- train.lock: the owner cannot be told, so the workdir stays locked, in one line ---

@pytest.mark.parametrize("how", [cut, wrong_type, random_bytes], ids=lambda f: f.__name__)
def test_a_damaged_lock_stops_in_one_line_naming_it(tmp_path, how):
    path = tmp_path / lock.LOCK_FILE
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0.0}))
    damage(path, how)
    with pytest.raises(lock.WorkdirLocked) as error:
        lock.acquire(str(tmp_path))
    assert one_line(error).startswith(f"{tmp_path} is locked, and {path} is damaged (")
    assert one_line(error).endswith(f"if no training run uses this workdir, delete {path}")
    assert path.read_bytes() == how(json.dumps({"host": "elsewhere", "pid": 1, "started": 0.0}).encode())


def test_a_lock_without_its_final_newline_is_read_and_a_stale_one_taken_over(tmp_path, caplog):
    path = tmp_path / lock.LOCK_FILE
    finished = subprocess.Popen(["true"])
    finished.wait()
    gone = finished.pid  # a process that is no longer running
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": gone, "started": 0.0}))
    assert lock.acquire(str(tmp_path)) == str(path) and "removed the stale lock" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()


# --- config.json: stops in one line (it is written again by the next run) ---

@pytest.mark.parametrize("how", [cut, wrong_type, random_bytes], ids=lambda f: f.__name__)
def test_a_damaged_config_json_is_one_line_naming_it(tmp_path, how):
    path = tmp_path / checkpoint.CONFIG_FILE
    path.write_text(json.dumps({"seed": 0, "training": {"num_steps": 6}}, indent=2) + "\n")
    damage(path, how)
    with pytest.raises(storage.DamagedFile) as error:
        checkpoint.saved_config_json(str(tmp_path))
    assert one_line(error).startswith(f"{path} is damaged (")
    assert "every training run writes it again at its start" in one_line(error)
    assert error.value.exit_status == 1


def test_a_config_json_without_its_final_newline_is_read(tmp_path):
    (tmp_path / checkpoint.CONFIG_FILE).write_text(json.dumps({"seed": 3}))
    assert json.loads(checkpoint.saved_config_json(str(tmp_path))) == {"seed": 3}


# --- a study's records and summaries: a damaged record is set aside and measured again ---

@pytest.mark.parametrize("how", [cut, wrong_type, random_bytes], ids=lambda f: f.__name__)
def test_a_damaged_study_record_is_moved_aside_with_a_warning(tmp_path, caplog, how):
    path = tmp_path / "measured.json"
    path.write_text(json.dumps({"step": 2, "metrics": {"mrtl": 1.5}}, indent=2))
    damage(path, how)
    damaged = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        assert storage.read_saved(str(path)) is None  # the caller measures again
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("measured.json.damaged-")]
    assert aside.read_bytes() == damaged and not path.exists()  # kept for a person, never deleted
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{path} is damaged (") and line.endswith(f"moved it to {aside}, and it is computed again")


def test_a_study_record_without_its_final_newline_is_read(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"runs": ["a"]}))
    assert storage.read_saved(str(path)) == {"runs": ["a"]}


def test_a_damaged_summary_is_moved_aside_and_the_new_one_written(tmp_path, caplog):
    path = tmp_path / "summary.json"
    path.write_bytes(RANDOM)
    assert storage.write_results(str(path), {"runs": ["a"]}) == str(path)
    assert json.loads(path.read_text()) == {"runs": ["a"]}
    (aside,) = [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert aside.read_bytes() == RANDOM and "moved it to" in caplog.text


def test_the_studies_read_their_records_through_the_rule(tmp_path):
    """The λ study's reading of a damaged metrics.jsonl, and the disentanglement study's of a
    damaged run record (set aside; measured again once trained)."""
    study = load_module("experiments/disentanglement.py")
    results = tmp_path / "results"
    results.mkdir()
    (results / "shapes_scratch_lam0_seed0.json").write_bytes(RANDOM)
    lambda_study = load_module("experiments/lambda_study.py")
    (tmp_path / "metrics.jsonl").write_text('{"step": 50, "rank_loss": 3.0}\n{"step": 100, "rank_')
    assert lambda_study.trajectory(str(tmp_path)) == [(50, 3.0)]
    run = study.Run("shapes", 0.0, 0)
    args = type("Args", (), {"results": str(results), "measure_only": True, "out": str(tmp_path / "runs"),
                             "steps": 2})()
    assert study.measured(run, args, {}) is None  # moved aside; not trained, so not measured either
    assert [p.name.split(".damaged-")[0] for p in results.iterdir()] == ["shapes_scratch_lam0_seed0.json"]


# --- safetensors: one line naming the file ---

@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    safetensors_io.write(str(path), {"conv.weight": np.full((4, 3), 0.06, np.float32), "step": np.array(7)})
    return path


def header_of_wrong_type(data: bytes) -> bytes:
    """The JSON header replaced by an array of the same length (the tensors' bytes untouched)."""
    size = int.from_bytes(data[:8], "little")
    return data[:8] + b"[1]".ljust(size) + data[8 + size:]


@pytest.mark.parametrize("how", [cut, lost_newline, header_of_wrong_type, random_bytes], ids=lambda f: f.__name__)
def test_a_damaged_safetensors_file_is_one_line_naming_it(weights, how):
    if how is lost_newline:  # a binary file has no final newline: its last byte lost instead
        how = lambda data: data[:-1]
    damage(weights, how)
    with pytest.raises(UserError) as error:
        safetensors_io.read(str(weights))
    assert one_line(error).startswith(f"{weights} is ")


# --- a trained oracle's and a latent cache's records ---

@pytest.mark.parametrize("how", [cut, wrong_type, random_bytes], ids=lambda f: f.__name__)
def test_a_damaged_oracle_record_is_one_line_saying_how_to_make_it_again(tmp_path, how):
    from isodiff_jax.analysis.networks import oracle
    path = tmp_path / "oracle.json"
    path.write_text(json.dumps({"resolution": 16, "channels": [8], "features": 16}))
    damage(path, how)
    with pytest.raises(storage.DamagedFile) as error:
        oracle.load(str(tmp_path))
    assert one_line(error).startswith(f"{path} is damaged (") and "python -m isodiff_jax.analysis.networks.oracle" in one_line(error)


@pytest.mark.parametrize("how", [cut, wrong_type, random_bytes], ids=lambda f: f.__name__)
def test_a_latent_cache_with_a_damaged_record_is_made_again(tmp_path, caplog, how):
    from isodiff_jax.data import latent_cache
    from isodiff_jax.data.shapes import ShapesSource
    identity = {"data": "shapes", "resolution": 16}
    encode = lambda images: images[:, ::4, ::4, :2]  # any fixed map stands in for the autoencoder
    latent_cache.build(str(tmp_path), ShapesSource(16, 0, size=6), encode, identity, flips=False, batch_size=4)
    record = tmp_path / latent_cache.META
    damage(record, how)
    assert latent_cache.check(str(tmp_path), identity, flips=False) is None  # open_or_build then builds it again
    (aside,) = tmp_path.glob(f"{latent_cache.META}.damaged-*")
    assert f"{record} is damaged" in caplog.text and f"moved it to {aside}" in caplog.text
    rebuilt = latent_cache.open_or_build(str(tmp_path), ShapesSource(16, 0, size=6), encode, identity, flips=False,
                                         batch_size=4)
    assert len(rebuilt) == 6 and rebuilt.get(np.arange(6)).shape == (6, 4, 4, 2)


def test_the_estimator_study_computes_a_damaged_part_again_and_names_damaged_settings(tmp_path, caplog):
    study = load_module("experiments/estimator_accuracy.py")
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "timing.json").write_bytes(RANDOM)
    assert study.part(str(tmp_path), "timing", lambda: {"median_s": 0.5})["median_s"] == 0.5
    assert "computed again" in caplog.text and json.loads((tmp_path / "parts" / "timing.json").read_text())["median_s"] == 0.5
    (tmp_path / "settings.json").write_text('{"settings": {"seeds": 3}')  # cut short
    with pytest.raises(storage.DamagedFile) as error:
        study.check_settings(str(tmp_path), {"settings": {"seeds": 3}, "model": "toy"})
    assert one_line(error) == f"{tmp_path / 'settings.json'} is damaged (not JSON, or cut short: Expecting ',' " \
                              f"delimiter: line 1 column 26 (char 25)): use another --out"
