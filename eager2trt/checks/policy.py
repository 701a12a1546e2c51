"""What a failed check does to a run, as data: the pipeline, the console and metrics.json read this table, never
a check's position in a list.

Three kinds of failure, decided in this order (pipeline._quantize_to_tensorrt):
  DEFECT  the check proves that a model or graph is not what it claims to be (fusion changed the model, the
          export is another model, a rewrite changed the arithmetic, a graph breaks TensorRT's rules, the fast
          placement moved the graph away from FP32). A model's defect stops the run at once; a graph's keeps that
          graph off disk, the other graphs are still made, checked and written, and the run then fails naming
          what is on disk.
  BUDGET  INT8 accuracy against FP32 (the deployed graph must be within the accuracy budget). With
          fallback=True no budget check stops the run before the fallback graph has been tried: the failed
          guards are recorded and the fallback graph's own guard decides. Without it, the first failed guard
          stops the run, after the graphs that passed their checks are written.
  RECORD  a comparison between two computations that are not meant to be the same function (the fast graph
          carries the unrounded FP32 biases PyTorch INT8 rounds): recorded with its figures, never stops a run.
"""

DEFECT, BUDGET, RECORD = "defect", "budget", "record"

# check name (or a prefix ending in ".") -> kind. A check missing here is a DEFECT: a new check stops runs
# until someone decides otherwise.
POLICY = {
    "fusion": DEFECT,
    "agreement": DEFECT,
    "scale_provenance": DEFECT,
    "requantization": DEFECT,
    "lint.": DEFECT,
    "equivalence": DEFECT,
    "fast_error_ratio": DEFECT,
    "gpu_vs_cpu": DEFECT,  # the GPU's Q/DQ arithmetic against onnxruntime's CPU check: figures not to be trusted
    "fp16_accuracy": DEFECT,
    "int8_accuracy": BUDGET,
    "exact_graph_accuracy": BUDGET,
    "fast_graph_accuracy": BUDGET,
    "fallback_holdout_accuracy": BUDGET,
    "fallback_graph_accuracy": BUDGET,
    "fast_placement_accuracy": DEFECT,  # onnx_gs.py without an FP32 ONNX: the source's biases, placement alone
    "fast_accuracy": RECORD,
    "exact_vs_fp32": RECORD,  # each output's distance from FP32: the figure for outputs without labels
    "fast_vs_fp32": RECORD,
}


def kind(name: str) -> str:
    """The policy kind of the check called `name` (DEFECT for a name the table does not list)."""
    if name in POLICY:
        return POLICY[name]
    prefix = next((p for p in POLICY if p.endswith(".") and name.startswith(p)), None)
    return POLICY[prefix] if prefix else DEFECT


def failed(checks, of_kind: str) -> list:
    """The failed checks of one kind, in order."""
    return [c for c in checks if not c.passed and kind(c.name) == of_kind]
