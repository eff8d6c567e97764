"""Files from strangers never run code: checkpoints load as plain data, exports build only user
models, and class paths in files import nothing new."""

import functools
import json
import pickle
from functools import partial

import pytest
import torch
from peft import LoraConfig

from plrlhf import IndividualPDPO, PreferenceDataModule
from plrlhf.adapt import adapt
from plrlhf.export import export, load
from plrlhf.losses import Robust
from plrlhf.user_models import IndividualUserModel
from tests.conftest import TINY_MODELS, TOKENIZER, quiet_trainer, synthetic_rows, write_jsonl


class Payload:
    """Unpickling this runs ``open(path, "w")``: the marker file shows whether code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a method built in Python with live objects as arguments."""
    tmp = tmp_path_factory.mktemp("trained")
    path = str(write_jsonl(tmp / "t.jsonl", synthetic_rows("train", 32)))
    dm = PreferenceDataModule(TOKENIZER, train=path, batch_size=8)
    method = IndividualPDPO(
        model=TINY_MODELS["llama"],
        tokenizer=TOKENIZER,
        num_users=dm.num_users,
        user_model=partial(IndividualUserModel, n_tokens=2),
        lora=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        loss=Robust(0.2),
        optimizer=functools.partial(torch.optim.AdamW, lr=0.01),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
    )
    trainer = quiet_trainer(tmp, max_steps=2)
    trainer.fit(method, datamodule=dm)
    trainer.save_checkpoint(tmp / "run.ckpt")
    return method, dm, tmp / "run.ckpt"


def test_a_method_built_in_python_loads_as_plain_data(trained):
    method, _, checkpoint = trained
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)  # no Python objects inside
    assert raw["hyper_parameters"]["lora"]["init_args"]["r"] == 4
    loaded = IndividualPDPO.load_from_checkpoint(checkpoint, map_location="cpu")  # weights_only by default
    assert loaded.policy.uses_lora and loaded.loss_fn.label_smoothing == 0.2
    for name, value in method.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value.cpu(), msg=name)


def test_adapt_refuses_a_checkpoint_that_would_run_code(trained, tmp_path):
    _, _, checkpoint = trained
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    marker = tmp_path / "code-ran"
    state["hyper_parameters"]["extra"] = Payload(marker)
    hostile = tmp_path / "hostile.ckpt"
    torch.save(state, hostile)
    new = write_jsonl(
        tmp_path / "new.jsonl", [r for r in synthetic_rows("test") if r["user_id"] == "new_2"][:4]
    )
    with pytest.raises(ValueError, match="refused: it holds Python objects"):
        adapt(str(hostile), str(new), output=str(tmp_path / "out"), steps=1, accelerator="cpu")
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(marker)))  # the payload does work when unpickled
    assert marker.exists()


def test_adapt_refuses_a_checkpoint_naming_a_class_that_is_not_a_method(trained, tmp_path):
    _, _, checkpoint = trained
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    new = write_jsonl(
        tmp_path / "new.jsonl", [r for r in synthetic_rows("test") if r["user_id"] == "new_2"][:4]
    )
    for class_path, error in (
        ("subprocess.Popen", "not a .*PreferenceModule subclass"),
        ("antigravity.X", "not in a module imported"),
    ):
        state["hyper_parameters"]["_class_path"] = class_path
        torch.save(state, tmp_path / "other.ckpt")
        with pytest.raises((TypeError, ValueError), match=error):
            adapt(
                str(tmp_path / "other.ckpt"),
                str(new),
                output=str(tmp_path / "out"),
                steps=1,
                accelerator="cpu",
            )
    assert "antigravity" not in __import__("sys").modules


@pytest.mark.parametrize(
    "spec, error",
    [
        (
            {"class_path": "subprocess.run", "init_args": {"args": ["touch", "MARKER"]}},
            "not a .*UserModel subclass",
        ),
        ({"class_path": "os.system", "init_args": {"command": "touch MARKER"}}, "not a .*UserModel subclass"),
        ({"class_path": "this_is_not_imported.Model", "init_args": {}}, "not in a module imported"),
        ({"class_path": "plrlhf.user_models.IndividualUserModel", "init_args": {}, "x": 1}, "expected"),
    ],
)
def test_export_load_builds_only_user_models(trained, tmp_path, spec, error):
    method, dm, _ = trained
    directory = export(method, tmp_path / "export", dm.registry)
    marker = tmp_path / "MARKER"
    spec = json.loads(json.dumps(spec).replace("MARKER", str(marker)))
    (directory / "user_model.json").write_text(json.dumps(spec))
    with pytest.raises((TypeError, ValueError), match=error):
        load(directory)
    assert not marker.exists()


def test_cli_evaluation_of_a_checkpoint_naming_unimported_classes_is_refused(trained, tmp_path, monkeypatch):
    """Lightning reads a checkpoint's hyperparameters into the CLI config, which would import and
    build the classes they name: only plrlhf methods and already imported modules are allowed."""
    import sys

    from plrlhf.cli import main
    from tests.conftest import ROOT

    monkeypatch.chdir(ROOT)
    _, _, checkpoint = trained
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cases = {
        "method": ("_class_path", "this_module_is_not_imported.Method"),
        "nested": ("loss", {"class_path": "another_unimported_module.Loss", "init_args": {}}),
    }
    for name, (key, value) in cases.items():
        hostile = dict(state, hyper_parameters={**state["hyper_parameters"], key: value})
        torch.save(hostile, tmp_path / f"{name}.ckpt")
        args = ["test", "--config", "configs/quickstart.yaml", "--trainer.logger", "false"]
        with pytest.raises(ValueError, match="not in a module imported so far"):
            main([*args, "--ckpt_path", str(tmp_path / f"{name}.ckpt")])
    assert "this_module_is_not_imported" not in sys.modules and "another_unimported_module" not in sys.modules
