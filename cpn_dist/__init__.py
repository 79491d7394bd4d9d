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

# module → the names it defines, importable from here (no name is also a submodule's, which an import would shadow)
_EXPORTS = {
    "cpn_dist.config.run": ("Config",),
    "cpn_dist.config.load": ("load_config",),
    "cpn_dist.cpn.model": ("CPNet", "build_model"),
    "cpn_dist.models": ("load_weights",),
    "cpn_dist.cpn.loss": ("cpn_loss",),
    "cpn_dist.cpn.task": ("CPNTask",),
    "cpn_dist.cpn.infer": ("InferSettings", "infer_samples"),
    "cpn_dist.data.shards.pack": ("pack_split",),
    "cpn_dist.data.loading.loader": ("build_train_loader",),
    "cpn_dist.labels.evaluate": ("sweep",),
    "cpn_dist.demo.run": ("run_demo",),
}


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """The ``__all__`` and ``__getattr__`` of a package whose names load on first use: ``exports`` maps each
    module to the names it defines, and importing the package imports none of those modules (nor torch)."""
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name in home:
            return getattr(import_module(home[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(home), __getattr__


_names, __getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["__version__", *_names]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
