"""Mixed precision: the `train.dtype` setting as an autocast context and a gradient scaler.

Parameters and optimizer state stay fp32; only the forward runs under autocast. fp16 needs a
`GradScaler` (its range is too small for raw gradients); bf16 has fp32's range and does not.
Training and evaluation use the same context, so eval numbers match what training saw.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast and loss scaling for one device type and one `train.dtype`."""

    def __init__(self, dtype: str, device: torch.device | str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown train.dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        self.name = dtype
        self.dtype = DTYPES[dtype]
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == "fp16")

    @property
    def enabled(self) -> bool:
        return self.dtype != torch.float32

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward's context: autocast in the run's dtype (nothing at all for fp32)."""
        if not self.enabled:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.dtype):
            yield

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler.is_enabled() and state:
            self.scaler.load_state_dict(state)
