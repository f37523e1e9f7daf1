"""specreplay: record speculative decoding on a GPU, replay any policy on a CPU."""
__version__ = "0.1.0"
