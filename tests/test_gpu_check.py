"""benchmarks/gpu_check.py runs in the suite on the CPU (--dry-run), so the GPU check cannot rot."""

import json
import sys

from tests.conftest import ROOT


def test_gpu_check_dry_run_passes_and_writes_every_check(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    out = tmp_path / "check.json"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and report["dry_run"] and report["device"] == "cpu"
    assert report["logps_bf16"]["max_abs_diff_per_token"] < report["logps_bf16"]["tolerance"]
    for layout in ("shared_prompt", "after_prompt"):
        assert report["layouts"][layout]["max_abs_diff"] < 2e-3
    for name in ("dpo", "individual_pdpo"):
        step = report["steps"][name]
        assert step["finite"] and step["seconds_per_step"] > 0 and step["tokens_per_second"] > 0
    # P-DPO runs both user conditions: twice DPO's policy tokens on the same batch
    assert (
        report["steps"]["individual_pdpo"]["tokens_per_step"] == 2 * report["steps"]["dpo"]["tokens_per_step"]
    )
    for layout in ("shared_prompt", "user_tokens"):  # FlexAttention's block mask vs the dense mask
        assert report["flex_attention"][layout]["max_abs_diff"] < 2e-3
    assert report["fsdp2"] == {"skipped": "no GPU", "ok": True, "seconds": 0.0}
    sys.modules.pop("gpu_check", None)
