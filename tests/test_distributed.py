"""Data-parallel calibration and evaluation (eager2trt/eager/distributed.py): two gloo processes on CPU against one
process on the same batches. The INT8 model each rank converts must equal the one-process model (every scale, zero
point and int weight) for minmax and the RangeObserver methods; torch.ao's histogram is measured; evaluation counts
are exact; a failing rank stops both with one sentence."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from eager2trt.eager import calibration as cal
from eager2trt.eager import distributed
from eager2trt.eager.quantize import prepare_for
from eager2trt.errors import PipelineError
from test_calibration import tiny_fused

ENGINE = "qnnpack"  # faithful to the Q/DQ graph on every x86 CPU this runs on
EXACT = ("minmax", "percentile", "entropy", "mse")
# torch.ao's HistogramObserver re-bins approximately whenever its range grows, in batch order (module docstring);
# measured on these batches: identical scales (0 relative difference); the bound allows for other data
HISTOGRAM_SCALE_RTOL = 0.05


def batches(n: int = 7) -> list[torch.Tensor]:
    """Batches whose ranges grow (each rank's first batch has another range, so grids must be aligned) and one
    outlier; an odd count, so the ranks get unequal shares."""
    gen = torch.Generator().manual_seed(0)
    out = [torch.randn(4, 3, 16, 16, generator=gen) * (1 + 0.7 * i) for i in range(n)]
    out[3][0, :, 0, 0] = 40.0
    return out


def labelled(n: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 3, 16, 16, generator=gen), torch.randint(0, 10, (6,), generator=gen)) for _ in range(n)]


def int8_of(method: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(prepared, INT8) calibrated with distributed.calibrate: one process or this rank's share."""
    torch.backends.quantized.engine = ENGINE
    prepared = prepare_for(tiny_fused(), calibration=method)
    distributed.calibrate(prepared, batches())
    return prepared, cal.convert_copy(prepared)


def qparams(int8: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every scale, zero point and int weight of a converted model, as plain tensors."""
    out = {}
    for key, value in int8.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_quantized:
            out[f"{key}.int"] = value.int_repr()
            if value.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine):
                out[f"{key}.scales"] = value.q_per_channel_scales()
        elif isinstance(value, torch.Tensor):
            out[key] = value
    return out


def worker(rank: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_from_env()
    result = {"methods": {}, "histograms": {}}
    for method in (*EXACT, "histogram"):
        prepared, int8 = int8_of(method)
        result["methods"][method] = qparams(int8)
        result["histograms"][method] = {k: v.histogram.clone() for k, v in distributed.observers(prepared).items()
                                        if hasattr(v, "histogram")}
    result["counts"] = distributed.correct_and_total(int8, labelled())
    result["accuracy"] = distributed.accuracy(int8, labelled())
    prepared = prepare_for(tiny_fused(), calibration="percentile")
    bad = batches()
    bad[1][0, 0, 0, 0] = float("nan")  # rank 1's first batch
    try:
        distributed.calibrate(prepared, bad)
    except PipelineError as exc:
        result["failure"] = str(exc)
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def one_process():
    return {method: qparams(int8_of(method)[1]) for method in (*EXACT, "histogram")}


def test_one_process_is_todays_path():
    assert distributed.world() == (0, 1) and distributed.is_main()
    prepared, reference = prepare_for(tiny_fused(), calibration="percentile"), prepare_for(tiny_fused(),
                                                                                             calibration="percentile")
    assert distributed.calibrate(prepared, batches()) == cal.calibrate(reference, batches()) == 28
    assert distributed.reduce_observers(prepared) == {}
    assert cal.ranges(prepared) == cal.ranges(reference)
    assert list(distributed.shard(range(5))) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("method", EXACT)
def test_every_rank_converts_the_one_process_int8_model(ranks, one_process, method):
    expected = one_process[method]
    for rank in ranks:
        got = rank["methods"][method]
        assert got.keys() == expected.keys()
        different = [k for k in expected if not torch.equal(got[k], expected[k])]
        assert not different, f"{method}: {different}"


def test_range_histograms_merge_to_the_one_process_counts(ranks):
    """Aligned grids make the merge a sum of exactly merged bins; only a value on a bin edge can land in the
    neighbouring bin, because histc rounds (x + range) at the grid each batch was counted on (measured here: 2 of
    114,688 values in conv1, 1 of 57,344 in add)."""
    prepared = prepare_for(tiny_fused(), calibration="percentile")
    cal.calibrate(prepared, batches())
    for name, obs in distributed.observers(prepared).items():
        for rank in ranks:
            got = rank["histograms"]["percentile"][name]
            assert got.sum() == obs.histogram.sum()
            assert (got - obs.histogram).abs().sum() <= 2 * 1e-4 * obs.histogram.sum(), name


def test_torch_histogram_is_close_and_the_same_on_every_rank(ranks, one_process):
    a, b = (r["methods"]["histogram"] for r in ranks)
    assert all(torch.equal(a[k], b[k]) for k in a)  # every rank converts the same model
    scales = [k for k in a if k.endswith("scale")]
    worst = max(float((a[k] / one_process["histogram"][k] - 1).abs().max()) for k in scales)
    assert worst < HISTOGRAM_SCALE_RTOL, worst


def test_evaluation_counts_are_exact(ranks, one_process):
    int8 = int8_of("minmax")[1]
    correct = sum(int((int8(x).argmax(1) == y).sum()) for x, y in labelled())
    for rank in ranks:
        assert rank["counts"] == (correct, 30)
        assert rank["accuracy"] == correct / 30


def test_a_failing_rank_stops_every_rank_with_its_sentence(ranks):
    for rank in ranks:
        assert rank["failure"].startswith("rank 1 of 2 failed: an activation holds inf or NaN during calibration")


# --- QAT under DistributedDataParallel -------------------------------------------------------------------------

class TinyQAT(torch.nn.Module):
    """test_calibration's Tiny with fuse_model(is_qat), as torchvision's quantizable models have it."""

    def __init__(self):
        super().__init__()
        from test_calibration import Tiny

        self.net = Tiny()

    def forward(self, x):
        return self.net(x)

    def fuse_model(self, is_qat: bool = False):
        fuse = torch.ao.quantization.fuse_modules_qat if is_qat else torch.ao.quantization.fuse_modules
        fuse(self.net, [["conv1", "bn1", "relu1"], ["conv2", "bn2"]], inplace=True)


def noise(n: int, seed: int):
    from eager2trt.eager.data import Split

    gen = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=gen),
                 torch.randint(0, 10, (n,), generator=gen))


def qat_run(batch_size: int):
    """QAT of TinyQAT, 1 epoch on 64 noise images; under DDP `batch_size` is per rank."""
    from eager2trt.eager import qat

    torch.manual_seed(0)
    torch.backends.quantized.engine = ENGINE
    recipe = qat.qat_recipe(2, lr=0.05, batch_size=batch_size)
    run = qat.quantize_qat(TinyQAT().eval(), batches(), noise(64, 2), noise(16, 3), epochs=2, recipe=recipe,
                           calibration="percentile", engine=ENGINE, device=torch.device("cpu"))
    return {"int8": qparams(run.int8), "twin": run.float_model.state_dict(), "history": run.history.epochs}


def qat_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_from_env()
    torch.save(qat_run(batch_size=8), f"{out_dir}/qat{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_qat_takes_the_one_process_steps_of_the_combined_batch(tmp_path):
    """Two ranks of 8 images per step take the step one process takes on those 16 images (BatchNorm is frozen in
    QAT, so the loss is per image; DDP averages the two halves' gradients), up to float summation order; both
    ranks end with the same INT8 model."""
    mp.spawn(qat_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"qat{r}.pt", weights_only=False) for r in range(2))
    one = qat_run(batch_size=16)
    assert all(torch.equal(a["int8"][k], b["int8"][k]) for k in a["int8"])  # every rank the same model
    learned = [k for k in one["twin"] if k.endswith(("weight", "bias")) and "post_process" not in k]
    assert len(learned) == 6  # conv1, conv2, fc: BatchNorm folded in the twin
    for k in learned:
        assert torch.allclose(a["twin"][k], one["twin"][k], rtol=1e-4, atol=1e-6), k
    scales = [k for k in one["int8"] if k.endswith(("scale", "scales"))]
    assert all(torch.allclose(a["int8"][k], one["int8"][k], rtol=1e-5) for k in scales)
    weights = [k for k in one["int8"] if k.endswith(".int")]
    flipped = sum(int((a["int8"][k].int() - one["int8"][k].int()).abs().gt(0).sum()) for k in weights)
    assert flipped <= 2 and all((a["int8"][k].int() - one["int8"][k].int()).abs().max() <= 1 for k in weights)
    for ours, theirs in zip(a["history"], one["history"]):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert ours["train_acc"] == theirs["train_acc"]


# --- the command line under torchrun, and the benchmark ------------------------------------------------------------

def test_benchmark_runs_at_one_and_two_processes(tmp_path):
    import json

    from conftest import ROOT, run_script

    proc = run_script(ROOT / "bench" / "distributed.py", "--arch", "resnet18", "--size", "32", "--procs", "1", "2",
                      "--batch-size", "4", "--steps", "2", "--warmup", "1", "--device", "cpu", "--output-dir",
                      tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "distributed.json").read_text())["rows"]
    assert [r["procs"] for r in rows] == [1, 2]
    assert all(r["qat_images_per_s"] > 0 and r["eval_images_per_s"] > 0 for r in rows)
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| 2 | ")  # the table is printed last
