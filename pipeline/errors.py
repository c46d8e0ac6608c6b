"""The one exception type a user should ever see from kowiki-bert."""


class PipelineError(Exception):
    """Bad input or configuration: the message names the file or field and the fix.

    The CLI prints it on one line and exits non-zero instead of showing a traceback.
    """
