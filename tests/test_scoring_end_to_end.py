"""Scoring with a real exported bundle: sample_data through the CLI, real graphs on hard inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import catalogue_cases as cases
from drf_batch.bundle import load_bundle
from drf_batch.cli import app
from drf_batch.scoring.core import ScoringContext, score_record_batch
from drf_batch.storage import open_reader

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "sample_data"


@pytest.fixture(scope="module")
def bundle(default_bundle: Path):
    return load_bundle(default_bundle, providers="cpu")


@pytest.fixture(scope="module")
def sample_run(default_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db_path = tmp_path_factory.mktemp("sample") / "scores.duckdb"
    arguments = [
        "score", str(SAMPLE_DATA / "posts.parquet"), "--bundle", str(default_bundle), "--db", str(db_path),
        "--image-root", str(SAMPLE_DATA / "images"), "--providers", "cpu", "--no-progress", "--batch-size", "8",
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return db_path, result.output


def _rows(db_path: Path, query: str) -> dict[str, dict]:
    with open_reader(db_path) as connection:
        return {row["post_id"]: row for row in cases.fetch_dicts(connection, query)}


def test_sample_data_every_row_stored(sample_run: tuple[Path, str]) -> None:
    db_path, output = sample_run
    rows = pq.read_metadata(SAMPLE_DATA / "posts.parquet").num_rows
    scores = _rows(db_path, "SELECT * FROM scores")
    rejects = _rows(db_path, "SELECT * FROM rejects")
    assert len(scores) + len(rejects) == rows
    assert f"rows in:        {rows}" in output
    assert "used CPUExecutionProvider" in output


def test_sample_data_routing_and_states(sample_run: tuple[Path, str]) -> None:
    db_path, _ = sample_run
    scores = _rows(db_path, "SELECT * FROM scores")
    rejects = _rows(db_path, "SELECT * FROM rejects")
    assert scores["demo-001"]["graph"] == "paired"
    assert scores["demo-009"]["graph"] == "image_only"
    assert scores["demo-009"]["text_state"] == "missing"
    assert scores["demo-011"]["graph"] == "text_only"
    assert scores["demo-011"]["image_state"] == "missing"
    assert scores["demo-014"]["image_state"] == "unreadable"
    assert scores["demo-014"]["graph"] == "text_only"
    assert scores["demo-015"]["image_error"].startswith("not_found")
    assert scores["demo-020"]["graph"] == "paired"
    assert rejects["demo-021"]["reason_code"] == "no_modality"
    for row in scores.values():
        assert row["label"] in ("negative", "neutral", "positive")
        assert sum(row["probs"]) == pytest.approx(1.0, abs=1e-4)
        assert row["image_state"] in ("ok", "low_quality", "missing", "unreadable")


def test_sample_data_passthrough_and_run_row(sample_run: tuple[Path, str]) -> None:
    db_path, _ = sample_run
    scores = _rows(db_path, "SELECT post_id, extra, created_at FROM scores")
    assert '"author_id": "u101"' in scores["demo-001"]["extra"]
    assert scores["demo-001"]["created_at"] is not None
    with open_reader(db_path) as connection:
        run = cases.fetch_dicts(connection, "SELECT * FROM runs")[0]
    assert run["status"] == "finished"
    assert run["providers_used"] == ["CPUExecutionProvider"]
    assert run["providers_requested"] == ["CPUExecutionProvider"]
    assert run["rows_in"] == run["rows_scored"] + run["rows_rejected"]


def test_sample_data_rerun_adds_nothing(sample_run: tuple[Path, str], default_bundle: Path) -> None:
    db_path, _ = sample_run
    arguments = [
        "score", str(SAMPLE_DATA / "posts.parquet"), "--bundle", str(default_bundle), "--db", str(db_path),
        "--image-root", str(SAMPLE_DATA / "images"), "--providers", "cpu", "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "scored:         0" in result.output
    rows = pq.read_metadata(SAMPLE_DATA / "posts.parquet").num_rows
    assert f"already stored: {rows}" in result.output


def test_rerun_skips_bundle_loading(sample_run: tuple[Path, str], default_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db_path, _ = sample_run

    def fail_load_bundle(*args: object, **kwargs: object) -> None:
        raise AssertionError("a re-run of a finished file must not load the onnxruntime sessions")

    monkeypatch.setattr("drf_batch.bundle.load_bundle", fail_load_bundle)
    arguments = [
        "score", str(SAMPLE_DATA / "posts.parquet"), "--bundle", str(default_bundle), "--db", str(db_path),
        "--image-root", str(SAMPLE_DATA / "images"), "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "scored:         0" in result.output


def test_manifest_only_bundle_id_matches(bundle, default_bundle: Path, tmp_path: Path) -> None:
    from drf_batch.scoring.runner import manifest_only_bundle_if_done
    from drf_batch.storage import ScoreStore

    posts = tmp_path / "posts.parquet"
    pq.write_table(pa.table({"post_id": ["a"], "text": ["one post"]}), posts)
    store = ScoreStore(tmp_path / "scores.duckdb")
    assert manifest_only_bundle_if_done(posts, default_bundle, store) is None
    from drf_batch.scoring.runner import score_file

    score_file(posts, bundle, store)
    stand_in = manifest_only_bundle_if_done(posts, default_bundle, store)
    assert stand_in is not None
    assert stand_in.bundle_id == bundle.bundle_id
    assert stand_in.labels == tuple(bundle.labels)


def test_real_graphs_hard_texts(bundle, tmp_path: Path) -> None:
    long_text = " ".join(["wonderful"] * 2000)
    batch = pa.RecordBatch.from_pydict(
        {
            "post_id": ["long", "emoji", "arabic", "control", "bytes"],
            "text": pa.array(
                [long_text.encode(), "🎉🎂😀".encode(), "أنا سعيد جدا".encode(), b"a\x00b\x07c", b"caf\xe9 \xff ok"],
                pa.binary(),
            ),
        }
    )
    scores, rejects = score_record_batch(batch, bundle, context=ScoringContext(run_id="r", input_path="mem"))
    assert rejects.num_rows == 0
    assert scores.column("graph").to_pylist() == ["text_only"] * 5
    probs = np.array(scores.column("probs").to_pylist())
    assert np.isfinite(probs).all()


def test_real_graphs_unusual_images(bundle, tmp_path: Path) -> None:
    payloads = {
        "cmyk": cases.cmyk_jpeg(),
        "deep": cases.png_16_bit(),
        "gif": cases.animated_gif(),
        "webp": cases.webp_bytes(),
        "exif": cases.exif_rotated_jpeg(),
        "dot": cases.one_pixel_png(),
        "bomb": cases.decompression_bomb_png(),
    }
    batch = pa.RecordBatch.from_pydict(
        {"post_id": list(payloads), "text": ["a picture"] * len(payloads), "image_bytes": pa.array(list(payloads.values()), pa.binary())}
    )
    scores, _ = score_record_batch(batch, bundle, context=ScoringContext(run_id="r", input_path="mem"))
    states = dict(zip(scores.column("post_id").to_pylist(), scores.column("image_state").to_pylist()))
    assert states.pop("bomb") == "unreadable"
    assert set(states.values()) <= {"ok", "low_quality"}


def test_real_graphs_batch_size_invariant(bundle) -> None:
    sample = pq.read_table(SAMPLE_DATA / "posts.parquet").to_batches()[0]
    context = ScoringContext(run_id="r", input_path="mem", image_root=SAMPLE_DATA / "images")
    one_by_one, _ = score_record_batch(sample, bundle, context=ScoringContext(**{**context.__dict__, "inference_batch_size": 1}))
    together, _ = score_record_batch(sample, bundle, context=context)
    assert one_by_one.column("post_id").to_pylist() == together.column("post_id").to_pylist()
    np.testing.assert_allclose(
        np.array(one_by_one.column("probs").to_pylist()), np.array(together.column("probs").to_pylist()), atol=1e-4
    )


def test_real_graphs_io_binding_matches_run(bundle) -> None:
    sample = pq.read_table(SAMPLE_DATA / "posts.parquet").to_batches()[0]
    context = ScoringContext(run_id="r", input_path="mem", image_root=SAMPLE_DATA / "images")
    plain, _ = score_record_batch(sample, bundle, context=context)
    bound, _ = score_record_batch(sample, bundle, context=ScoringContext(**{**context.__dict__, "use_io_binding": True}))
    np.testing.assert_allclose(
        np.array(plain.column("probs").to_pylist()), np.array(bound.column("probs").to_pylist()), atol=1e-6
    )
