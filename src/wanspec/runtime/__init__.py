"""Thin asyncio adapters that execute the sans-I/O state machines' actions."""
