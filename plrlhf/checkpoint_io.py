"""Checkpoints written atomically and loaded without running code.

:class:`AtomicCheckpointIO` is the checkpoint plugin every ``plrlhf`` Trainer uses (the CLI installs
it; pass ``plugins=[AtomicCheckpointIO()]`` to a Trainer of your own): a checkpoint is streamed to
a temporary file beside its target, flushed to disk and renamed over it, so a kill, a crash or a
full disk during the write leaves the previous ``last.ckpt`` intact. Loading is ``weights_only``:
a checkpoint that would need to unpickle Python objects is refused with an explanation, since
unpickling can run any code the file's author chose.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from plrlhf.io import atomic_torch_save

TRUST_HINT = (
    "If you made this file yourself with an older plrlhf and trust it, load it with "
    "weights_only=False (Python: `torch.load(path, weights_only=False)`; `plrlhf adapt "
    "--trust_checkpoint true`); never do that for a file from someone else."
)


def check_checkpoint_file(path: str | Path) -> Path:
    """``path`` as a :class:`Path`, if it names a non-empty file; a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): the write that made it did not finish")
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu", weights_only: bool = True) -> dict[str, Any]:
    """``torch.load`` of a checkpoint file, refusing (with the reason) anything but plain data."""
    path = check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"checkpoint {path} was refused: it holds Python objects, and loading them could run code "
            f"({str(error).splitlines()[0]}). {TRUST_HINT}"
        ) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(
            f"checkpoint {path} is not a readable checkpoint (truncated or corrupt?): {error}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, with atomic writes in the target's directory and safe loads."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(
            path, map_location, weights_only=True if weights_only is None else weights_only
        )


def check_checkpoint_fits(module: Any, checkpoint: dict[str, Any]) -> None:
    """Refuse, with names and shapes, a checkpoint of another model (Lightning would raise a long
    state-dict error)."""
    theirs = checkpoint["state_dict"]
    for name, submodule in module.named_modules():  # (user models saved by older versions)
        fill = getattr(submodule, "fill_legacy_state", None)
        if callable(fill):
            fill(theirs, f"{name}." if name else "")
    ours = module.state_dict()
    missing = sorted(ours.keys() - theirs.keys())
    unexpected = sorted(theirs.keys() - ours.keys())
    reshaped = [k for k in ours.keys() & theirs.keys() if tuple(ours[k].shape) != tuple(theirs[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    saved = checkpoint.get("hyper_parameters", {})
    details = [
        f"{len(missing)} weights missing (e.g. {missing[:2]})" if missing else "",
        f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})" if unexpected else "",
        f"{len(reshaped)} of another shape (e.g. {reshaped[0]}: checkpoint "
        f"{tuple(theirs[reshaped[0]].shape)}, this model {tuple(ours[reshaped[0]].shape)})"
        if reshaped
        else "",
    ]
    problems = "; ".join(d for d in details if d)
    raise ValueError(
        f"the checkpoint does not fit this model: {problems}. It was trained with "
        f"model={saved.get('model')!r}, num_users={saved.get('num_users')!r}; this run builds "
        f"model={module.hparams.get('model')!r}, num_users={module.num_users!r}"
    )
