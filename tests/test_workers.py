"""Worker-process loading (data.workers > 0): the batches of the thread loader, bit for bit."""
import numpy as np
import pytest
from PIL import Image

from isodiff_jax import config as config_lib
from configs import test as test_config
from isodiff_jax.data import folder, pipeline, tfds_source, workers
from isodiff_jax.train import loop
from test_data import TinyTestImages  # as pytest imports it (tests/ is on sys.path)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Eleven noisy JPEGs and PNGs of different sizes: batches of 4 cross epochs."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(11):
        pixels = rng.integers(0, 255, (20 + i, 24, 3), np.uint8)
        Image.fromarray(pixels).save(root / f"{i:02d}.{'png' if i % 3 else 'jpg'}", quality=90)
    return folder.FolderSource(root, resolution=16)


def _thread_batches(source, start, count, **kwargs):
    with pipeline.prefetch_batches(source, start, **kwargs) as batches:
        return [next(batches) for _ in range(count)]


def test_workers_load_the_batches_of_the_thread_in_step_order(jpeg_folder):
    """From a resumed step, with flips and this process's rows of a 2-process run, 2 workers give
    exactly the thread's batches (each worker takes every other step), and count their time."""
    kwargs = dict(seed=3, global_batch=8, process_index=1, process_count=2, random_flip=True)
    expected = _thread_batches(jpeg_folder, 5, 5, **kwargs)
    with pipeline.prefetch_batches(jpeg_folder, 5, workers=2, **kwargs) as batches:
        assert isinstance(batches, workers.WorkerPrefetcher)
        got = [next(batches) for _ in range(5)]
        assert batches.step == 10 and batches.worker_seconds > 0 and batches.wait_seconds > 0
    for want, have in zip(expected, got):
        assert have.dtype == np.float32 and have.shape == (4, 16, 16, 3)
        np.testing.assert_array_equal(have, want)
    batches.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        next(batches)


def test_workers_read_tfds_array_records(tmp_path):
    TinyTestImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    source = tfds_source.TfdsSource("tiny_test_images", resolution=8, data_dir=tmp_path)
    expected = _thread_batches(source, 2, 3, seed=0, global_batch=4)
    with pipeline.prefetch_batches(source, 2, seed=0, global_batch=4, workers=1) as batches:
        for want in expected:
            np.testing.assert_array_equal(next(batches), want)


def test_a_worker_error_reaches_the_consumer_by_name(tmp_path):
    """A JPEG cut short is found when a worker decodes it; next() raises the same error type,
    naming the file."""
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "photo.jpg")
    whole = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "photo.jpg").write_bytes(whole[:len(whole) // 2])
    source = folder.FolderSource(tmp_path, resolution=8)
    with (pipeline.prefetch_batches(source, 0, seed=0, global_batch=2, workers=1) as batches,
          pytest.raises(folder.UnreadableImageError, match="photo.jpg")):
        next(batches)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_worker_counts_are_refused_by_name(jpeg_folder, bad):
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        pipeline.prefetch_batches(jpeg_folder, 0, seed=0, global_batch=4, workers=bad)


def test_a_negative_worker_count_is_refused_in_the_config():
    config = test_config.get_config()
    config.data.workers = -1  # (ml_collections itself refuses a value of another type)
    with pytest.raises(config_lib.ConfigError, match="data.workers=-1"):
        config_lib.validate(config)


def test_the_training_loop_loads_with_the_configured_workers(jpeg_folder):
    config = test_config.get_config()
    config.data.workers, config.data.random_flip = 1, True
    setup = config_lib.train_setup(config)
    assert setup.settings.workers == 1
    with loop.input_batches(setup, jpeg_folder, 3) as batches:
        assert isinstance(batches, workers.WorkerPrefetcher)
        got = next(batches)
    kwargs = dict(seed=config.seed, global_batch=config.training.global_batch_size, random_flip=True)
    np.testing.assert_array_equal(got, pipeline.load_batch(jpeg_folder, 3, **kwargs))


@pytest.mark.slow  # runs the benchmark
def test_the_input_benchmark_runs_at_its_smallest(tmp_path, capsys):
    """benchmarks/input.py makes its JPEG folder and TFDS copy and times the thread and a worker."""
    from support import load_module
    bench = load_module("benchmarks/input.py")
    rows = bench.main(["--images", "8", "--side", "16", "--batch", "4", "--batches", "2", "--workers", "0,1",
                       "--consume", "400", "--out", str(tmp_path), "--json", str(tmp_path / "input.json")])
    assert [(r["source"], r["workers"]) for r in rows] == [
        ("jpeg folder", 0), ("jpeg folder", 1), ("tfds array_record (png)", 0), ("tfds array_record (png)", 1)]
    assert all(r["images_per_s"] > 0 and 0 <= r["input_wait_share"] < 1 for r in rows)
    assert len(list((tmp_path / "jpeg_8x16").glob("*.jpg"))) == 8
    assert "input wait" in capsys.readouterr().out
