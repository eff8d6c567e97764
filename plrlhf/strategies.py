"""Lightning strategies configured for plrlhf's models (Lightning does the parallel work)."""

from __future__ import annotations

from datetime import timedelta

from lightning.pytorch.strategies import ModelParallelStrategy


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
