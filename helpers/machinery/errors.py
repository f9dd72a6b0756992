"""The error every parameter check raises. Its own module, at the bottom of the import graph, so that
`params`, `checks` and `model` can all raise it while their imports point one way
(params -> checks -> model)."""


class ParameterError(ValueError):
    """A parameter has a wrong name, type or value; the message says which and what is allowed."""
