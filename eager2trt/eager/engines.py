"""Quantized CPU engines: which ones compute what the exported Q/DQ graph computes on this machine, and choosing one.

The Q/DQ graph (and TensorRT) accumulates int8 products in int32. Some engine kernels multiply u8 activations by
s8 weights pairwise into 16 bits (x86's vpmaddubsw), which saturates at full-range activations: fbgemm and x86
always do; onednn does on CPUs without AVX-512 VNNI (measured: AMD EPYC with AVX2 only), not on those with it.
PyTorch's own x86 qconfig sidesteps this with reduce_range=True, which a TensorRT-exact scheme cannot. So which
engine is faithful is measured per machine by a probe, not assumed per engine name.
"""

import functools
import sys

import torch

from ..errors import PipelineError
from .quiet import quantized_api

AUTO = "auto"
FAITHFUL_ENGINES = ("onednn", "qnnpack")  # preference order among engines that pass the probe
DEFAULT_ENGINE = AUTO
PROBE_CHANNELS = 64


def supported_engines() -> list[str]:
    """The quantized CPU engines this torch build has."""
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


@functools.lru_cache(maxsize=None)
def probe_error(engine: str) -> float:
    """Output error, in output quantization steps, of one quantized 1x1 convolution at full-range activations.

    Raw u8 activations 255 (quint8 zero point 128: +127) times s8 weights 127 over 64 channels: each pair of
    products is 64,770, past int16. int32 accumulation is exact (error ~0); a 16-bit pairwise kernel is off by tens
    of steps.
    """
    return _measured_on(engine, _conv_probe)


def _measured_on(engine: str, probe) -> float:
    """`probe()` run with `engine` as the quantized engine (the previous one restored); inf where the engine
    cannot run it at all."""
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
        with quantized_api():
            return probe()
    except (RuntimeError, NotImplementedError):
        return float("inf")
    finally:
        torch.backends.quantized.engine = previous


def _conv_probe() -> float:
    c = PROBE_CHANNELS
    x = torch.quantize_per_tensor(torch.full((1, c, 2, 2), 127.0), 1.0, 128, torch.quint8)
    w = torch.quantize_per_channel(torch.full((1, c, 1, 1), 127.0), torch.ones(1, dtype=torch.double),
                                   torch.zeros(1, dtype=torch.long), 0, torch.qint8)
    conv = torch.ao.nn.quantized.Conv2d(c, 1, 1)
    conv.set_weight_bias(w, None)
    exact = c * 127.0 * 127.0
    conv.scale, conv.zero_point = exact / 100.0, 128
    return float((conv(x).dequantize() - exact).abs().max() / conv.scale)


def is_faithful(engine: str) -> bool:
    """Whether `engine` accumulates like the Q/DQ graph on this machine (probe within half a step)."""
    return probe_error(engine) <= 0.5


def faithful_engines() -> list[str]:
    """The engines of FAITHFUL_ENGINES this build has and that pass the probe on this machine, in order."""
    return [e for e in FAITHFUL_ENGINES if e in supported_engines() and is_faithful(e)]


def candidate_engines(name: str = AUTO) -> list[str]:
    """Engines to try, in order: the faithful ones for AUTO (an error when there is none), else `name` alone."""
    if name != AUTO:
        if name not in supported_engines():
            raise PipelineError(f"unknown quantized engine {name!r}; choose {AUTO} or one of "
                                f"{', '.join(supported_engines())}")
        if not is_faithful(name):
            notice(f"warning: the {name} engine saturates 8-bit products on this CPU (probe off by "
                   f"{probe_error(name):.0f} steps), so PyTorch INT8 will drift from the Q/DQ graph and TensorRT; "
                   f"use engine {AUTO} for fidelity")
        return [name]
    found = faithful_engines()
    if not found:
        raise PipelineError(f"none of this torch build's quantized engines ({', '.join(supported_engines())}) "
                            f"accumulates int8 products exactly on this CPU, so PyTorch INT8 cannot serve as the "
                            f"reference for the Q/DQ graph; use a torch build with qnnpack")
    skipped = [e for e in FAITHFUL_ENGINES if e != found[0] and FAITHFUL_ENGINES.index(e) < FAITHFUL_ENGINES.index(found[0])]
    for e in skipped:
        reason = ("this torch build has no such engine" if e not in supported_engines() else
                  f"it saturates 8-bit products on this CPU (probe off by {probe_error(e):.0f} steps)")
        notice(f"note: not using the {e} quantized engine ({reason}); using {found[0]}, which matches the "
               f"exported Q/DQ graph")
    return found


def select_engine(name: str = AUTO) -> str:
    """Set and return the first candidate engine for `name` (see candidate_engines)."""
    engine = candidate_engines(name)[0]
    torch.backends.quantized.engine = engine
    return engine


@functools.lru_cache(maxsize=None)
def notice(message: str) -> None:
    """Print `message` to stderr once per process (engine choice runs at validation and at quantization)."""
    print(message, file=sys.stderr)


@functools.lru_cache(maxsize=None)
def conv_transpose_error(engine: str) -> float:
    """Output error, in output quantization steps, of one quantized ConvTranspose2d against the float arithmetic
    of the Q/DQ graph (dequantized input and weight, float64, then quantized): the transposed convolution has
    kernels of its own, which the 1x1-convolution probe does not cover (measured here: onednn off by about 100
    steps with per-tensor weights, qnnpack within one)."""
    return _measured_on(engine, _conv_transpose_probe)


def _conv_transpose_probe() -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.quantize_per_tensor(torch.randn(1, 8, 4, 4, generator=g), 0.02, 128, torch.quint8)
    w = torch.quantize_per_tensor(torch.randn(8, 4, 3, 3, generator=g) * 0.2, 0.005, 0, torch.qint8)
    bias = torch.randn(4, generator=g) * 0.1
    layer = torch.ao.nn.quantized.ConvTranspose2d(8, 4, 3, stride=2, padding=1)
    layer.set_weight_bias(w, bias)
    expected = torch.nn.functional.conv_transpose2d(x.dequantize().double(), w.dequantize().double(),
                                                    bias.double(), stride=2, padding=1)
    layer.scale, layer.zero_point = float(expected.abs().max()) / 127, 128
    return float((layer(x).dequantize().double() - expected).abs().max() / layer.scale)


def computes_conv_transpose(engine: str) -> bool:
    """Whether `engine`'s ConvTranspose matches the Q/DQ graph: within one output step, the same bound the Conv
    kernels of qnnpack meet against onnxruntime (they requantize in float32 and differ at rounding ties)."""
    return conv_transpose_error(engine) <= 1.0
