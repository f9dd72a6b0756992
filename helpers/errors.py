"""The error every check raises for a wrong parameter: the runner answers it with exit status 2 and one line."""


class ParameterError(ValueError):
    """A parameter has a wrong name, type or value; the message says which and what is allowed."""
