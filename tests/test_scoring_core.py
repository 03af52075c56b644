"""score_record_batch: routing, modality states, rejects, bucketing and pass-through columns."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from drf_batch.scoring.core import ROW_NUMBER_COLUMN, ScoringContext, score_record_batch
from drf_batch.scoring.results import REJECTS_SCHEMA, SCORES_SCHEMA, to_json
from scoring_fakes import FAIL_WORD, FakeBundle


def _png(path: Path, color: tuple[int, int, int] = (200, 120, 40), size: tuple[int, int] = (40, 30)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def _png_bytes(color: tuple[int, int, int] = (10, 200, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    _png(root / "ok.png")
    _png(root / "black.png", color=(0, 0, 0))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _context(image_root: Path, **overrides: object) -> ScoringContext:
    settings: dict[str, object] = {"run_id": "run-1", "input_path": "/data/posts.parquet", "image_root": image_root}
    settings.update(overrides)
    return ScoringContext(**settings)  # type: ignore[arg-type]


def _batch(**columns: list[object]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(columns)


def _by_post(table: pa.Table) -> dict[str, dict[str, object]]:
    return {row["post_id"]: row for row in table.to_pylist()}


def test_routing_by_available_modalities(image_root: Path) -> None:
    batch = _batch(
        post_id=["both", "image", "text", "neither"],
        text=["a lovely sunny day", None, "terrible service today", None],
        image_path=["ok.png", "ok.png", None, None],
    )
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    rows = _by_post(scores)
    assert rows["both"]["graph"] == "paired"
    assert rows["image"]["graph"] == "image_only"
    assert rows["text"]["graph"] == "text_only"
    assert rejects.column("post_id").to_pylist() == ["neither"]
    assert rejects.column("reason_code").to_pylist() == ["no_modality"]


def test_modality_states_ok_and_missing(image_root: Path) -> None:
    batch = _batch(
        post_id=["both", "image", "text"],
        text=["a lovely sunny day", None, "terrible service today"],
        image_path=["ok.png", "ok.png", None],
    )
    scores, _ = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    rows = _by_post(scores)
    assert (rows["both"]["image_state"], rows["both"]["text_state"]) == ("ok", "ok")
    assert (rows["image"]["image_state"], rows["image"]["text_state"]) == ("ok", "missing")
    assert (rows["text"]["image_state"], rows["text"]["text_state"]) == ("missing", "ok")


def test_low_quality_states_from_graph_output(image_root: Path) -> None:
    batch = _batch(post_id=["dark", "short"], text=["a fine long caption here", "hmm"], image_path=["black.png", "ok.png"])
    scores, _ = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    rows = _by_post(scores)
    assert rows["dark"]["image_state"] == "low_quality"
    assert rows["dark"]["text_state"] == "ok"
    assert rows["short"]["image_state"] == "ok"
    assert rows["short"]["text_state"] == "low_quality"


def test_unreadable_image_scored_on_text(image_root: Path) -> None:
    batch = _batch(post_id=["p1"], text=["still a readable caption"], image_path=["broken.jpg"])
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert rejects.num_rows == 0
    row = scores.to_pylist()[0]
    assert row["graph"] == "text_only"
    assert row["image_state"] == "unreadable"
    assert row["text_state"] == "ok"
    assert row["image_error"]
    assert row["image_path"] == "broken.jpg"


def test_unreadable_image_without_text_rejected(image_root: Path) -> None:
    batch = _batch(post_id=["p1", "p2"], text=[None, "  "], image_path=["broken.jpg", "absent.png"])
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert scores.num_rows == 0
    codes = rejects.column("reason_code").to_pylist()
    assert all(code.startswith("image_") for code in codes)
    assert all("no text" in reason for reason in rejects.column("reason").to_pylist())


def test_missing_post_id_rejected(image_root: Path) -> None:
    batch = _batch(post_id=[None, "  ", "ok"], text=["one text", "two text", "three text"])
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert scores.column("post_id").to_pylist() == ["ok"]
    assert rejects.column("reason_code").to_pylist() == ["missing_post_id", "missing_post_id"]
    assert rejects.column("row_number").to_pylist() == [0, 1]


def test_integer_post_ids_become_strings(image_root: Path) -> None:
    batch = _batch(post_id=[17, 18], text=["one text", "two text"])
    scores, _ = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert scores.column("post_id").to_pylist() == ["17", "18"]


def test_row_numbers_from_column_or_offset(image_root: Path) -> None:
    with_column = pa.RecordBatch.from_pydict(
        {"post_id": ["a", "b"], "text": ["x y", "y z"], ROW_NUMBER_COLUMN: pa.array([40, 97], pa.int64())}
    )
    scores, _ = score_record_batch(with_column, FakeBundle(), context=_context(image_root))
    assert scores.column("row_number").to_pylist() == [40, 97]
    assert "__row_number" not in (scores.column("extra").to_pylist()[0] or "")

    without_column = _batch(post_id=["a", "b"], text=["x y", "y z"])
    scores, _ = score_record_batch(without_column, FakeBundle(), context=_context(image_root, first_row_number=500))
    assert scores.column("row_number").to_pylist() == [500, 501]


def test_result_tables_match_schemas(image_root: Path) -> None:
    batch = _batch(post_id=["a", "b"], text=["some text", None], image_path=[None, None])
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert scores.schema.equals(SCORES_SCHEMA)
    assert rejects.schema.equals(REJECTS_SCHEMA)
    row = scores.to_pylist()[0]
    assert row["bundle_id"] == "fakebundle000001"
    assert row["run_id"] == "run-1"
    assert row["input_path"] == "/data/posts.parquet"
    assert row["label"] in ("negative", "neutral", "positive")
    assert row["confidence"] == pytest.approx(max(row["probs"]))
    assert sum(row["probs"]) == pytest.approx(1.0, abs=1e-5)


def test_absent_quality_values_are_null(image_root: Path) -> None:
    batch = _batch(post_id=["t"], text=["only a text"], image_path=[None])
    scores, _ = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    row = scores.to_pylist()[0]
    assert row["image_quality"] is None
    # The text converted into image space has a quality, the absent image converted into text has none.
    assert row["image_quality_recovered"] is not None
    assert row["text_quality_recovered"] is None
    assert row["text_quality"] is not None
    assert row["w_text"] == pytest.approx(0.2)


def test_empty_batch_returns_empty_tables(image_root: Path) -> None:
    batch = pa.RecordBatch.from_pydict({"post_id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert scores.num_rows == 0
    assert rejects.num_rows == 0


def test_texts_bucketed_by_token_count(image_root: Path) -> None:
    texts = ["w " * length for length in (12, 1, 9, 2, 11, 3, 10, 1)]
    batch = _batch(post_id=[f"p{index}" for index in range(len(texts))], text=texts)
    bundle = FakeBundle()
    score_record_batch(batch, bundle, context=_context(image_root, inference_batch_size=4))
    widths = [call["input_ids"][1] for call in bundle.sessions["text_only"].calls]
    assert widths == [4, 13]


def test_inference_failure_isolated_to_row(image_root: Path) -> None:
    batch = _batch(post_id=["good", "bad", "fine"], text=["a calm day", f"this {FAIL_WORD} now", "another day"])
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert sorted(scores.column("post_id").to_pylist()) == ["fine", "good"]
    assert rejects.column("post_id").to_pylist() == ["bad"]
    assert rejects.column("reason_code").to_pylist() == ["inference_failed"]
    assert "text_only graph failed" in rejects.column("reason").to_pylist()[0]


def test_image_bytes_preferred_over_path(image_root: Path) -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "post_id": ["a", "b"],
            "image_path": ["broken.jpg", None],
            "image_bytes": pa.array([_png_bytes(), _png_bytes((0, 0, 0))], pa.large_binary()),
        }
    )
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert rejects.num_rows == 0
    rows = _by_post(scores)
    assert rows["a"]["image_state"] == "ok"
    assert rows["b"]["image_state"] == "low_quality"


def test_passthrough_columns_into_extra(image_root: Path) -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "post_id": ["a"],
            "text": ["hello there"],
            "author_id": ["u1"],
            "likes": pa.array([12], pa.int32()),
            "seen": pa.array([datetime(2026, 1, 2, 3, 4, 5)], pa.timestamp("s")),
            "blob": pa.array([b"\x00\x01"], pa.binary()),
            "tags": pa.array([["x", "y"]], pa.list_(pa.string())),
            "image_bytes": pa.array([None], pa.binary()),
        }
    )
    scores, _ = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    extra = json.loads(scores.column("extra").to_pylist()[0])
    assert extra == {"author_id": "u1", "likes": 12, "seen": "2026-01-02T03:04:05", "blob": "AAE=", "tags": ["x", "y"]}


def test_non_finite_extras_written_as_null(image_root: Path) -> None:
    batch = pa.RecordBatch.from_pydict(
        {
            "post_id": ["a", "b", "c"],
            "text": ["hello there"] * 3,
            "score": pa.array([float("nan"), float("inf"), 1.5], pa.float64()),
            "weights": pa.array([[float("-inf"), 2.0], None, [0.5]], pa.list_(pa.float32())),
        }
    )
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert rejects.num_rows == 0
    assert scores.num_rows == 3
    extras = [json.loads(text) for text in scores.column("extra").to_pylist()]
    assert extras[0] == {"score": None, "weights": [None, 2.0]}
    assert extras[1] == {"score": None, "weights": None}
    assert extras[2] == {"score": 1.5, "weights": [0.5]}


def test_unserialisable_extra_becomes_string() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    looped: list[object] = []
    looped.append(looped)
    text = to_json({"thing": {1.5: Opaque()}, "loop": looped, "n": 3})
    assert text is not None
    extra = json.loads(text)
    assert extra["n"] == 3
    assert extra["thing"] == {"1.5": "opaque"}
    assert isinstance(extra["loop"], str)


def test_created_at_out_of_range_is_null(image_root: Path) -> None:
    batch = _batch(post_id=["a", "b"], text=["x y"] * 2, created_at=["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+01:00"])
    scores, rejects = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert rejects.num_rows == 0
    assert scores.column("created_at").to_pylist() == [None, None]


def test_created_at_timestamp_forms(image_root: Path) -> None:
    aware = pa.array([datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)], pa.timestamp("ms", tz="Europe/Berlin"))
    batch = pa.RecordBatch.from_pydict({"post_id": ["a"], "text": ["hi there"], "created_at": aware})
    scores, _ = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert scores.column("created_at").to_pylist() == [datetime(2026, 5, 1, 12, 0)]

    strings = _batch(post_id=["a", "b", "c"], text=["x y"] * 3, created_at=["2026-05-01T14:00:00+02:00", "not a date", None])
    scores, _ = score_record_batch(strings, FakeBundle(), context=_context(image_root))
    assert scores.column("created_at").to_pylist() == [datetime(2026, 5, 1, 12, 0), None, None]


def test_text_normalised_before_scoring(image_root: Path) -> None:
    batch = _batch(post_id=["a"], text=["  spaced \t\n out\x00 text  "])
    bundle = FakeBundle()
    scores, _ = score_record_batch(batch, bundle, context=_context(image_root))
    assert bundle.tokenized == [["spaced out text"]]
    assert scores.column("text").to_pylist() == ["spaced out text"]


def test_scoring_twice_gives_same_result(image_root: Path) -> None:
    batch = _batch(post_id=["a", "b"], text=["some words", None], image_path=["ok.png", "ok.png"])
    first, _ = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    second, _ = score_record_batch(batch, FakeBundle(), context=_context(image_root))
    assert first.drop_columns(["scored_at"]).equals(second.drop_columns(["scored_at"]))


def test_io_binding_path_used_on_request(image_root: Path) -> None:
    class BindingSession:
        def __init__(self) -> None:
            self.bound: list[str] = []

        def io_binding(self) -> "BindingSession":
            return self

        def bind_cpu_input(self, name: str, value: np.ndarray) -> None:
            self.bound.append(name)
            self.value = value

        def bind_output(self, name: str, device: str) -> None:
            assert device == "cpu"

        def run_with_iobinding(self, binding: object) -> None:
            pass

        def copy_outputs_to_cpu(self) -> list[np.ndarray]:
            rows = len(self.value)
            return [
                np.full((rows, 3), 1 / 3, np.float32),
                np.zeros((rows, 4), np.float32),
                np.zeros((rows, 3), np.float32),
                np.zeros((rows, 2), bool),
            ]

    bundle = FakeBundle()
    session = BindingSession()
    bundle.sessions["text_only"] = session  # type: ignore[assignment]
    scores, _ = score_record_batch(
        _batch(post_id=["a"], text=["bound text"]), bundle, context=_context(image_root, use_io_binding=True)
    )
    assert session.bound == ["input_ids", "attention_mask"]
    assert scores.num_rows == 1


def test_non_finite_probs_rejected(image_root: Path) -> None:
    bundle = FakeBundle()
    original_run = bundle.sessions["text_only"].run

    def run_with_nan(output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = original_run(output_names, feeds)
        outputs[0][0] = np.nan
        return outputs

    bundle.sessions["text_only"].run = run_with_nan  # type: ignore[method-assign]
    batch = _batch(post_id=["a", "b"], text=["first text", "second text here"])
    scores, rejects = score_record_batch(batch, bundle, context=_context(image_root))
    assert scores.num_rows == 1
    assert rejects.column("reason_code").to_pylist() == ["inference_failed"]
    assert "non-finite" in rejects.column("reason").to_pylist()[0]
