"""Atomic artifact writing, output-folder locks, and the machine-readable metrics file."""

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Union

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


def _write_protected(st: os.stat_result, path: Path) -> bool:
    """No write bit for anyone (chmod a-w), or not writable by us; root passes os.access, so the bits decide too."""
    return not (st.st_mode & 0o222) or not os.access(path, os.W_OK)


def _existing_target(path: Path, replace_protected: bool) -> Optional[int]:
    """The permission bits of the file `path` will replace (None if there is none); refuse a directory, and a
    write-protected file unless `replace_protected`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PipelineError(f"cannot write {path} ({exc.strerror}); choose a writable output path") from None
    if stat.S_ISDIR(st.st_mode):
        raise PipelineError(f"cannot write {path}: it is a directory; pass a file path inside it instead")
    if _write_protected(st, path) and not replace_protected:
        raise PipelineError(f"{path} is write-protected (mode {stat.S_IMODE(st.st_mode):04o}), so it is not "
                            f"replaced; make it writable (chmod u+w) to replace it, or choose another output path")
    return stat.S_IMODE(st.st_mode)


@contextlib.contextmanager
def atomic_path(path: Path, replace_protected: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary name carries this process id, so a later write into the folder removes it if this
    process dies before renaming; an OS error (full disk, quota, permissions) becomes one sentence.
    A file being replaced keeps its permission bits; a write-protected one is refused unless
    `replace_protected` (then it stays write-protected), a directory always.
    """
    path = Path(path)
    mode = _existing_target(path, replace_protected)
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
            # mkstemp creates 0600: give a new artifact normal permissions, a replaced one its own
            os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
            os.replace(tmp, path)
        except OSError as exc:
            raise _os_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: Path, data: bytes, replace_protected: bool = False) -> Path:
    """Write `data` to `path` atomically (see atomic_path for `replace_protected`)."""
    with atomic_path(path, replace_protected) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_torch(obj, path: Path, replace_protected: bool = False) -> Path:
    """torch.save `obj` atomically; serialized in memory first, because torch's own file writer turns a full
    disk into an opaque RuntimeError (torch.jit.save even aborts the process)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes(path, buf.getvalue(), replace_protected)


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


def save_onnx(model: Union["onnx.ModelProto", bytes], path: Path,  # noqa: F821
              replace_protected: bool = False) -> Path:
    """Check an ONNX model (onnx.checker and an onnxruntime session), then write it atomically."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    _existing_target(Path(path), replace_protected)  # refuse before the checks, which take seconds on big models
    check_onnx(data, path)
    return write_bytes(path, data, replace_protected)


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


def write_json(path: Path, data: dict, replace_protected: bool = False) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path, replace_protected) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --- outputs that would destroy inputs ---------------------------------------------------------------------

Paths = Union[Mapping[str, Optional[Path]], Iterable[Optional[Path]]]


def _named(paths: Paths, kind: str) -> list[tuple[str, Path]]:
    """(argument name, path) pairs: a mapping's keys name the arguments, else `kind[i]`; None entries dropped."""
    items = paths.items() if isinstance(paths, Mapping) else ((f"{kind}[{i}]", p) for i, p in enumerate(paths))
    return [(name, Path(p)) for name, p in items if p is not None]


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_file(out: Path, inp: Path) -> Optional[str]:
    """How `out` names the file `inp` names ("the same path", "a symbolic link", "a hard link"), or None."""
    if os.path.abspath(out) == os.path.abspath(inp):
        return "the same path"
    if out.resolve() == inp.resolve():
        return "the same file through a symbolic link"
    ident = _identity(out)
    return "a hard link to the same file" if ident is not None and ident == _identity(inp) else None


def refuse_same_file(inputs: Paths, outputs: Paths, overwrite: bool = False,
                     overwrite_hint: str = "pass overwrite=True") -> None:
    """Stop before any work when an output would destroy an input of the same run, is a directory, or is a
    write-protected file (unless `overwrite`), or when two outputs name one file.

    `inputs`/`outputs` map argument names to paths (the names appear in the sentence: the CLI passes its flags,
    the API its parameter names), or are plain lists. Resolved paths, symbolic and hard links all count.
    """
    ins, outs = _named(inputs, "inputs"), _named(outputs, "outputs")
    for i, (out_name, out) in enumerate(outs):
        for in_name, inp in ins:
            how = _same_file(out, inp)
            if how:
                raise PipelineError(f"{out_name} {out} is {how} as {in_name} {inp}, so writing it would destroy "
                                    f"the input this run reads; choose another {out_name} path")
        for other_name, other in outs[i + 1:]:
            if _same_file(other, out):
                raise PipelineError(f"{out_name} and {other_name} both name {out}, so one output would replace "
                                    f"the other; give each its own path")
        if out.is_dir():
            raise PipelineError(f"{out_name} {out} is a directory; pass a file path (e.g. inside it) instead")
        st = os.stat(out) if out.exists() else None
        if st is not None and _write_protected(st, out) and not overwrite:
            raise PipelineError(f"{out_name} {out} is write-protected (mode {stat.S_IMODE(st.st_mode):04o}), so "
                                f"this run will not replace it; make it writable (chmod u+w), {overwrite_hint}, "
                                f"or choose another {out_name} path")


# --- a run's artifacts are replaced as a whole ---------------------------------------------------------------

RUN_MARKER = ".eager2trt.run-in-progress"
PREVIOUS_RUN = "previous-run"
_HELD: set = set()  # output folders a fresh_run of this process holds: a nested one is part of the outer run


@contextlib.contextmanager
def fresh_run(output_dir: Path, names: Iterable[str],
              keep_previous: Optional[Callable[[], bool]] = None) -> Iterator[Optional[Path]]:
    """Hold a run's artifacts `names` in `output_dir` together: an earlier run's are moved to
    <output_dir>/previous-run/ first (yielded; deleted once this run succeeds), and a marker says a run is in
    progress until the block ends without an exception. An interrupted run thus never leaves new exports
    beside old metrics: the folder holds only this run's files and the marker, the earlier run is intact.

    Call it with the output folder locked (output_lock). A folder whose marker says an earlier run was
    interrupted holds that run's partial artifacts only; they are deleted, the earlier complete run stays aside.
    A run that finished but failed a check (`keep_previous()` true at the end) leaves its checked files and keeps
    the earlier run aside: neither is thrown away.

    Nested for the same folder (the main job holds one around the pipeline's, so that its FP16 ONNX and
    metrics.json are part of the run) the inner block does nothing: the outer one decides.
    """
    d = Path(output_dir)
    key = d.resolve()
    if key in _HELD:
        yield None
        return
    _HELD.add(key)
    try:
        yield from _fresh_run(d, names, keep_previous)
    finally:
        _HELD.discard(key)


def _fresh_run(d: Path, names: Iterable[str], keep_previous: Optional[Callable[[], bool]]) -> Iterator[Optional[Path]]:
    marker, aside = d / RUN_MARKER, d / PREVIOUS_RUN
    names = list(names)
    try:
        if marker.exists():
            for n in names:
                (d / n).unlink(missing_ok=True)
        elif any((d / n).exists() for n in names):
            shutil.rmtree(aside, ignore_errors=True)
            aside.mkdir(parents=True)
            for n in names:
                if (d / n).exists():
                    os.replace(d / n, aside / n)
            print(f"notice: moved the earlier run's artifacts in {d} to {aside}; they are deleted when this run "
                  f"completes", file=sys.stderr)
        started = {"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_json(marker, started)
    except OSError as exc:
        raise _os_error(d, exc) from None
    try:
        yield aside if aside.is_dir() else None
    except BaseException:  # Ctrl-C included; a long-lived process (a notebook) keeps its pid, so say it
        with contextlib.suppress(PipelineError, OSError):
            write_json(marker, {**started, "interrupted": True})
        raise
    marker.unlink(missing_ok=True)
    if keep_previous is not None and keep_previous() and aside.is_dir():
        print(f"notice: the earlier run's artifacts stay in {aside}", file=sys.stderr)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def check_complete(output_dir: Path) -> None:
    """Refuse to read a folder whose last run was interrupted (its marker is still there, its writer gone)."""
    marker = Path(output_dir) / RUN_MARKER
    if not marker.exists():
        return
    try:
        info = json.loads(marker.read_text())
        pid, started, interrupted = int(info["pid"]), str(info["started"]), bool(info.get("interrupted"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pid, started, interrupted = -1, "at an unknown time", True
    if not interrupted and pid > 0 and _alive(pid):
        raise PipelineError(f"{output_dir} is being written by a run in progress (process {pid}); wait for it "
                            f"to finish")
    aside = Path(output_dir) / PREVIOUS_RUN
    restore = f", or use the earlier complete run kept in {aside}" if aside.is_dir() else ""
    raise PipelineError(f"{output_dir} holds the partial artifacts of a run started {started} that was "
                        f"interrupted; rerun that run to completion{restore}")
