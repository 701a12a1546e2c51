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
