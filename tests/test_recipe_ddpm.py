"""configs/celebahq256.py, the paper's DDPM recipe: its values, and a tiny stand-in of the same
U-Net family fine-tuned for two steps through train.py's `run(argv)`.

The stand-in keeps every option of google/ddpm-ema-celebahq-256 (padding 0, (sin, cos) order,
frequency shift 1, eps 1e-6, one head, attention at a level and in the middle) at two levels
of 4 and 8 channels on 16² images, and computes in float32: compiling the recipe's step for the
six-level fixture (tests/data/diffusers/celebahq) costs minutes of CPU, and bf16 on CPU half as
much again (tests/test_precision.py checks bf16 against float32). Its weights go the
walkthrough's way: a diffusers folder (written by `to_diffusers`), imported into a workdir.
"""
import json
import os
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from support import ROOT

from configs import celebahq256
from isodiff_jax import checkpoint, pretrained
from isodiff_jax import config as config_lib
from isodiff_jax.pretrained import cli as pretrained_cli

pytestmark = pytest.mark.slow  # the DDPM recipe's training runs


STAND_IN = {"block_out_channels": "(4,8)", "attention_levels": "(False,True)", "layers_per_block": "1",
            "norm_num_groups": "2"}  # config.model overrides; data.resolution 16


def test_the_recipe_is_the_released_scripts():
    c = celebahq256.get_config()
    c.data.data_dir = "/somewhere"
    config_lib.validate(c, num_devices=1)
    o = c.optim
    assert (o.lr, o.warmup_steps, o.decay, o.b1, o.b2, o.weight_decay, o.clip_norm, o.ema_max_decay) == \
        (1e-5, 0, "constant", 0.95, 0.999, 1e-6, 1.0, 0.9999)
    assert (c.regularizer.kind, c.regularizer.weight, c.regularizer.p) == ("sphere", 1e-3, 0.5)
    assert (c.data.resolution, c.data.random_flip, c.model.dtype) == (256, True, "bfloat16")
    lr = config_lib.learning_rate(c)
    assert lr(0) == lr(c.training.num_steps) == 1e-5
    # 5 epochs of 30 000 images: 5 · ⌈30 000 / batch⌉, following the batch size
    assert (c.training.global_batch_size, c.training.num_steps) == (32, 5 * 938)
    c.training.global_batch_size = 64
    assert c.training.num_steps == 5 * 469
    c.training.num_steps = 7  # an explicit value wins
    assert c.training.num_steps == 7


def _image_folder(path, count=6):
    """Non-square RGB images (the pipeline center-crops and resizes them to 16²)."""
    rng = np.random.default_rng(0)
    os.makedirs(path)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(os.path.join(path, f"{i}.png"))
    return path


def _imported_stand_in(tmp_path) -> str:
    """A workdir imported (python -m isodiff_jax.pretrained's path) from a diffusers folder of the
    stand-in with random weights (drawn with numpy: compiling an init costs more than this test)."""
    config = celebahq256.get_config()
    for field, value in STAND_IN.items():
        config.model[field] = eval(value)
    spec = config_lib.model_spec(config)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(np.float32), spec.abstract_params())
    folder = pretrained.to_diffusers(spec.unet, params, spec.schedule, str(tmp_path / "diffusers"), resolution=16)
    imported = str(tmp_path / "imported")
    pretrained_cli.import_folder(folder, imported)
    return imported


def test_a_tiny_stand_in_fine_tunes_through_train_py(train_py, tmp_path, monkeypatch):
    """Imported workdir -> two steps of the recipe (AdamW, EMA, flips, crops). p = 0 (every
    step regularized) so that one step program is compiled instead of two; the gate itself is
    the loop's (tests/test_train_loop.py)."""
    imported = _imported_stand_in(tmp_path)
    workdir = tmp_path / "run"
    argv = ["train.py", "--config", os.path.join(ROOT, "configs", "celebahq256.py"), "--workdir", str(workdir),
            f"--config.training.init_from={imported}", *[f"--config.model.{k}={v}" for k, v in STAND_IN.items()],
            "--config.data.resolution=16", "--config.data.name=folder", "--config.regularizer.p=0.0",
            "--config.model.dtype=float32",
            f"--config.data.data_dir={_image_folder(tmp_path / 'images')}", "--config.training.num_steps=2",
            "--config.training.global_batch_size=4", "--config.checkpoint.every_steps=2",
            "--config.logging.log_every_steps=1", "--config.logging.num_samples=4",
            "--config.logging.sample_steps=2", "--config.logging.progress_bar=False"]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the config overrides from sys.argv
    with pytest.raises(SystemExit) as exit_:
        train_py.run(argv)
    assert exit_.value.code in (None, 0)
    assert checkpoint.all_steps(str(workdir)) == [2]
    saved = json.loads(checkpoint.saved_config_json(str(workdir)))
    assert (saved["optim"]["lr"], saved["optim"]["b1"], saved["optim"]["weight_decay"], saved["regularizer"]["weight"]) \
        == (1e-5, 0.95, 1e-6, 1e-3)
    loaded = checkpoint.load_params(str(workdir))
    unet = loaded.spec.unet
    assert (unet.downsample_padding, unet.flip_sin_to_cos, unet.freq_shift, unet.norm_eps, unet.attention_head_dim) == \
        (0, False, 1.0, 1e-6, None)
    assert all(np.all(np.isfinite(a)) and a.dtype == np.float32 for a in map(np.asarray, jax.tree.leaves(loaded.params)))
