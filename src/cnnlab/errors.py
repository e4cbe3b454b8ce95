"""The one exception type for mistakes a user can make.

Anything raised as `CnnlabError` is printed by the CLI as a single line on stderr
(what is wrong, and what to do about it) with exit code `exit_code`; no traceback.
Bugs in cnnlab itself still raise ordinary exceptions, so they stay loud.
"""


class CnnlabError(Exception):
    """A problem with the user's input or environment, not a bug in cnnlab.

    `parameters` names the library parameters (recipe fields) the message speaks of, in their
    library spelling (val_split); the CLI writes them as its flags (--val-split)."""

    exit_code = 1

    def __init__(self, message: str = "", parameters: tuple[str, ...] = ()):
        super().__init__(message)
        self.parameters = tuple(parameters)


class UsageError(CnnlabError):
    """A bad command-line value, unknown name or conflicting options (exit code 2)."""

    exit_code = 2


class CnnlabWarning(UserWarning):
    """A choice that works but costs the user something they may not expect (the CLI prints one line)."""


def brief(error: BaseException, limit: int = 160) -> str:
    """The first line of a library's exception text, for embedding in our one-line messages."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return text if len(text) <= limit else text[: limit - 1] + "…"
