"""Is a float32 parity gap rounding or structure? Compile a model_dir in float64 and compare with the gated model.

    python benchmarks/parity_fp64.py /tmp/smol_nonuni        # made by make_gated.py --whole-groups-odd-layers

Prints the max |compiled − gated| over an unpadded batch of 3 prompts and over 32 cached greedy steps, both in
float64: an exact compile gives ~0 (rounding at 1e-13 or below); a structural mistake gives O(1).
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--steps", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import fg_edge
    from fg_edge.compiler import compile_model
    from fg_edge.testing import padded_batch

    gated = fg_edge.load(args.model_dir).double()
    compiled, plan, _ = compile_model(gated, check=False)
    ids, _ = padded_batch(gated.config.vocab_size, lengths=(7, 7, 7))
    ones = torch.ones_like(ids)
    with torch.no_grad():
        a = gated(input_ids=ids, attention_mask=ones).logits
        b = compiled(input_ids=ids, attention_mask=ones).logits
        print(f"plan: {plan.summary()}")
        print(f"float64 logits: max |diff| {(a - b).abs().max().item():.3e} (max |logit| {a.abs().max().item():.1f})")
        if gated.can_generate():
            kw = dict(max_new_tokens=args.steps, do_sample=False, output_logits=True, return_dict_in_generate=True,
                      pad_token_id=0, attention_mask=ones)
            ga, gb = gated.generate(ids, **kw), compiled.generate(ids, **kw)
            diff = (torch.stack(ga.logits) - torch.stack(gb.logits)).abs().max().item()
            print(f"float64 {args.steps} cached greedy steps: max |diff| {diff:.3e}, "
                  f"tokens identical {torch.equal(ga.sequences, gb.sequences)}")


if __name__ == "__main__":
    main()
