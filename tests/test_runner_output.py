"""What `pml-ext run` prints and draws (issue 15): a few lines per method without a terminal,
warnings once, titled plots with whole-number epochs and legends outside the data, and a re-run
of the main job that replaces its folders."""
import os
import shutil
import signal
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure  # noqa: E402

from pml_ext.__main__ import main  # noqa: E402
from pml_ext.runner.state.experiment_report import ExperimentReport, setting_label  # noqa: E402

SCHEME = "Test50_50_Partitions1_0"


def main_job(tmp_path, capsys, monkeypatch, methods, epochs):
    argv = ["run", "--dataset", "digits", "--root_experiment_folder", str(tmp_path), "--methods", *methods,
            "--num_epochs_train", str(epochs), "--trainer~APPLY~2", "{iterations_per_epoch: 2}"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


def test_the_main_job_prints_a_few_lines_per_method_and_a_re_run_replaces_its_folders(tmp_path, capsys, monkeypatch):
    methods = ["pml_triplet_semihard", "lifted_structure"]
    out, err = main_job(tmp_path, capsys, monkeypatch, methods, 2)
    # stderr: one progress line per method (plus at most a warning, once); stdout: the table
    progress = [line for line in err if line.startswith("[")]
    assert len(progress) == 2 and progress[0].startswith("[1/2] PML") and progress[1].startswith("[2/2] pml_ext")
    assert len(err) <= 2 * len(methods), err
    table_rows = len(methods) + 2  # + raw pixels and untrained network
    assert len([line for line in out if line.strip()]) <= table_rows + 4, out
    assert not any("\r" in line or "it/s" in line or "TRAINING EPOCH" in line for line in out + err)
    assert max(len(line) for line in out + err) <= 120, out
    folder = tmp_path / "main_job"
    assert {"pml_triplet_semihard", "lifted_structure"} <= set(os.listdir(folder))
    # a re-run with other methods and epochs: nothing of the first run is left to mix with
    main_job(tmp_path, capsys, monkeypatch, ["pml_triplet_semihard"], 1)
    assert "lifted_structure" not in os.listdir(folder)
    models = os.listdir(folder / "pml_triplet_semihard" / SCHEME / "saved_models")
    assert "checkpoint_1.json" in models and not any("_2.pth" in m for m in models)


def test_plots_have_titles_labels_whole_epochs_and_legends_outside(tmp_path, monkeypatch):
    figures = []
    original = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    report = ExperimentReport("mean_average_precision_at_r")
    for scheme in ("s0", "s1"):
        report.add(scheme, {"epoch": [1, 2, 3], "mean_average_precision_at_r_level0": [0.1, 0.2, 0.3]},
                   {"~iteration~": [0, 1, 2], "total_loss": [1.0, 0.9, 0.8]},
                   [{"epoch": 1, "kappa_kappa": 1.0}, {"epoch": 2, "kappa_kappa": 1.5}])
    paths = report.write(str(tmp_path / "exp"))
    assert {os.path.basename(p) for p in paths} >= {"primary_metric.png", "loss.png", "controller_kappa_kappa.png"}
    assert len(figures) == 3
    for fig in figures:
        ax = fig.axes[0]
        assert ax.get_title().startswith("exp: ") and ax.get_xlabel() and ax.get_ylabel()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
        fig.canvas.draw()
        legend = ax.get_legend().get_window_extent()
        assert legend.x0 >= ax.get_window_extent().x1  # right of the axes, never over the curves
    assert figures[2].axes[0].get_ylabel() == "kappa"
    assert setting_label("ctrl_neg_margin") == "neg_margin (controller ctrl)"


def pml_ext_command() -> list[str]:
    """The ``pml-ext`` script when it is installed, else ``python -m pml_ext`` (the same entry point)."""
    script = shutil.which("pml-ext")
    return [script] if script else [sys.executable, "-m", "pml_ext"]


def test_ctrl_c_ends_with_one_line_naming_where_it_stopped_and_the_resume_command(tmp_path):
    argv = ["run", "--experiment_name", "stopme", "--root_experiment_folder", str(tmp_path), "--num_epochs_train",
            "10000", "--save_interval", "1", "--check_untrained_accuracy", "false",
            "--trainer~APPLY~2", "{iterations_per_epoch: 2}"]
    proc = subprocess.Popen(pml_ext_command() + argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    marker = tmp_path / "stopme" / SCHEME / "saved_models" / "checkpoint_1.json"
    try:
        for _ in range(1200):  # training has saved a checkpoint: it is well inside the epoch loop
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert proc.returncode == 130
    assert lines[0].startswith(f"interrupted: {tmp_path / 'stopme'}, split scheme {SCHEME}, epoch "), lines[0]
    assert lines[0].endswith(f"resume with: pml-ext run --experiment_name stopme --root_experiment_folder "
                             f"{tmp_path} --resume_training latest"), lines[0]
    assert "KeyboardInterrupt" in (tmp_path / "stopme" / "run.log").read_text()  # the traceback: in run.log only


def test_faiss_clustering_warnings_go_to_run_log_not_the_terminal(tmp_path):
    # A val split of 90 samples in 5 classes: FAISS's k-means for NMI wants 39 points per centroid
    # and says so on the process's stderr (from C++) at every evaluation.
    argv = ["run", "--experiment_name", "quiet", "--root_experiment_folder", str(tmp_path), "--num_epochs_train", "1",
            "--trainer~APPLY~2", "{iterations_per_epoch: 2}", "--split_manager~APPLY~2", "{val_fraction: 0.1}"]
    result = subprocess.run(pml_ext_command() + argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "WARNING clustering" not in result.stderr + result.stdout, result.stderr
    log = (tmp_path / "quiet" / "run.log").read_text()
    assert log.count("WARNING clustering 90 points to 5 centroids") == 3, log  # epochs -1, 0 and 1 on val
    assert "MAP@R" in result.stdout  # the table still reaches the terminal


def test_the_console_keeps_python_warnings_while_native_output_is_captured(tmp_path):
    script = """
import logging, os
from pml_ext.runner.run.run_output import LOGGER, configure_output, native_output_to_log
configure_output(False)
log = logging.FileHandler("run.log")
LOGGER.addHandler(log)
with native_output_to_log():
    os.write(2, b"noise from C\\n")
    os.write(1, b"more noise\\n")
    LOGGER.warning("a warning the user must see")
print("after")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "a warning the user must see\n" and result.stdout == "after\n"
    log = (tmp_path / "run.log").read_text()
    assert "native library output: noise from C" in log and "native library output: more noise" in log


def test_the_main_job_table_fits_120_columns_with_every_bundled_method_and_long_notes():
    from pml_ext.runner.report.comparison_runner import ComparisonRunner

    names = [m["name"] for m in ComparisonRunner(dataset="digits").methods()]
    notes = "really mined: 0.87 of triplets in 8/10 epochs; kappa 1.53 at the end; " * 3
    rows = [{"method": name, "P@1": 0.51, "R@4": 0.774, "MAP@R": 0.192, "NMI": 0.789, "epochs": 10,
             "chosen epoch": 10, "wall time (s)": 123.4, "notes": notes if i % 2 else ""} for i, name in enumerate(names)]
    rows.insert(0, {"method": "raw pixels, L2-normalised (no network)", "P@1": 0.314, "R@4": 0.523, "MAP@R": 0.062,
                    "NMI": 0.676, "epochs": 0, "chosen epoch": None, "wall time (s)": None, "notes": ""})
    table = ComparisonRunner.table(rows)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120, table
    assert lines[0].startswith("method") and lines[0].endswith("wall time (s)")
    flat = " ".join(table.split())
    for row in rows:  # every name is there, possibly wrapped onto a second line
        assert " ".join(row["method"].split()) in flat.replace(" [1]", "").replace(" [2]", "")
    assert flat.count("really mined: 0.87") == 3 * len(names[1::2])  # the notes, below the table
    assert "0.1920" in table and "123.4" in table and " - " in table


def test_help_lists_every_flag_the_readme_and_the_runner_docs_use(capsys):
    import pathlib
    import re

    root = pathlib.Path(__file__).parent.parent
    launcher = {"nnodes", "node_rank", "nproc_per_node", "rdzv_backend", "rdzv_endpoint", "rdzv_id", "standalone",
                "key", "config_"}  # torchrun's own flags, and the placeholders --key and --config_<category>
    used = set()
    for doc in ("README.md", "docs/runner.md"):
        used |= set(re.findall(r"--([A-Za-z_]+)(?![-\w])", (root / doc).read_text())) - launcher
    assert main(["run", "--help"]) == 0
    usage = capsys.readouterr().out
    listed = set(re.findall(r"--([A-Za-z_]+)", usage))
    used = {"config_" if flag.startswith("config_") else flag for flag in used}  # --config_<category>
    assert "num_threads" in used and not used - listed, sorted(used - listed)


def test_the_resume_command_keeps_what_names_the_experiment_and_drops_what_the_saved_configs_hold():
    from pml_ext.runner.run.run_interrupt import RunInterrupted, interrupt_line, resume_command

    argv = ["--experiment_name", "e", "--root_config_folder", "cfg", "--config_general", "default", "big",
            "--register_module", "my.plugins", "--trainer~APPLY~2", "{batch_size:", "8}", "--root_experiment_folder",
            "runs dir"]
    assert resume_command(argv) == ("pml-ext run --experiment_name e --register_module my.plugins "
                                    "--root_experiment_folder 'runs dir' --resume_training latest")
    fresh = interrupt_line(RunInterrupted("runs dir/e, split scheme S, epoch 1 (last checkpoint: none)", False), argv)
    assert fresh.endswith("nothing was saved yet, so the same command starts it again")
    main_job = interrupt_line(KeyboardInterrupt(), ["--dataset", "digits"])
    assert main_job == "interrupted: main job; `pml-ext run --dataset digits` runs it again"
