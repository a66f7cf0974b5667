"""Sans-I/O speculative-decoding state machines.

Nothing in this package touches sockets, clocks, threads or model weights.  State machines take
events (with the current time ``now`` passed in) and return actions; adapters in
:mod:`wanspec.runtime` execute the actions on models, devices and transports and feed the results
back.  This keeps every decision reproducible and testable on virtual time.
"""
