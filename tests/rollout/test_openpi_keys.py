"""openpi-style clients: the published openpi-client sends openpi's example keys (``prompt``,
``observation/image``, nested ALOHA-style dicts, DROID's split state) and gets the same actions as
with our own keys; the key map's bad settings and bad requests get clear errors."""
import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from vlastack.policies.base import load_policy, make_policy
from vlastack.policies.dust import DUSTConfig
from vlastack.rollout.openpi_keys import KeyMap, KeyMapError, KeyMapRequestError
from vlastack.rollout.policy_adapters import LoadedPolicy
from vlastack.rollout.server import ServeConfig, ServeError, build_server, config_from_hydra
from vlastack.types import STATE, TASK, image_key

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

LIBERO = {"observation/image": image_key("left"), "observation/wrist_image": image_key("wrist"),
          "observation/state": STATE}
DROID = {"observation/exterior_image_1_left": image_key("left"), "observation/wrist_image_left": image_key("wrist"),
         "observation/joint_position": STATE, "observation/gripper_position": STATE}
ALOHA = {"images/cam_high": image_key("left"), "images/cam_left_wrist": image_key("wrist"), "state": STATE}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random DUST checkpoint: cameras left + wrist 32x32, state 4, actions 3, H = 4."""
    torch.manual_seed(0)
    cfg = DUSTConfig.preset("tiny")
    stats = {STATE: {"mean": [0.5] * cfg.state_dim, "std": [2.0] * cfg.state_dim},
             "action": {"min": [-3.0, 0.0, 10.0], "max": [3.0, 1.0, 20.0]}}
    path = tmp_path_factory.mktemp("ckpt") / "dust_tiny"
    make_policy("dust", cfg, stats=stats).save_pretrained(path)
    return str(path)


def _ours(seed=0):
    rng = np.random.default_rng(seed)
    return {image_key("left"): rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            image_key("wrist"): rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
            STATE: rng.standard_normal(4).astype(np.float32), TASK: "open the drawer"}


def _local_actions(checkpoint, obs, seed):
    local = LoadedPolicy(load_policy(checkpoint))
    local.reset(seed)
    return local.sample_actions({k: (v if k == TASK else v[None]) for k, v in obs.items()}).actions[0].numpy()


@pytest.mark.parametrize("style", ["libero", "droid", "aloha"])
def test_openpi_client_with_openpi_keys(checkpoint, style):
    o = _ours(1)
    left, wrist, state = o[image_key("left")], o[image_key("wrist")], o[STATE]
    key_map, sent = {
        "libero": (LIBERO, {"observation/image": left, "observation/wrist_image": wrist,
                            "observation/state": state.astype(np.float64), "prompt": "open the drawer"}),
        "droid": (DROID, {"observation/exterior_image_1_left": left, "observation/wrist_image_left": wrist,
                          "observation/joint_position": state[:3], "observation/gripper_position": state[3:],
                          "prompt": "open the drawer"}),
        "aloha": (ALOHA, {"images": {"cam_high": left, "cam_left_wrist": wrist}, "state": state,
                          "prompt": "open the drawer"}),
    }[style]
    srv = build_server(ServeConfig(checkpoint=checkpoint, port=0, api_key_env=None, seed=7, key_map=key_map)).start()
    try:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        meta = client.get_server_metadata()
        assert meta["key_map"] == {**key_map, "prompt": TASK}
        out = client.infer(sent)
        np.testing.assert_allclose(out["actions"], _local_actions(checkpoint, o, 7), rtol=1e-5, atol=1e-5)
        with pytest.raises(RuntimeError, match="'task' given twice: directly and as 'prompt'"):
            client.infer({**sent, TASK: "close the door"})
        assert client.infer(sent)["actions"].shape == (4, 3)  # the connection carries on
    finally:
        srv.stop()


def test_our_keys_still_work_and_prompt_needs_no_map(checkpoint):
    srv = build_server(ServeConfig(checkpoint=checkpoint, port=0, api_key_env=None, seed=7)).start()
    try:
        client = WebsocketClientPolicy("127.0.0.1", srv.port)
        assert client.get_server_metadata()["key_map"] == {"prompt": TASK}
        o = _ours(2)
        sent = {**{k: v for k, v in o.items() if k != TASK}, "prompt": o[TASK]}
        np.testing.assert_allclose(client.infer(sent)["actions"], _local_actions(checkpoint, o, 7), rtol=1e-5, atol=1e-5)
        assert client.infer(o)["actions"].shape == (4, 3)
        with pytest.raises(RuntimeError, match="missing key 'observation.images.left'"):
            client.infer({"observation/image": o[image_key("left")], "prompt": "open"})  # not mapped here
    finally:
        srv.stop()


def test_key_map_rules():
    km = KeyMap(DROID)
    out = km({"observation/joint_position": np.arange(3.0), "observation/gripper_position": np.array([9.0]),
              "prompt": "go", "extra": 1})
    assert out[STATE].tolist() == [0.0, 1.0, 2.0, 9.0] and out[TASK] == "go" and out["extra"] == 1
    assert "prompt" not in out and "observation/joint_position" not in out
    # batches: the state parts concatenate along the last axis
    b = km({"observation/joint_position": np.zeros((2, 3)), "observation/gripper_position": np.ones((2, 1))})
    assert b[STATE].shape == (2, 4)
    with pytest.raises(KeyMapRequestError, match="cannot concatenate"):
        km({"observation/joint_position": np.zeros((2, 3)), "observation/gripper_position": np.ones((3, 1))})
    with pytest.raises(KeyMapRequestError, match="given twice"):
        KeyMap(LIBERO)({"observation/state": np.zeros(4), STATE: np.zeros(4)})
    assert KeyMap({"instruction": TASK}).map == {"instruction": TASK}  # prompt is not added over an explicit one
    assert KeyMap()({"prompt": "x"}) == {TASK: "x"}
    assert KeyMap()("not a dict") == "not a dict"
    with pytest.raises(KeyMapError, match="the target must be one of 'task', 'observation.state'"):
        KeyMap({"observation/image": "observation/image_left"})
    with pytest.raises(KeyMapError, match="same camera"):
        KeyMap({"a": image_key("left"), "b": image_key("left")})


def test_key_map_settings_are_checked(checkpoint):
    with pytest.raises(ServeError, match=r"targets \['observation.images.top'\] are not read by this policy"):
        build_server(ServeConfig(checkpoint=checkpoint, port=0, api_key_env=None, warmup=False,
                                 key_map={"observation/image": image_key("top")}))
    from omegaconf import OmegaConf

    with pytest.raises(ServeError, match="key_map: expected a mapping"):
        config_from_hydra(OmegaConf.create({"checkpoint": checkpoint, "key_map": "libero"}))
    from vlastack.rollout.common import compose

    cfg = config_from_hydra(compose("serve", [f"checkpoint={checkpoint}", "key_map={observation/image:"
                                              "observation.images.left,observation/state:observation.state}"]))
    assert cfg.key_map == {"observation/image": image_key("left"), "observation/state": STATE}  # as docs/serving.md
