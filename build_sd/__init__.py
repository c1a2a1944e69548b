"""build_sd: ahead-of-time speculative decoding for edge SoCs with IREE."""
__version__ = "0.1.0"
