"""FrameExit: conditional early exiting for efficient video recognition (plain PyTorch)."""

__version__ = "0.1.0"
