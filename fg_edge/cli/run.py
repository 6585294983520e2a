"""`fg-edge run`: one text through a compiled_dir on ONNX Runtime (torch-free)."""

from __future__ import annotations

import click

from fg_edge.cli.options import emit_json, engine_option, ep_library_option, json_option, truncate_option
from fg_edge.formats.compiled_dir import MODEL_CHOICES


@click.command(context_settings={"max_content_width": 110})
@click.argument("compiled_dir", type=click.Path(file_okay=False, path_type=str))
@click.argument("text")
@click.option("--pair", default=None, metavar="TEXT2",
              help="The second text, for a sentence-pair classifier (NLI, paraphrase): encoded as one pair.")
@click.option("--model", "variant", type=click.Choice(MODEL_CHOICES), default="compiled", show_default=True,
              help="Which model file: compiled (model.onnx), baseline (dense baseline.onnx), a quantized one "
                   "(int8: model.int8.onnx, qdq, int4, int8-wo: model.<name>.onnx) or its baseline-<name>; nnapi / "
                   "qdq-nnapi (and baseline-*): the .nnapi.ort files of --ort-target nnapi.")
@click.option("--provider", default="cpu", show_default=True,
              help="Execution provider: cpu, cuda, tensorrt, xnnpack, nnapi, coreml, qnn, openvino, dml, webgpu, "
                   "mobile (CPU EP emulation), or a full ORT EP name.")
@ep_library_option
@engine_option
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: ORT's choice).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=20, show_default=True, help="Decoders only.")
@click.option("--top-k", type=click.IntRange(0), default=0, show_default=True,
              help="Decoders: sample from the k most likely tokens (0 = all).")
@click.option("--temperature", type=click.FloatRange(0), default=None,
              help="Decoders: sampling temperature; 0 = greedy. Default: greedy, or 1.0 when --top-k is given.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--normalize", is_flag=True, help="Embedding models: L2-normalise the embedding.")
@truncate_option
@json_option("the full result")
def run_cmd(compiled_dir, text, pair, variant, provider, ep_libraries, engine, threads, max_new_tokens, top_k,
            temperature, seed, normalize, truncate, json_path):
    """Run TEXT through COMPILED_DIR (a folder written by `fg-edge compile`).

    \b
    Classifiers print the label and the class probabilities, embedding models the (mean-pooled) embedding,
    decoders the generated text (KV cache; greedy, or top-k / temperature sampling with --seed) and the
    per-layer KV-cache shapes. Needs only onnxruntime, numpy and tokenizers.

    \b
    Examples:
      fg-edge run runs/minilm-compiled "a gripping, funny film"
      fg-edge run runs/stories-compiled "Once upon a time" --max-new-tokens 40 --top-k 20 --temperature 0.8
      fg-edge run runs/minilm-compiled "so dull" --model int8 --provider mobile
      fg-edge run runs/smollm2-compiled "The capital of France is" --model int4
      fg-edge run runs/smollm2-compiled "The capital of France is" --model int4 --engine genai
      fg-edge run runs/nli-compiled "A man plays a guitar." --pair "Someone makes music."
      fg-edge run runs/stories-compiled "Once upon a time" --json - > result.json
    """
    from fg_edge.runtimes.providers import register_ep_libraries
    from fg_edge.runtimes.runner import Runner

    for name, value in (("TEXT", text), ("--pair", pair)):
        try:
            value is not None and value.encode("utf-8")
        except UnicodeEncodeError:
            raise click.BadParameter("not valid UTF-8 (the terminal or file passed other bytes); re-encode it as "
                                     "UTF-8", param_hint=name) from None
    if ep_libraries:
        register_ep_libraries(ep_libraries)
    if temperature is None:
        temperature = 1.0 if top_k > 0 else 0.0
    runner = Runner(compiled_dir, model=variant, provider=provider, threads=threads, truncate=truncate,
                    engine=engine)
    result = runner.run(text, pair, max_new_tokens=max_new_tokens, top_k=top_k, temperature=temperature, seed=seed,
                        normalize=normalize)
    if emit_json(result, json_path):
        return
    engine = " (ONNX Runtime GenAI)" if engine == "genai" else ""
    click.echo(f"[{result['model']}: {result['file']} on {result['provider']}{engine}]")
    if result["kind"] == "classification":
        click.echo(f"label: {result['label']}")
        for name, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  {name:<20} {p:.4f}")
    elif result["kind"] == "embedding":
        emb = result["embedding"]
        head = ", ".join(f"{x:.4f}" for x in emb[:8])
        click.echo(f"embedding ({result['dim']} dims): [{head}{', ...' if len(emb) > 8 else ''}]")
    else:
        click.echo(result["full_text"])
        tps = result["tokens_per_s"]
        click.echo(f"({len(result['token_ids'])} new tokens; TTFT {result['ttft_ms']:.1f} ms"
                   f"{'; %.1f tokens/s' % tps if tps else ''})", err=True)
        shapes = "; ".join(f"L{s['layer']} {'x'.join(map(str, s['key']))}" for s in result["kv_shapes"])
        if shapes:    # GenAI keeps its cache to itself
            click.echo(f"KV cache per layer (batch x kv_heads x tokens x head_dim): {shapes}", err=True)
