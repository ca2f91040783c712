"""Audio passes through untouched: the input's packets are muxed into the output as they are.

The output stream is made from the input stream as a template (same codec, parameters and extradata),
so every packet's bytes, and so the sound, are the input's; nothing is decoded or re-encoded.
"""
from __future__ import annotations

import av


class AudioCopy:
    """Remuxes the packets of one input audio stream into an output container."""

    def __init__(self, output: av.container.OutputContainer, template: av.audio.stream.AudioStream) -> None:
        self.stream = output.add_stream_from_template(template)
        self._output = output
        self.packets = 0

    def write(self, packet: av.Packet) -> None:
        # mux() rescales pts/dts from the packet's time base to the output stream's
        packet.stream = self.stream
        self._output.mux(packet)
        self.packets += 1
