"""The benchmark command end to end on the synthetic dataset (figures, not timings, checked)."""

import functools
import json

import pytest

from helpers.tools import bench, notebooks


def test_bench_reports_every_ratio_with_the_raw_figures(synthetic_source, tmp_path,
                                                        monkeypatch):
    root, _ = synthetic_source
    # ResNet50 (frozen for the training figure, trainable for the precision figure) costs
    # minutes of tracing on a CPU without bfloat16 units; a small CNN runs the same code (the
    # figures, not the model, are tested).
    monkeypatch.setattr(bench, "trainable_resnet50", lambda image_size: small_cnn(image_size))
    monkeypatch.setattr(bench, "frozen_resnet50", lambda image_size: small_cnn(image_size))
    # The CNN at 32 px instead of 64, and the cache's memory at one size instead of three:
    # a quarter of the work, the same code.
    monkeypatch.setattr(bench, "IMAGE_SIZE", 32)
    monkeypatch.setattr(bench, "bench_memory",
                        functools.partial(bench.bench_memory, sizes=(32,)))
    # In this process, not a fresh one: the figures' keys and signs are tested, and each
    # fresh interpreter costs ten seconds of importing TensorFlow.
    monkeypatch.setattr(bench, "in_fresh_process", lambda function, *arguments:
                        function(*arguments))
    out = tmp_path / "bench.json"
    assert bench.main(["--data-dir", str(root), "--sample-dir", str(root), "--out", str(out),
                       "--runs", "1", "--images", "16", "--resnet-size", "32"]) == 0
    report = json.loads(out.read_text())
    for key in ("pipeline_first_pass_ratio", "pipeline_cached_ratio", "train_ratio_cnn",
                "inference_ratio", "train_ratio_resnet50", "bf16_train_ratio_cnn",
                "bf16_inference_ratio_cnn", "bf16_train_ratio_resnet50",
                "bf16_inference_ratio_resnet50", "bf16_train_flop_share_cnn",
                "inference_fullres_ratio", "inference_ratio_to_decode_then_predict"):
        assert report[key] > 0, key
    first_pass = report["pipeline_first_pass"]
    # The images the audit keeps: the unusable files, the duplicate and both copies of the
    # content under two classes left out.
    assert first_pass["images"] == 12 * 8 + 4 - 3
    assert len(first_pass["project"]["runs"]) == 1
    assert first_pass["ratio"] == bench.paired_ratio(first_pass["project"]["runs"],
                                                     first_pass["limit"]["runs"])
    assert report["train_cnn"]["images"] == 16
    precision = report["precision_cnn"]
    assert precision["images"] == 16 and precision["training"]["ratio"] == bench.paired_ratio(
        precision["training"]["project"]["runs"], precision["training"]["limit"]["runs"])
    # 3 x the forward FLOPs of the CNN at 32 px: about 0.33 GFLOP per training image (1.3
    # at 64 px).
    assert 0.25e9 < precision["training_flops_per_image"] < 0.4e9
    assert report["precision_resnet50"]["image_size"] == 32
    inference = report["inference"]
    assert inference["decode_then_predict_images_per_second"] == pytest.approx(
        1 / (1 / inference["decode_only"]["median"] + 1 / inference["limit"]["median"]))
    assert report["conv_gflops"]["bfloat16"] > 0 and report["conv_gflops"]["float32"] > 0
    assert report["audit_split_seconds"] > 0 and report["audit_split_peak_rss_bytes"] > 0
    assert set(report["memory_cache"]) == {"32"}
    assert report["machine"]["cores"] >= 1 and report["machine"]["tensorflow"]


def small_cnn(image_size: int = 16):

    return notebooks.baseline_cnn(image_size, widths=(4, 8), augment=False, seed=0)


def test_layer_profile_times_every_layer_in_both_precisions():
    table = bench.profile_layers(small_cnn, 16, batch_size=4, repeats=1)
    assert table.loc["block1_bn1", "type"] == "FusedBatchNormalization"
    columns = [f"{dtype} {what} ms" for dtype in ("float32", "bfloat16")
               for what in ("forward", "forward+backward")]
    assert (table.loc[table.index != "total", columns] > 0).all().all()
    assert table.loc["total", columns].tolist() == pytest.approx(
        table.loc[table.index != "total", columns].sum().tolist())
