"""`splitshield report`: self-contained HTML, Markdown with working links, honest status of unfinished grids.

One tiny table grid (No_defense + two defenses, without and with CEM, two seeds) is trained once per module; tests
that change a folder work on a copy without the checkpoints.
"""
from __future__ import annotations

import base64
import html
import importlib.util
import json
import os
import re
import shutil
from urllib.parse import unquote

import pytest

from splitshield.cli.main import main
from splitshield.experiments.grid import load_stored
from splitshield.experiments.report import write_document, write_report
from splitshield.experiments.sections import Section, SimpleTable
from splitshield.experiments.tables import table_from_stored

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = """name: tiny
seed: 0
data: {name: synthetic, batch_size: 32, eval_batch_size: 64, augment: false}
model: {name: vgg11_bn, cut: 2, width: 0.125}
train: {epochs: 3, lr: 0.02, schedule: constant, progress: false, precision: fp32}
defenses: []
attacks:
  - {name: decoder, epochs: 20, patience: 2, min_delta: 0.05, train_size: 64, blocks: 1, channels: 16, lr: 0.003,
     batch_size: 16, score_size: 32}
"""
TABLE = """name: tiny-table
base: tiny.yaml
seeds: [0, 1]
runs: {runs}
out: {runs}
arms:
  - {{label: ""}}
  - {{label: +CEM, add: [{{name: cem}}]}}
rows:
  - {{label: No_defense, arms: [""]}}
  - {{label: Noise, defenses: [{{name: gaussian_noise, sigma: 0.05}}]}}
  - {{label: Dropout, defenses: [{{name: dropout, p: 0.3}}]}}
"""


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("grid")
    runs = str(root / "runs")
    (root / "tiny.yaml").write_text(TINY)
    (root / "table.yaml").write_text(TABLE.format(runs=runs))
    assert main(["-q", "table", str(root / "table.yaml")]) == 0
    return runs


def copy_grid(src: str, dst: str) -> str:
    # Reports read results and configs only: leave the checkpoints and attack weights behind.
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoint.pt", "*-decoder.pt", "report.*", "figures"))
    return dst


def read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def result(run_dir: str, key: str) -> dict:
    with open(os.path.join(run_dir, "results", f"{key}.json"), encoding="utf-8") as fh:
        return json.load(fh)


def assert_self_contained(page: str, images: int) -> None:
    assert 'src="http' not in page and "<script" not in page and "<link" not in page
    tags = re.findall(r"<img [^>]*>", page)
    assert len(tags) == images
    for tag in tags:
        src = re.search(r'src="([^"]*)"', tag).group(1)
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)


def md_links(text: str) -> list[str]:
    return [unquote(link) for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]


def test_table_report_is_self_contained_and_shows_stored_numbers(grid_dir, capsys) -> None:
    assert main(["report", grid_dir]) == 0
    printed = capsys.readouterr().out
    assert os.path.join(grid_dir, "report.html") in printed and os.path.join(grid_dir, "report.md") in printed
    page, md = read(os.path.join(grid_dir, "report.html")), read(os.path.join(grid_dir, "report.md"))
    assert_self_contained(page, images=1)
    stored = load_stored(grid_dir)
    table = table_from_stored(stored.grid, stored.results)
    col = [c.key for c in table.columns].index("attack:decoder:train")
    cell = table.cell(next(r for r in table.rows if r.label == "Noise+CEM"), col)  # e.g. "0.1026 ± 0.0001"
    one_run = next(r for r in stored.results if r.task.group == "Dropout" and r.task.seed == 1)
    mse = format(result(one_run.run_dir, "attack-decoder-infer")["mse"], ".4f")
    for text in (page, md):
        for label in ("No_defense", "Noise+CEM", "Dropout+CEM", "Average +CEM", "Gain +CEM vs row"):
            assert label in text
        assert cell in text and mse in text
        assert "10 of 10 runs finished" in text and stored.command in text
        assert "none (no noise)" in text  # No_defense transmits no noise: nothing bounds I(x; z)
        assert "lower bound" not in text.lower().replace("not a lower bound", "")  # no MSE bound is claimed
    assert md_links(md) == ["figures/reconstructions-decoder-train.png"]
    assert os.path.isfile(os.path.join(grid_dir, "figures", "reconstructions-decoder-train.png"))


def test_unfinished_grid_says_so(grid_dir, tmp_path) -> None:
    runs = copy_grid(grid_dir, str(tmp_path / "runs"))
    stored = load_stored(runs)
    missing = next(r for r in stored.results if r.task.group == "Noise" and r.task.arm and r.task.seed == 1)
    os.remove(os.path.join(missing.run_dir, "results", "train.json"))
    write_report(runs)
    page, md = read(os.path.join(runs, "report.html")), read(os.path.join(runs, "report.md"))
    for text in (page, md):
        assert "9 of 10 runs finished" in text and "n/a" in text
        assert "Noise+CEM s1" in text  # named among the runs left out of the cells
    assert_self_contained(page, images=1)  # its row is still drawn from seed 0


def test_markdown_document_copies_images_and_links_resolve(grid_dir, tmp_path, capsys) -> None:
    doc = tmp_path / "docs" / "results.md"
    assert main(["report", grid_dir, "--markdown", str(doc), "--title", "Tiny results"]) == 0
    assert str(doc) in capsys.readouterr().out
    text = read(str(doc))
    assert text.startswith("# Tiny results")
    assert "do not edit it by hand" in text
    assert f"Produced by: `{load_stored(grid_dir).command}`" in text
    assert f"Regenerate this document: `splitshield report {grid_dir} --markdown {doc}" in text
    links = md_links(text)
    assert links and all(link.startswith("figures/results/tiny-table-") for link in links)
    for link in links:
        with open(os.path.join(str(doc.parent), link), "rb") as fh:
            assert fh.read(8) == PNG_MAGIC


def test_report_markdown_elsewhere_copies_its_images(grid_dir, tmp_path) -> None:
    md = tmp_path / "docs" / "table.md"
    assert write_report(grid_dir, markdown=str(md)) == os.path.join(grid_dir, "report.html")
    assert md_links(read(str(md))) == ["figures/results/tiny-table-reconstructions-decoder-train.png"]
    assert (md.parent / "figures" / "results" / "tiny-table-reconstructions-decoder-train.png").is_file()


def test_document_of_two_folders_keeps_order_and_images_apart(grid_dir, tmp_path) -> None:
    second = copy_grid(grid_dir, str(tmp_path / "second"))
    doc = str(tmp_path / "results.md")
    write_document([grid_dir, second], doc, "Both")
    text = read(doc)
    assert text.count("## tiny-table") == 2 and text.count("### Table 1") == 2
    links = md_links(text)
    assert len(set(links)) == 2 and all(os.path.isfile(os.path.join(str(tmp_path), link)) for link in links)


def test_html_escapes_labels(grid_dir, tmp_path) -> None:
    runs = copy_grid(grid_dir, str(tmp_path / "runs"))
    path = os.path.join(runs, "grid.json")
    body = json.loads(read(path))
    for task in body["tasks"]:
        task["group"] = "Noise <b>x</b>" if task["group"] == "Noise" else task["group"]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(body, fh)
    write_report(runs)
    page, md = read(os.path.join(runs, "report.html")), read(os.path.join(runs, "report.md"))
    assert html.escape("Noise <b>x</b>+CEM") in page and "<b>" not in page
    assert "Noise \\<b>x\\</b>+CEM" in md  # shown as text, not rendered as HTML


def test_run_folder_report(grid_dir, tmp_path) -> None:
    stored = load_stored(grid_dir)
    src = next(r for r in stored.results if r.task.group == "Noise" and r.task.arm and r.task.seed == 0)
    run = copy_grid(src.run_dir, str(tmp_path / "run"))
    from splitshield.experiments.grid import write_run_manifest

    write_run_manifest(run, ["decoder"], ["train", "infer"], ["run", "tiny.yaml"])  # as `splitshield run` does
    write_report(run)
    page, md = read(os.path.join(run, "report.html")), read(os.path.join(run, "report.md"))
    assert_self_contained(page, images=2)  # one figure per protocol
    audit, eff = result(run, "audit"), result(run, "efficiency")
    accuracy = f"{100 * result(run, 'train')['test_accuracy']:.2f}%"
    for text in (page, md):
        assert accuracy in text and "after 3 epochs" in text
        assert f"{audit['mi_bound']:.2f} nats = " in text and "Relative MSE index" in text
        assert format(audit["mse_index"], ".4g") in text and "not as a guarantee" in text
        assert f"{eff['edge_params']:,}" in text and f"{eff['cloud_macs']:,}" in text
        for protocol in ("train", "infer"):
            attack = result(run, f"attack-decoder-{protocol}")
            assert format(attack["mse"], ".4f") in text and format(attack["baseline"]["mse"], ".4f") in text
    assert sorted(md_links(md)) == ["figures/reconstructions-infer.png", "figures/reconstructions-train.png"]


@pytest.mark.skipif(importlib.util.find_spec("splitshield.experiments.sweep") is None,
                    reason="splitshield.experiments.sweep (sweep_sections) is not written yet")
def test_sweep_kind_renders_sweep_sections(grid_dir, tmp_path, monkeypatch) -> None:
    import splitshield.experiments.sweep as sweep

    runs = copy_grid(grid_dir, str(tmp_path / "runs"))
    path = os.path.join(runs, "grid.json")
    body = json.loads(read(path))
    body["kind"] = "sweep"
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(body, fh)
    seen = []

    def fake(stored, figures_dir):  # noqa: ANN001, ANN202
        seen.append((stored.kind, figures_dir))
        return [Section("Trade-off curve", ["sweep paragraph"], [SimpleTable(["sigma"], [["0.25"]])])]

    monkeypatch.setattr(sweep, "sweep_sections", fake)
    write_report(runs)
    page = read(os.path.join(runs, "report.html"))
    assert seen == [("sweep", os.path.join(runs, "figures"))]
    assert "Trade-off curve" in page and "sweep paragraph" in page and "10 of 10 runs finished" in page


@pytest.mark.parametrize("case,fragment", [("missing", "is not a folder"), ("empty", "has no grid.json"),
                                           ("corrupt", "is corrupt")])
def test_bad_folder_is_one_line_error(case: str, fragment: str, tmp_path, capsys) -> None:
    folder = tmp_path / "runs"
    if case != "missing":
        folder.mkdir()
    if case == "corrupt":
        (folder / "grid.json").write_text("{not json")
    assert main(["report", str(folder)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0]
