"""`eval paper`: checkpoints' scores next to the VideoRoPE paper's (paper.md, paper.png), every run read shown.

The expected cells are worked by hand from the paper's table (eval/paper.py PAPER); the plot is checked on the
figure's artists (panels, legends, ticks, bars), not on the PNG's bytes.
"""

import json
import subprocess
import sys

import pytest


def _lmms_result(path, model_dir, context, task, metric, value, more=None):
    """A results file laid out as lmms-eval 0.7.3 writes it (keys as in the real run of tests/test_lmms_eval.py);
    ``more``: further entries of the task's results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "results": {task: {"alias": task, f"{metric},none": value, f"{metric}_stderr,none": "N/A", **(more or {})}},
        "config": {"model": "videorope", "model_args": f"pretrained={model_dir},context={context}"}}))


def _summary(path, task, average):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": task, "average": average}))


def _rows(markdown):
    """paper.md as {row name: {column header: cell}}."""
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()]
    header = lines[0]
    return {row[0]: dict(zip(header[1:], row[1:])) for row in lines[2:]}


def _compare(tmp_path, run, variant="videorope"):
    """``eval paper`` of one run named "ours", its variant given (no checkpoint to read it from)."""
    from videorope_train.eval.paper import paper_comparison

    _, markdown = paper_comparison([("ours", run)], tmp_path / "out", {"ours": variant})
    return _rows(markdown)


@pytest.mark.slow
def test_paper_comparison_table_and_plot(hooked_dir, tmp_path):
    """Scores collected from lmms-eval result files and a V-NIAH summary, next to the paper's row of the
    checkpoint's own variant; the differences worked by hand from the spec's table."""
    model = hooked_dir("videorope")
    run = tmp_path / "ours"
    _lmms_result(run / "8k" / "a" / "20260101_results.json", model, "8k", "videomme", "videomme_perception_score", 62.0)
    _lmms_result(run / "16k" / "b_results.json", model, "16k", "longvideobench_val_v", "lvb_acc", 0.5)  # a fraction
    _lmms_result(run / "64k" / "c_results.json", model, "64k", "mlvu_dev", "mlvu_percetion_score", 60.0)
    (run / "vniah").mkdir()
    (run / "vniah" / "summary.json").write_text(json.dumps({"task": "vniah", "average": 0.9, "model": str(model)}))
    out = tmp_path / "cmp"
    result = subprocess.run([sys.executable, "-m", "videorope_train.cli", "eval", "paper", "--run", f"ours={run}",
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (out / "paper.md").read_text().splitlines()
    ours, paper, delta = (line.split(" | ") for line in lines[2:5])
    # columns: model | longvideobench 8k..64k | mlvu 8k..64k | videomme 8k..64k | V-NIAH | V-NIAH-D
    assert ours[0] == "| ours" and paper[0] == "| paper: videorope"
    assert ours[2] == "50.00" and paper[2] == "55.29" and delta[2] == "-5.29"  # LongVideoBench 16k
    assert ours[8] == "60.00" and paper[8] == "65.56" and delta[8] == "-5.56"  # MLVU 64k
    assert ours[9] == "62.00" and paper[9] == "61.33" and delta[9] == "+0.67"  # Video-MME 8k
    assert ours[13] == "90.00" and delta[13] == "-1.11"  # V-NIAH 90.00 vs 91.11
    assert ours[1] == "—" and delta[1] == "—"  # not run: no number invented
    assert (out / "paper.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="no lmms-eval results"):
        from videorope_train.eval.paper import collect

        collect(tmp_path / "cmp")


def test_a_context_given_in_tokens_is_its_presets_column(tmp_path):
    """context=16384 (the backend takes tokens as well as 8k/16k/...) is the paper's 16k."""
    _lmms_result(tmp_path / "ours" / "a_results.json", "/none", "16384", "longvideobench_val_v", "lvb_acc", 0.5)
    rows = _compare(tmp_path, tmp_path / "ours")
    assert rows["ours"]["longvideobench 16k"] == "50.00"
    assert rows["ours − paper"]["longvideobench 16k"] == "-5.29"  # 50.00 − 55.29
    assert "longvideobench 16384" not in rows["ours"]


def test_another_context_gets_its_own_column_in_token_order(tmp_path):
    run = tmp_path / "ours"
    _lmms_result(run / "a_results.json", "/none", "12000", "videomme", "videomme_perception_score", 58.0)
    _lmms_result(run / "b_results.json", "/none", "8k", "videomme", "videomme_perception_score", 62.0)
    rows = _compare(tmp_path, run)
    assert [c for c in rows["ours"] if c.startswith("videomme")] == [
        "videomme 8k", "videomme 12000", "videomme 16k", "videomme 32k", "videomme 64k"]
    assert rows["ours"]["videomme 12000"] == "58.00"
    assert rows["paper: videorope"]["videomme 12000"] == "—" and rows["ours − paper"]["videomme 12000"] == "—"
    assert rows["ours − paper"]["videomme 8k"] == "+0.67"  # 62.00 − 61.33
    _lmms_result(run / "c_results.json", "/none", "long", "videomme", "videomme_perception_score", 1.0)
    with pytest.raises(ValueError, match="'long' is neither one of"):
        _compare(tmp_path, run)


def test_other_tasks_are_listed_with_no_paper_number(tmp_path):
    """A local copy of a benchmark keeps its own name; a task's metrics as lmms-eval wrote them (not in percent),
    its standard error left out; a V-RULER subtask's summary is its own column, not V-NIAH."""
    run = tmp_path / "ours"
    _lmms_result(run / "a_results.json", "/none", "8k", "videomme_local", "videomme_perception_score", 40.0)
    _lmms_result(run / "b_results.json", "/none", "16k", "synth_mcq", "accuracy", 0.25,
                 more={"exact_match,strict": 0.5})
    _summary(run / "vruler" / "mkmv" / "summary.json", "mkmv", 0.5)
    rows = _compare(tmp_path, run)
    ours, paper, delta = rows["ours"], rows["paper: videorope"], rows["ours − paper"]
    for column, value in (("videomme_local videomme_perception_score 8k", "40.00"),
                          ("synth_mcq accuracy 16k", "0.25"), ("synth_mcq exact_match,strict 16k", "0.50"),
                          ("mkmv", "50.00")):
        assert (ours[column], paper[column], delta[column]) == (value, "—", "—"), column
    assert not [c for c in ours if "stderr" in c]
    assert ours["V-NIAH"] == "—" and paper["V-NIAH"] == "91.11"
    assert ours["videomme 8k"] == "—"


def _panels(figure):
    return {ax.get_title(): ax for ax in figure.axes if ax.get_title()}


def test_the_plot_shows_every_run_and_only_what_was_run(tmp_path):
    """A zero V-NIAH score and no V-NIAH-D, a context in tokens, another context, a task the paper lacks, two
    variants: a panel per benchmark run, legends and axis labels on each, contexts as categories by token count."""
    import matplotlib.pyplot as plt

    from videorope_train.eval.paper import collect, draw

    ours, theirs = tmp_path / "ours", tmp_path / "mrope"
    _lmms_result(ours / "a_results.json", "/none", "16384", "longvideobench_val_v", "lvb_acc", 0.5)
    _lmms_result(ours / "b_results.json", "/none", "12000", "longvideobench_val_v", "lvb_acc", 0.0)
    _lmms_result(ours / "c_results.json", "/none", "8k", "videomme_local", "videomme_perception_score", 40.0)
    _summary(ours / "vniah" / "summary.json", "vniah", 0.0)
    _lmms_result(theirs / "a_results.json", "/none", "32k", "videomme", "videomme_perception_score", 55.5)
    _summary(theirs / "vniah" / "summary.json", "vniah", 0.75)
    runs = [("ours", {**collect(ours), "variant": "videorope"}), ("mrope", {**collect(theirs), "variant": "mrope"})]
    figure = draw(runs)
    try:
        panels = _panels(figure)
        assert list(panels) == ["longvideobench", "videomme", "videomme_local videomme_perception_score", "V-NIAH"]
        for title, ax in panels.items():
            assert ax.get_legend() is not None and ax.get_xlabel() and ax.get_ylabel(), title
        legends = {title: [t.get_text() for t in ax.get_legend().get_texts()] for title, ax in panels.items()}
        assert legends == {"longvideobench": ["ours", "paper: videorope"], "videomme": ["mrope", "paper: mrope"],
                           "videomme_local videomme_perception_score": ["ours"],
                           "V-NIAH": ["ours", "paper: videorope", "mrope", "paper: mrope"]}

        lvb = panels["longvideobench"]
        assert [t.get_text() for t in lvb.get_xticklabels()] == ["8k", "12000", "16k", "32k", "64k"]
        line, paper_line = lvb.get_lines()
        assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [0.0, 50.0]
        assert list(paper_line.get_xdata()) == [0, 2, 3, 4]
        assert list(paper_line.get_ydata()) == [54.46, 55.29, 57.15, 57.26]

        needles = panels["V-NIAH"]
        assert [t.get_text() for t in needles.get_xticklabels()] == ["V-NIAH"]  # no V-NIAH-D: not run
        bars = [(round(p.get_height(), 2), p.get_hatch() or "") for p in needles.patches]
        assert bars == [(0.0, ""), (91.11, "//"), (75.0, ""), (78.67, "//")]
        assert [t.get_text() for t in needles.texts] == ["0.0", "91.1", "75.0", "78.7"]
        zero_marker, = needles.get_lines()  # the zero bar has no height: a marker on the axis shows it
        assert list(zero_marker.get_ydata()) == [0]
    finally:
        plt.close(figure)


def test_a_vruler_heatmap_title_names_its_subtask_once():
    from videorope_train.eval.plot import _title

    assert _title("mkmv", {"task": "mkmv", "average": 0.5}) == "mkmv · avg 0.500"
    assert _title("vniah-d", {"task": "vniah-d", "average": 0.25}) == "V-NIAH-D · avg 0.250"
    assert _title("ours", {"task": "vniah", "average": 0.5}) == "ours · V-NIAH · avg 0.500"
