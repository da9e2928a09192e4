import numpy as np
import pytest
from gguf import GGUFWriter

from playbook.quantization import gguf_storage, q4_1_rounding_change, q4_1_roundtrip

ON_GRID = -1 + 0.125 * np.array([*range(16), *range(15, -1, -1)], dtype=np.float32)  # m = -1, d = 1/8, codes 0..15


def test_weights_on_the_q4_1_grid_come_back_unchanged():
    assert np.array_equal(q4_1_roundtrip(ON_GRID), ON_GRID)
    assert q4_1_rounding_change(ON_GRID).mean_abs_change == 0


def test_off_grid_weights_move_to_the_nearest_of_16_levels():
    weights = ON_GRID.copy()
    weights[3] += 0.05  # code 3 + 0.4 steps: rounds back down to code 3
    weights[4] += 0.07  # code 4 + 0.56 steps: rounds up to code 5
    back = q4_1_roundtrip(weights.reshape(1, 32))
    assert back.shape == (1, 32)
    assert back[0, 3] == pytest.approx(ON_GRID[3]) and back[0, 4] == pytest.approx(ON_GRID[5])
    assert len(np.unique(back)) <= 16
    change = q4_1_rounding_change(weights)
    assert change.mean_abs_change == pytest.approx((0.05 + (0.125 - 0.07)) / 32, rel=1e-4)
    assert change.weights == 32 and change.relative == pytest.approx(change.mean_abs_change / np.abs(weights).mean())


def test_a_block_of_equal_weights_and_bad_shapes():
    assert np.array_equal(q4_1_roundtrip(np.full(32, 0.5)), np.full(32, 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        q4_1_roundtrip(np.zeros(33))


def test_gguf_storage_counts_weights_and_bits_per_type(tmp_path):
    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(path, "llama")
    writer.add_tensor("a", np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor("b", np.zeros(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    table = gguf_storage(path)
    assert table.loc["F32", "tensors"] == 2 and table.loc["F32", "weights"] == 48
    assert table.loc["F32", "bits per weight"] == 32 and table.loc["F32", "share of weights"] == 1
