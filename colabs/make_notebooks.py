"""Writes the notebooks of this folder (outputs cleared). Edit here, then run:

  python colabs/make_notebooks.py

The committed .ipynb files are what users open and what tests/test_notebooks.py executes.
"""
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''# Setup. Inside a checkout of the repository (its requirements installed) the checkout is used,
# and an installed lfvit_jax as it is. Elsewhere, e.g. on Colab, set SOURCE (or the environment
# variable LFVIT_JAX_SOURCE) to what pip should install: your repository's URL
# ("git+https://..."), a local folder, or a wheel built with `pip wheel --no-deps .`.
import os, pathlib, subprocess, sys

SOURCE = os.environ.get("LFVIT_JAX_SOURCE", "")
checkout = next((d for d in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents)
                 if (d / "lfvit_jax" / "__init__.py").is_file()), None)
if checkout is not None:
    sys.path.insert(0, str(checkout))
else:
    try:
        import lfvit_jax  # noqa: F401  (already installed)
    except ImportError:
        if not SOURCE and "google.colab" in sys.modules:  # no source named: upload a wheel
            from google.colab import files
            SOURCE = os.path.abspath(next(iter(files.upload())))
        if not SOURCE:
            raise SystemExit("lfvit_jax is not installed: set SOURCE above (a git URL, a folder "
                             "or a .whl file) or the environment variable LFVIT_JAX_SOURCE.")
        # scikit-image ships the quickstart's sample photographs (Colab has it already).
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", SOURCE, "scikit-image"],
                       check=True)'''

DEMO_NOTE = ("Without a converted checkpoint these notebooks use the small demo model "
             "(`configs/demo.py`, cluttered MNIST at 64 px). The first notebook to need it trains "
             "it into `$LFVIT_DEMO_WORKDIR` (default `~/lfvit_demo`), about 8-10 minutes on a "
             "2-core CPU; later runs reuse it. `LFVIT_NOTEBOOK_FAST=1` swaps in the 8-step "
             "`runlocal` variant (what the tests run); `LFVIT_PRECISION=bfloat16` evaluates and "
             "predicts with bfloat16 matmuls (float32 accumulation).")


def quickstart():
    return [
        new_markdown_cell(
            "# LF-ViT quickstart\n\n"
            "LF-ViT classifies a half-resolution copy of the image first (localization). When "
            "its top softmax probability reaches the threshold eta, it stops. Otherwise it "
            "picks the m x m window of coarse tokens with the most class attention (NGCA), "
            "replaces the K most attended of them by their four full-resolution children and "
            "runs the same network again (focus). This notebook builds the model, loads "
            "weights, runs both stages on photographs and draws what the model looked at, as "
            "in the paper's Figure 6.\n\n" + DEMO_NOTE),
        new_code_cell(SETUP),
        new_code_cell(
            "%matplotlib inline\n"
            "import jax\n"
            "import numpy as np\n"
            "from IPython.display import display\n\n"
            "from lfvit_jax import demo, load_pretrained\n"
            "from lfvit_jax.data.defaults import imagenet_config\n"
            "from lfvit_jax.evaluation import figures\n\n"
            "# A converted ImageNet checkpoint (lfvit convert --src SRC --dst DST) if you have\n"
            "# one; otherwise the demo model, trained here on first use.\n"
            "CHECKPOINT = os.environ.get(\"LFVIT_CHECKPOINT\", \"\")\n"
            "if CHECKPOINT:\n"
            "    model, variables = load_pretrained(CHECKPOINT)\n"
            "    model = model.clone(matmul_dtype=demo.precision())\n"
            "    data_cfg = imagenet_config()\n"
            "else:\n"
            "    config, workdir = demo.config(), demo.workdir()\n"
            "    print(\"demo workdir:\", workdir, \"(fast setting)\" if demo.is_fast() else \"\")\n"
            "    demo.ensure_trained(config, workdir)\n"
            "    model, variables = demo.load(config, workdir)\n"
            "    data_cfg = config.data\n"
            "print(f\"LF-ViT at {model.img_size} px, patch {model.patch}: coarse grid \"\n"
            "      f\"{model.h1}x{model.h1}, region m={model.region_size}, K={model.num_kept} \"\n"
            "      \"refined tokens\")"),
        new_markdown_cell(
            "## The demo model where it was trained\n\n"
            "Cluttered MNIST test canvases (one digit among fragments of others). Each panel: the "
            "NGCA region (orange), the refined fine patches (the rest is washed out) and the "
            "digit's box (dashed green); the title gives the label, the localization prediction "
            "and its confidence, the focus prediction, and which stage decides at eta."),
        new_code_cell(
            "# eta: exit when the localization's top probability reaches it. The paper's 0.76 suits\n"
            "# an ImageNet model; the small demo model is far less confident, so take the eta at\n"
            "# which half of its test images exit.\n"
            "THRESHOLD = 0.76\n"
            "if not CHECKPOINT:\n"
            "    task, arrays, summary, images = demo.evaluate_split(config, workdir)\n"
            "    THRESHOLD = figures.half_exit_threshold(arrays)\n"
            "    print(task.format_summary(summary).splitlines()[0])\n"
            "    display(figures.split_overlays(model.grid, arrays, images, data_cfg, np.arange(8),\n"
            "                                   THRESHOLD))"),
        new_markdown_cell(
            "## Photographs\n\n"
            "Sample photographs that ship with scikit-image, cropped and normalized as in "
            "evaluation, drawn the same way. The demo "
            "model knows only the ten digits, so its classes mean nothing on photographs: look "
            "at the mechanics. With a converted ImageNet checkpoint the classes are ImageNet's."),
        new_code_cell(
            "import skimage.data\n"
            "from PIL import Image\n\n"
            "from lfvit_jax.inference.inputs import preprocess\n\n"
            "names = [\"astronaut\", \"coffee\", \"chelsea\", \"rocket\"]\n"
            "photos = np.stack([preprocess(Image.fromarray(getattr(skimage.data, n)()), data_cfg,\n"
            "                              model.img_size) for n in names])\n"
            "out = jax.jit(model.apply)(variables, photos, THRESHOLD)\n"
            "display(figures.prediction_overlays(model.grid, photos, out, data_cfg, names))"),
    ]


def tradeoff_explorer():
    return [
        new_markdown_cell(
            "# Trade-off explorer\n\n"
            "One evaluation pass runs both stages on every test image; sweeping the exit "
            "threshold eta offline then gives accuracy against average GFLOPs (the paper's "
            "Figure 4), how many images each stage decides (Figure 7), and which images exit "
            "early. Also: how often the NGCA region contains the digit.\n\n" + DEMO_NOTE),
        new_code_cell(SETUP),
        new_code_cell(
            "%matplotlib inline\n"
            "import numpy as np\n"
            "from IPython.display import display\n\n"
            "from lfvit_jax import demo\n"
            "from lfvit_jax.evaluation import figures, plotting\n"
            "from lfvit_jax.tasks import sweep\n\n"
            "config, workdir = demo.config(), demo.workdir()\n"
            "demo.ensure_trained(config, workdir)\n"
            "task, arrays, summary, images = demo.evaluate_split(config, workdir)\n"
            "grid = task.grid\n"
            "mask = arrays[\"_mask\"].astype(bool)\n"
            "gflops = {k: summary[k] for k in (\"stage1_gflops\", \"stage12_gflops\")}\n"
            "def sweep_at(thresholds):\n"
            "    return sweep.threshold_sweep(arrays[\"loc_probs\"], arrays[\"focus_probs\"],\n"
            "                                 arrays[\"label\"], mask, gflops,\n"
            "                                 summary[\"deit_gflops\"], thresholds)\n"
            "print(f\"{mask.sum()} test images; localization top-1 \"\n"
            "      f\"{100 * summary['loc_top1']:.1f}%, focus top-1 {100 * summary['focus_top1']:.1f}%; \"\n"
            "      f\"GFLOPs: stage 1 {gflops['stage1_gflops']:.4f}, both {gflops['stage12_gflops']:.4f}, \"\n"
            "      f\"a ViT of this size {summary['deit_gflops']:.4f}\")"),
        new_markdown_cell("## Accuracy against budget (Figure 4)"),
        new_code_cell(
            "# Thresholds spread over the exit fraction (quantiles of the confidence), 0 and 1.\n"
            "rows = sweep_at(figures.sweep_thresholds(arrays, 41))\n"
            "print(sweep.format_table(rows[::4]))\n"
            "fig = plotting.new_figure(5, 3.6)\n"
            "plotting.budget_curve(fig.add_subplot(), rows)\n"
            "display(fig)"),
        new_markdown_cell("## Which stage decides (Figure 7)"),
        new_code_cell(
            "fig = plotting.new_figure(5.5, 3.6)\n"
            "plotting.stage_counts(fig.add_subplot(), sweep_at(figures.sweep_thresholds(arrays, 11)))\n"
            "display(fig)"),
        new_markdown_cell(
            "## Does the region find the digit?\n\n"
            "A hit: the window contains the centre of the digit's box. Containment: it holds "
            "the whole box. Windows sit on the coarse-token grid, so a box that straddles it "
            "fits in no window; the last rate is that ceiling."),
        new_code_cell(
            "rates = figures.localization_rates(grid, arrays, summary)\n"
            "side = 2 * grid.patch * grid.m\n"
            "print(f\"NGCA region ({side}x{side} px) contains the digit's centre: \"\n"
            "      f\"{100 * rates['region_hit']:.1f}% of {rates['examples']} test images\")\n"
            "print(f\"NGCA region contains the digit's whole box:   {100 * rates['region_contains']:.1f}%\")\n"
            "print(f\"some window could contain the whole box:      {100 * rates['any_window_contains']:.1f}%\")"),
        new_markdown_cell(
            "## Easy and hard images\n\n"
            "Top row: the most confident localizations (they exit early once eta is at most "
            "their confidence). Bottom row: the least confident, which go to the focus stage."),
        new_code_cell(
            "THRESHOLD = figures.half_exit_threshold(arrays)  # about half the test images exit\n"
            "display(figures.easy_and_hard(grid, arrays, images, config.data, THRESHOLD))"),
    ]


def training_walkthrough():
    return [
        new_markdown_cell(
            "# Training walkthrough\n\n"
            "Trains the demo config (`configs/demo.py`: a 4-block LF-ViT on cluttered MNIST) "
            "from this notebook, plots its curves, and resumes a run from a checkpoint. About "
            "8-10 minutes on a 2-core CPU; `LFVIT_NOTEBOOK_FAST=1` trains the 8-step `runlocal` "
            "variant instead. The same run from a shell: `lfvit train --config demo "
            "--workdir workdirs/demo`."),
        new_code_cell(SETUP),
        new_code_cell(
            "%matplotlib inline\n"
            "import shutil\n"
            "from IPython.display import display\n\n"
            "from lfvit_jax import demo\n"
            "from lfvit_jax.evaluation import plotting\n"
            "from lfvit_jax.training import trainer\n\n"
            "config = demo.config()\n"
            "print(\"model:\", dict(config.model))\n"
            "print({k: config[k] for k in (\"batch_size\", \"total_epochs\", \"total_steps\", \"lr\",\n"
            "                             \"selection_start_epoch\", \"checkpoint_every_steps\")})"),
        new_markdown_cell(
            "## Train\n\n"
            "The focus stage sees the whole fine image until `selection_start_epoch`, NGCA "
            "regions afterwards. The run ends with the threshold table and a JSON line."),
        new_code_cell(
            "# A fresh workdir next to the shared demo one (a rerun of this notebook starts over).\n"
            "workdir = demo.workdir() + \"_walkthrough\"\n"
            "stopped = workdir + \"_stopped\"\n"
            "for path in (workdir, stopped):\n"
            "    shutil.rmtree(path, ignore_errors=True)\n"
            "summary = trainer.train_and_evaluate(config, workdir)\n"
            "print(sorted(os.listdir(workdir)))"),
        new_markdown_cell("## Curves (from the workdir's `metrics.jsonl`)"),
        new_code_cell("display(plotting.training_curves(demo.read_metrics(workdir), \"demo LF-ViT\"))"),
        new_markdown_cell(
            "## Resume\n\n"
            "A new workdir holding only the config and the second-to-last checkpoint stands in "
            "for a run stopped there (by preemption, SIGTERM or a crash). The same call picks "
            "it up: parameters, optimizer state and the data iterator's position come back, "
            "so on CPU the resumed run ends exactly where the uninterrupted one did."),
        new_code_cell(
            "steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, \"checkpoints\"))\n"
            "               if s.isdigit())\n"
            "os.makedirs(stopped)\n"
            "shutil.copy(os.path.join(workdir, \"config.json\"), stopped)\n"
            "shutil.copytree(os.path.join(workdir, \"checkpoints\", str(steps[-2])),\n"
            "                os.path.join(stopped, \"checkpoints\", str(steps[-2])))\n"
            "resumed = trainer.train_and_evaluate(config, stopped)\n"
            "for key in (\"loc_top1\", \"focus_top1\"):\n"
            "    print(f\"{key}: uninterrupted {summary[key]:.4f}, resumed from step {steps[-2]} \"\n"
            "          f\"{resumed[key]:.4f}\")\n"
            "assert all(summary[k] == resumed[k] for k in (\"loc_top1\", \"focus_top1\"))"),
    ]


def main(out_dir=HERE):
    for name, cells in (("quickstart", quickstart()), ("tradeoff_explorer", tradeoff_explorer()),
                        ("training_walkthrough", training_walkthrough())):
        for i, cell in enumerate(cells):
            cell.id = f"{name}-{i}"  # stable ids: regenerating changes only what was edited
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        nbformat.validate(nb)
        path = os.path.join(out_dir, f"{name}.ipynb")
        nbformat.write(nb, path)
        print("wrote", path)


if __name__ == "__main__":
    main()
