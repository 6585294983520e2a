"""Write a plain-text corpus sampled from a causal LM itself (for distillation when no in-domain text exists).

    python benchmarks/sample_corpus.py ../shared/models/stories260K/stories260K.bin /tmp/stories.txt --n 400
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source")
    ap.add_argument("output")
    ap.add_argument("--n", type=int, default=400, help="number of samples")
    ap.add_argument("--tokens", type=int, default=200, help="new tokens per sample")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from fg_edge.sources import load_pretrained

    model, tok = load_pretrained(args.source, "causal-lm")
    torch.manual_seed(args.seed)
    bos = tok.bos_token_id
    texts = []
    with torch.no_grad():
        while len(texts) < args.n:
            n = min(args.batch, args.n - len(texts))
            ids = torch.full((n, 1), bos, dtype=torch.long)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                                 do_sample=True, temperature=args.temperature, top_k=0,
                                 pad_token_id=tok.eos_token_id)
            texts += [t.replace("\n", " ").strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    with open(args.output, "w") as fh:
        fh.write("\n".join(texts) + "\n")
    print(f"wrote {len(texts)} samples to {args.output}")


if __name__ == "__main__":
    main()
