"""wanspec: speculative decoding with the draft model at a remote, under-used site.

The target model stays at the busy site (the controller) and verifies; the draft model runs at a
cheap site (the worker).  Output is lossless: token-identical to the target decoding alone.
"""

__version__ = "0.1.0"
