"""Workdirs, data and outputs in a bucket: gs:// served by a real GCS JSON API on localhost
(fake-gcs-server, conftest.py's `gcs_server`; one per test worker, a new bucket per test).

Training resumes bit for bit from a bucket, survives SIGTERM and a damaged newest step there,
the analysis and the diffusers import/export read and write it, image folders are read from it,
and nothing of a bucket run is left on the local disk (no folder named `gs:`, no staged events).
"""
import dataclasses
import glob
import io
import json
import os
import signal
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest
from PIL import Image
from training_support import ROOT, STEPS, SignalWhenRun, assert_identical, saved_state, small_config

from isodiff_jax import checkpoint, launch, storage
from isodiff_jax import config as config_lib
from isodiff_jax.analysis import cli as analysis_cli
from isodiff_jax.data import folder
from isodiff_jax.pretrained import cli as pretrained_cli
from isodiff_jax.train import lock, loop


def _name(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def _upload(local_dir, url: str) -> str:
    """Copies a local folder into the bucket through the storage layer -> url."""
    storage.copy_tree(local_dir, url)
    return url


@pytest.fixture
def local_only(tmp_path, monkeypatch):
    """The test runs in an empty current directory with its own temporary directory, both
    checked afterwards: a bucket run must leave nothing there."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(), tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield
    assert os.listdir(cwd) == [], "a bucket run wrote into the current directory"
    assert os.listdir(tmp) == [], "a bucket run left files in the temporary directory"


def test_the_storage_layer_on_a_bucket(bucket):
    root = f"{bucket}/a"
    storage.write_text(storage.join(root, "x.txt"), "one\n")
    storage.append_text(storage.join(root, "x.txt"), "two\n")
    assert storage.read_text(f"{root}/x.txt") == "one\ntwo\n"
    assert storage.is_file(f"{root}/x.txt") and storage.is_dir(root) and not storage.exists(f"{root}/y")
    # exclusive create: exactly one of two creators wins, and the first content stays
    assert storage.create_exclusive(f"{root}/lock", "first") and not storage.create_exclusive(f"{root}/lock", "second")
    assert storage.read_text(f"{root}/lock") == "first"
    # a folder moved aside: every object copied, then the source deleted
    for part in ("d/1/f", "d/1/g/h", "d/2/f"):
        storage.write_bytes(f"{root}/{part}", part.encode())
    storage.move(f"{root}/d/1", f"{root}/d/1.damaged")
    assert storage.list_dir(f"{root}/d") == ["1.damaged", "2"]
    assert storage.walk_files(f"{root}/d/1.damaged") == [f"{root}/d/1.damaged/f", f"{root}/d/1.damaged/g/h"]
    assert storage.read_bytes(f"{root}/d/1.damaged/g/h") == b"d/1/g/h"
    storage.remove_tree(f"{root}/d")
    storage.remove(f"{root}/lock")
    storage.remove(f"{root}/lock")  # gone already: nothing
    assert not storage.exists(f"{root}/d") and not storage.exists(f"{root}/lock")
    assert not os.path.exists("gs:")


def test_a_second_run_on_a_locked_bucket_workdir_stops(bucket):
    held = lock.acquire(f"{bucket}/run")
    with pytest.raises(lock.WorkdirLocked, match="in use by another training run"):
        lock.acquire(f"{bucket}/run")
    lock.release(held)
    lock.release(lock.acquire(f"{bucket}/run"))


@pytest.mark.slow  # starts train.py processes
def test_a_missing_or_unreachable_bucket_is_one_line(gcs_server, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--config",
                             os.path.join(ROOT, "configs", "test.py"), "--workdir", "gs://no-such-bucket/run"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == "error: the bucket gs://no-such-bucket does not exist (or this account " \
                                    "cannot see it); create it first", result.stderr
    assert os.listdir(tmp_path) == []
    closed = f"http://127.0.0.1:{_closed_port()}"
    os.environ["STORAGE_EMULATOR_HOST"], saved = closed, os.environ["STORAGE_EMULATOR_HOST"]
    try:
        with pytest.raises(storage.StorageUnavailable, match=r"the bucket gs://unreachable cannot be reached"):
            storage.check_reachable("gs://unreachable/run", timeout=3)
    finally:
        os.environ["STORAGE_EMULATOR_HOST"] = saved


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns


@pytest.mark.slow
def test_training_in_a_bucket_stops_on_sigterm_resumes_exactly_and_leaves_nothing_local(
        reference, bucket, gcs_server, local_only):
    """A preemption notice after step 4 (between the checkpoints at 3 and 6), with a profile of
    steps 1-2: step 4 is saved in the bucket; the resume ends bit for bit where the uninterrupted
    local run did. (In process, as train.py runs it: launch.train is what it calls.)"""
    run = f"{bucket}/runs/a"
    setup = config_lib.train_setup(small_config(logging__profile_steps=(1, 3)))
    setup = dataclasses.replace(setup, settings=dataclasses.replace(setup.settings, evaluate_every=4))
    summary = loop.train_and_evaluate(setup, run, evaluators=[SignalWhenRun(signal.SIGTERM)])
    assert (summary["stopped_by"], summary["final_step"], summary["workdir"]) == ("SIGTERM", 4, run)
    assert checkpoint.all_steps(run) == [3, 4]
    resumed = launch.train(small_config(), run)
    assert (resumed["steps"], resumed["stopped_by"]) == (STEPS - 4, None)
    assert_identical(saved_state(run)[1], saved_state(reference[0])[1])
    objects = gcs_server.objects(_name(bucket))
    assert {"runs/a/config.json", "runs/a/metrics.jsonl", "runs/a/evaluation.jsonl",
            "runs/a/samples/step_0000006.png"} <= set(objects)
    assert len([o for o in objects if o.startswith("runs/a/logs/events.out.tfevents.")]) == 2  # one per run
    assert "runs/a/train.lock" not in objects
    profile = [o for o in objects if o.startswith("runs/a/profile/plugins/profile/")]
    assert any(o.endswith(".xplane.pb") for o in profile) and any(o.endswith("perfetto_trace.json.gz") for o in profile)
    logged = [json.loads(line)["step"] for line in storage.read_text(f"{run}/metrics.jsonl").splitlines()]
    assert logged == [2, 4, 6]  # every 2 steps; the stop at 4 logged its interval once
    assert Image.open(io.BytesIO(storage.read_bytes(f"{run}/samples/step_0000006.png"))).size[0] > 16


@pytest.mark.slow
def test_a_damaged_newest_step_in_a_bucket_is_moved_aside_and_trained_again(reference, bucket, gcs_server):
    run = _upload(reference[0], f"{bucket}/run")
    data = [o for o in gcs_server.objects(_name(bucket)) if o.startswith("run/checkpoints/6/state/ocdbt.process_")
            and "/d/" in o]
    assert data
    for name in data:
        storage.remove(f"{bucket}/{name}")
    summary = launch.train(small_config(), run)
    assert summary["steps"] == STEPS - 3
    moved = [d for d in storage.list_dir(f"{run}/checkpoints") if d.startswith("6.damaged-")]
    assert len(moved) == 1 and storage.is_dir(f"{run}/checkpoints/{moved[0]}/state")
    assert checkpoint.all_steps(run) == [3, 6]
    assert_identical(saved_state(run)[1], saved_state(reference[0])[1])


@pytest.mark.slow
def test_analysis_and_diffusers_export_import_in_a_bucket(reference, bucket, tmp_path, local_only):
    run = _upload(reference[0], f"{bucket}/run")
    flags = ["--metrics", "mrtl", "--num_pairs", "4", "--timesteps", "50", "--sample_steps", "4"]
    analysis_cli.main(["--workdir", run, "--out", f"{bucket}/analysis", *flags])
    analysis_cli.main(["--workdir", str(reference[0]), "--out", str(tmp_path / "analysis"), *flags])
    in_bucket = storage.read_json(f"{bucket}/analysis/metrics.json")
    local = storage.read_json(str(tmp_path / "analysis" / "metrics.json"))
    assert in_bucket["workdir"] == run and in_bucket["metrics"] == local["metrics"]
    assert sorted(in_bucket["pictures"]) == sorted(local["pictures"])
    for picture in in_bucket["pictures"]:
        assert storage.read_bytes(f"{bucket}/analysis/{picture}")[:8] == b"\x89PNG\r\n\x1a\n"

    pretrained_cli.main(["--export", run, "--out", f"{bucket}/exported"])
    pretrained_cli.main([f"{bucket}/exported", "--workdir", f"{bucket}/imported", "--data_name", "shapes"])
    exported = checkpoint.load_params(run, mesh=None)
    imported = checkpoint.load_params(f"{bucket}/imported", ema=False)
    assert_identical(jax.device_get(imported.params), jax.device_get(exported.params))
    assert storage.is_file(f"{bucket}/imported/config.py")


def test_an_image_folder_in_a_bucket_reads_as_the_local_copy(bucket, tmp_path):
    rng = np.random.default_rng(0)
    for i, suffix in enumerate(("png", "jpg", "png")):
        os.makedirs(tmp_path / "images" / f"class_{i % 2}", exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8)).save(tmp_path / "images" / f"class_{i % 2}" /
                                                                          f"{i}.{suffix}")
    url = _upload(tmp_path / "images", f"{bucket}/images")
    local, remote = (folder.FolderSource(p, resolution=8) for p in (tmp_path / "images", url))
    assert [os.path.relpath(p, tmp_path / "images") for p in local.paths] == \
        [p[len(url) + 1:] for p in remote.paths]
    np.testing.assert_array_equal(remote.get(np.arange(3)), local.get(np.arange(3)))
    with pytest.raises(folder.ImageFolderNotFoundError, match="does not exist"):
        folder.FolderSource(f"{bucket}/no-images", resolution=8)
    assert not glob.glob("gs:*")


def test_a_tfds_data_dir_in_a_bucket_is_copied_once_and_reads_as_the_local_one(bucket, tmp_path, monkeypatch):
    from test_data import TinyTestImages
    from isodiff_jax.data import tfds_source
    TinyTestImages(data_dir=tmp_path / "tfds", file_format="array_record").download_and_prepare()
    url = _upload(tmp_path / "tfds", f"{bucket}/tfds")
    monkeypatch.setenv("ISODIFF_CACHE", str(tmp_path / "cache"))
    local = tfds_source.TfdsSource("tiny_test_images", resolution=8, data_dir=tmp_path / "tfds")
    remote = tfds_source.TfdsSource("tiny_test_images", resolution=8, data_dir=url)
    np.testing.assert_array_equal(remote.get(np.arange(6)), local.get(np.arange(6)))
    copied = glob.glob(str(tmp_path / "cache" / "tfds" / _name(bucket) / "tfds" / "tiny_test_images" / "*" / "*"))
    assert len(copied) == 3, copied  # dataset_info.json, features.json, the ArrayRecord shard
    record = next(c for c in copied if "array_record" in c)
    before = os.stat(record).st_mtime_ns
    tfds_source.TfdsSource("tiny_test_images", resolution=8, data_dir=url)
    assert os.stat(record).st_mtime_ns == before  # the second start copies nothing
    with pytest.raises(tfds_source.DataNotPreparedError, match="does not exist"):
        tfds_source.TfdsSource("tiny_test_images", resolution=8, data_dir=f"{bucket}/nothing")
