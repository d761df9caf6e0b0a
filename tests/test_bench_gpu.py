"""python -m ptame.bench.gpu: the GPU figures' script, run here on the CPU with tiny sizes (--quick)."""

import json
from pathlib import Path

import pytest
import torch

from ptame.bench import gpu


def test_without_cuda_the_default_device_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device here: pass --device cpu"):
        gpu.main(["--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_the_table_has_one_row_per_figure_with_its_target() -> None:
    methods = {"ptame": dict.fromkeys(gpu.METHOD_COLUMNS, 0.5), "rise": dict.fromkeys(gpu.METHOD_COLUMNS, 2.0)}
    results = {
        "sizes": {"backbone": "resnet50", "evaluation_images": 64},
        "training": {"fp32_images_per_s": 812.34, "bf16_images_per_s": 2100.0},
        "design": {"ratio": 2.5},
        "overhead": {"batch_1": {"ratio": 1.3}, "batch_32": {"ratio": 1.1}},
        "score_cam": {"correlation": 1.0, "time_ratio": 0.2, "memory_ratio": 0.1},
        "evaluation": {"fp32": {"wall_s": 100.0, "methods": methods}, "bf16": {"wall_s": 60.0, "methods": methods}},
    }
    assert gpu.table(results).splitlines() == [
        "| figure | value | target |",
        "|---|---:|---|",
        "| training images/s, resnet50, fp32 | 812.3 |  |",
        "| training images/s, resnet50, bf16 | 2100.0 | >= 2000 (H100) |",
        "| training throughput ratio, ptame / reference design (train bench) | 2.50 | >= 2 (H100) |",
        "| P-TAME overhead, resnet50, batch 1 | 1.300 | <= 1.5 |",
        "| P-TAME overhead, resnet50, batch 32 | 1.100 |  |",
        "| Score-CAM map correlation | 1.0000 | >= 0.999 |",
        "| Score-CAM time ratio (ptame / pytorch-grad-cam) | 0.200 | <= 0.3 |",
        "| Score-CAM peak memory ratio | 0.100 | <= 0.3 |",
        "| evaluation wall s, 64 images, fp32 / bf16 | 100.0 / 60.0 | |",
        "| evaluation ptame: s / image, AD 100%, IC 100%, deletion, insertion (fp32; bf16) "
        "| 0.5 0.5 0.5 0.5 0.5; 0.5 0.5 0.5 0.5 0.5 | |",
        "| evaluation rise: s / image, AD 100%, IC 100%, deletion, insertion (fp32; bf16) | 2 2 2 2 2; 2 2 2 2 2 | |",
    ]


@pytest.mark.slow
def test_the_quick_run_on_the_cpu_measures_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpu.main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "bench-gpu.json").read_text())
    assert results["device"].startswith("cpu") and results["sizes"]["backbone"] == "test_resnet"
    assert results["training"]["fp32_images_per_s"] > 0 and results["training"]["bf16_images_per_s"] is None
    assert results["design"]["ptame_images_per_s"] > 0 and results["design"]["ratio"] > 0
    assert set(results["overhead"]) == {"batch_1", "batch_4"}
    assert all(figures["ratio"] > 0 for figures in results["overhead"].values())
    assert results["score_cam"]["correlation"] >= 0.999 and results["score_cam"]["time_ratio"] > 0
    for precision in ("fp32", "bf16"):
        run = results["evaluation"][precision]
        assert run["cost"][0].startswith("Expected cost in classifier passes per image") and run["wall_s"] > 0
        assert set(run["methods"]) == {"ptame", "gradcam", "rise"}
        assert all(figures["seconds_per_image"] > 0 for figures in run["methods"].values())
        assert (tmp_path / f"evaluation-{precision}" / "evaluation-per-image.csv").is_file()
    markdown = (tmp_path / "bench-gpu.md").read_text()
    assert markdown.count("\n") == 14 and markdown in capsys.readouterr().out
