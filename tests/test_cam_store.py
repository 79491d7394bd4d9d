"""The compact CAM store: what it keeps, what it refuses, and that it never unpickles."""

import numpy as np
import pytest

from cpn_dist.errors import CpnError
from cpn_dist.labels.cam_store import block_mean, decode_cams, encode_cams, load_compact, save_compact


def _ramp(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return (0.4 * xx / w + 0.1 * yy / h - 0.2).astype(np.float32)


def test_a_float16_file_at_stride_1_keeps_every_value_to_float16_precision(tmp_path):
    rng = np.random.default_rng(0)
    cams = {3: rng.random((13, 17)).astype(np.float32) - 0.5, 79: rng.random((13, 17)).astype(np.float32)}
    save_compact(tmp_path / "a.npz", cams, stride=1, dtype="float16")
    back = load_compact(tmp_path / "a.npz")
    assert sorted(back) == [3, 79]
    for k in cams:
        assert back[k].dtype == np.float32 and back[k].shape == (13, 17)
        np.testing.assert_allclose(back[k], cams[k], atol=5e-4)


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_a_smooth_map_comes_back_from_stride_4_blocks_within_quantisation(dtype):
    cams = {0: _ramp(30, 41)}
    back = decode_cams(encode_cams(cams, stride=4, dtype=dtype))[0]
    assert back.shape == (30, 41)
    inner = (slice(2, 26), slice(2, 38))  # bilinear reproduces a ramp away from the clamped edges
    tolerance = 0.5 / 255 * (cams[0].max() - cams[0].min()) + 1e-3 if dtype == "uint8" else 1e-3
    assert np.abs(back[inner] - cams[0][inner]).max() <= tolerance


def test_block_means_cover_partial_edge_blocks_by_the_pixels_they_hold():
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_allclose(block_mean(x, 2), [[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]])


def test_an_image_without_labelled_classes_round_trips_empty(tmp_path):
    save_compact(tmp_path / "e.npz", {})
    assert load_compact(tmp_path / "e.npz") == {}


def test_random_bytes_and_object_arrays_are_refused_in_one_line_without_unpickling(tmp_path):
    (tmp_path / "r.npz").write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(CpnError, match=r"r\.npz: not a CAM file"):
        load_compact(tmp_path / "r.npz")
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    arrays = encode_cams({0: _ramp(8, 8)})
    arrays["keys"] = np.array([Evil()], dtype=object)
    np.savez(tmp_path / "o.npz", **arrays)
    with pytest.raises(CpnError, match=r"o\.npz: not a CAM file"):
        load_compact(tmp_path / "o.npz")
    assert not marker.exists()
    np.savez(tmp_path / "m.npz", keys=np.zeros(1, np.int16))
    with pytest.raises(CpnError, match="not a compact CAM file"):
        load_compact(tmp_path / "m.npz")



def test_the_stored_grid_keeps_a_cams_level_set_where_block_means_would_shift_it():
    from cpn_dist.labels.cam_store import fit_grid, upsample

    yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
    cam = (0.5 * np.exp(-((yy - 40) ** 2 / 300 + (xx - 70) ** 2 / 120))
           + 0.3 * np.exp(-((yy - 70) ** 2 + (xx - 30) ** 2) / 40)).astype(np.float32)  # fmt: skip

    def changed(maps):  # pixels whose side of β = 0.2 the store changes
        return int(np.count_nonzero((maps > 0.2) != (cam > 0.2)))

    stored = changed(decode_cams(encode_cams({0: cam}, stride=4, dtype="float16"))[0])
    means = changed(upsample(block_mean(cam, 4)[None], cam.shape, 4)[0])
    fitted = changed(upsample(fit_grid(cam, 4)[None], cam.shape, 4)[0])
    assert stored == fitted and fitted * 3 <= means, (stored, fitted, means)
