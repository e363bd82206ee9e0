"""Optional extras: the packages each brings, and one clear line when a command needs a missing one.

A command (or an option of one) that needs an extra calls ``require`` before doing any work, so
the user learns at once what to install instead of meeting a traceback after a long replay;
``sidecar``'s main turns ``MissingExtra`` into that one line and exit status 2.
"""

from __future__ import annotations

import importlib

# top-level module -> the extra that installs it (pyproject.toml's optional-dependencies)
EXTRA_OF = {"sklearn": "train", "skl2onnx": "train", "matplotlib": "train"}
_DESCRIBED = {"train": "the training extras"}


class MissingExtra(Exception):
    def __init__(self, command: str, module: str) -> None:
        self.command, self.module = command, module
        extra = EXTRA_OF.get(module, "train")
        super().__init__(f"{command}: needs {_DESCRIBED.get(extra, f'the {extra} extra')} ({module} is missing): "
                         f"pip install 'sidecar[{extra}]'")


def require(command: str, *modules: str) -> None:
    """Raise MissingExtra naming the first of ``modules`` that cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtra(command, module) from None


def missing_extra(e: ImportError, command: str) -> MissingExtra | None:
    """``e`` as a MissingExtra when it is an optional extra's package failing to import."""
    name = (e.name or "").split(".")[0]
    return MissingExtra(command, name) if name in EXTRA_OF else None
