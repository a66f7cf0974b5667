"""Transports: one message-oriented interface over in-process links, TCP and QUIC."""
