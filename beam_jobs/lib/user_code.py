"""Loading the user's functions named on the command line (`--preprocessing_fn`, `--model_fn`).

A function is named as `package.module:function` (imported from `sys.path`, like any module) or as
`path/to/file.py:function` (read through Beam's `FileSystems`, so `gs://` works too). Every failure
is one `JobError` line naming the flag, the function and what went wrong.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Callable
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.lib.cli import JobError

__all__ = ["load_function", "parse_function_spec"]

_PY_SUFFIX = ".py"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_FILE_MODULE_PREFIX = "_user_code_"


def parse_function_spec(spec: str, *, flag: str) -> tuple[str, str]:
    """Splits `module:function` or `file.py:function` into its two parts.

    Raises:
        JobError: the spec is not of either form.
    """
    module, _, name = spec.rpartition(":")
    is_file = module.endswith(_PY_SUFFIX)
    if not _IDENTIFIER.fullmatch(name) or not (is_file or _MODULE.fullmatch(module)):
        raise JobError(
            f"--{flag}={spec}: name a function as package.module:function "
            "or path/to/file.py:function"
        )
    return module, name


def _module_from_file(path: str, spec: str, flag: str) -> types.ModuleType:
    if not FileSystems.exists(path):
        raise JobError(f"--{flag}={spec}: file {path} not found")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        source = handle.read().decode("utf-8")
    stem = re.sub(r"\W", "_", path.rsplit("/", 1)[-1][: -len(_PY_SUFFIX)])
    module = types.ModuleType(_FILE_MODULE_PREFIX + stem)
    module.__file__ = path
    # Registered before running, as an import would be: dataclasses and pickling look it up.
    sys.modules[module.__name__] = module
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def load_function(spec: str, *, flag: str) -> Callable[..., Any]:
    """The function named by `spec`, imported.

    Args:
        spec: `package.module:function` or `path/to/file.py:function`.
        flag: the command-line flag that named it, for error messages (`preprocessing_fn`).

    Raises:
        JobError: a malformed spec, a module that cannot be imported (or raises while importing),
            or a name that is missing or not callable.
    """
    module_name, name = parse_function_spec(spec, flag=flag)
    try:
        if module_name.endswith(_PY_SUFFIX):
            module = _module_from_file(module_name, spec, flag)
        else:
            module = importlib.import_module(module_name)
    except JobError:
        raise
    except Exception as error:  # Anything a user's module raises while importing.
        raise JobError(
            f"--{flag}={spec}: cannot import {module_name}: {type(error).__name__}: {error}"
        ) from error
    function = getattr(module, name, None)
    if function is None:
        raise JobError(f"--{flag}={spec}: {module_name} has no function {name!r}")
    if not callable(function):
        raise JobError(f"--{flag}={spec}: {module_name}.{name} is not a function")
    return function
