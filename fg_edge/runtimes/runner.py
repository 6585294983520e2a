"""Torch-free runner for a compiled_dir: classify, embed or generate with ONNX Runtime.

    from fg_edge.runtimes.runner import Runner
    r = Runner("runs/minilm-compiled", model="compiled", provider="cpu", threads=2)
    r.kind                      # 'classification' | 'embedding' | 'causal-lm'
    r.classify(["a fine film"]) # [{'label': 'POSITIVE', 'label_id': 1, 'probabilities': {...}}]
    r.embed(["a fine film"])    # (1, hidden) float32, mean pooled when the model returns last_hidden_state
    r.generate("Once upon", max_new_tokens=20, top_k=0, temperature=0.0, seed=0).text

Tokenisation uses the `tokenizers` library on tokenizer.json; labels come from config.json's id2label.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from fg_edge.errors import ConfigError, InputMismatchError, ModelDirError
from fg_edge.formats.names import KINDS
from fg_edge.formats.compiled_dir import PAST_RE, PRESENT_RE, CompiledDir, ModelFile
from fg_edge.formats.positions import truncation_side
from fg_edge.runtimes.generate import GenerationOutput, generate, left_pad, softmax
from fg_edge.runtimes.providers import ResolvedProvider, resolve_provider
from fg_edge.runtimes.session import SessionSettings, build_feeds, create_session, numpy_dtype
from fg_edge.runtimes.truncation import check_lengths, fit_prompt

log = logging.getLogger(__name__)

EMBEDDING_OUTPUTS = ("sentence_embedding", "embeddings", "embedding", "last_hidden_state", "token_embeddings")


class OnnxModel:
    """One ONNX model file in a session, with what the runner needs to know about its inputs and outputs."""

    def __init__(self, path: str | Path, provider: str | ResolvedProvider = "cpu",
                 settings: Optional[SessionSettings] = None, cdir: Optional[CompiledDir] = None,
                 session=None):
        self.path = Path(path)
        self.cdir = cdir
        self.session = session if session is not None else create_session(self.path, provider, settings)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.output_names = list(self.outputs)
        self.past_inputs: dict[tuple[int, str], str] = {}
        self.present_outputs: dict[tuple[int, str], str] = {}
        for name in self.inputs:
            m = PAST_RE.match(name)
            if m:
                self.past_inputs[(int(m.group(1)), m.group(2))] = name
        for name in self.outputs:
            m = PRESENT_RE.match(name)
            if m:
                self.present_outputs[(int(m.group(1)), m.group(2))] = name
        self.kind = self._detect_kind()

    # -- structure ---------------------------------------------------------------------------------------------
    def _detect_kind(self) -> str:
        if self.past_inputs:
            return "causal-lm"
        if "logits" in self.outputs:
            shape = self.outputs["logits"].shape
            if len(shape) == 3:
                return "causal-lm"
            return "classification"
        if any(n in self.outputs for n in EMBEDDING_OUTPUTS):
            return "embedding"
        task = self.cdir.task if self.cdir is not None else None
        if task in KINDS:
            return task
        raise ModelDirError(f"{self.path}: cannot tell what the model computes from its outputs "
                            f"{self.output_names} (expected logits, last_hidden_state or sentence_embedding)")

    @property
    def has_cache(self) -> bool:
        return bool(self.past_inputs)

    @property
    def num_layers(self) -> int:
        return 1 + max(i for i, _ in self.past_inputs) if self.past_inputs else 0

    def kv_layout(self) -> list[dict[str, Any]]:
        """Per layer: {layer, kv_heads, head_dim, dtype} from the declared past inputs (else fg_edge_layers)."""
        out = []
        for i in range(self.num_layers):
            name = self.past_inputs.get((i, "key"))
            if name is None or (i, "value") not in self.past_inputs:
                raise InputMismatchError(f"{self.path}: decoder declares no past key/value inputs for layer {i} "
                                         f"(has {sorted(self.past_inputs.values())})")
            shape = self.inputs[name].shape
            heads, dim = (shape[1], shape[3]) if len(shape) == 4 else (None, None)
            if not (isinstance(heads, int) and isinstance(dim, int)):
                rec = self._meta_kv_shapes()[i] if i < len(self._meta_kv_shapes()) else None
                if rec is None and self.cdir is not None:
                    rec = self.cdir.kv_shape(i)
                if rec is None:
                    raise ModelDirError(f"{self.path}: input {name} has symbolic shape {shape} and config.json has "
                                        f"no fg_edge_layers[{i}] record to size the KV cache")
                heads = heads if isinstance(heads, int) else rec[0]
                dim = dim if isinstance(dim, int) else rec[1]
            out.append({"layer": i, "kv_heads": int(heads), "head_dim": int(dim),
                        "dtype": np.dtype(numpy_dtype(self.inputs[name].type)).name})
        return out

    def _meta_kv_shapes(self) -> list[tuple[int, int]]:
        """[(kv_heads, head_dim), ...] from the graph metadata `fg_edge.kv_shapes` the exporter writes."""
        try:
            raw = self.session.get_modelmeta().custom_metadata_map.get("fg_edge.kv_shapes")
            return [(int(h), int(d)) for h, d in json.loads(raw)] if raw else []
        except (ValueError, TypeError):
            return []

    def empty_past(self, batch: int) -> dict[tuple[int, str], np.ndarray]:
        past = {}
        for rec in self.kv_layout():
            for kv in ("key", "value"):
                past[(rec["layer"], kv)] = np.zeros((batch, rec["kv_heads"], 0, rec["head_dim"]), dtype=rec["dtype"])
        return past

    # -- running -----------------------------------------------------------------------------------------------
    def run(self, feeds: dict[str, Any], outputs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        checked = build_feeds(self.session, feeds, self.path)
        names = list(outputs) if outputs else self.output_names
        return dict(zip(names, self.session.run(names, checked)))

    def encoder_feeds(self, ids: np.ndarray, mask: np.ndarray,
                      type_ids: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Feeds for an encoder graph; `type_ids`: the segment of every token (sentence pairs), zeros if None."""
        feeds: dict[str, np.ndarray] = {}
        for name in self.inputs:
            if name == "input_ids":
                feeds[name] = ids
            elif name == "attention_mask":
                feeds[name] = mask
            elif name == "token_type_ids":
                feeds[name] = type_ids if type_ids is not None else np.zeros_like(ids)
            elif name == "position_ids":
                feeds[name] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        return feeds

    def decoder_feeds(self, ids, mask, positions, past) -> dict[str, np.ndarray]:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = positions
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        if past:
            for key, name in self.past_inputs.items():
                feeds[name] = past[key]
        return feeds

    def decoder_step(self, ids, mask, positions, past):
        """One forward: (logits (B,S,V), new past dict or None)."""
        out = self.run(self.decoder_feeds(ids, mask, positions, past))
        logits = out["logits"]
        if not self.past_inputs:
            return logits, None
        new_past = {}
        for key in self.past_inputs:
            name = self.present_outputs.get(key)
            if name is None:
                raise InputMismatchError(f"{self.path}: no present output for layer {key[0]} {key[1]} "
                                         f"(outputs: {self.output_names})")
            new_past[key] = out[name]
        return logits, new_past


@dataclass
class GenerationResult:
    prompt: str
    text: str                              # the generated continuation
    full_text: str                         # prompt + continuation, decoded
    token_ids: list[int]                   # generated ids
    kv_shapes: list[dict] = field(default_factory=list)
    ttft_s: float = 0.0
    tokens_per_s: Optional[float] = None


class Runner:
    """A compiled_dir model ready to run: tokenizer + one ONNX session."""

    def __init__(self, compiled_dir: str | Path, model: str = "compiled", provider: str = "cpu",
                 threads: Optional[int] = None, settings: Optional[SessionSettings] = None,
                 provider_options: Optional[dict] = None, max_length: Optional[int] = None,
                 truncate: Optional[str] = None, engine: str = "ort", session=None):
        """`session`: an ORT session already open on the variant's file (the compiler's checks share theirs);
        provider, threads and settings then describe it, they do not make it."""
        self.cdir = CompiledDir(compiled_dir)
        self.provider = resolve_provider(provider, provider_options)     # checked before any file is read
        settings = settings or SessionSettings()
        if threads is not None:
            settings = SessionSettings(**{**settings.to_dict(), "intra_op_threads": threads})
        spec = self.provider.spec
        variant = model
        if model == "compiled":
            variant = spec.preferred_variant(self.cdir) or model
        self.file: ModelFile = self.cdir.require(variant, prefer_ort=spec.prefer_ort_format)
        self.variant = variant
        self.model = OnnxModel(self.file.path, self.provider, settings, cdir=self.cdir, session=session)
        self.kind = self.model.kind
        self.tokenizer = self.cdir.tokenizer()
        self.inputs = self.cdir.inputs()          # how training fed the model (max_length, pair column)
        #: the most tokens one sequence can hold (position embeddings), None when config.json does not say
        self.position_limit = self.cdir.max_positions()
        limit = self.position_limit
        self.max_length = max_length or self.inputs.get("max_length") or (min(limit, 512) if limit else 512)
        if limit:
            self.max_length = min(self.max_length, limit)
        #: what happens to a longer text: 'right' (keep the start), 'left' (keep the end) or 'error' (refuse)
        self.truncate = truncation_side(truncate, decoder=self.kind == "causal-lm")
        if self.kind != "causal-lm" and self.truncate != "error":
            # encoders: truncate as the HF tokenizer did in training (special tokens kept)
            self.tokenizer.enable_truncation(self.max_length, strategy="longest_first", direction=self.truncate)
        #: 'ort' (fg-edge's own cached loop) or 'genai' (ONNX Runtime GenAI runs the search; decoders only)
        self.engine, self.genai = engine, None
        if engine == "genai":
            from fg_edge.runtimes.genai_engine import GenaiDecoder

            if self.kind != "causal-lm":
                raise ConfigError(f"--engine genai runs decoders; {self.file.path} is a {self.kind} model")
            self.genai = GenaiDecoder(self.cdir.path, self.file.path.name, self.provider.name, threads)
        elif engine != "ort":
            raise ConfigError(f"--engine must be ort or genai; got {engine!r}")

    @property
    def label(self) -> str:
        return self.provider.label

    # -- tokenisation ------------------------------------------------------------------------------------------
    def _pad_id(self) -> int:
        for tok in ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>", "</s>"):
            tid = self.tokenizer.token_to_id(tok)
            if tid is not None:
                return int(tid)
        return self.cdir.pad_token_id()

    def encode(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, whole (a decoder's prompt is fitted to the position limit by `generate`)."""
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [list(e.ids) for e in encs]

    @property
    def pair_column(self) -> Optional[str]:
        """The second text column training read (a sentence-pair model), or None."""
        return self.inputs.get("text_pair_column")

    def _check_pairs(self, texts: Sequence[str], pairs: Optional[Sequence[str]]) -> None:
        if pairs is None and self.pair_column:
            raise InputMismatchError(f"{self.cdir.path} holds a sentence-pair model (trained on columns "
                                     f"{self.inputs.get('text_column', 'text')!r} + {self.pair_column!r}): give the "
                                     f"second text too (`fg-edge run ... --pair TEXT2`, `eval --text-pair-column`)")
        if pairs is not None and len(pairs) != len(texts):
            raise InputMismatchError(f"{len(texts)} texts but {len(pairs)} pair texts")

    def encode_padded(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None):
        """(input_ids, attention_mask, token_type_ids) right-padded; pairs are encoded as the tokenizer's pair
        template ([CLS] a [SEP] b [SEP] for BERT) with their segment ids."""
        self._check_pairs(texts, pairs)
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        encs = self.tokenizer.encode_batch(inputs)
        check_lengths(encs, self.max_length, self.truncate)
        n = max(1, max(len(e.ids) for e in encs))
        ids = np.full((len(encs), n), self._pad_id(), dtype=np.int64)
        mask = np.zeros((len(encs), n), dtype=np.int64)
        types = np.zeros((len(encs), n), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
            types[i, : len(e.ids)] = e.type_ids
        return ids, mask, types

    def _require(self, kind: str) -> None:
        if self.kind != kind:
            raise ModelDirError(f"{self.file.path} is a {self.kind} model; {kind} is not available for it")

    # -- tasks -------------------------------------------------------------------------------------------------
    def logits(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> np.ndarray:
        self._require("classification")
        ids, mask, types = self.encode_padded(texts, pairs)
        return self.model.run(self.model.encoder_feeds(ids, mask, types), ["logits"])["logits"]

    def classify(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
        logits = self.logits(texts, pairs)
        id2label = self.cdir.id2label()
        probs = softmax(logits, axis=-1)
        out = []
        for row in probs:
            k = int(row.argmax())
            out.append({"label": id2label.get(k, f"LABEL_{k}"), "label_id": k,
                        "probabilities": {id2label.get(j, f"LABEL_{j}"): float(p) for j, p in enumerate(row)}})
        return out

    def embed(self, texts: Sequence[str], normalize: bool = False) -> np.ndarray:
        self._require("embedding")
        ids, mask, types = self.encode_padded(texts)
        out = self.model.run(self.model.encoder_feeds(ids, mask, types))
        for name in ("sentence_embedding", "embeddings", "embedding"):
            if name in out and out[name].ndim == 2:
                emb = out[name]
                break
        else:
            hidden = out.get("last_hidden_state", out.get("token_embeddings"))
            m = mask[..., None].astype(hidden.dtype)
            emb = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        emb = emb.astype(np.float32)
        if normalize:
            emb = emb / np.clip(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12, None)
        return emb

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int = 20, top_k: int = 0,
                     temperature: float = 0.0, seed: int = 0, on_token=None) -> GenerationOutput:
        self._require("causal-lm")
        pad = self.cdir.pad_token_id()
        if self.genai is not None:
            return self._genai_ids(prompt_ids, max_new_tokens, top_k, temperature, seed, pad)
        ids, mask = left_pad([list(p) for p in prompt_ids], pad)
        return generate(self.model, ids, mask, max_new_tokens=max_new_tokens, top_k=top_k, temperature=temperature,
                        seed=seed, eos_ids=self.cdir.eos_token_ids(), pad_id=pad, on_token=on_token)

    def _genai_ids(self, prompt_ids, max_new_tokens, top_k, temperature, seed, pad) -> GenerationOutput:
        """GenAI generates one prompt at a time; the results are stacked as fg-edge's batch would be (prompts
        left-padded, new tokens padded after an early EOS)."""
        outs = [self.genai.generate(p, max_new_tokens, top_k, temperature, seed) for p in prompt_ids]
        ids, _ = left_pad([list(p) for p in prompt_ids], pad)
        new = np.full((len(outs), max(o.new_tokens.shape[1] for o in outs)), pad, dtype=np.int64)
        for i, o in enumerate(outs):
            new[i, : o.new_tokens.shape[1]] = o.new_tokens[0]
        return GenerationOutput(sequences=np.concatenate([ids, new], axis=1), new_tokens=new,
                                prompt_len=ids.shape[1], prefill_s=sum(o.prefill_s for o in outs),
                                decode_s=sum(o.decode_s for o in outs), steps=sum(o.steps for o in outs) // len(outs))

    def generate(self, prompt: str, max_new_tokens: int = 20, top_k: int = 0, temperature: float = 0.0,
                 seed: int = 0, on_token=None) -> GenerationResult:
        # what the template puts first (BOS) stays when a long prompt is cut on the left
        lead = self.tokenizer.encode("").ids
        prompt_ids = fit_prompt(self.encode([prompt])[0], self.position_limit, max_new_tokens, self.truncate, lead)
        out = self.generate_ids([prompt_ids], max_new_tokens, top_k, temperature, seed, on_token)
        eos = self.cdir.eos_token_ids()
        new = [int(t) for t in out.new_tokens[0]]
        if eos:
            cut = next((i for i, t in enumerate(new) if t in eos), None)
            if cut is not None:
                new = new[: cut + 1]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        full = self.tokenizer.decode(prompt_ids + new, skip_special_tokens=True)
        return GenerationResult(prompt, text, full, new, out.kv_shapes, out.prefill_s, out.tokens_per_s)

    def run(self, text: str, pair: Optional[str] = None, **kwargs) -> dict[str, Any]:
        """The task's answer for one text (and its `pair`, for a sentence-pair classifier) as a JSON-able dict
        (what `fg-edge run` prints)."""
        base = {"model": self.variant, "file": str(self.file.path), "provider": self.label, "kind": self.kind,
                "engine": self.engine}
        for what, value in (("TEXT", text), ("--pair", pair)):
            if value is not None and not value.strip():
                raise InputMismatchError(f"{what} is empty; give some text")
        if pair is not None and self.kind != "classification":
            raise InputMismatchError(f"--pair applies to classifiers; {self.file.path} is a {self.kind} model")
        if self.kind == "classification":
            return {**base, **self.classify([text], None if pair is None else [pair])[0]}
        if self.kind == "embedding":
            emb = self.embed([text], normalize=kwargs.get("normalize", False))[0]
            return {**base, "dim": int(emb.shape[0]), "embedding": [float(x) for x in emb]}
        res = self.generate(text, max_new_tokens=kwargs.get("max_new_tokens", 20), top_k=kwargs.get("top_k", 0),
                            temperature=kwargs.get("temperature", 0.0), seed=kwargs.get("seed", 0),
                            on_token=kwargs.get("on_token"))
        return {**base, "prompt": text, "text": res.text, "full_text": res.full_text, "token_ids": res.token_ids,
                "ttft_ms": res.ttft_s * 1e3, "tokens_per_s": res.tokens_per_s,
                "kv_layout": self.model.kv_layout(), "kv_shapes": res.kv_shapes}
