"""Warnings that point at the user's line, not at the library frame that noticed.

A warning raised deep inside ``step()`` (through the wrapper, torch's hook wrapper and
``no_grad``) or ``regularize()`` has no fixed ``stacklevel``; :func:`warn` counts the
frames of this library and of torch above it and reports the first frame outside them.
The lab (``decaylab.lab``) counts as a user of the library.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

_LIBRARY = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LAB = _LIBRARY + "lab" + os.sep
_TORCH = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def _internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return (path.startswith(_LIBRARY) and not path.startswith(_LAB)) or path.startswith(_TORCH)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first caller outside the
    library and torch.

    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn("look here")
    >>> caught[0].filename.endswith("_warn.py")
    False
    """
    frame, level = sys._getframe(1), 2
    while frame is not None and _internal(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
