"""`fg-edge bench`: compiled vs dense baseline on ONNX Runtime (torch-free)."""

from __future__ import annotations

import click

from fg_edge.cli.options import engine_option, ep_library_option, progress_option, show_progress


@click.command(context_settings={"max_content_width": 110})
@click.argument("compiled_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--providers", default="cpu", show_default=True,
              help="Comma-separated providers: cpu, mobile (CPU EP, 1-2 threads, .ort/int8: emulated), cuda, "
                   "tensorrt, xnnpack, nnapi, coreml, qnn, openvino, dml, webgpu.")
@ep_library_option
@engine_option
@click.option("--batch", "batches", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--seq", "seqs", default="128", show_default=True, help="Comma-separated sequence lengths (tokens).")
@click.option("--threads", default="1", show_default=True, help="Comma-separated intra-op thread counts.")
@click.option("--repeats", type=click.IntRange(1), default=20, show_default=True, help="Timed runs per variant.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Untimed runs per variant.")
@click.option("--gen-tokens", type=click.IntRange(0), default=16, show_default=True,
              help="Decoders: new tokens per generation run (time to first token, tokens/s); 0 skips it.")
@click.option("--graph-opt", "graph_optimization", type=click.Choice(["disable", "basic", "extended", "all"]),
              default="all", show_default=True, help="ORT graph optimisation level (same for every variant).")
@click.option("--models", default=None, metavar="LIST",
              help="Comma-separated variants to run, each with its dense partner unless --no-baseline (e.g. "
                   "nnapi,qdq-nnapi: the --ort-target nnapi files) [default: compiled + baseline and every "
                   "quantized pair present; mobile: int8 when present].")
@click.option("--no-baseline", is_flag=True, help="Benchmark the compiled model alone (no dense baseline.onnx).")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for bench.json, bench.md and bench.png (default: COMPILED_DIR/bench).")
@progress_option
def bench_cmd(compiled_dir, providers, ep_libraries, engine, batches, seqs, threads, repeats, warmup, gen_tokens,
              graph_optimization, models, no_baseline, out_dir, progress):
    """Benchmark COMPILED_DIR: the compiled model against its dense baseline (and int8 variants when present).

    \b
    Warm-up, then timed runs alternating between the models; median / p90 / p99 latency, throughput, session
    creation time, RSS growth and file size per row; the speed-up against the dense baseline (same provider,
    threads, shape and precision) next to the FLOP-ratio ceiling of compile_report.json. Decoders also get time
    to first token and tokens/s of cached generation. Writes bench.json (schema: fg_edge.runtimes.bench.schema),
    bench.md and bench.png.

    \b
    Examples:
      fg-edge bench runs/minilm-compiled --batch 1,8 --seq 128 --threads 1,2
      fg-edge bench runs/minilm-compiled --providers cpu,mobile -o runs/minilm-bench
      fg-edge bench runs/minilm-android --providers mobile --models nnapi,qdq-nnapi
      fg-edge bench runs/stories-compiled --seq 32 --gen-tokens 32 --repeats 10 --no-progress
      fg-edge bench runs/smollm2-compiled --seq 32 --gen-tokens 64 --engine genai   # GenAI's generation loop
    """
    from pathlib import Path

    from fg_edge.formats.atomic import check_writable_location
    from fg_edge.runtimes.bench import format_table, run_bench, write_outputs
    from fg_edge.runtimes.providers import register_ep_libraries

    out = Path(out_dir) if out_dir else Path(compiled_dir) / "bench"
    # before the run, not after it (a read-only compiled folder, a file in the way)
    check_writable_location(out, option="-o/--output", role="benchmark folder" + ("" if out_dir else
                            " (default: inside the compiled folder)"))
    if ep_libraries:
        register_ep_libraries(ep_libraries)
    result = run_bench(compiled_dir, providers=providers, batches=batches, seqs=seqs, threads=threads,
                       repeats=repeats, warmup=warmup, gen_tokens=gen_tokens, no_baseline=no_baseline,
                       graph_optimization=graph_optimization, progress=show_progress(progress), models=models,
                       engine=engine)
    click.echo(format_table(result))
    paths = write_outputs(result, out)
    for kind, p in paths.items():
        if p is not None:
            click.echo(f"wrote {p}", err=True)
