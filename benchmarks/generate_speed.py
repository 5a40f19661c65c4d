"""Generation speed: tokens per second of `l3m generate`'s decode loop with the key/value cache and
without it (every step recomputes the whole sequence), on the tiny Llama-style example and a
mid size (dim 256, depth 4, 4 heads with 2 key/value heads), at batch 1 and 4; and captions of the
tiny AIMv2 (examples/aimv2_digits.l3m with 64-token captions) at batch 4, where "cache" runs the image
encoder once and the text through the cache (`l3m.generation.staged`) and "no_cache" is `decode_full`
(the whole image and caption every step).

Weights are random (speed does not depend on their values); decoding is greedy with no EOS, so
every call makes exactly `--new` tokens per sequence after a `--prompt`-token prompt. Both
variants run in interleaved rounds and must produce the same tokens; tokens/s counts the new
tokens of the whole batch over the wall time of a call (prompt pass included).

    python benchmarks/generate_speed.py            # writes benchmarks/results/generate_speed.json
    python benchmarks/generate_speed.py --quick    # a smoke run (tiny model, few tokens)
"""

from __future__ import annotations

from typing import Any

import common

BYTES = ["tokenizer=bytes", "vocab=256"]
MID = [*BYTES, "llama.dim=256", "llama.depth=4", "llama.heads=4", "llama.kv_heads=2", "llama.hidden=704"]
CONFIGS = [("tiny", BYTES, 1), ("tiny", BYTES, 4), ("mid", MID, 1), ("mid", MID, 4)]


def decoder_of(overrides: list[str]):
    import torch

    from l3m.generation.decoder import find_decoder
    from l3m.model.build import materialize

    torch.manual_seed(0)
    model = materialize(common.load("llama_tiny", overrides).build_model(), check=False).eval()
    return find_decoder(model)


def config(size: str, overrides: list[str], batch: int, args) -> dict[str, Any]:
    from l3m.generation.decode import Settings, decode_cached

    dec = decoder_of(overrides)
    prompts = [[(7 * b + 3 * i) % 256 for i in range(args.prompt)] for b in range(batch)]
    settings = {"cache": Settings(max_new_tokens=args.new), "no_cache": Settings(max_new_tokens=args.new,
                                                                                   use_cache=False)}
    outputs: dict[str, list] = {}

    def variant(name: str):
        def run() -> None:
            outputs[name] = decode_cached(dec, prompts, settings[name]).ids
        return run

    times = common.interleaved({n: variant(n) for n in settings}, rounds=args.rounds, steps=1, warmup=1)
    if outputs["cache"] != outputs["no_cache"]:
        raise AssertionError(f"{size} batch {batch}: the cache changed the generated tokens")
    new = batch * args.new
    rates = {n: common.summary([new / t for t in times["wall"][n]]) for n in settings}
    params = sum(p.numel() for p in dec.model.parameters())
    row = {"size": size, "overrides": overrides, "params": params, "batch": batch, "prompt_tokens": args.prompt,
           "new_tokens": args.new, "tokens_per_s": rates,
           "speedup": common.ratios(times["wall"]["no_cache"], times["wall"]["cache"])}
    print(f"{size:>5} ({params / 1e6:.2f}M params) batch {batch}: "
          f"{rates['cache']['median']:8.1f} tok/s cached, {rates['no_cache']['median']:8.1f} tok/s uncached "
          f"(x{row['speedup']['median']:.1f})")
    return row


def aimv2_config(batch: int, args) -> dict[str, Any]:
    """Captions of a 2-token prompt (<bos> and one word) to the end of a 64-token caption."""
    import torch

    from l3m.generation.decode import Settings, decode_full
    from l3m.generation.decoder import find_decoder
    from l3m.generation.staged import decode_staged, plan_staged
    from l3m.model.build import materialize

    overrides, length = ["text_len=64"], 64
    torch.manual_seed(0)
    model = materialize(common.load("aimv2_digits", overrides).build_model(), check=False).eval()
    plan = plan_staged(find_decoder(model))
    inputs = {"image": torch.randn(batch, 3, 16, 16), "prefix_len": torch.full((batch,), 1 << 30)}
    prompts = [[1, 5 + b] for b in range(batch)]
    settings = Settings(max_new_tokens=length)
    outputs: dict[str, list] = {}

    def cache() -> None:
        outputs["cache"] = decode_staged(plan, prompts, settings, inputs, length=length, aligned=True).ids

    def no_cache() -> None:
        outputs["no_cache"] = decode_full(plan.decoder, prompts, settings, inputs, length=length, aligned=True).ids

    times = common.interleaved({"cache": cache, "no_cache": no_cache}, rounds=args.rounds, steps=1, warmup=1)
    if outputs["cache"] != outputs["no_cache"]:
        raise AssertionError(f"aimv2 batch {batch}: the cache changed the generated tokens")
    new = batch * (length - 2)
    rates = {n: common.summary([new / t for t in times["wall"][n]]) for n in ("cache", "no_cache")}
    params = sum(p.numel() for p in model.parameters())
    row = {"size": "aimv2_digits", "overrides": overrides, "params": params, "batch": batch, "prompt_tokens": 2,
           "new_tokens": length - 2, "tokens_per_s": rates,
           "speedup": common.ratios(times["wall"]["no_cache"], times["wall"]["cache"])}
    print(f"aimv2 ({params / 1e6:.2f}M params) batch {batch}: {rates['cache']['median']:8.1f} tok/s cached, "
          f"{rates['no_cache']['median']:8.1f} tok/s uncached (x{row['speedup']['median']:.1f})")
    return row


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    ap.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.prompt, args.new = 1, 8, 16
    common.set_threads(args.threads)
    started = common.machine()
    configs = CONFIGS[:1] if args.quick else CONFIGS
    rows = [config(size, ov, batch, args) for size, ov, batch in configs]
    if not args.quick:
        rows.append(aimv2_config(4, args))
    common.write(common.out_path(args, "generate_speed"), {"configs": rows}, started)


if __name__ == "__main__":
    main()
