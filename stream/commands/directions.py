"""`directions {list,discover,sefa,text}`: show, discover and compute editing directions."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HELP = ("list a directions file, discover a direction on a generator (mean difference), compute SeFa ones, "
        "or find one from text with CLIP")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stream.edits.attributes import ATTRIBUTE_NAMES

    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    lister = sub.add_parser("list", help="show the directions in a file (.safetensors, .pt, .npy, GANSpace .pt)")
    lister.add_argument("file", type=Path, nargs="?", default=None,
                        help="directions file (default: the demo pack's directions)")
    lister.add_argument("--pack", type=Path, default=None, help="model pack whose directions to list when no FILE "
                                                                 "is given (default: assets/demo_pack)")
    lister.add_argument("--num-ws", type=int, default=18, help="W+ entries to expand 1-row files to (default 18)")
    lister.set_defaults(run_action=_list)

    discover = sub.add_parser("discover", help="sample a generator, score faces by dlib landmarks, contrast "
                                               "the extremes of an attribute")
    discover.add_argument("generator", type=Path, help="generator checkpoint (.pt, .pkl, .safetensors)")
    discover.add_argument("--attribute", choices=ATTRIBUTE_NAMES, required=True)
    discover.add_argument("--out", type=Path, required=True, metavar="FILE.safetensors",
                          help="directions file to write (added to it when it exists)")
    discover.add_argument("--name", default=None, help="direction name (default: the attribute)")
    discover.add_argument("--samples", type=int, default=500, help="faces to generate (default 500)")
    discover.add_argument("--fraction", type=float, default=0.3,
                          help="top and bottom share contrasted (default 0.3)")
    discover.add_argument("--control", action="append", choices=ATTRIBUTE_NAMES, default=[],
                          help="contrast within quantile bins of this attribute (repeatable), e.g. yaw")
    discover.add_argument("--bins", type=int, default=3, help="quantile bins per control attribute (default 3)")
    discover.add_argument("--layers", default="auto",
                          help="mask: auto (where the norm lies), coarse, middle, fine, all or e.g. 0-3,8")
    discover.add_argument("--truncation", type=float, default=0.7, help="truncation psi (default 0.7)")
    discover.add_argument("--seed", type=int, default=0)
    discover.set_defaults(run_action=_discover)

    sefa = sub.add_parser("sefa", help="closed-form directions from the generator's modulation weights")
    sefa.add_argument("generator", type=Path, help="generator checkpoint (.pt, .pkl, .safetensors)")
    sefa.add_argument("--out", type=Path, required=True, metavar="FILE.safetensors",
                      help="directions file to write (added to it when it exists)")
    sefa.add_argument("-k", type=int, default=5, help="number of directions (default 5)")
    sefa.add_argument("--layers", default="all", help="W+ layers to factorise: all, coarse, middle, fine, 0-3,...")
    sefa.set_defaults(run_action=_sefa)
    _add_text_arguments(sub)


def _add_text_arguments(sub) -> None:
    text = sub.add_parser("text", help="a direction from a text prompt: CLIP scores faces against the target and "
                                       "neutral texts (mean difference of the top and bottom scorers), or "
                                       "StyleCLIP's global direction in style space")
    text.add_argument("prompt", help='the target, e.g. "a smiling face"')
    text.add_argument("--method", choices=("mean-difference", "global"), default="mean-difference",
                      help="mean-difference (default) or global: StyleCLIP global directions (style channels "
                           "picked by CLIP relevance, measured once per generator and cached)")
    text.add_argument("--neutral", default="a face", help='what the target is contrasted with (default "a face")')
    text.add_argument("--clip", type=Path, required=True, metavar="PATH",
                      help="CLIP weights: open_clip .safetensors/.bin or folder, transformers CLIPModel folder, "
                           "or OpenAI's ViT-*.pt")
    text.add_argument("--clip-activation", choices=("quickgelu", "gelu"),
                      help="CLIP's MLP activation when the file does not say (OpenAI, laion400m: quickgelu; "
                           "laion2b, datacomp: gelu)")
    text.add_argument("--generator", type=Path, help="generator checkpoint (default: the pack's)")
    text.add_argument("--pack", type=Path, default=None, help="model pack for the generator (default: the demo pack)")
    text.add_argument("--codes", type=Path, action="append", default=[], metavar="FILE.npy",
                      help="W+ codes [N, num_ws, 512] of inverted real faces (repeatable: each file is a group, "
                           "e.g. one clip, and the contrast is taken within it)")
    text.add_argument("--samples", type=int, default=None,
                      help="generator samples to score (default 64 without --codes, 0 with)")
    text.add_argument("--fraction", type=float, default=0.3, help="top and bottom share contrasted (default 0.3)")
    text.add_argument("--layers", default="auto",
                      help="mask: auto (where the norm lies), coarse, middle, fine, all or e.g. 0-3,8")
    text.add_argument("--name", help="direction name (default: from the prompt, e.g. smiling_face)")
    text.add_argument("--truncation", type=float, default=0.7, help="truncation psi of the samples (default 0.7)")
    text.add_argument("--seed", type=int, default=0)
    text.add_argument("--beta", type=float, default=None,
                      help="global: relevance threshold picking the style channels (default 0.1)")
    text.add_argument("--strength", type=float, default=None,
                      help="global: the direction's strength 1 in StyleCLIP's alpha, standard deviations of "
                           "the most relevant channel (default 3)")
    text.add_argument("--relevance-samples", type=int, default=None,
                      help="global: faces per style channel when measuring relevance (default 4 on the CPU)")
    text.add_argument("--cache", type=Path, metavar="DIR",
                      help="global: where the relevance is kept (default: the user cache)")
    text.add_argument("--out", type=Path, required=True, metavar="DIR",
                      help="folder for directions.safetensors (added to when it exists), or a .safetensors file")
    text.set_defaults(run_action=_text)


def run(args: argparse.Namespace) -> int:
    return int(args.run_action(args))


def _print_direction(d) -> None:
    from stream.edits.directions import format_layers, layers_from_norm

    norms = np.linalg.norm(d.vector, axis=1)
    print(f"  {d.name:<14} layers {format_layers(d.layers):<10} strength {d.default_strength:<5g} "
          f"norm per layer {float(norms[d.layers].mean()):.3f}, 80% of it in {format_layers(layers_from_norm(d.vector))}"
          f" (of {len(norms)})")
    if d.description:
        print(f"  {'':<14} {d.description}")


def _list(args: argparse.Namespace) -> int:
    from stream.edits.directions import load_direction, load_directions

    path = args.file
    if path is None:
        from stream.modelpack import DEFAULT_PACK, load_pack

        path = load_pack(args.pack or DEFAULT_PACK).directions
    print(path)
    if path.suffix == ".safetensors":
        for d in load_directions(path).values():
            _print_direction(d)
        return 0
    from stream.edits.directions import read_direction_file

    obj = read_direction_file(path)
    if isinstance(obj, dict) and {"comp", "std"} <= set(obj):  # other dicts: load_direction says what is wrong
        comp, std = np.asarray(obj["comp"]), np.asarray(obj["std"]).reshape(-1)
        print(f"  GANSpace PCA: {comp.shape[0]} components of {comp.shape[-1]} (shape {list(comp.shape)}); "
              f"std of the first five: {', '.join(f'{s:.3f}' for s in std[:5])}")
        print("  use a component with load_ganspace(path, index, num_ws)")
        return 0
    if not isinstance(obj, dict):
        print(f"  tensor of shape {list(np.shape(obj))}")
    _print_direction(load_direction(path, args.num_ws))
    return 0


def _save(out: Path, new: list) -> None:
    from stream.edits.directions import load_directions, save_directions

    existing = load_directions(out) if out.exists() else {}
    num_ws = {d.num_ws for d in new}
    if existing and {d.num_ws for d in existing.values()} != num_ws:
        from engines.errors import UserError

        raise UserError(f"{out}: holds directions for another generator ({next(iter(existing.values())).num_ws} "
                        f"W+ entries, these have {num_ws.pop()}); write to a new file")
    existing.update({d.name: d for d in new})
    save_directions(out, list(existing.values()))
    print(f"wrote {out} ({len(existing)} directions: {', '.join(existing)})")


def _discover(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engines import load_generator
    from stream.edits.discover import discover_direction, sample_generator

    generator = load_generator(args.generator)
    with tqdm(total=args.samples, unit="face", desc="sampling", dynamic_ncols=True) as bar:
        samples = sample_generator(generator, args.samples, truncation=args.truncation, seed=args.seed,
                                   progress=bar.update)
    print(f"dlib found a face in {len(samples.codes)} of {samples.tried} samples")
    direction = discover_direction(samples, args.attribute, args.fraction, args.control, args.bins,
                                   args.layers, args.name)
    _print_direction(direction)
    _save(args.out, [direction])
    return 0


def _sefa(args: argparse.Namespace) -> int:
    from engines import load_generator
    from stream.edits.directions import sefa_directions

    directions = sefa_directions(load_generator(args.generator), args.k, args.layers)
    for d in directions:
        _print_direction(d)
    _save(args.out, directions)
    return 0


def _text_output(out: Path) -> Path:
    if out.suffix == ".safetensors":
        return out
    out.mkdir(parents=True, exist_ok=True)
    return out / "directions.safetensors"


def _text(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engines import load_clip, load_generator
    from engines.errors import UserError
    from stream.edits.text import clip_scores, sample_codes, text_direction

    generator_path = args.generator
    if generator_path is None:
        from stream.modelpack import DEFAULT_PACK, load_pack

        generator_path = load_pack(args.pack or DEFAULT_PACK).generator
    generator = load_generator(generator_path)
    clip = load_clip(args.clip, args.clip_activation)
    if args.method == "global":
        direction = _global_direction(args, clip, generator)
        _print_direction(direction)
        _save(_text_output(args.out), [direction])
        return 0
    parts, groups = [], []
    for index, path in enumerate(args.codes):
        try:
            codes = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as err:
            raise UserError(f"--codes {path}: not a readable .npy file ({err})") from None
        if codes.ndim != 3 or codes.shape[1:] != (generator.num_ws, generator.style_dim):
            raise UserError(f"--codes {path}: shape {list(codes.shape)}; expected [N, {generator.num_ws}, "
                            f"{generator.style_dim}] W+ codes for this generator")
        parts.append(codes)
        groups.append(np.full(len(codes), index))
    samples = args.samples if args.samples is not None else (0 if args.codes else 64)
    if samples:
        parts.append(sample_codes(generator, samples, args.truncation, args.seed))
        groups.append(np.full(samples, len(args.codes)))
    if not parts:
        raise UserError("no faces to score: give --samples N or --codes FILE.npy")
    codes = np.concatenate(parts)
    with tqdm(total=len(codes), unit="face", desc="CLIP scores", dynamic_ncols=True) as bar:
        scores = clip_scores(clip, generator.synthesis, codes, args.prompt, args.neutral, progress=bar.update)
    source = " + ".join([f"{len(p)} from {f.name}" for p, f in zip(parts, args.codes)]
                        + ([f"{samples} generator samples"] if samples else []))
    direction = text_direction(codes, scores, args.prompt, args.neutral, fraction=args.fraction,
                               groups=np.concatenate(groups) if len(parts) > 1 else None, layers=args.layers,
                               name=args.name, source=f"faces ({source})")
    _print_direction(direction)
    _save(_text_output(args.out), [direction])
    return 0


def _global_direction(args: argparse.Namespace, clip, generator):
    from tqdm import tqdm

    from engines.cache import default_cache_dir
    from stream.edits import global_directions as gd

    samples = args.relevance_samples or gd.DEFAULT_SAMPLES
    channels = sum(width for _, width in gd.conv_style_layers(generator.export_safe()))
    cache = args.cache or default_cache_dir() / "style_relevance"
    with tqdm(total=channels, unit="channel", desc=f"style relevance ({samples} faces each)",
              dynamic_ncols=True) as bar:
        relevance = gd.cached_relevance(clip, generator, cache, samples, seed=args.seed, progress=bar.update)
    return gd.global_direction(clip, generator, relevance, args.prompt, args.neutral,
                               beta=gd.DEFAULT_BETA if args.beta is None else args.beta,
                               strength=3.0 if args.strength is None else args.strength, name=args.name)
