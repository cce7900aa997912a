"""User-facing errors.

Every error a user can cause (bad path, corrupt file, unknown name, bad option) is raised as a
:class:`GenreError` whose message is one line naming the file or value and the cause. The CLI prints
that line and exits 1; per-track stages catch :class:`InputError`, record it in the store and go on.
"""


class GenreError(Exception):
    """An error the user can fix; its message is one self-contained line."""


class InputError(GenreError):
    """One input item (a track, a file) is unusable; the stage records it and continues."""


class UsageError(GenreError):
    """A wrong option, unknown name or missing prerequisite; the command stops with exit code 1."""
