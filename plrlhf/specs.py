"""Objects as plain data (``{"class_path", "init_args"}``) and back, without trusting the file.

Checkpoints and exports record how to rebuild their parts (optimizer, LoRA settings, loss, user
model) as class paths with init arguments, so that they load with ``torch.load(weights_only=True)``
and JSON, never by unpickling. Reading a class path back is the dangerous direction: a file could
name ``subprocess.run``. :func:`resolve_class` therefore imports nothing but plrlhf's own modules,
and returns a class only if it is a subclass of the type the caller expects.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import inspect
import sys
import warnings
from typing import Any

PLAIN = (str, int, float, bool, type(None))


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def to_plain(value: Any) -> Any:
    """``value`` as JSON-like data: objects become ``{"class_path", "init_args"}`` with the
    arguments that rebuild them (those that differ from the defaults, for dataclasses)."""
    if isinstance(value, enum.Enum):  # before the plain types: some enums are also strings
        return to_plain(value.value)
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_plain(v) for v in value)
    if isinstance(value, type):
        return {"class_path": class_path(value)}
    if isinstance(value, functools.partial):
        # partial(cls, **kw), or jsonargparse's partial(helper, instantiator, cls, **kw)
        classes = [a for a in (value.func, *value.args) if isinstance(a, type)]
        others = [a for a in (value.func, *value.args) if not isinstance(a, type)]
        if len(classes) == 1 and all(inspect.isroutine(a) for a in others):
            return {"class_path": class_path(classes[0]), "init_args": to_plain(value.keywords)}
    if inspect.isroutine(value) or isinstance(value, functools.partial):
        raise TypeError(f"{value!r} cannot be recorded as plain data: give a class or functools.partial")
    return {"class_path": class_path(type(value)), "init_args": to_plain(_init_args(value))}


def _init_args(obj: Any) -> dict[str, Any]:
    if isinstance(getattr(obj, "init_args", None), dict):
        return dict(obj.init_args)  # recorded at construction (user models)
    if dataclasses.is_dataclass(obj):
        try:  # what post-init processing fills in (e.g. peft's peft_type) compares equal
            defaults = type(obj)()
        except TypeError:
            defaults = None
        return {
            field.name: getattr(obj, field.name)
            for field in dataclasses.fields(obj)
            if field.init and (defaults is None or getattr(obj, field.name) != getattr(defaults, field.name))
        }
    args = {}
    for name, parameter in inspect.signature(type(obj)).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if hasattr(obj, name):
            args[name] = getattr(obj, name)
        elif parameter.default is parameter.empty:
            raise TypeError(
                f"{type(obj).__name__} cannot be recorded as plain data: argument {name!r} is not kept "
                "as an attribute of the same name"
            )
    return args


def resolve_class(path: Any, base: type, where: str) -> type:
    """The class ``path`` names, if it is a subclass of ``base``.

    Only plrlhf's own modules are imported; any other module must already be imported (import
    the package that defines your class before loading), so a file can never make Python import
    or call something new.
    """
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"{where}: class_path must be a dotted name, got {path!r}")
    module, name = _module_of(path, where), path.rpartition(".")[2]
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{where}: {path!r} is not a {base.__module__}.{base.__qualname__} subclass: refused")
    return cls


def _module_of(path: str, where: str) -> Any:
    module_name = path.rpartition(".")[0]
    module = sys.modules.get(module_name)
    if module is None and (module_name == "plrlhf" or module_name.startswith("plrlhf.")):
        module = importlib.import_module(module_name)
    if module is None:
        raise ValueError(
            f"{where}: {path!r} is not in a module imported so far; loading never imports modules a file "
            f"names. If you trust it, import {module_name!r} first"
        )
    return module


def check_class_paths(tree: Any, where: str) -> None:
    """Refuse plain data (e.g. a checkpoint's hyperparameters) naming a class outside the modules
    imported so far: building it would import that module, on the file's say."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in ("class_path", "_class_path") and isinstance(value, str):
                _module_of(value, where)
            else:
                check_class_paths(value, where)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            check_class_paths(value, where)


def build(spec: Any, base: type, where: str, *args: Any) -> Any:
    """An instance of the class ``spec["class_path"]`` names (a ``base`` subclass) with ``args``
    and ``spec["init_args"]``."""
    if not isinstance(spec, dict) or set(spec) - {"class_path", "init_args"}:
        raise ValueError(f"{where}: expected {{'class_path': ..., 'init_args': {{...}}}}, got {spec!r}")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(f"{where}: init_args must be a mapping, got {type(init_args).__name__}")
    return resolve_class(spec.get("class_path"), base, where)(*args, **init_args)


INSTANTIATOR_KEY = "_instantiator"


def record_as_plain_data(module: Any) -> None:
    """Checkpoints hold the method's arguments as plain data, so they load with
    ``weights_only=True``. The CLI records its config this way already; arguments given in Python
    (a ``LoraConfig``, a ``functools.partial`` optimizer, a loss object) become class paths with
    init arguments, and Lightning rebuilds them through the same type-checked instantiator."""
    if INSTANTIATOR_KEY in module.hparams:
        return
    plain = {}
    for name, value in module.hparams.items():
        try:
            plain[name] = to_plain(value)
        except TypeError as error:
            warnings.warn(
                f"{name}: {error}; checkpoints of this module will not load with weights_only=True",
                stacklevel=3,
            )
            return
    module.hparams.update(plain)
    module.hparams["_class_path"] = class_path(type(module))
    module.hparams[INSTANTIATOR_KEY] = "lightning.pytorch.cli.instantiate_module"
