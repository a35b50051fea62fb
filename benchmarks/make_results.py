"""Assemble benchmarks/RESULTS.md from the per-topic fragments in benchmarks/results/.

    python benchmarks/make_results.py

Each benchmark script writes (or its author pastes) its own fragment with the command that
produced it and the date; this keeps them in one file, in a fixed order.
"""
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
ORDER = ["tuning", "global", "ablations", "glyphs", "quick", "glyph_cnn", "trunks", "claims_lifted", "claims_smart", "claims_collapse", "lifted", "index",
         "index_refresh", "smart", "global_scale", "controller", "isometric", "runner", "runner_import",
         "runner_ddp", "checkpoint", "accuracy"]
HEADER = """# Benchmark results

Every figure below names the command that produced it and its date. The machine: 2 cores,
24 GiB, no GPU, shared with other jobs while these ran (load averages 4-13), so absolute times
are noisy; ratios against PML are measured in the same run. Regenerate this file with
`python benchmarks/make_results.py` after re-running a benchmark.
"""


def main() -> None:
    fragments = {p.stem: p for p in (HERE / "results").glob("*.md")}
    names = [n for n in ORDER if n in fragments] + sorted(set(fragments) - set(ORDER))
    parts = [HEADER]
    for name in names:
        text = fragments[name].read_text().strip()
        # Fragments link their images relative to results/.
        text = text.replace("](", "](results/").replace("](results/http", "](http")
        parts.append(text)
    (HERE / "RESULTS.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
