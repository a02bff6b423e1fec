"""The one base class for errors whose message is meant for the user.

Every such error names the problem and the fix; the CLI prints it as one line and exits 2.
Subclasses also derive from the matching builtin (ValueError, KeyError, ...) so ordinary
``except`` clauses keep working.
"""


class ApertureError(Exception):
    """An expected failure with an actionable message (bad name, bad file, no data, no network)."""
