"""ONNX Runtime GenAI as the generation engine of a compiled decoder (`fg-edge run` / `bench --engine genai`).

The folder's genai_config.json (written by `fg-edge compile`, fg_edge.exporters.genai_config) is read by
`onnxruntime_genai.Config`; an overlay points it at the variant's file (model.onnx, model.int4.onnx,
baseline.onnx, ...) and sets the thread count, so every variant of the folder runs without rewriting the file.
Prompts are tokenised by fg-edge (the same ids `--engine ort` feeds), GenAI runs the search and the KV cache.

Greedy search is what `fg-edge run` does by default and gives the same tokens as fg-edge's own loop
(tests/test_decoder_quant.py); sampling goes through GenAI's own sampler, so sampled tokens differ from
`--engine ort` for the same seed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fg_edge.errors import ConfigError, ModelDirError
from fg_edge.formats.names import GENAI_CONFIG_FILE
from fg_edge.runtimes.generate import GenerationOutput

ENGINES = ("ort", "genai")
#: fg-edge provider names GenAI can take (its `Config.append_provider` names); cpu needs none
GENAI_PROVIDERS = {"cpu": None, "cuda": "cuda", "dml": "dml", "qnn": "qnn", "webgpu": "webgpu",
                   "openvino": "OpenVINO"}
INSTALL_HINT = "pip install 'fg-edge[genai]' (onnxruntime-genai)"


def require_genai():
    """The onnxruntime_genai module, or one ConfigError naming the pip command."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        raise ConfigError(f"--engine genai needs ONNX Runtime GenAI: {INSTALL_HINT}") from None
    return og


class GenaiDecoder:
    """One decoder file of a compiled folder loaded by ONNX Runtime GenAI."""

    def __init__(self, folder: str | Path, filename: str, provider: str = "cpu", threads: Optional[int] = None):
        og = require_genai()
        self.folder = Path(folder)
        if not (self.folder / GENAI_CONFIG_FILE).is_file():
            raise ModelDirError(f"{self.folder} has no {GENAI_CONFIG_FILE}: it is not a decoder folder, or it was "
                                "compiled by an fg-edge before 0.1 wrote one; compile it again")
        if provider not in GENAI_PROVIDERS:
            raise ConfigError(f"--engine genai runs on {', '.join(GENAI_PROVIDERS)}; got --provider {provider} "
                              "(use --engine ort for it)")
        if filename.endswith(".ort"):
            raise ConfigError(f"--engine genai runs .onnx files; {filename} is an ORT-format file (--engine ort)")
        self.filename = filename
        config = og.Config(str(self.folder))
        decoder: dict = {"filename": filename}
        if threads is not None:
            decoder["session_options"] = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": decoder}}))
        config.clear_providers()
        if GENAI_PROVIDERS[provider]:
            config.append_provider(GENAI_PROVIDERS[provider])
        self._og, self.model = og, og.Model(config)
        self.vocab_size = int(json.loads((self.folder / GENAI_CONFIG_FILE).read_text())["model"]["vocab_size"])

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, top_k: int = 0, temperature: float = 0.0,
                 seed: int = 0, stop_at_eos: bool = True) -> GenerationOutput:
        """New tokens for one prompt; prefill_s is append_tokens + the first token (time to first token)."""
        params = self._og.GeneratorParams(self.model)
        total = len(prompt_ids) + int(max_new_tokens)
        search = {"max_length": total, "min_length": 0 if stop_at_eos else total, "do_sample": temperature > 0}
        if temperature > 0:   # top_k 0 = every token, as in fg-edge's sampler
            search.update(top_k=int(top_k) or self.vocab_size, temperature=float(temperature), random_seed=int(seed))
        params.set_search_options(**search)
        gen = self._og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens([int(t) for t in prompt_ids])
        if not gen.is_done():
            gen.generate_next_token()
        prefill = time.perf_counter() - t0
        steps, t1 = 0, time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
            steps += 1
        sequence = np.asarray([int(t) for t in gen.get_sequence(0)], dtype=np.int64)[None]
        return GenerationOutput(sequences=sequence, new_tokens=sequence[:, len(prompt_ids):],
                                prompt_len=len(prompt_ids), prefill_s=prefill, decode_s=time.perf_counter() - t1,
                                steps=steps)
