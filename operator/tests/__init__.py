"""A package only so that pytest (--import-mode=importlib) does not name these
modules ``operator.tests.*``, which would shadow the stdlib ``operator``."""
