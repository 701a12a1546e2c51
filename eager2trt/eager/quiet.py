"""PyTorch's deprecation warnings for quantized dtypes, silenced where this project calls those APIs.

torch 2.10+ warns on every quantized tensor creation that torch.quint8/qint8/qint32 "are deprecated and will be
removed in a future PyTorch release" (pytorch/pytorch#184982): eager-mode quantization still works and is what
this project converts; the warning says nothing a user can act on per run, so it is filtered at our call sites
only (README, "Quantized dtypes in PyTorch"), never globally.
"""

import contextlib
import warnings

QUANTIZED_DEPRECATION = r".*quantized tensor creation functions.*"


@contextlib.contextmanager
def quantized_api():
    """Run a block that creates quantized tensors without PyTorch's per-call deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QUANTIZED_DEPRECATION, category=UserWarning)
        yield
