"""What did INT8 buy me here? Batch-1 and batch-128 inference, every backend this machine has, one run.

PyTorch FP32 / INT8 (our scheme) / INT8 TorchScript on the CPU at 1 and the default thread count, the
reference's scheme (qint8 activations, qnnpack) where this build runs it, onnxruntime FP32 and Q/DQ,
CUDA FP32/FP16 eager and CUDA-graph replay, TensorRT engines when present; peak memory and file sizes.
Writes saved_models/benchmark.{json,md,png} and prints the table last.
"""

import argparse
import copy
import multiprocessing as mp
import resource
import tempfile
import warnings
from pathlib import Path

import torch

from eager2trt import contract
from eager2trt.eager.data import CIFAR10_CHW
from eager2trt.artifacts import atomic_path, ensure_writable_dir, output_lock, write_json
from eager2trt.errors import PipelineError, require_choice, require_int, require_ints, run_cli
from eager2trt.eager.model import ARCHS, build_model, fuse, load_state_dict
from eager2trt.eager.quantize import quantize
from eager2trt.pipeline import quantize_to_tensorrt
from eager2trt.runtime.timing import environment, measure, thread_sweep


DEFAULT_ENGINES = (contract.FP16_ENGINE, contract.INT8_ENGINE, contract.INT8_FAST_ENGINE)


def check_engines(given) -> list:
    """The engines to time: each given one must be a non-empty file; of the defaults, those that exist
    (a missing default is said aloud, an empty one is an error: a build was interrupted)."""
    if given is None:
        engines = []
        for path in (contract.OUTPUT_DIR / name for name in DEFAULT_ENGINES):
            if path.exists():
                engines.append(path)
            else:
                print(f"note: {path} does not exist (scripts/build_engines.sh builds it); not timed")
    else:
        engines = list(given)
        for path in engines:
            if not path.exists():
                raise PipelineError(f"engine {path} (--engines) does not exist; build it with "
                                    f"scripts/build_engines.sh, or leave it out of --engines")
    for path in engines:
        if not path.is_file():
            raise PipelineError(f"engine {path} (--engines) is not a file; pass serialized engine files")
        if path.stat().st_size == 0:
            raise PipelineError(f"engine {path} is empty (0 bytes), e.g. from an interrupted build; rebuild it with "
                                f"scripts/build_engines.sh, or leave it out of --engines")
    return engines


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=contract.OUTPUT_DIR / contract.FP32_STATE,
                   help="FP32 state_dict to benchmark")
    p.add_argument("--arch", default="resnet18", help=f"architecture of the checkpoint: {', '.join(ARCHS)}")
    p.add_argument("--data-dir", type=Path, help="calibrate on real images (latency does not depend on it; "
                                                 "without it, random calibration inputs are used)")
    p.add_argument("--output-dir", type=Path, default=contract.OUTPUT_DIR, help="where benchmark.{json,md,png} go")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 128], help="batch sizes to time")
    p.add_argument("--runs", type=int, default=200, help="timed runs per figure at batch 1 (fewer for large batches)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=list(CIFAR10_CHW),
                   help="CHW of the random calibration and timing inputs (the model is exported at this size; "
                        "TensorRT engines given must have been built for it)")
    p.add_argument("--engines", type=Path, nargs="*", default=None,
                   help="TensorRT engines to time where tensorrt and a GPU are present (default: those of "
                        f"{', '.join(DEFAULT_ENGINES)} in {contract.OUTPUT_DIR} that exist)")
    return p


def calibration(args) -> list:
    if args.data_dir is None:
        gen = torch.Generator().manual_seed(0)
        return [torch.randn(32, *args.input_size, generator=gen) for _ in range(8)]
    from eager2trt.eager.data import calibration_batches, load_cifar10

    return list(calibration_batches(load_cifar10(args.data_dir)["train"], 128, limit=16))


def build_artifacts(args, workdir: Path) -> dict:
    """FP32 model, INT8 model, TorchScript and ONNX files, made fresh from the checkpoint by the pipeline."""
    fp32 = load_state_dict(build_model(args.arch), args.checkpoint, args.arch).eval()
    calib = calibration(args)
    result = quantize_to_tensorrt(fp32, calib, workdir)
    files = {"fp32_state_dict": args.checkpoint, "fp32_onnx": result.paths.fp32_onnx,
             "int8_onnx": result.paths.int8_onnx, "int8_torchscript": result.paths.int8_torchscript,
             "int8_onnx_modified": result.paths.int8_onnx_modified}
    engine = torch.backends.quantized.engine
    try:
        reference = quantize(fuse(fp32, tuple(calib[0].shape[1:]))[0], calib[:1], activation_dtype="qint8",
                             engine="qnnpack")
        ref_note = None
    except PipelineError as exc:
        reference, ref_note = None, str(exc)
    finally:
        torch.backends.quantized.engine = engine  # our INT8 model keeps running on its own engine
    return {"fp32": fp32, "int8": result.int8, "int8_ts": result.int8_torchscript, "reference": reference,
            "reference_note": ref_note, "files": files}


def runs_for(batch: int, runs: int) -> int:
    return max(20, runs // max(1, batch // 8))


def cpu_rows(a: dict, batches: list, runs: int, chw: tuple = CIFAR10_CHW) -> list:
    from eager2trt.runtime.backends import ort_session

    def fns(threads: int, x: torch.Tensor) -> list:
        out = [(("PyTorch eager", "FP32"), lambda: a["fp32"](x)), (("PyTorch eager", "INT8 (ours)"), lambda: a["int8"](x)),
               (("PyTorch TorchScript", "INT8 (ours)"), lambda: a["int8_ts"](x))]
        if a["reference"] is not None:
            out.append((("PyTorch eager", "INT8 (reference: qint8, qnnpack)"), lambda: a["reference"](x)))
        xn = x.numpy()
        # the export before surgery: uint8 activations (U8S8), the layout onnxruntime's x86 kernels prefer
        for precision, key in (("FP32", "fp32_onnx"), ("INT8 Q/DQ", "int8_onnx_modified"),
                               ("INT8 Q/DQ uint8 export", "int8_onnx")):
            s = ort_session(a["files"][key], optimize="all", threads=threads)
            out.append((("onnxruntime", precision), lambda s=s: s.run(None, {contract.INPUT_NAME: xn})))
        return out

    rows = []
    if a["reference"] is None:
        rows.append(row("PyTorch eager", "INT8 (reference: qint8, qnnpack)", "CPU", 1, None,
                        note="unsupported on this build"))
    for batch in batches:
        x = torch.randn(batch, *chw)
        with torch.no_grad():
            for r in thread_sweep(lambda threads: fns(threads, x), runs_for(batch, runs), batch_size=batch):
                rows.append(row(*r["label"], "CPU", r["threads"], r))
    return rows


def cuda_rows(fp32: torch.nn.Module, batches: list, runs: int, chw: tuple = CIFAR10_CHW) -> list:
    if not torch.cuda.is_available():
        return []
    rows = []
    for precision, dtype in (("FP32", torch.float32), ("FP16", torch.float16)):
        model = copy.deepcopy(fp32).cuda().eval().to(dtype)
        for batch in batches:
            x = torch.randn(batch, *chw, device="cuda", dtype=dtype)
            with torch.no_grad():
                rows.append(row("PyTorch eager", precision, "CUDA", None,
                                measure(lambda: model(x), runs=runs, warmup=20, sync=torch.cuda.synchronize,
                                        batch_size=batch)))
                graph = torch.cuda.CUDAGraph()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):  # warm up on a side stream before capture, as PyTorch advises
                    for _ in range(3):
                        model(x)
                torch.cuda.current_stream().wait_stream(stream)
                with torch.cuda.graph(graph):
                    model(x)
                rows.append(row("PyTorch CUDA graph", precision, "CUDA", None,
                                measure(graph.replay, runs=runs, warmup=20, sync=torch.cuda.synchronize,
                                        batch_size=batch)))
    return rows


def engine_precision(path: Path) -> str:
    """resnet_cifar10_fp16 -> FP16, resnet_cifar10_int8 -> INT8, resnet_cifar10_int8_fast -> INT8 FAST."""
    return path.stem.removeprefix("resnet_cifar10_").replace("_", " ").upper()


def tensorrt_rows(engines: list, batches: list, runs: int, chw: tuple = CIFAR10_CHW) -> list:
    """One row per engine and batch its profile accepts; a reason row per engine where no GPU is visible."""
    rows = []
    try:
        from eager2trt.runtime.tensorrt import Engine
        import tensorrt  # noqa: F401
    except ImportError:  # each engine still gets its row, saying why it was not timed
        return [row("TensorRT", engine_precision(p), "CUDA", None, None, note="skipped: tensorrt is not installed")
                for p in engines]
    for path in engines:
        precision = engine_precision(path)
        if not torch.cuda.is_available():  # tensorrt imports without a GPU; Engine() would abort the benchmark
            rows.append(row("TensorRT", precision, "CUDA", None, None, note="skipped: no CUDA GPU visible"))
            continue
        engine = Engine(path)
        lo, hi = engine.batch_range()
        for batch in (b for b in batches if lo <= b <= hi):
            x = torch.randn(batch, *chw, device="cuda")
            rows.append(row("TensorRT", precision, "CUDA", None,
                            measure(lambda: engine(x), runs=runs, warmup=20, sync=torch.cuda.synchronize,
                                    batch_size=batch)))
    return rows


def row(backend, precision, device, threads, stats, note=None) -> dict:
    r = {"backend": backend, "precision": precision, "device": device, "threads": threads, "note": note}
    if stats:
        r.update(batch=stats["batch_size"], median_ms=stats["median_ms"], p99_ms=stats["p99_ms"],
                 throughput=stats["throughput_per_s"])
    return r


def _rss_kib(field: str = "VmRSS") -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_child(kind: str, files: dict, queue, chw: tuple = CIFAR10_CHW) -> None:
    torch.set_num_threads(1)
    base = _rss_kib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "FP32":
            model = load_state_dict(build_model(files["arch"]), files["fp32_state_dict"], files["arch"]).eval()
        else:
            model = torch.jit.load(str(files["int8_torchscript"]))
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(1, *chw))
    queue.put((base, _rss_kib(), _rss_kib("VmHWM")))


def peak_memory(files: dict, chw: tuple = CIFAR10_CHW) -> dict:
    """Peak resident memory (MiB) of a fresh process loading and running each model, and its growth."""
    ctx = mp.get_context("spawn")
    out = {}
    for kind in ("FP32", "INT8"):
        q = ctx.Queue()
        p = ctx.Process(target=_peak_rss_child, args=(kind, {k: str(v) for k, v in files.items()}, q, tuple(chw)))
        p.start()
        base, after, peak = q.get(timeout=600)
        p.join()
        out[kind] = {"peak_rss_mib": peak / 1024, "model_rss_mib": (after - base) / 1024}
    return out


def markdown(rows: list, memory: dict, sizes: dict, env: dict) -> str:
    lines = [f"Machine: {env['cpu']} ({env['cpu_count']} cores), GPU: {env['gpu'] or 'none'}, torch {env['torch']}, "
             f"onnxruntime {env.get('onnxruntime')}, quantized engine {env['quantized_engine']}", "",
             "| backend | precision | device | threads | batch | median ms | p99 ms | images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "median_ms" in r:
            lines.append(f"| {r['backend']} | {r['precision']} | {r['device']} | {r['threads'] or '-'} | {r['batch']} "
                         f"| {r['median_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput']:.0f} |")
        else:
            lines.append(f"| {r['backend']} | {r['precision']} | {r['device']} | {r['threads'] or '-'} | - | "
                         f"{r['note']} | | |")
    lines += ["", "| model | peak RSS MiB (whole process) | RSS added by loading and running the model MiB |", "|---|---|---|"]
    lines += [f"| {k} | {v['peak_rss_mib']:.0f} | {v['model_rss_mib']:.0f} |" for k, v in memory.items()]
    lines += ["", "| artifact | size MB |", "|---|---|"]
    lines += [f"| {k} | {v / 1e6:.1f} |" for k, v in sizes.items()]
    return "\n".join(lines) + "\n"


def ratios(rows: list) -> dict:
    """INT8 / FP32 median latency for each CPU setting (below 1 means INT8 is faster)."""
    def med(backend, precision, threads, batch):
        return next((r["median_ms"] for r in rows if r["backend"] == backend and r["precision"] == precision
                     and r["threads"] == threads and r.get("batch") == batch), None)
    out = {}
    for r in rows:
        if r["device"] == "CPU" and r["precision"] == "FP32" and "batch" in r:
            key = f"{r['backend']}_{r['threads']}t_b{r['batch']}"
            int8 = med(r["backend"], "INT8 (ours)" if r["backend"] == "PyTorch eager" else "INT8 Q/DQ",
                       r["threads"], r["batch"])
            if int8:
                out[key] = int8 / r["median_ms"]
    return out


def plot(rows: list, path: Path, arch: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r.get("batch") == 1]
    labels = [f"{r['backend']} {r['precision']}\n{r['device']}" + (f" {r['threads']}t" if r["threads"] else "")
              for r in sel]
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(sel) + 1.2))
    colors = ["tab:orange" if "INT8" in r["precision"] else "tab:blue" for r in sel]
    ax.barh(range(len(sel)), [r["median_ms"] for r in sel], color=colors)
    ax.set_yticks(range(len(sel)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median latency, batch 1 (ms, lower is better)")
    ax.set_title(f"{arch} CIFAR-10 inference: INT8 (orange) vs float (blue)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def validate(args) -> None:
    """Reject bad options, and a checkpoint that does not fit --arch, before the benchmark starts."""
    require_choice("--arch", args.arch, ARCHS)
    require_ints("--batch-sizes", args.batch_sizes)
    require_int("--runs", args.runs)
    for v in args.input_size:
        require_int("--input-size", v)
    if args.data_dir is not None and tuple(args.input_size) != CIFAR10_CHW:
        raise PipelineError(f"--input-size {' '.join(map(str, args.input_size))} with --data-dir: CIFAR-10 images are "
                            f"{' '.join(map(str, CIFAR10_CHW))}; leave out --input-size, or --data-dir for "
                            f"random inputs")
    args.engines = check_engines(args.engines)
    load_state_dict(build_model(args.arch), args.checkpoint, args.arch)  # one sentence naming --arch if not
    ensure_writable_dir(args.output_dir)


def main(args) -> dict:
    validate(args)
    with output_lock(args.output_dir):
        return run(args)


def run(args) -> dict:
    """Build the artifacts in a temporary folder, time every backend, write the results."""
    with tempfile.TemporaryDirectory() as tmp:
        a = build_artifacts(args, Path(tmp))
        sizes = {k: Path(v).stat().st_size for k, v in a["files"].items()}
        sizes.update({p.name: p.stat().st_size for p in args.engines if p.is_file()})
        chw = tuple(args.input_size)
        rows = cpu_rows(a, args.batch_sizes, args.runs, chw)
        rows += cuda_rows(a["fp32"], args.batch_sizes, args.runs, chw)
        rows += tensorrt_rows(args.engines, args.batch_sizes, args.runs, chw)
        memory = peak_memory({**a["files"], "arch": args.arch}, chw)
    env = environment()
    result = {"rows": rows, "int8_over_fp32": ratios(rows), "memory": memory, "file_sizes_bytes": sizes,
              "reference_scheme": a["reference_note"] or "runs on this build", "input_size": list(args.input_size),
              "environment": env}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / "benchmark.json", result)
    table = markdown(rows, memory, sizes, env)
    with atomic_path(args.output_dir / "benchmark.md") as t:
        t.write_text(table)
    plot(rows, args.output_dir / "benchmark.png", args.arch)
    print("INT8/FP32 latency ratios (below 1: INT8 faster): " +
          ", ".join(f"{k} {v:.2f}" for k, v in result["int8_over_fp32"].items()))
    print(table)
    return result


if __name__ == "__main__":
    run_cli(lambda: main(get_args_parser().parse_args()))
