"""The figures the docs quote are rendered from bench/results, and the committed docs match."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from facepoints_lib.tools import cli
from facepoints_lib.tools.render_docs import (MARKER, RENDERED, REPO_ROOT, RenderError, Results, marker_count,
                                              render_docs, render_text)


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(
        {"holdout": {"err": 3.4567, "mark": 10}, "train": {"wall_seconds": 1800.0, "steps": 600},
         "history": [{"err": 9.0}, {"err": 4.0}], "sets": {"upright/second": {"err": 2.5}}}))
    return Results(folder)


def test_markers_are_rendered_from_the_result_files(results):
    text = ("err <!--=run:holdout.err:.2f-->9.99<!--/--> (mark <!--=run:holdout.mark-->0<!--/-->), "
            "<!--=run:train.wall_seconds/60:.0f-->?<!--/--> min, last <!--=run:history.-1.err-->?<!--/-->, "
            "<!--=run:train.wall_seconds / run:train.steps:.1f-->?<!--/--> s a step, "
            "<!--=run:sets.upright/second.err-->?<!--/-->")
    assert render_text(text, results) == (
        "err <!--=run:holdout.err:.2f-->3.46<!--/--> (mark <!--=run:holdout.mark-->10<!--/-->), "
        "<!--=run:train.wall_seconds/60:.0f-->30<!--/--> min, last <!--=run:history.-1.err-->4.0<!--/-->, "
        "<!--=run:train.wall_seconds / run:train.steps:.1f-->3.0<!--/--> s a step, "
        "<!--=run:sets.upright/second.err-->2.5<!--/-->")


@pytest.mark.parametrize("spec, message", [
    ("nothing:holdout.err", "no result file nothing.json"),
    ("run:holdout.median", "run.json has no 'holdout.median'"),
    ("run:history.7.err", "run.json has no 'history.7.err'"),
    ("run:holdout.err:.2q", "cannot format 3.4567"),
    ("../run:holdout.err", "lies under the results folder"),
    ("holdout err", "a figure marker must read"),
])
def test_a_marker_that_names_nothing_is_an_error(results, spec, message):
    with pytest.raises(RenderError, match=message):
        render_text(f"<!--={spec}-->1<!--/-->", results)


def test_a_changed_result_makes_the_check_fail_and_the_render_fixes_it(tmp_path, capsys):
    """A copy of the project's docs and results: the check passes, then a result file
    changes under a quoted figure and the check names the file, until it is rendered."""
    for name in RENDERED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "bench" / "results", tmp_path / "bench" / "results")
    assert render_docs(tmp_path, check=True) == []

    readme = (tmp_path / "README.md").read_text()
    spec = next(m["spec"] for m in MARKER.finditer(readme) if re.fullmatch(r"[\w-]+:[\w.-]+(:[^:]*)?", m["spec"]))
    name, path = spec.split(":")[:2]                           # the README's first plain FILE:PATH figure
    result_file = tmp_path / "bench" / "results" / f"{name}.json"
    data = json.loads(result_file.read_text())
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1]] = 123456789
    result_file.write_text(json.dumps(data))

    stale = render_docs(tmp_path, check=True)
    assert "README.md" in stale
    assert (tmp_path / "README.md").read_text() == readme          # --check writes nothing
    assert render_docs(tmp_path) == stale
    assert "123456789" in (tmp_path / "README.md").read_text()
    assert render_docs(tmp_path, check=True) == []


def test_the_committed_docs_match_their_results(capsys):
    counts = marker_count()
    assert counts["README.md"] > 10 and counts["bench/README.md"] > 100, counts
    assert cli.main(["render-docs", "--check"]) == 0, capsys.readouterr().out
    assert f"{sum(counts.values())} figures in {len(RENDERED)} files match" in capsys.readouterr().out
