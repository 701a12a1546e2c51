"""Atomic artifact writing, output-folder locks, and the machine-readable metrics file."""

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Union

from .errors import PipelineError

LOCK_NAME = ".eager2trt.lock"
# A parent that already holds the lock of these folders (scripts/run_pipeline.sh) lists them here, separated
# by os.pathsep, so its children do not stop at their own parent's lock.
LOCKED_DIRS_ENV = "EAGER2TRT_LOCKED_DIRS"
# Temporary files are named .<artifact>.<pid>.<random>.tmp so a later run can tell a dead writer's leftovers.
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.tmp$")


def _os_error(path: Path, exc: OSError) -> PipelineError:
    reason = exc.strerror or str(exc)
    return PipelineError(f"cannot write {path} ({reason}); free space there or choose another output location")


def ensure_writable_dir(path: Path, flag: str = "--output-dir") -> Path:
    """Create `path` if needed and prove we can write there, before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=f".probe.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PipelineError(f"output directory {path} is not writable ({exc.strerror}); "
                            f"pass a writable {flag}") from None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary files in `directory` left by writers that no longer run (e.g. killed with SIGKILL)."""
    removed = []
    try:
        candidates = list(Path(directory).glob(".*.tmp"))
    except OSError:
        return removed
    for p in candidates:
        m = _TEMP.match(p.name)
        if m and not _alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary name carries this process id, so a later write into the folder removes it if this
    process dies before renaming; an OS error (full disk, quota, permissions) becomes one sentence.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as exc:
        raise PipelineError(f"cannot write {path} ({exc.strerror}); choose a writable output path") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the artifact normal permissions
            os.replace(tmp, path)
        except OSError as exc:
            raise _os_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_torch(obj, path: Path) -> Path:
    """torch.save `obj` atomically; serialized in memory first, because torch's own file writer turns a full
    disk into an opaque RuntimeError (torch.jit.save even aborts the process)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue())


def check_onnx(data: bytes, path: Path) -> None:
    """Raise unless the serialized model passes onnx.checker and onnxruntime can load it."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except Exception as exc:  # onnx raises ValidationError, DecodeError, InferenceError...
        raise PipelineError(f"refusing to write {path}: the model fails onnx.checker "
                            f"({str(exc).strip().splitlines()[0][:160]}); nothing was written") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise PipelineError(f"refusing to write {path}: onnxruntime cannot load the model "
                            f"({str(exc).strip().splitlines()[0][:160]}); nothing was written") from None


def save_onnx(model: Union["onnx.ModelProto", bytes], path: Path) -> Path:  # noqa: F821
    """Check an ONNX model (onnx.checker and an onnxruntime session), then write it atomically."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    check_onnx(data, path)
    return write_bytes(path, data)


def refuse_overwrite(path: Path, allowed: bool, flag: str = "--overwrite") -> None:
    """Stop before any work when `path` exists and the user did not ask to replace it."""
    if Path(path).exists() and not allowed:
        raise PipelineError(f"{path} already exists and this run would replace it; pass {flag} to replace it, "
                            f"or choose another --output-dir")


@contextlib.contextmanager
def output_lock(*directories: Path) -> Iterator[None]:
    """Hold an exclusive lock on each output folder while a run writes there; a second run stops at once.

    fcntl.flock on <folder>/.eager2trt.lock, the same lock `flock(1)` takes in scripts/run_pipeline.sh.
    The lock file itself stays: deleting it would let two runs lock two different files.
    """
    held = {d for d in os.environ.get(LOCKED_DIRS_ENV, "").split(os.pathsep) if d}
    with contextlib.ExitStack() as stack:
        for d in dict.fromkeys(Path(d).resolve() for d in directories):
            if str(d) in held:
                continue  # our parent process holds it for us
            lock = d / LOCK_NAME
            try:
                d.mkdir(parents=True, exist_ok=True)
                fh = stack.enter_context(open(lock, "a"))
            except OSError as exc:
                raise PipelineError(f"output directory {d} is not writable ({exc.strerror}); "
                                    f"choose a writable output location") from None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise PipelineError(f"cannot lock {lock} ({exc.strerror}); choose another output location") \
                        from None
                raise PipelineError(f"output directory {d} is in use by another run (it holds {lock}); wait for "
                                    f"that run to finish or write to another folder") from None
            remove_stale_temps(d)
        yield


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
