from .bptt_streams import BPTTStreams, bptt_windows, stream_layout

__all__ = ["BPTTStreams", "bptt_windows", "stream_layout"]
