"""The one exception type of onnx-cp."""


class OnnxCpError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it.

    The CLI prints the message as one line and exits with status 1 (``usage=False``)
    or 2 (``usage=True``). Anything else that escapes is a bug.
    """

    def __init__(self, message: str, *, usage: bool = False):
        super().__init__(message)
        self.usage = usage
