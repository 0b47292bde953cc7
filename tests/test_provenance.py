import subprocess
from collections import OrderedDict

import torch

from tl.core.provenance import CPU_FEATURES, code_state, environment, state_dict_sha256


def test_state_dict_digest_ignores_key_order_but_not_values():
    state = OrderedDict(a=torch.arange(4.0), b=torch.tensor(3, dtype=torch.int64))
    reordered = OrderedDict(b=state["b"].clone(), a=state["a"].clone())
    assert state_dict_sha256(state) == state_dict_sha256(reordered)
    changed = OrderedDict(a=torch.tensor([0.0, 1.0, 2.0, 3.5]), b=state["b"])
    assert state_dict_sha256(state) != state_dict_sha256(changed)


def test_code_state_reports_commit_dirty_flag_and_patch(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = code_state(tmp_path)
    assert len(clean.commit) == 40 and not clean.dirty and clean.diff == "" and clean.diff_sha256 == ""
    (tmp_path / "train.py").write_text("lr = 0.2\n")
    dirty = code_state(tmp_path)
    assert dirty.commit == clean.commit and dirty.dirty and "+lr = 0.2" in dirty.diff and dirty.diff_sha256


def test_code_state_outside_git_has_no_commit(tmp_path):
    assert code_state(tmp_path).commit is None


def test_environment_names_versions_and_device():
    env = environment(torch.device("cpu"))
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert {"python", "torchvision", "timm", "hydra-core", "mlflow", "cpu", "cpu_features"} <= env.keys()
    assert set(env["cpu_features"].split()) <= set(CPU_FEATURES)
