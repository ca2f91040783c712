"""Drive the live page with a real browser on one machine: for tests and bench/live.py, not for `serve`.

- A fake webcam: a .y4m clip for Chromium's --use-file-for-fake-video-capture, made from a real video,
  with a frame-number marker in a band of black/white blocks above the picture. The marker survives
  the codec both ways, so the page can match an edited frame to the camera frame it came from and time
  the trip (glass-to-glass latency), independent of the model.
- Chromium flags that keep everything on loopback and let WebRTC connect there.
- `loopback_ice()`: aioice leaves 127.0.0.1 out of its host candidates; for the duration of the context
  the server gathers only 127.0.0.1, which Chromium (with --allow-loopback-in-peer-connection) pairs with
  its own loopback candidate. Process-wide, hence a context manager that restores it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from stream.media.source import FileSource
from stream.types import Frame

CHROMIUM = "/usr/bin/chromium"
MARKER_BITS = 16  # 12 bits of frame number, 4 of check (XOR of its nibbles): a misread is dropped, not timed
INDEX_BITS = 12

CHROMIUM_ARGS = (
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
)
# Chromium honours only the last --disable-features, so ours must repeat Playwright's own list.
EXTRA_DISABLED_FEATURES = ("WebRtcHideLocalIpsWithMdns",)


@dataclass(frozen=True)
class MarkedClip:
    path: Path
    width: int
    height: int
    fps: int
    frames: int
    band: int  # rows of marker blocks at the top
    header_bytes: int

    def frame(self, index: int) -> Frame:
        """Frame `index` as written (RGB), the reference an edited frame is compared with."""
        size = self.width * self.height * 3 // 2
        with self.path.open("rb") as handle:
            handle.seek(self.header_bytes + (index % self.frames) * (len(b"FRAME\n") + size) + len(b"FRAME\n"))
            planes = np.frombuffer(handle.read(size), np.uint8).reshape(self.height * 3 // 2, self.width)
        return av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24")


def marker_band_height(height: int) -> int:
    return max(16, height // 15) // 2 * 2


def _check(index: int) -> int:
    return (index ^ index >> 4 ^ index >> 8) & 0xF


def draw_marker(image: Frame, index: int, band: int) -> None:
    """Write `index` (mod 4096) and its check into the top `band` rows: one block per bit, white = 1."""
    index %= 1 << INDEX_BITS
    word = index | _check(index) << INDEX_BITS
    width = image.shape[1]
    block = width // (MARKER_BITS + 2)
    image[:band] = 0
    for bit in range(MARKER_BITS):
        if word >> bit & 1:
            x = (bit + 1) * block
            image[:band, x:x + block] = 255


def read_marker(image: Frame, band: int) -> int:
    """The index `draw_marker` wrote, read from block centres (robust to codec blur); -1 if misread."""
    width = image.shape[1]
    block = width // (MARKER_BITS + 2)
    y0, y1 = band // 4, band - band // 4
    word = 0
    for bit in range(MARKER_BITS):
        x = (bit + 1) * block
        if image[y0:y1, x + block // 4:x + block - block // 4].mean() > 127:
            word |= 1 << bit
    index = word & ((1 << INDEX_BITS) - 1)
    return index if word >> INDEX_BITS == _check(index) else -1


def fit(image: Frame, width: int, height: int) -> Frame:
    """Centre-crop to the aspect of width x height, then resize."""
    h, w = image.shape[:2]
    if w * height > h * width:
        new_w = h * width // height
        image = image[:, (w - new_w) // 2:(w - new_w) // 2 + new_w]
    else:
        new_h = w * height // width
        image = image[(h - new_h) // 2:(h - new_h) // 2 + new_h]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def write_marked_y4m(clip: Path, out: Path, width: int, height: int, fps: int, seconds: float) -> MarkedClip:
    """A fake-webcam file: `clip` fitted below a marker band, `seconds` long (the clip repeats if short)."""
    band = marker_band_height(height)
    with FileSource(clip) as source:
        pictures = [fit(frame.image, width, height - band) for frame in source.frames()]
    count = min(max(1, round(seconds * fps)), 1 << INDEX_BITS)
    header = f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode()
    with out.open("wb") as handle:
        handle.write(header)
        canvas = np.zeros((height, width, 3), np.uint8)
        for index in range(count):
            canvas[band:] = pictures[index % len(pictures)]
            draw_marker(canvas, index, band)
            planes = av.VideoFrame.from_ndarray(canvas, format="rgb24").reformat(format="yuv420p").to_ndarray()
            handle.write(b"FRAME\n")
            handle.write(planes.tobytes())
    return MarkedClip(out, width, height, fps, count, band, len(header))


def playwright_disabled_features(playwright: Any) -> str:
    """The `--disable-features=...` switch Playwright passes to Chromium, read from chrome://version."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM)
    try:
        page = browser.new_page()
        page.goto("chrome://version")
        command_line = page.inner_text("#command_line")
    finally:
        browser.close()
    for arg in command_line.split():
        if arg.startswith("--disable-features="):
            return arg
    return ""


def launch_chromium(playwright: Any, clip: MarkedClip, playwright_features: str, headless: bool = True) -> Any:
    """Chromium with the fake webcam, on loopback only, with mDNS host candidates off."""
    features = [f for f in playwright_features.removeprefix("--disable-features=").split(",") if f]
    features += [f for f in EXTRA_DISABLED_FEATURES if f not in features]
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=headless,
        args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={clip.path}",
              f"--disable-features={','.join(features)}"],
        ignore_default_args=[playwright_features] if playwright_features else None,
    )


@contextlib.contextmanager
def loopback_ice() -> Iterator[None]:
    """Within the context, aioice gathers 127.0.0.1 as its only host candidate."""
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


# Runs in the page (see start_probe): watches #local (the camera) and #remote (the edited stream) frame by
# frame, reads the marker from each, and records when each frame number showed in each. Latency = remote - local.
PROBE_JS = """
({band, bits, indexBits, width, loopMs}) => {
  const probe = {local: new Map(), localIndex: -1, latencies: [], remoteFrames: 0, lastIndex: -1, running: true};
  const canvas = document.createElement('canvas');
  canvas.width = width; canvas.height = band;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const block = Math.floor(width / (bits + 2));
  function read(video) {
    if (!video.videoWidth) return -1;
    const scale = video.videoWidth / width;
    ctx.drawImage(video, 0, 0, video.videoWidth, band * scale, 0, 0, width, band);
    const data = ctx.getImageData(0, 0, width, band).data;
    const y = Math.floor(band / 2);
    let value = 0;
    for (let bit = 0; bit < bits; bit++) {
      const x = Math.floor((bit + 1.5) * block);
      let sum = 0;
      for (let dx = -2; dx <= 2; dx++) sum += data[(y * width + x + dx) * 4 + 1];
      if (sum / 5 > 127) value |= 1 << bit;
    }
    const index = value & ((1 << indexBits) - 1);
    return (value >> indexBits) === ((index ^ (index >> 4) ^ (index >> 8)) & 15) ? index : -1;
  }
  function watch(video, onFrame) {
    const step = (now) => { if (!probe.running) return; onFrame(read(video), now); video.requestVideoFrameCallback(step); };
    video.requestVideoFrameCallback(step);
  }
  // the fake camera loops its file: keep when each number showed last, which the remote then follows
  watch(document.getElementById('local'), (index, now) => {
    if (index >= 0 && index !== probe.localIndex) { probe.local.set(index, now); probe.localIndex = index; }
  });
  watch(document.getElementById('remote'), (index, now) => {
    probe.remoteFrames++;
    if (index < 0 || index === probe.lastIndex) return;
    probe.lastIndex = index;
    // a number the preview skipped this loop (a busy renderer drops frames) matches the previous loop: skip it
    const shown = probe.local.get(index);
    if (shown !== undefined && now - shown < loopMs / 2) probe.latencies.push([now, now - shown]);
  });
  window.__probe = probe;
}
"""

def start_probe(page: Any, clip: MarkedClip) -> None:
    """Start timing frames in a Playwright page showing the live page; results in `window.__probe`."""
    page.evaluate(PROBE_JS, {"band": clip.band, "bits": MARKER_BITS, "indexBits": INDEX_BITS, "width": clip.width,
                             "loopMs": 1000 * clip.frames / clip.fps})


def probe_latencies(page: Any, since_ms: float = 0.0) -> npt.NDArray[np.float64]:
    """[N, 2]: page time (ms) each edited frame showed, and its glass-to-glass latency (ms)."""
    pairs = np.array(page.evaluate("window.__probe.latencies"), dtype=np.float64).reshape(-1, 2)
    return pairs[pairs[:, 0] >= since_ms]


# The next frame of #remote as a PNG data: URL (nested lists of pixels would be slow to pass).
GRAB_JS = """
async () => {
  const video = document.getElementById('remote');
  await new Promise((resolve) => video.requestVideoFrameCallback(() => resolve()));
  const c = document.createElement('canvas');
  c.width = video.videoWidth; c.height = video.videoHeight;
  c.getContext('2d').drawImage(video, 0, 0);
  return c.toDataURL('image/png');
}
"""


def decode_data_url(url: str) -> Frame:
    """A PNG data: URL as an RGB array."""
    import base64

    data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
