"""cpn-dist: the Complementary Patch Network (Zhang et al., ICCV 2021) for weakly supervised
semantic segmentation, trained from one CPU to many GPUs.

The main entry points are importable from here — ``cpn_dist.load_config``, ``cpn_dist.build_model``,
``cpn_dist.cpn_loss`` … (see ``__all__``); they load lazily, so ``import cpn_dist`` (and ``cpn
--version``) imports no torch.
"""

from __future__ import annotations

from importlib import import_module

# The one place of the version (pyproject.toml reads it from here): a literal, so `cpn --version`
# needs no package metadata look-up.
__version__ = "0.1.0"

# name → the module that defines it (no name here is also a submodule's, which an import would shadow)
_EXPORTS = {
    "Config": "cpn_dist.config.run",
    "load_config": "cpn_dist.config.load",
    "CPNet": "cpn_dist.cpn.model",
    "build_model": "cpn_dist.cpn.model",
    "load_weights": "cpn_dist.models",
    "cpn_loss": "cpn_dist.cpn.loss",
    "CPNTask": "cpn_dist.cpn.task",
    "InferSettings": "cpn_dist.cpn.infer",
    "infer_samples": "cpn_dist.cpn.infer",
    "pack_split": "cpn_dist.data.shards.pack",
    "build_train_loader": "cpn_dist.data.loading.loader",
    "sweep": "cpn_dist.labels.evaluate",
    "run_demo": "cpn_dist.demo.run",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
