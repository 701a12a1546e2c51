"""The CUDA fast path (device-resident data, bf16, channels_last, fused SGD, CUDA graphs) where a GPU exists."""

import pytest
import torch

from eager2trt.eager.model import build_model
from eager2trt.eager.train import Recipe, evaluate, train
from test_train import learnable_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.mark.parametrize("compile_mode", [None, "reduce-overhead"])
def test_fast_path_learns_and_leaves_a_plain_fp32_model(compile_mode):
    data = learnable_split(300)  # 300 = nine full batches of 32 and a partial one of 12
    model = build_model()
    h = train(model, data, data, Recipe(epochs=6, batch_size=32, lr=0.02, milestones=(100,),
                                        compile_mode=compile_mode), device=torch.device("cuda"))
    assert min(e["loss"] for e in h.epochs[-2:]) < h.epochs[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.conv1.weight.is_contiguous()  # channels_last undone for export
    cpu_acc = evaluate(model.cpu(), data)
    assert abs(cpu_acc - h.epochs[-1]["test_acc"]) <= 0.02  # same weights evaluated on CPU
