"""The tensors of a TorchScript archive (OpenAI's CLIP `.pt` files), read as data: nothing in it runs.

`torch.load` hands such an archive to `torch.jit.load`, which compiles and runs the code shipped in it.
Here its `data.pkl` (the module tree) is read by an Unpickler that can build only inert placeholders for
the `__torch__.*` modules, tensors over the raw storages in `data/<key>`, dtype markers for the
`torch.*Storage` classes and OrderedDicts; any other global in the file is refused before anything runs.
Walking the placeholders' attribute dicts by name gives the state_dict keys.
"""
from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engines.checkpoints import _first_line
from engines.errors import CheckpointError


def _archive_root(names: list[str]) -> str | None:
    """'<folder>/' of a torch zip (every entry sits under one folder holding data.pkl)."""
    roots = {name.split("/", 1)[0] for name in names if name.count("/") == 1 and name.endswith("/data.pkl")}
    return f"{roots.pop()}/" if len(roots) == 1 else None


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (a torch zip with code/ or constants.pkl)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    root = _archive_root(names)
    return root is not None and (f"{root}constants.pkl" in names or any(n.startswith(f"{root}code/") for n in names))


class _ScriptModule:
    """A `__torch__.*` module of a TorchScript archive, as data: its attribute dict (never its code)."""

    def __init__(self) -> None:
        self.attributes: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _Refused(pickle.UnpicklingError):
    pass


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    hooks: Any = None, metadata: Any = None) -> Tensor:
    """torch._utils._rebuild_tensor_v2's job on a storage read by `persistent_load`, bounds-checked."""
    if not isinstance(storage, Tensor) or not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise _Refused("a tensor with malformed storage, size or stride")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's data.pkl: placeholders for modules, tensors, OrderedDicts; nothing else."""

    def __init__(self, handle: Any, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(handle)
        self._archive, self._root = archive, root
        self._storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__.") or module == "__torch__":
            return _ScriptModule
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype) and isinstance(pid[2], str)):
            raise _Refused(f"a persistent id {str(pid)[:60]!r}")
        dtype, key = pid[1], pid[2]
        if key not in self._storages:
            try:
                data = bytearray(self._archive.read(f"{self._root}data/{key}"))
            except KeyError:
                raise _Refused(f"a storage data/{key} the archive lacks") from None
            self._storages[key] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return self._storages[key]


def read_torchscript_tensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a TorchScript archive's module tree, by state_dict key, without running the archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = _archive_root(archive.namelist())
            if root is None:
                raise CheckpointError(f"{path}: a zip without one data.pkl; not a TorchScript archive")
            with archive.open(f"{root}data.pkl") as handle:
                tree = _TorchScriptUnpickler(handle, archive, root).load()
    except _Refused as err:
        raise CheckpointError(
            f"{path}: refused: the TorchScript archive asks for {err}, which is not on the allow-list of "
            "weights (module placeholders, tensors, storages); nothing from it was run") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, OSError) as err:
        raise CheckpointError(f"{path}: corrupt or unsupported TorchScript archive ({_first_line(err)})") from None
    if not isinstance(tree, _ScriptModule):
        raise CheckpointError(f"{path}: the archive's data.pkl holds a {type(tree).__name__}, not a module")
    out: dict[str, Tensor] = {}
    seen: set[int] = set()

    def walk(node: _ScriptModule, prefix: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        for name, value in node.attributes.items():
            if isinstance(value, Tensor):
                out[prefix + str(name)] = value
            elif isinstance(value, _ScriptModule):
                walk(value, f"{prefix}{name}.")

    walk(tree, "")
    return out
