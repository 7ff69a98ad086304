"""The benchmark command end to end on the synthetic dataset (figures, not timings, checked)."""

import json

from helpers.tools import bench


def test_bench_reports_every_ratio_with_the_raw_figures(synthetic_source, tmp_path):
    root, _ = synthetic_source
    out = tmp_path / "bench.json"
    assert bench.main(["--data-dir", str(root), "--sample-dir", str(root), "--out", str(out),
                       "--runs", "2", "--images", "16"]) == 0
    report = json.loads(out.read_text())
    for key in ("pipeline_first_pass_ratio", "pipeline_cached_ratio", "train_ratio_cnn",
                "inference_ratio", "train_ratio_resnet50"):
        assert report[key] > 0, key
    first_pass = report["pipeline_first_pass"]
    assert first_pass["images"] == 12 * 8 + 4  # the usable images, quirks left out
    assert len(first_pass["project"]["runs"]) == 2
    assert first_pass["ratio"] == bench.paired_ratio(first_pass["project"]["runs"],
                                                     first_pass["limit"]["runs"])
    assert report["train_cnn"]["images"] == 16
    assert report["audit_split_seconds"] > 0 and report["audit_split_peak_rss_bytes"] > 0
    assert set(report["memory_cache"]) == {"64", "128", "224"}
    assert report["machine"]["cores"] >= 1 and report["machine"]["tensorflow"]
