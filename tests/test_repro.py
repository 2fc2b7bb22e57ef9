"""`videorope-train repro`'s machinery (not its scientific result, which the command itself produces): statistics
against hand-computed values, the verdict on constructed records, the error-lag count worked by hand, and a tiny
run for pairing, determinism and resumption."""

import json
import math

import pytest
import torch

from videorope_train import repro
from videorope_train.repro import ProbeSettings, paired_interval, score, sign_test, verdict


def test_statistics_against_hand_computed_values():
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1; t(0.975, 2 dof) = 4.302653 -> half width 4.302653 * 0.1 / sqrt(3)
    interval = paired_interval([0.1, 0.2, 0.3])
    assert interval["mean"] == pytest.approx(0.2) and interval["sd"] == pytest.approx(0.1)
    assert interval["low"] == pytest.approx(0.2 - 0.248414, abs=1e-6)
    assert interval["high"] == pytest.approx(0.2 + 0.248414, abs=1e-6)
    assert paired_interval([0.5])["low"] is None  # one pair: no interval
    assert sign_test(8, 8) == 1 / 256 and sign_test(7, 8) == 9 / 256 and sign_test(0, 3) == 1.0


def test_error_lags_worked_by_hand():
    """lag 2, train length 4, alias lag 4. Row [1, 5, 7, 3, 5, 0]: the answers at frames 2..5 are values[0..3] =
    1, 5, 7, 3; predicted 1, 5, 5, 3 -> frame 4 is wrong (5 instead of 7). Looking back from frame 4, 5 is held by
    frame 1 only (lag 3; frame 0, lag 4, holds 1). Frames 4 and 5 lie beyond the training length (>= 4)."""
    settings = ProbeSettings(lag=2, train_frames=4, test_frames=8, classes=10)
    values = torch.tensor([[1, 5, 7, 3, 5, 0]])
    predicted = torch.tensor([[9, 9, 1, 5, 5, 3]])  # frames 0 and 1 have no answer: ignored
    result = score(values, predicted, settings)
    assert result["answers"] == 4 and result["accuracy"] == 0.75 and result["errors"] == 1
    assert result["error_lags"] == {"3": 1}
    assert result["errors_where_alias_exists"] == 1 and result["alias_share"] == 0.0  # lag 4 (frame 0) holds 1
    assert result["beyond_train"] == 0.5 and result["answers_beyond_train"] == 2  # frames 4 (wrong) and 5 (right)
    assert result["by_position"] == {"0": 0.75}  # every answering frame in the first 16-frame bin
    predicted[0, 4] = 1  # now the wrong answer names frame 0, 4 frames back: the alias
    assert score(values, predicted, settings)["alias_share"] == 1.0


def _record(train, beyond, errors=10, lags=None, share=None):
    return {"train_length": {"accuracy": train},
            "test_length": {"beyond_train": beyond, "errors": errors, "error_lags": lags or {},
                            "alias_share": share}}


def _records(differences, train=1.0, alias_lags=None):
    settings = ProbeSettings()
    alias = str(2 * settings.lag)
    lags = alias_lags or {alias: 6, "37": 1}
    baseline = {s: _record(train, 0.8, lags=lags, share=lags.get(alias, 0) / 10) for s in range(len(differences))}
    candidate = {s: _record(1.0, 0.8 + d) for s, d in enumerate(differences)}
    return {"mrope": baseline, "videorope": candidate}, settings


def test_the_verdict_on_constructed_records():
    records, settings = _records([0.2, 0.15, 0.1, 0.2, 0.18, 0.12, 0.17, 0.2])
    v = verdict(records, settings)
    assert (v["validity"], v["ordering"], v["mechanism"]) == (True, True, True)
    assert v["outcome"].startswith("reproduced") and v["wins"] == 8 and v["most_frequent_error_lag"] == 202

    records, settings = _records([0.2] * 7 + [0.1], train=0.985)  # one criterion of validity fails: not a null
    assert verdict(records, settings)["outcome"].startswith("invalid") and not verdict(records, settings)["validity"]

    records, settings = _records([0.2, 0.2, 0.2, 0.2, 0.2, 0.2, -0.01, -0.02])  # 6 of 8 wins: < 7/8
    v = verdict(records, settings)
    assert not v["ordering"] and v["outcome"] == "no evidence at this scale"

    records, settings = _records([0.2] * 8, alias_lags={"202": 2, "37": 5})  # the errors point elsewhere
    v = verdict(records, settings)
    assert v["ordering"] and not v["mechanism"] and v["most_frequent_error_lag"] == 37


TINY = ProbeSettings(lag=5, train_frames=12, test_frames=24, classes=4, steps=3, batch=4, eval_samples=16)


def test_a_tiny_run_pairs_seeds_is_deterministic_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "repro"
    result = repro.run_repro(out, seeds=2, workers=1, settings=TINY, progress=False)
    runs = result["runs"]
    assert set(runs) == {"mrope", "videorope"} and set(runs["mrope"]) == {"0", "1"}
    assert set(result["verdict"]) >= {"validity", "ordering", "mechanism", "outcome"}
    assert (out / "repro.md").read_text().startswith("# Lag probe") and (out / "repro.png").stat().st_size > 10_000
    # paired: the arms of a seed are prepared from one base (the same random weights) ...
    for seed in (0, 1):
        bases = {(out / "models" / f"seed-{seed}" / arm / "model.safetensors").resolve() for arm in ("mrope", "videorope")}
        assert len(bases) == 1
    # ... and see the same data: a seed's generator gives the same batches
    first = repro.make_batch(torch.Generator().manual_seed(0), 4, 12, TINY)
    assert torch.equal(first, repro.make_batch(torch.Generator().manual_seed(0), 4, 12, TINY))
    # the arms differ in their positions only: VideoRoPE's δ = 2 spreads the video, M-RoPE's does not
    configs = {arm: json.loads((out / "models" / "seed-0" / arm / "config.json").read_text())["videorope"]
               for arm in ("mrope", "videorope")}
    assert configs["mrope"]["variant"] == "mrope" and configs["videorope"]["temporal_stride"] == 2.0

    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    monkeypatch.setattr(repro, "train_and_test", lambda *a, **k: pytest.fail("a finished seed was rerun"))
    resumed = repro.run_repro(out, seeds=2, workers=1, settings=TINY, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == stamps
    assert resumed["runs"] == runs
    with pytest.raises(ValueError, match="computed with other settings"):
        repro.run_repro(out, seeds=2, workers=1, settings=ProbeSettings(**{**TINY.to_dict(), "steps": 4,
                                                                           "mrope_section": (4, 6, 6)}),
                        progress=False)
    monkeypatch.undo()

    rerun = repro.train_and_test(out, "videorope", 1, TINY)  # deterministic per seed: the same record again
    saved = runs["videorope"]["1"]
    for key in ("loss_first", "loss_last", "train_length", "test_length"):
        assert rerun[key] == saved[key], key
    assert math.isfinite(rerun["loss_last"])
