"""``wanspec emulate``: every decoding mode on the same prompts over an emulated WAN."""
