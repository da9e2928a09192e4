import pytest

from playbook.config import PROFILES, Profile, get_profile


def test_env_var_selects_profile(monkeypatch):
    monkeypatch.setenv("PLAYBOOK_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    assert get_profile("gpu").name == "gpu"  # an explicit name wins over the variable


def test_default_is_cpu_without_cuda(monkeypatch):
    monkeypatch.delenv("PLAYBOOK_PROFILE", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert get_profile().name == "cpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert get_profile().name == "gpu"


def test_unknown_profile_names_the_variable(monkeypatch):
    monkeypatch.setenv("PLAYBOOK_PROFILE", "laptop")
    with pytest.raises(ValueError, match=r"PLAYBOOK_PROFILE='laptop'.*smoke, cpu, gpu"):
        get_profile()


def test_overrides_replace_one_knob_and_reject_unknown_ones():
    assert get_profile("cpu", rm_steps=3).rm_steps == 3
    assert get_profile("cpu", rm_steps=3).hh_train_pairs == PROFILES["cpu"].hh_train_pairs
    with pytest.raises(TypeError, match="rm_stepz"):
        get_profile("cpu", rm_stepz=3)


def test_smoke_runs_the_same_reward_method_as_cpu():
    assert PROFILES["smoke"].rm_method == PROFILES["cpu"].rm_method


def test_profiles_are_frozen_and_grow_from_smoke_to_gpu():
    with pytest.raises(AttributeError):
        PROFILES["cpu"].rm_steps = 1
    hardware_knobs = {"policy_trainable_layers", "value_trainable_layers"}  # None on a GPU: every layer trains
    # the gpu profile's PPO takes fewer steps of eight times the replies (its KL runs away beyond them)
    fewer_larger_steps = {"ppo_steps"}
    for field in set(Profile.__dataclass_fields__) - hardware_knobs - fewer_larger_steps:
        if isinstance(getattr(PROFILES["cpu"], field), int):
            smoke, cpu, gpu = (getattr(PROFILES[n], field) for n in ("smoke", "cpu", "gpu"))
            assert 0 < smoke <= cpu <= gpu, field
    smoke, cpu, gpu = (PROFILES[n].ppo_steps * PROFILES[n].ppo_batch_size for n in ("smoke", "cpu", "gpu"))
    assert 0 < smoke <= cpu <= gpu  # replies per PPO run: 4, 240, 1,280
    assert PROFILES["gpu"].policy_trainable_layers is None and PROFILES["cpu"].policy_trainable_layers == 6


def test_runs_folder_is_per_profile(monkeypatch, tmp_path):
    from playbook.config import runs_dir

    monkeypatch.setenv("PLAYBOOK_RUNS", str(tmp_path))
    assert runs_dir("cpu") == tmp_path / "cpu" and runs_dir(PROFILES["gpu"]) == tmp_path / "gpu"
    monkeypatch.setenv("PLAYBOOK_PROFILE", "smoke")
    assert runs_dir() == tmp_path / "smoke"
    monkeypatch.setenv("PLAYBOOK_RUNS", str(tmp_path / "not yet" / "made"))  # created when a model is saved
    assert runs_dir("cpu") == tmp_path / "not yet" / "made" / "cpu"


def test_a_runs_or_cache_folder_that_is_a_file_is_refused_by_name(monkeypatch, tmp_path):
    from playbook.config import runs_dir

    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("PLAYBOOK_RUNS", str(tmp_path / "a file"))
    with pytest.raises(ValueError, match="PLAYBOOK_RUNS=.*a file: this is a file, not a folder"):
        runs_dir("cpu")
    monkeypatch.setenv("PLAYBOOK_RUNS", str(tmp_path / "a file" / "below"))
    with pytest.raises(ValueError, match="PLAYBOOK_RUNS=.*below: .*a file is a file, not a folder"):
        runs_dir("cpu")
    from playbook.models import cache_root

    monkeypatch.setenv("PLAYBOOK_CACHE", str(tmp_path / "a file"))
    with pytest.raises(ValueError, match="PLAYBOOK_CACHE=.*a file: this is a file, not a folder"):
        cache_root()
    from playbook.environment import environment_report

    report = environment_report().set_index("item")["value"]
    assert report["model cache (PLAYBOOK_CACHE)"].startswith("unusable: PLAYBOOK_CACHE=")


def test_micro_batches_divide_the_step_batch_and_only_the_gpu_profile_accumulates():
    from playbook.beyond_ppo import DPOConfig
    from playbook.reward import RewardConfig
    from playbook.sft import SFTConfig
    from playbook.training import batch_arguments

    assert batch_arguments(64, 8) == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 8}
    assert batch_arguments(64, None) == {"per_device_train_batch_size": 64, "gradient_accumulation_steps": 1}
    with pytest.raises(ValueError, match="micro_batch_size=5 must be positive and divide batch_size=64"):
        batch_arguments(64, 5)
    for config in (DPOConfig, SFTConfig, RewardConfig):
        assert config.from_profile("gpu").micro_batch_size == 8
        assert config.from_profile("cpu").micro_batch_size is None
        with pytest.raises(ValueError, match=rf"{config.__name__}\.micro_batch_size=3: .*batch_size=8"):
            config(batch_size=8, micro_batch_size=3)
        with pytest.raises(ValueError, match=rf"{config.__name__}\.micro_batch_size=0"):
            config(batch_size=8, micro_batch_size=0)
