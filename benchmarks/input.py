"""Input at accelerator speed (issue 13, item 5): images/s of the training input for a 256² JPEG
folder and a TFDS array_record copy of the same images, loaded by one thread (data.workers = 0)
or by W grain worker processes, and the input wait at the rate one accelerator consumes them.

The benchmark makes its data (nothing is downloaded): --images pictures at --side² with photo-like
entropy (a smooth colour field, a shapes object, sensor-like noise), saved as JPEG (quality 90)
in a folder, and the same pixels as PNG-encoded records of a TFDS data set in array_record
format (how TFDS stores celeb_a_hq). Each loader is timed as the training loop drives it:

- throughput: batches of --batch taken as fast as they come, after the first (start-up, shown
  apart), images/s = batch × batches / seconds;
- input wait: a consumer that takes one batch per step of an accelerator running at
  --consume images/s (a sleep: the host is idle while the accelerator computes), and the share
  of time `next()` waited. The default rate is the 256² DDPM model's plain step in bf16 at 40 %
  MFU on one H200: 1.481e12 FLOP per image (XLA's count, benchmarks/results/cpu_256_batch1_*)
  / (0.40 × 989e12 FLOP/s) = 267 images/s, the project's accelerator target, not a measurement.

Usage: python benchmarks/input.py [--images 512] [--side 256] [--batch 64] [--batches 12]
       [--workers 0,1,2] [--consume 267] [--out runs/bench_input] [--json FILE]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_CONSUME = round(0.40 * 989e12 / 1.481e12)  # images/s: see the module docstring


def picture(index: int, side: int) -> np.ndarray:
    """A photo-like uint8 (side, side, 3) image: smooth colour field + one object + noise."""
    from isodiff_jax.data import shapes
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:side, 0:side] / side
    field = sum(rng.uniform(40, 120) * np.sin(2 * np.pi * (rng.uniform(0.3, 2) * xx + rng.uniform(0.3, 2) * yy)
                                              + rng.uniform(0, 2 * np.pi))[..., None] * rng.uniform(0, 1, 3)
                for _ in range(3))
    obj = shapes.ShapesSource(side, index, size=1).get(np.array([0]))[0].astype(np.float64)
    mask = (obj != obj[0, 0]).any(axis=-1, keepdims=True)
    image = np.where(mask, obj, 128 + field) + rng.normal(0, 6, (side, side, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_folder(root: str, count: int, side: int) -> None:
    from PIL import Image
    os.makedirs(root, exist_ok=True)
    for i in range(count):
        path = os.path.join(root, f"{i:05d}.jpg")
        if not os.path.exists(path):
            Image.fromarray(picture(i, side)).save(path, quality=90)


def make_tfds(data_dir: str, count: int, side: int):
    """A TFDS data set `bench_images` of the same pictures (PNG records, array_record), made once."""
    import tensorflow_datasets as tfds
    from PIL import Image

    with tfds.core.registered.skip_registration():
        class BenchImages(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                image = tfds.features.Image(shape=(side, side, 3), encoding_format="png")
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"image": image}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples()}

            def _generate_examples(self):
                for i in range(count):
                    yield i, {"image": Image.fromarray(picture(i, side))}

        BenchImages(data_dir=data_dir, file_format="array_record").download_and_prepare()


def throughput(source, *, workers: int, batch: int, batches: int) -> dict:
    from isodiff_jax.data import pipeline
    started = time.perf_counter()
    with pipeline.prefetch_batches(source, 0, seed=0, global_batch=batch, workers=workers, buffer_size=2) as loader:
        next(loader)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(batches):
            next(loader)
        seconds = time.perf_counter() - started
        load_seconds = getattr(loader, "worker_seconds", loader.load_seconds)
    return {"start_s": first, "images_per_s": batch * batches / seconds,
            "load_ms_per_image": 1e3 * load_seconds / (batch * (batches + 1))}


def input_wait(source, *, workers: int, batch: int, batches: int, consume: float) -> float:
    """The share of time next() waits when each step takes batch / consume seconds."""
    from isodiff_jax.data import pipeline
    step_seconds = batch / consume
    with pipeline.prefetch_batches(source, 0, seed=0, global_batch=batch, workers=workers, buffer_size=2) as loader:
        next(loader)  # start-up is a one-off, not input wait
        time.sleep(2 * step_seconds)  # the first step's compile: the buffer fills meanwhile
        waited, started = loader.wait_seconds, time.perf_counter()
        for _ in range(batches):
            next(loader)
            time.sleep(step_seconds)
        return (loader.wait_seconds - waited) / (time.perf_counter() - started)


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per measurement")
    parser.add_argument("--workers", default="0,1,2", help="worker counts to compare (0: one thread)")
    parser.add_argument("--consume", type=float, default=DEFAULT_CONSUME, help="images/s one accelerator takes")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_input"), help="where the data are made")
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.images < args.batch or args.side < 8 or not counts or min(counts) < 0:
        parser.error("need --images >= --batch, --side >= 8 and worker counts >= 0")

    from isodiff_jax.data import folder, tfds_source
    made = f"{args.images}x{args.side}"
    folder_dir, tfds_dir = os.path.join(args.out, f"jpeg_{made}"), os.path.join(args.out, f"tfds_{made}")
    started = time.perf_counter()
    make_folder(folder_dir, args.images, args.side)
    if not os.path.isdir(os.path.join(tfds_dir, "bench_images")):
        make_tfds(tfds_dir, args.images, args.side)
    print(f"data: {args.images} pictures at {args.side}², made in {time.perf_counter() - started:.0f} s "
          f"(JPEG folder {sum(os.path.getsize(os.path.join(folder_dir, f)) for f in os.listdir(folder_dir)) / 1e6:.1f} MB)")
    sources = {"jpeg folder": folder.FolderSource(folder_dir, resolution=args.side),
               "tfds array_record (png)": tfds_source.TfdsSource("bench_images", resolution=args.side, data_dir=tfds_dir)}
    print(f"cores: {os.cpu_count()}; batch {args.batch}; consumer at {args.consume:g} images/s "
          f"({args.batch / args.consume:.3f} s per step)")
    rows = []
    for name, source in sources.items():
        for workers in counts:
            row = {"source": name, "workers": workers,
                   **throughput(source, workers=workers, batch=args.batch, batches=args.batches),
                   "input_wait_share": input_wait(source, workers=workers, batch=args.batch, batches=args.batches,
                                                  consume=args.consume)}
            rows.append(row)
            print(f"{name:24s} workers={workers}  {row['images_per_s']:7.0f} images/s  "
                  f"load {row['load_ms_per_image']:.2f} ms/image  start {row['start_s']:.1f} s  "
                  f"input wait at {args.consume:g} images/s: {100 * row['input_wait_share']:.1f} %")
    for name in sources:
        ok = [r for r in rows if r["source"] == name and r["input_wait_share"] < 0.05]
        print(f"{name}: " + (f"input wait < 5 % from workers={min(r['workers'] for r in ok)}" if ok
                             else "input wait >= 5 % at every worker count measured"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": args.images, "side": args.side, "batch": args.batch, "consume": args.consume,
                       "cores": os.cpu_count(), "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
