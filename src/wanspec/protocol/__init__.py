"""The controller <-> worker wire protocol: typed messages and sans-I/O length-prefixed framing."""

from wanspec.protocol.codec import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    ProtocolError,
    decode_message,
    encode_frame,
    encode_message,
)
from wanspec.protocol.messages import (
    Auth,
    Cancel,
    Commit,
    Drafts,
    DraftsBundle,
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    SessionStart,
    SessionStats,
)

__all__ = [
    "DEFAULT_MAX_FRAME", "PROTOCOL_VERSION", "FrameDecoder", "ProtocolError", "decode_message",
    "encode_frame", "encode_message", "Auth", "Cancel", "Commit", "Drafts", "DraftsBundle", "Error", "Hello",
    "Message", "Ping", "Pong", "SessionStart", "SessionStats",
]
