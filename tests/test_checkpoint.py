"""Checkpoints: a damaged newest checkpoint falls back to the previous intact one with a warning
naming what was wrong; nothing non-finite is saved; fingerprints catch garbled values."""
import glob
import json
import logging
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import cut, damage, random_bytes, wrong_type

from isodiff_jax import checkpoint, sharding, storage
from isodiff_jax import config as config_lib
from isodiff_jax.train import loop


def state_dir(workdir, step):
    return os.path.join(workdir, "checkpoints", str(step), "state")


def delete_chunks(workdir, step):
    for path in glob.glob(os.path.join(state_dir(workdir, step), "ocdbt.process_*", "d", "*")):
        os.remove(path)


def garble_manifest(workdir, step):
    path = os.path.join(state_dir(workdir, step), "manifest.ocdbt")
    with open(path, "wb") as f:
        f.write(b"\x00garbage" * 16)


def delete_metadata(workdir, step):
    os.remove(os.path.join(state_dir(workdir, step), "_METADATA"))


def empty_newer_step(workdir, step):
    os.makedirs(os.path.join(workdir, "checkpoints", str(step + 100)))


def garble_chunks(workdir, step):
    """Overwrites 64 bytes in every KiB of every data file with other bytes of the same length, so
    that every chunk is hit whatever layout the asynchronous save gave the files (one spot in
    the middle of each file missed the parameters' chunks in some runs)."""
    for path in glob.glob(os.path.join(state_dir(workdir, step), "ocdbt.process_*", "d", "*")):
        data = bytearray(open(path, "rb").read())
        for start in range(0, len(data), 1024):
            data[start:start + 64] = bytes((b + 97) % 256 for b in data[start:start + 64])
        open(path, "wb").write(bytes(data))


def wrong_fingerprint(workdir, step):
    """A finite, well-formed checkpoint whose values no longer match what was saved (as garbled
    chunks that still decode would give)."""
    path = os.path.join(workdir, "checkpoints", str(step), "integrity", "metadata")
    prints = json.load(open(path))
    name = sorted(k for k in prints if k.startswith("ema_params/"))[0]
    prints[name] = [prints[name][0], prints[name][1] * 1.5, prints[name][2]]
    json.dump(prints, open(path, "w"))


# damage -> (step load_params gives, step a full restore gives): parameters alone still load
# (and match their fingerprints) without the state's _METADATA; the stray directory is step 104
DAMAGES = {delete_chunks: (2, 2), garble_manifest: (2, 2), delete_metadata: (4, 2), empty_newer_step: (4, 4),
           garble_chunks: (2, 2), wrong_fingerprint: (2, 2)}


@pytest.fixture
def workdir(trained_workdir, tmp_path):
    """A copy of the shared test run (checkpoints at steps 2 and 4)."""
    copy = str(tmp_path / "run")
    shutil.copytree(trained_workdir, copy)
    assert checkpoint.all_steps(copy) == [2, 4]
    return copy


def abstract_state(workdir):
    config = config_lib.from_json(checkpoint.saved_config_json(workdir))
    return loop.abstract_state(config_lib.train_setup(config), sharding.make_mesh())


@pytest.mark.slow  # trains the checkpoints it damages
@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(workdir, damage, caplog):
    damage(workdir, 4)  # before any read: TensorStore caches what it has read in this process
    caplog.set_level(logging.WARNING)
    params_step, state_step = DAMAGES[damage]
    loaded = checkpoint.load_params(workdir)
    mngr = checkpoint.manager(workdir, read_only=True)
    step, state = checkpoint.restore(mngr, abstract_state(workdir))
    assert (loaded.step, step, int(state.step)) == (params_step, state_step, state_step)
    assert any("is damaged" in r.getMessage() and "skipped it" in r.getMessage()
               for r in caplog.records), caplog.text
    if params_step == state_step:
        for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(loaded.params)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # trains the checkpoints it damages
def test_every_checkpoint_damaged_is_one_error_naming_each(workdir):
    delete_chunks(workdir, 4)
    wrong_fingerprint(workdir, 2)
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.load_params(workdir)
    message = str(error.value)
    assert "step 4:" in message and "step 2:" in message and "fingerprint" in message, message
    assert len(message) < 1000 and "\n" not in message


@pytest.mark.slow  # trains the checkpoints it damages
def test_an_asked_for_step_that_is_damaged_is_not_replaced(workdir):
    garble_manifest(workdir, 2)
    with pytest.raises(checkpoint.CheckpointError, match="step 2"):
        checkpoint.load_params(workdir, step=2)
    assert checkpoint.load_params(workdir, step=4).step == 4


@pytest.mark.slow  # trains the checkpoints it damages
@pytest.mark.parametrize("how", [cut, wrong_type, random_bytes], ids=lambda f: f.__name__)
def test_damaged_records_of_a_checkpoint_are_skipped_repaired_or_named(workdir, caplog, how):
    """The JSON records saved with step 4 (the rule of test_damaged_files.py): a damaged spec or
    fingerprint record falls back to step 2, a damaged config record is skipped (the resume
    check uses step 2's), a damaged topology loses only the resume message's device counts, and
    Orbax's own step record stops a reader in one line and is moved aside by training."""
    step = os.path.join(workdir, "checkpoints", "4")
    for record in ("spec", "integrity", "config", "topology"):
        damage(Path(step, record, "metadata"), how)
    with caplog.at_level(logging.WARNING):
        assert checkpoint.read_spec(workdir)[1] == 2 and checkpoint.load_params(workdir).step == 2
        assert sorted(checkpoint.read_configs(workdir)) == [2]
        assert checkpoint.saved_topology(checkpoint.manager(workdir, read_only=True), 4) is None
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    for what in ("checkpoint step 4 in", "cannot read the config saved with checkpoint step 4",
                 "cannot read the topology saved with checkpoint step 4"):
        assert what in warnings, warnings

    record = Path(step, checkpoint.STEP_METADATA)
    damage(record, how)
    with pytest.raises(storage.DamagedFile, match=f"^{record} is damaged .*: move it away") as error:
        checkpoint.read_spec(workdir)
    assert "\n" not in str(error.value) and record.exists()  # a reader changes nothing
    assert checkpoint.manager(workdir).all_steps() == [2, 4]  # training's manager moves it aside
    assert not record.exists() and len(glob.glob(f"{record}.damaged-*")) == 1
    assert checkpoint.read_spec(workdir)[1] == 2  # Orbax reads step 4 without its record; its spec is still damaged


def test_fingerprint_is_per_leaf_and_sees_small_changes():
    tree = {"a": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.array([-1.0, 2.0])}}
    prints = checkpoint.fingerprint(tree)
    assert sorted(prints) == ["a", "b/c"]
    np.testing.assert_allclose(prints["a"], [5.0, 15 / 5, 55 / 25], rtol=1e-6)  # max, sum |x|/max, sum (x/max)²
    np.testing.assert_allclose(prints["b/c"], [2.0, 3 / 2, 5 / 4], rtol=1e-6)
    huge = {"w": jnp.full((1000,), 1e30, jnp.float32)}  # a diverging run's finite parameters
    assert checkpoint.fingerprint(huge) == {"w": [pytest.approx(1e30, rel=1e-6), 1000.0, 1000.0]}
    checkpoint.check_intact(tree, prints)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="b/c does not match"):
        checkpoint.check_intact({"a": tree["a"], "b": {"c": jnp.array([-1.0, 2.001])}}, prints)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="non-finite values in a"):
        checkpoint.check_intact({"a": tree["a"].at[0, 0].set(jnp.nan), "b": tree["b"]}, None)


def test_a_non_finite_state_is_never_saved(tmp_path):
    from configs import test as test_config
    spec = config_lib.model_spec(test_config.get_config())
    mngr = checkpoint.manager(str(tmp_path))
    with pytest.raises(FloatingPointError, match="refusing to save step 7: non-finite values in w"):
        checkpoint.save(mngr, 7, {"w": jnp.array([1.0, jnp.inf])}, spec=spec, config_json="{}")
    mngr.wait_until_finished()
    assert mngr.all_steps() == []


@pytest.mark.slow  # reads the shared trained run (minutes to train from a cold compilation cache)
def test_a_checkpoint_saved_before_the_unet_options_still_loads(tmp_path, trained_workdir):
    """Specs written before the U-Net had its diffusers options lack those fields: they load
    with the defaults, which compute what those models computed."""
    from isodiff_jax.spec import ModelSpec
    workdir = str(tmp_path / "old")
    shutil.copytree(trained_workdir, workdir)
    new = ("norm_eps", "flip_sin_to_cos", "freq_shift", "downsample_padding", "act_fn", "resnet_time_scale_shift",
           "center_input_sample", "mid_block_scale_factor")
    for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "spec", "metadata")):
        with open(path) as f:
            spec = json.load(f)
        for field in new:
            del spec["unet"][field]
        with open(path, "w") as f:
            json.dump(spec, f)
    loaded = checkpoint.load_params(workdir)
    reference = checkpoint.load_params(trained_workdir)
    assert loaded.spec == reference.spec and loaded.step == reference.step
    assert ModelSpec.from_dict(loaded.spec.to_dict()) == loaded.spec
