"""Faults a run must survive: a second run into the same folder, a killed writer, a full disk, a model that
fails onnx.checker, a training run that learns nothing, and an interrupted run resumed with other options."""

import os
import re
import resource
import signal
import subprocess
import sys

import onnx
import pytest

from conftest import DATA_DIR, ROOT, run_script
from eager2trt.artifacts import LOCKED_DIRS_ENV, atomic_path, output_lock, save_onnx, write_json
from eager2trt.errors import PipelineError
from qdq_graphs import conv_graph, fp32_graph
from test_cli import assert_one_sentence

SHIPPED = ROOT / "saved_models" / "resnet_cifar10.pt"


def test_second_run_into_a_locked_folder_stops_at_once(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        proc = run_script(ROOT / "resnet_torch.py", "--output-dir", out, "--checkpoint", SHIPPED,
                          "--data-dir", tmp_path / "nodata")
        assert_one_sentence(proc, f"output directory {out.resolve()} is in use by another run (it holds "
                                  f"{out.resolve() / '.eager2trt.lock'}); wait for that run to finish")
        with pytest.raises(PipelineError, match="is in use by another run"):
            with output_lock(out):
                pass
    with output_lock(out):  # released: the next run gets it
        pass


def test_pipeline_script_holds_the_lock_for_its_children(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUTPUT_DIR": str(out), "CHECKPOINT": str(SHIPPED), "PYTHON": sys.executable}
    script = ["bash", str(ROOT / "scripts" / "run_pipeline.sh"), str(tmp_path / "nodata")]
    with output_lock(out):
        proc = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: output directory {out} is in use by another run")
    # unlocked, the script takes the lock and its resnet_torch.py child runs under it: the child stops at the
    # missing data, not at its parent's lock
    proc = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True)
    assert_one_sentence(proc, "no CIFAR-10 found")


def test_a_parent_holding_the_lock_lets_its_children_in(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        os.environ[LOCKED_DIRS_ENV] = str(out.resolve())
        try:
            with output_lock(out):
                pass
        finally:
            del os.environ[LOCKED_DIRS_ENV]


KILLED_WRITER = """
import sys, time
from eager2trt.artifacts import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "metrics.json"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    leftover = writer.stdout.readline().strip()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/\.metrics\.json\.{writer.pid}\.\w{{8}}\.tmp", leftover)
    mine = tmp_path / f".other.json.{os.getpid()}.abcdefgh.tmp"  # a live writer's file stays
    mine.write_text("in progress")
    write_json(tmp_path / "other.json", {"a": 1})
    assert not os.path.exists(leftover) and mine.exists() and not target.exists()


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))


def test_an_os_error_while_writing_is_one_sentence_naming_the_path(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out" / "out.onnx"
    onnx.save(conv_graph(), str(src))
    proc = subprocess.run([sys.executable, str(ROOT / "onnx_gs.py"), "--input", str(src), "--output", str(out),
                           "--metrics", str(tmp_path / "out" / "m.json")], capture_output=True, text=True,
                          preexec_fn=_limit_file_size)
    assert_one_sentence(proc, f"cannot write {out} (File too large); free space there or choose another output")
    assert [p.name for p in out.parent.iterdir()] == [".eager2trt.lock"]  # no artifact, no temporary file


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs: a real ENOSPC (needs mount rights, as root in a container)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)])


def test_a_full_disk_is_one_sentence_and_leaves_nothing(full_disk):
    with pytest.raises(PipelineError, match=rf"cannot write {full_disk}/big.bin \(No space left on device\)"):
        with atomic_path(full_disk / "big.bin") as tmp:
            tmp.write_bytes(b"\0" * 2 * 2**20)
    assert list(full_disk.iterdir()) == []


def test_an_onnx_that_fails_the_checker_is_never_written(tmp_path):
    from eager2trt.graph.fp16 import to_fp16

    broken = to_fp16(conv_graph())  # float16 scales on DequantizeLinear: invalid, the bug fp16 now refuses
    with pytest.raises(PipelineError, match=r"refusing to write .*bad\.onnx: the model fails onnx\.checker"):
        save_onnx(broken, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []
    save_onnx(fp32_graph(), tmp_path / "good.onnx")
    assert (tmp_path / "good.onnx").exists()


# Real CIFAR-10, a few hundred training images: what a run that learns nothing, or diverges, leaves behind.

def resnet_torch(out, *flags):
    return run_script(ROOT / "resnet_torch.py", "--data-dir", DATA_DIR, "--output-dir", out, *flags)


def epoch_lines(proc):
    return [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]


@pytest.fixture(scope="module")
def chance_runs(cifar10, tmp_path_factory):
    """Two identical 1-epoch runs on 256 images: too little to learn (test accuracy 0.100 measured)."""
    outs = [tmp_path_factory.mktemp("chance") for _ in range(2)]
    return outs, [resnet_torch(out, "--epochs", "1", "--train-subset", "256") for out in outs]


def test_identical_runs_report_the_same_loss(chance_runs):
    _, (a, b) = chance_runs
    assert len(epoch_lines(a)) == 1 and epoch_lines(a) == epoch_lines(b), (epoch_lines(a), epoch_lines(b))


def test_a_model_at_chance_is_never_saved(chance_runs):
    (out, _), (proc, _) = chance_runs
    assert_one_sentence(proc, "after 1 epochs the test accuracy is 0.1", "at chance level for 10 classes (<= 0.15), "
                              "so the model was not saved; train longer (a higher --epochs resumes this run)")
    assert not (out / "resnet_cifar10.pt").exists() and not list(out.glob("*.onnx"))
    assert (out / "resnet_cifar10.train-state.pt").exists()  # kept, to resume with more epochs


def test_resume_with_other_options_then_a_corrupt_state_then_restart(chance_runs):
    (out, _), _ = chance_runs
    state = out / "resnet_cifar10.train-state.pt"
    assert_one_sentence(resnet_torch(out, "--epochs", "1", "--train-subset", "300"),
                        f"{state} holds an interrupted run with other options (--train-subset 256 there, 300 now); "
                        f"rerun with the same options to resume it, or pass --restart")
    state.write_bytes(state.read_bytes()[:4096])
    damaged = state.read_bytes()
    assert_one_sentence(resnet_torch(out, "--epochs", "1", "--train-subset", "256"),
                        f"{state} is not a usable training state (unreadable: ", "pass --restart to move it aside")
    proc = resnet_torch(out, "--epochs", "1", "--train-subset", "64", "--batch-size", "8", "--lr", "1e30", "--restart")
    assert f"--restart: moved {state} aside" in proc.stdout
    assert_one_sentence(proc, "training diverged in epoch 1 (loss nan); nothing was saved; lower --lr (now 1e+30)")
    (aside,) = out.glob("resnet_cifar10.train-state.pt.set-aside-*")
    assert aside.read_bytes() == damaged and not state.exists() and not (out / "resnet_cifar10.pt").exists()
