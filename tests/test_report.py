"""The report: health signals, ViT attention maps, and pages for tiny runs of several methods,
checked as HTML and, where Debian's chromium and chromedriver are installed (`.ci/run` installs
them), in a real headless browser: no console errors, every image decodes, the page is not blank."""

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, tiny_config
from selfsup.backbones import BackboneConfig, build_backbone
from selfsup.cli import main
from selfsup.eval.health import embedding_health
from selfsup.report.page import write_report
from selfsup.train.trainer import Trainer

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def test_health_tells_a_collapsed_embedding_from_a_spread_one():
    g = torch.Generator().manual_seed(0)
    spread = embedding_health(torch.randn(500, 32, generator=g))
    assert not spread["collapsed"] and spread["std_ratio"] > 0.9 and spread["erank"] > 25
    point = embedding_health(torch.ones(500, 32) + 1e-6 * torch.randn(500, 32, generator=g))
    assert point["collapsed"] and point["std_ratio"] < 0.01
    line = embedding_health(torch.randn(500, 1, generator=g) * torch.randn(1, 32, generator=g))
    assert line["collapsed"] and line["erank"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_vit_attention_maps_are_the_last_blocks_weights(pool):
    vit = build_backbone(BackboneConfig(name="vit_tiny", embed_dim=32, depth=2, num_heads=2, pool=pool), 3, 16)
    x = torch.randn(3, 3, 16, 16)
    maps = vit.attention_maps(x)
    assert maps.shape == (3, 2, 4, 4) and (maps >= 0).all()
    total = maps.sum(dim=(-2, -1))  # mean pooling: each query's weights sum to 1, so their mean does
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5) if pool == "mean" else (total < 1).all()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny digits runs of three methods (a ViT among them), each with one online k-NN point."""
    out = {}
    for method, extra in (("simclr", []), ("rotation", []),
                          ("mae", ["backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=2",
                                   "backbone.num_heads=2"])):
        root = tmp_path_factory.mktemp(method)
        cfg = tiny_config(method, f"trainer.out={root}", "trainer.epochs=0.3", "trainer.knn_every=0",
                          "report.map_images=200", "report.bank=500", *extra)
        out[method] = Trainer(cfg, run_dir=root / "run").fit()
    return out


@pytest.fixture(scope="module")
def pages(runs, tmp_path_factory) -> dict[str, Path]:
    """The pages of the MAE run (a ViT), the SimCLR run (a ResNet), and of all three compared."""
    return {"mae": write_report([runs["mae"]]), "simclr": write_report([runs["simclr"]]),
            "compare": write_report(list(runs.values()), tmp_path_factory.mktemp("cmp") / "compare.html")}


def test_a_run_page_holds_every_section(runs, pages):
    page = pages["mae"].read_text()
    assert pages["mae"] == runs["mae"] / "report.html"
    for section in ("summary", "curves", "evaluations", "health", "retrievals", "embedding", "attention",
                    "pictures"):
        assert f'id="{section}"' in page, section
    assert "reconstructions" in page and ("healthy" in page or "collapsed" in page)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    assert 'id="attention"' not in pages["simclr"].read_text()  # a ResNet has none


def test_an_old_run_without_start_or_health_rows_still_gets_a_page(runs, tmp_path):
    old = Path(shutil.copytree(runs["rotation"], tmp_path / "old"))
    rows = [r for r in old.joinpath("metrics.jsonl").read_text().splitlines()
            if json.loads(r)["kind"] not in ("start", "health")]
    old.joinpath("metrics.jsonl").write_text("\n".join(rows) + "\nnot json\n")
    page = write_report([old], analyse=False).read_text()
    assert "not recorded" in page and "No health points logged" in page


def test_a_run_whose_data_is_gone_says_so(runs, tmp_path):
    moved = Path(shutil.copytree(runs["rotation"], tmp_path / "moved"))
    cfg = moved / "config.yaml"
    cfg.write_text(cfg.read_text().replace("name: digits", f"name: {tmp_path / 'gone'}", 1))
    page = write_report([moved]).read_text()
    assert "Not computed" in page and "gone" in page and 'id="retrievals"' not in page


def test_the_commands_write_run_and_comparison_pages(runs, tmp_path, capsys):
    assert main(["report", str(runs["rotation"]), "--no-analysis"]) == 0
    assert str(runs["rotation"] / "report.html") in capsys.readouterr().out
    out = tmp_path / "compare.html"
    assert main(["report", *map(str, runs.values()), "-o", str(out)]) == 0
    page = out.read_text()
    assert all(name in page for name in ("simclr", "rotation", "mae")) and 'id="results"' in page


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_the_pages_render_in_a_real_browser(pages):
    driver = _browser()
    try:
        for page in pages.values():
            driver.get(page.resolve().as_uri())
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, f"{page}: {errors}"
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
            assert images and all(ok and w > 0 and h > 0 for _, ok, w, h in images), images
            shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"))
            assert shot.std() > 10, f"{page} renders blank"
            if page.name == "report.html":
                for section in ("retrievals", "embedding"):
                    assert driver.execute_script(f"return document.getElementById('{section}') !== null")
    finally:
        driver.quit()


def test_pretrain_writes_the_report_unless_told_not_to(tmp_path, capsys):
    small = [*TINY, "trainer.epochs=0.1", "report.map_images=100", "report.bank=200"]
    assert main(["pretrain", "--run-dir", str(tmp_path / "a"), *small, "report.auto=true"]) == 0
    assert (tmp_path / "a" / "report.html").exists() and "report:" in capsys.readouterr().out
    assert main(["pretrain", "--run-dir", str(tmp_path / "b"), *small]) == 0  # TINY: report.auto=false
    assert not (tmp_path / "b" / "report.html").exists()
