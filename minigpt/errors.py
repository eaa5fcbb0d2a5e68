"""The exceptions a user can meet. Each message is one line naming the thing at fault."""


class MiniGPTError(Exception):
    """Base class: anything minigpt raises on purpose for bad input or a bad file."""


class ConfigError(MiniGPTError):
    """config.json is missing, unreadable, incomplete, or describes another architecture."""


class CheckpointError(MiniGPTError):
    """A weights file is missing, corrupt, of the wrong shape, or in a refused format."""


class NonFiniteError(CheckpointError):
    """A forward pass produced NaN or inf: the message names where it first appeared and the
    weights there that hold non-finite values (or says the values overflowed)."""


class TokenizerError(MiniGPTError):
    """vocab.json or merges.txt is unreadable, malformed, or does not match the other."""


class InputError(MiniGPTError, ValueError):
    """A text, a token sequence or an argument that the model cannot take."""


class HubError(MiniGPTError):
    """A model named by hub id could not be fetched: unknown repository or revision, a refused or
    failed download."""


class ModelNotCachedError(HubError):
    """A hub model is not in the local cache, and the hub cannot be reached or offline mode is on."""
