"""launcher=ray: collection and evaluation on a local Ray instance with 2 workers give what the process
pool gives for the same seeds, and resume the same way."""
import numpy as np
import pytest

from vlastack.datasets.store import TrajectoryStore
from vlastack.rollout import collect as C
from vlastack.rollout import evaluate as E
from vlastack.types import ACTION

from test_evaluate import _tiny_checkpoint  # pytest puts this folder on sys.path

MW = dict(suite="metaworld", cameras=["corner"], image_size=[24, 24], progress=False)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="launcher=ray needs the 'ray' extra (pip install 'vlastack[ray]')")
    from vlastack.rollout.common import ray_init

    ray_init(2)
    yield
    ray.shutdown()


def _episodes(doc):
    return [(e["task"], e["seed"], e["success"], e["steps"], round(e["return"], 6)) for e in doc["episodes"]]


@pytest.mark.slow  # about 4 minutes on a loaded 2-core machine (three evaluations, Ray start-up)
def test_ray_evaluation_equals_the_process_pool_and_resumes(tmp_path, local_ray):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    base = dict(checkpoint=ckpt, tasks="reach-v3", seeds=[100], max_steps=10, workers=2, videos=0,
                suite="metaworld", progress=False)
    pool = E.evaluate(E.EvalConfig(episodes=3, out=str(tmp_path / "pool"), **base))
    first = E.evaluate(E.EvalConfig(episodes=2, out=str(tmp_path / "ray"), launcher="ray", **base))
    resumed = E.evaluate(E.EvalConfig(episodes=3, out=str(tmp_path / "ray"), launcher="ray", **base))
    assert first["runs"][-1]["episodes_run"] == 2 and resumed["runs"][-1]["episodes_run"] == 1
    assert _episodes(resumed) == _episodes(pool) and len(_episodes(pool)) == 3


@pytest.mark.slow  # about 70 s on a loaded 2-core machine
def test_ray_collection_equals_the_process_pool(tmp_path, local_ray):
    kw = dict(suite="metaworld", tasks="reach-v3", episodes=2, workers=2, max_steps=60, progress=False,
              cameras=["corner"], image_size=(24, 24))
    C.collect(C.CollectConfig(out=str(tmp_path / "pool.zarr"), **kw))
    doc = C.collect(C.CollectConfig(out=str(tmp_path / "ray.zarr"), launcher="ray", **kw))
    assert doc["complete"]
    with TrajectoryStore.open(tmp_path / "pool.zarr") as a, TrajectoryStore.open(tmp_path / "ray.zarr") as b:
        assert sorted(e["meta"]["seed"] for e in a.episodes) == sorted(e["meta"]["seed"] for e in b.episodes)
        for i in range(len(a.episodes)):
            j = [e["meta"]["seed"] for e in b.episodes].index(a.episodes[i]["meta"]["seed"])
            np.testing.assert_array_equal(a.episode(i)[ACTION], b.episode(j)[ACTION])


def test_unknown_launcher_is_named(tmp_path):
    with pytest.raises(E.EvalError, match="valid choices"):
        E.EvalConfig(policy="expert", tasks="reach-v3", out=str(tmp_path), launcher="slurm", **MW)
    with pytest.raises(C.CollectError, match="valid choices"):
        C.CollectConfig(suite="metaworld", tasks="reach-v3", episodes=1, out=str(tmp_path / "x"), launcher="k8s")
