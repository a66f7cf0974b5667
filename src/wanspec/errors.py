"""User-facing errors: raised for bad input, printed by the CLI as one line without a traceback."""


class WanspecError(Exception):
    """An error whose message is meant for the user, not a bug report."""


class ModelLoadError(WanspecError):
    """A model or tokenizer directory could not be loaded."""


class IncompatibleModelsError(WanspecError):
    """Draft and target do not share a tokenizer, so draft tokens would be meaningless to the target."""
