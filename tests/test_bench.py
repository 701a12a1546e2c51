"""The latency benchmark runs end to end and reports what it claims (no timing assertions)."""

import json

from conftest import ROOT, run_script


def test_latency_benchmark_writes_table_json_and_chart(tmp_path):
    proc = run_script(ROOT / "bench" / "latency.py", "--output-dir", tmp_path, "--runs", "5", "--batch-sizes", "1",
                      "--checkpoint", ROOT / "saved_models" / "resnet_cifar10.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "benchmark.json").read_text())
    measured = {(r["backend"], r["precision"]) for r in result["rows"] if "median_ms" in r}
    assert {("PyTorch eager", "FP32"), ("PyTorch eager", "INT8 (ours)"), ("PyTorch TorchScript", "INT8 (ours)"),
            ("onnxruntime", "FP32"), ("onnxruntime", "INT8 Q/DQ")} <= measured
    ref = [r for r in result["rows"] if "reference" in r["precision"]]
    assert ref and all("median_ms" in r or r["note"] == "unsupported on this build" for r in ref)
    assert set(result["memory"]) == {"FP32", "INT8"} and result["file_sizes_bytes"]["int8_onnx"] > 1e6
    assert result["int8_over_fp32"] and (tmp_path / "benchmark.png").read_bytes()[:4] == b"\x89PNG"
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| ")  # the table is printed last


def _matrix_records(tmp_path):
    """Hand-made per-stage JSON of two models, as bench/matrix.py's stages write them."""
    env = {"gpu": "test GPU", "cpu": "test CPU", "torch": "x", "onnxruntime": "y"}
    methods = {m: {"holdout_accuracy": 0.5, "test_accuracy": 0.5} for m in
               ("minmax", "percentile", "entropy", "mse", "histogram")}
    graph = {"test_accuracy": 0.60, "argmax_agreement_with_pytorch": 0.9, "distance_ratio": 0.2}
    files = {
        "a.json": {"arch": "a", "fp32_accuracy": 0.70, "methods": methods, "auto": {"method": "entropy",
                   "test_accuracy": 0.60}, "graph": graph, "fast_graph": {"test_accuracy": 0.61},
                   "engine": "qnnpack", "calib_images": 8, "holdout_images": 4, "test_images": 4, "threads": 2,
                   "environment": env, "training": {"epochs": [{}, {}]}},
        "a_qat.json": {"arch": "a", "qat_epochs": 3, "graph": {"test_accuracy": 0.695},
                       "fast_graph": {"test_accuracy": 0.698}},
        "a_graphs.json": {"arch": "a", "environment": env, "fast_graph": {"test_accuracy": 0.62},
                          "fallback": {"kept": ["x"], "layers": 9, "test_accuracy": 0.68}},
        "a_modelopt.json": {"arch": "a", "methods": {"max": {"test_accuracy": 0.5}}},
        "b.json": {"arch": "b", "fp32_accuracy": 0.80, "methods": methods, "auto": {"method": "mse",
                   "test_accuracy": 0.5}, "graph": {"refused": "fixed-qparams"}, "fast_graph": {"test_accuracy": 0.5},
                   "environment": env},
        "b_train.json": {"arch": "b"},
    }
    for name, record in files.items():
        (tmp_path / name).write_text(json.dumps(record))
    return sorted(tmp_path.glob("*.json"))


def test_matrix_report_merges_the_stages_and_says_which_models_miss_the_budget(tmp_path):
    paths = _matrix_records(tmp_path)
    proc = run_script("-m", "bench.matrix", "report", *paths, "--output", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "m.md").read_text()
    a = next(line for line in md.splitlines() if line.startswith("| a | 0.7000"))
    # a: exact -10, fast -8 (the graphs stage's row over a.json's -9), fallback -2 with 1 of 9 layers, QAT's best
    # graph -0.2 (fast; exact -0.5) -> within budget by QAT's fast graph; ModelOpt max -20
    assert "-10.00" in a and "-8.00" in a and "-9.00" not in a and "-2.00 (1/9)" in a and "-0.20 (3 ep)" in a
    assert "-20.00" in a and "yes (qat_fast)" in a
    b = next(line for line in md.splitlines() if line.startswith("| b | 0.8000"))
    assert "refused" in b and "**no** (fast)" in b  # fast -30 points, nothing else ran
    merged = json.loads((tmp_path / "m.json").read_text())["models"]
    assert [r["arch"] for r in merged] == ["a", "b"] and merged[0]["qat"]["qat_epochs"] == 3
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_matrix_pairs_two_graphs_on_the_same_images():
    # the exact McNemar test: 9 images only A gets right against 1 only B does is p = 2 x 11/1024 (one-sided
    # tail: C(10,0) + C(10,1) over 2^10), a split of 3 to 2 is chance
    import numpy as np

    from bench import matrix

    a = np.array([True] * 9 + [False] + [True] * 5)
    b = np.array([False] * 9 + [True] + [True] * 5)
    assert matrix.paired(a, b) == {"only_this_right": 9, "only_ours_right": 1, "p_value": 22 / 1024}
    c = np.array([True, True, True, False, False]), np.array([False, False, False, True, True])
    assert matrix.paired(*c)["p_value"] == 1.0 and matrix.paired(a, a)["p_value"] == 1.0


def test_gpu_verify_runs_a_child_per_run_and_refuses_a_bad_run_in_one_sentence(tmp_path):
    """bench.gpu_verify end to end on a tiny CPU run (the child process, the RSS trace, the table), and a --runs
    value that is not DEVICE:IMAGES told before any run starts."""
    proc = run_script("-m", "bench.gpu_verify", "--arch", "resnet18", "--classes", 10, "--image-size", 32,
                      "--runs", "cpu:40", "--batch", 20, "--workers", 0, "--sample", 20, "--output-dir", tmp_path,
                      "--name", "t")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "t.json").read_text())["rows"][0]
    assert (row["device"], row["images"], row["int8_samples"]) == ("cpu", 40, 40)
    assert len(row["rss_tenths_mib"]) == 10 and row["rss_last_tenth_mib"] == row["rss_tenths_mib"][-1] > 0
    passed, total = map(int, row["checks_passed"].split("/"))
    assert passed == total
    bad = run_script("-m", "bench.gpu_verify", "--runs", "cpu:40", "cuda:many", "--output-dir", tmp_path / "bad")
    assert bad.returncode != 0 and "--runs 'cuda:many' is not DEVICE:IMAGES" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
