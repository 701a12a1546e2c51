"""Data-parallel calibration and evaluation (eager2trt/eager/distributed.py): two gloo processes on CPU against one
process on the same batches. The INT8 model each rank converts must equal the one-process model (every scale, zero
point and int weight) for minmax and the RangeObserver methods; torch.ao's histogram is measured; evaluation counts
are exact; a failing rank stops both with one sentence. The main command under torchrun (2 gloo ranks) writes the
one-process INT8 model once, from rank 0."""

import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_calibration import tiny_fused

from eager2trt.eager import calibration as cal
from eager2trt.eager import distributed
from eager2trt.eager.quantize import prepare_for
from eager2trt.errors import PipelineError

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

# the shipped ResNet18 on a 10-class folder of real CIFAR-10 PNGs (12 training, 4 test images a class), read as an
# image folder at 32 px: 4 calibration batches of 8 (rank 0 takes batches 0 and 2, rank 1 batches 1 and 3).
# percentile: its RangeObserver grids must be handed from rank 0 to rank 1 to merge exactly; minmax would be exact
# without that, and auto chooses minmax on these few images (a tie)
TORCHRUN_FLAGS = ["--image-size", 32, "--workers", 0, "--calibration", "percentile", "--calib-batches", 4,
                  "--batch-size", 8, "--latency-runs", 2, "--accuracy-budget", 50]


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    import shutil

    from conftest import DATA_DIR

    if not (DATA_DIR / "train").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {DATA_DIR}; set CIFAR10_DIR")
    root = tmp_path_factory.mktemp("png10")
    for split, source, count in (("train", "train", 12), ("val", "test", 4)):
        for c in sorted(p.name for p in (DATA_DIR / source).iterdir() if not p.name.startswith(".")):
            (root / split / c).mkdir(parents=True)
            for f in sorted((DATA_DIR / source / c).iterdir())[:count]:
                shutil.copy(f, root / split / c / f.name)
    return root


def torchrun(*args):
    """resnet_torch.py under `python -m torch.distributed.run` with 2 CPU processes (gloo); each rank's lines come
    prefixed with [default<rank>]: (--tee 3)."""
    import os

    from conftest import ROOT

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "--tee", "3", "resnet_torch.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def single_process(capsys, *args):
    """resnet_torch.py in this process, at the ranks' one thread (fewer threads can sum a float activation in
    another order, and a range method sees the difference)."""
    from test_data_folders import cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli(capsys, "eager2trt.cli.quantize", *args)
    finally:
        torch.set_num_threads(threads)


def qdq_scales(path) -> dict:
    """Every QuantizeLinear / DequantizeLinear node's scale, from an initializer or a Constant node."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant"})
    return {n.name: values[n.input[1]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}


def test_torchrun_main_command_makes_the_one_process_int8_model(png_folder, tmp_path, capsys):
    """The real command under torchrun, 2 gloo ranks: exit 0, rank 0 alone reports and writes, metrics.json
    records the world, and the INT8 ONNX every rank's merged calibration made is the one-process one."""
    import json

    import onnx
    from conftest import ROOT
    from test_data_folders import written

    flags = ["--data-dir", png_folder, "--checkpoint", ROOT / "saved_models" / "resnet_cifar10.pt", *TORCHRUN_FLAGS]
    proc = torchrun(*flags, "--output-dir", tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [line for line in proc.stdout.splitlines() if line.startswith("[default1]")]  # rank 1 is silent
    assert sum(line.startswith("[default0]:wrote ") for line in proc.stdout.splitlines()) == 1
    single = single_process(capsys, *flags, "--output-dir", tmp_path / "one")
    assert single.returncode == 0, single.stderr[-3000:]
    assert written(tmp_path / "two") == written(tmp_path / "one")  # nothing more: no rank's own copy
    two, one = (json.loads((tmp_path / d / "metrics.json").read_text())["pytorch"] for d in ("two", "one"))
    assert two["distributed"] == {"world_size": 2, "backend": "gloo"} and "distributed" not in one
    int8 = "resnet18_quantized.onnx"
    scales, expected = qdq_scales(tmp_path / "two" / int8), qdq_scales(tmp_path / "one" / int8)
    assert len(expected) > 60 and scales.keys() == expected.keys()
    assert not [k for k in expected if not np.array_equal(scales[k], expected[k])]
    # the whole graph too: int weights, zero points, structure
    assert onnx.load(str(tmp_path / "two" / int8)).graph == onnx.load(str(tmp_path / "one" / int8)).graph
    assert two["int8_accuracy"] == one["int8_accuracy"]


def test_torchrun_a_refusal_on_rank_0_stops_both_ranks_in_one_sentence(tmp_path):
    """Rank 0 alone takes the output folder's lock; another run holding it stops both ranks with one sentence and no
    traceback of ours (torchrun's launcher adds its own report of the ranks' exit codes)."""
    import fcntl
    import re

    from conftest import ROOT

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".eager2trt.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = torchrun("--data-dir", tmp_path / "never_read", "--checkpoint",
                        ROOT / "saved_models" / "resnet_cifar10.pt", *TORCHRUN_FLAGS, "--output-dir", out)
    assert proc.returncode != 0
    sentence = (f"[default0]:error: rank 0 of 2 failed: output directory {out.resolve()} is in use by another "
                f"run (it holds {out.resolve() / '.eager2trt.lock'}); wait for that run to finish or write to "
                f"another folder")
    ours = [line for line in proc.stderr.splitlines() if line.startswith("[default")]
    assert ours == [sentence], proc.stderr[-3000:]
    # torchrun's report: a rank exited with run_cli's code (the first to exit, torchrun stops the other: SIGTERM,
    # after rank 0 has said why, as both leave the failed exchange together)
    assert re.search(r"exitcode\s*:\s*2\b", proc.stderr)


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
