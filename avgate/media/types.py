"""What decoding and hashing a media file yields: facts, frame hashes, audio fingerprint.

These values are the contract between `avgate.media` (which computes them),
screening's intake and hash banks (which store and match them) and the
command line (which prints them). No decoding library is imported here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

PDQ_BITS = 256
PDQ_BYTES = PDQ_BITS // 8
PDQ_MATCH_DISTANCE = 31
"""Meta's default: a PDQ match is a Hamming distance of at most 31 bits."""
PDQ_MIN_QUALITY = 50
"""Meta's default: frames whose PDQ quality is below 50 are dropped."""


class MediaKind(enum.Enum):
    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """Bounds on one decode; beyond them the file is refused, never half-processed."""

    max_bytes: int = 2 * 1024**3
    max_duration_seconds: float = 3 * 3600.0
    max_pixels: int = 8192 * 8192
    """Width times height of any image or video frame."""
    cpu_seconds: float = 10.0
    """CPU time of the worker process for one file (RLIMIT_CPU and a wall-clock guard)."""
    memory_bytes: int = 512 * 1024**2
    """Address space of the worker process (RLIMIT_AS)."""
    frames_per_second: float = 1.0
    """Sampling rate of video frames, plus the first frame."""
    max_frames: int = 3 * 3600 + 1
    audio_max_seconds: float = 3 * 3600.0
    """Longest stretch of audio fingerprinted (chromaprint's own default is 120 s)."""


@dataclass(frozen=True, slots=True)
class StreamFacts:
    kind: str
    """"video", "audio" or another container stream type."""
    codec: str
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    duration_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class MediaFacts:
    kind: MediaKind
    container: str
    duration_seconds: float
    streams: tuple[StreamFacts, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    """Container-level metadata tags (for example GB 45438's `AIGC`)."""


@dataclass(frozen=True, slots=True)
class FrameHash:
    """One PDQ hash of one sampled frame (or of the image itself, offset 0)."""

    offset_seconds: float
    pdq: bytes
    """32 bytes, 256 bits."""
    quality: int


@dataclass(frozen=True, slots=True)
class AudioFingerprint:
    """Chromaprint's raw fingerprint: one 32-bit sub-fingerprint per item of `item_seconds`."""

    values: tuple[int, ...]
    item_seconds: float
    algorithm: int = 1


@dataclass(frozen=True, slots=True)
class MediaHashes:
    size_bytes: int
    md5: bytes
    sha256: bytes
    facts: MediaFacts
    frames: tuple[FrameHash, ...] = ()
    """PDQ per sampled frame, in time order, frames below PDQ_MIN_QUALITY already dropped."""
    audio: AudioFingerprint | None = None


class RejectionKind(enum.Enum):
    INVALID = "invalid"
    """Malformed, truncated, not media at all: INVALID_ARGUMENT."""
    PRECONDITION = "precondition"
    """Well formed but beyond a limit (dimensions, duration, a bomb, CPU or memory): FAILED_PRECONDITION."""


class MediaRejected(Exception):
    """The file is refused; `rule` says why in words a caller can act on, never a stack trace."""

    def __init__(self, kind: RejectionKind, rule: str) -> None:
        super().__init__(rule)
        self.kind = kind
        self.rule = rule
