"""The one error type of the export pipeline that is the user's to fix (bad input, failed gate).

The CLI prints it as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class ExportError(Exception):
    """The export cannot go on; the message says why and what to do."""
