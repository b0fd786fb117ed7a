"""Export to ONNX Runtime / OpenVINO: exported chunks equal torch chunks for the same noise (fp32, 1e-4)."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="export needs the 'onnx' extra (pip install 'vlastack[onnx]')")
pytest.importorskip("onnxruntime", reason="the onnx runtime needs the 'onnx' extra")

from vlastack.policies.base import make_policy  # noqa: E402
from vlastack.policies.export import ExportedPolicy, export_policy, read_export  # noqa: E402
from vlastack.rollout.policy_adapters import PolicyAdapterError, load_policy_for  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module", params=["dust", "dita"])
def exported(request, tmp_path_factory, perturbed_policy):
    p = perturbed_policy(request.param)
    out = export_policy(p, tmp_path_factory.mktemp(request.param) / "onnx", format="onnx")
    return p, out


def test_onnxruntime_chunks_equal_torch_chunks(exported, policy_obs):
    p, out = exported
    obs = policy_obs(p, b=2)
    rt = ExportedPolicy.load(out, "onnxruntime")
    for seed in (0, 7):
        ref = p.sample_actions(obs, seed=seed).actions  # (2, H, D_a)
        got = rt.sample_actions(obs, seed=seed).actions
        assert got.shape == ref.shape
        assert float((got - ref).abs().max()) < TOL
    # the noise matters (a graph that ignored it would pass a single-seed check)
    assert float((rt.sample_actions(obs, seed=0).actions - rt.sample_actions(obs, seed=7).actions).abs().max()) > 1e-3
    # so do the images and the instruction
    other = policy_obs(p, b=2, seed=5)
    assert float((rt.sample_actions(other, seed=0).actions - rt.sample_actions(obs, seed=0).actions).abs().max()) > 1e-4
    meta = read_export(out)
    assert meta["policy"] == p.name and meta["inputs"]["noise.action"]["shape"][0] == 1


def test_openvino_chunks_equal_torch_chunks(exported, policy_obs):
    pytest.importorskip("openvino", reason="the openvino runtime needs the 'openvino' extra")
    p, out = exported
    obs = policy_obs(p, b=1)
    rt = ExportedPolicy.load(out, "openvino")  # OpenVINO reads the ONNX graph directly
    ref = p.sample_actions(obs, seed=3).actions
    assert float((rt.sample_actions(obs, seed=3).actions - ref).abs().max()) < TOL


@pytest.mark.slow  # about 18 s on a loaded machine; OpenVINO on the ONNX graph is covered above
def test_openvino_ir_export(tmp_path, perturbed_policy, policy_obs):
    pytest.importorskip("openvino", reason="the openvino runtime needs the 'openvino' extra")
    p = perturbed_policy("dust")
    out = export_policy(p, tmp_path / "ov", format="openvino")
    assert (out / "chunk.xml").is_file() and (out / "chunk.bin").is_file()
    obs = policy_obs(p, b=1)
    ref = p.sample_actions(obs, seed=1).actions
    assert float((ExportedPolicy.load(out, "openvino").sample_actions(obs, seed=1).actions - ref).abs().max()) < TOL


def test_openvino_bf16_inference_is_close(exported, policy_obs):
    pytest.importorskip("openvino", reason="the openvino runtime needs the 'openvino' extra")
    p, out = exported
    obs = policy_obs(p, b=1)
    ref = p.sample_actions(obs, seed=3).actions
    got = ExportedPolicy.load(out, "openvino", precision="bf16").sample_actions(obs, seed=3).actions
    assert float((got - ref).abs().max()) < 0.05 * (1 + float(ref.abs().max()))  # bf16: close, not equal
    with pytest.raises(ValueError, match="only OpenVINO"):
        ExportedPolicy.load(out, "onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="choose one of"):
        ExportedPolicy.load(out, "openvino", precision="fp8")


def test_sampling_options_are_baked_in(tmp_path, perturbed_policy, policy_obs):
    p = perturbed_policy("dust")
    out = export_policy(p, tmp_path / "q4", sampling={"num_action_steps": 1, "num_vision_steps": 4})
    obs = policy_obs(p, b=1)
    ref = p.sample_actions(obs, seed=2, num_action_steps=1, num_vision_steps=4).actions
    got = ExportedPolicy.load(out).sample_actions(obs, seed=2).actions
    assert float((got - ref).abs().max()) < TOL
    assert float((got - p.sample_actions(obs, seed=2).actions).abs().max()) > 1e-4  # a different schedule
    with pytest.raises(PolicyAdapterError, match="fixed at export"):
        load_policy_for(out, "onnx", sampling={"vision_steps": 8})
    assert load_policy_for(out, "onnx", sampling={"vision_steps": 4, "action_steps": 1}).sample_actions(obs) is not None


def test_loaded_runtime_policy_follows_the_episode_seed(exported, policy_obs):
    p, out = exported
    obs = policy_obs(p, b=1)
    torch_lp, onnx_lp = load_policy_for(out, "torch"), load_policy_for(out, "onnx")
    for lp in (torch_lp, onnx_lp):
        lp.reset(11)
    a, b = torch_lp.sample_actions(obs).actions, onnx_lp.sample_actions(obs).actions
    assert float((a - b).abs().max()) < TOL
    assert onnx_lp.inputs() == torch_lp.inputs()


def test_int8_quantized_export_runs_and_stays_close(tmp_path, perturbed_policy, policy_obs):
    p = perturbed_policy("dust")
    fp32 = export_policy(p, tmp_path / "fp32")
    q = export_policy(p, tmp_path / "int8", quantize=True)
    assert read_export(q)["quantized"] is True
    obs = policy_obs(p, b=1)
    ref = p.sample_actions(obs, seed=0).actions
    got = ExportedPolicy.load(q).sample_actions(obs, seed=0).actions
    assert torch.isfinite(got).all()
    err = float((got - ref).abs().max())
    assert 0 < err < 0.5 * float(ref.abs().max())  # int8 changes the numbers, not the chunk
    import onnx

    ops = {n.op_type for n in onnx.load(str(q / "chunk.onnx")).graph.node}
    assert "MatMulInteger" in ops and "MatMulInteger" not in {n.op_type for n in onnx.load(str(fp32 / "chunk.onnx")).graph.node}


def test_bad_inputs_are_named(tmp_path, exported, policy_obs):
    p, out = exported
    with pytest.raises(ValueError, match="choose one of"):
        load_policy_for(out, "tensorrt")
    ck = p.save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="vlastack export"):
        load_policy_for(ck, "onnx")
    with pytest.raises(ValueError, match="format"):
        export_policy(p, tmp_path / "x", format="tflite")
    rt = ExportedPolicy.load(out)
    obs = dict(policy_obs(p, b=1).to_flat())
    obs.pop(next(k for k in obs if k.startswith("observation.images.")))
    with pytest.raises(Exception, match="missing camera"):
        rt.sample_actions(obs)


def test_export_command(tmp_path, capsys, perturbed_policy):
    from vlastack.cli import main

    p = perturbed_policy("dita")
    ck = p.save_pretrained(tmp_path / "ck")
    assert main(["export", f"checkpoint={ck}", "format=onnx", f"out={tmp_path / 'exp'}", "sampling.steps=3"]) == 0
    text = capsys.readouterr().out
    diff = float(text.split("max |diff| = ")[1].split()[0])
    assert diff < TOL
    assert json.loads((tmp_path / "exp" / "export.json").read_text())["sampling"] == {"num_inference_steps": 3}
    assert main(["export", f"checkpoint={ck}", "format=trt", f"out={tmp_path / 'bad'}"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert np.isfinite(diff)


def test_serve_with_an_exported_runtime(exported, policy_obs):
    from vlastack.rollout.server import ServeConfig, build_server

    p, out = exported
    flat = {k: (v[0] if k != "task" else v[0]) for k, v in policy_obs(p, b=1).to_flat().items()}  # one sample
    got = {}
    for runtime in ("torch", "onnx"):
        srv = build_server(ServeConfig(checkpoint=str(out), runtime=runtime, port=0, seed=5, warmup=False))
        got[runtime] = srv.runner.infer(dict(flat))["actions"]  # (H, D_a)
    assert got["onnx"].shape == got["torch"].shape
    assert float(np.abs(got["onnx"] - got["torch"]).max()) < TOL


def test_eval_with_an_exported_runtime(tmp_path):
    """runtime=onnx through the evaluation harness gives the torch runtime's episodes (same seeds)."""
    from vlastack.datasets.stats import array_stats
    from vlastack.rollout import evaluate as E
    from vlastack.types import ACTION, STATE

    rng = np.random.default_rng(0)
    stats = {STATE: array_stats(rng.normal(size=(64, 4))), ACTION: array_stats(rng.uniform(-1, 1, size=(64, 4)))}
    p = make_policy("dust", "tiny", stats=stats, cameras=["corner"], state_dim=4, action_dim=4)
    out = export_policy(p, tmp_path / "exp")
    docs = {rt: E.evaluate(E.EvalConfig(suite="metaworld", checkpoint=str(out), tasks="reach-v3", episodes=2,
                                        seeds=[100], max_steps=8, workers=0, videos=0, progress=False,
                                        runtime=rt, out=str(tmp_path / rt)))
            for rt in ("torch", "onnx")}
    assert docs["onnx"]["settings"]["runtime"] == "onnxruntime" and "runtime" not in docs["torch"]["settings"]
    for a, b in zip(docs["torch"]["episodes"], docs["onnx"]["episodes"]):
        assert a["seed"] == b["seed"] and a["steps"] == b["steps"]
        assert b["return"] == pytest.approx(a["return"], rel=1e-3, abs=1e-4)
