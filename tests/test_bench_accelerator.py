"""benchmarks/accelerator.py on CPU: the batch search, the peak table, and one real (tiny)
measurement through the same functions the accelerator run uses."""
import pytest
from support import load_module

bench = load_module("benchmarks/accelerator.py")

TINY_CONFIG = '''
from configs import test


def get_config():
    c = test.get_config()
    c.data.resolution = 8
    c.model.block_out_channels = (8,)
    c.model.attention_levels = (False,)
    c.model.mid_attention = False
    return c
'''


def _fits_up_to(limit, log):
    def trial(b):
        log.append(b)
        if b > limit:
            raise RuntimeError(f"RESOURCE_EXHAUSTED: Out of memory allocating for batch {b}")
        return f"ran {b}"
    return trial


@pytest.mark.parametrize("start, limit, expected, tried", [
    (8, 24, 16, [8, 16, 32]),  # doubles until out of memory
    (64, 24, 16, [64, 32, 16]),  # halves until it fits, then does not double into a known failure
    (4, 1000, 64, [4, 8, 16, 32, 64]),  # stops at max_batch
    (2, 0, None, [2, 1]),  # nothing fits
])
def test_largest_batch_doubles_and_halves(start, limit, expected, tried):
    log = []
    found, result = bench.largest_batch(_fits_up_to(limit, log), start, max_batch=64, time_left=lambda: True)
    assert found == expected and log == tried
    assert result == (f"ran {expected}" if expected else None)


def test_largest_batch_passes_other_errors_on():
    def trial(b):
        raise ValueError("a bug, not memory")
    with pytest.raises(ValueError, match="a bug"):
        bench.largest_batch(trial, 4, 64, lambda: True)


def test_peaks_by_device_kind():
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("TPU v5 lite") == 197.0
    assert bench.peak_tflops("cpu") is None


@pytest.mark.slow  # runs the benchmark
def test_a_tiny_measurement(tmp_path):
    """The --quick path's measurement (a one-level U-Net, 8², plain step): FLOPs from the cost
    analysis, a time, a memory figure, the printed line."""
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG)
    r = bench.measure(str(config), "plain", "float32", "none", batch=2, iters=1, peak=100.0)
    assert r["batch"] == 2 and r["step_s"] > 0 and r["tflop_per_step"] > 0 and r["peak_mem_gb"] > 0
    assert r["flops_source"] == "compiled" and 0 < r["mfu"] < 1
    line = bench.format_line(r)
    assert line.startswith("config=tiny step=plain dtype=float32 remat=none batch=2 step_s=") and "mfu=" in line
