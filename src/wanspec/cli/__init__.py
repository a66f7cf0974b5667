"""The ``wanspec`` command line: one binary for generate, controller, worker and emulation."""
