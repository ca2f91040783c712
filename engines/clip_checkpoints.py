"""CLIP weights in the shapes users have them, read as data and mapped onto engines.nets.clip.ClipModel.

- open_clip: `open_clip_model.safetensors` / `open_clip_pytorch_model.bin` (a plain state dict), usually
  with `open_clip_config.json` beside them (`model_cfg.quick_gelu` says the activation), and its training
  checkpoints `{'epoch', 'name', 'state_dict': {'module.' + key}}`.
- Hugging Face transformers `CLIPModel`: a folder with `config.json` (`hidden_act`) and `model.safetensors`
  or `pytorch_model.bin`; q, k and v are separate there and are packed as open_clip packs them.
- OpenAI's `ViT-B-32.pt` etc.: a TorchScript archive. `torch.load` would hand it to `torch.jit.load`, which
  runs the archive's code; engines/torchscript_archive.py reads its tensors as data instead. OpenAI's
  weights are QuickGELU.

The architecture is read from the tensors' shapes. Weights are converted to float32 on the CPU.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engines.checkpoints import _first_line, load_torch_file
from engines.errors import CheckpointError
from engines.nets.clip import ACTIVATIONS, HEAD_WIDTH, OPENAI_MEAN, OPENAI_STD, Activation, ClipModel
from engines.torchscript_archive import is_torchscript, read_torchscript_tensors

log = logging.getLogger(__name__)

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_VOCAB = 49408  # the vocabulary of engines/data/bpe_simple_vocab_16e6.txt.gz
# Image towers whose heads are not 64 wide (open_clip's ViT-H, -g, -bigG and -e configs: 80, 88, 104 and
# 112 wide, 16 heads each); every other public ViT CLIP uses 64-wide heads. A config file beside the
# weights, when there is one, says it instead.
_WIDE_HEAD_VISION = {1280: 16, 1408: 16, 1664: 16, 1792: 16}
# Tensors OpenAI's archives carry beside the weights (open_clip drops them too)
_ARCHIVE_EXTRAS = {"input_resolution", "context_length", "vocab_size"}


def load_clip(path: str | os.PathLike, activation: Activation | None = None) -> ClipModel:
    """A CLIP model (eval mode, CPU, float32) from an open_clip, transformers or OpenAI file or folder.

    `activation` ("quickgelu" or "gelu") overrides what the file says; it must be given when the file
    does not say (a bare state dict without its config)."""
    path = Path(path)
    if activation is not None and activation not in ACTIVATIONS:
        raise CheckpointError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    state, hints, source = read_clip_weights(path)
    hint = hints.get("activation")
    if activation is None:
        if hint is None:
            raise CheckpointError(
                f"{path}: the file does not say which MLP activation this CLIP uses (the weights cannot tell); "
                "pass activation='quickgelu' (OpenAI's weights, laion400m, metaclip) or 'gelu' "
                "(laion2b, datacomp), --clip-activation on the command line")
        activation = hint
    elif hint is not None and hint != activation:
        log.warning("%s: the file says %s, using %s as asked", path, hint, activation)
    config = clip_config(path, state, activation, hints)
    model = _build(path, config, state)
    log.debug("loaded CLIP from %s (%s, %s)", path, source, activation)
    return model


# ------------------------------------------------------------------------------------- files and folders
def read_clip_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    """(open_clip-keyed float32 state dict, what the files beside it state, format name). The hints may
    hold `activation`, `mean` / `std` (image normalisation) and `vision_heads` / `text_heads`."""
    if path.is_dir():
        for name in OPEN_CLIP_FILES:
            if (path / name).is_file():
                return read_clip_weights(path / name)
        for name in HF_FILES:
            if (path / name).is_file():
                return read_clip_weights(path / name)
        raise CheckpointError(f"{path}: no CLIP weights in this folder; expected one of "
                              f"{', '.join(OPEN_CLIP_FILES + HF_FILES)}, or pass the .pt / .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"{path}: CLIP checkpoint not found; pass an open_clip or transformers file or "
                              "folder, or OpenAI's ViT-*.pt")
    raw, source = _read_tensors(path)
    if any(k.startswith(("text_model.", "vision_model.")) for k in raw):
        return _from_transformers(path, raw), _transformers_sidecars(path), f"transformers {source}"
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    if source == "torchscript":
        # the scalars OpenAI's model carries, and any causal mask kept as a tensor attribute (not a weight)
        state = {k: v for k, v in state.items()
                 if k not in _ARCHIVE_EXTRAS and k.rsplit(".", 1)[-1] != "attn_mask"}
        return state, {"activation": "quickgelu"}, "OpenAI TorchScript archive"
    return state, _open_clip_sidecar(path), f"open_clip {source}"


def _read_tensors(path: Path) -> tuple[dict[str, Tensor], str]:
    with open(path, "rb") as handle:
        head = handle.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _float_tensors(path, load_file(str(path))), "safetensors"
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors file ({_first_line(err)})") from None
    if head.startswith(b"PK") and is_torchscript(path):
        return _float_tensors(path, read_torchscript_tensors(path)), "torchscript"
    if head.startswith(b"PK") or head[:1] == b"\x80":
        data = load_torch_file(path)
        if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
            data = data["state_dict"]  # an open_clip training checkpoint
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a CLIP state dict")
        return _float_tensors(path, data), "torch file"
    raise CheckpointError(f"{path}: unknown CLIP checkpoint format (not safetensors, a torch file or a "
                          "TorchScript archive)")


def _float_tensors(path: Path, data: Mapping[str, Any]) -> dict[str, Tensor]:
    odd = sorted(str(k) for k, v in data.items() if not isinstance(v, Tensor))
    if odd:
        raise CheckpointError(f"{path}: entries {odd[:4]} are not tensors; not a CLIP state dict")
    return {str(k): v.detach().float() if v.is_floating_point() else v for k, v in data.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({_first_line(err)})") from None
    return data if isinstance(data, dict) else {}


# open_clip tower options that change the network this project builds (value when off)
_OPEN_CLIP_UNSUPPORTED = {
    "vision_cfg": {"attentional_pool": False, "no_ln_pre": False, "final_ln_after_pool": False,
                   "ls_init_value": None, "pool_type": "tok", "timm_model_name": None},
    "text_cfg": {"pool_type": "argmax", "proj_bias": False, "no_causal_mask": False, "ls_init_value": None,
                 "hf_model_name": None, "final_ln_after_pool": False},
}


def _open_clip_sidecar(path: Path) -> dict[str, Any]:
    """Hints from `open_clip_config.json` beside the weights, when there is one: the activation
    (`quick_gelu`, absent means GELU), heads, normalisation. Options that change the network refused."""
    config_file = path.parent / "open_clip_config.json"
    if not config_file.is_file():
        return {}
    config = _read_json(config_file)
    model_cfg = config.get("model_cfg") or {}
    towers = {name: model_cfg.get(name) or {} for name in _OPEN_CLIP_UNSUPPORTED}
    unsupported = [f"{name}.{key}={towers[name][key]!r}" for name, options in _OPEN_CLIP_UNSUPPORTED.items()
                   for key, off in options.items() if towers[name].get(key, off) not in (off, None, False)]
    if unsupported:
        raise CheckpointError(f"{config_file}: {', '.join(unsupported)} builds a CLIP this project does not have; "
                              "only plain ViT CLIP models (class-token and end-token pooling) are supported")
    hints: dict[str, Any] = {"activation": "quickgelu" if model_cfg.get("quick_gelu") else "gelu"}
    vision, text = towers["vision_cfg"], towers["text_cfg"]
    if vision.get("width") and vision.get("head_width"):
        hints["vision_heads"] = int(vision["width"]) // int(vision["head_width"])
    if text.get("heads"):
        hints["text_heads"] = int(text["heads"])
    pre = config.get("preprocess_cfg") or {}
    hints.update({key: pre[key] for key in ("mean", "std") if key in pre})
    return hints


def _transformers_sidecars(path: Path) -> dict[str, Any]:
    """Hints from transformers' `config.json` (activation: its default, when a tower omits it, is
    quick_gelu; heads) and `preprocessor_config.json` (normalisation)."""
    config_file, pre_file = path.parent / "config.json", path.parent / "preprocessor_config.json"
    hints: dict[str, Any] = {}
    if pre_file.is_file():
        pre = _read_json(pre_file)
        hints.update({key: pre[f"image_{key}"] for key in ("mean", "std") if f"image_{key}" in pre})
    if not config_file.is_file():
        return hints
    config = _read_json(config_file)
    towers = {part: config.get(f"{part}_config") or {} for part in ("vision", "text")}
    acts = {tower.get("hidden_act", "quick_gelu") for tower in towers.values()}
    names = {"quick_gelu": "quickgelu", "gelu": "gelu"}
    if len(acts) != 1 or next(iter(acts)) not in names:
        raise CheckpointError(f"{config_file}: hidden_act {sorted(acts)} is not supported; this project's CLIP "
                              "uses one activation, quick_gelu or gelu, in both towers")
    hints["activation"] = names[acts.pop()]
    for part, tower in towers.items():
        if tower.get("num_attention_heads"):
            hints[f"{part}_heads"] = int(tower["num_attention_heads"])
    return hints


# ------------------------------------------------------------------------------------ transformers keys
_HF_LAYER = re.compile(r"(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)")
_HF_LAYER_PARTS = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_HF_NAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}


def _from_transformers(path: Path, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """transformers CLIPModel keys -> open_clip keys (q, k, v packed on dim 0; projections transposed)."""
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key.endswith("embeddings.position_ids"):
            continue  # an index buffer older transformers saved
        if key in _HF_NAMES:
            out[_HF_NAMES[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
        elif match := _HF_LAYER.fullmatch(key):
            tower, index, rest = match.groups()
            prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{index}."
            proj = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if proj:
                qkv.setdefault(f"{prefix}attn.in_proj_{proj.group(2)}", {})[proj.group(1)] = value
                continue
            part, _, leaf = rest.rpartition(".")
            if part not in _HF_LAYER_PARTS:
                unknown.append(key)
                continue
            out[f"{prefix}{_HF_LAYER_PARTS[part]}.{leaf}"] = value
        else:
            unknown.append(key)
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"{path}: {key}: transformers q/k/v projections incomplete ({sorted(parts)})")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if unknown:
        raise CheckpointError(f"{path}: transformers keys this project's CLIP does not have: {unknown[:4]}; "
                              "only CLIPModel with a ViT image tower converts")
    return out


# ------------------------------------------------------------------------------- architecture from shapes
def clip_config(path: Path, sd: Mapping[str, Tensor], activation: Activation,
                hints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """ClipModel kwargs read off an open_clip state dict's shapes; heads and normalisation from `hints`
    (what the files beside the weights say), else 64-wide heads and OpenAI's mean and std."""
    hints = hints or {}
    if any(k.startswith("visual.layer1.") for k in sd):
        raise CheckpointError(f"{path}: a CLIP with a ResNet image tower (RN50, RN101, ...); only ViT CLIP "
                              "models are supported")
    try:
        conv = sd["visual.conv1.weight"]
        grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
        config = {
            "embed_dim": int(sd["text_projection"].shape[1]),
            "image_size": int(grid * conv.shape[-1]), "patch_size": int(conv.shape[-1]),
            "vision_width": int(conv.shape[0]), "vision_layers": _count_layers(sd, "visual.transformer"),
            "vision_mlp_width": int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            "context_length": int(sd["positional_embedding"].shape[0]),
            "vocab_size": int(sd["token_embedding.weight"].shape[0]),
            "text_width": int(sd["ln_final.weight"].shape[0]), "text_layers": _count_layers(sd, "transformer"),
            "text_mlp_width": int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            "activation": activation, "mean": [float(v) for v in hints.get("mean", OPENAI_MEAN)],
            "std": [float(v) for v in hints.get("std", OPENAI_STD)]}
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: not an open_clip / OpenAI ViT CLIP state dict (missing or malformed "
                              f"{_first_line(err)})") from None
    if config["vocab_size"] != TOKENIZER_VOCAB:
        raise CheckpointError(f"{path}: a text vocabulary of {config['vocab_size']} tokens; this project's "
                              f"tokenizer is CLIP's {TOKENIZER_VOCAB}-token BPE")
    for tower in ("vision", "text"):
        width = config[f"{tower}_width"]
        default = _WIDE_HEAD_VISION.get(width) if tower == "vision" else None
        heads = int(hints.get(f"{tower}_heads") or default or width // HEAD_WIDTH)
        if heads < 1 or width % heads or (f"{tower}_heads" not in hints and not default and width % HEAD_WIDTH):
            raise CheckpointError(f"{path}: {tower} width {width} does not split into {heads} attention heads; "
                                  "put the model's open_clip_config.json (or config.json) beside the weights")
        config[f"{tower}_heads"] = heads
    return config


def _count_layers(sd: Mapping[str, Tensor], prefix: str) -> int:
    return sum(1 for k in sd if re.fullmatch(rf"{re.escape(prefix)}\.resblocks\.\d+\.ln_1\.weight", k))


def _build(path: Path, config: dict[str, Any], sd: Mapping[str, Tensor]) -> ClipModel:
    """ClipModel adopting the tensors (strict key set); built on the meta device so no random
    initialisation of ~150M parameters is computed only to be overwritten."""
    state = dict(sd)
    if state.get("logit_scale") is not None and state["logit_scale"].numel() == 1:
        state["logit_scale"] = state["logit_scale"].reshape(())  # [] or [1] in the wild
    with torch.device("meta"):
        model = ClipModel(**config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: CLIP weights do not fit a ViT CLIP: {detail}") from None
    # the normalisation constants are not weights: set them on the CPU
    model.mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    model.std = torch.tensor(config["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return model.eval().requires_grad_(False)
