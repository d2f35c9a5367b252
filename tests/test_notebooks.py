"""The notebooks run top to bottom (nbclient) and are stored without outputs.

Each notebook is executed in a kernel of *this* interpreter: a ``python3`` kernel spec pointing at
``sys.executable`` is written to a temp dir that ``JUPYTER_PATH`` puts first, so a stale user
kernel or a fresh CI machine without a registered kernel makes no difference. Parameters are
injected after the cell tagged ``parameters`` (as papermill does); every output goes to pytest's
``tmp_path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

nbclient = pytest.importorskip(
    "nbclient", reason="nbclient is not installed (pip install -e '.[dev]') - notebooks not run"
)
import nbformat  # noqa: E402 - nbclient depends on it
from selfheal.pipeline.core.config import load_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = ("tune_detectors.ipynb", "explore_events.ipynb")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """JUPYTER_PATH with a python3 kernel spec that runs this interpreter."""
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (selfheal tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(
            "JUPYTER_PATH",
            os.pathsep.join(filter(None, [str(jupyter_dir), os.environ.get("JUPYTER_PATH")])),
        )
        mp.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        # the kernel picks its inline backend (figures become outputs) only when this is unset
        mp.delenv("MPLBACKEND", raising=False)
        from jupyter_client.kernelspec import KernelSpecManager

        found = KernelSpecManager().get_kernel_spec("python3")
        assert found.argv[0] == sys.executable, found.argv
        yield


def _read(name: str) -> Any:
    return nbformat.read(NB_DIR / name, as_version=4)


def run_notebook(name: str, params: dict[str, Any]) -> Any:
    """Execute ``notebooks/<name>`` with ``params`` injected; return the executed notebook."""
    nb = _read(name)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NB_DIR)}}
    )
    client.execute()  # raises CellExecutionError with the cell's traceback on failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]  # fmt: skip
    assert not errors, errors
    return nb


def _images(nb: Any) -> int:
    return sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_stored_without_outputs(name: str) -> None:
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be parameters"
    for c in code:
        assert c.outputs == [], f"stored outputs in {name}: {c.source[:60]!r}"
        assert c.execution_count is None, f"stored execution count in {name}"
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_tune_detectors(kernel_env: None, tmp_path: Path) -> None:
    nb = run_notebook("tune_detectors.ipynb", {"OUT_DIR": str(tmp_path)})
    assert _images(nb) >= 3

    summary = json.loads((tmp_path / "tuning.json").read_text(encoding="utf-8"))
    config = tmp_path / "detectors.yaml"
    assert Path(summary["config_path"]) == config
    settings = load_settings(config)  # what `selfheal run --config` does
    models = settings.detection.models
    chosen = summary["chosen"]
    assert set(chosen) == {"latency", "memory"}
    for key, value in chosen["latency"].items():
        assert getattr(models.latency, key) == value
    for key, value in chosen["memory"].items():
        assert getattr(models.memory, key) == value

    # the choice meets the notebook's criterion on its own sweep
    for section in ("latency", "memory"):
        rows = summary[section]["rows"]
        best = summary[section]["chosen"]
        assert best in rows
        assert best["false_alarms"] == min(r["false_alarms"] for r in rows)
    assert summary["replay"] and summary["replay"][0]["messages"] > 0

    _check_crossval(summary["crossval"])

    figures = [Path(p) for p in summary["figures"]]
    assert {p.name for p in figures} >= {"sweep.png", "latency_scores.png", "memory_forecast.png"}
    for p in figures:
        assert p.parent == tmp_path / "figures"
        assert p.read_bytes()[:8] == PNG_MAGIC


def _check_crossval(cv: dict[str, Any]) -> None:
    """The notebook's cross-validation: every file held out exactly once, a choice per fold
    made among the grid, finite pooled scores (skipped parts only when the data is absent)."""
    shared = ROOT / ".." / "shared" / "data"
    if (shared / "nab" / "data").is_dir():
        nab = cv["nab"]
        assert len(nab["files"]) == 6 and nab["grid"][0] == "shipped"
        for proto in nab["protocols"].values():
            held = [f for fold in proto["folds"] for f in fold["held_out"]]
            assert sorted(held) == sorted(nab["files"])  # a partition of the files
            assert all(fold["chosen"] in nab["grid"] for fold in proto["folds"])
            assert -100.0 < proto["score"] <= 100.0
    if (shared / "loghub" / "Apache").is_dir():
        lh = cv["loghub"]
        assert [f["held_out"] for f in lh["folds"]] == [[s] for s in lh["systems"]]
        assert all(f["chosen"] in ("sim_th=0.9", "sim_th=0.8") for f in lh["folds"])
        assert 0.0 <= lh["score"] <= 1.0


def test_explore_events_from_replay(kernel_env: None, tmp_path: Path) -> None:
    nb = run_notebook("explore_events.ipynb", {"OUT_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": ""})
    assert _images(nb) == 2  # the timeline and the learned effectiveness
    report = json.loads((tmp_path / "explore.json").read_text(encoding="utf-8"))
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    # the notebook explores anomalies and repairs; the replay also writes incident events
    lines = [x for x in lines if b'"io.selfheal.incident.' not in x]
    assert report["events"] == len(lines) > 0
    assert report["anomalies"] + report["repairs"] == report["events"]
    truth = json.loads((tmp_path / "truth.json").read_text(encoding="utf-8"))["faults"]
    assert report["faults"] == len(truth) > 0
    assert report["timeline"] == str(tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").read_bytes()[:8] == PNG_MAGIC
    # section 4: effectiveness learned from the replayed anomalies, and a what-if
    assert (tmp_path / "effectiveness.png").read_bytes()[:8] == PNG_MAGIC
    whatif = json.loads((tmp_path / "whatif.json").read_text(encoding="utf-8"))
    assert whatif["anomalies"] == report["anomalies"]
    assert sum(whatif["baseline"]["repairs"].values()) > 0
    assert report["whatif"]["changed"] == whatif["changed"]


def _cloudevent(kind: str, name: str, entity: str, ts: str, data: dict[str, Any]) -> bytes:
    ev = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "selfheal",
        "type": f"io.selfheal.{kind}.{name}",
        "subject": entity,
        "time": ts,
        "datacontenttype": "application/json",
        "data": {"entity": entity, **data},
    }
    return json.dumps(ev).encode()


def test_explore_events_from_kafka(kernel_env: None, broker: Any, tmp_path: Path) -> None:
    from aiokafka import AIOKafkaProducer
    from selfheal.connectors.kafka import ensure_topics

    prefix = f"nb{uuid.uuid4().hex[:8]}"
    anomalies, repairs = f"{prefix}.anomalies", f"{prefix}.repairs"
    leak = _cloudevent(
        "anomaly",
        "memory_leak",
        "api-1",
        "2026-11-28T05:10:00Z",
        {"kind": "memory_leak", "metric": "container_memory_working_set_bytes"},
    )
    slow = _cloudevent(
        "anomaly",
        "latency_anomaly",
        "web-1",
        "2026-11-28T05:20:00Z",
        {"kind": "latency_anomaly", "metric": "http_request_duration_seconds"},
    )
    restart = _cloudevent(
        "repair",
        "restart",
        "api-1",
        "2026-11-28T05:10:01Z",
        {
            "action": "restart",
            "mode": "enforce",
            "status": "execute",
            "predictive": True,
            "reason": ["memory_leak"],
            "params": {},
        },
    )

    async def produce() -> None:
        await ensure_topics(broker.bootstrap, [anomalies, repairs], 1)
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await p.start()
        try:
            for topic, value in (
                (anomalies, leak),
                (anomalies, slow),
                (anomalies, leak),
                (anomalies, b"not json"),
                (repairs, restart),
            ):
                await p.send_and_wait(topic, value)
        finally:
            await p.stop()

    asyncio.run(produce())
    run_notebook(
        "explore_events.ipynb",
        {"OUT_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": broker.bootstrap,
         "ANOMALIES_TOPIC": anomalies, "REPAIRS_TOPIC": repairs},
    )  # fmt: skip
    report = json.loads((tmp_path / "explore.json").read_text(encoding="utf-8"))
    assert report["source"].startswith(f"kafka {broker.bootstrap}")
    assert (report["events"], report["duplicates"], report["malformed"]) == (3, 1, 1)
    assert report["anomalies_by_kind"] == {"memory_leak": 1, "latency_anomaly": 1}
    assert report["repairs_by_action"] == {"restart": 1}
    assert report["faults"] is None  # no ground truth from a topic
    assert (tmp_path / "timeline.png").read_bytes()[:8] == PNG_MAGIC
