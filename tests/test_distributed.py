"""Scale-out: the Dask executor on a real local cluster (two worker processes, loopback only).

The job runs as the app runs it: ``python -m engine worker --once`` with ``CXR_EXECUTOR=dask`` in
its environment, watched only through the job store. Tiny synthetic images at 32 px keep a task to
seconds. The backbones use the ImageNet weight files when they are found locally (the shared
folder): random weights at 32 px give features near zero, the same for every image.

The cluster run is compared with the local worker's on what the executor decides: the folds,
files, labels, cached features and the held-out probabilities (the head's initializer is seeded
from the fold seed explicitly, not from Python's global ``random`` that a Dask worker's threads
also draw from). The cluster tests skip when ``distributed`` is not installed.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.jobs import executors
from engine.jobs.executors import TOPIC, ExecutorSettings, executor_settings, open_executor
from engine.jobs.store import JobRequest, JobStore
from engine.models.backbones import get_backbone, resolve_weights
from engine.results import artifacts
from tests.synthetic import make_dataset
from tests.test_jobs import start_worker, watch

BACKBONES = ("MobileNet-0.25", "MobileNetV2-0.35")
TIMEOUT_S = 300
LOCAL_IMAGENET = all(resolve_weights(get_backbone(b), input_size=32) != "imagenet" for b in BACKBONES)
WEIGHTS = "imagenet" if LOCAL_IMAGENET else "none"
RUNNING_ON = re.compile(
    r"^(?P<label>.+ fold \d+): running on (?P<host>[^:]+):(?P<pid>\d+) \(dask worker (?P<addr>\S+)\)$"
)


def request(folder: Path, **changes) -> JobRequest:
    options = dict(
        data=str(folder), backbones=BACKBONES, protocol="frozen", folds=2, epochs=1, input_size=32, weights=WEIGHTS
    )
    return JobRequest(**{**options, **changes})


def finished(seen) -> bool:
    return seen.state not in ("queued", "running")


def placements(store: JobStore, job_id: str) -> list[tuple[str, int, str]]:
    """(task label, pid, Dask worker address) of every start of a task on the cluster, in order."""
    lines = [line for _, line in store.log_entries(job_id)]
    return [(m["label"], int(m["pid"]), m["addr"]) for line in lines if (m := RUNNING_ON.match(line))]


def predictions(root: Path, study_id: str) -> dict[tuple[str, int], pd.DataFrame]:
    runs = artifacts.study_runs(study_id, root)
    return {
        (run.backbone, run.fold): pd.read_csv(
            artifacts.run_dir(study_id, run.backbone, run.fold, root) / "predictions.csv"
        )
        for run in runs
    }


# --- configuration, no cluster ---


def test_the_executor_is_chosen_by_environment_variables() -> None:
    assert executor_settings({}) == ExecutorSettings(kind="local") and executor_settings({}).name == "local"
    local = executor_settings({"CXR_EXECUTOR": " local ", "CXR_DASK_SCHEDULER": "tcp://10.0.0.5:8786"})
    assert local == ExecutorSettings(kind="local", scheduler=None)
    dask = executor_settings({"CXR_EXECUTOR": "Dask", "CXR_DASK_SCHEDULER": "tcp://10.0.0.5:8786"})
    assert (dask.kind, dask.scheduler, dask.name) == ("dask", "tcp://10.0.0.5:8786", "dask tcp://10.0.0.5:8786")
    with pytest.raises(ValueError, match=r"CXR_EXECUTOR.*got 'ray'"):
        executor_settings({"CXR_EXECUTOR": "ray"})
    with pytest.raises(ValueError, match=r"CXR_DASK_SCHEDULER.*got scheduler=None"):
        executor_settings({"CXR_EXECUTOR": "dask", "CXR_DASK_SCHEDULER": "  "})
    with pytest.raises(ValueError, match="retries=-1"):
        ExecutorSettings(kind="dask", scheduler="tcp://10.0.0.5:8786", retries=-1)


def test_an_unreachable_scheduler_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed", reason="distributed is not installed (pip install -r requirements-cluster.txt)")
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT_S", 1.0)
    with (
        pytest.raises(ConnectionError, match=re.escape("CXR_DASK_SCHEDULER='tcp://127.0.0.1:9'")),
        open_executor(ExecutorSettings(kind="dask", scheduler="tcp://127.0.0.1:9")),
    ):
        pass


def test_claim_holds_back_a_backbone_until_its_first_fold_cached_the_features(
    artifacts_root: Path, tiny_data: Path
) -> None:
    store = JobStore(artifacts_root)
    job = store.submit(request(tiny_data))
    first = store.claim_next(executor="dask test")
    assert (first.backbone, first.fold) == (BACKBONES[0], 0)
    held = {(job.id, BACKBONES[0])}
    second = store.claim_next(executor="dask test", hold=held)
    assert (second.backbone, second.fold) == (BACKBONES[1], 0)
    assert store.claim_next(executor="dask test", hold={*held, (job.id, BACKBONES[1])}) is None
    assert store.get(job.id).state == "running"
    assert [t.state for t in store.tasks(job.id)] == ["running", "queued", "running", "queued"]
    store.finish_task(first, state="done")
    third = store.claim_next(executor="dask test", hold={(job.id, BACKBONES[1])})
    assert (third.backbone, third.fold) == (BACKBONES[0], 1)


# --- a real local cluster ---


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip(
        "distributed", reason="distributed is not installed (pip install -r requirements-cluster.txt)"
    )
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        resources={"GPU": 1},
        dashboard_address=None,
    ) as local_cluster:
        yield local_cluster


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One dataset and one shared artifacts folder for the cluster tests, so later jobs reuse the cached
    import and features, as later jobs of a real study do."""
    folder = tmp_path_factory.mktemp("cluster")
    return {"data": make_dataset(folder / "data", n_per_class=20), "artifacts": folder / "artifacts"}


def dask_env(cluster) -> dict[str, str]:
    return {"CXR_EXECUTOR": "dask", "CXR_DASK_SCHEDULER": cluster.scheduler_address}


@pytest.mark.slow
def test_tasks_spread_over_the_workers_survive_a_killed_worker_and_match_the_local_worker(
    cluster, workspace: dict[str, Path], tmp_path: Path
) -> None:
    roots = {"dask": workspace["artifacts"], "local": tmp_path / "local"}
    stores = {name: JobStore(root) for name, root in roots.items()}
    epochs = 2
    jobs = {name: store.submit(request(workspace["data"], epochs=epochs)) for name, store in stores.items()}
    logs = {name: tmp_path / f"{name}.log" for name in roots}
    envs = {"dask": dask_env(cluster), "local": {"CXR_EXECUTOR": "local"}}
    workers = {
        name: start_worker(roots[name], logs[name], env={**envs[name], "CXR_ARTIFACTS": str(roots[name])})
        for name in roots
    }
    client = cluster.get_client()
    pids_before = client.run(os.getpid)
    store, job_id = stores["dask"], jobs["dask"].id
    victim = f"{BACKBONES[0]} fold 0"

    def victim_started(_seen) -> bool:
        return any(p[0] == victim for p in placements(store, job_id))

    watch(store, job_id, victim_started, timeout=TIMEOUT_S, worker=workers["dask"], log=logs["dask"])
    (_, killed_pid, killed_addr), *_ = [p for p in placements(store, job_id) if p[0] == victim]
    os.kill(killed_pid, signal.SIGKILL)
    killed_at = time.time()
    for name in roots:
        watch(stores[name], jobs[name].id, finished, timeout=TIMEOUT_S, worker=workers[name], log=logs[name])
        assert workers[name].wait(timeout=60) == 0

    done = {name: stores[name].get(jobs[name].id) for name in roots}
    assert done["dask"].executor == f"dask {cluster.scheduler_address}" and done["local"].executor == "local"
    for name, job in done.items():
        assert job.state == "done" and job.error is None, (name, stores[name].log(job.id))
        assert [t.state for t in stores[name].tasks(job.id)] == ["done"] * 4
    assert done["dask"].study_id == done["local"].study_id

    starts = placements(store, job_id)
    assert {addr for _, _, addr in starts[:2]} == set(pids_before), f"the first two tasks shared a worker: {starts}"
    assert all(pids_before.get(addr, pid) == pid for _, pid, addr in starts)
    victim_starts = [(pid, addr) for label, pid, addr in starts if label == victim]
    assert len(victim_starts) == 2 and victim_starts[0] == (killed_pid, killed_addr), starts
    assert victim_starts[1][0] != killed_pid and victim_starts[1][1] in client.run(os.getpid), starts
    others = sorted(label for label, _, _ in starts if label != victim)
    assert others == [f"{BACKBONES[0]} fold 1", f"{BACKBONES[1]} fold 0", f"{BACKBONES[1]} fold 1"], starts
    entries = store.log_entries(job_id)
    assert [at for at, line in entries if line.startswith(f"{victim}: done")][0] > killed_at

    lines = [line for _, line in entries]
    for backbone in BACKBONES:
        first_done = next(i for i, line in enumerate(lines) if line.startswith(f"{backbone} fold 0: done"))
        second_start = next(i for i, line in enumerate(lines) if line.startswith(f"{backbone} fold 1: started"))
        assert first_done < second_start, "a backbone's second fold started before its first cached the features"

    expected = predictions(roots["local"], done["local"].study_id)
    got = predictions(roots["dask"], done["dask"].study_id)
    assert sorted(got) == sorted(expected) == sorted((b, k) for b in BACKBONES for k in (0, 1))
    for key, frame in expected.items():
        same = ["file", "fold", "true"]
        pd.testing.assert_frame_equal(got[key][same], frame[same], obj=str(key))
        proba = [c for c in frame.columns if c.startswith("p[")]
        np.testing.assert_allclose(got[key][proba], frame[proba], rtol=0, atol=1e-5, err_msg=str(key))
    features = {name: sorted((root / "features").glob("*.npy")) for name, root in roots.items()}
    assert [f.name for f in features["dask"]] == [f.name for f in features["local"]] and len(features["dask"]) == 2
    for ours, theirs in zip(features["dask"], features["local"], strict=True):
        np.testing.assert_array_equal(np.load(ours), np.load(theirs), err_msg=ours.name)
    assert all(len(r.history["loss"]) == epochs for r in artifacts.study_runs(done["dask"].study_id, roots["dask"]))


@pytest.mark.slow
def test_cancel_stops_the_cluster_s_tasks_within_a_batch(cluster, workspace: dict[str, Path], tmp_path: Path) -> None:
    root = workspace["artifacts"]
    store = JobStore(root)
    epochs = 200
    job = store.submit(request(workspace["data"], backbones=BACKBONES[:1], epochs=epochs, batch_size=4))
    log = tmp_path / "worker.log"
    worker = start_worker(root, log, env={**dask_env(cluster), "CXR_ARTIFACTS": str(root)})

    def first_fold_training(_seen) -> bool:
        return any(line.startswith(f"{BACKBONES[0]} fold 0: epoch 1/") for _, line in store.log_entries(job.id))

    watch(store, job.id, first_fold_training, timeout=TIMEOUT_S, worker=worker, log=log)
    assert [t.state for t in store.tasks(job.id)] == ["running", "queued"]  # fold 1 waits for fold 0's features
    asked = time.time()
    assert store.cancel(job.id).cancel_requested
    seen = watch(store, job.id, lambda s: s.state == "cancelled", timeout=60, worker=worker, log=log)
    assert seen[-1].at - asked < 4.0
    assert worker.wait(timeout=60) == 0
    assert [t.state for t in store.tasks(job.id)] == ["cancelled"] * 2

    time.sleep(max(0.0, asked + 6.0 - time.time()))
    assert artifacts.study_runs(store.get(job.id).study_id, root) == []
    sent = [(at, message) for at, message in cluster.get_client().get_events(TOPIC) if message["job_id"] == job.id]
    epoch_ends = [
        (at, int(m.group(1)))
        for at, message in sent
        if (m := re.search(r"fold 0: epoch (\d+)/", message.get("log_line") or ""))
    ]
    assert epoch_ends and max(epoch for _, epoch in epoch_ends) < epochs // 2
    assert max(at for at, _ in sent) < asked + 4.0, "a cancelled task kept training on its worker"
