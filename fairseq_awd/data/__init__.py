from .bptt_streams import BPTTStreams, bptt_windows, data_parallel_position, stream_layout

__all__ = ["BPTTStreams", "bptt_windows", "data_parallel_position", "stream_layout"]
