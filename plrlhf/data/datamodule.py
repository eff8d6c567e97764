"""``PreferenceDataModule``: personalized preference triples from files and Hugging Face datasets."""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from plrlhf.data import tables
from plrlhf.data.cache import (
    EncodedEntry,
    default_cache_dir,
    entry_key,
    entry_lock,
    load_entry,
    tokenizer_digest,
    write_entry,
)
from plrlhf.data.collate import EncodedPrompt, PreferenceCollator, PromptCollator
from plrlhf.data.dataset import EncodedSplit
from plrlhf.data.encoding import Fields, SplitStats, encode_prompts, encode_stream
from plrlhf.data.registry import GENERIC_NAME, UserRegistry
from plrlhf.data.sampler import ResumableDataLoader, TrainingSampler, global_batches
from plrlhf.data.sources import DataError, read_records
from plrlhf.data.tables import HubDataset
from plrlhf.io import atomic_write_json
from plrlhf.packing import row_widths
from plrlhf.tokenizer import load_tokenizer

# A dict, not HubDataset, in the signature: jsonargparse reads a string given for a dataclass-typed
# argument as a config file, which would load a whole data file as YAML.
Source = str | dict[str, str | None]
Paths = Source | list[Source] | None
Split = Literal["train", "validation", "test", "predict"]
_STAGE_SPLITS: dict[str, tuple[Split, ...]] = {
    "fit": ("train", "validation"),
    "validate": ("validation",),
    "test": ("test",),
    "predict": ("predict",),
}
REGISTRY_FILE = "users.json"
DATA_FILE = "data.json"


def _as_list(paths: Paths) -> list[Any]:
    """Sources as a list; a ``{name, subset, split}`` dict (a checkpoint's record of a
    :class:`HubDataset`) becomes one again. A ``datasets.Dataset`` passes as it is."""
    if paths is None:
        return []
    items = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    return [_hub_dataset(item) if isinstance(item, dict) else item for item in items]


def _hub_dataset(spec: dict[str, Any]) -> HubDataset:
    unknown = set(spec) - {"name", "subset", "split"}
    if unknown or "name" not in spec:
        raise ValueError(
            f"a Hugging Face dataset is given as {{name, subset, split}}, got {spec} "
            f"({'unknown ' + ', '.join(sorted(unknown)) if unknown else 'no name'})"
        )
    return HubDataset(**spec)


def _as_plain(paths: Paths) -> Any:
    """Sources as data a checkpoint can hold (loaded with ``weights_only``)."""
    plain = [
        vars(item).copy()
        if isinstance(item, HubDataset)
        else item
        if isinstance(item, str)
        else tables.describe(item)
        for item in _as_list(paths)
    ]
    return plain if isinstance(paths, (list, tuple)) else (plain[0] if plain else None)


class PreferenceDataModule(LightningDataModule):
    """Personalized preference triples ``(user, prompt, chosen, rejected)`` for any method.

    Users seen in the training files get indices ``1..N`` (see :class:`UserRegistry`); every other
    user is served as the generic user 0 and reported as *unseen*. The registry is saved in the log
    directory (``users.json``) and in checkpoints.

    Exposes ``num_users``, ``pad_token_id`` and ``tokenizer_path`` for the CLI to link into the
    method, and ``user_names``/``group_names`` so that methods can name per-user metrics.
    """

    def __init__(
        self,
        tokenizer: str,
        train: Paths = None,
        validation: Paths = None,
        test: Paths = None,
        predict: Paths = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_length: int = 1024,
        max_prompt_length: int = 512,
        prompt_field: str = "prompt",
        chosen_field: str = "chosen",
        rejected_field: str = "rejected",
        user_field: str = "user_id",
        group_field: str = "group",
        missing_user: Literal["generic", "error"] = "generic",
        user_registry: str | None = None,
        num_workers: int = 0,
        group_by_length: bool = False,
        length_layout: Literal["pair", "shared_prompt"] = "pair",
        seed: int | None = None,
        shuffle: bool = True,
        cache: bool = True,
        cache_dir: str | None = None,
        max_records: int | dict[str, int] | None = None,
        encode_workers: int = 1,
    ) -> None:
        """
        Args:
            tokenizer: local tokenizer directory.
            train: training data: file(s) (``.jsonl``, ``.json``, either gzipped, ``.parquet``,
                ``.csv``, ``.arrow``), a Hugging Face dataset saved with ``save_to_disk`` (a
                ``DatasetDict`` gives its split of this name), a dataset in the local Hugging Face
                cache (``{name, subset, split}``), or from Python a ``datasets.Dataset`` or a
                :class:`plrlhf.data.tables.HubDataset`.
            validation: validation data, as ``train``.
            test: test data, as ``train``.
            predict: data for ``predict``: triples are scored; records without responses
                (``{user_id, prompt}``) are prompts to generate a response for.
            batch_size: preference triples per training batch (per device).
            eval_batch_size: triples per evaluation batch (default: ``batch_size``). Evaluation
                and prediction batch them narrowest first (less padding; predictions are
                written in file order).
            max_length: most tokens of prompt plus the longer response.
            max_prompt_length: most prompt tokens; longer prompts lose their beginning.
            prompt_field: record key of the prompt (text, or a list of chat messages).
            chosen_field: record key of the preferred response.
            rejected_field: record key of the other response.
            user_field: record key of the user id (string or integer).
            group_field: record key of an optional group label (e.g. majority/minority).
            missing_user: a record without user id is served as the generic user, or is an error.
            user_registry: a saved ``users.json``; default: built from the training files.
            num_workers: data loader worker processes.
            group_by_length: batch training triples of similar length (shuffled buckets) to cut
                padding; the summary line reports the padding share either way.
            length_layout: the row layout whose lengths batches are grouped by and padding is
                reported for: ``pair`` (one row per response: prompt + response) or
                ``shared_prompt`` (one row per triple: prompt + both responses, for methods with
                ``shared_prompt: true``).
            seed: seed of the training order (default: the run's ``seed_everything``, else 0). The
                order depends on it and the epoch only, so it is replayed exactly on resume and is
                the same for any number of processes.
            shuffle: shuffle the training triples each epoch (off: file order, e.g. to compare runs).
            cache: keep the encoded splits on disk (memory-mapped) and reuse them in later runs
                while the data, the tokenizer and the settings above are unchanged.
            cache_dir: where encoded splits are kept (default: ``$PLRLHF_CACHE``, else
                ``~/.cache/plrlhf``).
            max_records: read at most this many records of each source (smoke runs), or per
                split (``{validation: 640}``); the CLI sets it under ``fast_dev_run`` and for
                integer ``limit_val/test/predict_batches``.
            encode_workers: processes that tokenize a source on a cache miss (the tokenizer
                already uses every core within a process; more processes help when there are
                many cores; a script that builds the data module needs ``if __name__ ==
                "__main__":``).
        """
        super().__init__()
        self.save_hyperparameters()  # in checkpoints: adaptation reads the data settings back
        for split, value in (
            ("train", train),
            ("validation", validation),
            ("test", test),
            ("predict", predict),
        ):
            self.hparams[split] = _as_plain(value)
        self.tokenizer_path = tokenizer
        self.paths: dict[Split, list[Any]] = {
            "train": _as_list(train),
            "validation": _as_list(validation),
            "test": _as_list(test),
            "predict": _as_list(predict),
        }
        for name, value, least in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size if eval_batch_size is not None else 1, 1),
            ("max_length", max_length, 2),
            ("max_prompt_length", max_prompt_length, 1),
            ("num_workers", num_workers, 0),
            *(
                (f"max_records[{k}]", v, 1)
                for k, v in (
                    max_records if isinstance(max_records, dict) else {"all": max_records or 1}
                ).items()
            ),
            ("encode_workers", encode_workers, 1),
        ):
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        if max_prompt_length >= max_length:
            raise ValueError(
                f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})"
            )
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.fields = Fields(prompt_field, chosen_field, rejected_field, user_field, group_field)
        self.missing_user = missing_user
        self.user_registry_path = user_registry
        self.num_workers = num_workers
        self.group_by_length = group_by_length
        self.seed = seed
        self.length_layout = length_layout
        self.shuffle = shuffle
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_records = max_records
        self.encode_workers = encode_workers
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._entries: dict[tuple[Split, int], EncodedEntry] = {}
        self._registry: UserRegistry | None = None
        self._user_keys: NameTable | None = None
        self._group_keys = NameTable("")
        self._spellings: dict[str, Counter] = {}
        self._group_counts: dict[str, Counter] = {}
        self.datasets: dict[Split, EncodedSplit | list[EncodedPrompt]] = {}
        self.stats: dict[Split, SplitStats] = {}

    # -- what the CLI links into the method ---------------------------------------------------
    @property
    def tokenizer(self):
        return load_tokenizer(self.tokenizer_path)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def registry(self) -> UserRegistry:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    @property
    def num_users(self) -> int:
        """Number of users seen in training (the generic user not counted)."""
        return len(self.registry)

    @property
    def user_keys(self) -> NameTable:
        # Seen users first, so that a seen user's key equals its model index.
        if self._user_keys is None:
            self._user_keys = NameTable(GENERIC_NAME, self.registry.users)
        return self._user_keys

    @property
    def user_names(self) -> list[str]:
        """Names of the ``user_keys`` in batches: the generic user, seen users, then unseen ones."""
        return self.user_keys.names

    @property
    def group_names(self) -> list[str]:
        """Names of the ``group_keys`` in batches; key 0 (``""``) means no group."""
        return self._group_keys.names

    @property
    def user_groups(self) -> dict[str, str]:
        """Each user's most frequent group label in the data loaded so far (users without one are
        left out): colours plots and labels tables."""
        return {user: counts.most_common(1)[0][0] for user, counts in self._group_counts.items()}

    def _build_registry(self) -> UserRegistry:
        if self.user_registry_path is not None:
            return UserRegistry.load(self.user_registry_path)
        if not self.paths["train"]:
            # Evaluating without training data: the registry comes from the checkpoint.
            return UserRegistry()
        registry = UserRegistry()
        for index in range(len(self.paths["train"])):
            for user, spellings in self._entry("train", index).read_users.items():
                if len(spellings) > 1:
                    self._spellings.setdefault(user, Counter()).update(spellings)
                else:
                    self._spellings.setdefault(user, Counter())["-"] += 1
                registry.add(user)
        self._warn_same_ids("training files")
        return registry

    def _warn_same_ids(self, where: str) -> None:
        """User ids are compared as strings: ``1`` and ``"1"`` are one user. Say so, with counts."""
        merged = {key: c for key, c in self._spellings.items() if len(c) > 1 and "-" not in c}
        for key, counts in list(merged.items())[:10]:
            spelled = " and ".join(f"{spelling} ({n} records)" for spelling, n in counts.most_common())
            rank_zero_warn(f"user ids {spelled} in the {where} are one user {key!r} (ids compare as strings)")
        if len(merged) > 10:
            rank_zero_warn(f"... and {len(merged) - 10} more user ids spelled both as numbers and strings")
        self._spellings.clear()

    def _limit(self, split: Split) -> int | None:
        if isinstance(self.max_records, dict):
            return self.max_records.get(split)
        return self.max_records

    def _settings(self, split: Split) -> tuple[Any, ...]:
        return (self.fields, self.max_length, self.max_prompt_length, self._limit(split))

    def _entry_key(self, split: Split, index: int) -> str:
        source = self.paths[split][index]
        identity = tables.identity(source, _dataset_split(split)) if tables.is_table_source(source) else None
        if identity is None:
            identity = tables.identity(source) if Path(source).is_file() else f"missing:{source}"
        return entry_key(identity, tokenizer_digest(self.tokenizer_path), self._settings(split))

    def fingerprint(self, split: Split) -> str:
        """A hash of everything that decides the token ids of a split: its sources' contents, the
        tokenizer's files, fields and length limits."""
        keys = [self._entry_key(split, i) for i in range(len(self.paths[split]))]
        return hashlib.sha256("".join(keys).encode()).hexdigest()[:16]

    def _entry(self, split: Split, index: int) -> EncodedEntry:
        """Source ``index`` of ``split`` encoded: from the cache, or encoded now and cached."""
        if (split, index) in self._entries:
            return self._entries[(split, index)]
        source = self.paths[split][index]
        if not tables.is_table_source(source) and not Path(source).is_file():
            raise FileNotFoundError(f"data file not found: {source}")
        key = self._entry_key(split, index)
        directory = self._cache_root()
        # Processes that start together (DDP ranks, torchrun, SLURM tasks) take turns: the first
        # encodes, the others then find its entry.
        with entry_lock(directory, key):
            entry = self._load_or_encode(split, source, directory, key)
        if entry.stats.read == 0:
            raise DataError(tables.describe(source), "no records in file")
        self._entries[(split, index)] = entry
        return entry

    def _load_or_encode(self, split: Split, source: Any, directory: Path, key: str) -> EncodedEntry:
        entry, why = load_entry(directory, key)
        if entry is None:
            if why != "not cached":
                rank_zero_warn(f"encoded cache {directory / key} not used: {why}; encoding again")
            tokenizer = self.tokenizer
            chunks = encode_stream(
                read_records(source, _dataset_split(split)),
                tokenizer,
                self.fields,
                self.max_length,
                self.max_prompt_length,
                description=f"tokenizing {split}",
                limit=self._limit(split),
                workers=self.encode_workers,
            )
            write_entry(directory, key, chunks, len(tokenizer), tables.describe(source))
            entry, why = load_entry(directory, key)
            if entry is None:
                raise RuntimeError(f"encoded cache {directory / key} unreadable right after writing: {why}")
            entry.fresh = True
        return entry

    def _cache_root(self) -> Path:
        if self.cache:
            return self.cache_dir if self.cache_dir is not None else default_cache_dir()
        if self._scratch is None:  # encoded for this process only, removed with it
            self._scratch = tempfile.TemporaryDirectory(prefix="plrlhf-encoded-")
        return Path(self._scratch.name)

    # -- Lightning hooks -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        trainer = self.trainer
        for split in _STAGE_SPLITS[stage]:
            if self.paths[split] and split not in self.datasets and not self._evaluates_none(split):
                self.datasets[split] = self._load_split(split)
        # Without a logger there is no run directory; checkpoints still carry the registry.
        log_dir = trainer.log_dir if trainer is not None and trainer.loggers else None
        if stage == "fit" and log_dir is not None and trainer.is_global_zero:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.registry.save(Path(log_dir) / REGISTRY_FILE)
            # What each split kept and dropped, beside the run's config: the printed summary is
            # gone with the terminal, and a report of the run must say what it trained on.
            atomic_write_json(
                Path(log_dir) / DATA_FILE, {split: asdict(stats) for split, stats in self.stats.items()}
            )

    def _evaluates_none(self, split: Split) -> bool:
        """The trainer evaluates no batch of ``split`` (``limit_val_batches: 0``): reading it would
        cost a pass over its file for nothing, and the run's record would count records it never
        used."""
        limit = getattr(self.trainer, _LIMITS[split], None) if split in _LIMITS else None
        return limit is not None and limit == 0

    def _is_prompt_file(self, path: Any) -> bool:
        """Predict files hold triples to score, or prompts (no responses) to generate for."""
        first = next(iter(read_records(path, "test")), None)
        return first is not None and self.fields.chosen not in first.record

    def _load_split(self, split: Split) -> EncodedSplit | list[EncodedPrompt]:
        if split == "predict" and all(self._is_prompt_file(p) for p in self.paths[split]):
            return self._load_prompts(split)
        entries = [self._entry(split, i) for i in range(len(self.paths[split]))]
        stats = SplitStats()
        for entry in entries:
            stats = _merge(stats, entry.stats)
        user_ids, user_keys, group_keys = [], [], []
        unseen: set[str] = set()
        for entry in entries:
            names = entry.user_names
            missing = entry.users < 0
            if missing.any():
                if self.missing_user == "error":
                    where = entry.where(int(np.flatnonzero(missing)[0]))
                    raise DataError(where, f"missing field {self.fields.user!r} (missing_user=error)")
                stats.missing_user += int(missing.sum())
            # Code -1 (no user id) indexes the last slot: the generic user.
            model_index = np.array([self.registry.index(n) for n in names] + [0], dtype=np.int64)
            metric_key = np.array([self.user_keys.key(n) for n in names] + [0], dtype=np.int64)
            group_key = np.array([self._group_keys.key(g) for g in entry.group_names] + [0], dtype=np.int64)
            new = [i for i, n in enumerate(names) if n not in self.registry]
            unseen.update(names[i] for i in new)
            stats.unseen_examples += int(np.isin(entry.users, new).sum()) if new else 0
            user_ids.append(model_index[entry.users])
            user_keys.append(metric_key[entry.users])
            group_keys.append(group_key[entry.groups])
            labelled = (entry.users >= 0) & (entry.groups >= 0)
            pairs, counts = np.unique(
                np.stack([entry.users[labelled], entry.groups[labelled]]), axis=1, return_counts=True
            )
            for (user, group), count in zip(pairs.T, counts):
                self._group_counts.setdefault(names[user], Counter())[entry.group_names[group]] += int(count)
        stats.unseen_users = len(unseen)
        self.stats[split] = stats
        cached = [e for e in entries if not e.fresh]
        note = (
            f" (encoded earlier: {cached[0].directory.parent})"
            if cached and len(cached) == len(entries)
            else ""
        )
        rank_zero_info(stats.summary(split) + note)
        if stats.kept == 0:
            raise DataError(
                ", ".join(map(tables.describe, self.paths[split])), f"no usable examples in the {split} split"
            )
        return EncodedSplit(entries, *(np.concatenate(a) for a in (user_ids, user_keys, group_keys)))

    def _load_prompts(self, split: Split) -> list[EncodedPrompt]:
        prompts: list[EncodedPrompt] = []
        stats = SplitStats()
        unseen: set[str] = set()
        for path in self.paths[split]:
            part, part_stats = encode_prompts(
                read_records(path, "test"), self.tokenizer, self.fields, self.max_prompt_length
            )
            if part_stats.read == 0:
                raise DataError(tables.describe(path), "no records in file")
            stats = _merge(stats, part_stats)
            for example in part:
                if example.user is None:
                    if self.missing_user == "error":
                        raise DataError(
                            example.where, f"missing field {self.fields.user!r} (missing_user=error)"
                        )
                    stats.missing_user += 1
                elif example.user not in self.registry:
                    unseen.add(example.user)
                    stats.unseen_examples += 1
                prompts.append(
                    EncodedPrompt(
                        example.prompt_ids,
                        text=example.prompt_text,
                        user_id=self.registry.index(example.user),
                        user_key=self.user_keys.key(example.user),
                        group_key=self._group_keys.key(example.group),
                        index=len(prompts),
                    )
                )
        stats.unseen_users = len(unseen)
        self.stats[split] = stats
        rank_zero_info(stats.summary(split))
        if not prompts:
            raise DataError(
                ", ".join(map(tables.describe, self.paths[split])), f"no usable examples in the {split} split"
            )
        return prompts

    def _loader(self, split: Split, batch_size: int) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"no {split} data: set data.{split} to a file")
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            sampler=self._evaluation_order(split, batch_size),
            collate_fn=self._collator(split),
            num_workers=self.num_workers,
        )

    def _evaluation_order(self, split: Split, batch_size: int) -> list[int] | None:
        """Indices of ``split`` narrowest rows first, so that each evaluation batch pads to rows of
        about its own width (on the real-model test split, 41% fewer tokens than in file order).
        Metrics do not depend on the order and the prediction writer puts rows back in file
        order. ``None`` (file order) when the trainer evaluates only some batches of the split:
        those must stay the file's first ones, not the shortest."""
        data = self.datasets[split]
        limit = getattr(self.trainer, _LIMITS[split], 1.0) if self.trainer is not None else 1.0
        batches = -(-len(data) // batch_size)
        if not (limit == 1.0 if isinstance(limit, float) else limit >= batches):
            return None
        if isinstance(data, list):  # prompts to generate for
            widths = np.array([len(p.prompt_ids) for p in data])
        else:
            widths = row_widths(_lengths(data), self.length_layout == "shared_prompt")
        return np.argsort(widths, kind="stable").tolist()

    def _collator(self, split: Split) -> PreferenceCollator | PromptCollator:
        data = self.datasets[split]
        if data and isinstance(data[0], EncodedPrompt):
            return PromptCollator(self.pad_token_id)
        return PreferenceCollator(self.pad_token_id)

    def train_dataloader(self) -> ResumableDataLoader:
        if "train" not in self.datasets:
            raise RuntimeError("no train data: set data.train to a file")
        triples = self.datasets["train"]
        shared = self.length_layout == "shared_prompt"
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        strategy = self.trainer.strategy if self.trainer is not None else None
        # The data-parallel ranks (under tensor parallelism fewer than the processes).
        ranks = getattr(strategy, "distributed_sampler_kwargs", None) or {"num_replicas": 1, "rank": 0}
        lengths = _lengths(triples)
        widths = row_widths(lengths, shared).tolist() if self.group_by_length else None
        sampler = TrainingSampler(len(triples), self.batch_size, seed, self.shuffle, widths, **ranks)
        layout = f"{self.length_layout} rows"
        shuffled = padding_share(lengths, global_batches(len(triples), self.batch_size, seed, 0), shared)
        if widths is None:
            rank_zero_info(f"train: padding is about {shuffled:.1%} of {layout} (group_by_length: false)")
        else:
            grouped = padding_share(lengths, sampler.global_batches(), shared)
            rank_zero_info(
                f"train: padding is {grouped:.1%} of {layout} with group_by_length ({shuffled:.1%} without)"
            )
        return ResumableDataLoader(
            triples,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=self._collator("train"),
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if "validation" not in self.datasets:
            # Validation is optional: Lightning skips an empty list, and warns that its length is
            # zero ("Please make sure this was your intention"): it was.
            warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
            return []
        return self._loader("validation", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size)

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"user_registry": self.registry.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = UserRegistry.from_state_dict(state_dict["user_registry"])
        hint = f"pass --data.init_args.user_registry <log dir>/{REGISTRY_FILE} of the run that trained it"
        if saved == self.registry:
            return
        if len(self.registry) == 0 and not self.datasets:
            self._registry = saved
            return
        raise ValueError(
            f"the checkpoint was trained with another user registry ({len(saved)} users) than the one "
            f"this data module has ({len(self.registry)} users, from "
            f"{self.user_registry_path or 'the training files'}); {hint}"
        )


class NameTable:
    """Names to consecutive integer keys, growing as new names appear; ``None`` is key 0, shown
    as ``reserved``. A real name equal to ``reserved`` gets a key of its own and a display name
    that says so, so it never merges with the reserved entry in metrics and tables."""

    def __init__(self, reserved: str, names: list[str] = ()) -> None:
        self.names = [reserved]
        self._keys: dict[str, int] = {}
        for name in names:
            self.key(name)

    def key(self, name: str | None) -> int:
        if name is None:
            return 0
        if name not in self._keys:
            self._keys[name] = len(self.names)
            self.names.append(f"{name} (id)" if name == self.names[0] else name)
        return self._keys[name]


# The trainer's setting that limits how many batches of a split it evaluates.
_LIMITS = {
    "validation": "limit_val_batches",
    "test": "limit_test_batches",
    "predict": "limit_predict_batches",
}


def _dataset_split(split: Split) -> str:
    """The split of a Hugging Face ``DatasetDict`` that a plrlhf split reads by default."""
    return "test" if split == "predict" else split


def _lengths(triples: Any) -> np.ndarray:
    """``(N, 3)`` prompt, chosen and rejected lengths of an :class:`EncodedSplit` or a list of
    triples."""
    if hasattr(triples, "lengths"):
        return triples.lengths()
    return np.array([[len(t.prompt_ids), len(t.chosen_ids), len(t.rejected_ids)] for t in triples]).reshape(
        -1, 3
    )


def padding_share(triples: Any, batches: list[list[int]], shared_prompt: bool = False) -> float:
    """Share of padding among the tokens of right-padded ``batches`` of ``triples`` (an
    :class:`EncodedSplit`, a list of triples or their ``(N, 3)`` lengths): two rows per triple, or
    one in the shared-prompt layout."""
    lengths = triples if isinstance(triples, np.ndarray) else _lengths(triples)
    batches = [b for b in batches if len(b)]
    if not batches:
        return 0.0
    rows = 1 if shared_prompt else 2
    order = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches])
    sizes = np.array([len(b) for b in batches])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    widths = row_widths(lengths, shared_prompt)[order]
    real = int((rows * lengths[order, 0] + lengths[order, 1] + lengths[order, 2]).sum())
    padded = int((rows * sizes * np.maximum.reduceat(widths, starts)).sum())
    return 1 - real / padded if padded else 0.0


def _merge(a: SplitStats, b: SplitStats) -> SplitStats:
    dropped = dict(a.dropped)
    for reason, n in b.dropped.items():
        dropped[reason] = dropped.get(reason, 0) + n
    return SplitStats(a.read + b.read, a.kept + b.kept, a.prompt_truncated + b.prompt_truncated, dropped)
