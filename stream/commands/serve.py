"""`serve`: a web page that shows your camera, edited live, over WebRTC.

    run_stream.py serve                       # http://127.0.0.1:8080/
    run_stream.py serve --host 0.0.0.0 --cert cert.pem --key key.pem   # prints a URL with a token

Loopback needs nothing else; any other address requires a token (generated unless --token is given)
and, for a browser to grant camera access from another machine, TLS (--cert/--key).
"""
from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path
from typing import get_args

from engines.backends.base import BackendChoice
from engines.errors import UserError
from stream.commands.options import add_checkpoint_arguments, add_engine_arguments, engine_options
from stream.config import FACES_MODES, MODEL_PATHS, SMOOTHINGS
from stream.faces.detect import DETECTOR_NAMES
from stream.modelpack import DEFAULT_PACK

HELP = "serve a page that streams your camera through the face editor and back (WebRTC)"

log = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model and face options of the live commands (`serve`, `camera`)."""
    parser.add_argument("--edit", action="append", default=[], metavar="NAME=STRENGTH",
                        help="edit applied from the start, e.g. smile=1.0; repeat to combine edits (default: the "
                             "pack's)")
    parser.add_argument("--pack", type=Path, default=DEFAULT_PACK, metavar="DIR",
                        help="model pack folder (default: assets/demo_pack)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--model", choices=MODEL_PATHS, default="auto",
                        help="student (distilled, fast) or gan (encoder + generator); auto: student when the "
                             "pack's students cover every --edit")
    parser.add_argument("--backend", default="auto", choices=get_args(BackendChoice),
                        help="inference backend (auto: TensorRT, then ONNX Runtime, then PyTorch)")
    parser.add_argument("--no-residual", action="store_true",
                        help="gan path: paste G(w') itself instead of crop + G(w') - G(w)")
    parser.add_argument("--smoothing", choices=SMOOTHINGS, default="causal",
                        help="temporal filter of each face's code on the gan path (default causal)")
    parser.add_argument("--faces", choices=FACES_MODES, default="all", help="edit every face or only the largest")
    parser.add_argument("--detector", choices=DETECTOR_NAMES, default="dlib", help="face detector")
    parser.add_argument("--face-models", type=Path, metavar="DIR", help="insightface model folder (det_*.onnx)")
    parser.add_argument("--detect-every", type=int, default=5, metavar="N",
                        help="run the face detector every N frames, track landmarks in between (default 5)")
    add_engine_arguments(parser)


def live_model_from_args(args: argparse.Namespace, fps: float = 30.0):
    from stream.config import LIVE_RESTYLE_ITERATIONS, FaceConfig, ModelConfig, parse_edit
    from stream.live_model import live_model

    edits = [parse_edit(text) for text in args.edit]
    model = ModelConfig(pack=args.pack, path=args.model, backend=args.backend, residual=not args.no_residual,
                        smoothing=args.smoothing, generator=args.generator, encoder=args.encoder,
                        directions=tuple(args.directions),
                        restyle_iterations=args.restyle_iterations or LIVE_RESTYLE_ITERATIONS, **engine_options(args))
    face = FaceConfig(detector=args.detector, face_models=args.face_models, detect_every=args.detect_every,
                      faces=args.faces)
    return live_model(model, face, edits, fps)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other needs a token, printed)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--token", help="access token (default: generated when not on loopback)")
    parser.add_argument("--stun", action="append", default=[], metavar="URL",
                        help="STUN server for ICE, e.g. stun:stun.l.google.com:19302 (default: none, so no "
                             "traffic leaves the machine)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="another web origin allowed to start streams (default: only this server's page)")
    parser.add_argument("--max-peers", type=int, default=4, help="concurrent streams before refusing (default 4)")
    parser.add_argument("--connect-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="close a peer whose connection (ICE and DTLS) is not up this long after its offer "
                             "was answered, freeing its slot (default 20)")
    parser.add_argument("--cert", type=Path, help="TLS certificate (PEM); browsers allow cameras only on "
                                                  "https or localhost")
    parser.add_argument("--key", type=Path, help="TLS private key (PEM)")
    add_model_arguments(parser)


def options_from_args(args: argparse.Namespace):
    from stream.webrtc.security import is_loopback, new_token
    from stream.webrtc.server import ServeOptions

    if (args.cert is None) != (args.key is None):
        raise UserError("give both --cert and --key for TLS, or neither")
    for flag, path in (("--cert", args.cert), ("--key", args.key)):
        if path is not None and not path.is_file():
            raise UserError(f"{flag} {path}: file not found")
    if args.max_peers < 1:
        raise UserError(f"--max-peers {args.max_peers}: must be 1 or more")
    if not 1 <= args.connect_timeout <= 600:
        raise UserError(f"--connect-timeout {args.connect_timeout:g}: must be 1..600 seconds")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be 0..65535")
    token = args.token
    if token is None and not is_loopback(args.host):
        token = new_token()
    if not is_loopback(args.host) and args.cert is None:
        log.warning("serving on %s without --cert/--key: browsers on other machines will refuse the camera "
                    "on plain http", args.host)
    return ServeOptions(host=args.host, port=args.port, token=token, stun=tuple(args.stun),
                        allowed_origins=tuple(args.allow_origin), max_peers=args.max_peers,
                        connect_timeout_s=args.connect_timeout, cert=args.cert, key=args.key)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from stream.webrtc.server import create_app, page_url, ssl_context

    options = options_from_args(args)
    print("loading the model ...", flush=True)
    model = live_model_from_args(args)
    app = create_app(options, model)
    try:
        context = ssl_context(options)
    except (OSError, ValueError) as err:
        raise UserError(f"--cert {options.cert} / --key {options.key}: cannot be loaded ({err})") from None
    url = page_url(options, options.port)
    if options.host in ("0.0.0.0", "::"):  # listening on every interface: name one a browser can reach
        url = url.replace(options.host if options.host == "0.0.0.0" else "[::]", socket.gethostname(), 1)
    print(f"edits: {', '.join(model.edit_names) or 'none'}; open {url}", flush=True)
    try:
        web.run_app(app, host=options.host, port=options.port, ssl_context=context, print=None,
                    access_log=None, handle_signals=True)
    except OSError as err:
        raise UserError(f"cannot listen on {options.host}:{options.port} ({err.strerror}); "
                        "choose another --port or stop the program using it") from None
    return 0
