"""Quantized CPU engines: which ones compute what the exported Q/DQ graph computes, and choosing one."""

import functools
import sys

import torch

from ..errors import require_choice

# Quantized CPU engines whose INT8 arithmetic matches the exported Q/DQ graph (int32 accumulation, like
# TensorRT), in order of preference. x86 and fbgemm accumulate u8*s8 products pairwise in 16 bits
# (vpmaddubsw), which saturates at full-range activations; PyTorch's own x86 qconfig uses reduce_range=True
# for this reason, which a TensorRT-exact scheme cannot. Measured: bench/engines.py, README "Engine".
FAITHFUL_ENGINES = ("onednn", "qnnpack")
DRIFTING_ENGINES = ("x86", "fbgemm")
DEFAULT_ENGINE = FAITHFUL_ENGINES[0]


def supported_engines() -> list[str]:
    """The quantized CPU engines this torch build has."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def faithful_engine() -> str:
    """The first of FAITHFUL_ENGINES this build has, with a one-line notice when it is not onednn."""
    supported = supported_engines()
    for name in FAITHFUL_ENGINES:
        if name in supported:
            if name != DEFAULT_ENGINE:
                _notice(f"note: this torch build has no {DEFAULT_ENGINE} quantized engine; using {name}, "
                        f"which also matches the exported Q/DQ graph")
            return name
    _notice(f"note: this torch build has none of {', '.join(FAITHFUL_ENGINES)}; using {supported[0]}, whose "
            f"INT8 results may differ from the exported Q/DQ graph")
    return supported[0]


def select_engine(name: str = DEFAULT_ENGINE) -> str:
    """Set and return the quantized CPU engine; the default falls back to a faithful one this build has."""
    name = faithful_engine() if name == DEFAULT_ENGINE else require_choice("--engine", name, supported_engines())
    if name in DRIFTING_ENGINES:
        _notice(f"warning: the {name} engine drifts from the exported Q/DQ graph (and TensorRT) on depthwise "
                f"models at full-range 8-bit activations; use --engine {DEFAULT_ENGINE} for fidelity")
    torch.backends.quantized.engine = name
    return name


@functools.lru_cache(maxsize=None)
def _notice(message: str) -> None:
    """Print `message` to stderr once per process (select_engine runs at validation and at quantization)."""
    print(message, file=sys.stderr)
