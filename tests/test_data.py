"""Input pipelines: synthetic shapes, image folders, TFDS (mocked and a real prepared copy), and
batches as pure functions of (seed, step)."""
import os
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from isodiff_jax import data
from isodiff_jax.data import digits, folder, pipeline, shapes, tfds_source
from isodiff_jax.errors import UserError

# ---------------------------------------------------------------- shapes


def test_shapes_are_a_function_of_seed_and_index_only():
    source = shapes.ShapesSource(16, seed=3, size=1000)
    alone = source.get(np.array([7]))
    batched = source.get(np.array([900, 7, 0]))
    np.testing.assert_array_equal(batched[1], alone[0])
    np.testing.assert_array_equal(source.get(np.array([900, 7, 0])), batched)
    factors = shapes.sample_factors(3, np.array([900, 7, 0]))
    for name in shapes.FACTORS:
        assert factors[name][1] == shapes.sample_factors(3, np.array([7]))[name][0]
    other_seed = shapes.ShapesSource(16, seed=4, size=1000).get(np.array([900, 7, 0]))
    assert all(not np.array_equal(a, b) for a, b in zip(other_seed, batched))


def test_factors_stay_in_their_ranges_and_apart():
    factors = shapes.sample_factors(0, np.arange(3000))
    assert set(factors) == set(shapes.FACTORS)
    assert np.array_equal(np.unique(factors["shape"]), [0, 1, 2])
    for name, (low, high) in shapes.FACTOR_RANGES.items():
        assert low <= factors[name].min() and factors[name].max() < high, name
        assert factors[name].max() - factors[name].min() > 0.9 * (high - low), name
    gap = np.abs(factors["object_hue"] - factors["background_hue"])
    assert np.minimum(gap, 1 - gap).min() >= shapes.MIN_HUE_GAP - 1e-12
    for centre in (factors["x"], factors["y"]):  # the whole object is inside the image
        assert (centre - factors["scale"] / 2).min() > 0.0
        assert (centre + factors["scale"] / 2).max() < 1.0


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_render_shape_and_agreement_with_source(resolution):
    source = shapes.ShapesSource(resolution, seed=1, size=50)
    images = source.get(np.arange(6))
    assert images.shape == (6, resolution, resolution, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, shapes.render(source.factors(np.arange(6)), resolution))


def test_object_at_its_centre_background_in_the_corners():
    resolution = 64
    factors = shapes.sample_factors(5, np.arange(30))
    images = shapes.render(factors, resolution).astype(int)
    obj, background = (np.round(255 * c).astype(int) for c in shapes.colours(factors))
    rows = np.floor(factors["y"] * resolution).astype(int)
    cols = np.floor(factors["x"] * resolution).astype(int)
    for b in range(30):
        assert np.abs(images[b, rows[b], cols[b]] - obj[b]).max() <= 1
        for corner in (images[b, 0, 0], images[b, 0, -1], images[b, -1, 0], images[b, -1, -1]):
            assert np.abs(corner - background[b]).max() <= 1
        assert np.abs(obj[b] - background[b]).max() > 60  # clearly distinguishable


def _coverage(factors, images):
    """Per-pixel object coverage read back from images (B, R, R, 3), via the most contrasting
    channel: exactly 0 on the background and 1 inside the object."""
    obj, background = (np.round(255 * c) for c in shapes.colours(factors))
    channel = np.argmax(np.abs(obj - background), axis=1)
    b = np.arange(len(channel))
    pixels = images[b, :, :, channel].astype(float)
    return (pixels - background[b, channel, None, None]) / (obj - background)[b, channel, None, None]


def test_edges_are_anti_aliased_and_areas_match():
    factors = shapes.sample_factors(2, np.arange(60))
    coverage = _coverage(factors, shapes.render(factors, 64))
    partial = (coverage > 0.05) & (coverage < 0.95)
    assert partial.any(axis=(1, 2)).all()  # every image has intermediate edge pixels
    side = factors["scale"]
    exact_area = np.choose(factors["shape"], [np.pi * side**2 / 4, side**2, np.sqrt(3) / 4 * side**2])
    np.testing.assert_allclose(coverage.mean(axis=(1, 2)), exact_area, rtol=0.02)


def test_render_draws_edited_factors():
    factors = shapes.sample_factors(0, np.arange(2))
    moved = dict(factors, x=np.array([0.3, 0.3]), y=np.array([0.5, 0.5]), scale=np.array([0.4, 0.4]))
    coverage = _coverage(moved, shapes.render(moved, 32))
    columns = coverage.sum(axis=1)  # (B, R): object mass per column
    assert (columns[:, 20:] < 1e-6).all() and (columns[:, 6:12] > 0.5).all()
    with pytest.raises(ValueError, match="shape"):
        shapes.render(dict(factors, shape=np.array([0, 3])), 8)


def test_shapes_render_speed():
    factors = shapes.sample_factors(0, np.arange(256))
    shapes.render(factors, 32)
    start = time.perf_counter()
    shapes.render(factors, 32)
    assert time.perf_counter() - start < 0.05


# ---------------------------------------------------------------- pipeline


class _IndexImages:
    """Image i has i in channel 0 and its column number in channel 1, so a batch reveals its
    indices and flips."""

    def __init__(self, size, resolution=4):
        self.size, self.resolution = size, resolution

    def __len__(self):
        return self.size

    def get(self, indices):
        images = np.zeros((len(indices), self.resolution, self.resolution, 3), np.uint8)
        images[..., 0] = np.asarray(indices)[:, None, None]
        images[..., 1] = np.arange(self.resolution)
        return images


def _decode(batch):
    """(indices (B,), flipped (B,)) of a batch of _IndexImages."""
    pixels = np.round((batch + 1) * 127.5).astype(int)
    return pixels[:, 0, 0, 0], pixels[:, 0, 0, 1] != 0


def test_every_example_once_per_epoch():
    n, batch = 10, 4
    positions = np.concatenate([pipeline.batch_indices(7, s, batch, n) for s in range(5)])
    first, second = positions[:n], positions[n:2 * n]
    assert sorted(first) == sorted(second) == list(range(n))
    assert not np.array_equal(first, second)  # a fresh order each epoch
    np.testing.assert_array_equal(pipeline.batch_indices(7, 3, batch, n), positions[12:16])
    assert not np.array_equal(pipeline.batch_indices(8, 0, 8, 100), pipeline.batch_indices(7, 0, 8, 100))


def test_batch_shows_the_scheduled_examples_in_range():
    source = _IndexImages(size=50)
    batch = pipeline.load_batch(source, 4, seed=1, global_batch=8)
    assert batch.shape == (8, 4, 4, 3) and batch.dtype == np.float32
    assert -1.0 <= batch.min() and batch.max() <= 1.0
    indices, flipped = _decode(batch)
    np.testing.assert_array_equal(indices, pipeline.batch_indices(1, 4, 8, 50))
    assert not flipped.any()


def test_process_slices_concatenate_to_the_global_batch():
    source = _IndexImages(size=30)
    whole = pipeline.load_batch(source, 5, seed=2, global_batch=8, random_flip=True)
    parts = [pipeline.load_batch(source, 5, seed=2, global_batch=8, process_index=p,
                                 process_count=4, random_flip=True) for p in range(4)]
    assert all(part.shape == (2, 4, 4, 3) for part in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_flips_are_deterministic_per_seed_step_and_row():
    source = _IndexImages(size=100)
    batch = pipeline.load_batch(source, 3, seed=0, global_batch=64, random_flip=True)
    np.testing.assert_array_equal(
        batch, pipeline.load_batch(source, 3, seed=0, global_batch=64, random_flip=True))
    indices, flipped = _decode(batch)
    np.testing.assert_array_equal(flipped, pipeline.flip_mask(0, 3, 64))
    assert 0 < flipped.sum() < 64
    np.testing.assert_array_equal(indices, pipeline.batch_indices(0, 3, 64, 100))
    columns = np.round((batch[:, 0, :, 1] + 1) * 127.5)
    np.testing.assert_array_equal(columns[flipped], np.tile([3, 2, 1, 0], (flipped.sum(), 1)))


def test_batch_configuration_errors():
    source = _IndexImages(size=10)
    with pytest.raises(ValueError, match="does not divide"):
        pipeline.load_batch(source, 0, seed=0, global_batch=6, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        pipeline.load_batch(source, 0, seed=0, global_batch=8, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="step"):
        pipeline.batch_indices(0, -1, 4, 10)
    with pytest.raises(ValueError, match="does not divide"):
        pipeline.prefetch_batches(source, 0, seed=0, global_batch=6, process_count=4)


def test_prefetcher_resumes_at_any_step():
    source = _IndexImages(size=13)
    options = {"seed": 4, "global_batch": 6, "process_index": 1, "process_count": 2,
               "random_flip": True}
    with (pipeline.prefetch_batches(source, 0, **options) as from_start,
          pipeline.prefetch_batches(source, 5, **options) as resumed):
        early = [next(from_start) for _ in range(8)]
        late = [next(resumed) for _ in range(3)]
        assert resumed.step == 8
    for step in range(8):
        np.testing.assert_array_equal(early[step], pipeline.load_batch(source, step, **options))
    for batch, step in zip(late, range(5, 8)):
        np.testing.assert_array_equal(batch, early[step])


def test_prefetcher_raises_worker_errors_in_the_consumer():
    def load(step):
        if step == 2:
            raise folder.UnreadableImageError("/data/broken.png", "truncated")
        return step

    prefetcher = pipeline.Prefetcher(load, 0)
    assert [next(prefetcher), next(prefetcher)] == [0, 1]
    with pytest.raises(folder.UnreadableImageError, match="broken.png"):
        next(prefetcher)
    with pytest.raises(folder.UnreadableImageError):
        next(prefetcher)
    assert not prefetcher._thread.is_alive()


def test_prefetcher_closes_its_thread_and_counts_waiting():
    def slow_load(step):
        time.sleep(0.02)
        return step

    with pipeline.Prefetcher(slow_load, 10, buffer_size=1) as prefetcher:
        assert [next(prefetcher) for _ in range(3)] == [10, 11, 12]
        assert prefetcher.wait_seconds > 0.02 and prefetcher.load_seconds > 0.06
        time.sleep(0.1)  # the worker now blocks on the full queue
    assert not prefetcher._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        next(prefetcher)
    assert not any(t.name == "Prefetcher" and t.is_alive() for t in threading.enumerate())


# ---------------------------------------------------------------- image folders


def _write(path, image_array, **save_options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_array).save(path, **save_options)


def _solid(height, width, colour):
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


@pytest.fixture
def image_folder(tmp_path):
    """Three images of different sizes and formats (one upper-case, one nested), plus a text
    file to ignore."""
    root = tmp_path / "images"
    _write(root / "b.png", _solid(30, 40, (200, 10, 10)))
    _write(root / "nested" / "c.JPG", _solid(50, 25, (10, 200, 10)), quality=95)
    _write(root / "a.jpeg", _solid(16, 16, (10, 10, 200)), quality=95)
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_loads_sorted_resized_rgb(image_folder):
    source = data.make_source("folder", resolution=8, seed=0, data_dir=image_folder)
    assert len(source) == 3
    assert [p.name for p in source.paths] == ["a.jpeg", "b.png", "c.JPG"]
    images = source.get(np.array([0, 1, 2]))
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    expected = np.array([(10, 10, 200), (200, 10, 10), (10, 200, 10)])
    assert np.abs(images.astype(int) - expected[:, None, None, :]).max() <= 4
    batch = pipeline.load_batch(source, 0, seed=0, global_batch=3)
    assert batch.shape == (3, 8, 8, 3) and -1.0 <= batch.min() and batch.max() <= 1.0


def test_fit_to_resolution_takes_the_centre_square():
    image = _solid(10, 30, (255, 0, 0))
    image[:, 10:20] = (0, 255, 0)  # the centre square is green, the sides red
    np.testing.assert_array_equal(folder.fit_to_resolution(image, 10), image[:, 10:20])
    halved = folder.fit_to_resolution(np.repeat(np.repeat(image, 2, 0), 2, 1), 10)
    assert np.abs(halved[2:-2, 2:-2].astype(int) - (0, 255, 0)).max() <= 2
    grey = folder.fit_to_resolution(np.full((12, 12, 1), 77, np.uint8), 6)
    assert grey.shape == (6, 6, 3) and (grey == 77).all()


def _palette_image(index):
    image = Image.new("P", (4, 4), index)
    image.putpalette([0, 0, 0, 10, 120, 230])
    return image


def _over_white(colour, alpha):
    """The hand computation the folder promises: round((c·a + 255·(255 − a)) / 255)."""
    return tuple(int(np.floor((c * alpha + 255 * (255 - alpha)) / 255 + 0.5)) for c in colour)


# mode: (the 4 × 4 image, file suffix, save options, its pixel as loaded, worked out by hand).
# A folder lists PNG and JPEG files only; I;16B, I and F come from TIFF through `load_image`,
# which decodes anything Pillow reads.
_MODE_CASES = {
    "1": (Image.new("1", (4, 4), 1), ".png", {}, (255, 255, 255)),
    "L": (Image.new("L", (4, 4), 77), ".png", {}, (77, 77, 77)),
    "L transparency": (Image.new("L", (4, 4), 77), ".png", {"transparency": 77}, (255, 255, 255)),
    "LA": (Image.new("LA", (4, 4), (200, 64)), ".png", {}, _over_white((200,) * 3, 64)),
    "P": (_palette_image(1), ".png", {}, (10, 120, 230)),
    "P transparency": (_palette_image(1), ".png", {"transparency": 1}, (255, 255, 255)),
    "P alpha": (_palette_image(1), ".png", {"transparency": b"\xff\x80"},
                _over_white((10, 120, 230), 128)),
    "RGB": (Image.new("RGB", (4, 4), (200, 10, 10)), ".png", {}, (200, 10, 10)),
    "RGB transparency": (Image.new("RGB", (4, 4), (200, 10, 10)), ".png",
                         {"transparency": (200, 10, 10)}, (255, 255, 255)),
    "RGBA": (Image.new("RGBA", (4, 4), (200, 10, 10, 64)), ".png", {},
             _over_white((200, 10, 10), 64)),
    "RGBA transparent": (Image.new("RGBA", (4, 4), (200, 10, 10, 0)), ".png", {}, (255, 255, 255)),
    # JPEG stores CMYK inverted (Adobe); R = round((255 − C)(255 − K) / 255).
    "CMYK": (Image.new("CMYK", (4, 4), (20, 100, 200, 40)), ".jpg", {"quality": 100},
             tuple(round((255 - c) * (255 - 40) / 255) for c in (20, 100, 200))),
    # Written unconverted, decoded to RGB by JFIF: R = Y + 1.402 (Cr − 128),
    # G = Y − 0.344136 (Cb − 128) − 0.714136 (Cr − 128), B = Y + 1.772 (Cb − 128).
    "YCbCr": (Image.new("YCbCr", (4, 4), (120, 90, 170)), ".jpg", {"quality": 100},
              (round(120 + 1.402 * 42), round(120 + 0.344136 * 38 - 0.714136 * 42),
               round(120 - 1.772 * 38))),
    # 16 bits: round(v · 255 / 65535) = round(v / 257); 1000 -> 3.89 -> 4 (not 255), 40000 -> 156.
    "I;16": (Image.fromarray(np.full((4, 4), 1000, np.uint16)), ".png", {}, (4, 4, 4)),
    "I;16 transparency": (Image.fromarray(np.full((4, 4), 1000, np.uint16)), ".png",
                          {"transparency": 1000}, (255, 255, 255)),
    "I;16B": (Image.fromarray(np.full((4, 4), 40000, ">u2")), ".tif", {}, (156, 156, 156)),
    "I": (Image.fromarray(np.full((4, 4), 40000, np.int32)), ".tif", {}, (156, 156, 156)),
    "F": (Image.fromarray(np.full((4, 4), 0.25, np.float32)), ".tif", {}, (64, 64, 64)),  # 63.75
}


@pytest.mark.parametrize("case", _MODE_CASES)
def test_every_mode_loads_as_it_looks(tmp_path, case):
    image, suffix, options, expected = _MODE_CASES[case]
    path = tmp_path / f"image{suffix}"
    image.save(path, **options)
    with Image.open(path) as written:  # the file holds the mode under test
        assert written.mode == case.split()[0] or (case, written.mode) == ("YCbCr", "RGB")
    np.testing.assert_array_equal(folder.load_image(path, 4),
                                  np.full((4, 4, 3), expected, np.uint8))


@pytest.mark.parametrize("value", [-1, 65536])
def test_wide_integers_outside_16_bits_are_refused(tmp_path, value):
    Image.fromarray(np.full((4, 4), value, np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(folder.UnreadableImageError, match=r"wide.tif.*0\.\.65535"):
        folder.load_image(tmp_path / "wide.tif", 4)


@pytest.mark.parametrize("value", [-0.1, 1.5, np.nan])
def test_floats_outside_0_1_are_refused(tmp_path, value):
    Image.fromarray(np.full((4, 4), value, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(folder.UnreadableImageError, match=r"float.tif.*\[0, 1\]"):
        folder.load_image(tmp_path / "float.tif", 4)


def test_arrays_are_scaled_not_clipped():
    def pixel(array):
        return tuple(folder.fit_to_resolution(array, 2)[0, 0])

    assert pixel(np.full((2, 2), 1000, np.uint16)) == (4, 4, 4)
    assert pixel(np.full((2, 2, 3), [65535, 40000, 0], np.uint16)) == (255, 156, 0)
    assert pixel(np.full((2, 2, 1), 0.25, np.float32)) == (64, 64, 64)
    assert pixel(np.full((2, 2, 3), [1.0, 0.5, 0.0], np.float64)) == (255, 128, 0)
    assert pixel(np.ones((2, 2), bool)) == (255, 255, 255)
    assert pixel(np.full((2, 2, 4), [200, 10, 10, 64], np.uint8)) == _over_white((200, 10, 10), 64)
    assert pixel(np.full((2, 2, 2), [200, 64], np.uint8)) == _over_white((200,) * 3, 64)
    pa = Image.new("PA", (2, 2), (1, 128))
    pa.putpalette([0, 0, 0, 10, 120, 230])
    assert pixel(pa) == _over_white((10, 120, 230), 128)
    for array, match in [(np.full((2, 2), 2.0, np.float32), r"\[0, 1\]"),
                         (np.full((2, 2), 7, np.int64), "int64"),
                         (np.zeros((2, 2, 5), np.uint8), "channels")]:
        with pytest.raises(folder.UnsupportedImageError, match=match) as error:
            folder.fit_to_resolution(array, 2)
        assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)


def test_unreadable_files_are_refused_before_training(image_folder):
    (image_folder / "nested" / "zz_garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    whole = image_folder / "b.png"
    (image_folder / "b_truncated.png").write_bytes(whole.read_bytes()[:-20])  # IEND cut off
    with pytest.raises(folder.UnreadableImageError, match="b_truncated.png") as error:
        data.make_source("folder", resolution=8, seed=0, data_dir=image_folder)
    assert isinstance(error.value, UserError) and isinstance(error.value, OSError)
    assert error.value.path == image_folder / "b_truncated.png"
    assert "2 of 5 files" in str(error.value)


def test_truncated_jpeg_is_named_when_decoded(tmp_path):
    # A JPEG's header is sound and its end is not checked (motion photos append data after
    # the end marker), so the cut is found when the image is decoded.
    _write(tmp_path / "a.png", _solid(8, 8, (1, 2, 3)))
    _write(tmp_path / "photo.jpg", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    whole = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "photo.jpg").write_bytes(whole[:len(whole) // 2])  # cut inside the scan data
    source = folder.FolderSource(tmp_path, resolution=8)
    with pytest.raises(folder.UnreadableImageError, match="photo.jpg") as error:
        source.get(np.array([0, 1]))
    assert error.value.path == tmp_path / "photo.jpg"
    with (pipeline.prefetch_batches(source, 0, seed=0, global_batch=2) as batches,
          pytest.raises(folder.UnreadableImageError, match="photo.jpg")):
        next(batches)


def test_large_folder_check_shows_progress(image_folder, monkeypatch, capsys):
    monkeypatch.setattr(folder, "PROGRESS_MIN_FILES", 2)
    folder.FolderSource(image_folder, resolution=8)
    assert "checking 3 images" in capsys.readouterr().err


def test_empty_or_missing_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty") as error:
        folder.FolderSource(tmp_path / "empty", resolution=8)
    assert isinstance(error.value, UserError)
    with pytest.raises(FileNotFoundError, match="missing"):
        folder.FolderSource(tmp_path / "missing", resolution=8)


# ---------------------------------------------------------------- TFDS


def test_tfds_source_under_mock_data(tmp_path):
    # USE_CODE needs no metadata files and serves random examples of the real feature spec
    # through the real `tfds.data_source` -> ArrayRecordDataSource path (no TensorFlow).
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        source = data.make_source("cifar10", resolution=16, seed=0, data_dir=tmp_path)
        assert len(source) == 12
        images = source.get(np.array([3, 0, 11]))
        assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
        batch = pipeline.load_batch(source, 1, seed=0, global_batch=4, random_flip=True)
    assert batch.shape == (4, 16, 16, 3) and batch.dtype == np.float32
    assert -1.0 <= batch.min() and batch.max() <= 1.0


with tfds.core.registered.skip_registration():  # only its prepared files are read back

    class TinyTestImages(tfds.core.GeneratorBasedBuilder):
        """Six solid-colour images of different, non-square sizes."""

        VERSION = tfds.core.Version("1.0.0")
        COLOURS = tuple((40 * i, 255 - 40 * i, 100) for i in range(6))

        def _info(self):
            features = tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(None, None, 3), encoding_format="png")})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, colour in enumerate(self.COLOURS):  # PIL images: encoding needs no TensorFlow
                yield i, {"image": Image.fromarray(_solid(12 + 3 * i, 20, colour))}


def test_tfds_source_reads_a_prepared_array_record_copy(tmp_path):
    TinyTestImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    source = tfds_source.TfdsSource("tiny_test_images", resolution=8, data_dir=tmp_path)
    images = source.get(np.arange(6))
    assert images.shape == (6, 8, 8, 3)
    assert (images == images[:, :1, :1]).all()  # solid colours stay solid
    assert sorted(map(tuple, images[:, 0, 0].tolist())) == sorted(TinyTestImages.COLOURS)


def test_tfds_copy_without_random_access_is_explained(tmp_path):
    TinyTestImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
    # Writing TFRecord needs TensorFlow; relabel the copy instead, as `tfds build` would have
    # labelled it without --file_format.
    info_path = next(tmp_path.glob("tiny_test_images/*/dataset_info.json"))
    info_path.write_text(info_path.read_text().replace('"array_record"', '"tfrecord"'))
    with pytest.raises(tfds_source.DataNotPreparedError, match="no random access"):
        tfds_source.TfdsSource("tiny_test_images", resolution=8, data_dir=tmp_path)


def test_missing_tfds_data_says_where_and_how(tmp_path):
    with pytest.raises(tfds_source.DataNotPreparedError) as error:
        data.make_source("cifar10", resolution=32, seed=0, data_dir=tmp_path / "tfds")
    message = str(error.value)
    assert "'cifar10'" in message and str(tmp_path / "tfds") in message
    assert "tfds build cifar10 " in message and "--file_format=array_record" in message
    assert str(tmp_path / "tfds" / "cifar10") in message
    with pytest.raises(tfds_source.DataNotPreparedError, match="manual download"):
        data.make_source("celeb_a_hq/256", resolution=32, seed=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="no_such_data_set"):
        data.make_source("no_such_data_set", resolution=32, seed=0, data_dir=tmp_path)


# ---------------------------------------------------------------- make_source


def test_make_source_names_and_misconfigurations(tmp_path):
    assert [data.source_kind(n) for n in ("shapes", "digits", "folder", "cifar10")] == list(data.DATASETS)
    shapes_source = data.make_source("shapes", resolution=8, seed=1, size=20)
    assert isinstance(shapes_source, shapes.ShapesSource) and len(shapes_source) == 20
    assert len(data.make_source("shapes", resolution=8, seed=1)) == shapes.DEFAULT_SIZE
    for name, options, match in [
        ("folder", {}, "needs data_dir"),
        ("cifar10", {}, "needs data_dir"),
        ("cifar10", {"data_dir": tmp_path, "size": 5}, "size"),
        ("shapes", {"data_dir": tmp_path}, "built in"),
        ("digits", {"data_dir": tmp_path}, "built in"),
        ("digits", {"size": 5}, "size"),
        ("shapes", {"split": "test"}, "split"),
        ("tfds", {"data_dir": tmp_path}, "kind"),
        ("", {}, "non-empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            data.make_source(name, resolution=8, seed=0, **options)


# ---------------------------------------------------------------- digits


def test_digits_are_the_scikit_learn_scans_upsampled():
    from sklearn.datasets import load_digits
    source = data.make_source("digits", resolution=16, seed=3)
    assert len(source) == digits.NUM_EXAMPLES == 1797
    images = source.get(np.array([0, 5, 1796]))
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey in every channel
    scans = load_digits()
    np.testing.assert_array_equal(source.labels(np.array([0, 5, 1796])), scans.target[[0, 5, 1796]])
    # 2× bilinear upsampling: each 2×2 block's mean follows the 8×8 scan (white strokes on black)
    blocks = images[0, :, :, 0].reshape(8, 2, 8, 2).mean(axis=(1, 3))
    assert np.corrcoef(blocks.ravel(), scans.images[0].ravel())[0, 1] > 0.95
    assert images.max() == 255 and images.min() == 0
    with pytest.raises(IndexError):
        source.get(np.array([1797]))


def test_a_digits_config_trains_without_data_dir():
    from configs import digits16
    from isodiff_jax import config as config_lib
    c = digits16.get_config()
    config_lib.validate(c, 1)
    assert config_lib.model_spec(c).data.source().get(np.array([0])).shape == (1, 16, 16, 3)


class _Recording:
    """A source that records the indices it is asked for."""

    def __init__(self, source):
        self.source, self.asked = source, []

    def __len__(self):
        return len(self.source)

    def get(self, indices):
        self.asked += [int(i) for i in indices]
        return self.source.get(indices)


@pytest.mark.parametrize("kind", ["shapes", "folder", "tfds"])
def test_each_process_loads_only_its_rows_and_together_they_make_the_batch(kind, tmp_path):
    """Multi-host input: process p of 2 asks its source for its half of the rows of every global
    batch (pipeline.process_rows), never the other half, and the halves stacked are the batch a
    single process loads. (The loader takes the process index as an argument; the 2-process
    training test shows the same end to end, through jax.distributed.)"""
    if kind == "shapes":
        source = shapes.ShapesSource(8, seed=0, size=64)
    elif kind == "folder":
        rng = np.random.default_rng(0)
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), np.uint8)).save(tmp_path / f"{i:02d}.png")
        source = folder.FolderSource(tmp_path, resolution=8)
    else:
        TinyTestImages(data_dir=tmp_path, file_format="array_record").download_and_prepare()
        source = tfds_source.TfdsSource("tiny_test_images", resolution=8, data_dir=tmp_path)
    batch = 6 if kind == "tfds" else 8  # one epoch of the tiny TFDS set: no example twice in a batch
    for step in (0, 1, 5):
        whole = pipeline.load_images(source, step, seed=3, global_batch=batch, random_flip=True)
        parts = [_Recording(source), _Recording(source)]
        halves = [pipeline.load_images(part, step, seed=3, global_batch=batch, process_index=p, process_count=2,
                                       random_flip=True) for p, part in enumerate(parts)]
        expected = pipeline.batch_indices(3, step, batch, len(source))
        assert parts[0].asked == list(expected[:batch // 2]) and parts[1].asked == list(expected[batch // 2:])
        assert not set(parts[0].asked) & set(parts[1].asked)
        np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_a_symlink_loop_in_a_folder_lists_each_image_once(tmp_path):
    """`ln -s . sub/loop` made os.walk(followlinks=True) list each image under sub/ 41 times
    (413 files for 13 images): the data set silently reweighted."""
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(13):
        where = tmp_path / ("sub" if i % 2 else ".") / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), np.uint8)).save(where)
    os.symlink(".", tmp_path / "sub" / "loop")
    os.symlink("..", tmp_path / "sub" / "up")
    source = folder.FolderSource(tmp_path, resolution=4)
    assert len(source) == 13
    assert sorted(p.name for p in source.paths) == [f"{i:02d}.png" for i in range(13)]
