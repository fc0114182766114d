"""Exceptions raised by lorarank.

Every error lorarank raises on purpose derives from :class:`LoraRankError` and from the
built-in exception a caller would catch without knowing lorarank::

    LoraRankError(Exception)
    ├── ConfigError(LoraRankError, ValueError)        a bad argument: value, shape or dtype
    └── AdapterError(LoraRankError, ValueError)       an adapter file that cannot be read
        └── UnsupportedAdapterError(AdapterError)     recognised but not read (PEFT IA3, ...)
    HubError(LoraRankError, OSError)                  a Hugging Face Hub adapter that cannot be fetched

Messages are one sentence that names the bad value, so the CLI and the pages can show
``str(exc)`` as is. A message is one line of at most :data:`MAX_MESSAGE_CHARS` characters
whatever it quotes (a 100 kB Hub id, 20,000 file names): longer ones keep their start and end
around an ellipsis, line breaks become spaces.
"""

from __future__ import annotations

__all__ = ["LoraRankError", "ConfigError", "AdapterError", "UnsupportedAdapterError", "HubError",
           "MAX_MESSAGE_CHARS"]


#: Longest message (characters); see :func:`lorarank.bounded.clip`.
MAX_MESSAGE_CHARS = 1000


class LoraRankError(Exception):
    """Base class of every error lorarank raises on purpose (one bounded line, see above)."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            from .bounded import clip  # bounded imports this module

            args = (clip(args[0], MAX_MESSAGE_CHARS),)
        super().__init__(*args)


class ConfigError(LoraRankError, ValueError):
    """An argument has a bad value, shape or dtype (``r < 1``, ``lr <= 0``, NaN input, ...)."""


class AdapterError(LoraRankError, ValueError):
    """An adapter file or folder cannot be read: corrupt, truncated, inconsistent or unsafe."""


class UnsupportedAdapterError(AdapterError):
    """The adapter is recognised but lorarank does not read it (a PEFT method no family reads,
    such as IA3; a LyCORIS DoRA scale per input column; a GGUF adapter that is not a LoRA)."""


class HubError(LoraRankError, OSError):
    """A Hub adapter cannot be fetched: no such repo or file, no access, no adapter in it,
    over the size limit, the Hub unreachable or stalled (see :mod:`lorarank.hub`)."""
