"""Atomic artifact writing and the machine-readable metrics file."""

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import PipelineError


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` if needed and prove we can write there, before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        raise PipelineError(
            f"output directory {path} is not writable ({exc.strerror}); pass a writable --output-dir"
        ) from None
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PipelineError(f"cannot write {path} ({exc.strerror}); choose a writable output path") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the artifact normal permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def update_metrics(path: Path, section: str, values: dict) -> dict:
    """Merge `values` into `section` of the metrics JSON at `path` (created if absent); return it all."""
    path = Path(path)
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}  # a corrupt metrics file is rewritten rather than blocking the pipeline
    data.setdefault(section, {}).update(values)
    write_json(path, data)
    return data
