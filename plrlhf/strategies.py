"""Lightning strategies configured for plrlhf's models (Lightning does the parallel work)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (``fully_shard``) over every process: Lightning's ``ModelParallelStrategy`` with one
    data-parallel group of all processes of all nodes and no tensor parallelism.

    ``ModelParallelStrategy`` on its own defaults to tensor parallelism inside a node; this sets the
    mesh from ``devices`` and ``num_nodes`` so that scaling stays a trainer setting. Works on CPU
    (gloo) and GPU (NCCL). The model shards itself in ``configure_model``
    (:meth:`plrlhf.methods.base.PreferenceModule.configure_model`).
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ) -> None:
        """
        Args:
            save_distributed_checkpoint: each process writes its shard to a checkpoint directory
                (fast, for big models); default: the full state gathered into one file, which
                loads anywhere (one process, another strategy, ``plrlhf test``).
            process_group_backend: ``gloo`` / ``nccl``; default: by device.
            timeout: how long collectives wait for a slow process.
        """
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def fully_shard_layers(root: nn.Module, model: nn.Module, mesh: Any) -> None:
    """FSDP2 on a module holding a transformers model: each decoder layer (the classes ``model``
    lists in ``_no_split_modules``, wherever they occur under ``root``: the policy and a frozen
    reference copy alike) is a sharding unit, and ``root`` takes the rest (embeddings, head, LoRA
    adapters outside the layers, the user model). ``root``'s ``forward`` must run every computation
    that reads weights, so that the root unit gathers around it.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if "tensor_parallel" in (mesh.mesh_dim_names or ()) and mesh["tensor_parallel"].size() > 1:
        raise ValueError("plrlhf shards data-parallel only: set the strategy's tensor_parallel_size to 1")
    data_parallel = mesh["data_parallel"] if mesh.mesh_dim_names else mesh
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in root.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer classes (_no_split_modules)")
    # Gradients are reduced in float32 whatever the compute dtype (bf16 sums lose precision).
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mesh=data_parallel, mp_policy=policy)
    fully_shard(root, mesh=data_parallel, mp_policy=policy)
