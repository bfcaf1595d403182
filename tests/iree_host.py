"""Call a host bundle's entry points in-process with IREE's Python runtime (for logits checks)."""

from __future__ import annotations

from pathlib import Path

import iree.runtime as rt
import numpy as np


class HostModule:
    def __init__(self, bundle: Path):
        self.config = rt.Config("local-sync")
        index = rt.ParameterIndex()
        index.load(str(bundle / "model.irpa"))
        params = rt.create_io_parameters_module(self.config.vm_instance, index.create_provider(scope="model"))
        hal = rt.create_hal_module(self.config.vm_instance, self.config.device)
        main = rt.VmModule.mmap(self.config.vm_instance, str(bundle / "model.vmfb"))
        self.module = rt.load_vm_modules(params, hal, main, config=self.config)[-1]

    def call(self, name: str, *args: np.ndarray) -> list[np.ndarray]:
        out = getattr(self.module, name)(*args)
        out = out if isinstance(out, (tuple, list)) else [out]
        return [np.array(o.to_host(), copy=True) for o in out]  # device memory is reused by the next call
