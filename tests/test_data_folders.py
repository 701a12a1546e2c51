"""Your own data (docs/data.md): a 20-class ImageFolder of JPEGs of mixed sizes made from CIFAR-10, through the
main command, validation and sensitivity; --calib-data, --data-loader-script, --model and --name, good and bad.

The folder is learnable in one epoch (each class's CIFAR-10 images are tinted with the class's own colour), so the
run passes the chance-level guard: measured 0.40 test accuracy at lr 0.01, against the 0.10 bound for 20 classes.
"""

import colorsys
import importlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from conftest import DATA_DIR
from test_cli import assert_one_sentence

from eager2trt.errors import run_cli

SIZES = [(32, 32), (48, 40), (57, 64), (40, 72)]  # width, height: the folder's images are of mixed sizes
CLASSES, TRAIN, VAL, SIZE = 20, 20, 3, 48
# one epoch of 400 images in batches of 16 at lr 0.01 learns the tints; percentile calibration is the fast one. On 60
# test images one image is 1.7 points, so the accuracy guard gets 10 points (measured: INT8 0.35 vs FP32 0.37)
TRAIN_FLAGS = ["--arch", "resnet18", "--image-size", SIZE, "--epochs", 1, "--batch-size", 16, "--lr", 0.01,
               "--calibration", "percentile", "--latency-runs", 2, "--accuracy-budget", 10]


def make_jpeg_folder(root: Path) -> Path:
    """20 classes (each CIFAR-10 class split in two, each tinted with its own colour) of JPEGs in train/ and val/."""
    from PIL import Image

    cifar = sorted(p.name for p in (DATA_DIR / "train").iterdir() if not p.name.startswith("."))
    for ci, c in enumerate(cifar):
        files = sorted((DATA_DIR / "train" / c).iterdir())[:2 * (TRAIN + VAL)]
        for half in range(2):
            k = 2 * ci + half
            colour = np.array(colorsys.hsv_to_rgb((k % 10) / 10, 1.0, 1.0 if k < 10 else 0.5)) * 255
            for split, part in (("train", files[half::2][:TRAIN]), ("val", files[half::2][TRAIN:])):
                folder = root / split / f"{c}_{'ab'[half]}"
                folder.mkdir(parents=True, exist_ok=True)
                for i, f in enumerate(part):
                    pixels = 0.3 * np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) + 0.7 * colour
                    Image.fromarray(pixels.astype(np.uint8)).resize(SIZES[i % len(SIZES)]).save(folder / f"{i}.jpg")
    return root


def cli(capsys, module: str, *args) -> SimpleNamespace:
    """Run a command's entry point in this process (a fresh interpreter costs 10 s): exit code and output."""
    entry = importlib.import_module(module).run
    argv, sys.argv = sys.argv, [module, *map(str, args)]
    capsys.readouterr()
    try:
        entry()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def written(folder: Path) -> list:
    """The files a run left (the folder lock aside)."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".eager2trt.lock") if folder.exists() else []


def graph_io(path: Path) -> tuple:
    """(input dims, output dims) of an ONNX graph; a symbolic dimension as its name."""
    m = onnx.load(str(path))
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return dims(m.graph.input[0]), dims(m.graph.output[0])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    if not (DATA_DIR / "train").is_dir():
        pytest.skip(f"real CIFAR-10 not found at {DATA_DIR}; set CIFAR10_DIR")
    return make_jpeg_folder(tmp_path_factory.mktemp("jpeg20"))


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """The main command trained and quantized on the folder (in this process: run_cli is the real entry)."""
    out = tmp_path_factory.mktemp("run")
    argv, sys.argv = sys.argv, ["resnet_torch.py", "--data-dir", str(folder), "--output-dir", str(out),
                                *map(str, TRAIN_FLAGS)]
    try:
        run_cli(lambda: importlib.import_module("eager2trt.cli.quantize").main(
            importlib.import_module("eager2trt.cli.quantize").get_args_parser().parse_args()))
    except SystemExit as exc:
        pytest.fail(f"the main command exited {exc.code} on the image folder")
    finally:
        sys.argv = argv
    return out


def test_main_command_trains_and_quantizes_a_20_class_jpeg_folder(trained):
    files = written(trained)
    for graph in ("resnet18_quantized_modified.onnx", "resnet18_quantized_fast.onnx"):
        assert graph_io(trained / graph) == (["batch", 3, SIZE, SIZE], ["batch", CLASSES]), graph
    assert "resnet18.pt" in files and not [f for f in files if "cifar10" in f], files  # named for the model
    record = json.loads((trained / "metrics.json").read_text())["pytorch"]
    assert record["data"]["classes"] == CLASSES and record["data"]["input_shape"] == [3, SIZE, SIZE]
    assert record["training"]["epochs"][-1]["test_acc"] > 1 / CLASSES + 0.05  # it learned: the guard's bound


def test_validation_evaluates_the_folder_like_the_main_command(trained, folder, capsys, tmp_path):
    fast = trained / "resnet18_quantized_fast.onnx"
    proc = cli(capsys, "eager2trt.cli.validate", "--onnx", fast, "--data-dir", folder, "--image-size", SIZE,
               "--reference", "none", "--metrics", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    recorded = json.loads((trained / "metrics.json").read_text())["validation"][fast.name]["accuracy"]
    measured = json.loads((tmp_path / "m.json").read_text())["validation"][fast.name]
    assert measured["samples"] == CLASSES * VAL and measured["accuracy"] == recorded


def test_onnx_gs_checks_a_graph_on_the_folder_at_its_input_size(trained, folder, capsys, tmp_path):
    """onnx_gs.py --data-dir reads any image folder (issue 24), at the graph's input size, streamed."""
    out = tmp_path / "exact.onnx"
    proc = cli(capsys, "eager2trt.cli.surgery", "--input", trained / "resnet18_quantized.onnx", "--output", out,
               "--data-dir", folder, "--metrics", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    recorded = json.loads((tmp_path / "m.json").read_text())["onnx_gs"]
    eq = recorded["checks"]["equivalence"]["figures"]
    assert eq["max_abs_diff"] == 0.0 and eq["samples"] == 32 + CLASSES * VAL  # random inputs + every val image
    assert recorded["accuracy"] == json.loads((trained / "metrics.json").read_text())["onnx_gs"]["accuracy"]


def test_an_interrupted_main_job_keeps_the_earlier_run_with_its_metrics(trained, folder, monkeypatch, tmp_path):
    """Issue 24: the FP16 ONNX and metrics.json belong to the run's files: an interruption after the graphs leaves
    the earlier run whole (metrics included) aside, never new graphs beside no metrics."""
    import shutil

    from eager2trt import jobs

    out = tmp_path / "out"
    shutil.copytree(trained, out)
    before = (out / "metrics.json").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "write_fp16", interrupted)
    argv = ["--data-dir", folder, "--output-dir", out, "--checkpoint", out / "resnet18.pt", "--image-size", SIZE,
            "--fp16-onnx", "--calib-batches", "1", "--latency-runs", "1",
            "--accuracy-budget", "100"]  # the interruption is the test: one calibration batch's accuracy is not
    with pytest.raises(KeyboardInterrupt):
        importlib.import_module("eager2trt.cli.quantize").main(
            importlib.import_module("eager2trt.cli.quantize").get_args_parser().parse_args(list(map(str, argv))))
    assert (out / "previous-run" / "metrics.json").read_text() == before
    assert "interrupted" in (out / ".eager2trt.run-in-progress").read_text()
    assert not (out / "metrics.json").exists() and (out / "resnet18_quantized_modified.onnx").exists()


def test_calib_data_npz_keyed_by_the_input_name(trained, folder, capsys, tmp_path):
    from eager2trt.eager.folders import Presets, load_image_folder

    train = load_image_folder(folder, Presets(SIZE, workers=0))["train"]
    x = np.concatenate([b.numpy() for b, _ in train.take(range(0, len(train), 7)).batches(64)])
    np.savez(tmp_path / "calib.npz", input=x)
    out = tmp_path / "out"
    proc = cli(capsys, "eager2trt.cli.quantize", "--checkpoint", trained / "resnet18.pt", "--calib-data",
               tmp_path / "calib.npz", "--data-dir", folder, "--output-dir", out, "--name", "tinted20",
               *TRAIN_FLAGS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert graph_io(out / "tinted20_quantized_modified.onnx") == (["batch", 3, SIZE, SIZE], ["batch", CLASSES])
    assert graph_io(out / "tinted20_quantized_fast.onnx")[1] == ["batch", CLASSES]
    record = json.loads((out / "metrics.json").read_text())["pytorch"]
    assert record["data"]["calibration_source"] == f"--calib-data {tmp_path / 'calib.npz'}"
    assert record["data"]["name"] == "tinted20"
    # --device auto: the GPU where there is one, PyTorch INT8 then on a sample of --cpu-sample test images
    assert record["evaluation_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert 0 < record["int8_samples"] <= json.loads((out / "metrics.json").read_text())["validation"][
        "tinted20_quantized_modified.onnx"]["samples"]


LOADER = """
import numpy as np
from eager2trt.eager.folders import Presets, load_image_folder

def load_data():
    val = load_image_folder({root!r}, Presets({size}, workers=0))["test"]
    for x, y in val.batches(25):
        yield {{"input": x.numpy()}}, y.numpy()
"""


def test_validation_evaluates_a_data_loader_script_with_labels(trained, folder, capsys, tmp_path):
    script = tmp_path / "loader.py"
    script.write_text(LOADER.format(root=str(folder), size=SIZE))
    fast = trained / "resnet18_quantized_fast.onnx"
    proc = cli(capsys, "eager2trt.cli.validate", "--onnx", fast, "--data-loader-script", script,
               "--reference", "none", "--metrics", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    recorded = json.loads((trained / "metrics.json").read_text())["validation"][fast.name]["accuracy"]
    measured = json.loads((tmp_path / "m.json").read_text())["validation"][fast.name]
    assert measured["samples"] == CLASSES * VAL and measured["accuracy"] == recorded


@pytest.fixture(scope="module")
def own_model(folder, tmp_path_factory):
    """The main command on the user's own model class (examples/'s TinyResNet, which takes num_classes)."""
    from conftest import ROOT

    out = tmp_path_factory.mktemp("own")
    factory = f"{ROOT / 'examples' / 'bring_your_own_model.py'}:TinyResNet"
    argv, sys.argv = sys.argv, ["resnet_torch.py", "--model", factory, "--data-dir", str(folder), "--output-dir",
                                str(out), *map(str, TRAIN_FLAGS)]
    try:
        run_cli(lambda: importlib.import_module("eager2trt.cli.quantize").main(
            importlib.import_module("eager2trt.cli.quantize").get_args_parser().parse_args()))
    except SystemExit as exc:
        pytest.fail(f"the main command exited {exc.code} with --model {factory}")
    finally:
        sys.argv = argv
    return out, factory


def test_own_model_factory_trains_and_names_the_artifacts(own_model):
    out, factory = own_model
    assert graph_io(out / "TinyResNet_quantized_modified.onnx") == (["batch", 3, SIZE, SIZE], ["batch", CLASSES])
    assert (out / "TinyResNet.pt").is_file() and not list(out.glob("resnet*"))
    assert json.loads((out / "metrics.json").read_text())["pytorch"]["model"] == factory


def test_sensitivity_ranks_layers_on_the_folder(own_model, folder, capsys, tmp_path):
    # the small model: resnet18's 60 quantizers cost 20 s here, TinyResNet's few a second
    proc = cli(capsys, "eager2trt.cli.sensitivity", "--input", own_model[0] / "TinyResNet_quantized.onnx", "--data-dir",
               folder, "--images", 8, "--batch-size", 8, "--workers", 0, "--top", 1, "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "sensitivity.json").read_text())["sensitivity"]
    assert report["images"] == 8 and "image folder" in report["data"] and "48 px" in report["data"], report["data"]


def test_the_cifar10_layout_keeps_the_cifar10_path(tmp_path, folder):
    from eager2trt.jobs import DataOptions, uses_cifar10

    assert uses_cifar10(DataOptions(DATA_DIR))  # the project's PNG layout: decoded once, cached, its augmentation
    assert not uses_cifar10(DataOptions(DATA_DIR, image_size=32))  # an image size asked for: torchvision presets
    assert not uses_cifar10(DataOptions(folder))  # val/, 20 classes, JPEGs


# ------------------------------------------------------------------ bad input: one sentence, exit 2, nothing written

def _array(kind: str) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype(np.float32)
    return {"rank": x[0], "channels": x[:, :1], "nan": np.where(x > 2, np.nan, x).astype(np.float32),
            "pixels": (x * 60 + 128).astype(np.float32), "nhwc": x.transpose(0, 2, 3, 1).copy()}[kind]


@pytest.mark.parametrize("make,fragment", [
    (lambda d: d / "missing.npz", "missing.npz does not exist; pass an existing .npy or .npz file"),
    (lambda d: (d / "x.txt").write_text("1") and d / "x.txt", "is neither .npy nor .npz"),
    (lambda d: np.savez(d / "x.npz", images=_array("channels")) or d / "x.npz",
     "has no array named 'input' (keys: images); save it under the model's input name"),
    (lambda d: np.save(d / "x.npy", _array("rank")) or d / "x.npy", "rank 3; save samples stacked on dim 0 as NCHW"),
    (lambda d: np.save(d / "x.npy", _array("channels")) or d / "x.npy",
     "has samples of shape (1, 48, 48) (CHW) but the model takes (3, 48, 48)"),
    (lambda d: np.save(d / "x.npy", _array("nhwc")) or d / "x.npy", "(NCHW, not NHWC)"),
    (lambda d: np.save(d / "x.npy", _array("nan")) or d / "x.npy", "NaN or inf values; save finite images"),
    (lambda d: np.savez(d / "x.npz", input=_array("pixels")) or d / "x.npz", "so it is not normalized"),
])
def test_bad_calib_data(folder, capsys, tmp_path, make, fragment):
    out = tmp_path / "out"
    proc = cli(capsys, "eager2trt.cli.quantize", "--calib-data", make(tmp_path), "--data-dir", folder,
               "--output-dir", out, *TRAIN_FLAGS)
    assert_one_sentence(proc, fragment)
    assert written(out) == []


@pytest.mark.parametrize("source,fragment", [
    (None, "is not an existing .py file; pass path/script.py or path/script.py:function"),
    ("def other():\n    return []\n", "has no function load_data; define load_data()"),
    ("import numpy as np\ndef load_data():\n    yield {'images': np.zeros((2, 3, 48, 48), np.float32)}\n",
     "gave a feed dict with keys images, not the model's input 'input'"),
    ("import numpy as np\ndef load_data():\n    yield np.zeros((2, 3, 48, 48), np.float32), [0.5, 1.5]\n",
     "gave labels of shape (2,) and type float64 for 2 samples; give one integer class index per sample"),
    ("def load_data():\n    raise ValueError('no disk')\n", "raised ValueError: no disk; fix the function"),
])
def test_bad_data_loader_script(folder, capsys, tmp_path, source, fragment):
    script = tmp_path / "loader.py"
    if source is not None:
        script.write_text(source)
    out = tmp_path / "out"
    proc = cli(capsys, "eager2trt.cli.quantize", "--data-loader-script", script, "--data-dir", folder,
               "--output-dir", out, *TRAIN_FLAGS)
    assert_one_sentence(proc, fragment)
    assert written(out) == []


NOT_QUANTIZABLE = "import torch\ndef make(num_classes):\n    return torch.nn.Linear(3, num_classes)\n"


@pytest.mark.parametrize("flags,fragment", [
    (["--model", "nocolon"], "--model nocolon names no factory; pass module:function or path/file.py:function"),
    (["--model", "{d}/nets.py:missing"], "has no function missing (its callables: make); pass"),
    (["--model", "{d}/absent.py:make"], "absent.py does not exist"),
    (["--model", "{d}/nets.py:make"], "has no QuantStub and no DeQuantStub"),
    (["--name", "../up"], "artifact name '../up' cannot prefix file names"),
    (["--image-size", "0"], "--image-size must be positive, got 0"),
    (["--workers", "-1"], "--workers must be 0 or more"),
    (["--std", "0.2", "0", "0.2"], "--std 0.2 0.0 0.2 has a value at or below 0"),
    (["--mean", "nan", "0", "0"], "--mean nan 0.0 0.0 is not finite"),
    (["--calib-data", "a.npz", "--data-loader-script", "b.py"], "pass one of them"),
    (["--device", "tpu"], "--device is 'tpu'; pass cpu, cuda (or cuda:N) or auto"),
    (["--cpu-sample", "0"], "--cpu-sample must be positive, got 0"),
])
def test_bad_model_name_and_preset_flags(folder, capsys, tmp_path, flags, fragment):
    (tmp_path / "nets.py").write_text(NOT_QUANTIZABLE)
    out = tmp_path / "out"
    flags = [f.format(d=tmp_path) for f in flags]
    proc = cli(capsys, "eager2trt.cli.quantize", "--data-dir", folder, "--output-dir", out, *TRAIN_FLAGS, *flags)
    assert_one_sentence(proc, fragment)
    assert written(out) == []
