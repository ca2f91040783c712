"""Calibration sets, Q/DQ quantisation with its range cache, and the precision report."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest

from calibration import (
    compare_precisions,
    crops_to_feeds,
    fingerprint_feeds,
    format_report,
    load_crop_folder,
    materialise,
    psnr,
    quantize_qdq,
    relative_l2,
    wplus_feeds,
)
from engines.backends.onnxruntime_backend import OnnxRuntimeEngine, is_qdq_graph
from engines.errors import UserError
from engines.export import export_onnx, find_tensorrt_problems
from tests.test_export import TinyNet, tiny_inputs


def tiny_feeds(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"img": rng.standard_normal((1, 3, 16, 16)).astype(np.float32),
             "code": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(count)]


@pytest.fixture
def tiny_onnx(tmp_path):
    return export_onnx(TinyNet(), tiny_inputs(), tmp_path / "tiny.onnx", output_names=["out"])


def test_crop_folder_reads_rgb_and_resizes(tmp_path):
    image = np.zeros((40, 40, 3), np.uint8)
    image[..., 0] = 255  # red in RGB
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    crops = load_crop_folder(tmp_path, 32)
    assert len(crops) == 2 and crops[0].shape == (32, 32, 3) and crops[0].dtype == np.uint8
    assert crops[0][..., 0].min() == 255 and crops[0][..., 2].max() == 0
    assert len(load_crop_folder(tmp_path, 32, limit=1)) == 1


def test_empty_or_bad_crop_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no crop images"):
        load_crop_folder(tmp_path, 32)
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable image"):
        load_crop_folder(tmp_path, 32)


def test_crops_become_batched_feeds_in_minus_one_to_one():
    crops = [np.full((8, 8, 3), value, np.uint8) for value in (0, 255, 0, 255, 0)]
    feeds = list(crops_to_feeds(crops, "img", batch=2))
    assert len(feeds) == 2  # the fifth crop does not fill a batch
    assert feeds[0]["img"].shape == (2, 3, 8, 8) and feeds[0]["img"].dtype == np.float32
    assert feeds[0]["img"][0].max() == -1.0 and feeds[0]["img"][1].min() == 1.0


def test_wplus_samples_go_through_mapping_and_mix_layers():
    mapping = lambda z: np.tanh(z[:, :8])
    feeds = list(wplus_feeds(mapping, num_ws=6, count=3, batch=4, z_dim=16, mix_probability=1.0))
    assert len(feeds) == 3
    wplus = feeds[0]["wplus"]
    assert wplus.shape == (4, 6, 8) and wplus.dtype == np.float32
    assert np.abs(wplus).max() <= 1.0
    assert not np.allclose(wplus[:, 0], wplus[:, -1]), "mixing switches codes on later layers"
    again = list(wplus_feeds(mapping, num_ws=6, count=3, batch=4, z_dim=16, mix_probability=1.0))
    assert fingerprint_feeds(feeds) == fingerprint_feeds(again)


def test_materialise_checks_shapes():
    with pytest.raises(UserError, match="no calibration samples"):
        materialise([])
    with pytest.raises(UserError, match="has shape"):
        materialise(tiny_feeds(1), {"img": ((2, 3, 16, 16), "float32")})


def test_qdq_graph_runs_on_cpu_is_tensorrt_friendly_and_caches_ranges(tmp_path, tiny_onnx):
    feeds = tiny_feeds(6)
    result = quantize_qdq(tiny_onnx, iter(feeds), method="minmax")
    assert result.onnx_path == tmp_path / "tiny.int8.onnx" and not result.ranges_reused
    assert result.range_cache.is_file() and result.range_cache.parent == tmp_path
    model = onnx.load(str(result.onnx_path))
    assert is_qdq_graph(model)
    assert find_tensorrt_problems(model) == []  # symmetric int8, zero points 0, float biases
    int8 = OnnxRuntimeEngine(result.onnx_path, "int8", threads=1).run(feeds[0])["out"]
    fp32 = OnnxRuntimeEngine(tiny_onnx, "fp32", threads=1).run(feeds[0])["out"]
    assert relative_l2(int8, fp32) < 0.1

    assert quantize_qdq(tiny_onnx, feeds, method="minmax").ranges_reused
    other = quantize_qdq(tiny_onnx, tiny_feeds(6, seed=1), method="minmax")
    assert not other.ranges_reused and other.range_cache != result.range_cache


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods(tmp_path, tiny_onnx, method):
    result = quantize_qdq(tiny_onnx, tiny_feeds(4), tmp_path / f"{method}.onnx", method=method)
    assert is_qdq_graph(onnx.load(str(result.onnx_path)))


def test_unknown_method_and_missing_graph(tmp_path, tiny_onnx):
    with pytest.raises(UserError, match="unknown calibration method"):
        quantize_qdq(tiny_onnx, tiny_feeds(1), method="magic")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="ONNX file not found"):
        quantize_qdq(tmp_path / "none.onnx", tiny_feeds(1))


def test_report_rows_and_table(tmp_path, tiny_onnx):
    feeds = tiny_feeds(3)
    int8_path = quantize_qdq(tiny_onnx, feeds, method="minmax").onnx_path
    reference = OnnxRuntimeEngine(tiny_onnx, threads=1)
    rows = compare_precisions("tiny", reference, {
        "fp16": OnnxRuntimeEngine(tiny_onnx, "fp16", threads=1),
        "int8": OnnxRuntimeEngine(int8_path, "int8", threads=1)}, feeds, runs=2)
    assert [r.precision for r in rows] == ["fp32", "fp16", "int8"]
    assert rows[0].rel_l2 == 0.0 and rows[1].rel_l2 < rows[2].rel_l2 < 0.1
    assert rows[1].psnr_db is not None and rows[1].psnr_db > 40
    table = format_report(rows)
    assert table.count("\n") == 4 and "| tiny | int8 | onnxruntime |" in table


def test_psnr_and_relative_l2():
    a = np.zeros((1, 3, 4, 4))
    assert psnr(a, a) == float("inf")
    assert psnr(a + 0.02, a) == pytest.approx(10 * np.log10(4 / 0.0004))
    assert relative_l2(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(1.0)


def test_calibrate_command_writes_int8_graphs_and_a_report(tmp_path, monkeypatch, capsys):
    import argparse

    from stream.commands import calibrate
    from tests.random_pack import make_random_pack

    monkeypatch.setenv("FACEEDIT_CACHE_DIR", str(tmp_path / "cache"))
    make_random_pack(tmp_path / "pack")
    crops = tmp_path / "crops"
    crops.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(crops / f"{i}.png"), cv2.GaussianBlur(rng.integers(0, 255, (64, 64, 3), np.uint8), (5, 5), 2))
    parser = argparse.ArgumentParser()
    calibrate.add_arguments(parser)
    args = parser.parse_args(["--pack", str(tmp_path / "pack"), "--crops", str(crops), "--samples", "4",
                              "--method", "minmax", "--out", str(tmp_path / "out"), "--threads", "1", "--runs", "2"])
    assert calibrate.run(args) == 0
    report = capsys.readouterr().out
    for network in ("generator", "encoder", "student-smile"):
        assert (tmp_path / "out" / f"{network}_b1.int8.onnx").is_file()
        assert f"| {network} | int8 | onnxruntime |" in report
    no_crops = parser.parse_args(["--pack", str(tmp_path / "pack"), "--networks", "encoder",
                                  "--out", str(tmp_path / "out")])
    with pytest.raises(UserError, match="--crops"):
        calibrate.run(no_crops)
    check_int8_reaches_the_session(tmp_path / "pack", tmp_path / "out", crops)


def check_int8_reaches_the_session(pack, calibrated, crops) -> None:
    """--precision int8 runs the Q/DQ graphs `calibrate` wrote, on both paths, close to fp32."""
    from stream.config import ModelConfig
    from stream.session import EditNetworks
    from stream.types import StageTimes

    crop = cv2.cvtColor(cv2.imread(str(crops / "0.png")), cv2.COLOR_BGR2RGB)
    changes = {}
    for precision in ("fp32", "int8"):
        networks = EditNetworks(ModelConfig(pack=pack, backend="onnxruntime", precision=precision,
                                            calibrated=calibrated, gate=False))
        gan, students = networks.gan(), networks.students()
        assert gan.generator.precision == gan.encoder.precision == precision
        assert all(engine.precision == precision for engine, _ in students.students.values())
        changes[precision] = gan.render([crop], gan.encode([crop]), [("smile", 0.5)], StageTimes()).changes[0]
    error = np.abs(changes["int8"] - changes["fp32"]).mean() / np.abs(changes["fp32"]).mean()
    assert error < 0.5  # the same edit, within int8's error
    with pytest.raises(UserError, match="no calibrated generator"):
        EditNetworks(ModelConfig(pack=pack, backend="onnxruntime", precision="int8",
                                 calibrated=calibrated / "missing")).gan()
