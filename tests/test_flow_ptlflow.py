"""The ptlflow backend's weights: refused without a checkpoint, loaded from a file or the local cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import flow
from flow.known_motion import moving_sequence
from flow.ptlflow_backend import CheckpointError

CPU = {"device": "cpu", "batch_size": 2}
THINGS_FILE = "dpflow-things-2012b5d6.ckpt"  # the file name in ptlflow's URL for dpflow "things"


@pytest.fixture(autouse=True)
def isolated_cache_and_one_thread(tmp_path, monkeypatch):
    # torch.hub reads TORCH_HOME, so no test ever sees (or needs) the real cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two spinning threads on a shared 2-core machine run 50x slower
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return moving_sequence(3, (64, 64))


def random_backend(seed: int):
    torch.manual_seed(seed)
    return flow.get_backend("ptlflow:dpflow", random_weights=True, **CPU)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_random_weights_give_flow_of_the_right_shape_on_cpu(frames):
    result = flow.estimate_pairs(np.stack([frames[:2], frames[1:]], axis=1), random_backend(0))
    assert result.shape == (2, 64, 64, 2) and result.dtype == np.float32


def test_bf16_runs_under_autocast_and_gives_float32_flow(frames):
    torch.manual_seed(0)
    backend = flow.get_backend("ptlflow:dpflow", random_weights=True, precision="bf16", **CPU)
    result = flow.estimate_pairs(np.stack([frames[:2], frames[1:]], axis=1), backend)
    assert result.shape == (2, 64, 64, 2) and result.dtype == np.float32 and np.isfinite(result).all()
    fp32 = flow.estimate_pairs(np.stack([frames[:2], frames[1:]], axis=1), random_backend(0))
    assert not np.array_equal(result, fp32)  # the model really ran in bf16


def test_a_vae_trained_on_dpflow_flow_rebuilds_its_flow_backend():
    """Labelling makes flow from what the VAE recorded: the spec 'ptlflow:dpflow' and the resolved options, which
    name the model again."""
    from latent_action.pairs import FlowSettings

    options = flow.resolved_options("ptlflow:dpflow", {"random_weights": True, "precision": "bf16"})
    config = {"flow_backend": "ptlflow:dpflow", "flow_options": options}
    backend = FlowSettings.of_vae(config).estimator()
    assert backend.model_name == "dpflow" and backend.precision == "bf16"


def test_precision_is_checked_and_decides_the_flow():
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        flow.get_backend("ptlflow:dpflow", random_weights=True, precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        flow.get_backend("ptlflow:dpflow", random_weights=True, precision="int8", device="cpu")
    assert flow.resolved_options("ptlflow:dpflow", {"precision": "bf16"})["precision"] == "bf16"


def test_without_a_checkpoint_the_error_says_what_to_pass():
    with pytest.raises(CheckpointError) as error:
        flow.get_backend("ptlflow:dpflow")
    message = one_line(error)
    assert message.startswith("ptlflow:dpflow: no checkpoint given")
    assert "checkpoint=" in message and "things" in message and "never downloaded" in message


def test_a_checkpoint_name_missing_from_the_cache_names_the_file_and_its_url(tmp_path):
    with pytest.raises(CheckpointError) as error:
        flow.get_backend("ptlflow:dpflow", checkpoint="things")
    message = one_line(error)
    assert message.startswith(f"{tmp_path / 'torch' / 'hub' / 'checkpoints' / THINGS_FILE}: ")
    assert f"https://github.com/hmorimitsu/ptlflow/releases/download/weights1/{THINGS_FILE}" in message


def test_a_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(CheckpointError) as error:
        flow.get_backend("ptlflow:dpflow", checkpoint=tmp_path / "nowhere.ckpt")
    assert one_line(error).startswith(f"{tmp_path / 'nowhere.ckpt'}: no such checkpoint file")


def test_an_unreadable_checkpoint_is_named(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as error:
        flow.get_backend("ptlflow:dpflow", checkpoint=broken)
    assert one_line(error).startswith(f"{broken}: cannot load weights")


def test_random_weights_and_a_checkpoint_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="either checkpoint or random_weights"):
        flow.get_backend("ptlflow:dpflow", checkpoint=tmp_path / "x.ckpt", random_weights=True)


def save_ptlflow_checkpoint(state_dict: dict, path: Path) -> Path:
    # The layout of ptlflow's released .ckpt files (Lightning): weights plus hyper_parameters.
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "hyper_parameters": {"train_size": [432, 960]}}, path)
    return path


def test_weights_load_from_a_file_a_cache_name_and_safetensors(tmp_path, frames):
    trained = random_backend(1)
    expected = trained.sequence(frames)
    state = {name: tensor.contiguous() for name, tensor in trained.model.state_dict().items()}
    sources = {
        "file": save_ptlflow_checkpoint(state, tmp_path / "mine.ckpt"),
        "things": save_ptlflow_checkpoint(state, tmp_path / "torch" / "hub" / "checkpoints" / THINGS_FILE),
        "safetensors": tmp_path / "mine.safetensors",
    }
    save_file(state, sources["safetensors"])
    assert not np.allclose(random_backend(2).sequence(frames), expected)  # other weights, other flow
    for name, path in sources.items():
        torch.manual_seed(2)
        loaded = flow.get_backend("ptlflow:dpflow", checkpoint="things" if name == "things" else path, **CPU)
        np.testing.assert_allclose(loaded.sequence(frames), expected, atol=1e-5, err_msg=name)
        if name != "safetensors":  # hyper_parameters travel only in .ckpt files
            assert list(loaded.model.train_size) == [432, 960]


@pytest.mark.parametrize("model", ["memfof", "memflow", "videoflow_mof"])
def test_models_whose_flow_is_not_the_pairs_own_are_refused(model):
    with pytest.raises(ValueError, match=f"ptlflow model '{model}' .* flow is made pair by pair: use a two-frame model"):
        flow.get_backend(f"ptlflow:{model}", random_weights=True, **CPU)


def test_running_out_of_memory_is_said_and_leaves_dpflow_as_it_was(frames, monkeypatch):
    """DPFlow answers an out-of-memory error by switching itself for good to a correlation that needs an extension
    ptlflow's wheel lacks. The memory error is simulated where DPFlow builds its correlation volume (no GPU here)."""
    import importlib

    dpflow = importlib.import_module("ptlflow.models.dpflow.dpflow")
    built, calls = dpflow.CorrBlock, []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return built(*args, **kwargs)

    monkeypatch.setattr(dpflow, "CorrBlock", out_of_memory_once)
    backend = random_backend(0)
    pairs = np.stack([frames[:2], frames[1:]], axis=1)
    with pytest.raises(RuntimeError) as caught:
        flow.estimate_pairs(pairs, backend)
    assert one_line(caught) == ("ptlflow:dpflow ran out of CPU memory on 2 pairs of 64x64: lower flow.options.batch_size "
                                "(now 2) or flow.options.scale")
    assert backend.model.corr_mode == "allpairs"
    np.testing.assert_array_equal(flow.estimate_pairs(pairs, backend), flow.estimate_pairs(pairs, random_backend(0)))


def test_a_model_failing_on_a_batch_names_the_model_and_the_batch():
    torch.manual_seed(0)
    backend = flow.get_backend("ptlflow:sea_raft_s", random_weights=True, **CPU)
    tiny = moving_sequence(2, (48, 64))
    with pytest.raises(RuntimeError) as caught:
        flow.estimate_pairs(tiny[None], backend)
    assert one_line(caught).startswith("ptlflow:sea_raft_s failed on 1 pairs of 48x64: ")
