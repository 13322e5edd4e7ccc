"""The attribution methods, one module each: every module here is imported, so its ``@register_method``
runs when ``zfviz.attribution`` is imported. A new method is a new file here (plus its tests)."""

from __future__ import annotations

import importlib
import pkgutil

for _found in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_found.name}")
