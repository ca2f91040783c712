"""Public checkpoint formats in, the project's safetensors out; no file's code is ever run.

- rosinality stylegan2-pytorch `.pt`: `{'g_ema', 'latent_avg'?}`, training files also `args` (an argparse
  Namespace) and optimiser states. Read with `torch.load(weights_only=True)`, Namespace allow-listed.
- NVlabs stylegan2-ada-pytorch `.pkl`: `{'G_ema': <persistent module>}`. Every module is pickled as
  `torch_utils.persistence._reconstruct_persistent_obj(meta)` whose `meta['module_src']` NVlabs' loader
  executes. `_NVlabsUnpickler` allows only that call (it returns the class name and state as data),
  tensors, and plain containers; then `_generator_from_nvlabs` maps the state onto `Generator`.
- e4e / pSp `.pt`: `{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg', 'opts'}`; ReStyle's pSp / e4e
  files are the same dict (`opts['encoder_type']` BackboneEncoder / ProgressiveBackboneEncoder, input_nc 6,
  `n_iters_per_batch`); for them the state_dict must hold nothing but the encoder and the full decoder.
- The project's `.safetensors`: tensors plus metadata `architecture`, `config` (JSON constructor kwargs),
  `source_sha256`, `source_format`. e4e/pSp files keep the `encoder.`/`decoder.` prefixes.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from engines.atomic import atomic_write_bytes
from engines.cache import sha256_file
from engines.errors import CheckpointError
from engines.nets.stylegan2 import Generator

log = logging.getLogger(__name__)

Architecture = Literal["stylegan2-generator", "e4e", "psp", "restyle-psp", "restyle-e4e", "demo-encoder", "student"]
ENCODER_ARCHITECTURES: tuple[Architecture, ...] = ("e4e", "psp", "restyle-psp", "restyle-e4e", "demo-encoder")
# files with an `encoder.*` network and a StyleGAN2 `decoder.*`
_ENCODER_DECODER: tuple[Architecture, ...] = ("e4e", "psp", "restyle-psp", "restyle-e4e")
RESTYLE_ARCHITECTURES: tuple[Architecture, ...] = ("restyle-psp", "restyle-e4e")
FORMAT_TAG = "faceedit-stream/1"
# e4e / pSp `opts['encoder_type']` -> our architecture name
_ENCODER_TYPES: dict[str, Architecture] = {"Encoder4Editing": "e4e", "GradualStyleEncoder": "psp",
                                           "BackboneEncoder": "restyle-psp",
                                           "ProgressiveBackboneEncoder": "restyle-e4e"}
_ARCHITECTURE_CLASSES = {"e4e": "Encoder4Editing", "psp": "GradualStyleEncoder", "restyle-psp": "BackboneEncoder",
                         "restyle-e4e": "ProgressiveBackboneEncoder", "demo-encoder": "DemoEncoder"}


@dataclass
class Checkpoint:
    """A loaded checkpoint, built into the project's modules (eval mode, CPU, float32).

    `module` is the file's main network (generator, encoder or student); e4e/pSp files also carry
    their StyleGAN2 `decoder`. `latent_avg` is the average W ([D] or [num_ws, D]) when the file has one."""

    path: Path
    source_format: str
    sha256: str
    architecture: Architecture
    config: dict[str, Any]
    module: nn.Module
    decoder: Generator | None = None
    latent_avg: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def describe(self) -> str:
        params = sum(p.numel() for p in self.module.parameters())
        parts = [f"{self.architecture} from {self.source_format} ({params / 1e6:.1f}M parameters"]
        if self.decoder is not None:
            parts.append(f", with a {self.decoder.resolution}px StyleGAN2 decoder")
        if self.latent_avg is not None:
            parts.append(", latent_avg")
        return "".join(parts) + ")"


# ------------------------------------------------------------------------------------------- file level
def file_sha256(path: Path) -> str:
    """sha256 of a checkpoint file (its `source_sha256` once converted)."""
    return sha256_file(path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load any supported checkpoint; CheckpointError (one line naming the file) when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; pass the path of a .pt, .pkl or .safetensors file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
        sha = file_sha256(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({_first_line(err)}); "
                              "check its permissions") from None
    if not head:
        raise CheckpointError(f"{path}: the file is empty; download or convert it again")
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        return _load_safetensors(path, sha)
    if head.startswith(b"PK"):
        return _from_torch_dict(path, sha, load_torch_file(path))
    if head[:1] == b"\x80":  # a raw pickle: NVlabs .pkl, or a legacy (pre-zip) torch.save file
        if path.suffix == ".pkl":
            return _from_nvlabs_pickle(path, sha)
        return _from_torch_dict(path, sha, load_torch_file(path))
    raise CheckpointError(f"{path}: unknown checkpoint format (not a torch .pt, NVlabs .pkl or .safetensors file)")


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


# ------------------------------------------------------------------------------------ torch.load files
def load_torch_file(path: Path) -> Any:
    """torch.load(weights_only=True); argparse.Namespace (rosinality's `args`) is the one extra class."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = found.group(1) if found else "an object"
        raise CheckpointError(
            f"{path}: refused: the file asks to load {what}, which is not on the allow-list of checkpoint "
            "contents (tensors, containers, argparse.Namespace); it may run code, so it was not loaded") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated torch file ({_first_line(err)}); download it again") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _from_torch_dict(path: Path, sha: str, data: Any) -> Checkpoint:
    if isinstance(data, Mapping) and "g_ema" in data:
        gen = _generator_from_rosinality(path, data["g_ema"])
        latent_avg = _tensor_or_none(data.get("latent_avg"))
        return Checkpoint(path, "rosinality-pt", sha, "stylegan2-generator", gen.config, gen, latent_avg=latent_avg)
    if isinstance(data, Mapping) and "style.1.weight" in data:  # a bare rosinality generator state_dict
        gen = _generator_from_rosinality(path, data)
        return Checkpoint(path, "rosinality-state-dict", sha, "stylegan2-generator", gen.config, gen)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        return _from_e4e_psp(path, sha, data)
    keys = sorted(map(str, data))[:8] if isinstance(data, Mapping) else type(data).__name__
    raise CheckpointError(
        f"{path}: unknown checkpoint contents {keys}; expected rosinality ('g_ema') or e4e/pSp ('state_dict', 'opts')")


def _tensor_or_none(value: Any) -> Tensor | None:
    return value.detach().float().cpu() if isinstance(value, Tensor) else None


def _rosinality_config(path: Path, sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Generator kwargs read off a rosinality state_dict's shapes (any channel multiplier or size)."""
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: not a rosinality StyleGAN2 generator (its weights are a "
                              f"{type(sd).__name__}, not a state_dict)")
    try:
        n_mlp = sum(1 for key in sd if re.fullmatch(r"style\.\d+\.weight", key))
        n_rgbs = sum(1 for key in sd if re.fullmatch(r"to_rgbs\.\d+\.bias", key))
        channels = {4: int(sd["conv1.conv.weight"].shape[1])}
        for i in range(n_rgbs):
            channels[2 ** (i + 3)] = int(sd[f"convs.{2 * i}.conv.weight"].shape[1])
        return {"size": 2 ** (n_rgbs + 2), "style_dim": int(sd["style.1.weight"].shape[1]), "n_mlp": n_mlp,
                "channels": channels}
    except (KeyError, IndexError, AttributeError, TypeError) as err:
        raise CheckpointError(f"{path}: not a rosinality StyleGAN2 generator (missing {err})") from None


def _instantiate(path: Path, factory: Callable[[], nn.Module], sd: Mapping[str, Tensor], what: str) -> nn.Module:
    """Build the network and adopt the file's tensors (eval mode, no gradients).

    Built on the meta device first, so the random initialisation the file overwrites is never computed
    (seconds and a second copy of the weights for e4e's ~1 GB); a network that needs real tensors at
    construction, or keeps non-persistent buffers, is built normally. A config the constructor refuses
    (unknown or bad kwargs from a file's metadata) is a CheckpointError like weights that do not fit."""
    odd = sorted(k for k, v in sd.items() if not isinstance(v, Tensor))
    if odd:
        raise CheckpointError(f"{path}: {what} entries {odd[:4]} are not tensors; "
                              "not a checkpoint this project reads")
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    try:
        try:
            with torch.device("meta"):
                module = factory()
        except (RuntimeError, NotImplementedError, ValueError):
            module = None
        if module is not None:
            module.load_state_dict(tensors, strict=True, assign=True)
        if module is None or any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            module = factory()
            module.load_state_dict(tensors, strict=True)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: its config does not build the {what} ({_first_line(err)}); "
                              "convert the checkpoint again") from None
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: {what} weights do not fit the network: {detail}") from None
    return module.eval().requires_grad_(False)


def _generator_from_rosinality(path: Path, sd: Mapping[str, Tensor]) -> Generator:
    config = _rosinality_config(path, sd)
    return _instantiate(path, lambda: Generator(**config), sd, "StyleGAN2 generator")  # type: ignore[return-value]


def _from_e4e_psp(path: Path, sha: str, data: Mapping[str, Any]) -> Checkpoint:
    from engines.nets.encoders import e4e_encoder_config

    opts = data.get("opts") or {}
    if not isinstance(opts, (Mapping, argparse.Namespace)):
        raise CheckpointError(f"{path}: its 'opts' is a {type(opts).__name__}, not e4e/pSp options")
    opts = dict(vars(opts) if isinstance(opts, argparse.Namespace) else opts)
    opts.setdefault("encoder_type", "Encoder4Editing")
    encoder_type, enc_config = e4e_encoder_config(opts, source=str(path))
    architecture = _ENCODER_TYPES[encoder_type]
    state = data["state_dict"]
    enc_sd = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    dec_sd = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    if not enc_sd:
        raise CheckpointError(f"{path}: the state_dict holds no 'encoder.' weights; not an e4e/pSp checkpoint")
    if architecture in RESTYLE_ARCHITECTURES:
        stray = sorted(k for k in state if not k.startswith(("encoder.", "decoder.")))
        if stray or not dec_sd:
            what = f"unexpected entries {stray[:4]}" if stray else "no 'decoder.' weights"
            raise CheckpointError(f"{path}: a ReStyle checkpoint's state_dict with {what}; expected the "
                                  "encoder and its StyleGAN2 decoder only (the file written by ReStyle's training)")
    size = enc_config["stylegan_size"]  # the generator size sets the number of styles
    encoder = _instantiate(path, lambda: build_module(architecture, enc_config), enc_sd, f"{encoder_type} encoder")
    decoder = _generator_from_rosinality(path, dec_sd) if dec_sd else None
    if decoder is not None and decoder.resolution != size:
        raise CheckpointError(f"{path}: opts say a {size}px generator but the decoder weights are "
                              f"{decoder.resolution}px; the checkpoint is inconsistent")
    config = {"encoder": enc_config, "decoder": decoder.config if decoder else None,
              "start_from_latent_avg": bool(opts.get("start_from_latent_avg", True))}
    if architecture in RESTYLE_ARCHITECTURES:
        try:
            config["restyle_iterations"] = int(opts.get("n_iters_per_batch") or 5)  # upstream's default, 5
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed opts['n_iters_per_batch'] "
                                  f"{opts.get('n_iters_per_batch')!r}") from None
    latent_avg = _tensor_or_none(data.get("latent_avg"))
    return Checkpoint(path, f"{architecture}-pt", sha, architecture, config, encoder, decoder, latent_avg)


# ------------------------------------------------------------------------------------- NVlabs pickles
@dataclass
class _Persistent:
    """A module from an NVlabs pickle, as data: its class name and pickled __dict__ (never its code)."""

    class_name: str
    state: dict[str, Any]

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if isinstance(value, Tensor):
                    out[prefix + name] = value.detach().float()
        for name, sub in self.children().items():
            out.update(sub.tensors(f"{prefix}{name}."))
        return out

    def children(self) -> dict[str, _Persistent]:
        return {k: v for k, v in (self.state.get("_modules") or {}).items() if isinstance(v, _Persistent)}

    def child(self, name: str) -> _Persistent:
        return self.children()[name]


class _EasyDict(dict):
    """Stands in for dnnlib.util.EasyDict (kwargs dicts in NVlabs pickles) without importing dnnlib."""


class _Refused(pickle.UnpicklingError):
    pass


def _reconstruct_persistent_obj(meta: Any) -> _Persistent:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise _Refused("a persistent object that is not an NVlabs module")
    return _Persistent(str(meta.get("class_name")), meta["state"])


def _storage_from_bytes(data: bytes) -> Any:
    # torch pickles each storage as torch.save bytes; NVlabs' path would torch.load them with code allowed
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _NVlabsUnpickler(pickle.Unpickler):
    """Unpickler whose only callables are tensor rebuilding, containers and the persistent-object hook."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Callable[..., Any]]] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("builtins", "set"): set,
        ("torch", "Size"): torch.Size,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if (module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
                and name in ("dtype", "scalar", "ndarray", "_reconstruct")):
            return super().find_class(module, name)  # numpy scalars and arrays in kwargs: data only
        raise _Refused(f"{module}.{name}")


def _from_nvlabs_pickle(path: Path, sha: str) -> Checkpoint:
    try:
        with open(path, "rb") as handle:
            data = _NVlabsUnpickler(handle).load()
    except _Refused as err:
        raise CheckpointError(
            f"{path}: refused: the pickle asks for {err}, which is not on the allow-list of NVlabs checkpoint "
            "contents (modules' tensors and constructor arguments); nothing from it was run") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as err:
        raise CheckpointError(f"{path}: corrupt or unsupported pickle ({_first_line(err)})") from None
    g_ema = data.get("G_ema") if isinstance(data, dict) else None
    if not isinstance(g_ema, _Persistent):
        raise CheckpointError(f"{path}: no 'G_ema' generator in this pickle; expected an NVlabs "
                              "stylegan2-ada-pytorch network pickle")
    try:
        gen, w_avg = _generator_from_nvlabs(path, g_ema)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: incomplete NVlabs generator state (missing or malformed {err}); "
                              "expected a stylegan2-ada-pytorch network pickle") from None
    return Checkpoint(path, "nvlabs-pkl", sha, "stylegan2-generator", gen.config, gen, latent_avg=w_avg)


_NVLABS_CLASSES = {"Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
                   "ToRGBLayer", "FullyConnectedLayer"}


def _generator_from_nvlabs(path: Path, g: _Persistent) -> tuple[Generator, Tensor | None]:
    """Map stylegan2-ada-pytorch's G_ema onto our Generator (fp16 layers run in float32 here)."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: unsupported NVlabs generator: {why}; only unconditional "
                               "StyleGAN2 (stylegan2-ada-pytorch, 'skip' architecture) converts")

    def walk(node: _Persistent) -> None:
        if node.class_name not in _NVLABS_CLASSES:
            raise refuse(f"module class {node.class_name!r}")
        for sub in node.children().values():
            walk(sub)

    walk(g)
    st = g.state
    if st.get("c_dim", 0):
        raise refuse(f"conditional (c_dim={st['c_dim']})")
    if st.get("img_channels", 3) != 3 or st.get("z_dim") != st.get("w_dim"):
        raise refuse(f"img_channels={st.get('img_channels')}, z_dim={st.get('z_dim')}, w_dim={st.get('w_dim')}")
    t = g.tensors()
    mapping, synthesis = g.child("mapping"), g.child("synthesis")
    fcs = sorted((k for k in mapping.children() if re.fullmatch(r"fc\d+", k)), key=lambda k: int(k[2:]))
    lr_mlp = float(mapping.child(fcs[0]).state.get("bias_gain", 0.01))
    sd: dict[str, Tensor] = {}
    for i, name in enumerate(fcs):
        fc = mapping.child(name)
        if fc.state.get("activation") != "lrelu" or float(fc.state.get("bias_gain", lr_mlp)) != lr_mlp:
            raise refuse(f"mapping layer {name} differs from a StyleGAN2 mapping network")
        sd[f"style.{i + 1}.weight"] = t[f"mapping.{name}.weight"]
        sd[f"style.{i + 1}.bias"] = t[f"mapping.{name}.bias"]

    resolutions = [int(r) for r in synthesis.state["block_resolutions"]]
    channels: dict[int, int] = {}
    clamps: set[Any] = set()
    noise_index = 0

    def layer(dst: str, block: _Persistent, name: str, up_filter: Tensor | None) -> None:
        nonlocal noise_index
        node, src = block.child(name), f"synthesis.b{block.state['resolution']}.{name}"
        up = 1 if up_filter is None else 2
        if node.state.get("activation", "lrelu") != "lrelu" or node.state.get("up", 1) != up \
                or t[f"{src}.weight"].shape[-1] != 3:
            raise refuse(f"layer {src} is not a 3x3 leaky-ReLU convolution (up={up})")
        clamps.add(node.state.get("conv_clamp"))
        sd[f"{dst}.conv.weight"] = t[f"{src}.weight"][None]
        sd[f"{dst}.conv.modulation.weight"] = t[f"{src}.affine.weight"]
        sd[f"{dst}.conv.modulation.bias"] = t[f"{src}.affine.bias"]
        sd[f"{dst}.activate.bias"] = t[f"{src}.bias"]
        if up_filter is not None:
            sd[f"{dst}.conv.blur.kernel"] = up_filter * 4  # NVlabs applies the gain up**2 at run time
        res = 2 ** ((noise_index + 5) // 2)  # the Generator's noise_i resolution
        if f"{src}.noise_const" in t:
            sd[f"noises.noise_{noise_index}"] = t[f"{src}.noise_const"].reshape(1, 1, res, res)
            sd[f"{dst}.noise.weight"] = t[f"{src}.noise_strength"].reshape(1)
        else:  # use_noise=False
            sd[f"noises.noise_{noise_index}"] = torch.zeros(1, 1, res, res)
            sd[f"{dst}.noise.weight"] = torch.zeros(1)
        noise_index += 1

    def to_rgb(dst: str, src: str, up_filter: Tensor | None) -> None:
        sd[f"{dst}.conv.weight"] = t[f"{src}.weight"][None]
        sd[f"{dst}.conv.modulation.weight"] = t[f"{src}.affine.weight"]
        sd[f"{dst}.conv.modulation.bias"] = t[f"{src}.affine.bias"]
        sd[f"{dst}.bias"] = t[f"{src}.bias"].view(1, 3, 1, 1)
        if up_filter is not None:
            sd[f"{dst}.upsample.kernel"] = up_filter * 4

    for k, res in enumerate(resolutions):
        block = synthesis.child(f"b{res}")
        if block.state.get("architecture", "skip") != "skip":
            raise refuse(f"block b{res} uses the {block.state.get('architecture')!r} architecture")
        clamps.add(block.child("torgb").state.get("conv_clamp"))
        channels[res] = int(t[f"synthesis.b{res}.conv1.weight"].shape[0])
        b = f"synthesis.b{res}"
        if res == 4:
            sd["input.input"] = t[f"{b}.const"][None]
            layer("conv1", block, "conv1", None)
            to_rgb("to_rgb1", f"{b}.torgb", None)
        else:
            layer(f"convs.{2 * k - 2}", block, "conv0", t[f"{b}.conv0.resample_filter"])
            layer(f"convs.{2 * k - 1}", block, "conv1", None)
            to_rgb(f"to_rgbs.{k - 1}", f"{b}.torgb", t[f"{b}.resample_filter"])
    if len(clamps) != 1:
        raise refuse(f"layers use different conv_clamp values {sorted(map(str, clamps))}")
    clamp = clamps.pop()
    config = {"size": resolutions[-1], "style_dim": int(st["w_dim"]), "n_mlp": len(fcs), "channels": channels,
              "lr_mlp": lr_mlp, "conv_clamp": None if clamp is None else float(clamp)}
    gen = _instantiate(path, lambda: Generator(**config), sd, "NVlabs generator")
    return gen, t.get("mapping.w_avg")  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ safetensors
def build_module(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """The project's network for `architecture`, constructed from its kwargs `config`."""
    if architecture == "stylegan2-generator":
        return Generator(**config)
    if architecture in _ARCHITECTURE_CLASSES:
        from engines.nets import encoders

        return getattr(encoders, _ARCHITECTURE_CLASSES[architecture])(**config)
    if architecture == "student":
        from engines.nets.student import ResidualStudent

        return ResidualStudent(**config)
    raise CheckpointError(f"unknown architecture {architecture!r} (known: {', '.join(get_args(Architecture))})")


def safetensors_bytes(module: nn.Module | Mapping[str, Tensor], architecture: Architecture,
                      config: Mapping[str, Any], source_sha256: str = "",
                      extra_tensors: Mapping[str, Tensor] | None = None, source_format: str = "project") -> bytes:
    """The bytes of a project safetensors file (what save_safetensors writes; caches store them as they are)."""
    from safetensors.torch import save  # to bytes: safetensors' own save_file leaves files at mode 0600

    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in {**state, **(extra_tensors or {})}.items()}
    metadata = {"format": FORMAT_TAG, "architecture": architecture, "config": json.dumps(config, sort_keys=True),
                "source_sha256": source_sha256, "source_format": source_format}
    return save(tensors, metadata=metadata)


def save_safetensors(module: nn.Module | Mapping[str, Tensor], path: str | os.PathLike, architecture: Architecture,
                     config: Mapping[str, Any], source_sha256: str = "", extra_tensors: Mapping[str, Tensor] | None = None,
                     source_format: str = "project") -> Path:
    """Write tensors + metadata atomically (temp file + rename). `module` may be a state_dict."""
    if architecture not in get_args(Architecture):
        raise CheckpointError(f"{path}: unknown architecture {architecture!r}")
    path = Path(path)
    data = safetensors_bytes(module, architecture, config, source_sha256, extra_tensors, source_format)
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot write the checkpoint ({_first_line(err)}); "
                              "choose a writable folder with free space") from None
    return path


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write a loaded checkpoint in the project's safetensors layout."""
    extra = {"latent_avg": ckpt.latent_avg} if ckpt.latent_avg is not None else {}
    if ckpt.architecture in _ENCODER_DECODER:
        tensors = {f"encoder.{k}": v for k, v in ckpt.module.state_dict().items()}
        if ckpt.decoder is not None:
            tensors.update({f"decoder.{k}": v for k, v in ckpt.decoder.state_dict().items()})
        return save_safetensors(tensors, path, ckpt.architecture, ckpt.config, ckpt.sha256, extra, ckpt.source_format)
    return save_safetensors(ckpt.module, path, ckpt.architecture, ckpt.config, ckpt.sha256, extra, ckpt.source_format)


def _load_safetensors(path: Path, sha: str) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors file ({_first_line(err)}); convert it again") from None
    architecture = metadata.get("architecture")
    if architecture not in get_args(Architecture):
        raise CheckpointError(f"{path}: safetensors without a known 'architecture' in its metadata "
                              f"(got {architecture!r}); write it with `run_stream.py convert`")
    try:
        config = json.loads(metadata.get("config", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its metadata 'config' is not valid JSON; convert it again") from None
    latent_avg = tensors.pop("latent_avg", None)
    source_format = f"safetensors ({metadata.get('source_format', 'project')})"
    decoder = None
    if architecture in _ENCODER_DECODER:
        if not isinstance(config, dict) or not isinstance(config.get("encoder"), dict):
            raise CheckpointError(f"{path}: its metadata 'config' has no 'encoder' kwargs; convert it again")
        module = _instantiate(path, lambda: build_module(architecture, config["encoder"]),
                              _strip(tensors, "encoder."), f"{architecture} encoder")
        if config.get("decoder"):
            decoder = _instantiate(path, lambda: Generator(**config["decoder"]), _strip(tensors, "decoder."),
                                   "StyleGAN2 decoder")
    elif not isinstance(config, dict):
        raise CheckpointError(f"{path}: its metadata 'config' is not a JSON object; convert it again")
    else:
        module = _instantiate(path, lambda: build_module(architecture, config), tensors, architecture)
    return Checkpoint(path, source_format, sha, architecture, config, module, decoder, latent_avg)


def _strip(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Checkpoint:
    """Load any supported checkpoint and write it as the project's safetensors; returns what was loaded."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"{dst}: the output must end in .safetensors")
    ckpt = load_checkpoint(src)
    save_checkpoint(ckpt, dst)
    log.debug("converted %s -> %s: %s", src, dst, ckpt.describe())
    return ckpt
